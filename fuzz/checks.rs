//! What each fuzz target checks, as plain functions: the targets in `fuzz_targets/` call them under libFuzzer, and
//! `tests/fuzz_regressions.rs` runs every file of the kept corpora and crash reproducers through them in the normal
//! test suite (stable Rust, no sanitizer), so a fixed crash stays fixed.

// Each target calls one check; the rest are unused there.
#![allow(dead_code)]

use std::sync::OnceLock;

use bytes::Bytes;
use scrub_relay::decode::{self, ContentEncoding, DecodeError};
use scrub_relay::envelope::{Envelope, Item};
use scrub_relay::pipeline::{ProcessOptions, process};
use scrub_relay::rules::CompiledRules;
use serde_json::{Map, Value};

/// The envelope parser on arbitrary bytes: never a panic, and whatever parses serializes to bytes that parse back to
/// the same items.
pub fn envelope_parse(data: &[u8]) {
    let Ok(envelope) = Envelope::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = Envelope::parse(envelope.to_bytes()).expect("a serialized envelope parses");
    assert_eq!(again.headers, envelope.headers);
    assert_eq!(again.items.len(), envelope.items.len());
    for (a, b) in again.items.iter().zip(&envelope.items) {
        assert_eq!(a.ty(), b.ty());
        assert_eq!(a.payload(), b.payload());
    }
}

/// Every `Content-Encoding` decoder under its caps: never a panic, never more output than the cap, never a buffer
/// larger than what was charged, and a budget that says no stops the decoder.
///
/// Input: byte 0 picks the encoding, byte 1 the cap (a power of two up to 8 MiB), byte 2 how many growth steps the
/// budget grants (255: all); the rest is the body.
pub fn decode(data: &[u8]) {
    let [pick, cap_bits, grants, body @ ..] = data else {
        return;
    };
    let encoding = match pick % 5 {
        0 => ContentEncoding::Identity,
        1 => ContentEncoding::Gzip,
        2 => ContentEncoding::Deflate,
        3 => ContentEncoding::Brotli,
        _ => ContentEncoding::Zstd,
    };
    let cap = 1usize << (cap_bits % 24);
    let mut charged = 0usize;
    let mut steps = 0u8;
    let mut charge = |additional: usize| {
        if *grants != 255 && steps >= *grants {
            return false;
        }
        steps += 1;
        charged += additional;
        true
    };
    match decode::decode_charged(encoding, body, cap, &mut charge) {
        Ok(out) => {
            assert!(out.len() <= cap, "output over the cap");
            assert!(out.capacity() <= charged, "buffer larger than charged");
        }
        Err(DecodeError::OverBudget) => assert!(*grants != 255, "refused although the budget granted everything"),
        Err(DecodeError::TooLarge { limit }) => assert_eq!(limit, cap),
        Err(DecodeError::Invalid(_)) => {}
    }
    assert!(charged <= cap + 1, "charged past the cap: {charged} for {cap}");
}

const TYPES: [&str; 12] = [
    "event",
    "transaction",
    "span",
    "log",
    "trace_metric",
    "session",
    "sessions",
    "check_in",
    "profile",
    "replay_event",
    "attachment",
    "unknown_type",
];

fn rules() -> &'static CompiledRules {
    static RULES: OnceLock<CompiledRules> = OnceLock::new();
    RULES.get_or_init(|| {
        CompiledRules::from_yaml(include_str!("../rules.yaml")).expect("the repository's rules.yaml compiles")
    })
}

