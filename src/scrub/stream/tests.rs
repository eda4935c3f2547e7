//! The streaming walk against the tree walk: same JSON value, same counts and trail, on every SDK capture and on
//! hand-written edge cases; and the stream refuses exactly the JSON that serde_json refuses.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Bail, DropCheck, scrub_item_json};
use crate::envelope::Envelope;
use crate::pipeline::{ProcessOptions, Processed, process};
use crate::rules::CompiledRules;
use crate::scrub::tests::envelope_with as item;
use crate::scrub::{Scope, Scrubber};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk");

/// Every capture that holds an envelope (decompressed copy when there is one), by name.
fn captures() -> Vec<(String, Envelope)> {
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .expect("fixtures directory")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".body").map(str::to_string)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let bytes = std::fs::read(format!("{FIXTURES}/{name}.envelope"))
                .or_else(|_| std::fs::read(format!("{FIXTURES}/{name}.body")))
                .ok()?;
            Some((name, Envelope::parse(Bytes::from(bytes)).ok()?))
        })
        .collect()
}

fn run(envelope: Envelope, rules: &CompiledRules, tree_walk_only: bool) -> Processed {
    let options = ProcessOptions {
        project_id: Some(42),
        explain: true,
        tree_walk_only,
        ..ProcessOptions::default()
    };
    process(envelope, rules, &options)
}

/// Asserts both walks produce the same items (JSON compared as values: the stream keeps whitespace-free text and
/// numbers as written, and puts `_meta` last), the same counts and the same trail (as a set: the walks record
/// removals at different moments).
fn assert_same(label: &str, envelope: &Envelope, rules: &CompiledRules) -> Processed {
    let streamed = run(envelope.clone(), rules, false);
    let tree = run(envelope.clone(), rules, true);
    assert_eq!(
        streamed.envelope.headers, tree.envelope.headers,
        "{label}: envelope header"
    );
    assert_eq!(
        streamed.envelope.items.len(),
        tree.envelope.items.len(),
        "{label}: item count"
    );
    for (i, (s, t)) in streamed.envelope.items.iter().zip(&tree.envelope.items).enumerate() {
        assert_eq!(s.headers(), t.headers(), "{label}: item {i} headers");
        match (
            serde_json::from_slice::<Value>(s.payload()),
            serde_json::from_slice::<Value>(t.payload()),
        ) {
            (Ok(sv), Ok(tv)) => assert_eq!(sv, tv, "{label}: item {i} payload"),
            _ => assert_eq!(s.payload(), t.payload(), "{label}: item {i} payload bytes"),
        }
    }
    let (s, t) = (&streamed.report, &tree.report);
    assert_eq!(s.redactions, t.redactions, "{label}: redactions");
    assert_eq!(s.truncations, t.truncations, "{label}: truncations");
    assert_eq!(s.dropped, t.dropped, "{label}: dropped");
    assert_eq!(s.dropped_spans, t.dropped_spans, "{label}: dropped spans");
    let trail = |p: &Processed| {
        let mut changes: Vec<String> = p
            .report
            .changes
            .iter()
            .map(|c| format!("{:?} {} {} {}", c.item_index, c.path, c.rule, c.action.as_str()))
            .collect();
        changes.sort();
        changes
    };
    assert_eq!(trail(&streamed), trail(&tree), "{label}: changes");
    streamed
}

#[test]
fn both_walks_agree_on_every_capture_as_sent_and_once_scrubbed() {
    let rules = CompiledRules::defaults();
    let captures = captures();
    assert!(captures.len() > 80, "fixtures found: {}", captures.len());
    for (name, envelope) in &captures {
        let processed = assert_same(name, envelope, &rules);
        // Clean traffic: the same envelope after one pass, mostly innocent strings and SDK-style `_meta`.
        assert_same(&format!("{name} (scrubbed once)"), &processed.envelope, &rules);
    }
}

