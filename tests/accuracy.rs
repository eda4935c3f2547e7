//! Accuracy of the scrubbing engine with the default rules, measured on real SDK payload shapes.
//!
//! Two corpora go through `pipeline::process` exactly as the relay runs it:
//! - planted envelopes (`accuracy/cases.rs`): real captures with unique secrets placed in every spot `scrubbing.md`
//!   lists, next to look-alikes (ids, timestamps, versions, Luhn-invalid numbers, safe keys, source lines);
//! - the captures themselves (`tests/fixtures/sdk/`), with the PII the capture scripts used.
//!
//! A failure prints a table: LEAK (a secret, raw, JSON-escaped or as digits with other separators, is still somewhere
//! in the serialized output or in the report), LOST (a look-alike changed or vanished), TYPE (a typed field now holds
//! the wrong type), STRUCTURE (items vanished, changed type or stopped parsing). Both LEAK and LOST must be zero.
//! Known engine gaps are listed in `accuracy/KNOWN_GAPS.md`; none is hidden here.

#![forbid(unsafe_code)]

#[path = "accuracy/breadth.rs"]
mod breadth;
#[path = "accuracy/cases.rs"]
mod cases;
#[path = "accuracy/check.rs"]
mod check;
#[path = "accuracy/corpus.rs"]
mod corpus;
#[path = "accuracy/plant.rs"]
mod plant;

use std::sync::LazyLock;

use scrub_relay::envelope::Envelope;
use scrub_relay::pipeline::{self, ProcessOptions};
use scrub_relay::rules::CompiledRules;

use check::{Failure, Kind};

static RULES: LazyLock<CompiledRules> = LazyLock::new(CompiledRules::defaults);

/// Runs the pipeline as the relay does for project 42, with explanations on (so the report is checked for leaks
/// too). Returns the output envelope, the report rendered with `Debug`, and whether anything was dropped.
fn scrub(envelope: Envelope) -> (Envelope, String, bool) {
    let items_in = envelope.items.len();
    let processed = pipeline::process(
        envelope,
        &RULES,
        &ProcessOptions {
            project_id: Some(42),
            explain: true,
            ..ProcessOptions::default()
        },
    );
    let dropped = !processed.report.dropped.is_empty() || processed.envelope.items.len() != items_in;
    (processed.envelope, format!("{:?}", processed.report), dropped)
}

fn assert_no_failures(what: &str, failures: &[Failure]) {
    assert!(failures.is_empty(), "{what}:{}", check::table(failures));
}

/// Every failure of the planted corpus.
fn planted_failures() -> Vec<Failure> {
    let mut failures = Vec::new();
    for case in cases::all() {
        let input = Envelope::parse(case.bytes.clone()).expect("planted envelopes parse");
        let (output, report, _) = scrub(input.clone());
        // What the upstream receives: serialize and parse again, as the relay forwards bytes.
        let output = Envelope::parse(output.to_bytes()).expect("scrubbed envelope parses again");
        failures.extend(check::check_case(&case, &input, &output, &report));
    }
    failures
}

/// Every leak of the captures' own PII.
fn capture_leaks() -> Vec<Failure> {
    let mut failures = Vec::new();
    for name in corpus::capture_names() {
        let (output, report, _) = scrub(corpus::load(&name));
        failures.extend(corpus::leaks(&name, &output, &report));
    }
    failures
}

/// A finding the engine does not handle yet, named precisely: the case (planted case or capture), the planted
/// location (or capture PII label) and the start of the failure detail. Only failures matching all three are
/// excluded from the main tests, and each gap is asserted on its own by an `#[ignore]`d test (`gap_*` below), so
/// `cargo test --test accuracy -- --ignored` shows what is still open. See `accuracy/KNOWN_GAPS.md`.
struct Gap {
    /// Names the gap; its ignored test is `gap_<id>`.
    id: &'static str,
    suite: Suite,
    case: &'static str,
    planted: &'static str,
    detail: &'static str,
}

/// Empty: every gap this suite found is fixed (see `accuracy/KNOWN_GAPS.md`). Add entries here, with a `gap_*` test,
/// when a new one is found.
const KNOWN_GAPS: &[Gap] = &[];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Suite {
    Planted,
    #[allow(dead_code)]
    Captures,
    #[allow(dead_code)]
    CaptureValues,
}

/// `case: "*"` matches every case and `planted: "*suffix"` every location ending in `suffix` (for a gap that shows
/// in many captures).
fn matches_gap(failure: &Failure, gap: &Gap) -> bool {
    let planted = match gap.planted.strip_prefix('*') {
        Some(suffix) => failure.planted.ends_with(suffix),
        None => failure.planted == gap.planted,
    };
    (gap.case == "*" || failure.case == gap.case) && planted && failure.detail.starts_with(gap.detail)
}

/// Removes the known gaps of a suite from its failures, and fails on gaps that no longer reproduce (so the list and
/// the ignored tests are cleaned up when the engine is fixed).
fn without_known_gaps(failures: Vec<Failure>, suite: Suite) -> Vec<Failure> {
    let gaps: Vec<&Gap> = KNOWN_GAPS.iter().filter(|g| g.suite == suite).collect();
    for gap in &gaps {
        assert!(
            failures.iter().any(|f| matches_gap(f, gap)),
            "known gap {} {} {:?} no longer reproduces: remove it from KNOWN_GAPS (tests/accuracy.rs), its gap_* test \
             and its line in accuracy/KNOWN_GAPS.md",
            gap.case,
            gap.planted,
            gap.detail
        );
    }
    failures
        .into_iter()
        .filter(|f| !gaps.iter().any(|g| matches_gap(f, g)))
        .collect()
}

