//! Delivery: what happens to a scrubbed envelope after the SDK was told 200, until the upstream has it.
//!
//! # The guarantee
//!
//! An envelope the relay answered 200 for is delivered to the upstream at least once, unless the upstream rejects it
//! with a 4xx other than 429, or it stays undeliverable for longer than `max_age`. While the upstream is unreachable
//! (network error, timeout or 5xx) and a spool directory is configured, every accepted envelope is on disk before the
//! SDK gets its 200, so even `kill -9` during an outage loses nothing (while the upstream is healthy, envelopes wait in
//! memory for about one round trip, and only those are exposed to `kill -9`); without a spool, envelopes wait in
//! memory and are lost only if the process dies or the shutdown grace period ends before the upstream comes back.
//!
//! # How
//!
//! - [`Delivery::submit`] never talks to the upstream: the SDK's latency does not depend on the upstream's. The
//!   envelope goes to the in-memory queue, or to the [`spool`] when the upstream is failing, when the spool still holds
//!   older envelopes (so arrival order is kept), or when the memory queue is at its caps. When both are full the SDK
//!   gets 503 with `Retry-After` ([`Rejected`]).
//! - A fixed pool of workers sends envelopes oldest first: memory queue, then spool. After a network error, timeout
//!   or 5xx, the upstream counts as failing ([`retry`]): one probe at a time, with exponential backoff and jitter,
//!   and the failed envelope (written to the spool first, when there is one) waits for its own retry time. A probe
//!   prefers an envelope that has not failed yet: if it goes through, the upstream is fine and only the first envelope
//!   keeps backing off on its own (an envelope the upstream fails on alone neither blocks the line nor is retried
//!   hot); if it fails too, it was an outage, and everything held for it is due the moment the upstream recovers.
//! - Rate limits the upstream announces ([`rate_limits`]) are remembered per project and category. At ingest, limited
//!   items are dropped and an envelope with nothing left is answered 429 ([`Delivery::enforce_rate_limits`]). Queued
//!   envelopes are held back until their limit expires rather than sent to be refused; a 429'd envelope is retried
//!   after its `Retry-After`.
//! - [`Delivery::shutdown`] flushes the memory queue for a grace period, then writes what is left to the spool.

// A failed spool write hands the job back to the caller inside the `Err` (it is moved, not copied, and kept in memory
// instead): the large `Err` is the point.
#![allow(clippy::result_large_err)]

pub mod rate_limits;
pub mod retry;
pub mod spool;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::envelope::Envelope;
use crate::metrics::Metrics;

pub use rate_limits::{DataCategory, RateLimited, RateLimits};
pub use retry::Backoff;
pub use spool::{Spool, SpoolConfig};

use retry::{Gate, UpstreamHealth};
use spool::{Lease, SpoolMetrics, SpoolReadError, SpoolWriteError};

/// One scrubbed envelope and what is needed to forward it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub project_id: u64,
    pub public_key: String,
    /// The SDK's `sentry_client`, forwarded in `X-Sentry-Auth`.
    pub sentry_client: Option<String>,
    /// The SDK's `User-Agent`, forwarded as is.
    pub user_agent: Option<String>,
    /// The client address for `X-Forwarded-For`, present only when the policy allows sending it.
    pub forwarded_for: Option<std::net::IpAddr>,
    /// The scrubbed envelope, uncompressed (for other destinations, the scrubbed body in their encoding).
    pub envelope: Bytes,
    /// The same envelope already encoded for the upstream, made on the thread that scrubbed it (or the SDK's own
    /// compressed bytes, when the relay changed nothing). `None` compresses at send time. Never spooled: an
    /// envelope read back from the spool is compressed again.
    pub encoded: Option<crate::upstream::Encoded>,
    /// When the relay accepted it; wall-clock time, because it survives restarts in the spool.
    pub received_at: SystemTime,
    /// Which upstream route it goes to.
    pub destination: Destination,
}

impl Job {
    fn size(&self) -> usize {
        self.envelope.len()
    }
}

/// Where a job goes upstream and how its body is labelled. Envelopes are nearly all traffic; OTLP and NEL bodies have
/// no envelope form on the wire (Relay converts them internally), so they go to the upstream's route of the same
/// name, in the encoding the client used, through the same queue, spool and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    Envelope,
    OtlpTraces(crate::otlp::Encoding),
    OtlpLogs(crate::otlp::Encoding),
    Nel,
}

impl Destination {
    /// The upstream path for a project.
    pub fn path(self, project_id: u64) -> String {
        match self {
            Destination::Envelope => format!("/api/{project_id}/envelope/"),
            Destination::OtlpTraces(_) => format!("/api/{project_id}/integration/otlp/v1/traces"),
            Destination::OtlpLogs(_) => format!("/api/{project_id}/integration/otlp/v1/logs"),
            Destination::Nel => format!("/api/{project_id}/nel/"),
        }
    }