/// The streaming scrubber against the tree walk on the same envelope, with the repository's rules: never a panic,
/// the same items (JSON compared as values), the same redaction, truncation and drop counts.
///
/// Input: an envelope; when it does not parse, byte 0 picks an item type and the rest is that item's payload, so the
/// fuzzer can work on raw JSON too.
pub fn stream_vs_tree(data: &[u8]) {
    let envelope = match Envelope::parse(Bytes::copy_from_slice(data)) {
        Ok(envelope) => envelope,
        Err(_) => {
            let [pick, payload @ ..] = data else { return };
            let mut envelope = Envelope::new(Map::new());
            let mut item = Item::new(TYPES[usize::from(*pick) % TYPES.len()], Bytes::copy_from_slice(payload));
            if *pick >= 128 {
                item.headers_mut()
                    .insert("content_type".into(), Value::String("application/json".into()));
            }
            envelope.items.push(item);
            envelope
        }
    };
    // With a key twice in one object the walks legitimately differ: the stream scrubs and remarks every occurrence,
    // serde_json's tree keeps only the last (both scrub what they keep). Only "never a panic" holds there.
    let duplicate_keys = envelope.items.iter().any(|item| has_duplicate_keys(item.payload()));
    let run = |tree_walk_only| {
        let options = ProcessOptions {
            project_id: Some(42),
            explain: false,
            tree_walk_only,
            inflate_cap: None,
        };
        process(envelope.clone(), rules(), &options)
    };
    let streamed = run(false);
    let tree = run(true);
    if duplicate_keys {
        return;
    }
    assert_eq!(streamed.envelope.headers, tree.envelope.headers, "envelope header");
    assert_eq!(streamed.envelope.items.len(), tree.envelope.items.len(), "item count");
    for (s, t) in streamed.envelope.items.iter().zip(&tree.envelope.items) {
        assert_eq!(s.headers(), t.headers(), "item headers");
        match (
            serde_json::from_slice::<Value>(s.payload()),
            serde_json::from_slice::<Value>(t.payload()),
        ) {
            (Ok(sv), Ok(tv)) => assert_eq!(sv, tv, "payload"),
            _ => assert_eq!(s.payload(), t.payload(), "payload bytes"),
        }
    }
    assert_eq!(streamed.report.redactions, tree.report.redactions, "redactions");
    assert_eq!(streamed.report.truncations, tree.report.truncations, "truncations");
    assert_eq!(streamed.report.dropped, tree.report.dropped, "dropped");
    assert_eq!(
        streamed.report.dropped_spans, tree.report.dropped_spans,
        "dropped spans"
    );
}

/// Whether `payload` is JSON with some object holding a key twice.
fn has_duplicate_keys(payload: &[u8]) -> bool {
    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Any JSON value; deserializing fails at the first repeated key.
    struct Unique;
    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Unique, D::Error> {
            deserializer.deserialize_any(UniqueVisitor)
        }
    }
    struct UniqueVisitor;
    impl<'de> Visitor<'de> for UniqueVisitor {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON without repeated keys")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(de::Error::custom("repeated key"));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    // Both parsers have serde_json's nesting limit, so JSON too deep for one is refused by the other as well.
    serde_json::from_slice::<Value>(payload).is_ok() && serde_json::from_slice::<Unique>(payload).is_err()
}

