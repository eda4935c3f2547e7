//! How fast the relay scrubs real traffic, streaming each item versus walking it as a tree.
//!
//! - `pipeline/*`: decompressed SDK captures (Python, Node and Rust events, transactions, span items with 10 KB
//!   gen_ai prompts, logs, metrics) through `Envelope::parse` → `pipeline::process` with the default rules →
//!   `Envelope::to_bytes`, exactly what the relay does per request. Throughput is input bytes.
//!   Target: 200 MB/s per core.
//!   `pipeline/mix_tree_walk/*` is the same work with every item walked as a `serde_json::Value` tree (the design
//!   the streaming walk replaced; both give the same JSON, see `src/scrub/stream/tests.rs`).
//! - `detectors/*`: one string through the detector set; strings without `@`, trigger words or enough digits must
//!   not run a regex, so `innocent_*` should cost a prefilter pass only.
//! - `breadth/*`: the mix with the default rules, without each detector added for breadth (issue #12), and without
//!   all of them: what each costs on real traffic.
//!
//! Setup (reading and decompressing fixtures, compiling rules) happens outside the timed loops.
//! Run: `cargo bench --bench scrub -- --warm-up-time 1 --measurement-time 3` (see benches/README.md).

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::PathBuf;

use bytes::Bytes;
use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use scrub_relay::envelope::Envelope;
use scrub_relay::pipeline::{self, ProcessOptions};
use scrub_relay::rules::CompiledRules;
use serde_json::Value;

/// The relay binary's allocator (src/main.rs): the bench measures the scrub as the relay runs it. With glibc's
/// malloc, allocation was about 6 % of the scrub's time on the raw captures.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "support/variants.rs"]
mod variants;

#[path = "support/thread_cpu_time.rs"]
mod thread_cpu_time;
use thread_cpu_time::ThreadCpuTime;

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
    tree_walk_only: false,
    inflate_cap: None,
};

/// The same work with every item walked as a `serde_json::Value` tree: the design the stream replaced.
const TREE_WALK: ProcessOptions = ProcessOptions {
    tree_walk_only: true,
    ..OPTIONS
};

fn run_pipeline(rules: &CompiledRules, input: &Bytes) -> Bytes {
    run_pipeline_with(rules, input, &OPTIONS)
}

