//! scrub-relay: a Sentry-compatible relay that scrubs secrets and PII from envelopes before they reach Sentry.
//!
//! (The full story of a request is written here as the modules land.)

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod decode;
pub mod delivery;
pub mod dsn;
pub mod envelope;
pub mod error;
pub mod filter;
pub mod healthcheck;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod rules;
pub mod scrub;
pub mod server;
pub mod shutdown;
pub mod truncate;
pub mod upstream;
