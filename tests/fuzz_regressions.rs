//! The fuzz targets' checks (`fuzz/checks.rs`) over every input kept in `fuzz/corpus/<target>/` (the minimized
//! corpora, seeded from the SDK captures) and `fuzz/regressions/<target>/` (inputs that once crashed a target, kept
//! after the fix), on stable Rust in the normal suite: what the fuzzers found stays fixed.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn run_kept_inputs(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seen = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let data = std::fs::read(&path).expect("kept input reads");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails its check", path.display());
            seen += 1;
        }
    }
    assert!(
        seen > 0,
        "{target}: no kept inputs under fuzz/corpus or fuzz/regressions"
    );
}

#[test]
fn envelope_parse_inputs() {
    run_kept_inputs("envelope_parse", checks::envelope_parse);
}

#[test]
fn decode_inputs() {
    run_kept_inputs("decode", checks::decode);
}

#[test]
fn stream_vs_tree_inputs() {
    run_kept_inputs("stream_vs_tree", checks::stream_vs_tree);
}

#[test]
fn rules_load_inputs() {
    run_kept_inputs("rules_load", checks::rules_load);
}

#[test]
fn replay_inputs() {
    run_kept_inputs("replay", checks::replay);
}

#[test]
fn minidump_inputs() {
    run_kept_inputs("minidump", checks::minidump);
}

#[test]
fn crashpad_inputs() {
    run_kept_inputs("crashpad", checks::crashpad);
}

#[test]
fn otlp_inputs() {
    run_kept_inputs("otlp", checks::otlp);
}

#[test]
fn security_report_inputs() {
    run_kept_inputs("security_report", checks::security_report);
}

#[test]
fn idempotence_excuses_only_changes_across_a_mask() {
    // Misses the payload targets found (the second pass masks what the first left next to its own mask).
    assert!(!checks::only_across_masks(
        b"GET /users/***@e.roe@example.org",
        b"GET /users/***@***@example.org"
    ));
    assert!(!checks::only_across_masks(
        b"?token=[FILTERED]||///users/jale.roe@example.org",
        b"?token=[FILTERED]||///users/***@example.org"
    ));
    // A removed value joining its surroundings into a new match is the first pass's own rewrite.
    assert!(checks::only_across_masks(
        b"https://a$b&api_key=[FILTERED]&s:%40@u",
        b"https://[redacted]@u"
    ));
    assert!(checks::only_across_masks(b"same", b"same"));
}
