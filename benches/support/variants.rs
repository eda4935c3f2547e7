//! Versions of a captured envelope that differ as one application's events differ from each other, shared by
//! `scrub.rs` and `load.rs`. Replaying one capture byte for byte lets the relay's per-thread memos (strings found
//! clean, findings by digest, key verdicts) answer for every string after the first time; in real traffic they answer
//! only for what really repeats (frame names, SDK metadata, keys), while ids, timestamps and each user's data change.

use std::collections::HashMap;

use regex::{Captures, Regex};

/// `count` versions of `envelope` (decompressed): fresh ids (every run of 16 or 32 lowercase hex digits: event,
/// trace and span ids), other sub-second digits in every timestamp (ISO `:SS.ffffff` and Unix `1xxxxxxxxx.fff`), and
/// another user's email addresses (local parts of the same length). Within a version, one id or address is replaced
/// the same way wherever it appears, as an event repeats its ids and its user's address. Lengths never change, so
/// item headers stay right and every finding stays a finding. Deterministic for one `seed`.
pub fn variants(envelope: &str, count: usize, seed: u64) -> Vec<String> {
    let ids = Regex::new(r"\b(?:[0-9a-f]{32}|[0-9a-f]{16})\b").expect("pattern");
    let fractions = Regex::new(r"(:\d\d\.|\b1\d{9}\.)(\d+)").expect("pattern");
    let emails = Regex::new(r"\b([a-z][a-z0-9._-]*)@([a-z0-9-]+\.[a-z]{2,})").expect("pattern");
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| {
            let mut fresh_ids = HashMap::new();
            let text = ids.replace_all(envelope, |found: &Captures<'_>| {
                let len = found[0].len();
                fresh_ids
                    .entry(found[0].to_owned())
                    .or_insert_with(|| (0..len).map(|_| rng.digit(16)).collect::<String>())
                    .clone()
            });
            let text = fractions.replace_all(&text, |found: &Captures<'_>| {
                let digits: String = (0..found[2].len()).map(|_| rng.digit(10)).collect();
                format!("{}{digits}", &found[1])
            });
            let mut users = HashMap::new();
            let text = emails.replace_all(&text, |found: &Captures<'_>| {
                let name = users
                    .entry(found[1].to_owned())
                    .or_insert_with(|| (0..found[1].len()).map(|_| rng.lowercase()).collect::<String>());
                format!("{name}@{}", &found[2])
            });
            text.into_owned()
        })
        .collect()
}
