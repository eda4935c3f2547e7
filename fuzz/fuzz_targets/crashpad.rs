//! libFuzzer entry for `checks::crashpad` (see `fuzz/checks.rs` for what it asserts and how the input is read).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::crashpad(data));
