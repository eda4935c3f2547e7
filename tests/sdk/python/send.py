"""Drive the real Python `sentry-sdk` against scrub-relay (used by tests/real_sdks.rs).

Usage: send.py <dsn> <gzip|br|none>

Sends, with planted PII and with the SDK's own scrubbing turned off (so the relay is the only thing that can
remove it): one error event, one transaction with a db span and a gen_ai span (Python moves gen_ai spans into a
`span` v2 item), and one log container. Prints one JSON line on stdout with the ids the test checks for.
Exits non-zero if the SDK reports any problem (non-2xx answer, network error, missing brotli, ...).
"""

import json
import logging
import sys

import sentry_sdk
from sentry_sdk import logger as sentry_logger
from sentry_sdk.scrubber import EventScrubber

EMAIL = "jane.doe@example.com"
SSN = "123-45-6789"
PASSWORD = "hunter2-S3cret!"
BEARER = "Bearer sk_live_51H8xYzAbCdEfGhIjKlMnOpQr"
RELEASE = "scrub-relay-sdktest@1.2.3"


class Problems(logging.Handler):
    """Collects every warning or error the SDK logs, so a failed send makes this script fail.

    Installed before `init`, which then skips its own debug handler and the filter that hides records
    unless `debug=True`.
    """

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)
        print("sentry_sdk: %s: %s" % (record.levelname, record.getMessage()), file=sys.stderr)


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in ("gzip", "br", "none"):
        print(__doc__, file=sys.stderr)
        return 2
    dsn, compression = sys.argv[1], sys.argv[2]

    problems = Problems()
    sdk_logger = logging.getLogger("sentry_sdk.errors")
    sdk_logger.addHandler(problems)
    sdk_logger.setLevel(logging.WARNING)

    if compression == "none":
        experiments = {"transport_compression_level": 0}
    else:
        experiments = {"transport_compression_algo": compression}
    if compression == "br":
        import brotli  # noqa: F401  (fail loudly here rather than let the SDK fall back to gzip)

    sentry_sdk.init(
        dsn=dsn,
        release=RELEASE,
        environment="sdktest",
        server_name="sdktest-host",
        traces_sample_rate=1.0,
        enable_logs=True,
        # The SDK's own scrubbing off: everything planted must reach the relay raw.
        send_default_pii=True,
        event_scrubber=EventScrubber(denylist=[], pii_denylist=[], recursive=True),
        default_integrations=False,
        _experiments=experiments,
    )

    # The SDK swallows send failures (connection refused is not even logged without `debug`), so watch the
    # transport itself: every answer it got, and every envelope it gave up on.
    transport = sentry_sdk.get_client().transport
    statuses, losses = [], []
    handle_response, record_lost_event = transport._handle_response, transport.record_lost_event

    def watched_handle_response(response, envelope):
        statuses.append(response.status)
        return handle_response(response=response, envelope=envelope)

    def watched_record_lost_event(reason, *args, **kwargs):
        losses.append(reason)
        return record_lost_event(reason, *args, **kwargs)

    transport._handle_response = watched_handle_response
    transport.record_lost_event = watched_record_lost_event

    # 1. An error event with PII in the message, user, extra, contexts and request headers.
    with sentry_sdk.new_scope() as scope:
        scope.set_user({"id": "u-1001", "email": EMAIL})
        scope.set_extra("password", PASSWORD)
        scope.set_extra("order_total", 4999)
        scope.set_context("customer", {"ssn": SSN, "plan": "pro"})
        scope.set_tag("checkout.step", "payment")

        def add_request(event, _hint):
            event["request"] = {
                "url": "https://shop.example.com/api/signup",
                "method": "POST",
                "headers": {"Authorization": BEARER, "User-Agent": "sdktest/1.0", "Accept": "application/json"},
            }
            return event

        scope.add_event_processor(add_request)
        try:
            raise ValueError("signup failed for %s with SSN %s" % (EMAIL, SSN))
        except ValueError:
            event_id = sentry_sdk.capture_exception()

    # 2. A transaction: a db span (stays in the transaction) and a gen_ai span (split into a `span` item).
    prompt = ("You are a support bot. Customer Jane Doe, email %s, SSN %s. " % (EMAIL, SSN)) + "Be kind. " * 300
    assert len(prompt) > 2000
    with sentry_sdk.start_transaction(op="http.server", name="POST /api/chat") as transaction:
        trace_id = transaction.trace_id
        with sentry_sdk.start_span(op="db", name="SELECT * FROM users WHERE email = '%s'" % EMAIL) as span:
            span.set_data("db.system", "postgresql")
        with sentry_sdk.start_span(op="gen_ai.chat", name="chat gpt-4o") as span:
            span.set_data("gen_ai.request.model", "gpt-4o")
            span.set_data("gen_ai.prompt", prompt)
            span.set_data("gen_ai.usage.input_tokens", 2500)
            span.set_data("gen_ai.usage.output_tokens", 120)

    # 3. A log whose body and parameters carry PII.
    sentry_logger.info("User {email} signed up with SSN {ssn}", email=EMAIL, ssn=SSN)

    sentry_sdk.flush(timeout=20)
    client = sentry_sdk.get_client()
    client.close(timeout=20)

    print(json.dumps({"event_id": event_id, "trace_id": trace_id, "release": RELEASE, "prompt_len": len(prompt)}))
    print("answers from the relay: %s; lost: %s" % (statuses, losses), file=sys.stderr)
    if losses or any(not 200 <= status < 300 for status in statuses):
        print("the SDK lost envelopes or got error answers", file=sys.stderr)
        return 1
    if len(statuses) < 3:
        print("expected at least 3 answered requests (error, transaction, log)", file=sys.stderr)
        return 1
    if problems.records:
        print("the SDK reported %d problem(s)" % len(problems.records), file=sys.stderr)
        return 1
    if event_id is None:
        print("capture_exception returned no event id", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
