//! How fast the relay scrubs real traffic, and whether a tree walk was the right design.
//!
//! - `pipeline/*`: decompressed SDK captures (Python, Node and Rust events, transactions, span items with 10 KB
//!   gen_ai prompts, logs, metrics) through `Envelope::parse` → `pipeline::process` with the default rules →
//!   `Envelope::to_bytes`, exactly what the relay does per request. Throughput is input bytes.
//!   Target: 200 MB/s per core.
//! - `design/*`: the same JSON payloads scrubbed three ways with the same detectors and key rules:
//!   `tree_minimal` (parse to `serde_json::Value`, walk, serialize), `streaming` (one pass over the JSON text that
//!   never builds a tree, see [`stream`]) and `pipeline` (the real, complete engine). The two minimal variants do the
//!   same work on strings, so their ratio is the cost of the tree.
//! - `detectors/*`: one string through the detector set; strings without `@`, trigger words or enough digits must
//!   not run a regex, so `innocent_*` should cost a prefilter pass only.
//!
//! Setup (reading and decompressing fixtures, compiling rules) happens outside the timed loops.
//! Run: `cargo bench --bench scrub -- --warm-up-time 1 --measurement-time 3` (see benches/README.md).

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use scrub_relay::envelope::Envelope;
use scrub_relay::pipeline::{self, ProcessOptions};
use scrub_relay::rules::detectors::Hit;
use scrub_relay::rules::{CompiledRules, Engine};
use serde_json::Value;

/// The traffic mix: one capture per SDK and item family, weighted like a busy backend (mostly spans and logs with
/// large gen_ai payloads, some errors).
const MIX: &[&str] = &[
    "py-error-event-rawpii",
    "py-error-exception-rawpii",
    "py-transaction",
    "py-transaction-nostream",
    "py-transaction-spanstream",
    "py-logs-2",
    "py-metrics",
    "py-session-2",
    "node-error-2",
    "node-event-1",
    "node-genai",
    "node-genai-static",
    "node-logs-2",
    "node-large-2",
    "node-feedback",
    "node10-http-6",
    "rust-event-1",
    "rust-transaction-1",
    "rust-transaction-2",
];

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

const OPTIONS: ProcessOptions = ProcessOptions {
    project_id: Some(42),
    explain: false,
};

fn run_pipeline(rules: &CompiledRules, input: &Bytes) -> Bytes {
    let envelope = Envelope::parse(input.clone()).expect("fixtures parse");
    pipeline::process(envelope, rules, &OPTIONS).envelope.to_bytes()
}

/// The two workloads. `dense`: the captures as sent, where nearly every string holds PII (the capture scripts put
/// it everywhere). `clean`: the same envelopes after one pass of the relay, so strings are mostly innocent and rules
/// rarely change anything, which is closer to production traffic.
fn workloads(rules: &CompiledRules) -> [(&'static str, Vec<Bytes>); 2] {
    let dense: Vec<Bytes> = MIX.iter().map(|n| capture(n)).collect();
    let clean: Vec<Bytes> = dense.iter().map(|b| run_pipeline(rules, b)).collect();
    [("dense", dense), ("clean", clean)]
}

fn total_len(inputs: &[Bytes]) -> u64 {
    inputs.iter().map(|b| b.len() as u64).sum()
}

/// A rules file with every value detector switched off: keys, headers, send_default_pii, truncation and drops stay.
fn rules_without_detectors() -> CompiledRules {
    let yaml = scrub_relay::rules::DEFAULT_RULES_YAML.replace("    enabled: true", "    enabled: false");
    CompiledRules::from_yaml(&yaml).expect("default rules with detectors off compile")
}

fn bench_pipeline<M: Measurement>(c: &mut Criterion<M>) {
    let rules = CompiledRules::defaults();
    let no_detectors = rules_without_detectors();
    let mut group = c.benchmark_group("pipeline");
    for (name, inputs) in workloads(&rules) {
        group.throughput(Throughput::Bytes(total_len(&inputs)));
        group.bench_with_input(BenchmarkId::new("mix", name), &inputs, |b, inputs| {
            b.iter(|| {
                for input in inputs {
                    black_box(run_pipeline(&rules, black_box(input)));
                }
            })
        });
        // Where the time goes: the same work without value detectors, and only parse + serialize.
        group.bench_with_input(BenchmarkId::new("mix_without_detectors", name), &inputs, |b, inputs| {
            b.iter(|| {
                for input in inputs {
                    black_box(run_pipeline(&no_detectors, black_box(input)));
                }
            })
        });
        group.bench_with_input(
            BenchmarkId::new("mix_parse_serialize_only", name),
            &inputs,
            |b, inputs| {
                b.iter(|| {
                    for input in inputs {
                        let mut envelope = Envelope::parse(black_box(input).clone()).expect("fixtures parse");
                        for item in &mut envelope.items {
                            if let Ok(v) = serde_json::from_slice::<Value>(item.payload()) {
                                item.set_payload(Bytes::from(serde_json::to_vec(&v).expect("values serialize")));
                            }
                        }
                        black_box(envelope.to_bytes());
                    }
                })
            },
        );
    }
    for name in [
        "py-error-event-rawpii",
        "py-transaction",
        "node-genai",
        "py-logs-2",
        "node-large-2",
    ] {
        let input = capture(name);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("capture", name), &input, |b, input| {
            b.iter(|| black_box(run_pipeline(&rules, black_box(input))))
        });
    }
    group.finish();
}

