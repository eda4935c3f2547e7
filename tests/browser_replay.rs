//! Session Replay from a real browser: Debian's Chromium, driven headless by `playwright-core`, runs a page with
//! `@sentry/browser` and its Replay integration (masking off, so the page's text reaches the recording) and tunnels
//! through the relay to a recording upstream. The error, the `replay_event` and the `replay_recording` arrive; the
//! recording still decodes as rrweb JSON with the same events, node ids and innocent page text; the PII planted in
//! visible text, an input, the user, a breadcrumb and a console line is gone. A control proves the browser really
//! sent that PII: the driver captures every envelope as it left the page.
//!
//! `.ci/run` installs Chromium and `tests/browser` (`npm ci`) and points `SCRUB_RELAY_TEST_BROWSER_DIR` at it.
//! Without it these tests skip with a message, except under `CI=true`, where that is a failure.

mod common;

use std::collections::BTreeSet;
use std::io::Read;

use base64::Engine as _;
use bytes::Bytes;
use common::{MiniSentry, Recorded};
use scrub_relay::envelope::Envelope;
use serde_json::Value;

/// Planted in the page by tests/browser/replay.mjs: visible text, the typed card number, the user, a breadcrumb,
/// a console line.
const PLANTED: [&str; 5] = [
    "visible.jane@example.com",
    "4111 1111 1111 1111",
    "user.planted@example.com",
    "crumb.planted@example.com",
    "console.planted@example.com",
];
/// Page text that is nobody's secret and must reach Sentry's player.
const INNOCENT: [&str; 4] = [
    "Quarterly garden report",
    "Tomatoes ripen in August.",
    "Pay now",
    ".total { font-weight: bold; }",
];

const PROJECT: u64 = 42;
const PUBLIC_KEY: &str = "publickey123";

/// One item's payload, decoded: a recording's events, or any other payload as text.
struct Decoded {
    ty: String,
    /// `replay_recording`: the header line, whether the body was zlib, and the rrweb events.
    recording: Option<(Value, bool, Vec<Value>)>,
    text: String,
}

fn decode_envelope(envelope: &Envelope) -> Vec<Decoded> {
    envelope
        .items
        .iter()
        .map(|item| {
            let ty = item.type_name().to_owned();
            let payload = item.payload();
            if ty != "replay_recording" {
                return Decoded {
                    ty,
                    recording: None,
                    text: String::from_utf8_lossy(payload).into_owned(),
                };
            }
            let newline = payload.iter().position(|b| *b == b'\n').expect("recording header line");
            let header: Value = serde_json::from_slice(&payload[..newline]).expect("recording header is JSON");
            let body = &payload[newline + 1..];
            let zlib = body.first() == Some(&0x78);
            let json = if zlib {
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(body)
                    .read_to_end(&mut out)
                    .expect("recording inflates as zlib");
                out
            } else {
                body.to_vec()
            };
            let events: Vec<Value> = serde_json::from_slice(&json).expect("recording is a JSON array of events");
            let text = String::from_utf8(json).expect("recording JSON is UTF-8");
            Decoded {
                ty,
                recording: Some((header, zlib, events)),
                text,
            }
        })
        .collect()
}

/// Every node id in a recording, and the `(type, timestamp)` of every event: what the player needs intact.
fn skeleton(events: &[Value]) -> (BTreeSet<u64>, Vec<(u64, String)>) {
    fn ids(value: &Value, out: &mut BTreeSet<u64>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "id"
                        && let Some(id) = child.as_u64()
                    {
                        out.insert(id);
                    }
                    ids(child, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| ids(item, out)),
            _ => {}
        }
    }
    let mut node_ids = BTreeSet::new();
    ids(&Value::Array(events.to_vec()), &mut node_ids);
    let shape = events
        .iter()
        .map(|event| {
            (
                event["type"].as_u64().expect("event type"),
                event["timestamp"].to_string(),
            )
        })
        .collect();
    (node_ids, shape)
}

/// Runs the driver to completion and returns the envelopes the browser sent, as it sent them.
async fn drive_browser(dir: &std::path::Path, tunnel: &str, dsn: &str, mode: &str) -> Vec<Envelope> {
    let output = common::run_to_completion("node", &["replay.mjs", tunnel, dsn, mode], dir).await;
    let report = common::json_report(&output);
    report["sent"]
        .as_array()
        .expect("sent")
        .iter()
        .map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().expect("base64"))
                .expect("base64");
            Envelope::parse(Bytes::from(bytes)).expect("the browser sent a valid envelope")
        })
        .collect()
}

/// Every envelope the browser sent has arrived upstream (each one still carries an item).
fn has_replay(received: &[Recorded], sent: &[Envelope]) -> bool {
    received.len() >= sent.len()
}

