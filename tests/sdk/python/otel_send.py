"""Drive the real OpenTelemetry Python SDK against scrub-relay's OTLP routes (used by tests/routes.rs).

Usage: otel_send.py <relay base URL> <project id> <public key> <gzip|none>

Exports, with the OTLP/HTTP protobuf exporters and `x-sentry-auth`, one trace (a server span for a real route with
an HTTP header, a user email, a client IP, a SQL statement with a literal email, an exception event, plus a
health-check server span that the relay must drop) and two log records with planted PII in bodies and attributes.
Prints one JSON line with the trace id; exits non-zero if any export did not succeed.
"""

import json
import logging
import sys

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

EMAIL = "jane.doe@example.com"
SSN = "123-45-6789"
PASSWORD = "hunter2-S3cret!"
BEARER = "Bearer sk_live_51H8xYzAbCdEfGhIjKlMnOpQr"
CLIENT_IP = "203.0.113.77"


class Watched:
    """Wraps an exporter and records every result, so a refused export fails this script."""

    def __init__(self, exporter, success):
        self.exporter, self.success, self.results = exporter, success, []

    def export(self, batch):
        result = self.exporter.export(batch)
        self.results.append(result)
        return result

    def shutdown(self):
        self.exporter.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True

    def ok(self):
        return bool(self.results) and all(result == self.success for result in self.results)


def main():
    if len(sys.argv) != 5 or sys.argv[4] not in ("gzip", "none"):
        print(__doc__, file=sys.stderr)
        return 2
    base, project, key, compression = sys.argv[1:]
    compression = Compression.Gzip if compression == "gzip" else Compression.NoCompression
    headers = {"x-sentry-auth": "sentry sentry_key=%s, sentry_version=7" % key}
    otlp = "%s/api/%s/integration/otlp/v1" % (base.rstrip("/"), project)
    resource = Resource.create({"service.name": "checkout", "deployment.environment": "sdktest"})

    spans = Watched(
        OTLPSpanExporter(endpoint=otlp + "/traces", headers=headers, compression=compression, timeout=10),
        SpanExportResult.SUCCESS,
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = tracer_provider.get_tracer("otel-sdktest")

    with tracer.start_as_current_span(
        "POST /checkout",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "http.route": "/checkout",
            "url.full": "https://shop.example/checkout?session_token=abc123def456&page=2",
            "http.request.header.authorization": BEARER,
            "http.request.header.accept": "application/json",
            "client.address": CLIENT_IP,
            "user.email": EMAIL,
            "user.password": PASSWORD,
            "gen_ai.usage.input_tokens": 42,
            "max_tokens": 256,
        },
    ) as root:
        trace_id = "%032x" % root.get_span_context().trace_id
        with tracer.start_as_current_span(
            "SELECT users",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": "postgresql",
                "db.statement": "SELECT * FROM users WHERE email = '%s' AND ssn = '%s'" % (EMAIL, SSN),
            },
        ) as child:
            child.add_event("exception", {"exception.message": "lookup failed for %s" % EMAIL})
            child.set_status(Status(StatusCode.ERROR, "no user %s" % EMAIL))
    with tracer.start_as_current_span("GET /healthz", kind=SpanKind.SERVER, attributes={"http.route": "/healthz"}):
        pass
    tracer_provider.shutdown()

    records = Watched(
        OTLPLogExporter(endpoint=otlp + "/logs", headers=headers, compression=compression, timeout=10),
        LogRecordExportResult.SUCCESS,
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(records))
    logger = logging.getLogger("otel-sdktest")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
    logger.warning("password reset requested by %s", EMAIL, extra={"user.email": EMAIL, "api_key": PASSWORD})
    logger.info("charged card for order 1234", extra={"order.id": "ord_1234", "auth.header": BEARER})
    logger_provider.shutdown()

    if not spans.ok() or not records.ok():
        print("exports failed: spans %r, logs %r" % (spans.results, records.results), file=sys.stderr)
        return 1
    print(json.dumps({"trace_id": trace_id, "span_exports": len(spans.results), "log_exports": len(records.results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