    /// The `Content-Type` of the body sent there.
    pub fn content_type(self) -> &'static str {
        match self {
            Destination::Envelope => "application/x-sentry-envelope",
            Destination::OtlpTraces(encoding) | Destination::OtlpLogs(encoding) => encoding.content_type(),
            Destination::Nel => "application/reports+json",
        }
    }

    /// The one-byte code the spool stores (0 is an envelope, so entries written before destinations existed read
    /// back as envelopes).
    pub fn code(self) -> u8 {
        use crate::otlp::Encoding::{Json, Protobuf};
        match self {
            Destination::Envelope => 0,
            Destination::OtlpTraces(Protobuf) => 1,
            Destination::OtlpTraces(Json) => 2,
            Destination::OtlpLogs(Protobuf) => 3,
            Destination::OtlpLogs(Json) => 4,
            Destination::Nel => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Destination> {
        use crate::otlp::Encoding::{Json, Protobuf};
        Some(match code {
            0 => Destination::Envelope,
            1 => Destination::OtlpTraces(Protobuf),
            2 => Destination::OtlpTraces(Json),
            3 => Destination::OtlpLogs(Protobuf),
            4 => Destination::OtlpLogs(Json),
            5 => Destination::Nel,
            _ => return None,
        })
    }

    /// The rate-limit category that holds such a job back, for destinations that are not envelopes (whose items
    /// have their own): OTLP traces count as spans, as in Sentry. Logs and NEL reports are not rate limited by
    /// Sentry's endpoints, so nothing holds them back.
    pub fn rate_limit_category(self) -> Option<DataCategory> {
        match self {
            Destination::OtlpTraces(_) => Some(DataCategory::Span),
            Destination::Envelope | Destination::OtlpLogs(_) | Destination::Nel => None,
        }
    }
}

/// The upstream's answer, as far as delivery cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamReply {
    pub status: u16,
    /// `Retry-After`, raw.
    pub retry_after: Option<String>,
    /// `X-Sentry-Rate-Limits`, raw.
    pub rate_limits: Option<String>,
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Retried.
    #[error("upstream request timed out")]
    Timeout,
    /// Retried.
    #[error("upstream unreachable")]
    Network,
    /// The request could not even be built (compression failed, a header was invalid). Trying again would fail the
    /// same way and block the queue, so the envelope is dropped (`envelopes_dropped{reason="unsendable"}`).
    #[error("envelope could not be sent")]
    Unsendable,
}

/// Sends one envelope upstream. Implemented by the real HTTP client; kept as a trait so delivery does not depend on
/// how requests are built. The implementation records `upstream_requests` and `upstream_duration`.
pub trait Transport: Send + Sync + 'static {
    fn send<'a>(&'a self, job: &'a Job) -> Pin<Box<dyn Future<Output = Result<UpstreamReply, SendError>> + Send + 'a>>;
}

/// How much the relay holds and how it retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Upstream requests in flight at once.
    pub workers: usize,
    /// Cap on envelopes held in memory (waiting, in flight or held back by a rate limit).
    pub queue_max_envelopes: usize,
    /// Cap on the bytes of those envelopes (uncompressed).
    pub queue_max_bytes: usize,
    /// Envelopes still undelivered this long after they arrived are dropped (`envelopes_dropped{reason="expired"}`).
    pub max_age: Duration,
    /// The disk spool; `None` keeps everything in memory.
    pub spool: Option<SpoolConfig>,
    pub backoff: Backoff,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            workers: 8,
            queue_max_envelopes: 10_000,
            queue_max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 60 * 60),
            spool: None,
            backoff: Backoff::default(),
        }
    }
}

impl From<&crate::config::Config> for DeliveryConfig {
    fn from(config: &crate::config::Config) -> Self {
        DeliveryConfig {
            workers: config.upstream_concurrency,
            queue_max_envelopes: config.queue_max_envelopes,
            queue_max_bytes: config.queue_max_bytes,
            max_age: config.spool_max_age,
            spool: config.spool_dir.as_ref().map(|dir| SpoolConfig {
                dir: dir.clone(),
                max_bytes: config.spool_max_bytes,
            }),
            backoff: Backoff {
                initial: config.retry_initial_backoff,
                max: config.retry_max_backoff,
            },
        }
    }
}