/// The JSON payloads of some envelopes (envelope headers and every JSON item), for the design comparison.
fn json_payloads(envelopes: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for bytes in envelopes {
        let envelope = Envelope::parse(bytes.clone()).expect("fixtures parse");
        out.push(Bytes::from(
            serde_json::to_vec(&envelope.headers).expect("header serializes"),
        ));
        for item in &envelope.items {
            if serde_json::from_slice::<Value>(item.payload()).is_ok() {
                out.push(item.payload().clone());
            }
        }
    }
    out
}

/// The minimal tree walk: parse, apply key rules and detectors to every string, serialize.
mod tree {
    use super::*;

    pub fn scrub(engine: &Engine, input: &[u8], hits: &mut Vec<Hit>, scratch: &mut String) -> Vec<u8> {
        let mut value: Value = serde_json::from_slice(input).expect("payload is JSON");
        walk(engine, &mut value, hits, scratch);
        serde_json::to_vec(&value).expect("values serialize")
    }

    fn walk(engine: &Engine, value: &mut Value, hits: &mut Vec<Hit>, scratch: &mut String) {
        match value {
            Value::String(s) => {
                engine.detectors.find(s, hits);
                if !hits.is_empty() {
                    *s = super::replace(s, hits, engine);
                }
            }
            Value::Array(list) => list.iter_mut().for_each(|v| walk(engine, v, hits, scratch)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if engine.keys.is_sensitive_with(k, scratch) {
                        *v = Value::String(engine.key_replacement.clone());
                    } else {
                        walk(engine, v, hits, scratch);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Applies detector hits to a string (the same replacement text the engine uses).
fn replace(text: &str, hits: &[Hit], engine: &Engine) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for h in hits {
        out.push_str(&text[at..h.start]);
        out.push_str(&engine.detectors.detectors[h.detector].replacement);
        at = h.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The streaming prototype: one pass over the JSON text. Structure bytes are copied as they are; each string token is
/// decoded only if it has escapes; object keys are checked against the key rules, and the value of a sensitive key is
/// skipped (whatever its type) and replaced; every other string value goes through the detectors and is copied
/// verbatim when nothing matched. No `Value` is built. Not feature-complete (no headers, typed attributes, `_meta`,
/// query/cookie parsing, truncation or filtering): it measures the same per-string work as `tree::scrub`.
mod stream {
    use super::*;

    pub fn scrub(engine: &Engine, input: &[u8], out: &mut Vec<u8>, hits: &mut Vec<Hit>, scratch: &mut String) {
        out.clear();
        out.reserve(input.len());
        // For each open container: is it an object, and is the next string in it a key?
        let mut stack: Vec<(bool, bool)> = Vec::with_capacity(16);
        let mut sensitive_value = false;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match b {
                b'{' | b'[' if sensitive_value => {
                    i = skip_container(input, i);
                    write_replacement(engine, out);
                    sensitive_value = false;
                    continue;
                }
                b'{' => stack.push((true, true)),
                b'[' => stack.push((false, false)),
                b'}' | b']' => {
                    stack.pop();
                }
                b',' => {
                    if let Some(top) = stack.last_mut() {
                        top.1 = top.0;
                    }
                }
                b'"' => {
                    let end = string_end(input, i);
                    let token = &input[i..end];
                    let in_key = stack.last().is_some_and(|t| t.0 && t.1);
                    let text = decode(token);
                    if in_key {
                        sensitive_value = engine.keys.is_sensitive_with(&text, scratch);
                        if let Some(top) = stack.last_mut() {
                            top.1 = false;
                        }
                        out.extend_from_slice(token);
                    } else if sensitive_value {
                        write_replacement(engine, out);
                        sensitive_value = false;
                    } else {
                        engine.detectors.find(&text, hits);
                        if hits.is_empty() {
                            out.extend_from_slice(token);
                        } else {
                            let replaced = super::replace(&text, hits, engine);
                            serde_json::to_writer(&mut *out, &replaced).expect("writing to a Vec cannot fail");
                        }
                    }
                    i = end;
                    continue;
                }
                b if sensitive_value && !b.is_ascii_whitespace() && b != b':' => {
                    // A number, true, false or null under a sensitive key.
                    let mut end = i;
                    while end < input.len() && !matches!(input[end], b',' | b'}' | b']') {
                        end += 1;
                    }
                    write_replacement(engine, out);
                    sensitive_value = false;
                    i = end;
                    continue;
                }
                _ => {}
            }
            out.push(b);
            i += 1;
        }
    }

    fn write_replacement(engine: &Engine, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, &engine.key_replacement).expect("writing to a Vec cannot fail");
    }

    /// The index just past the closing quote of the string starting at `start`.
    fn string_end(input: &[u8], start: usize) -> usize {
        let mut i = start + 1;
        while i < input.len() {
            match input[i] {
                b'\\' => i += 2,
                b'"' => return i + 1,
                _ => i += 1,
            }
        }
        input.len()
    }

    fn skip_container(input: &[u8], start: usize) -> usize {
        let mut depth = 0usize;
        let mut i = start;
        while i < input.len() {
            match input[i] {
                b'"' => {
                    i = string_end(input, i);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        input.len()
    }

    /// The string's text: borrowed when it has no escapes, decoded by serde_json otherwise.
    fn decode(token: &[u8]) -> std::borrow::Cow<'_, str> {
        let inner = &token[1..token.len().saturating_sub(1).max(1)];
        if !inner.contains(&b'\\') {
            if let Ok(s) = std::str::from_utf8(inner) {
                return std::borrow::Cow::Borrowed(s);
            }
        }
        std::borrow::Cow::Owned(serde_json::from_slice::<String>(token).unwrap_or_default())
    }
}

fn bench_design<M: Measurement>(c: &mut Criterion<M>) {
    let rules = CompiledRules::defaults();
    let engine = rules.engine(Some(42));
    let mut group = c.benchmark_group("design");
    for (name, envelopes) in workloads(&rules) {
        let payloads = json_payloads(&envelopes);

        // Both minimal variants must agree on what they produce, or the comparison is meaningless.
        let (mut hits, mut scratch, mut out) = (Vec::new(), String::new(), Vec::new());
        for p in &payloads {
            let tree: Value =
                serde_json::from_slice(&tree::scrub(engine, p, &mut hits, &mut scratch)).expect("tree output is JSON");
            stream::scrub(engine, p, &mut out, &mut hits, &mut scratch);
            let streamed: Value = serde_json::from_slice(&out).expect("streaming output is JSON");
            assert_eq!(tree, streamed, "tree and streaming prototypes disagree");
        }

        group.throughput(Throughput::Bytes(total_len(&payloads)));
        group.bench_with_input(BenchmarkId::new("tree_minimal", name), &payloads, |b, payloads| {
            let (mut hits, mut scratch) = (Vec::new(), String::new());
            b.iter(|| {
                for p in payloads {
                    black_box(tree::scrub(engine, black_box(p), &mut hits, &mut scratch));
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("streaming", name), &payloads, |b, payloads| {
            let (mut hits, mut scratch, mut out) = (Vec::new(), String::new(), Vec::new());
            b.iter(|| {
                for p in payloads {
                    stream::scrub(engine, black_box(p), &mut out, &mut hits, &mut scratch);
                    black_box(&out);
                }
            })
        });
        group.bench_with_input(
            BenchmarkId::new("tree_parse_serialize_only", name),
            &payloads,
            |b, payloads| {
                b.iter(|| {
                    for p in payloads {
                        let v: Value = serde_json::from_slice(black_box(p)).expect("payload is JSON");
                        black_box(serde_json::to_vec(&v).expect("values serialize"));
                    }
                })
            },
        );
    }
    group.finish();
}

fn bench_detectors<M: Measurement>(c: &mut Criterion<M>) {
    let rules = CompiledRules::defaults();
    let engine = rules.engine(None);
    let prompt = "The assistant reviews the order history and explains the refund policy in plain words. ".repeat(115);
    let cases: &[(&str, &str)] = &[
        (
            "innocent_words",
            "User authenticated successfully, redirecting to the dashboard",
        ),
        (
            "innocent_digits",
            "GET /api/orders/7283 returned 200 in 35 ms at 2026-11-22T22:26:34Z",
        ),
        ("innocent_10kb_prompt", &prompt),
        ("email", "Payment failed for jane.doe@example.com"),
        ("phone", "call me at (312) 555-0148 tomorrow"),
        ("card", "card 4111 1111 1111 1111 was declined"),
        ("ssn", "SSN 123-45-6789 on file"),
        ("bearer", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.cGF5bG9hZA.c2ln"),
        (
            "everything",
            "Jane jane.doe@example.com (555) 123-4567 123-45-6789 4111 1111 1111 1111 Bearer abc.def",
        ),
    ];
    let mut group = c.benchmark_group("detectors");
    for (name, text) in cases {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            let mut hits = Vec::new();
            b.iter(|| {
                engine.detectors.find(black_box(text), &mut hits);
                black_box(hits.len())
            })
        });
    }
    group.finish();
}

/// CPU time of the benchmark thread (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time. The bench machine is shared
/// (2 cores, several builds and test runs at once), so wall time measures the scheduler as much as the code; CPU
/// time gives the per-core figure the target is stated in. Set `SCRUB_BENCH_WALL_TIME=1` for wall time.
struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

static WALL_TIME: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu_now().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, exactly what the wall-time formatter expects.
        WALL_TIME.formatter()
    }
}

criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench_pipeline, bench_design, bench_detectors
}

criterion_group!(wall_time, bench_pipeline, bench_design, bench_detectors);

fn main() {
    if std::env::var_os("SCRUB_BENCH_WALL_TIME").is_some() {
        wall_time();
    } else {
        cpu_time();
    }
    Criterion::default().configure_from_args().final_summary();
}