/// The rules loader on arbitrary text: compiled or refused with an error, never a panic.
pub fn rules_load(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = CompiledRules::from_yaml(text);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The payload formats that are not plain JSON: replays, minidumps, the crashpad upload, OTLP, browser reports.
// Each check states what must hold of what the relay forwards, not only "no panic". Inflated sizes are bounded by
// `GROWTH` times the input plus `SLACK`: a scrubbed value can grow (a one-digit number under a sensitive key becomes
// `"[FILTERED]"`; serde_json writes `1e15` as `1000000000000000.0`), but never without bound.

const GROWTH: usize = 8;
const SLACK: usize = 4096;

fn bounded(what: &str, output: usize, input: usize) {
    assert!(
        output <= GROWTH * input + SLACK,
        "{what}: {output} bytes out of {input} in"
    );
}

/// Whether a second pass over `first` (giving `second`) only changed text that crosses a mask the first pass wrote.
/// Removing a value can join what was around it into a new match (`https://a?x&api_key=v?y:p@h` loses the `?` that
/// stopped the URL-credentials pattern): that is the first pass's own rewrite, not a secret it missed. A second pass
/// that changes text holding no mask found something the first pass left, which is what idempotence is checked for.
/// Compared on the bytes that differ (common prefix and suffix removed), so it is exact for one changed string and
/// looser when several changed. Verified to flag the three misses kept under `regressions/` had their fixes not
/// been made (`tests/fuzz_regressions.rs` has a unit test of it).
pub fn only_across_masks(first: &[u8], second: &[u8]) -> bool {
    if first == second {
        return true;
    }
    let prefix = first.iter().zip(second).take_while(|(a, b)| a == b).count();
    let suffix = first[prefix..]
        .iter()
        .rev()
        .zip(second[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (start, end) = (prefix, first.len() - suffix);
    // A mask overlapping the changed bytes (it may be cut by the common prefix or suffix); one merely next to them
    // does not count: `***@e.roe@example.org` becoming `***@***@example.org` is a miss, not a rewrite's artefact.
    masks().iter().any(|mask| {
        first
            .windows(mask.len())
            .enumerate()
            .any(|(at, w)| w == mask.as_bytes() && at < end && start < at + mask.len())
    })
}

/// The replacement texts of the repository's rules (key rules and every detector).
fn masks() -> &'static [String] {
    static MASKS: OnceLock<Vec<String>> = OnceLock::new();
    MASKS.get_or_init(|| {
        let engine = rules().engine(Some(42));
        let mut masks: Vec<String> = engine
            .detectors
            .detectors
            .iter()
            .map(|d| d.replacement.clone())
            .collect();
        masks.push(engine.key_replacement.clone());
        masks.retain(|m| !m.is_empty());
        masks.sort();
        masks.dedup();
        masks
    })
}

/// Runs one envelope through the pipeline with the repository's rules, as the ingest route does.
fn pipeline(envelope: Envelope) -> scrub_relay::pipeline::Processed {
    let options = ProcessOptions {
        project_id: Some(42),
        explain: false,
        tree_walk_only: false,
        inflate_cap: None,
    };
    process(envelope, rules(), &options)
}

const REPLAY_EVENT: &[u8] = br#"{"type":"replay_event","replay_id":"b1b215f59b664fe8bdcc53688ac310aa","segment_id":0,"replay_type":"session","timestamp":1795998224.631,"urls":["https://shop.example/"]}"#;

/// A replay envelope: the replay event, then the payload as a `replay_recording` (byte 0 even) or `replay_video`
/// (byte 0 odd) item. Through the pipeline:
/// - never a panic; a replay is all or nothing: the replay event is forwarded exactly when the recording or video is;
/// - a forwarded recording decodes again (header line as it came, zlib or the original bytes), with the same number
///   of rrweb events and each event's `type` and `timestamp` unchanged, and its inflated JSON within the growth bound;
/// - a forwarded video is a msgpack map of exactly the three keys, in the order they came, the mp4 byte for byte,
///   the recording as above and the replay event JSON;
/// - scrubbing is idempotent: the forwarded item, sent again, comes back unchanged.
pub fn replay(data: &[u8]) {
    let [pick, payload @ ..] = data else { return };
    let video = pick & 1 == 1;
    let ty = if video { "replay_video" } else { "replay_recording" };
    let mut envelope = Envelope::new(Map::new());
    envelope
        .items
        .push(Item::new("replay_event", Bytes::from_static(REPLAY_EVENT)));
    envelope.items.push(Item::new(ty, Bytes::copy_from_slice(payload)));
    let out = pipeline(envelope).envelope;
    let kept = out.items.iter().find(|item| item.ty().as_str() == ty);
    let event_kept = out.items.iter().any(|item| item.ty().as_str() == "replay_event");
    assert_eq!(kept.is_some(), event_kept, "a replay is all or nothing");
    let Some(kept) = kept else { return };
    if video {
        check_video(payload, kept.payload());
    } else {
        check_recording(payload, kept.payload());
    }
    // Idempotent: what the relay forwarded, scrubbed again, is forwarded as it is.
    let mut again = Envelope::new(Map::new());
    again
        .items
        .push(Item::new("replay_event", Bytes::from_static(REPLAY_EVENT)));
    again.items.push(Item::new(ty, kept.payload().clone()));
    let twice = pipeline(again).envelope;
    let second = twice
        .items
        .iter()
        .find(|item| item.ty().as_str() == ty)
        .expect("a forwarded replay is forwarded again");
    assert_eq!(second.payload(), kept.payload(), "scrubbing a scrubbed {ty} changes it");
}

/// The header line and the inflated JSON of a recording, as the replay consumer reads it (zlib or plain JSON; gzip
/// too, which the relay re-encodes).
fn read_recording(bytes: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    use std::io::Read;
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let (header, body) = (&bytes[..newline], &bytes[newline + 1..]);
    let mut json = Vec::new();
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => json.extend_from_slice(body),
        Some(0x78) => {
            flate2::read::ZlibDecoder::new(body)
                .take(200 << 20)
                .read_to_end(&mut json)
                .ok()?;
        }
        Some(0x1f) => {
            flate2::read::GzDecoder::new(body)
                .take(200 << 20)
                .read_to_end(&mut json)
                .ok()?;
        }
        _ => return None,
    }
    Some((header, json))
}

fn check_recording(input: &[u8], output: &[u8]) {
    let (header_in, json_in) = read_recording(input).expect("a forwarded recording was readable when it came");
    let (header_out, json_out) = read_recording(output).expect("a forwarded recording decodes again");
    assert_eq!(header_out, header_in, "recording header line");
    if output != input {
        assert_eq!(output[header_out.len() + 1], 0x78, "a re-encoded recording is zlib");
    }
    let events_in: Vec<Value> = serde_json::from_slice(&json_in).expect("the input recording was a JSON array");
    let events_out: Vec<Value> = serde_json::from_slice(&json_out).expect("a forwarded recording is a JSON array");
    assert_eq!(events_out.len(), events_in.len(), "rrweb event count");
    for (a, b) in events_in.iter().zip(&events_out) {
        for field in ["type", "timestamp"] {
            // Numbers are never touched; the fuzzer also writes objects there, whose strings are scrubbed.
            if a.get(field).is_some_and(Value::is_number) {
                assert_eq!(a.get(field), b.get(field), "rrweb event {field}");
            }
        }
    }
    bounded("recording", json_out.len(), json_in.len());
}

/// The `(key, value)` entries of a msgpack map of string keys and `bin` or `str` values; `None` if it is not one.
/// Keys that are not UTF-8 are read (and skipped by the relay) too: they come back lossily decoded.
fn msgpack_map(mut rest: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let entries = rmp::decode::read_map_len(&mut rest).ok()?;
    let mut out = Vec::new();
    for _ in 0..entries {
        let key_len = rmp::decode::read_str_len(&mut rest).ok()? as usize;
        let key = String::from_utf8_lossy(rest.get(..key_len)?).into_owned();
        rest = &rest[key_len..];
        let marker = rmp::Marker::from_u8(*rest.first()?);
        let len = match marker {
            rmp::Marker::Bin8 | rmp::Marker::Bin16 | rmp::Marker::Bin32 => rmp::decode::read_bin_len(&mut rest).ok()?,
            _ => rmp::decode::read_str_len(&mut rest).ok()?,
        } as usize;
        out.push((key, rest.get(..len)?.to_vec()));
        rest = &rest[len..];
    }
    rest.is_empty().then_some(out)
}

fn check_video(input: &[u8], output: &[u8]) {
    let parts_in = msgpack_map(input).expect("a forwarded video was a msgpack map when it came");
    let parts_out = msgpack_map(output).expect("a forwarded video decodes again");
    let keys: Vec<&str> = parts_out.iter().map(|(k, _)| k.as_str()).collect();
    let known = ["replay_event", "replay_recording", "replay_video"];
    let keys_in: Vec<&str> = parts_in
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| known.contains(k))
        .collect();
    assert_eq!(keys, keys_in, "the three keys, in the order they came");
    let get = |parts: &[(String, Vec<u8>)], key: &str| parts.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    assert_eq!(
        get(&parts_out, "replay_video"),
        get(&parts_in, "replay_video"),
        "the mp4 is kept byte for byte"
    );
    let recording_in = get(&parts_in, "replay_recording").expect("recording");
    let recording_out = get(&parts_out, "replay_recording").expect("recording");
    check_recording(&recording_in, &recording_out);
    let event = get(&parts_out, "replay_event").expect("replay event");
    assert!(
        serde_json::from_slice::<Value>(&event).is_ok(),
        "the replay event is JSON"
    );
}