/// The real upstream: one HTTP attempt per call ([`crate::upstream::Upstream::send`], which also records
/// `upstream_requests` and `upstream_duration`).
impl Transport for crate::upstream::Upstream {
    fn send<'a>(&'a self, job: &'a Job) -> Pin<Box<dyn Future<Output = Result<UpstreamReply, SendError>> + Send + 'a>> {
        use crate::upstream::{UpstreamError, UpstreamRequest};
        Box::pin(async move {
            let request = UpstreamRequest {
                project_id: job.project_id,
                public_key: job.public_key.clone(),
                sentry_client: job.sentry_client.clone(),
                user_agent: job
                    .user_agent
                    .as_deref()
                    .and_then(|ua| http::HeaderValue::from_str(ua).ok()),
                forwarded_for: job.forwarded_for,
                envelope: job.envelope.clone(),
                destination: job.destination,
                encoded: job.encoded.clone(),
            };
            let header = |value: Option<http::HeaderValue>| value.and_then(|v| v.to_str().ok().map(str::to_owned));
            match crate::upstream::Upstream::send(self, request).await {
                Ok(response) => Ok(UpstreamReply {
                    status: response.status.as_u16(),
                    retry_after: header(response.retry_after),
                    rate_limits: header(response.rate_limits),
                }),
                Err(UpstreamError::Timeout) => Err(SendError::Timeout),
                Err(UpstreamError::Connect(_) | UpstreamError::Request(_)) => Err(SendError::Network),
                Err(UpstreamError::Compress(_)) => Err(SendError::Unsendable),
            }
        })
    }
}

/// Why an envelope was not accepted. The SDK gets 503 with `Retry-After: retry_after_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the relay's queue and spool are full")]
    Full { retry_after_secs: u64 },
    #[error("the relay is shutting down")]
    ShuttingDown { retry_after_secs: u64 },
}

impl Rejected {
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Rejected::Full { retry_after_secs } | Rejected::ShuttingDown { retry_after_secs } => *retry_after_secs,
        }
    }
}

/// What shutdown did with the envelopes it still held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Memory-queue envelopes written to the spool.
    pub spooled: usize,
    /// Memory-queue envelopes lost (no spool, or the spool was full or failing).
    pub lost: usize,
}

/// A memory-queue envelope. `seq` orders it among spool entries should it be spooled.
#[derive(Debug)]
struct Entry {
    seq: u64,
    job: Job,
    /// Failed attempts so far (network errors, timeouts, 5xx).
    attempts: u32,
}

/// An envelope held back until `until`: by a rate limit, or after a failed attempt (its own backoff, so an envelope
/// the upstream keeps failing on is neither retried hot nor in the way of the others).
#[derive(Debug)]
enum Deferred {
    Memory {
        until: Instant,
        entry: Entry,
        hold: Hold,
    },
    /// The file stays on disk (leased); only the lease is kept in memory.
    Spool {
        until: Instant,
        lease: Lease,
        attempts: u32,
        hold: Hold,
    },
}

/// Why an envelope is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Until a rate limit expires.
    RateLimit,
    /// Its own backoff after a failed attempt: if the upstream fails on this envelope alone, it must not be retried
    /// hot nor stand in the way of the others.
    Retry,
    /// It failed, and so did the next probe: the upstream is down, not this envelope's fault. It becomes due the
    /// moment the upstream recovers, so envelopes keep their order.
    Outage,
}

impl Deferred {
    fn until(&self) -> Instant {
        match self {
            Deferred::Memory { until, .. } | Deferred::Spool { until, .. } => *until,
        }
    }

    fn hold_mut(&mut self) -> &mut Hold {
        match self {
            Deferred::Memory { hold, .. } | Deferred::Spool { hold, .. } => hold,
        }
    }

    /// The upstream failed a probe too: what was held for its own retry was held for the outage.
    fn blame_outage(&mut self) {
        let hold = self.hold_mut();
        if *hold == Hold::Retry {
            *hold = Hold::Outage;
        }
    }

    /// The upstream is back: what was held for the outage is due now.
    fn release_after_outage(&mut self, now: Instant) {
        if *self.hold_mut() == Hold::Outage {
            match self {
                Deferred::Memory { until, .. } | Deferred::Spool { until, .. } => *until = now,
            }
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Deferred::Memory { entry, .. } => entry.seq,
            Deferred::Spool { lease, .. } => lease.seq,
        }
    }
}

/// What a worker took.
enum Work {
    Memory(Entry),
    Spool(Lease, u32),
}

/// Where an envelope being sent came from, which decides what "done" and "try again" mean.
enum Origin {
    Memory(u64),
    Spool(Lease),
}

#[derive(Debug)]
struct State {
    /// Memory-queue envelopes waiting to be sent, oldest first.
    waiting: VecDeque<Entry>,
    deferred: Vec<Deferred>,
    /// Every memory envelope the relay holds: waiting, deferred, in flight or being spooled.
    memory_envelopes: usize,
    memory_bytes: usize,
    /// Memory envelopes taken by a worker and not yet done with (sent, spooled or put back).
    memory_busy: usize,
    health: UpstreamHealth,
    next_seq: u64,
    /// Workers that found nothing to send (the upstream gate open) and wait for an envelope.
    idle_workers: usize,
    /// A worker is moving the memory queue to the spool.
    spilling: bool,
    /// The workers have stopped; new envelopes go straight to the spool.
    closed: bool,
}

