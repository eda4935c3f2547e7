//! Process-wide log setup: one line per event on stderr, human-readable by default or one JSON object per line
//! (`--log-format json`) for log collectors.
//!
//! Logs go to stderr because stdout belongs to command output (`scrub-relay scrub` writes the scrubbed envelope there).
//! Which events are kept: `RUST_LOG` when it is set (full `EnvFilter` syntax, e.g. `scrub_relay=debug,hyper=info`),
//! otherwise `--log-level` (`SCRUB_RELAY_LOG_LEVEL`, default `info`). `RUST_LOG` wins because it is the more specific
//! tool a developer reaches for while debugging; operators set the flag.
//!
//! What may be logged is a rule for the whole crate, not this file: messages and fields name causes, item types, rule
//! ids, sizes and statuses, never a header value, a body, a JSON value or a project key.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The default for `--log-level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// How log events are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-23T07:00:00.000000Z  INFO scrub_relay::server: listening addr=0.0.0.0:3000` (colours on a terminal).
    #[default]
    Text,
    /// `{"timestamp":"...","level":"INFO","target":"scrub_relay::server","message":"listening","addr":"..."}`.
    Json,
}

/// The logging flags, shared by every subcommand that runs for a while.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format: `text` (human-readable) or `json` (one object per line, for log collectors).
    #[arg(long, env = "SCRUB_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Least severe level logged: error, warn, info, debug or trace (or a full filter such as
    /// `scrub_relay=debug,hyper=info`). `RUST_LOG`, when set, takes precedence.
    #[arg(long, env = "SCRUB_RELAY_LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    pub log_level: String,
}

impl LogArgs {
    /// Installs the global subscriber these flags describe (see [`init`]).
    pub fn init(&self) -> Result<(), LoggingError> {
        init(self.log_format, &self.log_level)
    }
}

/// The log filter could not be built from `RUST_LOG` or `--log-level`.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter {source_name} ({directive:?}): {reason}")]
    InvalidFilter {
        source_name: &'static str,
        directive: String,
        reason: String,
    },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Builds the event filter: `RUST_LOG` when set and non-empty, else `level`.
///
/// `rust_log` is passed in (rather than read here) so the precedence can be tested without touching the process
/// environment.
pub fn build_filter(rust_log: Option<&str>, level: &str) -> Result<EnvFilter, LoggingError> {
    let (source_name, directive) = match rust_log.map(str::trim).filter(|value| !value.is_empty()) {
        Some(value) => ("RUST_LOG", value),
        None => ("--log-level", level.trim()),
    };
    EnvFilter::builder()
        .parse(directive)
        .map_err(|error| LoggingError::InvalidFilter {
            source_name,
            directive: directive.to_owned(),
            reason: error.to_string(),
        })
}

/// Installs the global subscriber. Call once, first thing in `main`, before anything logs.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = build_filter(rust_log.as_deref(), level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        // Flattened: the event's fields sit next to `message` instead of under `fields`, which is what log
        // collectors (Loki, Elasticsearch, Cloud Logging) index without extra parsing rules.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_the_flag() {
        let filter = build_filter(Some("scrub_relay=trace"), "warn").expect("valid filter");
        assert_eq!(filter.to_string(), "scrub_relay=trace");
    }

    #[test]
    fn empty_rust_log_falls_back_to_the_flag() {
        let filter = build_filter(Some("  "), "debug").expect("valid filter");
        assert_eq!(filter.to_string(), "debug");
        let filter = build_filter(None, "warn").expect("valid filter");
        assert_eq!(filter.to_string(), "warn");
    }

    #[test]
    fn an_invalid_level_names_where_it_came_from() {
        let error = build_filter(None, "loud=[").expect_err("invalid directive");
        assert!(error.to_string().contains("--log-level"), "{error}");
        let error = build_filter(Some("x=[["), "info").expect_err("invalid directive");
        assert!(error.to_string().contains("RUST_LOG"), "{error}");
    }
}