async fn browser_replay(mode: &str) {
    let Some(dir) = common::tool("SCRUB_RELAY_TEST_BROWSER_DIR", "Chromium and tests/browser") else {
        return;
    };
    let upstream = MiniSentry::start().await;
    let relay = common::start_relay(common::relay_config(&upstream)).await;
    let dsn = format!("http://{PUBLIC_KEY}@{}/{PROJECT}", relay.addr);
    let tunnel = format!("http://{}/tunnel", relay.addr);

    let sent = drive_browser(&dir, &tunnel, &dsn, mode).await;

    // The control: the browser really sent the planted PII and the innocent text, in the recording.
    let sent_items: Vec<Decoded> = sent.iter().flat_map(decode_envelope).collect();
    // Segment 0 holds the full DOM snapshot; a slow machine may also flush a second segment.
    let segment_zero = |d: &&Decoded| d.recording.as_ref().is_some_and(|r| r.0["segment_id"] == 0);
    let sent_recording = sent_items
        .iter()
        .find(segment_zero)
        .and_then(|d| d.recording.as_ref().map(|r| (r, &d.text)))
        .expect("the browser sent segment 0 of a replay_recording");
    assert_eq!(
        sent_recording.0.1,
        mode == "zlib",
        "{mode}: the SDK compressed (or not) as configured"
    );
    let sent_text: String = sent_items.iter().map(|d| d.text.as_str()).collect();
    for planted in PLANTED {
        assert!(
            sent_text.contains(planted),
            "{mode}: the page no longer sends `{planted}`; the test proves nothing"
        );
    }
    for planted in [
        "visible.jane@example.com",
        "4111 1111 1111 1111",
        "crumb.planted@example.com",
    ] {
        assert!(
            sent_recording.1.contains(planted),
            "{mode}: the recording no longer holds `{planted}`"
        );
    }

    let mut received = Vec::new();
    while !has_replay(&received, &sent) {
        received.push(upstream.next().await);
    }

    let items: Vec<Decoded> = received.iter().flat_map(|r| decode_envelope(r.envelope())).collect();
    let all_text: String = items.iter().map(|d| d.text.as_str()).collect();
    for planted in PLANTED {
        assert!(!all_text.contains(planted), "{mode}: `{planted}` reached the upstream");
    }
    let recording = items.iter().find(segment_zero).expect("segment 0 forwarded");
    let (header, zlib, events) = recording.recording.as_ref().expect("decoded recording");
    assert_eq!(
        header,
        &serde_json::json!({"segment_id": 0}),
        "{mode}: header line kept"
    );
    assert!(
        zlib,
        "{mode}: the scrubbed recording is re-encoded as zlib, which Sentry reads"
    );
    for innocent in INNOCENT {
        assert!(
            recording.text.contains(innocent),
            "{mode}: innocent page text `{innocent}` was lost"
        );
    }
    // Structure: the same events in the same order with the same timestamps, and every node id still there.
    assert_eq!(
        skeleton(events),
        skeleton(&sent_recording.0.2),
        "{mode}: rrweb structure changed"
    );
    assert!(
        recording.text.contains("***@example.com"),
        "{mode}: the email was masked, not removed"
    );

    // The replay is still linked: the replay event and the recording share the replay's envelope, and the error names
    // the replay in its trace header (the DSC) and its `replayId` tag.
    let replay_envelope = received
        .iter()
        .find(|r| r.envelope().items.iter().any(|i| i.type_name() == "replay_recording"))
        .expect("replay envelope");
    let replay_id = replay_envelope
        .envelope()
        .event_id()
        .expect("replay envelope event_id")
        .to_owned();
    let replay_event = items.iter().find(|d| d.ty == "replay_event").expect("replay_event");
    let replay_event: Value = serde_json::from_str(&replay_event.text).expect("replay_event JSON");
    assert_eq!(replay_event["replay_id"], replay_id.as_str());
    let error_request = received
        .iter()
        .find(|r| r.envelope().items.iter().any(|i| i.type_name() == "event"))
        .expect("error envelope");
    assert_eq!(
        error_request.envelope().headers["trace"]["replay_id"],
        replay_id.as_str(),
        "{mode}: the error's trace header still links the replay"
    );
    let error = items.iter().find(|d| d.ty == "event").expect("error event");
    let error: Value = serde_json::from_str(&error.text).expect("event JSON");
    assert_eq!(
        error["tags"]["replayId"],
        replay_id.as_str(),
        "{mode}: the error's tag still links the replay"
    );

    // Every recording the relay received is counted as scrubbed. (The browser may still be flushing a later segment
    // when it is closed, so what it tried to send is not the measure; one may also still be in the relay: wait.)
    let value = |text: &str, series: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    common::wait_until(
        &format!("{mode}: every received recording is counted as scrubbed"),
        || {
            let text = relay.metrics().encode();
            let received = value(
                &text,
                r#"scrub_relay_items_received_total{item_type="replay_recording"}"#,
            );
            let scrubbed = value(
                &text,
                r#"scrub_relay_payloads_total{format="replay_recording",outcome="scrubbed"}"#,
            );
            received >= 1 && scrubbed == received
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_replay_with_compression_worker() {
    browser_replay("zlib").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_replay_uncompressed_fallback() {
    browser_replay("raw").await;
}
