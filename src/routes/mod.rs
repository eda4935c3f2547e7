//! Sentry's routes other than envelope, store and tunnel: browser security reports (CSP on `/security/` and
//! `/csp-report/`, NEL on `/nel/`), OTLP traces and logs (`/integration/otlp/v1/traces|logs`) and HTTP cron
//! check-ins (`/cron/<slug>[/<key>]/`).
//!
//! Each handler follows ingest's steps with ingest's helpers (auth, `Content-Encoding`, the wire cap, decoding on a
//! processing slot), adds its route's content types and size limit (Relay's), and ends in the same delivery queue.
//! CSP reports and check-ins become envelope items (`raw_security`, `check_in`), the forms Sentry also takes inside
//! envelopes, so they are scrubbed by the envelope pipeline and delivered like any envelope. OTLP and NEL bodies
//! have no envelope form on the wire (Relay converts them internally), so they go to the upstream's route of the same
//! name in the encoding they came in ([`crate::delivery::Destination`]).

pub mod cron;
pub mod otlp;
pub mod security;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::auth::{self, Identity, RequestAuth};
use crate::budget::Charge;
use crate::decode::ContentEncoding;
use crate::delivery::{Destination, Job};
use crate::envelope::Envelope;
use crate::error::RelayError;
use crate::ingest::{self, Delivery, Endpoint};
use crate::metrics::Metrics;
use crate::pipeline::{self, ProcessOptions};
use crate::rules::CompiledRules;
use crate::server::{AppState, ClientAddr};

/// Which of these routes a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/security/` and `/csp-report/`.
    Security,
    Nel,
    OtlpTraces,
    OtlpLogs,
    /// `/cron/<slug>[/<key>]/`; the handler reads the slug and key from the path.
    Cron,
}

impl Kind {
    /// The `endpoint` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Security => "security",
            Kind::Nel => "nel",
            Kind::OtlpTraces => "otlp_traces",
            Kind::OtlpLogs => "otlp_logs",
            Kind::Cron => "cron",
        }
    }

    /// Every variant, for the metrics table and tests.
    pub const ALL: [Kind; 5] = [Kind::Security, Kind::Nel, Kind::OtlpTraces, Kind::OtlpLogs, Kind::Cron];

    /// Check-ins come from curl and cron jobs as `GET` too; everything else is `POST`.
    pub fn allows(self, method: &Method) -> bool {
        method == Method::POST || (self == Kind::Cron && method == Method::GET)
    }

    /// What follows `/api/<project_id>/`, trailing slash optional.
    pub fn from_path(rest: &str) -> Option<Kind> {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        Some(match rest {
            "security" | "csp-report" => Kind::Security,
            "nel" => Kind::Nel,
            "integration/otlp/v1/traces" => Kind::OtlpTraces,
            "integration/otlp/v1/logs" => Kind::OtlpLogs,
            _ if rest.starts_with("cron/") => Kind::Cron,
            _ => return None,
        })
    }
}

/// Handles one request on one of these routes.
pub async fn handle(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    kind: Kind,
    project_id: u64,
) -> Result<Response<Full<Bytes>>, RelayError> {
    match kind {
        Kind::Security => security::handle_csp(state, request, project_id).await,
        Kind::Nel => security::handle_nel(state, request, project_id).await,
        Kind::OtlpTraces => otlp::handle(state, request, crate::otlp::Signal::Traces, project_id).await,
        Kind::OtlpLogs => otlp::handle(state, request, crate::otlp::Signal::Logs, project_id).await,
        Kind::Cron => cron::handle(state, request, project_id).await,
    }
}

/// The request's `Content-Type` without parameters, lowercased; empty when absent or not text.
pub(crate) fn content_type(parts: &Parts) -> String {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Who is sending, from the request alone (these routes have no envelope `dsn`), checked against the allowlists.
pub(crate) fn identify(
    state: &AppState,
    request_auth: Option<RequestAuth>,
    project_id: u64,
) -> Result<Identity, RelayError> {
    let identity = auth::resolve(request_auth, Some(project_id), None)?;
    ingest::authorize(state, Endpoint::Envelope, &identity)?;
    Ok(identity)
}

/// Reads the body under the wire cap and `limit` (the route's own, when smaller), then decodes it on a processing
/// slot under `limit` and runs `work` on the decoded bytes there. The same caps, slots and lanes as envelopes: a
/// compressed body small on the wire is decoded in the small lane only up to [`ingest::SMALL_DECODED`], and moves to
/// the large lane when it is larger, so bombs cannot hold the small lane either.
pub(crate) async fn with_body<T: Send + 'static>(
    state: &Arc<AppState>,
    parts: &Parts,
    body: Incoming,
    limit: usize,
    work: impl FnOnce(Bytes) -> Result<T, RelayError> + Send + 'static,
) -> Result<T, RelayError> {
    let encoding = ingest::content_encoding(&parts.headers)?;
    let max_body = state.config.max_body_bytes.min(limit);
    let client = parts.extensions.get::<ClientAddr>().map(|addr| addr.0);
    let (wire, charge) = ingest::read_body(state, &parts.headers, body, client, max_body).await?;
    let body = Body {
        encoding,
        wire,
        charge,
        max_decoded: state.config.max_decompressed_bytes.min(limit),
        runtime: tokio::runtime::Handle::current(),
        metrics: state.metrics.clone(),
    };
    let probe = body.wire.len() <= ingest::SMALL_BODY && encoding != ContentEncoding::Identity;
    // The semaphores are never closed, so acquiring only waits.
    let slot = ingest::lane(state, body.wire.len())
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| RelayError::Internal)?;
    let first = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut body = body;
        if !probe {
            return body.decode_and(work).map(FirstStep::Done);
        }
        let decoded = ingest::decode_small_charged(
            body.encoding,
            &body.wire,
            body.max_decoded,
            &mut body.charge,
            &body.runtime,
        )?;
        Ok(match decoded {
            Some(decoded) => FirstStep::Done(body.finish(decoded, work)?),
            None => FirstStep::Relane(body, work),
        })
    })
    .await
    .map_err(|_| RelayError::Internal)??;
    match first {
        FirstStep::Done(result) => Ok(result),
        // The small-lane slot is already given back.
        FirstStep::Relane(body, work) => ingest::in_large_lane(state, move || body.decode_and(work)).await,
    }
}

