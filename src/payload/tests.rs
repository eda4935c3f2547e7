//! Unit tests of the payload formats through `process`: replay recordings (zlib and raw, real Chromium output,
//! every malformed variant), replay videos (msgpack, snapshot, wrong shapes, the policy) and attachment policies.

use std::io::{Read, Write};

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Format, Outcome};
use crate::envelope::{Envelope, Item, ItemType};
use crate::pipeline::{DropReason, ProcessOptions, Processed, process};
use crate::rules::CompiledRules;

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";

fn run_with(rules: &CompiledRules, items: Vec<Item>) -> Processed {
    let mut headers = serde_json::Map::new();
    headers.insert("event_id".into(), json!("9ec79c33ec9942ab8353589fcb2e04dc"));
    let mut envelope = Envelope::new(headers);
    envelope.items = items;
    process(envelope, rules, &ProcessOptions::default())
}

fn run(items: Vec<Item>) -> Processed {
    run_with(&CompiledRules::defaults(), items)
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

fn recording_bytes(events: &Value, compress: bool) -> Vec<u8> {
    let json = serde_json::to_vec(events).unwrap();
    let mut out = b"{\"segment_id\":3}\n".to_vec();
    out.extend(if compress { zlib(&json) } else { json });
    out
}

/// Splits a forwarded recording: the header line, and the events (the body must be zlib).
fn decode_recording(payload: &[u8]) -> (Value, Value) {
    let newline = payload.iter().position(|b| *b == b'\n').unwrap();
    assert_eq!(payload[newline + 1], 0x78, "re-encoded as zlib");
    let header = serde_json::from_slice(&payload[..newline]).unwrap();
    (
        header,
        serde_json::from_slice(&inflate(&payload[newline + 1..])).unwrap(),
    )
}

fn replay_event() -> Item {
    let event = json!({"type": "replay_event", "replay_id": "9ec79c33ec9942ab8353589fcb2e04dc", "segment_id": 3,
        "user": {"email": EMAIL}});
    Item::new("replay_event", Bytes::from(serde_json::to_vec(&event).unwrap()))
}

/// A segment with PII in every place rrweb puts page content, next to what must survive untouched.
fn rrweb_events() -> Value {
    json!([
        {"type": 4, "timestamp": 1700000000000u64, "data": {"href": "https://shop.example.org/checkout", "width": 1280, "height": 720}},
        {"type": 2, "timestamp": 1700000000001u64, "data": {"node": {"type": 0, "id": 1, "childNodes": [
            {"type": 2, "id": 2, "tagName": "style", "attributes": {"_cssText": ".total { font-weight: bold; }"}, "childNodes": []},
            {"type": 2, "id": 3, "tagName": "p", "attributes": {"class": "total", "title": format!("mail {EMAIL}")}, "childNodes": [
                {"type": 3, "id": 4, "textContent": format!("Write to {EMAIL} about tomatoes")}
            ]},
            {"type": 2, "id": 5, "tagName": "input", "attributes": {"value": CARD}, "childNodes": []}
        ]}, "initialOffset": {"top": 0, "left": 0}}},
        {"type": 3, "timestamp": 1700000000002u64, "data": {"source": 5, "text": CARD, "isChecked": false, "id": 5}},
        {"type": 3, "timestamp": 1700000000003u64, "data": {"source": 0, "texts": [{"id": 4, "value": format!("now {EMAIL}")}],
            "attributes": [{"id": 3, "attributes": {"title": EMAIL}}], "removes": [], "adds": []}},
        {"type": 5, "timestamp": 1700000000004u64, "data": {"tag": "breadcrumb", "payload": {"timestamp": 1700000000.004,
            "type": "default", "category": "console", "message": format!("user {EMAIL} paid"), "data": {"arguments": [EMAIL]}}}},
        {"type": 5, "timestamp": 1700000000005u64, "data": {"tag": "performanceSpan", "payload": {"op": "resource.fetch",
            "description": "https://api.example.org/pay", "startTimestamp": 1700000000.005, "endTimestamp": 1700000000.105,
            "data": {"method": "POST", "statusCode": 200,
                "request": {"size": 42, "headers": {"authorization": "Basic dXNlcjpwYXNz", "content-type": "application/json"},
                    "body": {"password": "hunter2-S3cret!", "amount": 12}},
                "response": {"size": 10, "headers": {"set-cookie": "session=abc123def456"}, "body": {"ok": true, "item_count": 3}}}}}},
        {"type": 5, "timestamp": 1700000000006u64, "data": {"tag": "options", "payload": {"sessionSampleRate": 1, "maskAllText": false}}}
    ])
}

fn recording_item(events: &Value, compress: bool) -> Item {
    Item::new("replay_recording", Bytes::from(recording_bytes(events, compress)))
}

#[test]
fn a_recording_is_scrubbed_leaf_by_leaf_and_keeps_its_structure() {
    for compress in [true, false] {
        let processed = run(vec![replay_event(), recording_item(&rrweb_events(), compress)]);
        assert!(processed.report.dropped.is_empty(), "{:?}", processed.report.dropped);
        let recording = &processed.envelope.items[1];
        let (header, events) = decode_recording(recording.payload());
        assert_eq!(header, json!({"segment_id": 3}));
        let text = events.to_string();
        for secret in [EMAIL, CARD, "hunter2-S3cret!", "dXNlcjpwYXNz", "abc123def456"] {
            assert!(!text.contains(secret), "compress={compress}: `{secret}` left in {text}");
        }
        // What the player and Sentry's indexes need: every number, the CSS, innocent text, the shapes.
        let original = rrweb_events();
        assert_eq!(events.as_array().unwrap().len(), original.as_array().unwrap().len());
        for (got, want) in events.as_array().unwrap().iter().zip(original.as_array().unwrap()) {
            assert_eq!(got["type"], want["type"]);
            assert_eq!(got["timestamp"], want["timestamp"]);
        }
        let node = &events[1]["data"]["node"]["childNodes"];
        assert_eq!(node[0]["attributes"]["_cssText"], ".total { font-weight: bold; }");
        assert_eq!(node[1]["childNodes"][0]["id"], 4);
        assert_eq!(
            node[1]["childNodes"][0]["textContent"],
            "Write to ***@example.com about tomatoes"
        );
        assert_eq!(
            events[2]["data"],
            json!({"source": 5, "text": "[redacted]", "isChecked": false, "id": 5})
        );
        assert_eq!(
            events[3]["data"]["texts"][0],
            json!({"id": 4, "value": "now ***@example.com"})
        );
        let network = &events[5]["data"]["payload"]["data"];
        assert_eq!(network["request"]["headers"]["authorization"], "[FILTERED]");
        assert_eq!(network["request"]["headers"]["content-type"], "application/json");
        assert_eq!(
            network["request"]["body"],
            json!({"password": "[FILTERED]", "amount": 12})
        );
        assert_eq!(network["response"]["headers"]["set-cookie"], "[FILTERED]");
        assert_eq!(network["response"]["body"], json!({"ok": true, "item_count": 3}));
        assert_eq!(network["statusCode"], 200);
        // Key rules stay inside network bodies: SDK options keep their numbers.
        assert_eq!(
            events[6]["data"]["payload"],
            json!({"sessionSampleRate": 1, "maskAllText": false})
        );
        assert_eq!(
            processed
                .report
                .payloads
                .get(&(Format::ReplayRecording, Outcome::Scrubbed)),
            Some(&1)
        );
        // The replay event is scrubbed as the JSON it is.
        let event: Value = serde_json::from_slice(processed.envelope.items[0].payload()).unwrap();
        assert_eq!(event["user"]["email"], "***@example.com");
    }
}

#[test]
fn a_clean_recording_is_forwarded_byte_for_byte() {
    let events =
        json!([{"type": 4, "timestamp": 1, "data": {"href": "https://example.org/", "width": 1, "height": 1}}]);
    for compress in [true, false] {
        let item = recording_item(&events, compress);
        let original = item.payload().clone();
        let processed = run(vec![item]);
        assert_eq!(processed.envelope.items[0].payload(), &original);
    }
}

#[test]
fn a_real_chromium_recording_is_scrubbed() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/replay/chromium-zlib.envelope"
    );
    let envelope = Envelope::parse(Bytes::from(std::fs::read(path).unwrap())).unwrap();
    let sent = envelope
        .items
        .iter()
        .find(|i| i.ty() == ItemType::ReplayRecording)
        .unwrap()
        .payload()
        .clone();
    let newline = sent.iter().position(|b| *b == b'\n').unwrap();
    let sent_events: Value = serde_json::from_slice(&inflate(&sent[newline + 1..])).unwrap();
    assert!(
        sent_events.to_string().contains("visible.jane@example.com"),
        "the fixture holds the planted email"
    );

    let processed = process(envelope, &CompiledRules::defaults(), &ProcessOptions::default());
    let recording = processed
        .envelope
        .items
        .iter()
        .find(|i| i.ty() == ItemType::ReplayRecording)
        .unwrap();
    let (_, events) = decode_recording(recording.payload());
    let text = events.to_string();
    for planted in [
        "visible.jane@example.com",
        "4111 1111 1111 1111",
        "crumb.planted@example.com",
        "console.planted@example.com",
    ] {
        assert!(!text.contains(planted), "`{planted}` left");
    }
    assert!(text.contains("Quarterly garden report") && text.contains("Tomatoes ripen in August."));
    let shape = |events: &Value| -> Vec<(Value, Value)> {
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["type"].clone(), e["timestamp"].clone()))
            .collect()
    };
    assert_eq!(shape(&events), shape(&sent_events));
}

