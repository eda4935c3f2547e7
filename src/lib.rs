//! scrub-relay: a Sentry-compatible relay that removes secrets and personal data from envelopes before they reach
//! Sentry.
//!
//! Applications keep their Sentry SDK and change only the DSN's host. Every envelope they send passes through here,
//! is scrubbed according to `rules.yaml`, and is forwarded to the configured upstream Sentry.
//!
//! # The path of an envelope through the relay
//!
//! 1. **Start** (`main.rs` → [`cli`]). The command line and environment become a [`config::Config`]; `rules.yaml`
//!    is compiled into [`rules::CompiledRules`] (every regex, key set and route list built once). Anything invalid
//!    is one line on stderr and exit code 64, before a port is bound.
//! 2. **Accept** ([`server::run`]). The server takes an already-bound listener and a shutdown future, so the binary
//!    passes SIGTERM and tests pass a oneshot on port 0. Each connection is HTTP/1.1 (keep-alive, chunked) or HTTP/2.
//!    Operator routes (`/metrics`, health, readiness) are answered by [`admin`].
//! 3. **Authenticate** ([`auth`], [`dsn`]). The project key comes from `X-Sentry-Auth`, `Authorization: Sentry`,
//!    the `sentry_key` query parameter, or a tunnel envelope's `dsn`, with Sentry's rules for conflicts. Cheap
//!    refusals (auth, unknown `Content-Encoding`, oversized `Content-Length`) happen before the body is read.
//! 4. **Decode** ([`ingest`], [`decode`], [`budget`]). The body is read under the wire cap and decompressed (gzip,
//!    deflate, br, zstd) under the decompressed cap, so a compression bomb stops at the cap; every buffer grows in
//!    steps charged to one memory budget, and a request that cannot get memory in time is told 503 with
//!    `Retry-After`. Slow clients are cut by minimum data rates and per-address caps ([`server`]).
//!    [`envelope::Envelope::parse`] splits it into items (payloads are zero-copy slices); a legacy `store` event is
//!    wrapped into an envelope, and a crashpad upload (`/api/<id>/minidump/`) becomes one the way Sentry builds it
//!    ([`crashpad`]).
//! 5. **Scrub** ([`pipeline::process`], pure and synchronous; run inline on the runtime thread for envelopes up to
//!    16 KiB while delivery keeps up, on a blocking thread otherwise). Per item: [`filter`] drops
//!    health-check and static-file transactions and segment spans; [`scrub`] streams over each item's JSON once
//!    (a `serde_json::Value` tree only for the few subtrees and shapes that need one) and applies key rules, header
//!    rules, value detectors and the `send_default_pii` removals, writing Sentry `_meta` remarks; [`truncate`] cuts
//!    oversized gen_ai fields. Each item type has its payload format in [`payload`]: Session Replay recordings
//!    and videos are decoded, scrubbed and re-encoded (an undecodable one drops its whole replay); binary attachments
//!    and unparseable JSON follow the rules' policy: never forwarded raw unless the operator said so. Items nothing changed stay byte-identical. `scrub-relay scrub` runs exactly this.
//! 6. **Queue** ([`delivery`]). Rate limits the upstream announced are applied first (limited items dropped, 429 when
//!    nothing is left). The scrubbed envelope is queued in memory, or written to the disk spool when the upstream is
//!    failing or memory is full, and only then does the SDK get `200 {"id": ...}`. When memory and spool are both
//!    full the SDK gets 503 with `Retry-After` rather than a promise the relay cannot keep.
//! 7. **Deliver** ([`delivery`], [`upstream`]). Background workers POST to `<upstream>/api/<project>/envelope/` with
//!    a rebuilt `X-Sentry-Auth`, compressed. Network errors, timeouts, 5xx and 429 are retried with backoff and
//!    jitter; other 4xx are counted and dropped. The destination is always the configured upstream, never request
//!    data, so the relay cannot be used as an open proxy.
//! 8. **Observe and adjust** ([`metrics`], [`logging`], [`reload`]). Every step counts into Prometheus metrics with
//!    bounded labels; logs never carry payload values; SIGHUP (or a changed file) swaps in new rules atomically,
//!    and an invalid file leaves the old ones in force.
//! 9. **Stop** ([`shutdown`]). SIGTERM turns readiness off, stops accepting, lets requests in flight finish, flushes
//!    the queue to the upstream for the grace period and writes what is left to the spool.
//!
//! # Why the SDK is answered before delivery
//!
//! Answering only after the upstream accepted would tie every application's latency to Sentry's and lose envelopes
//! whenever Sentry is down. The relay answers once the envelope is held (memory, or disk while the upstream is
//! failing) and learns the upstream's rate limits from its answers, so SDKs still get real 429s for limited
//! categories on their next request. `docs/delivery.md` states the exact guarantee.
//!
//! # Where things live
//!
//! - Pure core, no sockets: [`envelope`], [`rules`], [`scrub`], [`payload`] (one module per payload format),
//!   [`filter`], [`truncate`], [`pipeline`], [`otlp`], [`crashpad`].
//! - Edges: [`server`], [`ingest`], [`routes`] (CSP/NEL reports, OTLP, cron check-ins: the same steps, ending in the
//!   same delivery), [`auth`], [`dsn`], [`decode`], [`budget`], [`error`], [`upstream`], [`delivery`], [`admin`].
//! - Process: [`cli`], [`config`], [`logging`], [`metrics`], [`reload`], [`shutdown`], [`healthcheck`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod budget;
pub mod cli;
pub mod config;
pub mod crashpad;
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
pub mod otlp;
pub mod payload;
pub mod pipeline;
pub mod reload;
pub mod routes;
pub mod rules;
pub mod scrub;
pub mod server;
pub mod shutdown;
pub mod truncate;
pub mod upstream;