struct Shared {
    config: DeliveryConfig,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    rate_limits: RateLimits,
    spool: Option<Arc<Spool>>,
    state: Mutex<State>,
    /// Bumped on every change a waiting worker or shutdown may care about, except the most frequent ones, which have
    /// their own signals below: waking every idle worker for each of those cost more CPU than the delivery itself.
    changed: watch::Sender<u64>,
    /// An envelope was queued in memory: wakes one idle worker (or lets the next worker that looks go on at once).
    queued: Notify,
    /// An envelope left the queue for good. Only shutdown, waiting for the queue to drain, cares.
    finished: watch::Sender<u64>,
    /// A worker took an envelope from the memory queue: wakes ingest waiting in [`Delivery::wait_for_idle_workers`].
    taken: Notify,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Envelopes waiting for idle workers beyond which ingest waits for the workers to run
/// ([`Delivery::wait_for_idle_workers`]).
const STARVED_QUEUE: usize = 16;

/// The delivery handle: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct Delivery {
    shared: Arc<Shared>,
}

impl Delivery {
    /// Opens the spool (replaying what it holds, oldest first) and starts the workers. Must be called inside a Tokio
    /// runtime. Fails only when the spool directory cannot be created or listed.
    pub fn start(config: DeliveryConfig, transport: Arc<dyn Transport>, metrics: Arc<Metrics>) -> io::Result<Delivery> {
        let spool = match &config.spool {
            Some(spool_config) => {
                let spool_metrics = SpoolMetrics {
                    envelopes: metrics.spool_envelopes.clone(),
                    bytes: metrics.spool_bytes.clone(),
                    corrupt: metrics.spool_corrupt.clone(),
                };
                let (spool, report) = Spool::open(spool_config.clone(), spool_metrics)?;
                tracing::info!(
                    entries = report.entries,
                    bytes = report.bytes,
                    removed_partial_writes = report.removed_tmp,
                    moved_aside = report.moved_aside,
                    "spool opened; replaying its entries oldest first"
                );
                Some(Arc::new(spool))
            }
            None => None,
        };
        let next_seq = spool.as_ref().map_or(0, |spool| spool.next_seq());
        let state = State {
            waiting: VecDeque::new(),
            deferred: Vec::new(),
            memory_envelopes: 0,
            memory_bytes: 0,
            memory_busy: 0,
            idle_workers: 0,
            health: UpstreamHealth::new(config.backoff),
            next_seq,
            spilling: false,
            closed: false,
        };
        let workers = config.workers.max(1);
        let shared = Arc::new(Shared {
            config,
            transport,
            metrics,
            rate_limits: RateLimits::new(),
            spool,
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            queued: Notify::new(),
            finished: watch::channel(0).0,
            taken: Notify::new(),
            stop: watch::channel(false).0,
            workers: Mutex::new(Vec::new()),
        });
        shared.publish(&shared.lock());
        let handles = (0..workers).map(|_| tokio::spawn(worker(shared.clone()))).collect();
        *shared.workers.lock().unwrap_or_else(|p| p.into_inner()) = handles;
        Ok(Delivery { shared })
    }

    /// Takes a scrubbed envelope for delivery. `Ok` means it is queued (or, when the upstream is failing and a spool
    /// is configured, durably on disk) and the SDK may be told 200.
    pub async fn submit(&self, job: Job) -> Result<(), Rejected> {
        let shared = &self.shared;
        let size = job.size();
        let (seq, to_spool) = {
            let mut state = shared.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            let to_spool = match &shared.spool {
                Some(spool) => {
                    state.closed || state.health.is_down() || !spool.is_empty() || !shared.memory_has_room(&state, size)
                }
                None => false,
            };
            if !to_spool {
                if state.closed {
                    return Err(Rejected::ShuttingDown { retry_after_secs: 1 });
                }
                if !shared.memory_has_room(&state, size) {
                    return Err(Rejected::Full {
                        retry_after_secs: state.health.retry_after_secs(Instant::now()),
                    });
                }
                shared.push_memory(&mut state, Entry { seq, job, attempts: 0 });
                drop(state);
                shared.queued.notify_one();
                return Ok(());
            }
            (seq, to_spool)
        };
        debug_assert!(to_spool);
        let Some(spool) = shared.spool.clone() else {
            unreachable!("to_spool implies a spool")
        };
        let written = run_blocking(move || spool.write(seq, &job).map_err(|error| (error, job))).await;
        match written {
            Ok(()) => {
                shared.bump();
                Ok(())
            }
            Err((error, job)) => {
                if let SpoolWriteError::Io(io_error) = &error {
                    tracing::error!(error = %io_error, "could not write to the spool; keeping the envelope in memory");
                }
                let mut state = shared.lock();
                if state.closed || !shared.memory_has_room(&state, size) {
                    let retry_after_secs = state.health.retry_after_secs(Instant::now());
                    return Err(Rejected::Full { retry_after_secs });
                }
                shared.push_memory(&mut state, Entry { seq, job, attempts: 0 });
                drop(state);
                shared.bump();
                Ok(())
            }
        }
    }