/// The strict check of one known gap (all its entries), for its `#[ignore]`d test.
#[allow(dead_code)]
fn assert_gap_fixed(id: &str) {
    let gaps: Vec<&Gap> = KNOWN_GAPS.iter().filter(|g| g.id == id).collect();
    assert!(!gaps.is_empty(), "no known gap named {id}");
    let failures = match gaps[0].suite {
        Suite::Planted => planted_failures(),
        Suite::Captures => capture_leaks(),
        Suite::CaptureValues => capture_value_failures(),
    };
    let open: Vec<Failure> = failures
        .into_iter()
        .filter(|f| gaps.iter().any(|g| matches_gap(f, g)))
        .collect();
    assert_no_failures(&format!("known gap {id}"), &open);
}

#[test]
fn planted_secrets_are_removed_and_lookalikes_survive() {
    let failures = without_known_gaps(planted_failures(), Suite::Planted);
    assert_no_failures("planted corpus", &failures);
}

#[test]
fn capture_pii_is_gone_from_every_capture() {
    let failures = without_known_gaps(capture_leaks(), Suite::Captures);
    assert_no_failures("PII of the SDK captures", &failures);
}

/// Every changed id, timestamp, version or counter, and every broken typed field, in the captures.
fn capture_value_failures() -> Vec<Failure> {
    let mut failures = Vec::new();
    for name in corpus::capture_names() {
        let input = corpus::load(&name);
        let (output, _, dropped) = scrub(input.clone());
        let dropped = dropped || corpus::shrank(&input, &output);
        failures.extend(corpus::lost(&name, &input, &output, dropped));
        failures.extend(corpus::changed_numbers(&name, &input, &output));
        if !dropped {
            failures.extend(corpus::stray_brackets(&name, &input, &output));
        }
        for (i, item) in output.items.iter().enumerate() {
            if item.type_name() == "attachment" {
                continue;
            }
            if let Ok(v) = serde_json::from_slice(item.payload()) {
                for problem in check::type_problems(&v) {
                    let planted = format!("item[{i}]");
                    failures.push(Failure {
                        kind: Kind::Type,
                        case: name.clone(),
                        planted,
                        detail: problem,
                    });
                }
            }
        }
    }
    failures
}

#[test]
fn capture_ids_timestamps_versions_and_counters_are_unchanged() {
    let failures = without_known_gaps(capture_value_failures(), Suite::CaptureValues);
    assert_no_failures("ids, timestamps, versions and counters of the SDK captures", &failures);
}

/// What the relay forwards holds nothing its rules would still change: each capture, scrubbed and serialized as it goes
/// upstream, then scrubbed again, comes back byte for byte. A second look (another relay, Sentry's own scrubbing) that
/// masks more would mean the first forwarded it; one that re-redacts a mask or adds a remark would mean the relay's
/// output is not stable under its own rules.
#[test]
fn every_capture_scrubbed_again_comes_back_byte_for_byte() {
    let mut changed = Vec::new();
    for name in corpus::capture_names() {
        let (once, _, _) = scrub(corpus::load(&name));
        let forwarded = once.to_bytes();
        let again = Envelope::parse(forwarded.clone()).unwrap_or_else(|e| panic!("{name}: forwarded bytes: {e}"));
        let (twice, _, _) = scrub(again);
        if twice.to_bytes() != forwarded {
            changed.push(name);
        }
    }
    assert!(
        changed.is_empty(),
        "scrubbed again, these captures changed: {changed:?}"
    );
}

/// The checker itself: with nothing scrubbed, every planted secret must be reported as a leak and no look-alike as
/// lost. Without this, a broken needle search would make every other test here pass vacuously.
#[test]
fn checker_reports_every_planted_secret_when_nothing_is_scrubbed() {
    for case in cases::all() {
        let input = Envelope::parse(case.bytes.clone()).expect("planted envelopes parse");
        let failures = check::check_case(&case, &input, &input, "");
        let leaked: usize = failures.iter().filter(|f| f.kind == Kind::Leak).count();
        let planted: usize = case.plants.iter().map(|p| p.gone.len()).sum();
        assert!(
            leaked >= planted,
            "{}: {leaked} leaks reported for {planted} planted secrets",
            case.name
        );
        let other: Vec<Failure> = failures.into_iter().filter(|f| f.kind != Kind::Leak).collect();
        assert_no_failures(&format!("{} unscrubbed", case.name), &other);
        for plant in &case.plants {
            for needle in &plant.gone {
                let text = String::from_utf8_lossy(&case.bytes);
                assert!(
                    needle.found_in(&text),
                    "{}: needle {:?} not findable in the input",
                    case.name,
                    needle.text
                );
            }
        }
    }
    for name in corpus::capture_names() {
        let input = corpus::load(&name);
        assert!(
            corpus::lost(&name, &input, &input, false).is_empty(),
            "{name}: keep-leaf comparison is not reflexive"
        );
    }
}
