//! The scrub-relay binary: parse the command line and hand it to the library (`cli::dispatch` loads the config and
//! rules, binds, and calls `server::run` with the OS shutdown signal).

#![forbid(unsafe_code)]

use clap::Parser;

/// jemalloc rather than the system's malloc, so memory freed after a burst goes back to the system (Cargo.toml says
/// why; benches/LOAD.md has the measurements). Only the binary sets it: tests and benches that link the library keep
/// their own allocator.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    scrub_relay::cli::dispatch(scrub_relay::cli::Cli::parse())
}