    /// Waits while envelopes wait in memory for workers that are idle: the workers were woken but the runtime has not
    /// polled them yet, because it is busy scrubbing (the relay is CPU-bound). Ingest calls this before it scrubs, so
    /// that it cannot outrun delivery until the queue is full and SDKs get 503 (issue #11). Returns at once otherwise,
    /// also while the upstream is slow or failing: then the queue is there to absorb the backlog.
    pub async fn wait_for_idle_workers(&self) {
        let shared = &self.shared;
        loop {
            // Created before the check: a worker taking an envelope in between still wakes it.
            let taken = shared.taken.notified();
            {
                let state = shared.lock();
                if state.closed || state.idle_workers == 0 || state.waiting.len() <= STARVED_QUEUE {
                    return;
                }
            }
            taken.await;
        }
    }

    /// True while no more than a few envelopes wait for a worker: delivery keeps up with ingest.
    pub fn keeps_up(&self) -> bool {
        self.shared.lock().waiting.len() <= STARVED_QUEUE
    }

    /// Applies the rate limits the upstream announced for `project_id`: drops limited items (counted as
    /// `items_dropped{reason="rate_limited"}`), or, when every item is limited, returns the 429 answer for the SDK
    /// (counted as `envelopes_dropped{reason="rate_limited"}`).
    pub fn enforce_rate_limits(&self, project_id: u64, envelope: &mut Envelope) -> Result<(), RateLimited> {
        let metrics = &self.shared.metrics;
        match self.shared.rate_limits.enforce(project_id, envelope, Instant::now()) {
            Ok(dropped) => {
                for item_type in dropped {
                    metrics
                        .items_dropped
                        .with_label_values(&[label_item_type(&item_type), "rate_limited"])
                        .inc();
                }
                Ok(())
            }
            Err(limited) => {
                for item in &envelope.items {
                    metrics
                        .items_dropped
                        .with_label_values(&[item.ty().as_str(), "rate_limited"])
                        .inc();
                }
                metrics.envelopes_dropped.with_label_values(&["rate_limited"]).inc();
                Err(limited)
            }
        }
    }

    /// The remembered rate limits, for callers that need more than [`Delivery::enforce_rate_limits`].
    pub fn rate_limits(&self) -> &RateLimits {
        &self.shared.rate_limits
    }

    /// True when a new envelope would be refused: the memory queue is at a cap and the spool (if any) is full.
    /// Readiness reports not-ready while this holds.
    pub fn is_full(&self) -> bool {
        let state = self.shared.lock();
        let memory_full = !self.shared.memory_has_room(&state, 1);
        let spool_full = self.shared.spool.as_ref().is_none_or(|spool| spool.is_full());
        memory_full && spool_full
    }

    /// Stops delivery: keeps sending the memory queue for up to `grace`, then stops the workers and writes what is
    /// left in memory to the spool (when configured). Spooled envelopes are delivered by the next start.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let shared = self.shared;
        let deadline = Instant::now() + grace;
        let mut changed = shared.changed.subscribe();
        let mut finished = shared.finished.subscribe();
        loop {
            changed.borrow_and_update();
            finished.borrow_and_update();
            {
                let state = shared.lock();
                // With a spool, what is held back is spooled below; without one, it is lost unless sent in time.
                // Either way, an envelope held back past the deadline (by a rate limit) cannot be sent in time.
                let flushed = state.waiting.is_empty()
                    && state.memory_busy == 0
                    && (shared.spool.is_some()
                        || state
                            .deferred
                            .iter()
                            .all(|d| matches!(d, Deferred::Spool { .. }) || d.until() > deadline));
                if flushed {
                    break;
                }
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = finished.changed() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        shared.lock().closed = true;
        shared.stop.send_replace(true);
        let handles = std::mem::take(&mut *shared.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            // A worker that panicked has already lost its one envelope; the others are still ours to save.
            let _ = handle.await;
        }
        let leftovers: Vec<Entry> = {
            let mut state = shared.lock();
            let mut entries: Vec<Entry> = state.waiting.drain(..).collect();
            for deferred in state.deferred.drain(..) {
                if let Deferred::Memory { entry, .. } = deferred {
                    entries.push(entry);
                }
            }
            entries
        };
        let mut report = ShutdownReport::default();
        for entry in leftovers {
            let size = entry.job.size();
            let saved = match &shared.spool {
                Some(spool) => {
                    let spool = spool.clone();
                    run_blocking(move || spool.write(entry.seq, &entry.job)).await.is_ok()
                }
                None => false,
            };
            if saved {
                report.spooled += 1;
            } else {
                report.lost += 1;
                shared.metrics.envelopes_dropped.with_label_values(&["shutdown"]).inc();
            }
            let mut state = shared.lock();
            shared.forget_memory(&mut state, size);
        }
        if report.lost > 0 {
            tracing::error!(
                lost = report.lost,
                "shutdown: envelopes could not be delivered or spooled and are lost"
            );
        } else {
            tracing::info!(spooled = report.spooled, "shutdown: delivery stopped");
        }
        report
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State updates are small and complete before the lock is released; a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|version| *version = version.wrapping_add(1));
    }