/// Every way a recording can be undecodable: the recording and its replay event go, the error stays, counted.
#[test]
fn an_undecodable_recording_drops_the_whole_replay() {
    let good = recording_bytes(&rrweb_events(), true);
    let newline = good.iter().position(|b| *b == b'\n').unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 20);
    let mut bomb = b"{\"segment_id\":0}\n".to_vec();
    bomb.extend(zlib(&vec![b' '; super::replay_recording::MAX_INFLATED_BYTES + 1]));
    let mut gzip = b"{\"segment_id\":0}\n".to_vec();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(b"[1, 2").unwrap();
    gzip.extend(encoder.finish().unwrap());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated zlib", truncated),
        ("no header line", good[newline + 1..].to_vec()),
        (
            "header not JSON",
            [b"segment 3\n".as_slice(), &good[newline + 1..]].concat(),
        ),
        (
            "header without segment_id",
            [b"{}\n".as_slice(), &good[newline + 1..]].concat(),
        ),
        ("body neither zlib nor JSON", b"{\"segment_id\":0}\nhello".to_vec()),
        ("raw JSON that is not an array", b"{\"segment_id\":0}\n[1, 2".to_vec()),
        (
            "zlib of something not JSON",
            [b"{\"segment_id\":0}\n".as_slice(), &zlib(b"<html>")].concat(),
        ),
        ("gzip of broken JSON", gzip),
        ("inflates past the cap", bomb),
        ("empty", Vec::new()),
    ];
    for (case, payload) in cases {
        let error = Item::new("event", Bytes::from_static(br#"{"message":"boom"}"#));
        let recording = Item::new("replay_recording", Bytes::from(payload));
        let processed = run(vec![replay_event(), error, recording]);
        let kept: Vec<&str> = processed.envelope.items.iter().map(|i| i.type_name()).collect();
        assert_eq!(kept, ["event"], "{case}");
        let mut dropped = processed.report.dropped.clone();
        dropped.sort_by_key(|(ty, _)| ty.as_str());
        assert_eq!(
            dropped,
            [
                (ItemType::ReplayEvent, DropReason::InvalidReplay),
                (ItemType::ReplayRecording, DropReason::InvalidReplay)
            ],
            "{case}"
        );
        assert_eq!(
            processed
                .report
                .payloads
                .get(&(Format::ReplayRecording, Outcome::DroppedInvalid)),
            Some(&1),
            "{case}"
        );
    }
}

#[test]
fn a_gzip_recording_is_re_encoded_as_zlib() {
    let json =
        serde_json::to_vec(&json!([{"type": 4, "timestamp": 1, "data": {"href": "https://example.org/"}}])).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&json).unwrap();
    let payload = [b"{\"segment_id\":0}\n".as_slice(), &encoder.finish().unwrap()].concat();
    let processed = run(vec![Item::new("replay_recording", Bytes::from(payload))]);
    let (_, events) = decode_recording(processed.envelope.items[0].payload());
    assert_eq!(events[0]["data"]["href"], "https://example.org/");
}