/// No capture is left to the tree walk, span containers a drop rule removes spans from included (node-http-2 holds
/// health-check segments).
#[test]
fn the_stream_handles_every_capture() {
    let rules = CompiledRules::defaults();
    let mut spans_removed = 0;
    for (name, envelope) in captures() {
        let processed = run(envelope, &rules, false);
        assert_eq!(
            processed.report.tree_walked_items, 0,
            "{name}: items left to the tree walk"
        );
        spans_removed += processed.report.dropped_spans;
    }
    assert!(spans_removed > 0, "a capture has spans a drop route removes");
}

fn event(payload: Value) -> Envelope {
    item("event", &payload)
}

#[test]
fn both_walks_agree_on_edge_cases() {
    let rules = CompiledRules::defaults();
    let span = |id: &str, segment: bool, path: &str| {
        json!({"trace_id": "5b8efff798038103d269b633813fc60c", "span_id": id, "is_segment": segment,
            "name": format!("GET {path}"), "start_timestamp": 1.0, "end_timestamp": 2.0,
            "attributes": {"url.path": {"type": "string", "value": path},
                "sentry.segment.id": {"type": "string", "value": "aaaaaaaaaaaaaaaa"}}})
    };
    let cases: Vec<(&str, Envelope)> = vec![
        (
            "send_default_pii removals and SDK _meta",
            event(json!({
                "user": {"ip_address": "203.0.113.9", "email": "jane.doe@example.com", "id": "42"},
                "request": {"cookies": "session=abc", "env": {"REMOTE_ADDR": "203.0.113.9"},
                    "headers": [["Authorization", "Bearer abc.def"], ["X-Forwarded-For", "203.0.113.9"]],
                    "url": "https://shop.example/cart?token=s3cr3t&page=2", "data": "password=hunter2&q=shoes"},
                "_meta": {"request": {"data": {"": {"rem": [["!config", "x"]]}}}},
                "extra": {"password": "hunter2", "nested": {"api_key": 12345, "empty": {}, "none": null}},
            })),
        ),
        (
            "JSON inside strings, escapes, numbers as written",
            event(json!({
                "extra": {"args": "{\"ssn\": \"123-45-6789\", \"ok\": \"fine\"}", "quote": "say \"hi\"\n\u{e9}",
                    "big": 12345678901234567890u64, "float": 1.5e300, "list": ["jane@example.com", 1, true, null]},
                "message": "Card 4111 1111 1111 1111 declined for +1 (415) 555-0100",
            })),
        ),
        (
            "keys holding emails go to the tree walk",
            event(json!({"extra": {"by_user": {"jane@example.com": 3, "x@example.org": 4}}})),
        ),
        (
            "typed attributes",
            item(
                "log",
                &json!({"items": [{"timestamp": 1.0, "level": "info", "body": "login for jane@example.com",
                    "trace_id": "5b8efff798038103d269b633813fc60c",
                    "attributes": {
                        "password": {"type": "integer", "value": 1234},
                        "api_key": {"type": "string", "value": "sk_live_abcdef"},
                        "http.request.header.authorization": {"type": "string[]", "value": ["Bearer x", "y"]},
                        "client.address": {"type": "string", "value": "203.0.113.9"},
                        "url.query": {"type": "string", "value": "token=abc&page=1"},
                        "gen_ai.prompt": {"type": "string", "value": "x".repeat(30_000)},
                        "untyped": "mail jane@example.com",
                        "sentry.release": {"type": "string", "value": "1.0.0"}}}]}),
            ),
        ),
        (
            "a segment span on a health route is dropped with its children",
            item(
                "span",
                &json!({"items": [span("aaaaaaaaaaaaaaaa", true, "/healthz"),
                    span("bbbbbbbbbbbbbbbb", false, "/db")]}),
            ),
        ),
        (
            "a segment span on a real route is kept",
            item("span", &json!({"items": [span("cccccccccccccccc", true, "/checkout")]})),
        ),
        (
            "a health-check transaction is dropped",
            item(
                "transaction",
                &json!({"type": "transaction", "transaction": "GET /health", "spans": [],
                    "contexts": {"trace": {"trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "aaaaaaaaaaaaaaaa"}}}),
            ),
        ),
        (
            "unknown item types",
            item(
                "something_new",
                &json!([{"password": "x", "note": "call 415-555-0100"}]),
            ),
        ),
        ("a JSON attachment", {
            let mut envelope = item(
                "attachment",
                &json!({"config": {"db_password": "x"}, "owner": "jane@example.com"}),
            );
            envelope.items[0]
                .headers_mut()
                .insert("filename".into(), json!("settings-jane@example.com.json"));
            envelope
        }),
    ];
    for (label, envelope) in cases {
        assert_same(label, &envelope, &rules);
    }
}

fn stream(json: &str) -> Result<Option<Vec<u8>>, Bail> {
    let rules = CompiledRules::defaults();
    let mut scrubber = Scrubber::new(rules.engine(None), false);
    scrubber.begin_item(Some(0), None, true);
    scrub_item_json(&mut scrubber, json.as_bytes(), Scope::EventRoot, DropCheck::None).map(|s| s.payload)
}

#[test]
fn the_stream_refuses_what_serde_json_refuses() {
    let invalid = [
        "",
        "{",
        "{\"a\":1,}",
        "[1,]",
        "{\"a\" 1}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":-}",
        "{\"a\":1e400}",
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"bad escape \\x\"}",
        "{\"a\":\"lone surrogate \\ud800\"}",
        "{\"a\":\"short \\u12\"}",
        "{\"a\":tru}",
        "{\"a\":1} trailing",
        "{\"a\":\"unterminated}",
        "{\"a\":\"\\\"}",
        "\u{feff}{}",
    ];
    for text in invalid {
        assert!(
            serde_json::from_str::<Value>(text).is_err(),
            "serde_json accepts {text:?}"
        );
        assert_eq!(stream(text), Err(Bail::Invalid), "{text:?}");
    }
    let invalid_utf8 = b"{\"a\":\"\xff\"}";
    let rules = CompiledRules::defaults();
    let mut scrubber = Scrubber::new(rules.engine(None), false);
    assert_eq!(
        scrub_item_json(&mut scrubber, invalid_utf8, Scope::EventRoot, DropCheck::None).map(|s| s.payload),
        Err(Bail::Invalid)
    );
}

#[test]
fn the_stream_accepts_what_serde_json_accepts_and_keeps_innocent_text() {
    let valid = [
        "{}",
        " { } ",
        "[]",
        "{\"a\" : [ 1 , -0.5e-3 , true , false , null , \"x\" ] }\n",
        "{\"a\":\"escaped \\\" quote and \\\\ backslash \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00\"}",
        "{\"a\":{\"b\":{\"c\":[[[]]]}}}",
        "{\"a\":18446744073709551616}",
        "\"just a string\"",
        "42",
    ];
    for text in valid {
        assert!(
            serde_json::from_str::<Value>(text).is_ok(),
            "serde_json refuses {text:?}"
        );
        assert_eq!(stream(text), Ok(None), "{text:?}");
    }
}

#[test]
fn deep_nesting_is_left_to_the_tree_walk() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(stream(&deep), Err(Bail::NeedsTree));
    let escaped_key = "{\"pass\\u0077ord\":\"hunter2\"}";
    assert_eq!(stream(escaped_key), Err(Bail::NeedsTree));
}

#[test]
fn a_stream_that_gives_up_leaves_no_counts_behind() {
    let rules = CompiledRules::defaults();
    let mut scrubber = Scrubber::new(rules.engine(None), true);
    scrubber.begin_item(Some(0), None, true);
    // The password is redacted before the email key makes the stream give up.
    let text = r#"{"extra":{"password":"hunter2","by":{"jane@example.com":1}}}"#;
    let result = scrub_item_json(&mut scrubber, text.as_bytes(), Scope::EventRoot, DropCheck::None);
    assert_eq!(result, Err(Bail::NeedsTree));
    assert!(scrubber.tally.redactions.is_empty());
    assert!(scrubber.tally.changes.is_empty());
    assert!(scrubber.meta.is_empty());
    assert!(!scrubber.changed);
}

/// Mutated captures (bytes flipped, deleted, duplicated, structural characters inserted): the stream never panics,
/// accepts exactly what serde_json accepts, and whatever it writes is JSON.
#[test]
fn mutated_payloads_never_panic_and_validate_like_serde_json() {
    let rules = CompiledRules::defaults();
    let payloads: Vec<Bytes> = captures()
        .into_iter()
        .flat_map(|(_, envelope)| envelope.items.into_iter().map(|item| item.payload().clone()))
        .filter(|payload| serde_json::from_slice::<Value>(payload).is_ok() && payload.len() < 20_000)
        .collect();
    assert!(!payloads.is_empty());
    let mut next = seeded_below();
    const INSERTS: &[u8] = b"{}[]\",:\\ 0-.eE\x01\xff";
    for round in 0..3000 {
        let mut bytes = payloads[next(payloads.len())].to_vec();
        for _ in 0..1 + next(3) {
            let at = next(bytes.len());
            match next(4) {
                0 => bytes[at] = INSERTS[next(INSERTS.len())],
                1 => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, INSERTS[next(INSERTS.len())]),
                _ => {
                    let end = (at + next(40)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
            }
        }
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        scrubber.begin_item(Some(0), None, true);
        let result = scrub_item_json(&mut scrubber, &bytes, Scope::EventRoot, DropCheck::None);
        let serde_accepts = serde_json::from_slice::<Value>(&bytes).is_ok();
        match result {
            Err(Bail::Invalid) => assert!(!serde_accepts, "round {round}: refused valid JSON"),
            Err(Bail::NeedsTree | Bail::Dropped | Bail::SpansDropped) => {}
            Ok(streamed) => {
                assert!(serde_accepts, "round {round}: accepted invalid JSON");
                if let Some(written) = streamed.payload {
                    assert!(
                        serde_json::from_slice::<Value>(&written).is_ok(),
                        "round {round}: wrote invalid JSON"
                    );
                }
            }
        }
    }
}

/// `find_string_special` as it was before strings of more than 32 bytes took `memchr2`: eight bytes at a time to
/// the end. The oracle of the tests below.
fn find_string_special_by_words(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let flags = super::string_special_flags(u64::from_le_bytes(chunk.try_into().expect("an 8-byte chunk")));
        if flags != 0 {
            return Some(i + (flags.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes
        .get(i..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

/// Random bytes of every length up to 300 (mostly plain, with quotes, backslashes, control characters, DEL and
/// UTF-8 bytes here and there, at any distance from the start), and every capture: the vector search finds the same
/// first special byte as the word-at-a-time one from every start.
#[test]
fn the_special_byte_search_finds_what_the_word_search_finds() {
    let mut next = seeded_below();
    const RARE: &[u8] = b"\"\\\x00\x01\x0a\x1f\x20\x7f\x80\xc3\xa9\xff";
    let mut texts: Vec<Vec<u8>> = (0..6000)
        .map(|round| {
            let len = round % 300;
            let rare_every = 1 + next(400);
            (0..len)
                .map(|_| match next(rare_every) {
                    0 => RARE[next(RARE.len())],
                    _ => b'a' + next(26) as u8,
                })
                .collect()
        })
        .collect();
    texts.extend(
        captures()
            .into_iter()
            .flat_map(|(_, envelope)| envelope.items.into_iter().map(|item| item.payload().to_vec())),
    );
    for text in &texts {
        let step = 1 + text.len() / 500;
        for from in (0..=text.len() + 2).step_by(step) {
            assert_eq!(
                super::find_string_special(text, from),
                find_string_special_by_words(text, from),
                "{:?} from {from}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

/// Strings of every length up to 200 around the 16 bytes `scan_string` reads at once and the 32 bytes before the
/// vector search, with escapes (good and bad), raw control characters and multi-byte characters at random places,
/// as a key and as a value, terminated or not: the stream accepts exactly what serde_json accepts (leaving escaped
/// keys to the tree walk) and reads the same strings.
#[test]
fn strings_of_every_length_validate_and_read_like_serde_json() {
    let mut next = seeded_below();
    const PIECES: &[&str] = &[
        "\\\"",
        "\\\\",
        "\\n",
        "\\u00e9",
        "\\ud83d\\ude00",
        "\\x",
        "\\ud800",
        "\"",
        "\t",
        "\u{1}",
        "\u{1f}",
        "é",
        "😀",
        "\u{7f}",
    ];
    // Each length six times: 6,000 rounds took a minute of the debug test run for no case these do not reach.
    for round in 0..1200 {
        let len = round % 200;
        let rare_every = 2 + next(300);
        let mut content = String::new();
        while content.len() < len {
            match next(rare_every) {
                0 => content.push_str(PIECES[next(PIECES.len())]),
                _ => content.push(char::from(b'a' + next(26) as u8)),
            }
        }
        let texts = [
            format!("{{\"{content}\":1,\"k\":\"{content}\",\"l\":[\"{content}\"]}}"),
            format!("{{\"k\":\"{content}\"}}"),
            format!("{{\"k\":\"{content}"),
            format!("[\"{content}\"]"),
        ];
        for text in texts {
            let serde = serde_json::from_str::<Value>(&text);
            match stream(&text) {
                Err(Bail::Invalid) => assert!(serde.is_err(), "round {round}: refused valid {text:?}"),
                // An escaped key: the tree walk's parser decides.
                Err(Bail::NeedsTree) => {}
                Err(other) => panic!("round {round}: {other:?} on {text:?}"),
                Ok(written) => {
                    let written = written.map_or(text.clone(), |w| String::from_utf8(w).expect("UTF-8"));
                    assert_eq!(
                        serde_json::from_str::<Value>(&written).ok(),
                        serde.ok(),
                        "round {round}: {text:?}"
                    );
                }
            }
        }
    }
}

/// The stream drops a transaction on a drop route itself (without the tree walk) when it reads its name and
/// `request.url` as the tree walk reads them: the last of duplicate keys wins, whatever it holds.
#[test]
fn the_stream_drops_transactions_as_the_tree_walk_does() {
    let rules = CompiledRules::defaults();
    let cases = [
        (r#"{"transaction":"GET /health/","spans":[]}"#, true),
        (
            r#"{"transaction":"/checkout","request":{"url":"https://shop.example/health_check"}}"#,
            true,
        ),
        (r#"{"transaction":"GET /health/","transaction":5}"#, false),
        (r#"{"transaction":5,"transaction":"GET /health/"}"#, true),
        (r#"{"transaction":"GET /health/","transaction":"/checkout"}"#, false),
        (
            r#"{"request":{"url":"https://shop.example/healthz"},"request":{"method":"GET"}}"#,
            false,
        ),
        (
            r#"{"request":{"url":"https://shop.example/healthz","url":null}}"#,
            false,
        ),
        (
            r#"{"request":{"method":"GET"},"request":{"url":"https://shop.example/healthz"}}"#,
            true,
        ),
        (
            r#"{"request":"https://shop.example/healthz","transaction":"/c","extra":{"url":"/health/"}}"#,
            false,
        ),
        (
            r#"{"transaction":"GET \/health\/","user":{"email":"jane.doe@example.com"}}"#,
            true,
        ),
    ];
    for (json, dropped) in cases {
        let mut envelope = Envelope::new(serde_json::Map::new());
        envelope
            .items
            .push(crate::envelope::Item::new("transaction", Bytes::from(json)));
        let processed = assert_same(json, &envelope, &rules);
        assert_eq!(processed.envelope.items.is_empty(), dropped, "{json}");
        assert_eq!(processed.report.tree_walked_items, 0, "{json}");
        assert!(
            processed.report.redactions.is_empty(),
            "{json}: a dropped item counts nothing"
        );
    }
}

/// Escapes are decoded without serde_json: the same text, and the same refusals (unknown escapes, short or non-hex
/// `\u` digits, lone or reversed surrogates), on edge cases and on random strings built from escape fragments.
#[test]
fn escapes_decode_as_serde_json_decodes_them() {
    let rules = CompiledRules::defaults();
    let check = |content: &str| {
        let json = format!("\"{content}\"");
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut stream = super::Stream::new(&mut scrubber, &json, DropCheck::None);
        let read = stream.read_string().map(|s| s.into_owned());
        let read = read.and_then(|s| {
            if stream.pos == json.len() {
                Ok(s)
            } else {
                Err(Bail::Invalid)
            }
        });
        let skipped = {
            stream.pos = 0;
            stream.skip_value().map(|()| stream.pos == json.len())
        };
        let expected = serde_json::from_str::<String>(&json).map_err(|_| Bail::Invalid);
        assert_eq!(read, expected, "{content:?}");
        assert_eq!(
            skipped.is_ok_and(|whole| whole),
            expected.is_ok(),
            "{content:?} skipped"
        );
    };
    let edges = [
        "plain",
        "\\\"",
        "\\\\",
        "\\/",
        "\\b\\f\\n\\r\\t",
        "\\u0000",
        "\\u00e9\\u00E9",
        "\\uFFFF",
        "\\ud83d\\ude00",
        "\\uD83D\\uDE00x",
        "\\ud800",
        "\\ud800x",
        "\\ud800\\n",
        "\\ud800\\ud800",
        "\\ud800\\u0041",
        "\\udc00",
        "\\ude00\\ud83d",
        "\\u12",
        "\\u12g4",
        "\\x",
        "\\",
        "\\u",
        "é\\té",
        "\\ud83d\\ude0",
        "\\ud83d\\",
    ];
    for edge in edges {
        check(edge);
    }
    const PIECES: &[&str] = &[
        "\\", "u", "d8", "D8", "3d", "dc", "DE", "00", "0", "a", "F", "g", "\\u", "\\ud83d", "\\ude00", "\\n", "\"",
        "é", "😀", "x", "/", "b", "t",
    ];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |bound: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % bound
    };
    for _ in 0..20_000 {
        let content: String = (0..1 + next(8)).map(|_| PIECES[next(PIECES.len())]).collect();
        check(&content);
    }
}

/// Span containers whose segment spans a drop route removes: the stream removes them and the spans below them as the
/// tree walk's filter does (the last of duplicate keys wins, children may come before their parents), and writes the
/// rest with the indices the tree walk sees.
#[test]
fn the_stream_removes_segment_spans_as_the_tree_walk_does() {
    let rules = CompiledRules::defaults();
    let span = |id: &str, parent: &str, extra: &str| {
        format!(
            r#"{{"trace_id":"5b8efff798038103d269b633813fc60c","span_id":"{id}","parent_span_id":"{parent}",
            "start_timestamp":1.5,"end_timestamp":2.25,"attributes":{{"user.email":{{"type":"string",
            "value":"jane.doe@example.com"}},"sentry.segment.id":{{"type":"string","value":"{id}"}}}}{extra}}}"#
        )
    };
    let segment = |id: &str, path: &str| {
        format!(
            r#"{{"span_id":"{id}","is_segment":true,"name":"GET","attributes":{{"url.path":{{"type":"string",
            "value":"{path}"}},"client.address":{{"type":"string","value":"203.0.113.9"}}}}}}"#
        )
    };
    let container = |spans: &[String]| format!(r#"{{"version":2,"items":[{}]}}"#, spans.join(","));
    let (seg, other) = ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb");
    // (label, payload, spans removed, walked as a tree)
    let cases: Vec<(&str, String, u64, u64)> = vec![
        (
            "children before their parents, and a kept segment after",
            container(&[
                span("cccccccccccccccc", "dddddddddddddddd", ""),
                span("dddddddddddddddd", seg, ""),
                segment(seg, "/healthz"),
                segment(other, "/checkout"),
                span("eeeeeeeeeeeeeeee", other, ""),
            ]),
            3,
            0,
        ),
        (
            "a child by its segment id only",
            container(&[
                segment(seg, "/health/"),
                span("cccccccccccccccc", "ffffffffffffffff", "")
                    .replace(r#""value":"cccccccccccccccc""#, &format!(r#""value":"{seg}""#)),
                segment(other, "/cart"),
            ]),
            2,
            0,
        ),
        (
            "the last of duplicate route attributes wins (kept)",
            container(&[
                segment(seg, "/checkout").replace(r#""url.path""#, r#""url.path":"/healthz","url.path""#),
                segment(other, "/checkout").replace("/checkout", "/checkout\"},\"url.path\":{\"value\":\"/cart"),
            ]),
            0,
            0,
        ),
        (
            "the last of duplicate route attributes wins (removed)",
            container(&[
                segment(seg, "/healthz").replace(r#""url.path""#, r#""url.path":"/checkout","url.path""#),
                segment(other, "/checkout"),
            ]),
            1,
            0,
        ),
        (
            "a later is_segment, name or typed value replaces an earlier one",
            container(&[
                segment(seg, "/healthz").replace(r#""is_segment":true"#, r#""is_segment":true,"is_segment":false"#),
                segment(other, "/checkout").replace(r#""name":"GET""#, r#""name":"GET /healthz","name":5"#),
                segment("cccccccccccccccc", "/healthz")
                    .replace(r#""value":"/healthz""#, r#""value":"/healthz","value":5"#),
            ]),
            0,
            0,
        ),
        (
            "a dropped segment without an id stays, as in the tree walk",
            container(&[
                segment(seg, "/healthz").replace(r#""span_id""#, r#""span_ref""#),
                segment(other, "/checkout"),
            ]),
            0,
            0,
        ),
        (
            "escaped route values",
            container(&[segment(seg, "\\/healthz\\/"), segment(other, "/checkout")]),
            1,
            0,
        ),
        (
            "every span goes: the item is dropped",
            container(&[segment(seg, "/healthz"), span("cccccccccccccccc", seg, "")]),
            2,
            0,
        ),
        (
            "duplicate items lists are left to the tree walk",
            format!(
                r#"{{"items":[{}],"items":[{},{}]}}"#,
                segment(other, "/checkout"),
                segment(seg, "/healthz"),
                segment(other, "/cart")
            ),
            1,
            1,
        ),
    ];
    for (label, payload, removed, tree_walked) in cases {
        let mut envelope = Envelope::new(serde_json::Map::new());
        envelope
            .items
            .push(crate::envelope::Item::new("span", Bytes::from(payload)));
        let processed = assert_same(label, &envelope, &rules);
        assert_eq!(
            processed.report.dropped_spans + 2 * u64::from(processed.envelope.items.is_empty()),
            removed,
            "{label}"
        );
        assert_eq!(processed.report.tree_walked_items, tree_walked, "{label}");
        if let Some(item) = processed.envelope.items.first()
            && removed > 0
        {
            let kept = serde_json::from_slice::<Value>(item.payload()).unwrap()["items"]
                .as_array()
                .unwrap()
                .len();
            assert_eq!(item.headers()["item_count"], json!(kept), "{label}");
        }
    }
}

/// An event's own `_meta` merged with ours through the stream: in one pass when serde_json would write the SDK's
/// text back unchanged, through a `Value` otherwise (whitespace, floats, duplicate keys); either way valid JSON with
/// one `_meta`, the same as the tree walk, and the one-pass text exactly what the `Value` route writes.
#[test]
fn an_sdk_meta_is_merged_the_same_whichever_route_takes_it() {
    use crate::envelope::Item;
    let rules = CompiledRules::defaults();
    let compact = r#"{"extra":{"token":{"":{"rem":[["!config","s"]],"len":9}}},"x":1}"#;
    let sdk_metas = [
        compact,
        r#"{"extra": {"token": {"": {"rem": [["!config", "s"]]}}}}"#,
        r#"{"extra":{"token":{"":{"rem":[["!config","s"]],"len":9.5}}}}"#,
        r#"{"extra":{"token":{"":{"len":1}},"token":{"":{"len":2}}}}"#,
        r#"[1]"#,
    ];
    for sdk in sdk_metas {
        for payload in [
            format!(r#"{{"_meta":{sdk},"extra":{{"password":"hunter2","token":"[Filtered]"}}}}"#),
            format!(r#"{{"extra":{{"password":"hunter2"}},"_meta":{sdk}}}"#),
        ] {
            let mut envelope = Envelope::new(serde_json::Map::new());
            envelope.items.push(Item::new("event", Bytes::from(payload.clone())));
            let processed = assert_same(&payload, &envelope, &rules);
            let out: Value = serde_json::from_slice(processed.envelope.items[0].payload()).expect(&payload);
            let meta = &out["_meta"]["extra"]["password"][""]["rem"];
            assert!(meta.as_array().is_some_and(|rem| !rem.is_empty()), "{payload}: {out}");
        }
    }
    // The one-pass text: the SDK's keys first, ours after, as the `Value` route orders them.
    let payload = format!(r#"{{"_meta":{compact},"extra":{{"password":"hunter2"}}}}"#);
    let mut envelope = Envelope::new(serde_json::Map::new());
    envelope.items.push(Item::new("event", Bytes::from(payload)));
    let processed = run(envelope, &rules, false);
    let text = std::str::from_utf8(processed.envelope.items[0].payload()).unwrap();
    assert_eq!(
        text,
        concat!(
            r#"{"extra":{"password":"[FILTERED]"},"_meta":{"extra":{"token":{"":{"rem":[["!config","s"]],"len":9}},"#,
            r#""password":{"":{"rem":[["sensitive_key","s",0,10]],"len":7}}},"x":1}}"#
        )
    );
}

/// Mutated span containers (node-http-2's, whose segment spans a drop route removes) through both span checks: no
/// panic, the same refusals as serde_json, JSON written.
#[test]
fn mutated_span_containers_never_panic_and_validate_like_serde_json() {
    let rules = CompiledRules::defaults();
    let payloads: Vec<Bytes> = captures()
        .into_iter()
        .filter(|(name, _)| name.starts_with("node-http-2") || name.contains("genai"))
        .flat_map(|(_, envelope)| envelope.items.into_iter())
        .filter(|item| item.ty() == crate::envelope::ItemType::Span)
        .map(|item| item.payload().clone())
        .collect();
    assert!(payloads.len() >= 2);
    let mut next = seeded_below();
    const INSERTS: &[u8] = b"{}[]\",:\\ 0-.eEtu\x01";
    for round in 0..800 {
        let mut bytes = payloads[next(payloads.len())].to_vec();
        let at = next(bytes.len());
        match next(3) {
            0 => bytes[at] = INSERTS[next(INSERTS.len())],
            1 => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, INSERTS[next(INSERTS.len())]),
        }
        let serde_accepts = serde_json::from_slice::<Value>(&bytes).is_ok();
        for check in [DropCheck::SegmentSpans, DropCheck::RemoveSegmentSpans] {
            let mut scrubber = Scrubber::new(rules.engine(None), false);
            scrubber.begin_item(Some(0), None, true);
            match scrub_item_json(&mut scrubber, &bytes, Scope::SpanContainer, check) {
                Err(Bail::Invalid) => assert!(!serde_accepts, "round {round} {check:?}: refused valid JSON"),
                Err(_) => {}
                Ok(streamed) => {
                    assert!(serde_accepts, "round {round} {check:?}: accepted invalid JSON");
                    if let Some(written) = streamed.payload {
                        assert!(
                            serde_json::from_slice::<Value>(&written).is_ok(),
                            "round {round} {check:?}: wrote invalid JSON"
                        );
                    }
                }
            }
        }
    }
}

/// Numbers below a bound (at least 1), from a fixed seed so that a failure reproduces.
fn seeded_below() -> impl FnMut(usize) -> usize {
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    move |bound| rng.usize(..bound.max(1))
}