/// A minidump (or a compressed one) through `payload::minidump::scrub` with the repository's rules:
/// - never a panic;
/// - a scrubbed dump has the length of the (decompressed) input, the same header and stream directory, every
///   structural stream byte for byte, and differs only where a byte became `*` or NUL (the fill, `*\0` in UTF-16);
/// - it still parses, with the same streams;
/// - something changed exactly when redactions were counted (or the dump came compressed);
/// - scrubbing is idempotent: the scrubbed dump, scrubbed again, comes back byte for byte (its redaction count is not
///   compared: a value already masked with `*` is counted again).
pub fn minidump(data: &[u8]) {
    use scrub_relay::payload::minidump as dump;
    use scrub_relay::scrub::Scrubber;

    let engine = rules().engine(Some(42));
    let mut scrubber = Scrubber::new(engine, false);
    let Ok(scrubbed) = dump::scrub(data, &mut scrubber) else {
        return;
    };
    let (original, compression) = dump::decompress(data).expect("a scrubbed dump decompresses");
    assert_eq!(scrubbed.compression, compression);
    assert_eq!(
        scrubbed.bytes.is_some(),
        scrubbed.redactions > 0 || compression.is_some(),
        "bytes come back exactly when something changed or the dump came compressed"
    );
    let Some(out) = scrubbed.bytes else { return };
    assert_eq!(out.len(), original.len(), "length");
    for (i, (a, b)) in original.iter().zip(&out).enumerate() {
        assert!(a == b || *b == b'*' || *b == 0, "byte {i}: {a:#04x} became {b:#04x}");
    }
    let before = ::minidump::Minidump::read(&original[..]).expect("the input parsed");
    let after = ::minidump::Minidump::read(&out[..]).expect("a scrubbed dump parses");
    let directory = |dump: &::minidump::Minidump<'_, &[u8]>| {
        dump.all_streams()
            .map(|s| (s.stream_type, s.location.rva, s.location.data_size))
            .collect::<Vec<_>>()
    };
    let streams = directory(&before);
    assert_eq!(directory(&after), streams, "stream directory");
    let count = u32::from_le_bytes(original[8..12].try_into().unwrap()) as usize;
    let at = u32::from_le_bytes(original[12..16].try_into().unwrap()) as usize;
    if !original.starts_with(b"PMDM") {
        assert_eq!(out[..32], original[..32], "header");
        assert_eq!(out[at..at + 12 * count], original[at..at + 12 * count], "directory");
    }
    for (ty, rva, size) in streams {
        if dump::is_structural(ty) {
            let range = rva as usize..(rva as usize + size as usize);
            assert_eq!(out[range.clone()], original[range], "structural stream {ty:#x}");
        }
    }
    let mut scrubber = Scrubber::new(engine, false);
    let again = dump::scrub(&out, &mut scrubber).expect("a scrubbed dump scrubs again");
    if let Some(twice) = again.bytes {
        assert_eq!(twice, out, "scrubbing a scrubbed dump changes it");
    }
}

