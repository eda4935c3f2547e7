//! What the upstream receives for representative real captures (one per SDK and item family), scrubbed with the
//! default rules: envelope header, item headers, payloads and the processing report, as reviewed JSON snapshots.
//!
//! A change in scrubbing behaviour shows up here as a diff to review. Accept intended changes with
//! `cargo insta review` (or `INSTA_UPDATE=always cargo test --test snapshots`) and commit the `.snap` files; CI runs
//! with `CI=true`, where insta never writes snapshots and a mismatch fails.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use bytes::Bytes;
use scrub_relay::envelope::Envelope;
use scrub_relay::pipeline::{self, ProcessOptions};
use scrub_relay::rules::CompiledRules;
use serde_json::{Value, json};

fn capture(name: &str) -> Bytes {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdk");
    let decompressed = dir.join(format!("{name}.envelope"));
    let path = if decompressed.exists() {
        decompressed
    } else {
        dir.join(format!("{name}.body"))
    };
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The scrubbed envelope as the upstream would parse it, plus the report.
fn scrubbed(name: &str) -> Value {
    let rules = CompiledRules::defaults();
    let envelope = Envelope::parse(capture(name)).expect("capture parses");
    let processed = pipeline::process(
        envelope,
        &rules,
        &ProcessOptions {
            project_id: Some(42),
            explain: false,
            ..ProcessOptions::default()
        },
    );
    // Serialize and parse again: the snapshot shows the bytes that go upstream, lengths included.
    let wire = Envelope::parse(processed.envelope.to_bytes()).expect("scrubbed envelope parses");
    let items: Vec<Value> = wire
        .items
        .iter()
        .map(|item| {
            let payload = match serde_json::from_slice::<Value>(item.payload()) {
                Ok(v) if item.type_name() != "attachment" => v,
                _ => match std::str::from_utf8(item.payload()) {
                    Ok(text) => Value::String(text.to_owned()),
                    Err(_) => json!({"binary_bytes": item.payload().len()}),
                },
            };
            json!({"headers": item.headers(), "payload": payload})
        })
        .collect();
    json!({
        "header": wire.headers,
        "items": items,
        "report": serde_json::to_value(&processed.report).expect("report serializes"),
    })
}

macro_rules! snapshot {
    ($test:ident, $capture:literal) => {
        #[test]
        fn $test() {
            insta::assert_json_snapshot!($capture, scrubbed($capture));
        }
    };
}

snapshot!(python_error_event_sdk_scrubbed, "py-error-event");
snapshot!(python_error_event_raw_pii, "py-error-event-rawpii");
snapshot!(python_exception_with_frame_vars, "py-error-exception-rawpii");
snapshot!(python_transaction_with_gen_ai_span_item, "py-transaction");
snapshot!(python_logs, "py-logs-2");
snapshot!(python_metrics, "py-metrics");
snapshot!(python_session, "py-session-2");
snapshot!(python_attachments, "py-attachment");
snapshot!(python_health_check_transaction, "py-health-1");
snapshot!(node_error_with_local_vars, "node-error-2");
snapshot!(node_span_stream_with_health_checks, "node-http-2");
snapshot!(node_gen_ai_spans, "node-genai");
snapshot!(node_feedback, "node-feedback");
snapshot!(node_logs, "node-logs-2");
snapshot!(node_check_in, "node-checkin-1");
snapshot!(node10_transaction, "node10-http-6");
snapshot!(rust_event, "rust-event-1");
snapshot!(rust_transaction, "rust-transaction-1");
snapshot!(rust_logs, "rust-transaction-2");
