// A real browser's CSP reports through scrub-relay (used by tests/routes.rs).
//
// Usage: node csp.js <relay base URL> <project id> <public key>
//
// Serves, on loopback, a page whose Content-Security-Policy (`report-uri` only, so Chromium sends each report at
// once instead of batching it for the Reporting API) points at the relay's /security/ route. The page's URL carries
// a reset token in its path and query and an email in its path, its referrer an invite token; it loads an image from
// another origin with a session id in the query and runs an inline script naming an email, and both are blocked.
// Headless Debian chromium (through playwright-core) loads it and sends its own reports. The script prints one JSON
// line once the page saw both violations, then keeps the browser open until stdin closes (the Rust test closes it
// when the upstream has the reports) or 60 s pass.

'use strict';

const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [relay, project, key] = process.argv.slice(2);
if (!relay || !project || !key) {
  console.error('usage: node csp.js <relay base URL> <project id> <public key>');
  process.exit(2);
}

const PAGE_PATH = '/users/jane.doe@example.com/reset/9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c';
const PAGE_QUERY = '?reset=S3cr3tT0k3nValue1234&page=2';

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

async function main() {
  const report = `${relay}/api/${project}/security/?sentry_key=${key}&sentry_release=web%401.0`;
  const pages = http.createServer((request, response) => {
    if (request.url.startsWith('/users/')) {
      const port = pages.address().port;
      response.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'content-security-policy': `default-src 'self'; script-src 'self' 'report-sample'; img-src 'self'; report-uri ${report}`,
      });
      response.end(`<!doctype html><html><head><title>reset</title></head><body>
<script src="/watch.js"></script>
<p>Reset your password</p>
<img src="http://localhost:${port}/pixel.gif?session_id=S3ss10nId9988776655aa">
<script>console.log("jane.doe@example.com")</script>
</body></html>`);
    } else if (request.url === '/watch.js') {
      // Same origin, so the policy allows it; it runs before the image and the inline script.
      response.writeHead(200, { 'content-type': 'text/javascript' });
      response.end(`window.violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.violations.push(e.effectiveDirective));`);
    } else {
      response.writeHead(200, { 'content-type': 'image/gif' });
      response.end();
    }
  });
  const port = await listen(pages);
  const origin = `http://127.0.0.1:${port}`;

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'scrub-relay-csp-'));
  // A persistent context is how playwright takes a fresh --user-data-dir.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const timeout = setTimeout(() => {
    console.error('csp.js: gave up after 60 s');
    process.exit(1);
  }, 60_000);
  try {
    const page = await browser.newPage();
    await page.goto(origin + PAGE_PATH + PAGE_QUERY, { referer: `${origin}/invite?token=Inv1teT0kenZZ998877` });
    await page.waitForFunction(() => window.violations.length >= 2);
    const violations = await page.evaluate(() => window.violations);
    console.log(JSON.stringify({ origin, violations }));
    // Keep the browser (and its report requests) alive until the test has what it needs.
    await new Promise((resolve) => {
      process.stdin.on('end', resolve);
      process.stdin.on('close', resolve);
      process.stdin.resume();
    });
  } finally {
    clearTimeout(timeout);
    await browser.close();
    pages.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