const CRASHPAD_BOUNDARY: &str = "fuzzBoundary7MA4YWxk";

/// The crashpad route's body parsing (`crashpad::envelope`), then the pipeline. Byte 0 picks the content type:
/// 0 `multipart/form-data` (boundary [`CRASHPAD_BOUNDARY`]), 1 `application/octet-stream`, 2 `application/x-dmp`,
/// 3 none. What must hold of an accepted upload:
/// - the envelope's first item is the event, a JSON object whose `event_id` is the envelope's, 32 hex digits;
/// - the second is the `event.minidump` attachment, a minidump (MDMP or PMDM), the upload's dump decompressed;
/// - at most 30 further attachments, at most 100 breadcrumbs;
/// - the envelope serializes and parses back; the pipeline takes it without a panic and keeps the event.
pub fn crashpad(data: &[u8]) {
    let [pick, body @ ..] = data else { return };
    let multipart = format!("multipart/form-data; boundary={CRASHPAD_BOUNDARY}");
    let content_type = match pick % 4 {
        0 => Some(multipart.as_str()),
        1 => Some("application/octet-stream"),
        2 => Some("application/x-dmp"),
        _ => None,
    };
    let id = || "0123456789abcdef0123456789abcdef".to_string();
    let Ok(envelope) = scrub_relay::crashpad::envelope(Bytes::copy_from_slice(body), content_type, id) else {
        return;
    };
    assert!(pick % 4 != 3, "an upload without a content type is refused");
    let event_id = envelope
        .headers
        .get("event_id")
        .and_then(Value::as_str)
        .expect("event_id header")
        .to_string();
    assert!(
        event_id.len() == 32
            && event_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "event id {event_id:?}"
    );
    let [event, dump, attachments @ ..] = &envelope.items[..] else {
        panic!("an upload makes an event and a minidump");
    };
    assert_eq!(event.ty().as_str(), "event");
    let event: Value = serde_json::from_slice(event.payload()).expect("the event is JSON");
    assert_eq!(event.get("event_id").and_then(Value::as_str), Some(event_id.as_str()));
    if let Some(breadcrumbs) = event.pointer("/breadcrumbs/values").and_then(Value::as_array) {
        assert!(breadcrumbs.len() <= 100, "{} breadcrumbs", breadcrumbs.len());
    }
    assert_eq!(dump.ty().as_str(), "attachment");
    assert_eq!(
        dump.headers().get("attachment_type").and_then(Value::as_str),
        Some("event.minidump")
    );
    assert!(
        dump.payload().starts_with(b"MDMP") || dump.payload().starts_with(b"PMDM"),
        "a minidump"
    );
    if pick % 4 != 0 {
        let (decompressed, _) = scrub_relay::payload::minidump::decompress(body).expect("decompresses");
        assert_eq!(dump.payload()[..], decompressed[..], "the raw body is the dump");
    }
    assert!(attachments.len() <= 30, "{} attachments", attachments.len());
    let reparsed = Envelope::parse(envelope.to_bytes()).expect("the crashpad envelope parses back");
    assert_eq!(reparsed.items.len(), envelope.items.len());
    let out = pipeline(envelope).envelope;
    assert!(
        out.items.iter().any(|item| item.ty().as_str() == "event"),
        "the event is kept"
    );
}