    fn memory_has_room(&self, state: &State, size: usize) -> bool {
        state.memory_envelopes < self.config.queue_max_envelopes
            && state.memory_bytes.saturating_add(size) <= self.config.queue_max_bytes
    }

    fn push_memory(&self, state: &mut State, entry: Entry) {
        state.memory_envelopes += 1;
        state.memory_bytes += entry.job.size();
        state.waiting.push_back(entry);
        self.publish(state);
    }

    /// A memory envelope is gone (delivered, dropped or spooled).
    fn forget_memory(&self, state: &mut State, size: usize) {
        state.memory_envelopes -= 1;
        state.memory_bytes -= size;
        self.publish(state);
    }

    fn publish(&self, state: &State) {
        self.metrics
            .queue_envelopes
            .set(i64::try_from(state.memory_envelopes).unwrap_or(i64::MAX));
        self.metrics
            .queue_bytes
            .set(i64::try_from(state.memory_bytes).unwrap_or(i64::MAX));
    }

    /// The oldest thing to send: a held-back envelope that is due, then the memory queue, then the spool.
    ///
    /// A probe (the one attempt allowed while the upstream is failing) prefers an envelope that has not failed yet: if
    /// it goes through, the earlier failure was that envelope's own problem, not an outage.
    fn take_next(&self, state: &mut State, now: Instant, probe: bool) -> Option<Work> {
        if probe {
            if let Some(work) = self.take_fresh(state) {
                return Some(work);
            }
        }
        let due = state
            .deferred
            .iter()
            .enumerate()
            .filter(|(_, d)| d.until() <= now)
            .min_by_key(|(_, d)| d.seq());
        if let Some((pos, _)) = due {
            return Some(match state.deferred.remove(pos) {
                Deferred::Memory { entry, .. } => {
                    state.memory_busy += 1;
                    Work::Memory(entry)
                }
                Deferred::Spool { lease, attempts, .. } => Work::Spool(lease, attempts),
            });
        }
        self.take_fresh(state)
    }

    fn take_fresh(&self, state: &mut State) -> Option<Work> {
        if let Some(entry) = state.waiting.pop_front() {
            state.memory_busy += 1;
            self.taken.notify_waiters();
            return Some(Work::Memory(entry));
        }
        self.spool.as_ref()?.lease_next().map(|lease| Work::Spool(lease, 0))
    }

    fn next_deferred_due(state: &State) -> Option<Instant> {
        state.deferred.iter().map(Deferred::until).min()
    }

    fn is_expired(&self, received_at: SystemTime) -> bool {
        SystemTime::now()
            .duration_since(received_at)
            .is_ok_and(|age| age > self.config.max_age)
    }