/// A lying `length` is caught where the envelope is split, before any item is scrubbed.
#[test]
fn a_lying_length_is_an_envelope_error() {
    let recording = recording_bytes(&rrweb_events(), true);
    for length in [recording.len() + 5, recording.len() - 5] {
        let mut body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n".to_vec();
        body.extend(format!("{{\"type\":\"replay_recording\",\"length\":{length}}}\n").as_bytes());
        body.extend(&recording);
        body.push(b'\n');
        assert!(Envelope::parse(Bytes::from(body)).is_err(), "length {length}");
    }
}

// === replay_video ===

fn msgpack_map(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, entries.len() as u32).unwrap();
    for (key, value) in entries {
        rmp::encode::write_str(&mut out, key).unwrap();
        rmp::encode::write_bin(&mut out, value).unwrap();
    }
    out
}

const MP4: &[u8] = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom not really a video";

fn video_parts() -> (Vec<u8>, Vec<u8>) {
    let event = serde_json::to_vec(
        &json!({"type": "replay_event", "replay_id": "9ec79c33ec9942ab8353589fcb2e04dc",
        "segment_id": 0, "replay_type": "session", "user": {"email": EMAIL, "id": "u-1"}, "platform": "android"}),
    )
    .unwrap();
    let recording = recording_bytes(
        &json!([
            {"type": 4, "timestamp": 1, "data": {"href": "", "width": 1080, "height": 2400}},
            {"type": 5, "timestamp": 2, "data": {"tag": "video", "payload": {"segmentId": 0, "size": 37, "duration": 5000,
                "encoding": "h264", "container": "mp4", "height": 2400, "width": 1080, "frameCount": 5, "frameRate": 1}}},
            {"type": 5, "timestamp": 3, "data": {"tag": "breadcrumb", "payload": {"category": "ui.tap",
                "message": format!("login as {EMAIL}")}}}
        ]),
        false,
    );
    (event, recording)
}