/// OTLP/HTTP through `otlp::process` with the repository's rules. Byte 0: bit 0 picks protobuf (0) or OTLP/JSON (1),
/// bit 1 traces (0) or logs (1); the rest is the body. For an accepted body:
/// - spans (or log records) received are those of the input; forwarded = received − dropped, and only traces drop
///   (server spans of filtered routes and their children);
/// - the body is forwarded exactly when something is left, in the encoding that came in: protobuf decodes as the same
///   request type, JSON parses as an object, with `forwarded` spans or records;
/// - what identifies a span or record stays: the forwarded spans are a subsequence of the input's by (trace id,
///   span id, parent, kind, start, end), log records keep their times, severities, trace and span ids, in order;
/// - the body stays within the growth bound;
/// - scrubbing is idempotent: the forwarded body, sent again, is forwarded as it is, or changed only across a mask
///   the first pass wrote (see [`only_across_masks`]; for protobuf, whose length prefixes change with any string,
///   this is weak: mostly "a second pass changes nothing where the first changed nothing").
pub fn otlp(data: &[u8]) {
    use scrub_relay::otlp::{Encoding, Signal, process};
    let [pick, body @ ..] = data else { return };
    let encoding = if pick & 1 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let signal = if pick & 2 == 0 { Signal::Traces } else { Signal::Logs };
    let Ok(processed) = process(signal, encoding, Bytes::copy_from_slice(body), rules(), 42) else {
        return;
    };
    let input = otlp_identities(signal, encoding, body).expect("an accepted body reads");
    assert_eq!(processed.received, input.len() as u64, "received");
    assert_eq!(
        processed.received - processed.forwarded,
        processed.report.dropped.len() as u64,
        "dropped"
    );
    if signal == Signal::Logs {
        assert_eq!(processed.forwarded, processed.received, "log records are never dropped");
    }
    let Some(out) = processed.body else {
        assert_eq!(processed.forwarded, 0, "a body with spans left is forwarded");
        return;
    };
    assert!(processed.forwarded > 0, "an empty request is not forwarded");
    let output = otlp_identities(signal, encoding, &out).expect("the forwarded body decodes as the same request type");
    assert_eq!(output.len() as u64, processed.forwarded, "forwarded");
    let mut rest = input.iter();
    for identity in &output {
        assert!(
            rest.any(|i| i == identity),
            "span or record identity changed or reordered: {identity:?}"
        );
    }
    bounded("otlp", out.len(), body.len());
    let again = process(signal, encoding, out.clone(), rules(), 42).expect("a forwarded body is accepted again");
    let twice = again.body.expect("a forwarded body is forwarded again");
    assert!(
        only_across_masks(&out, &twice),
        "scrubbing a scrubbed OTLP body finds more:\n{}\n{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&twice)
    );
}

