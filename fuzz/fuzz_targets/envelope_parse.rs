//! libFuzzer entry for `checks::envelope_parse` (see `fuzz/checks.rs` for what it asserts and how the input is read).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::envelope_parse(data));