fn video_item(map: Vec<u8>) -> Item {
    Item::new("replay_video", Bytes::from(map))
}

/// The decoded parts of a forwarded `replay_video`, as JSON for a snapshot (the mp4 as its length).
fn video_view(payload: &[u8]) -> Value {
    let mut rest = payload;
    let entries = rmp::decode::read_map_len(&mut rest).unwrap();
    let mut view = serde_json::Map::new();
    for _ in 0..entries {
        let len = rmp::decode::read_str_len(&mut rest).unwrap() as usize;
        let key = std::str::from_utf8(&rest[..len]).unwrap().to_owned();
        rest = &rest[len..];
        assert!(matches!(rest[0], 0xc4..=0xc6), "`{key}` is bin");
        let len = rmp::decode::read_bin_len(&mut rest).unwrap() as usize;
        let value = &rest[..len];
        rest = &rest[len..];
        let shown = match key.as_str() {
            "replay_event" => serde_json::from_slice(value).unwrap(),
            "replay_recording" => {
                let newline = value.iter().position(|b| *b == b'\n').unwrap();
                let body = &value[newline + 1..];
                let events: Value = if body[0] == b'[' {
                    serde_json::from_slice(body).unwrap()
                } else {
                    serde_json::from_slice(&inflate(body)).unwrap()
                };
                json!({"header": std::str::from_utf8(&value[..newline]).unwrap(), "zlib": body[0] == 0x78, "events": events})
            }
            _ => json!({"bytes": len, "unchanged": value == MP4}),
        };
        view.insert(key, shown);
    }
    assert!(rest.is_empty());
    Value::Object(view)
}

#[test]
fn a_replay_video_is_scrubbed_and_keeps_its_keys_and_video() {
    let (event, recording) = video_parts();
    // An unknown key is not forwarded: Sentry reads only the three, and nothing unscrubbed leaves.
    let map = msgpack_map(&[
        ("replay_event", &event),
        ("replay_recording", &recording),
        ("extra", b"secret"),
        ("replay_video", MP4),
    ]);
    let processed = run(vec![video_item(map)]);
    assert!(processed.report.dropped.is_empty());
    assert_eq!(
        processed.report.payloads.get(&(Format::ReplayVideo, Outcome::Scrubbed)),
        Some(&1)
    );
    insta::assert_json_snapshot!(
        "replay_video_scrubbed",
        video_view(processed.envelope.items[0].payload())
    );
}

