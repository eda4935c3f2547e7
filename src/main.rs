//! The scrub-relay binary: parse the command line and hand it to the library (`cli::dispatch` loads the config and
//! rules, binds, and calls `server::run` with the OS shutdown signal).

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    scrub_relay::cli::dispatch(scrub_relay::cli::Cli::parse())
}