/// What identifies each span (or log record) of an OTLP body, in order, as text; `None` if it does not decode.
fn otlp_identities(
    signal: scrub_relay::otlp::Signal,
    encoding: scrub_relay::otlp::Encoding,
    body: &[u8],
) -> Option<Vec<String>> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use scrub_relay::otlp::{Encoding, Signal};
    match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => {
            let request = ExportTraceServiceRequest::decode(body).ok()?;
            Some(
                request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                    .map(|s| {
                        format!(
                            "{:?} {:?} {:?} {} {} {} {}",
                            s.trace_id,
                            s.span_id,
                            s.parent_span_id,
                            s.kind,
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                            s.flags
                        )
                    })
                    .collect(),
            )
        }
        (Signal::Logs, Encoding::Protobuf) => {
            let request = ExportLogsServiceRequest::decode(body).ok()?;
            Some(
                request
                    .resource_logs
                    .iter()
                    .flat_map(|r| &r.scope_logs)
                    .flat_map(|s| &s.log_records)
                    .map(|r| {
                        format!(
                            "{:?} {:?} {} {} {} {} {}",
                            r.trace_id,
                            r.span_id,
                            r.time_unix_nano,
                            r.observed_time_unix_nano,
                            r.severity_number,
                            r.severity_text,
                            r.flags
                        )
                    })
                    .collect(),
            )
        }
        (_, Encoding::Json) => {
            let Value::Object(root) = serde_json::from_slice::<Value>(body).ok()? else {
                return None;
            };
            let (outer, inner, leaf, fields): (&[&str], &[&str], &[&str], &[&str]) = match signal {
                Signal::Traces => (
                    &["resourceSpans", "resource_spans"],
                    &["scopeSpans", "scope_spans"],
                    &["spans"],
                    &[
                        "traceId",
                        "trace_id",
                        "spanId",
                        "span_id",
                        "parentSpanId",
                        "parent_span_id",
                        "kind",
                        "startTimeUnixNano",
                        "start_time_unix_nano",
                        "endTimeUnixNano",
                        "end_time_unix_nano",
                        "flags",
                    ],
                ),
                Signal::Logs => (
                    &["resourceLogs", "resource_logs"],
                    &["scopeLogs", "scope_logs"],
                    &["logRecords", "log_records"],
                    &[
                        "timeUnixNano",
                        "time_unix_nano",
                        "observedTimeUnixNano",
                        "observed_time_unix_nano",
                        "severityNumber",
                        "severity_number",
                        "severityText",
                        "severity_text",
                        "flags",
                        "traceId",
                        "trace_id",
                        "spanId",
                        "span_id",
                    ],
                ),
            };
            // The relay reads the camelCase name when both are present, so the check does too.
            let list = |object: &Map<String, Value>, names: &[&str]| -> Vec<Value> {
                names
                    .iter()
                    .find_map(|name| object.get(*name))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            let mut out = Vec::new();
            for resource in list(&root, outer) {
                for scope in list(resource.as_object()?, inner) {
                    for item in list(scope.as_object()?, leaf) {
                        let item = item.as_object()?;
                        let id: Vec<String> = fields
                            .iter()
                            .map(|f| item.get(*f).map(Value::to_string).unwrap_or_default())
                            .collect();
                        out.push(id.join(" "));
                    }
                }
            }
            Some(out)
        }
    }
}

