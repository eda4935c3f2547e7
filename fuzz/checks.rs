//! What each fuzz target checks, as plain functions: the targets in `fuzz_targets/` call them under libFuzzer, and
//! `tests/fuzz_regressions.rs` runs every file of the kept corpora and crash reproducers through them in the normal
//! test suite (stable Rust, no sanitizer), so a fixed crash stays fixed.

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