#[test]
fn a_clean_replay_video_is_forwarded_byte_for_byte() {
    let event = serde_json::to_vec(
        &json!({"type": "replay_event", "replay_id": "9ec79c33ec9942ab8353589fcb2e04dc", "segment_id": 0}),
    )
    .unwrap();
    let recording = recording_bytes(
        &json!([{"type": 4, "timestamp": 1, "data": {"width": 1, "height": 1}}]),
        false,
    );
    let map = msgpack_map(&[
        ("replay_event", &event),
        ("replay_recording", &recording),
        ("replay_video", MP4),
    ]);
    let processed = run(vec![video_item(map.clone())]);
    assert_eq!(processed.envelope.items[0].payload().as_ref(), map.as_slice());
}

#[test]
fn a_replay_video_of_the_wrong_shape_drops_the_replay() {
    let (event, recording) = video_parts();
    let good = msgpack_map(&[
        ("replay_event", &event),
        ("replay_recording", &recording),
        ("replay_video", MP4),
    ]);
    let mut int_value = Vec::new();
    rmp::encode::write_map_len(&mut int_value, 1).unwrap();
    rmp::encode::write_str(&mut int_value, "replay_video").unwrap();
    rmp::encode::write_u32(&mut int_value, 7).unwrap();
    let mut int_key = Vec::new();
    rmp::encode::write_map_len(&mut int_key, 1).unwrap();
    rmp::encode::write_u32(&mut int_key, 7).unwrap();
    rmp::encode::write_bin(&mut int_key, MP4).unwrap();
    let mut array = Vec::new();
    rmp::encode::write_array_len(&mut array, 3).unwrap();
    let mut huge_claim = Vec::new();
    rmp::encode::write_map_len(&mut huge_claim, 1).unwrap();
    rmp::encode::write_str(&mut huge_claim, "replay_video").unwrap();
    rmp::encode::write_bin_len(&mut huge_claim, u32::MAX).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("an array", array),
        ("a JSON object", br#"{"replay_event":{}}"#.to_vec()),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("a bin longer than the payload", huge_claim),
        ("trailing bytes", [good.as_slice(), b"x"].concat()),
        ("an integer key", int_key),
        ("an integer value", int_value),
        (
            "missing the video",
            msgpack_map(&[("replay_event", &event), ("replay_recording", &recording)]),
        ),
        (
            "an empty video",
            msgpack_map(&[
                ("replay_event", &event),
                ("replay_recording", &recording),
                ("replay_video", b""),
            ]),
        ),
        (
            "a repeated key",
            msgpack_map(&[
                ("replay_event", &event),
                ("replay_event", &event),
                ("replay_recording", &recording),
                ("replay_video", MP4),
            ]),
        ),
        (
            "an event that is not JSON",
            msgpack_map(&[
                ("replay_event", b"{oops"),
                ("replay_recording", &recording),
                ("replay_video", MP4),
            ]),
        ),
        (
            "a recording without header",
            msgpack_map(&[
                ("replay_event", &event),
                ("replay_recording", b"[]"),
                ("replay_video", MP4),
            ]),
        ),
    ];
    for (case, payload) in cases {
        let error = Item::new("event", Bytes::from_static(br#"{"message":"boom"}"#));
        let processed = run(vec![error, video_item(payload)]);
        let kept: Vec<&str> = processed.envelope.items.iter().map(|i| i.type_name()).collect();
        assert_eq!(kept, ["event"], "{case}");
        assert_eq!(
            processed.report.dropped,
            [(ItemType::ReplayVideo, DropReason::InvalidReplay)],
            "{case}"
        );
        assert_eq!(
            processed
                .report
                .payloads
                .get(&(Format::ReplayVideo, Outcome::DroppedInvalid)),
            Some(&1),
            "{case}"
        );
    }
}

/// The shipped rules with one line of the `drop` section replaced.
fn rules_yaml(line: &str, replacement: &str) -> String {
    let yaml = crate::rules::DEFAULT_RULES_YAML.replace(line, replacement);
    assert_ne!(
        yaml,
        crate::rules::DEFAULT_RULES_YAML,
        "the shipped rules still have `{line}`"
    );
    yaml
}

fn rules_with_attachments(entries: &str) -> CompiledRules {
    CompiledRules::from_yaml(&rules_yaml(
        "  attachments: []\n",
        &format!("  attachments:\n{entries}"),
    ))
    .unwrap()
}

#[test]
fn the_replay_video_policy_can_drop_the_whole_replay() {
    let (event, recording) = video_parts();
    let map = msgpack_map(&[
        ("replay_event", &event),
        ("replay_recording", &recording),
        ("replay_video", MP4),
    ]);
    let rules = CompiledRules::from_yaml(&rules_yaml("  replay_video: forward\n", "  replay_video: drop\n")).unwrap();
    let processed = run_with(&rules, vec![replay_event(), video_item(map)]);
    assert!(processed.envelope.items.is_empty());
    let mut dropped = processed.report.dropped.clone();
    dropped.sort_by_key(|(ty, _)| ty.as_str());
    assert_eq!(
        dropped,
        [
            (ItemType::ReplayEvent, DropReason::ReplayPolicy),
            (ItemType::ReplayVideo, DropReason::ReplayPolicy)
        ]
    );
    assert_eq!(
        processed
            .report
            .payloads
            .get(&(Format::ReplayVideo, Outcome::DroppedPolicy)),
        Some(&1)
    );
}

// === attachment policies ===

fn attachment(attachment_type: Option<&str>, content_type: Option<&str>, payload: &'static [u8]) -> Item {
    let mut item = Item::new("attachment", Bytes::from_static(payload));
    item.headers_mut().insert("filename".into(), json!("file.bin"));
    if let Some(t) = attachment_type {
        item.headers_mut().insert("attachment_type".into(), json!(t));
    }
    if let Some(c) = content_type {
        item.headers_mut().insert("content_type".into(), json!(c));
    }
    item
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe";

#[test]
fn binary_attachments_follow_the_first_matching_policy() {
    let rules = rules_with_attachments(concat!(
        "    - { attachment_type: event.attachment, content_type: image/png, action: drop }\n",
        "    - { content_type: \"image/*\", action: forward }\n",
        "    - { attachment_type: event.view_hierarchy, action: forward }\n",
    ));
    let cases = [
        (None, Some("image/png"), false),
        (Some("event.attachment"), Some("IMAGE/PNG; name=x"), false),
        (Some("event.screenshot"), Some("image/png"), true),
        (None, Some("image/jpeg"), true),
        (None, Some("application/octet-stream"), false),
        (None, None, false),
        (Some("event.view_hierarchy"), None, true),
    ];
    for (attachment_type, content_type, forwarded) in cases {
        let processed = run_with(&rules, vec![attachment(attachment_type, content_type, PNG)]);
        let case = format!("{attachment_type:?} {content_type:?}");
        assert_eq!(processed.envelope.items.len(), usize::from(forwarded), "{case}");
        if forwarded {
            assert_eq!(
                processed.envelope.items[0].payload().as_ref(),
                PNG,
                "{case}: forwarded as sent"
            );
            assert_eq!(
                processed
                    .report
                    .payloads
                    .get(&(Format::Attachment, Outcome::ForwardedUnscrubbed)),
                Some(&1)
            );
        } else {
            assert_eq!(
                processed.report.dropped,
                [(ItemType::Attachment, DropReason::BinaryAttachment)],
                "{case}"
            );
            assert_eq!(
                processed
                    .report
                    .payloads
                    .get(&(Format::Attachment, Outcome::DroppedPolicy)),
                Some(&1)
            );
        }
    }
}

#[test]
fn text_attachments_are_scrubbed_whatever_the_policy() {
    let rules = rules_with_attachments("    - { content_type: \"text/*\", action: drop }\n");
    let crash: &'static [u8] = b"Incident Identifier: 1\nPath: /Users/jane/App\nUser: jane.doe@example.com\n";
    let hierarchy: &'static [u8] =
        br#"{"windows":[{"type":"UILabel","text":"jane.doe@example.com","identifier":"email"}]}"#;
    let processed = run_with(
        &rules,
        vec![
            attachment(Some("event.applecrashreport"), Some("text/plain"), crash),
            attachment(Some("event.view_hierarchy"), Some("application/json"), hierarchy),
        ],
    );
    assert_eq!(processed.envelope.items.len(), 2);
    for item in &processed.envelope.items {
        let text = std::str::from_utf8(item.payload()).unwrap();
        assert!(!text.contains(EMAIL) && text.contains("***@example.com"), "{text}");
    }
    assert_eq!(
        processed.report.payloads.get(&(Format::Attachment, Outcome::Scrubbed)),
        Some(&2)
    );
}

#[test]
fn attachment_policies_are_validated() {
    for (entry, message) in [
        ("    - { action: forward }\n", "needs `attachment_type`"),
        (
            "    - { content_type: \"image/*png\", action: forward }\n",
            "prefix ending in `*`",
        ),
        (
            "    - { content_type: \"\", action: forward }\n",
            "prefix ending in `*`",
        ),
        (
            "    - { content_type: \"text/plain; charset=utf-8\", action: forward }\n",
            "prefix ending in `*`",
        ),
    ] {
        let yaml = rules_yaml("  attachments: []\n", &format!("  attachments:\n{entry}"));
        let error = CompiledRules::from_yaml(&yaml).unwrap_err().to_string();
        assert!(
            error.contains("drop.attachments[0]") && error.contains(message),
            "{entry}: {error}"
        );
    }
    let yaml = rules_yaml(
        "  attachments: []\n",
        "  attachments:\n    - { content_type: image/png, action: keep }\n",
    );
    assert!(CompiledRules::from_yaml(&yaml).is_err(), "unknown action");
}

// === the small lane's inflate cap ===

/// Under `ProcessOptions::inflate_cap` (the small processing lane's), a recording, a video's recording or a compressed
/// minidump that inflates past the cap ends the pass with `past_inflate_cap`, its item as it came and nothing dropped
/// or counted for it; without the cap the same envelope is processed as usual.
#[test]
fn payloads_inflating_past_the_pass_cap_end_the_pass_untouched() {
    let cap = 64 * 1024;
    let inflated = [b"[".as_slice(), &vec![b' '; 2 * cap], b"]"].concat();
    let mut recording = b"{\"segment_id\":0}\n".to_vec();
    recording.extend(zlib(&inflated));
    let (event, _) = video_parts();
    let video = msgpack_map(&[
        ("replay_event", &event),
        ("replay_recording", &recording),
        ("replay_video", MP4),
    ]);
    let mut dump = b"MDMP".to_vec();
    dump.resize(2 * cap, 0);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&dump).unwrap();
    let mut minidump = Item::new("attachment", Bytes::from(encoder.finish().unwrap()));
    minidump
        .headers_mut()
        .insert("attachment_type".into(), json!("event.minidump"));
    let cases = [
        ("recording", Item::new("replay_recording", Bytes::from(recording))),
        ("video", video_item(video)),
        ("minidump", minidump),
    ];
    for (case, item) in cases {
        let envelope = |item: &Item| {
            let mut envelope = Envelope::new(serde_json::Map::new());
            envelope.items = vec![replay_event(), item.clone()];
            envelope
        };
        let rules = CompiledRules::defaults();
        let capped = ProcessOptions {
            inflate_cap: Some(cap),
            ..ProcessOptions::default()
        };
        let processed = process(envelope(&item), &rules, &capped);
        assert!(processed.report.past_inflate_cap, "{case}");
        let last = processed.envelope.items.last().unwrap();
        assert_eq!(last.payload(), item.payload(), "{case}: left as it came");
        assert!(processed.report.dropped.is_empty(), "{case}");
        assert!(processed.report.payloads.is_empty(), "{case}");
        assert!(processed.report.minidumps.is_empty(), "{case}");

        let processed = process(envelope(&item), &rules, &ProcessOptions::default());
        assert!(!processed.report.past_inflate_cap, "{case}");
        let counted = processed.report.payloads.len() + processed.report.minidumps.len();
        assert_eq!(counted, 1, "{case}: processed without the cap");
    }
}