/// Browser reports as the security routes read them (`csp_reports` or `nel_reports`, then `reports_envelope`), then
/// the pipeline. Byte 0 picks CSP (even) or NEL (odd); the rest is the body. For an accepted body:
/// - one item per report, every one forwarded (a report is scrubbed, never dropped), a JSON object;
/// - directives, dispositions, status codes, line numbers, phases and types stay as they came, at the top level and
///   in `csp-report` and `body`;
/// - each report stays within the growth bound;
/// - scrubbing is idempotent: the forwarded reports, sent again, are all forwarded, each the same or changed only
///   across a mask the first pass wrote (see [`only_across_masks`]), URL fields included.
pub fn security_report(data: &[u8]) {
    use scrub_relay::envelope::ItemType;
    use scrub_relay::routes::security::{csp_reports, nel_reports, reports_envelope};
    let [pick, body @ ..] = data else { return };
    let (reports, ty) = if pick & 1 == 0 {
        (csp_reports(body), ItemType::RawSecurity)
    } else {
        (nel_reports(body), ItemType::Nel)
    };
    let Ok((reports, _skipped)) = reports else { return };
    let id = "0123456789abcdef0123456789abcdef".to_string();
    let envelope = reports_envelope(reports.clone(), ty, &[("sentry_release", "web@1.0".into())], id.clone());
    assert_eq!(envelope.items.len(), reports.len());
    let out = pipeline(envelope).envelope;
    assert_eq!(out.items.len(), reports.len(), "every report is forwarded");
    let mut forwarded = Vec::new();
    for (item, report) in out.items.iter().zip(&reports) {
        let Value::Object(scrubbed) = serde_json::from_slice(item.payload()).expect("a forwarded report is JSON")
        else {
            panic!("a forwarded report is an object");
        };
        for (object, original) in [
            (Some(&scrubbed), Some(report)),
            (
                scrubbed.get("csp-report").and_then(Value::as_object),
                report.get("csp-report").and_then(Value::as_object),
            ),
            (
                scrubbed.get("body").and_then(Value::as_object),
                report.get("body").and_then(Value::as_object),
            ),
        ] {
            let (Some(object), Some(original)) = (object, original) else {
                continue;
            };
            for field in scrub_relay::scrub::security::KEPT_FIELDS {
                assert_eq!(object.get(*field), original.get(*field), "{field} stays");
            }
        }
        let input = serde_json::to_vec(report).unwrap().len();
        bounded("report", item.payload().len(), input);
        forwarded.push(scrubbed);
    }
    let again = pipeline(reports_envelope(forwarded.clone(), ty, &[], id)).envelope;
    assert_eq!(
        again.items.len(),
        forwarded.len(),
        "every scrubbed report is forwarded again"
    );
    for (item, first) in again.items.iter().zip(&forwarded) {
        let second: Value = serde_json::from_slice(item.payload()).expect("a forwarded report is JSON");
        let (first, second) = (
            serde_json::to_string(first).expect("JSON"),
            serde_json::to_string(&second).expect("JSON"),
        );
        assert!(
            only_across_masks(first.as_bytes(), second.as_bytes()),
            "scrubbing a scrubbed report finds more:\n{first}\n{second}"
        );
    }
}
