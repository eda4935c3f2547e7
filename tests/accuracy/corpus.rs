//! The real captures as they arrived: the PII the capture scripts used (sdk-traffic.md) must be gone after
//! processing, and the ids, timestamps and counters in them must come out unchanged.

use std::collections::BTreeMap;

use scrub_relay::envelope::Envelope;
use serde_json::Value;

use crate::check::{Failure, Kind, Output, Payload};
use crate::plant::{Needle, d, load_capture, t};

/// Every capture named in `INDEX.tsv`.
pub fn capture_names() -> Vec<String> {
    let index = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk/INDEX.tsv"))
        .expect("tests/fixtures/sdk/INDEX.tsv is readable");
    index
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

pub fn load(name: &str) -> Envelope {
    Envelope::parse(load_capture(name)).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

/// The PII the capture scripts put in every SDK's payloads (sdk-traffic.md, "PII used everywhere"), as needles.
pub fn corpus_needles() -> Vec<(&'static str, Needle)> {
    vec![
        ("email", t("jane.doe")),
        ("ssn", d("123-45-6789")),
        ("password", t("hunter2-S3cret!")),
        ("card", d("4111 1111 1111 1111")),
        ("api_key", t("sk_live_51H8xYzAbCdEfGhIjKlMnOpQr")),
        ("token", t("ghp_16C7e42F292c6912E7710c838347Ae178B4a")),
        ("phone", d("(555) 123-4567")),
        ("phone_intl", d("+1 555-123-4567")),
        ("bearer", t("Bearer xyz")),
        ("session_cookie", t("abc123sessionvalue")),
        ("csrf_cookie", t("csrf987")),
        ("aws_key", t("AKIAIOSFODNN7EXAMPLE")),
        ("jwt", t("dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")),
        (
            "stripe_signature",
            t("5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"),
        ),
    ]
}

/// The capture's client IP. It also appears in free text (a log line, a tool output) where no rule covers it, so it is
/// checked only in the fields `send_default_pii=False` would not have sent.
const CLIENT_IP: &str = "203.0.113.7";

fn is_client_ip_field(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    [
        "/user/ip_address",
        "/request/env/remote_addr",
        "/request/headers/x-forwarded-for",
        "/request/headers/x-real-ip",
        "/attrs/ip_address",
        "/attributes/client.address",
        "/attributes/user.ip_address",
        "/attributes/http.request.header.x-forwarded-for",
        "/data/http.client_ip",
        "/data/client.address",
        "/data/http.request.header.x_forwarded_for",
        "/data/http.request.header.x-forwarded-for",
    ]
    .iter()
    .any(|suffix| lower.contains(suffix))
}

/// Keys whose values are ids, timestamps, versions and counters: never a secret, never to be changed.
const KEEP_KEYS: &[&str] = &[
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "segment_id",
    "sentry.segment.id",
    "sentry.trace.parent_span_id",
    "check_in_id",
    "sid",
    "replay_id",
    "timestamp",
    "start_timestamp",
    "end_timestamp",
    "sent_at",
    "started",
    "release",
    "environment",
    "sentry.release",
    "sentry.environment",
    "sample_rand",
    "sample_rate",
    "lineno",
    "colno",
    "function",
    "filename",
    "abs_path",
    "image_addr",
    "image_size",
    "code_id",
    "debug_id",
    "status_code",
    "http.response.status_code",
    "http.status_code",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.total_tokens",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "monitor_slug",
    "quantity",
    "exited",
    "errored",
    "errors",
    "duration",
    "exclusive_time",
    "op",
    "sentry.op",
    "level",
    "platform",
    "severity_number",
    "sentry.severity_number",
    "version",
    "os.version",
    "sentry.sdk.version",
    "process.runtime.version",
    "process.runtime.engine.version",
];

/// `(item index, key, value)` for every keep-key leaf; typed attributes count under their attribute name.
fn keep_leaves(output: &Output) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    collect_keep(&output.header, "header", None, &mut out);
    for (i, (_, payload)) in output.items.iter().enumerate() {
        if let Payload::Json(v) = payload {
            collect_keep(v, &format!("item[{i}]"), None, &mut out);
        }
    }
    out
}

fn collect_keep(value: &Value, path: &str, key: Option<&str>, out: &mut Vec<(String, String, String)>) {
    match value {
        Value::Object(map) => {
            // Typed attribute: {"value": .., "type": ..} counts under the attribute's own name.
            if let (Some(k), Some(v), Some(Value::String(_))) = (key, map.get("value"), map.get("type")) {
                if KEEP_KEYS.contains(&k) && !v.is_object() {
                    out.push((path.to_owned(), k.to_owned(), v.to_string()));
                }
            }
            for (k, v) in map {
                collect_keep(v, &format!("{path}/{k}"), Some(k), out);
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                collect_keep(v, &format!("{path}/{i}"), key, out);
            }
        }
        leaf => {
            if let Some(k) = key {
                if KEEP_KEYS.contains(&k) && !path.contains("/_meta") {
                    out.push((path.to_owned(), k.to_owned(), leaf.to_string()));
                }
            }
        }
    }
}

fn client_ip_leaks(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.contains(CLIENT_IP) && is_client_ip_field(path) => out.push(format!("{path} = {s:?}")),
        Value::Object(map) => {
            for (k, v) in map {
                client_ip_leaks(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                client_ip_leaks(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Leaks of the corpus PII in one processed capture.
pub fn leaks(name: &str, output: &Envelope, report_debug: &str) -> Vec<Failure> {
    let out = Output::new(output);
    let mut failures = Vec::new();
    for (label, needle) in corpus_needles() {
        if needle.found_in(&out.text) {
            for place in out.locate(&needle) {
                failures.push(Failure {
                    kind: Kind::Leak,
                    case: name.to_owned(),
                    planted: label.to_owned(),
                    detail: format!("{:?} still at {place}", needle.text),
                });
            }
        }
        if needle.found_in(report_debug) {
            failures.push(Failure {
                kind: Kind::Leak,
                case: name.to_owned(),
                planted: label.to_owned(),
                detail: format!("{:?} appears in the processing report", needle.text),
            });
        }
    }
    let mut ips = Vec::new();
    client_ip_leaks(&out.header, "header", &mut ips);
    for (i, (_, payload)) in out.items.iter().enumerate() {
        if let Payload::Json(v) = payload {
            client_ip_leaks(v, &format!("item[{i}]"), &mut ips);
        }
    }
    for place in ips {
        failures.push(Failure {
            kind: Kind::Leak,
            case: name.to_owned(),
            planted: "client_ip".into(),
            detail: place,
        });
    }
    failures
}

/// Ids, timestamps and counters: every one in the output must be one of the input's (nothing rewritten), and when
/// nothing was dropped, all of them must still be there.
pub fn lost(name: &str, input: &Envelope, output: &Envelope, anything_dropped: bool) -> Vec<Failure> {
    let before = keep_leaves(&Output::new(input));
    let after = keep_leaves(&Output::new(output));
    let mut known: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for (_, k, v) in &before {
        *known.entry(k).or_default().entry(v).or_default() += 1;
    }
    let mut failures = Vec::new();
    let mut seen: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for (path, k, v) in &after {
        *seen.entry(k).or_default().entry(v).or_default() += 1;
        if !known.get(k.as_str()).is_some_and(|vals| vals.contains_key(v.as_str())) {
            failures.push(Failure {
                kind: Kind::Lost,
                case: name.to_owned(),
                planted: path.clone(),
                detail: format!("{k} = {v} was not in the input (rewritten?)"),
            });
        }
    }
    if !anything_dropped {
        for (path, k, v) in &before {
            let had = known[k.as_str()][v.as_str()];
            let has = seen
                .get(k.as_str())
                .and_then(|m| m.get(v.as_str()))
                .copied()
                .unwrap_or(0);
            if has < had {
                failures.push(Failure {
                    kind: Kind::Lost,
                    case: name.to_owned(),
                    planted: path.clone(),
                    detail: format!("{k} = {v} is gone ({had} in, {has} out)"),
                });
                // Report each (key, value) once.
                seen.entry(k).or_default().insert(v, had);
            }
        }
    }
    failures
}

/// Whether processing removed anything: items, or spans/logs inside a container or a transaction.
pub fn shrank(input: &Envelope, output: &Envelope) -> bool {
    if input.items.len() != output.items.len() {
        return true;
    }
    input.items.iter().zip(&output.items).any(|(a, b)| {
        let (Ok(a), Ok(b)) = (
            serde_json::from_slice::<Value>(a.payload()),
            serde_json::from_slice::<Value>(b.payload()),
        ) else {
            return false;
        };
        ["/items", "/spans"].iter().any(|p| {
            let len = |v: &Value| v.pointer(p).and_then(Value::as_array).map(Vec::len);
            len(&a) != len(&b)
        })
    })
}

/// Keys whose numbers must come out as the very same text: serde_json's default float parser is not exact, so a
/// parse/serialize round trip can move a timestamp by one unit in the last place (`1795386585.3403773` →
/// `1795386585.340377`). The value comparison above cannot see that (both sides go through the same parser).
const RAW_NUMBER_KEYS: &str = "timestamp|start_timestamp|end_timestamp|sample_rand|duration|exclusive_time";

/// Floats and integers under [`RAW_NUMBER_KEYS`], compared as text: every one in the output must appear in the input.
pub fn changed_numbers(name: &str, input: &Envelope, output: &Envelope) -> Vec<Failure> {
    let re = regex::Regex::new(&format!(r#""({RAW_NUMBER_KEYS})"\s*:\s*(-?[0-9][0-9.eE+-]*)"#)).expect("valid regex");
    let mut known: BTreeMap<String, usize> = BTreeMap::new();
    for item in &input.items {
        for c in re.captures_iter(&String::from_utf8_lossy(item.payload())) {
            *known.entry(c[2].to_owned()).or_default() += 1;
        }
    }
    let mut failures = Vec::new();
    for (i, item) in output.items.iter().enumerate() {
        for c in re.captures_iter(&String::from_utf8_lossy(item.payload())) {
            if !known.contains_key(&c[2]) {
                failures.push(Failure {
                    kind: Kind::Lost,
                    case: name.to_owned(),
                    planted: "number text".into(),
                    detail: format!(
                        "item[{i}] {} = {} is not in the input as written (float re-formatted?)",
                        &c[1], &c[2]
                    ),
                });
            }
        }
    }
    failures
}

/// Replacement markers that end up followed by a leftover `]` (`token=[Filtered]` → `token=[FILTERED]]`): a rule
/// replaced part of an already-replaced value. Compared per string leaf when nothing was dropped (paths line up).
pub fn stray_brackets(name: &str, input: &Envelope, output: &Envelope) -> Vec<Failure> {
    let mut failures = Vec::new();
    for (i, (a, b)) in input.items.iter().zip(&output.items).enumerate() {
        let (Ok(a), Ok(b)) = (
            serde_json::from_slice::<Value>(a.payload()),
            serde_json::from_slice::<Value>(b.payload()),
        ) else {
            continue;
        };
        let mut leaves = Vec::new();
        string_leaves(&b, String::new(), &mut leaves);
        for (path, text) in leaves {
            let corrupted = ["[FILTERED]]", "[redacted]]", "[Filtered]]"]
                .iter()
                .any(|m| text.contains(m));
            let was = a
                .pointer(&path)
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains("]]"));
            if corrupted && !was {
                failures.push(Failure {
                    kind: Kind::Lost,
                    case: name.to_owned(),
                    planted: format!("item[{i}]{path}"),
                    detail: format!("stray bracket after a replacement: {text:?}"),
                });
            }
        }
    }
    failures
}

fn string_leaves(value: &Value, path: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((path, s.clone())),
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                string_leaves(v, format!("{path}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                string_leaves(v, format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        _ => {}
    }
}