/// A body read for one of these routes, with what decoding it needs on a blocking thread.
struct Body {
    encoding: ContentEncoding,
    wire: Bytes,
    /// The memory budget held for the body, then for its decoded bytes while `work` runs.
    charge: Charge,
    max_decoded: usize,
    /// To wait for budget from the blocking thread.
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
}

impl Body {
    /// Decodes the body under its real cap and runs `work` on it.
    fn decode_and<T>(mut self, work: impl FnOnce(Bytes) -> Result<T, RelayError>) -> Result<T, RelayError> {
        // Moved out, so the wire bytes are freed when their charge is given back.
        let wire = std::mem::take(&mut self.wire);
        let decoded = ingest::decode_body(self.encoding, wire, self.max_decoded, &mut self.charge, &self.runtime)?;
        self.finish(decoded, work)
    }

    fn finish<T>(self, decoded: Bytes, work: impl FnOnce(Bytes) -> Result<T, RelayError>) -> Result<T, RelayError> {
        self.metrics.received_decompressed_bytes().inc_by(decoded.len() as u64);
        drop(self.wire);
        // The decoded body stays charged while `work` turns it into what is queued.
        let result = work(decoded);
        drop(self.charge);
        result
    }
}

/// How the small lane's decode of a body ended.
enum FirstStep<T, W> {
    Done(T),
    /// The body decodes past [`ingest::SMALL_DECODED`]: to be decoded again in the large lane.
    Relane(Body, W),
}

/// Scrubs an envelope a route built from its body, counted as ingest counts envelopes: items received and kept, by
/// type, and the pipeline's report. What comes back may have no items left (nothing to forward).
pub(crate) fn scrub_envelope(
    envelope: Envelope,
    rules: &CompiledRules,
    metrics: &Metrics,
    project_id: u64,
) -> Envelope {
    for item in &envelope.items {
        metrics.item_received(item.ty()).inc();
    }
    let options = ProcessOptions {
        project_id: Some(project_id),
        ..ProcessOptions::default()
    };
    let started = std::time::Instant::now();
    let processed = pipeline::process(envelope, rules, &options);
    metrics.scrub_duration.observe(started.elapsed().as_secs_f64());
    ingest::record_report(metrics, &processed.report);
    for item in &processed.envelope.items {
        metrics.item_forwarded(item.ty()).inc();
    }
    processed.envelope
}

/// A job for `identity` from this request.
fn job(state: &AppState, parts: &Parts, identity: Identity, body: Bytes, destination: Destination) -> Job {
    let send_client_ip = state.rules().engine(Some(identity.project_id)).send_default_pii;
    Job {
        project_id: identity.project_id,
        public_key: identity.public_key,
        sentry_client: identity.client,
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        forwarded_for: send_client_ip
            .then(|| parts.extensions.get::<ClientAddr>().map(|a| a.0))
            .flatten(),
        envelope: body,
        encoded: None,
        received_at: SystemTime::now(),
        destination,
    }
}

/// What a client hears when every item it sent is rate limited (envelopes only: other destinations' routes decide
/// about rate limits before reading the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenLimited {
    /// 429 with the limits in force, as for envelopes.
    Refuse,
    /// The route's usual answer: Sentry never answers a check-in with 429 (the limited one is dropped and counted).
    Accept,
}

/// Queues what a route kept of a request (`None`: nothing left to forward) for `destination`, and answers: `accepted`
/// once queued or when there was nothing to queue, 503 when the queue and spool are full. Envelopes go through
/// ingest's rate-limit check first.
pub(crate) async fn queue(
    state: &AppState,
    parts: &Parts,
    identity: Identity,
    body: Option<Bytes>,
    destination: Destination,
    accepted: Response<Full<Bytes>>,
    when_limited: WhenLimited,
) -> Result<Response<Full<Bytes>>, RelayError> {
    let Some(body) = body else {
        return Ok(accepted);
    };
    let job = job(state, parts, identity, body, destination);
    let job = if destination == Destination::Envelope {
        match ingest::deliver(state, job)? {
            Delivery::Queued(job) => job,
            Delivery::RateLimited(limited) => {
                return Ok(match when_limited {
                    WhenLimited::Refuse => ingest::rate_limited(limited),
                    WhenLimited::Accept => accepted,
                });
            }
        }
    } else {
        job
    };
    state.metrics.envelopes_received.inc();
    match state.delivery.submit(job).await {
        Ok(()) => Ok(accepted),
        Err(rejected) => Ok(ingest::overloaded(state, rejected)),
    }
}

/// An answer with a status and an empty JSON object.
pub(crate) fn empty_json(status: StatusCode) -> Response<Full<Bytes>> {
    crate::server::json(status, &serde_json::json!({}))
}