    /// Done with an envelope for good (delivered or given up on).
    async fn finish(&self, origin: Origin, size: usize) {
        match origin {
            Origin::Memory(_) => {
                let mut state = self.lock();
                state.memory_busy -= 1;
                self.forget_memory(&mut state, size);
            }
            Origin::Spool(lease) => {
                if let Some(spool) = self.spool.clone() {
                    if let Err(error) = run_blocking(move || spool.remove(lease.seq)).await {
                        tracing::error!(%error, "could not delete a delivered spool entry; it may be sent again");
                    }
                }
            }
        }
        self.finished.send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Holds an envelope back until `until` (a rate limit's expiry, or its retry time).
    fn defer(&self, origin: Origin, job: Job, attempts: u32, until: Instant, hold: Hold) {
        let mut state = self.lock();
        let deferred = match origin {
            Origin::Memory(seq) => {
                state.memory_busy -= 1;
                Deferred::Memory {
                    until,
                    entry: Entry { seq, job, attempts },
                    hold,
                }
            }
            Origin::Spool(lease) => Deferred::Spool {
                until,
                lease,
                attempts,
                hold,
            },
        };
        state.deferred.push(deferred);
        drop(state);
        self.bump();
    }

    /// After a failed attempt: a memory envelope is written to the spool first when there is one (so a crash cannot
    /// lose it), then held back until `until`.
    async fn retry_later(&self, origin: Origin, job: Job, attempts: u32, until: Instant, hold: Hold) {
        let Origin::Memory(seq) = origin else {
            self.defer(origin, job, attempts, until, hold);
            return;
        };
        let Some(spool) = self.spool.clone() else {
            self.defer(origin, job, attempts, until, hold);
            return;
        };
        let size = job.size();
        match run_blocking(move || spool.write_leased(seq, &job).map_err(|error| (error, job))).await {
            Ok(lease) => {
                let mut state = self.lock();
                state.memory_busy -= 1;
                self.forget_memory(&mut state, size);
                state.deferred.push(Deferred::Spool {
                    until,
                    lease,
                    attempts,
                    hold,
                });
                drop(state);
                self.bump();
            }
            Err((_, job)) => self.defer(origin, job, attempts, until, hold),
        }
    }

    /// Gives an envelope back untried (shutdown interrupted its attempt): a spool entry is released, a memory envelope
    /// goes back to the head of the queue, which shutdown then spools in order.
    fn put_back(&self, origin: Origin, job: Job, attempts: u32) {
        match origin {
            Origin::Spool(lease) => {
                if let Some(spool) = &self.spool {
                    spool.release(lease.seq);
                }
            }
            Origin::Memory(seq) => {
                let mut state = self.lock();
                state.memory_busy -= 1;
                state.waiting.push_front(Entry { seq, job, attempts });
            }
        }
        self.bump();
    }

    /// Moves the whole memory queue to the spool, oldest first, so that while the upstream is down a crash loses
    /// nothing that was accepted before the outage was noticed.
    async fn spill_memory_to_spool(&self) {
        let Some(spool) = self.spool.clone() else { return };
        let entries: Vec<Entry> = {
            let mut state = self.lock();
            if state.spilling || state.waiting.is_empty() {
                return;
            }
            state.spilling = true;
            let entries: Vec<Entry> = state.waiting.drain(..).collect();
            state.memory_busy += entries.len();
            entries
        };
        let count = entries.len();
        let results = run_blocking(move || {
            entries
                .into_iter()
                .map(|entry| match spool.write(entry.seq, &entry.job) {
                    Ok(()) => Ok(entry.job.size()),
                    Err(_) => Err(entry),
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut state = self.lock();
        state.memory_busy -= count;
        state.spilling = false;
        let mut unspilled = Vec::new();
        for result in results {
            match result {
                Ok(size) => self.forget_memory(&mut state, size),
                Err(entry) => unspilled.push(entry),
            }
        }
        // Whatever did not fit goes back to the head of the queue in its original order.
        for entry in unspilled.into_iter().rev() {
            state.waiting.push_front(entry);
        }
        drop(state);
        self.bump();
    }
}

/// Runs blocking file I/O off the async threads.
async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        // The closures above do not panic by design; if one did, the panic belongs to the caller.
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

fn label_item_type(type_name: &str) -> &'static str {
    crate::envelope::ItemType::from_name(type_name).as_str()
}

fn outcome_label(result: &Result<UpstreamReply, SendError>) -> &'static str {
    match result {
        Ok(reply) => match reply.status {
            200..=299 => "2xx",
            429 => "429",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        },
        Err(SendError::Timeout) => "timeout",
        Err(SendError::Network) => "network_error",
        Err(SendError::Unsendable) => "unsendable",
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_for_stop(stop: &mut watch::Receiver<bool>) {
    // The sender lives as long as the workers; an error would mean it is gone, which also means stop.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// One delivery worker: waits for the upstream gate and for work, then sends one envelope at a time.
async fn worker(shared: Arc<Shared>) {
    let mut changed = shared.changed.subscribe();
    let mut stop = shared.stop.subscribe();
    loop {
        changed.borrow_and_update();
        if *stop.borrow_and_update() {
            return;
        }
        let now = Instant::now();
        let mut idle = false;
        let (work, probe, wake_at) = {
            let mut state = shared.lock();
            match state.health.acquire(now) {
                Gate::Open => {
                    let probe = state.health.is_down();
                    match shared.take_next(&mut state, now, probe) {
                        Some(work) => (Some(work), probe, None),
                        None => {
                            if probe {
                                state.health.release_probe();
                            }
                            idle = true;
                            state.idle_workers += 1;
                            (None, false, Shared::next_deferred_due(&state))
                        }
                    }
                }
                Gate::WaitUntil(at) => (None, false, Some(at)),
                Gate::WaitForProbe => (None, false, None),
            }
        };
        match work {
            Some(work) => deliver(&shared, work, probe, &mut stop).await,
            None => {
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = shared.queued.notified() => {}
                    _ = sleep_until_or_forever(wake_at) => {}
                    _ = stop.changed() => {}
                }
                if idle {
                    shared.lock().idle_workers -= 1;
                }
            }
        }
    }
}

/// One attempt at one envelope, and what follows from the answer.
async fn deliver(shared: &Shared, work: Work, probe: bool, stop: &mut watch::Receiver<bool>) {
    let release_probe = || {
        if probe {
            shared.lock().health.release_probe();
            shared.bump();
        }
    };
    let (origin, job, attempts) = match work {
        Work::Memory(entry) => (Origin::Memory(entry.seq), entry.job, entry.attempts),
        Work::Spool(lease, attempts) => {
            let Some(spool) = shared.spool.clone() else {
                unreachable!("spool work implies a spool")
            };
            let read_lease = lease.clone();
            match run_blocking(move || spool.read(&read_lease)).await {
                Ok(job) => (Origin::Spool(lease), job, attempts),
                Err(SpoolReadError::Corrupt(_)) => {
                    // Counted and logged by the spool.
                    release_probe();
                    return;
                }
                Err(SpoolReadError::Io(error)) => {
                    tracing::error!(%error, "could not read a spool entry; skipped");
                    release_probe();
                    return;
                }
            }
        }
    };
    let size = job.size();

    if shared.is_expired(job.received_at) {
        shared.metrics.envelopes_dropped.with_label_values(&["expired"]).inc();
        release_probe();
        shared.finish(origin, size).await;
        return;
    }

    // Do not send what the upstream already said it would refuse. The queued job keeps every item (and its size, for
    // the queue accounting) in case this attempt fails and a later one finds the limit expired.
    let now = Instant::now();
    let mut outgoing = None;
    if job.destination != Destination::Envelope {
        let category = job.destination.rate_limit_category();
        if let Some(until) = category.and_then(|c| shared.rate_limits.limited_until(job.project_id, Some(c), now)) {
            release_probe();
            shared.defer(origin, job, attempts, until, Hold::RateLimit);
            return;
        }
    } else if shared.rate_limits.has_limits(job.project_id, now) {
        if let Ok(mut envelope) = Envelope::parse(job.envelope.clone()) {
            if let Some(until) = shared.rate_limits.all_limited_until(job.project_id, &envelope, now) {
                release_probe();
                shared.defer(origin, job, attempts, until, Hold::RateLimit);
                return;
            }
            if let Ok(dropped) = shared.rate_limits.enforce(job.project_id, &mut envelope, now) {
                if !dropped.is_empty() {
                    for item_type in &dropped {
                        let labels = [label_item_type(item_type), "rate_limited"];
                        shared.metrics.items_dropped.with_label_values(&labels).inc();
                    }
                    outgoing = Some(Job {
                        envelope: envelope.to_bytes(),
                        ..job.clone()
                    });
                }
            }
        }
    }

    let result = tokio::select! {
        result = shared.transport.send(outgoing.as_ref().unwrap_or(&job)) => result,
        () = wait_for_stop(stop) => {
            // Shutdown: the answer will never be seen, so the envelope counts as undelivered (it may arrive twice).
            // Back to the head of the memory queue; shutdown spools the queue in order.
            release_probe();
            shared.put_back(origin, job, attempts);
            return;
        }
    };
    if let Err(SendError::Unsendable) = result {
        shared
            .metrics
            .envelopes_dropped
            .with_label_values(&["unsendable"])
            .inc();
        release_probe();
        shared.finish(origin, size).await;
        return;
    }

    let now = Instant::now();
    let retryable = match &result {
        Ok(reply) => {
            shared.rate_limits.record_response(
                job.project_id,
                reply.status,
                reply.rate_limits.as_deref(),
                reply.retry_after.as_deref(),
                now,
            );
            !(200..500).contains(&reply.status)
        }
        Err(_) => true,
    };
    if retryable {
        shared.metrics.upstream_retries.inc();
        let attempts = attempts.saturating_add(1);
        let (was_down, retry_at) = {
            let mut state = shared.lock();
            let was_down = state.health.is_down();
            let delay = state.health.on_failure(now, probe);
            let retry_at = now + state.health.envelope_delay(attempts);
            if was_down {
                for deferred in &mut state.deferred {
                    deferred.blame_outage();
                }
            }
            if !was_down {
                tracing::warn!(
                    outcome = outcome_label(&result),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "upstream is failing; holding envelopes and retrying with backoff"
                );
            }
            (was_down, retry_at)
        };
        let hold = if was_down { Hold::Outage } else { Hold::Retry };
        shared.retry_later(origin, job, attempts, retry_at, hold).await;
        if !was_down {
            shared.spill_memory_to_spool().await;
        }
        return;
    }

    let Ok(reply) = result else {
        unreachable!("network errors are retryable")
    };
    let recovered = {
        let mut state = shared.lock();
        let was_down = state.health.is_down();
        state.health.on_success();
        if was_down {
            for deferred in &mut state.deferred {
                deferred.release_after_outage(now);
            }
        }
        was_down
    };
    if recovered {
        tracing::info!("upstream is answering again; resuming delivery");
        shared.bump();
    }
    match reply.status {
        200..=299 => {
            shared.metrics.envelopes_forwarded.inc();
            shared.finish(origin, size).await;
        }
        429 => {
            shared.metrics.upstream_retries.inc();
            let until = (job.destination == Destination::Envelope)
                .then(|| Envelope::parse(job.envelope.clone()).ok())
                .flatten()
                .and_then(|envelope| shared.rate_limits.all_limited_until(job.project_id, &envelope, now))
                .unwrap_or_else(|| {
                    let retry_after = reply.retry_after.as_deref().and_then(rate_limits::parse_retry_after);
                    now + retry_after.unwrap_or(rate_limits::DEFAULT_RETRY_AFTER)
                });
            shared.defer(origin, job, attempts, until, Hold::RateLimit);
        }
        status => {
            tracing::warn!(status, "upstream rejected an envelope; dropped");
            shared
                .metrics
                .envelopes_dropped
                .with_label_values(&["upstream_rejected"])
                .inc();
            shared.finish(origin, size).await;
        }
    }
}

#[cfg(test)]
mod tests;
