//! scrub-relay: a Sentry-compatible relay that scrubs secrets and PII from envelopes before they reach Sentry.
//!
//! (The full story of a request is written here as the modules land.)

#![forbid(unsafe_code)]

pub mod admin;
pub mod delivery;
pub mod envelope;
pub mod healthcheck;
pub mod logging;
pub mod metrics;
pub mod filter;
pub mod pipeline;
pub mod reload;
pub mod rules;
pub mod scrub;
pub mod truncate;