fn run_pipeline_with(rules: &CompiledRules, input: &Bytes, options: &ProcessOptions) -> Bytes {
    let envelope = Envelope::parse(input.clone()).expect("fixtures parse");
    pipeline::process(envelope, rules, options).envelope.to_bytes()
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
        group.bench_with_input(BenchmarkId::new("mix_tree_walk", name), &inputs, |b, inputs| {
            b.iter(|| {
                for input in inputs {
                    black_box(run_pipeline_with(&rules, black_box(input), &TREE_WALK));
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
    for &name in CAPTURES {
        let input = capture(name);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("capture", name), &input, |b, input| {
            b.iter(|| black_box(run_pipeline(&rules, black_box(input))))
        });
    }
    // The raw captures as one application's successive events: ids, timestamps and users' addresses change from one
    // envelope to the next, so the per-thread memos answer only for what real traffic repeats (the rows above replay
    // the same bytes, and after the first pass every string is remembered). Each iteration scrubs the next version.
    let versions_of = |name: &str, count: usize| -> Vec<Bytes> {
        let text = String::from_utf8(capture(name).to_vec()).expect("JSON captures are UTF-8");
        let versions = variants::variants(&text, count, 7);
        // The throughput rows count the capture's bytes.
        assert!(
            versions.iter().all(|version| version.len() == text.len()),
            "{name}: a version changed length"
        );
        versions.into_iter().map(Bytes::from).collect()
    };
    // Made only when a varied row runs (criterion calls a bench's closure only when its name is selected): building
    // them is seconds of setup in every filtered run otherwise. Versions keep the capture's length.
    let mix = std::cell::LazyCell::new(|| -> Vec<Vec<Bytes>> {
        MIX.iter().map(|name| versions_of(name, MIX_VERSIONS)).collect()
    });
    group.throughput(Throughput::Bytes(
        MIX.iter().map(|name| capture(name).len() as u64).sum(),
    ));
    group.bench_function(BenchmarkId::new("mix_varied", "dense"), |b| {
        let mut round = 0;
        b.iter(|| {
            for versions in mix.iter() {
                black_box(run_pipeline(&rules, black_box(&versions[round % MIX_VERSIONS])));
            }
            round += 1;
        })
    });
    // Each capture of the rows above on its own, varied: where the varied mix spends (the address list alone is about
    // a third of its instructions; benches/README.md, "Fifteenth pass").
    for &name in CAPTURES {
        let versions = std::cell::LazyCell::new(|| versions_of(name, CAPTURE_VERSIONS));
        group.throughput(Throughput::Bytes(capture(name).len() as u64));
        group.bench_function(BenchmarkId::new("capture_varied", name), |b| {
            let mut round = 0;
            b.iter(|| {
                round += 1;
                black_box(run_pipeline(&rules, black_box(&versions[round % CAPTURE_VERSIONS])))
            })
        });
    }
    group.finish();
}

/// Versions of each capture in `mix_varied`: more than the memos hold of the strings that change.
const MIX_VERSIONS: usize = 256;
/// The captures with rows of their own, replayed (`capture`) and varied (`capture_varied`), one per item family: the
/// python error event (issue #11's yardstick), a transaction, gen_ai spans, logs and the 42 KB address list.
const CAPTURES: &[&str] = &[
    "py-error-event-rawpii",
    "py-transaction",
    "node-genai",
    "py-logs-2",
    "node-large-2",
];

/// Versions of each capture in `capture_varied`.
const CAPTURE_VERSIONS: usize = 1000;

/// The detectors added for breadth (issue #12), by `rules.yaml` name.
const BREADTH: &[&str] = &[
    "user_path",
    "ipv6",
    "phone_intl",
    "itin",
    "labelled_tax_id",
    "provider_secret",
];

/// The default rules with the named detectors switched off.
fn rules_without(names: &[&str]) -> CompiledRules {
    let mut yaml = scrub_relay::rules::DEFAULT_RULES_YAML.to_string();
    for name in names {
        let at = yaml.find(&format!("\n  {name}:\n")).expect("detector in rules.yaml");
        let enabled = at + yaml[at..].find("enabled: true").expect("detector has enabled: true");
        yaml.replace_range(enabled..enabled + "enabled: true".len(), "enabled: false");
    }
    CompiledRules::from_yaml(&yaml).expect("default rules with detectors off compile")
}

/// What each breadth detector costs on the traffic mix: the defaults against the defaults without it, and without
/// all of them. Same binary, same inputs, interleaved by criterion's sampling.
fn bench_breadth<M: Measurement>(c: &mut Criterion<M>) {
    let rules = CompiledRules::defaults();
    let mut variants = vec![("defaults".to_string(), CompiledRules::defaults())];
    variants.push(("without_breadth".to_string(), rules_without(BREADTH)));
    for name in BREADTH {
        variants.push((format!("without_{name}"), rules_without(&[name])));
    }
    let mut group = c.benchmark_group("breadth");
    for (workload, inputs) in workloads(&rules) {
        group.throughput(Throughput::Bytes(total_len(&inputs)));
        for (variant, rules) in &variants {
            group.bench_with_input(BenchmarkId::new(variant.as_str(), workload), &inputs, |b, inputs| {
                b.iter(|| {
                    for input in inputs {
                        black_box(run_pipeline(rules, black_box(input)));
                    }
                })
            });
        }
    }
    group.finish();
}

fn bench_detectors<M: Measurement>(c: &mut Criterion<M>) {
    let rules = CompiledRules::defaults();
    let engine = rules.engine(None);
    let prompt = "The assistant reviews the order history and explains the refund policy in plain words. ".repeat(115);
    // The long strings with findings of the raw captures, where the detectors spend most (benches/README.md,
    // "Thirteenth pass"): node-large-2's list of 2,000 addresses and node-genai's 10 KB prompt.
    let address_list = "jane.doe@example.com ".repeat(2000);
    let prompt_with_pii = format!(
        "You are a support bot. Customer Jane Doe, email jane.doe@example.com, SSN 123-45-6789, phone (555) \
         123-4567, card 4111 1111 1111 1111, password hunter2-S3cret!. {}",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(170)
    );
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
        ("phone_intl", "Rückruf unter +49 30 12345678 (Büro)"),
        ("ipv6", "client 2a00:1450:4001:82b::200e connected at 22:26:34"),
        (
            "user_path",
            "File \"/home/jane/app/venv/lib/python3.11/site.py\", line 3",
        ),
        ("labelled_ssn", "Customer SSN 219099999 on file"),
        (
            "provider_secret",
            "Brevo rejected 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",
        ),
        (
            "everything",
            "Jane jane.doe@example.com (555) 123-4567 123-45-6789 4111 1111 1111 1111 Bearer abc.def",
        ),
        ("address_list_42kb", &address_list),
        ("prompt_10kb_with_pii", &prompt_with_pii),
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

criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench_pipeline, bench_detectors, bench_breadth
}

criterion_group!(wall_time, bench_pipeline, bench_detectors, bench_breadth);

fn main() {
    if std::env::var_os("SCRUB_BENCH_WALL_TIME").is_some() {
        wall_time();
    } else {
        cpu_time();
    }
    Criterion::default().configure_from_args().final_summary();
}
