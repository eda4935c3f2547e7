// Drives real Chromium with @sentry/browser and Session Replay through scrub-relay's tunnel (tests/browser_replay.rs).
//
// Usage: node replay.mjs <tunnel URL> <DSN> <zlib|raw>
//   zlib: the SDK's compression worker (fflate zlib), as in production; raw: `useCompression: false`, the fallback
//   an SDK takes when a CSP blocks the worker.
//
// The page and the SDK's ES modules (straight from node_modules, wired with an import map, so no bundler) are served
// from loopback: the network here is closed. The page plants PII in visible text, an input, the user and a
// breadcrumb (and a console line), records a replay with masking off, captures an error and flushes. Every envelope
// the browser posts is also captured here, before the relay touches it, and printed on stdout as one JSON line
// `{"sent": [<base64 envelope>, ...]}`, so the test can prove the PII really left the browser.

import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [tunnel, dsn, mode] = process.argv.slice(2);
if (!tunnel || !dsn || !['zlib', 'raw'].includes(mode)) {
  console.error('usage: node replay.mjs <tunnel URL> <DSN> <zlib|raw>');
  process.exit(2);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, 'node_modules');

const importMap = {
  imports: {
    '@sentry/browser': '/m/@sentry/browser/build/npm/esm/prod/index.js',
    '@sentry/core': '/m/@sentry/core/build/esm/index.js',
    '@sentry/core/browser': '/m/@sentry/core/build/esm/browser.js',
    '@sentry/browser-utils': '/m/@sentry/browser-utils/build/esm/index.js',
    '@sentry/replay': '/m/@sentry/replay/build/npm/esm/index.js',
    '@sentry/replay-canvas': '/m/@sentry/replay-canvas/build/npm/esm/index.js',
    '@sentry/feedback': '/m/@sentry/feedback/build/npm/esm/index.js',
    '@sentry/conventions/attributes': '/m/@sentry/conventions/dist/attributes.mjs',
    '@sentry/conventions/metrics': '/m/@sentry/conventions/dist/metrics.mjs',
    '@sentry/conventions/op': '/m/@sentry/conventions/dist/op.mjs',
    'web-vitals': '/m/web-vitals/dist/web-vitals.js',
  },
};

// The planted values must match tests/browser_replay.rs.
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>Garden report</title>
<script type="importmap">${JSON.stringify(importMap)}</script>
<style>.total { font-weight: bold; }</style>
</head><body>
<h1>Quarterly garden report</h1>
<p class="total">Tomatoes ripen in August.</p>
<p id="contact">Questions? Write to visible.jane@example.com</p>
<label>Card <input id="card" type="text" autocomplete="off"></label>
<button id="pay">Pay now</button>
<script type="module">
import * as Sentry from '@sentry/browser';
Sentry.init({
  dsn: ${JSON.stringify(dsn)},
  tunnel: ${JSON.stringify(tunnel)},
  release: 'scrub-relay-browsertest@1.0.0',
  integrations: [Sentry.replayIntegration({
    maskAllText: false, maskAllInputs: false, blockAllMedia: false,
    useCompression: ${mode === 'zlib'},
    // Send the first segment at once instead of after five seconds of recording.
    minReplayDuration: 0,
  })],
  replaysSessionSampleRate: 1.0,
  replaysOnErrorSampleRate: 1.0,
});
Sentry.setUser({ id: 'user-7', email: 'user.planted@example.com' });
document.getElementById('pay').addEventListener('click', () => {
  Sentry.addBreadcrumb({ category: 'checkout', message: 'checkout for crumb.planted@example.com', level: 'info' });
  console.log('paying as console.planted@example.com');
});
window.__sentry = Sentry;
window.__ready = true;
</script>
</body></html>`;

const types = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.map': 'application/json' };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(page);
  }
  if (url.pathname.startsWith('/m/')) {
    const file = path.normalize(path.join(modules, decodeURIComponent(url.pathname.slice(3))));
    if (file.startsWith(modules + path.sep) && statSync(file, { throwIfNoEntry: false })?.isFile()) {
      res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
      return res.end(readFileSync(file));
    }
  }
  res.writeHead(404);
  res.end();
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const profile = mkdtempSync(path.join(tmpdir(), 'scrub-relay-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const tab = await context.newPage();
  tab.on('pageerror', (error) => console.error('page error:', error.message));
  const posts = [];
  tab.on('request', (request) => {
    if (process.env.DEBUG) console.error('request', request.method(), request.url());
    if (request.method() === 'POST' && request.url() === tunnel) posts.push(request);
  });

  await tab.goto(origin + '/');
  await tab.waitForFunction(() => window.__ready === true);
  // Typed key by key: rrweb records input events with the field's text.
  await tab.locator('#card').pressSequentially('4111 1111 1111 1111');
  await tab.locator('#pay').click();
  await tab.evaluate(async () => {
    const Sentry = window.__sentry;
    Sentry.captureException(new Error('payment declined'));
    const replay = Sentry.getReplay();
    if (!replay || !replay.getReplayId()) throw new Error('replay is not recording');
    await replay.flush();
    if (!(await Sentry.flush(20000))) throw new Error('Sentry.flush timed out');
  });

  // Every post has been answered before its body is reported.
  const sent = [];
  for (const request of posts) {
    const response = await request.response();
    if (!response || response.status() !== 200) {
      throw new Error(`tunnel answered ${response ? response.status() : 'nothing'}: ${response ? await response.text() : ''}`);
    }
    const body = request.postDataBuffer();
    if (body) sent.push(body.toString('base64'));
  }
  process.stdout.write(JSON.stringify({ sent }) + '\n');
} finally {
  if (context) await context.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}
