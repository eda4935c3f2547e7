// Drive the real @sentry/node SDK against scrub-relay (used by tests/real_sdks.rs).
//
// Usage: (cd tests/sdk/node && node send.js <dsn> [<tunnel url>])
//
// Sends, with planted PII: one captured exception, a root span with a db child and a gen_ai child (Node 11
// streams spans as `span` v2 items), and one log. Prints one JSON line on stdout with the ids the test checks.
// Exits non-zero if any request failed or got a non-2xx answer, or if the flush timed out.
"use strict";

// Resolved from the working directory, so the same script drives tests/sdk/node (11.x) and tests/sdk/node10.
const Sentry = require(require.resolve("@sentry/node", { paths: [process.cwd()] }));

const EMAIL = "jane.doe@example.com";
const SSN = "123-45-6789";
const PASSWORD = "hunter2-S3cret!";
const BEARER = "Bearer sk_live_51H8xYzAbCdEfGhIjKlMnOpQr";
const RELEASE = "scrub-relay-sdktest@1.2.3";

async function main() {
  const [dsn, tunnel] = process.argv.slice(2);
  if (!dsn) {
    console.error("usage: node send.js <dsn> [<tunnel url>]");
    return 2;
  }

  // The SDK swallows send failures unless `debug` is on, so watch the transport itself: every answer it got,
  // and every request that failed.
  const statuses = [];
  const failures = [];
  const watchedTransport = (options) => {
    const inner = Sentry.makeNodeTransport(options);
    return {
      ...inner,
      send: (envelope) =>
        inner.send(envelope).then(
          (response) => {
            statuses.push(response.statusCode);
            return response;
          },
          (error) => {
            failures.push(String(error));
            throw error;
          },
        ),
    };
  };

  Sentry.init({
    dsn,
    tunnel,
    release: RELEASE,
    environment: "sdktest",
    serverName: "sdktest-host",
    tracesSampleRate: 1.0,
    sendDefaultPii: true,
    enableLogs: true, // the default from 11.x on; 10.x needs it
    transport: watchedTransport,
  });

  // 1. A captured exception with PII in the message, user, extra, contexts and request headers.
  let eventId;
  Sentry.withScope((scope) => {
    scope.setUser({ id: "u-1001", email: EMAIL });
    scope.setExtra("password", PASSWORD);
    scope.setExtra("order_total", 4999);
    // Over 32 KiB, so the SDK gzips this request (its only compressed path), still chunked.
    scope.setExtra("notes", "Customer called about the order. ".repeat(1200));
    scope.setContext("customer", { ssn: SSN, plan: "pro" });
    scope.setTag("checkout.step", "payment");
    scope.addEventProcessor((event) => {
      event.request = {
        url: "https://shop.example.com/api/signup",
        method: "POST",
        headers: { authorization: BEARER, "user-agent": "sdktest/1.0", accept: "application/json" },
      };
      return event;
    });
    eventId = Sentry.captureException(new Error(`signup failed for ${EMAIL} with SSN ${SSN}`));
  });

  // 2. A root span with a db child and a gen_ai child carrying a long prompt.
  const prompt = `You are a support bot. Customer Jane Doe, email ${EMAIL}, SSN ${SSN}. ` + "Be kind. ".repeat(300);
  let traceId;
  Sentry.startSpan({ name: "POST /api/chat", op: "http.server" }, (root) => {
    traceId = root.spanContext().traceId;
    Sentry.startSpan(
      { name: `SELECT * FROM users WHERE email = '${EMAIL}'`, op: "db", attributes: { "db.system": "postgresql" } },
      () => {},
    );
    Sentry.startSpan(
      {
        name: "chat gpt-4o",
        op: "gen_ai.chat",
        attributes: {
          "gen_ai.request.model": "gpt-4o",
          "gen_ai.prompt": prompt,
          "gen_ai.usage.input_tokens": 2500,
          "gen_ai.usage.output_tokens": 120,
        },
      },
      () => {},
    );
  });

  // 3. A log whose body, parameters and attributes carry PII.
  Sentry.logger.info(Sentry.logger.fmt`User ${EMAIL} signed up with SSN ${SSN}`, { password: PASSWORD });

  const flushed = await Sentry.flush(20000);
  await Sentry.close(20000);

  console.log(JSON.stringify({ event_id: eventId, trace_id: traceId, release: RELEASE, prompt_len: prompt.length }));
  console.error(`answers from the relay: ${JSON.stringify(statuses)}; failures: ${JSON.stringify(failures)}`);
  if (!flushed) {
    console.error("Sentry.flush timed out");
    return 1;
  }
  if (failures.length > 0 || statuses.some((status) => !(status >= 200 && status < 300))) {
    console.error("requests failed or got error answers");
    return 1;
  }
  if (statuses.length < 3) {
    console.error("expected at least 3 answered requests (error, spans, log)");
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
