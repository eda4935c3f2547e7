"""A stand-in application for the compose example: reports errors that carry PII and secrets to Sentry.

Its DSN points at the scrub-relay sidecar, so what reaches Sentry is scrubbed: the email keeps only its domain
(***@example.com), the card number, SSN and API key are gone, and the health-check transaction is dropped.
"""

import os
import time

import sentry_sdk

sentry_sdk.init(
    dsn=os.environ["SENTRY_DSN"],
    traces_sample_rate=1.0,
    send_default_pii=False,
)


def checkout(email, card_number):
    api_key = "sk_live_51Hexample0000000000000000"  # noqa: F841 (a frame variable the relay must scrub)
    raise ValueError(f"payment declined for {email} with card {card_number}")


while True:
    try:
        checkout("jane.doe@example.com", "4111 1111 1111 1111")
    except ValueError:
        sentry_sdk.capture_exception()
    sentry_sdk.set_user({"email": "jane.doe@example.com"})
    sentry_sdk.capture_message("customer SSN 123-45-6789 failed verification")
    with sentry_sdk.start_transaction(name="/health/", op="http.server"):
        pass
    with sentry_sdk.start_transaction(name="/api/orders/{id}", op="http.server"):
        time.sleep(0.05)
    sentry_sdk.flush()
    time.sleep(30)
