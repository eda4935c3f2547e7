//! The ingest endpoints: `/api/<id>/envelope/`, the legacy `/api/<id>/store/`, and the JavaScript tunnel.
//!
//! One path for all three: check request auth and `Content-Encoding` (cheap refusals first), read the body under the
//! wire cap, then on a blocking thread decode under the decompressed cap, parse (or wrap a store event into an
//! envelope), resolve who sent it, apply the allowlists and per-item size limits, and run the scrubbing pipeline.
//! What survives goes to [`deliver`], the single hand-off to the upstream, and the SDK gets the answer.
//!
//! Per-item size limits (Sentry Relay's defaults): an `event`/`transaction` (or other event-like item) over 1 MiB
//! refuses the whole envelope with 413, as Sentry does, because the SDK's main payload cannot be delivered. Any other
//! item over its limit (log 2 MiB, span 10 MiB, check-in 100 KiB, attachment 200 MiB, unknown types 10 MiB, ...) is
//! dropped alone and counted in `items_dropped_total{reason="too_large"}`, so one oversized attachment does not cost
//! the error it belongs to.
//!
//! Memory: the body is read into a buffer that grows in steps charged to the relay's memory budget
//! (`crate::budget`), under a minimum data rate; decoding and processing charge the same budget. A request that
//! cannot get budget within `--memory-wait` gets 503 with `Retry-After`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::auth::{self, AuthSource, Identity, RequestAuth};
use crate::budget::{Charge, Exhausted};
use crate::config::UpstreamEncoding;
use crate::crashpad;
use crate::decode::{self, ContentEncoding, DecodeError};
use crate::delivery::{Job, RateLimited, Rejected};
use crate::envelope::{Envelope, Item, ItemType};
use crate::error::RelayError;
use crate::metrics::Metrics;
use crate::pipeline::{self, ProcessOptions, Report};
use crate::rules::CompiledRules;
use crate::server::{AppState, ClientAddr};
use crate::upstream::Encoded;

/// Which ingest endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Envelope,
    Store,
    Tunnel,
    /// Crashpad's `/api/<id>/minidump/` upload (see [`crate::crashpad`]).
    Minidump,
    /// `/api/<id>/unreal/<key>/`: refused, see [`handle`].
    Unreal,
}

impl Endpoint {
    /// The `endpoint` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Envelope => "envelope",
            Endpoint::Store => "store",
            Endpoint::Tunnel => "tunnel",
            Endpoint::Minidump => "minidump",
            Endpoint::Unreal => "unreal",
        }
    }
}

/// Handles one ingest request end to end.
pub async fn handle(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    endpoint: Endpoint,
    path_project: Option<u64>,
) -> Result<Response<Full<Bytes>>, RelayError> {
    if endpoint == Endpoint::Unreal {
        // An Unreal crash container holds the user name, account ids, logs and a minidump, and this relay cannot open
        // and re-encode it: refused before its body is read, never forwarded raw.
        return Err(RelayError::UnrealUnsupported);
    }
    let (parts, body) = request.into_parts();
    let request_auth = auth::from_request(&parts.headers, parts.uri.query())?;
    let encoding = content_encoding(&parts.headers)?;
    let client = parts.extensions.get::<ClientAddr>().map(|addr| addr.0);
    let (wire, charge) = read_body(state, &parts.headers, body, client, state.config.max_body_bytes).await?;

    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let small = wire.len() <= SMALL_BODY;
    let input = Prepare {
        endpoint,
        content_type,
        path_project,
        request_auth,
        encoding,
        wire,
        charge,
        runtime: tokio::runtime::Handle::current(),
        max_decompressed: state.config.max_decompressed_bytes,
        upstream_encoding: state.config.upstream_encoding,
        rules: state.rules(),
        metrics: state.metrics.clone(),
        // Payloads inside items (replay recordings, minidumps) may be bombs too: in the small lane they inflate only
        // as far as its cap, and the envelope moves to the large lane when one needs more.
        inflate_cap: small.then_some(SMALL_DECODED),
        counted: false,
    };

    // Scrubbing inline runs on the runtime threads the delivery workers need too. While workers that have nothing to
    // do have not been polled yet, ingest lets them run first; while envelopes still pile up in the queue (every
    // worker busy, perhaps on a response it has not been polled to read), they go to blocking threads, so the
    // workers keep their share of the CPU. Otherwise ingest outruns delivery until the queue is full (SDKs get 503).
    state.delivery.wait_for_idle_workers().await;
    let inline = state.delivery.keeps_up();
    // The semaphores are never closed, so acquiring only waits.
    let slot = lane(state, input.wire.len())
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| RelayError::Internal)?;
    let decoded = if inline { decode_inline(&input)? } else { None };
    let step = match decoded {
        Some(decoded) => {
            let _slot = slot;
            prepare(input, Bytes::from(decoded), |identity| {
                authorize(state, endpoint, identity)
            })?
        }
        None => {
            // A compressed body small on the wire may be a bomb: it is decoded in the small lane only as far as
            // `SMALL_DECODED`, so bombs cannot hold every small-lane slot while they decompress or wait for memory.
            let probe = small && input.encoding != ContentEncoding::Identity;
            let blocking_state = state.clone();
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let mut input = input;
                if !probe {
                    return decode_and_prepare(&blocking_state, input, endpoint);
                }
                match decode_small(&mut input)? {
                    Some(decoded) => prepare(input, decoded, |identity| {
                        authorize(&blocking_state, endpoint, identity)
                    }),
                    None => Ok(Step::Relane(input)),
                }
            })
            .await
            .map_err(|_| RelayError::Internal)??
        }
    };
    let prepared = match step {
        Step::Prepared(prepared) => prepared,
        Step::Relane(mut input) => {
            // The small-lane slot is already given back; the body is decoded for real in the large lane.
            input.inflate_cap = None;
            let blocking_state = state.clone();
            match in_large_lane(state, move || decode_and_prepare(&blocking_state, input, endpoint)).await? {
                Step::Prepared(prepared) => prepared,
                // Without an inflate cap nothing asks for another lane.
                Step::Relane(_) => return Err(RelayError::Internal),
            }
        }
    };

    // The request's memory stays charged until the envelope is queued (the queue has its own byte cap).
    let _memory = prepared.charge;
    state.metrics.envelopes_received.inc();
    let event_id = prepared.event_id;
    let Some(envelope) = prepared.envelope else {
        // Everything was filtered (health checks, static assets): nothing to send, and the SDK did nothing wrong.
        state
            .metrics
            .envelopes_dropped
            .with_label_values(&["empty_after_filter"])
            .inc();
        return Ok(accepted(endpoint, event_id.as_deref(), None));
    };
    let project_id = prepared.identity.project_id;
    let job = Job {
        project_id,
        public_key: prepared.identity.public_key,
        sentry_client: prepared.identity.client,
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        forwarded_for: prepared
            .send_client_ip
            .then(|| parts.extensions.get::<ClientAddr>().map(|a| a.0))
            .flatten(),
        envelope,
        encoded: prepared.encoded,
        received_at: SystemTime::now(),
        destination: crate::delivery::Destination::Envelope,
    };
    match deliver(state, job)? {
        Delivery::Queued(job) => match state.delivery.submit(job).await {
            Ok(()) => {
                tracing::debug!(project_id, endpoint = endpoint.as_str(), "envelope accepted");
                let limits = state
                    .delivery
                    .rate_limits()
                    .active_header(project_id, tokio::time::Instant::now());
                Ok(accepted(endpoint, event_id.as_deref(), limits.as_deref()))
            }
            Err(rejected) => {
                tracing::debug!(
                    project_id,
                    endpoint = endpoint.as_str(),
                    "delivery queue full; envelope refused"
                );
                Ok(overloaded(state, rejected))
            }
        },
        Delivery::RateLimited(_) if endpoint == Endpoint::Minidump => {
            // Like Relay: never 429 on the crashpad route, because crash handlers retry these uploads.
            state
                .metrics
                .envelopes_dropped
                .with_label_values(&["rate_limited"])
                .inc();
            Ok(accepted(endpoint, event_id.as_deref(), None))
        }
        Delivery::RateLimited(limited) => {
            tracing::debug!(
                project_id,
                endpoint = endpoint.as_str(),
                "every item rate limited; envelope refused"
            );
            Ok(rate_limited(limited))
        }
    }
}

/// The operator's policy for an identified sender: tunnel hosts (when the dsn is what identifies it), then the key
/// and project allowlists.
pub(crate) fn authorize(state: &AppState, endpoint: Endpoint, identity: &Identity) -> Result<(), RelayError> {
    if endpoint == Endpoint::Tunnel || identity.source == AuthSource::EnvelopeDsn {
        let host = identity
            .dsn
            .as_ref()
            .map(|dsn| dsn.host.as_str())
            .ok_or(RelayError::MissingAuth)?;
        if !state.tunnel_hosts.iter().any(|pattern| pattern.matches(host)) {
            return Err(RelayError::TunnelHostNotAllowed);
        }
    }
    auth::check_allowed(identity, &state.config.allowed_keys, &state.config.allowed_projects)
}

/// What [`deliver`] decided for an envelope.
pub enum Delivery {
    /// To be queued for the upstream (what is left of it after rate limits).
    Queued(Job),
    /// Every item is rate limited: the SDK gets 429 and nothing is queued.
    RateLimited(RateLimited),
}

/// The single hand-off from ingest to delivery. The SDK is answered once the envelope is queued (or, while the
/// upstream is failing, on disk); it never waits for the upstream (see `crate::delivery`). Rate limits the upstream
/// announced are applied first: limited items are dropped, and an envelope with nothing left is refused with 429.
pub fn deliver(state: &AppState, mut job: Job) -> Result<Delivery, RelayError> {
    if !state
        .delivery
        .rate_limits()
        .has_limits(job.project_id, tokio::time::Instant::now())
    {
        return Ok(Delivery::Queued(job));
    }
    let mut envelope = Envelope::parse(job.envelope.clone())?;
    let items_before = envelope.items.len();
    if let Err(limited) = state.delivery.enforce_rate_limits(job.project_id, &mut envelope) {
        return Ok(Delivery::RateLimited(limited));
    }
    if envelope.items.len() != items_before {
        job.envelope = envelope.to_bytes();
        job.encoded = None;
    }
    Ok(Delivery::Queued(job))
}

/// 200 `{"id": ...}`, telling the SDK about any rate limits in force for its project, as Sentry does. The crashpad
/// route answers `text/plain` with the hyphenated event id instead, which is what crash handlers read.
fn accepted(endpoint: Endpoint, event_id: Option<&str>, rate_limits: Option<&str>) -> Response<Full<Bytes>> {
    if endpoint == Endpoint::Minidump {
        let body = event_id.map(crashpad::hyphenated).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return response;
    }
    // Written straight into one buffer, not built as a `serde_json::Value` (a map and its entries) and then printed.
    let body = match event_id {
        Some(id) => {
            let mut body = Vec::with_capacity(id.len() + 10);
            body.extend_from_slice(b"{\"id\":");
            // A string always serializes, and writing into a Vec cannot fail.
            serde_json::to_writer(&mut body, id).expect("a string serializes into a Vec");
            body.push(b'}');
            Bytes::from(body)
        }
        None => Bytes::from_static(b"{}"),
    };
    let mut response = crate::server::json_bytes(StatusCode::OK, body);
    if let Some(value) = rate_limits.and_then(|limits| HeaderValue::from_str(limits).ok()) {
        response
            .headers_mut()
            .insert(crate::upstream::X_SENTRY_RATE_LIMITS, value);
    }
    response
}

/// 429 with `Retry-After` and `X-Sentry-Rate-Limits`, which SDKs obey.
pub(crate) fn rate_limited(limited: RateLimited) -> Response<Full<Bytes>> {
    let mut response = RelayError::RateLimited.into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(limited.retry_after_secs));
    if let Ok(value) = HeaderValue::from_str(&limited.header) {
        headers.insert(crate::upstream::X_SENTRY_RATE_LIMITS, value);
    }
    response
}

/// 503 with `Retry-After`: the delivery queue and spool are full (or the relay is stopping).
pub(crate) fn overloaded(state: &AppState, rejected: Rejected) -> Response<Full<Bytes>> {
    let error = match rejected {
        Rejected::Full { .. } => RelayError::Overloaded,
        Rejected::ShuttingDown { .. } => RelayError::ShuttingDown,
    };
    state.metrics.request_errors.with_label_values(&[error.kind()]).inc();
    state.metrics.envelopes_dropped.with_label_values(&["overloaded"]).inc();
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(rejected.retry_after_secs()));
    response
}

/// All `Content-Encoding` lines, read as one list.
pub(crate) fn content_encoding(headers: &HeaderMap) -> Result<ContentEncoding, RelayError> {
    let mut found = ContentEncoding::Identity;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let encoding = ContentEncoding::parse(value.as_bytes()).map_err(|_| RelayError::UnsupportedEncoding)?;
        if encoding != ContentEncoding::Identity {
            if found != ContentEncoding::Identity {
                return Err(RelayError::UnsupportedEncoding);
            }
            found = encoding;
        }
    }
    Ok(found)
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Bodies up to this size (as received) take the small-body processing lane.
pub const SMALL_BODY: usize = 256 * 1024;

/// A compressed body in the small-body lane is decoded there up to this size; a larger one (a compression bomb, or
/// just a big envelope that compresses well) gives its slot back and is decoded in the large-body lane. Small enough
/// that decoding this much holds a small-lane slot for milliseconds at most, large enough for any usual SDK envelope.
pub const SMALL_DECODED: usize = 1024 * 1024;

/// Reads a request body under the wire cap (`Content-Length` first, then as it streams in, since chunked bodies have
/// no length), the body timeout and the minimum data rate, charging the memory budget as its buffer grows. Every
/// ingest route reads its body here, under `max` (the wire cap, or a route's own smaller limit); the returned
/// [`Charge`] holds the body's memory until it is dropped.
pub async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
    client: Option<std::net::IpAddr>,
    max: usize,
) -> Result<(Bytes, Charge), RelayError> {
    let declared = content_length(headers);
    if declared.is_some_and(|length| length > max as u64) {
        return Err(RelayError::BodyTooLarge { limit: max });
    }
    let mut charge = state.budget.charge(client);
    let limits = BodyLimits {
        max,
        declared: declared.and_then(|length| usize::try_from(length).ok()),
        timeout: state.config.body_timeout,
        min_rate: state.config.min_body_rate,
        grace: state.config.min_rate_grace,
    };
    let wire = match collect_body(body, &limits, &mut charge).await {
        Ok(wire) => wire,
        Err(error) => {
            if matches!(error, RelayError::BodyTooSlow) {
                state
                    .metrics
                    .connections_refused
                    .with_label_values(&["slow_body"])
                    .inc();
            }
            return Err(error);
        }
    };
    state.metrics.received_wire_bytes().inc_by(wire.len() as u64);
    Ok((wire, charge))
}

/// What [`collect_body`] enforces.
struct BodyLimits {
    max: usize,
    declared: Option<usize>,
    timeout: std::time::Duration,
    /// Bytes per second after `grace`; 0: no minimum.
    min_rate: usize,
    grace: std::time::Duration,
}

/// The first body buffer (bodies with a smaller `Content-Length` get exactly that); later steps double it.
const FIRST_BODY_STEP: usize = 16 * 1024;

async fn collect_body(mut body: Incoming, limits: &BodyLimits, charge: &mut Charge) -> Result<Bytes, RelayError> {
    let started = tokio::time::Instant::now();
    let deadline = started + limits.timeout;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        // The next frame must come before the body timeout and before the average rate drops under the minimum.
        let mut next = deadline;
        if limits.min_rate > 0 {
            let allowed = limits.grace.as_secs_f64() + (buffer.len() + 1) as f64 / limits.min_rate as f64;
            next = next.min(started + std::time::Duration::from_secs_f64(allowed.min(1e9)));
        }
        let frame = match tokio::time::timeout_at(next, body.frame()).await {
            Err(_) if next < deadline => return Err(RelayError::BodyTooSlow),
            Err(_) => return Err(RelayError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(RelayError::BodyRead),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing we use
        };
        let needed = buffer.len() + data.len();
        if needed > limits.max {
            return Err(RelayError::BodyTooLarge { limit: limits.max });
        }
        if needed > buffer.capacity() {
            // Grow in steps charged to the budget: a declared length is trusted only as far as bytes arrive.
            let mut target = needed.max(buffer.capacity() * 2).max(FIRST_BODY_STEP).min(limits.max);
            if let Some(declared) = limits.declared.filter(|&declared| declared >= needed) {
                target = target.min(declared);
            }
            charge.grow(target - buffer.capacity()).await?;
            buffer.reserve_exact(target - buffer.len());
        }
        buffer.extend_from_slice(&data);
    }
    Ok(Bytes::from(buffer))
}

/// Decodes a body under `max` bytes on a blocking thread, the output growing in steps charged to `charge` (waiting
/// for budget through `runtime`); the wire bytes' charge is given back once they are freed. Identity bodies are the
/// result as they are, with no second copy.
pub(crate) fn decode_body(
    encoding: ContentEncoding,
    wire: Bytes,
    max: usize,
    charge: &mut Charge,
    runtime: &tokio::runtime::Handle,
) -> Result<Bytes, RelayError> {
    match encoding {
        ContentEncoding::Identity if wire.len() > max => Err(RelayError::DecompressedTooLarge { limit: max }),
        ContentEncoding::Identity => Ok(wire),
        _ => {
            let mut refusal = None;
            let decoded = decode::decode_charged(encoding, &wire, max, &mut |bytes| {
                charge
                    .grow_blocking(bytes, runtime)
                    .map_err(|exhausted| refusal = Some(exhausted))
                    .is_ok()
            });
            let decoded = match decoded {
                Ok(decoded) => decoded,
                Err(DecodeError::TooLarge { limit }) => return Err(RelayError::DecompressedTooLarge { limit }),
                Err(DecodeError::Invalid(source)) => return Err(RelayError::InvalidCompression(source)),
                Err(DecodeError::OverBudget) => {
                    return Err(match refusal {
                        Some(Exhausted::TooLarge { limit }) => RelayError::DecompressedTooLarge { limit },
                        Some(exhausted) => exhausted.into(),
                        None => RelayError::MemoryBudget,
                    });
                }
            };
            let wire_bytes = wire.len();
            drop(wire);
            charge.shrink(wire_bytes);
            Ok(Bytes::from(decoded))
        }
    }
}

/// The processing lane for a body of `wire_len` bytes: small bodies have their own, so a few huge ones cannot keep
/// every slot busy while small envelopes wait. A compressed body in the small lane is decoded there only up to
/// [`SMALL_DECODED`]; larger, it moves to the large lane (see [`decode_small`]).
pub(crate) fn lane(state: &AppState, wire_len: usize) -> &Arc<tokio::sync::Semaphore> {
    if wire_len <= SMALL_BODY {
        &state.processing
    } else {
        &state.processing_large
    }
}

/// Runs `work` (a decode that outgrew the small lane, done again for real) on a blocking thread holding a large-lane
/// slot, and counts the lane change. The small-lane slot must already be given back.
pub(crate) async fn in_large_lane<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> Result<T, RelayError> + Send + 'static,
) -> Result<T, RelayError> {
    state.metrics.lane_changes.inc();
    // The semaphores are never closed, so acquiring only waits.
    let slot = state
        .processing_large
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| RelayError::Internal)?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    })
    .await
    .map_err(|_| RelayError::Internal)?
}

/// Everything the blocking half of a request needs.
struct Prepare {
    endpoint: Endpoint,
    /// The request's `Content-Type` (the crashpad route reads it).
    content_type: Option<String>,
    path_project: Option<u64>,
    request_auth: Option<RequestAuth>,
    encoding: ContentEncoding,
    wire: Bytes,
    /// The memory budget held for this request: the body now, the decoded buffer and the scrubbed copy later.
    charge: Charge,
    /// To wait for budget from the blocking thread.
    runtime: tokio::runtime::Handle,
    max_decompressed: usize,
    upstream_encoding: UpstreamEncoding,
    rules: Arc<CompiledRules>,
    metrics: Arc<Metrics>,
    /// What a payload inside an item may inflate to here (`ProcessOptions::inflate_cap`): set in the small lane.
    inflate_cap: Option<usize>,
    /// The body's bytes and items are already counted (by a pass in the small lane that handed it on).
    counted: bool,
}

struct Prepared {
    identity: Identity,
    /// The scrubbed envelope, serialized; `None` when no item is left to send.
    envelope: Option<Bytes>,
    /// The same, encoded for the upstream (see [`encode_for_upstream`]).
    encoded: Option<Encoded>,
    event_id: Option<String>,
    /// The project's rules allow sending the client IP upstream.
    send_client_ip: bool,
    /// Held until the envelope is queued (the queue has its own byte cap).
    charge: Charge,
}

/// Envelopes up to this size (decompressed) are decoded and scrubbed on the runtime thread that read them. A typical
/// SDK envelope (2-10 KiB) takes tens of microseconds to scrub, less than the two thread switches of a hop to a
/// blocking thread and back, which were a fifth of the relay's CPU under load (issue #11). At the slowest measured
/// scrub rate (about 50 MB/s on PII-dense captures) this budget keeps a runtime thread busy for at most about
/// 0.3 ms, so other connections on it are not starved; anything larger goes to a blocking thread.
const INLINE_MAX_BYTES: usize = 16 * 1024;

/// Decodes a small body on the calling thread: `Some` when it decompresses within [`INLINE_MAX_BYTES`], `None` when
/// it is larger (the caller decodes it again on a blocking thread with the real cap, so at most the inline budget
/// of work is repeated). Errors other than size are final.
fn decode_inline(input: &Prepare) -> Result<Option<Vec<u8>>, RelayError> {
    if input.wire.len() > INLINE_MAX_BYTES {
        return Ok(None);
    }
    let cap = INLINE_MAX_BYTES.min(input.max_decompressed);
    first_step(
        decode::decode(input.encoding, &input.wire, cap).map_err(decode_error),
        cap,
        input.max_decompressed,
    )
}

/// Decodes a compressed small-lane body on a blocking thread, charged, under [`SMALL_DECODED`]: `Some` when it fits,
/// `None` when it is larger (its partial output's charge given back; the caller moves it to the large lane and
/// decodes it again with the real cap). Errors other than size are final.
fn decode_small(input: &mut Prepare) -> Result<Option<Bytes>, RelayError> {
    decode_small_charged(
        input.encoding,
        &input.wire,
        input.max_decompressed,
        &mut input.charge,
        &input.runtime,
    )
}

/// [`decode_small`] for any body decoded under `max` with its charge: the first step, under [`SMALL_DECODED`], of a
/// compressed body that came in the small lane.
pub(crate) fn decode_small_charged(
    encoding: ContentEncoding,
    wire: &Bytes,
    max: usize,
    charge: &mut Charge,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<Bytes>, RelayError> {
    let cap = SMALL_DECODED.min(max);
    let held = charge.bytes();
    let decoded = first_step(decode_body(encoding, wire.clone(), cap, charge, runtime), cap, max)?;
    if decoded.is_none() {
        let grown = charge.bytes().saturating_sub(held);
        charge.shrink(grown);
    }
    Ok(decoded)
}

/// The first step of a two-step decode, under `cap`: `Some` when the body fits, `None` when it is larger than `cap`
/// but the real cap `max` is higher (the caller decodes it again under `max`, so at most `cap` of work is repeated).
fn first_step<T>(decoded: Result<T, RelayError>, cap: usize, max: usize) -> Result<Option<T>, RelayError> {
    match decoded {
        Ok(decoded) => Ok(Some(decoded)),
        Err(RelayError::DecompressedTooLarge { limit }) if limit == cap && cap < max => Ok(None),
        Err(error) => Err(error),
    }
}

/// Decodes the body under the real decompressed cap and prepares it; on a blocking thread.
fn decode_and_prepare(state: &Arc<AppState>, mut input: Prepare, endpoint: Endpoint) -> Result<Step, RelayError> {
    // A reference to the wire bytes: `prepare` may forward them as they came when nothing changed.
    let wire = input.wire.clone();
    let decoded = decode_body(
        input.encoding,
        wire,
        input.max_decompressed,
        &mut input.charge,
        &input.runtime,
    )?;
    prepare(input, decoded, |identity| authorize(state, endpoint, identity))
}

/// What a pass in a lane ends with.
enum Step {
    Prepared(Prepared),
    /// In the small lane, the body or a payload inside an item inflates past [`SMALL_DECODED`]: to be decoded again
    /// in the large lane.
    Relane(Prepare),
}

/// Decodes a small body under the decompressed cap, uncharged (the legacy store body's base64 payload).
fn decode_plain(encoding: ContentEncoding, wire: &[u8], max_decompressed: usize) -> Result<Vec<u8>, RelayError> {
    decode::decode(encoding, wire, max_decompressed).map_err(decode_error)
}

fn decode_error(error: DecodeError) -> RelayError {
    match error {
        DecodeError::TooLarge { limit } => RelayError::DecompressedTooLarge { limit },
        DecodeError::Invalid(source) => RelayError::InvalidCompression(source),
        DecodeError::OverBudget => RelayError::MemoryBudget,
    }
}

/// Parse → identify → limit → scrub, on the decoded body. CPU-bound: it runs inline for small envelopes
/// ([`INLINE_MAX_BYTES`]) and on a blocking thread for the rest. In the small lane, an item's payload that inflates
/// past its cap ends the pass with [`Step::Relane`], before the scrub is counted.
fn prepare(
    input: Prepare,
    decoded: Bytes,
    authorize: impl FnOnce(&Identity) -> Result<(), RelayError>,
) -> Result<Step, RelayError> {
    let Prepare {
        endpoint,
        content_type,
        path_project,
        request_auth,
        encoding,
        wire,
        mut charge,
        runtime,
        max_decompressed,
        upstream_encoding,
        rules,
        metrics,
        inflate_cap,
        counted,
    } = input;
    if !counted {
        metrics.received_decompressed_bytes().inc_by(decoded.len() as u64);
    }
    if decoded.iter().all(u8::is_ascii_whitespace) {
        return Err(RelayError::EmptyBody);
    }
    // What this pass hands on if it moves the body to the large lane.
    let relane = |request_auth, charge: Charge| {
        let mut charge: Charge = charge;
        // Back to the body alone: the large lane decodes it again, charged as it grows.
        charge.shrink(charge.bytes().saturating_sub(wire.len()));
        Step::Relane(Prepare {
            endpoint,
            content_type: content_type.clone(),
            path_project,
            request_auth,
            encoding,
            wire: wire.clone(),
            charge,
            runtime: runtime.clone(),
            max_decompressed,
            upstream_encoding,
            rules: rules.clone(),
            metrics: metrics.clone(),
            inflate_cap: None,
            counted: true,
        })
    };
    let kept_auth = inflate_cap.is_some().then(|| request_auth.clone()).flatten();
    // The decoded body is kept (a reference, not a copy) to tell whether scrubbing changed anything.
    let (mut envelope, original) = match endpoint {
        Endpoint::Store => (store_envelope(decoded, max_decompressed)?, None),
        Endpoint::Envelope | Endpoint::Tunnel => {
            let original = decoded;
            (Envelope::parse(original.clone())?, Some(original))
        }
        Endpoint::Minidump => {
            let cap = inflate_cap.unwrap_or(usize::MAX);
            match crashpad::envelope_within(decoded, content_type.as_deref(), new_event_id, cap) {
                Err(crashpad::CrashpadError::PastInflateCap) => return Ok(relane(kept_auth, charge)),
                built => (built?, None),
            }
        }
        Endpoint::Unreal => return Err(RelayError::UnrealUnsupported),
    };
    if endpoint == Endpoint::Tunnel && envelope.dsn().is_none() {
        // The tunnel has no other way to say who is sending.
        return Err(RelayError::MissingAuth);
    }
    let mut identity = auth::resolve(request_auth, path_project, envelope.dsn())?;
    authorize(&identity)?;
    if identity.client.is_none() {
        // Tunnels carry no sentry_client; the envelope's `sdk` header names the same thing.
        identity.client = sdk_client(&envelope);
    }
    let event_id = envelope.event_id().and_then(normalize_event_id);

    if !counted {
        for item in &envelope.items {
            metrics.item_received(item.ty()).inc();
        }
    }
    enforce_item_limits(&mut envelope, (!counted).then_some(&*metrics))?;

    // The scrubbed copy the pipeline writes is at most about the size of what it reads.
    let processing_bytes: usize = envelope.items.iter().map(|item| item.payload().len()).sum();
    charge.grow_blocking(processing_bytes, &runtime)?;

    let started = Instant::now();
    let options = ProcessOptions {
        project_id: Some(identity.project_id),
        explain: false,
        inflate_cap,
        ..ProcessOptions::default()
    };
    let processed = pipeline::process(envelope, &rules, &options);
    if processed.report.past_inflate_cap {
        return Ok(relane(kept_auth, charge));
    }
    metrics.scrub_duration.observe(started.elapsed().as_secs_f64());
    record_report(&metrics, &processed.report);
    let envelope = processed.envelope;
    for item in &envelope.items {
        metrics.item_forwarded(item.ty()).inc();
    }
    let envelope = (!envelope.items.is_empty()).then(|| envelope.to_bytes());
    let encoded = envelope
        .as_ref()
        .and_then(|scrubbed| encode_for_upstream(upstream_encoding, encoding, &wire, original.as_deref(), scrubbed));
    let send_client_ip = rules.engine(Some(identity.project_id)).send_default_pii;
    Ok(Step::Prepared(Prepared {
        identity,
        envelope,
        encoded,
        event_id,
        send_client_ip,
        charge,
    }))
}

/// The forwarded envelope encoded for the upstream, on the thread that scrubbed it (while its bytes are in cache).
///
/// When the envelope the relay would send is byte for byte what the SDK's body decoded to (nothing was scrubbed,
/// dropped or re-serialized differently) and the SDK sent it as a single gzip member, as the upstream wants it, the
/// SDK's own compressed bytes are forwarded: the upstream decodes exactly the bytes that were checked here, and the
/// relay spends nothing on compression. The gzip trailer's length (ISIZE) must equal the decoded length, so a body
/// of several gzip members is recompressed instead of being left to the upstream's decoder.
fn encode_for_upstream(
    upstream: UpstreamEncoding,
    sent: ContentEncoding,
    wire: &Bytes,
    decoded: Option<&[u8]>,
    scrubbed: &Bytes,
) -> Option<Encoded> {
    let unchanged = decoded == Some(&scrubbed[..]);
    if unchanged && upstream == UpstreamEncoding::Gzip && sent == ContentEncoding::Gzip {
        let trailer_length = wire
            .len()
            .checked_sub(4)
            .and_then(|at| wire.get(at..))
            .and_then(|tail| <[u8; 4]>::try_from(tail).ok())
            .map(u32::from_le_bytes);
        // ISIZE is the length modulo 2^32.
        if trailer_length == Some(scrubbed.len() as u32) {
            return Some(Encoded {
                encoding: upstream,
                body: wire.clone(),
            });
        }
    }
    Encoded::compress(upstream, scrubbed)
}

/// Counts what the pipeline did: redactions by rule, truncations by field, dropped items by type and reason, dropped
/// spans, and items that took the tree walk.
pub(crate) fn record_report(metrics: &Metrics, report: &Report) {
    let redactions = if report.dry_run {
        &metrics.dry_run_redactions
    } else {
        &metrics.redactions
    };
    for (rule, count) in &report.redactions {
        redactions.with_label_values(&[rule.as_str()]).inc_by(*count);
    }
    for (field, count) in &report.truncations {
        metrics.truncations.with_label_values(&[field.as_str()]).inc_by(*count);
    }
    for (item_type, reason) in &report.dropped {
        metrics
            .items_dropped
            .with_label_values(&[item_type.as_str(), reason.as_str()])
            .inc();
    }
    for ((format, outcome), count) in &report.payloads {
        metrics
            .payloads
            .with_label_values(&[format.as_str(), outcome.as_str()])
            .inc_by(*count);
    }
    metrics.spans_dropped.inc_by(report.dropped_spans);
    metrics.items_tree_walked.inc_by(report.tree_walked_items);
    for (outcome, count) in &report.minidumps {
        metrics.minidumps.with_label_values(&[outcome]).inc_by(*count);
    }
}

/// Per-item limits, Sentry Relay's defaults (`Limits::default`): `(limit, refuse_whole_envelope)`. Relay refuses
/// the whole envelope for any violation; here only the SDK's main payload does, and any other oversized item is
/// dropped alone so it does not cost the error it came with. Unknown types get the span container's 10 MiB: enough
/// for a type Sentry adds later, and no unbounded item.
fn item_limit(ty: ItemType) -> Option<(usize, bool)> {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    let limit = match ty {
        ItemType::Event | ItemType::Transaction | ItemType::Feedback | ItemType::UserReport => (MIB, true),
        ItemType::Log => (2 * MIB, false),
        ItemType::ReplayEvent | ItemType::TraceMetric | ItemType::Statsd => (MIB, false),
        ItemType::Span | ItemType::ReplayRecording | ItemType::ReplayVideo => (10 * MIB, false),
        ItemType::Session | ItemType::Sessions => (10 * MIB, false),
        ItemType::CheckIn | ItemType::ClientReport => (100 * KIB, false),
        ItemType::Attachment => (200 * MIB, false),
        ItemType::Profile | ItemType::ProfileChunk => (50 * MIB, false),
        // Relay's limit for security reports.
        ItemType::RawSecurity | ItemType::Nel => (MIB, false),
        ItemType::Other => (10 * MIB, false),
    };
    Some(limit)
}

/// Refuses the envelope for an oversized event-like item and drops other oversized items, counting them in
/// `metrics` when given (not when a pass before this one already did).
pub(crate) fn enforce_item_limits(envelope: &mut Envelope, metrics: Option<&Metrics>) -> Result<(), RelayError> {
    for item in &envelope.items {
        if let Some((limit, true)) = item_limit(item.ty()) {
            if item.payload().len() > limit {
                return Err(RelayError::ItemTooLarge {
                    item_type: item.ty().as_str(),
                    size: item.payload().len(),
                    limit,
                });
            }
        }
    }
    envelope.items.retain(|item| match item_limit(item.ty()) {
        Some((limit, false)) if item.payload().len() > limit => {
            if let Some(metrics) = metrics {
                metrics
                    .items_dropped
                    .with_label_values(&[item.ty().as_str(), "too_large"])
                    .inc();
            }
            false
        }
        _ => true,
    });
    Ok(())
}

/// Wraps a legacy store body (JSON, or base64 of zlib-compressed JSON as old SDKs send it) into an envelope with one
/// `event` (or `transaction`) item.
fn store_envelope(body: Bytes, max_decompressed: usize) -> Result<Envelope, RelayError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(0);
    let json = if body[start..].starts_with(b"{") {
        body
    } else {
        let compressed =
            decode::base64_decode(&body).ok_or(RelayError::InvalidEvent("body is neither JSON nor base64"))?;
        let encoding = match ContentEncoding::sniff(&compressed) {
            ContentEncoding::Identity => ContentEncoding::Identity,
            _ => ContentEncoding::Deflate,
        };
        Bytes::from(decode_plain(encoding, &compressed, max_decompressed)?)
    };
    // Checked before parsing: a store body becomes a whole `Value` tree, the costliest shape there is.
    let (limit, _) = item_limit(ItemType::Event).unwrap_or((json.len(), true));
    if json.len() > limit {
        return Err(RelayError::ItemTooLarge {
            item_type: ItemType::Event.as_str(),
            size: json.len(),
            limit,
        });
    }
    let event: Map<String, Value> = match serde_json::from_slice(&json) {
        Ok(Value::Object(event)) => event,
        Ok(_) => return Err(RelayError::InvalidEvent("not a JSON object")),
        Err(_) => return Err(RelayError::InvalidEvent("not valid JSON")),
    };
    let event_id = event
        .get("event_id")
        .and_then(Value::as_str)
        .and_then(normalize_event_id)
        .unwrap_or_else(new_event_id);
    let ty = if event.get("type").and_then(Value::as_str) == Some("transaction") {
        "transaction"
    } else {
        "event"
    };
    let mut headers = Map::new();
    headers.insert("event_id".into(), Value::String(event_id));
    let mut envelope = Envelope::new(headers);
    let mut item = Item::new(ty, json);
    item.headers_mut()
        .insert("content_type".into(), Value::String("application/json".into()));
    envelope.items.push(item);
    Ok(envelope)
}

/// `name/version` from the envelope header's `sdk` object, when it is a safe token.
pub(crate) fn sdk_client(envelope: &Envelope) -> Option<String> {
    let sdk = envelope.headers.get("sdk")?;
    let (name, version) = (sdk.get("name")?.as_str()?, sdk.get("version")?.as_str()?);
    auth::safe_client(&format!("{name}/{version}"))
}

/// A 32-hex event id (Rust SDKs hyphenate theirs); anything else is not echoed back.
pub fn normalize_event_id(id: &str) -> Option<String> {
    // One pass over the bytes into one allocation (collecting chars, checking and lowercasing in three passes and
    // two allocations was 2 k instructions per envelope, issue #11). A byte of a multi-byte character is never a hex
    // digit, so non-ASCII ids are refused as before.
    let mut hex = String::with_capacity(32);
    for byte in id.bytes().filter(|&b| b != b'-') {
        if hex.len() == 32 || !byte.is_ascii_hexdigit() {
            return None;
        }
        hex.push(char::from(byte.to_ascii_lowercase()));
    }
    (hex.len() == 32).then_some(hex)
}

/// A random version-4 UUID in Sentry's 32-hex form.
pub(crate) fn new_event_id() -> String {
    let mut bits = fastrand::u128(..);
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    format!("{bits:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    async fn reply(response: Response<Full<Bytes>>) -> (Option<String>, String) {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    /// The reply is written by hand: byte for byte what serde_json printed for `{"id": ...}` before.
    #[tokio::test]
    async fn accepted_reply_is_the_event_id_as_json() {
        let json = Some("application/json".to_owned());
        for id in ["9ec79c33ec9942ab8353589fcb2e04dc", "quote \" and \\ backslash"] {
            let expected = serde_json::json!({ "id": id }).to_string();
            assert_eq!(
                reply(accepted(Endpoint::Envelope, Some(id), None)).await,
                (json.clone(), expected)
            );
        }
        assert_eq!(
            reply(accepted(Endpoint::Store, None, None)).await,
            (json, "{}".to_owned())
        );
        let limited = accepted(Endpoint::Envelope, Some("ab"), Some("60:error:project"));
        assert_eq!(limited.headers()["x-sentry-rate-limits"], "60:error:project");
    }

    #[test]
    fn event_ids() {
        assert_eq!(
            normalize_event_id("8e582431-b8f0-4e90-b432-de3a419a34f3").as_deref(),
            Some("8e582431b8f04e90b432de3a419a34f3")
        );
        assert_eq!(normalize_event_id("jane.doe@example.com"), None, "only ids are echoed");
        let id = new_event_id();
        assert_eq!(normalize_event_id(&id), Some(id.clone()));
        assert_eq!(&id[12..13], "4");
    }

    /// The one-pass normalization answers what collecting, checking and lowercasing did.
    #[test]
    fn event_ids_normalize_as_before() {
        fn before(id: &str) -> Option<String> {
            let hex: String = id.chars().filter(|&c| c != '-').collect();
            (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
        }
        let hex = "8E582431b8f04e90B432de3a419a34f3";
        let cases = [
            hex.to_owned(),
            format!("{hex}0"),
            hex[1..].to_owned(),
            format!("-{hex}-"),
            "8e582431-b8f0-4e90-b432-de3a419a34f3".to_owned(),
            "8e582431-b8f0-4e90-b432-de3a419a34fé".to_owned(),
            "8e582431b8f04e90b432de3a419a34fé".to_owned(),
            "8e582431b8f04e90b432de3a419a34g3".to_owned(),
            "-".repeat(40),
            String::new(),
            "é".repeat(16),
        ];
        for case in &cases {
            assert_eq!(normalize_event_id(case), before(case), "{case:?}");
        }
    }

    #[test]
    fn store_bodies_become_one_event_item() {
        let envelope = store_envelope(
            Bytes::from_static(br#"{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","message":"x"}"#),
            1 << 20,
        )
        .unwrap();
        assert_eq!(envelope.event_id(), Some("9ec79c33ec9942ab8353589fcb2e04dc"));
        assert_eq!(envelope.items.len(), 1);
        assert_eq!(envelope.items[0].ty(), ItemType::Event);

        let json = br#"{"type":"transaction","spans":[]}"#;
        let encoded = base64::engine::general_purpose::STANDARD.encode(decode::zlib(json));
        let envelope = store_envelope(Bytes::from(encoded.into_bytes()), 1 << 20).unwrap();
        assert_eq!(envelope.items[0].ty(), ItemType::Transaction);
        assert_eq!(&envelope.items[0].payload()[..], json);
        assert!(envelope.event_id().is_some(), "a missing event_id is generated");

        assert!(matches!(
            store_envelope(Bytes::from_static(b"[1,2]"), 1 << 20),
            Err(RelayError::InvalidEvent(_))
        ));
        assert!(matches!(
            store_envelope(Bytes::from_static(b"{\"a\":"), 1 << 20),
            Err(RelayError::InvalidEvent(_))
        ));
    }

    fn input(encoding: ContentEncoding, wire: Vec<u8>, max_decompressed: usize) -> Prepare {
        Prepare {
            endpoint: Endpoint::Envelope,
            content_type: None,
            path_project: Some(1),
            request_auth: None,
            encoding,
            wire: Bytes::from(wire),
            charge: crate::budget::Budget::new(1 << 30, 0, std::time::Duration::ZERO, None).charge(None),
            runtime: tokio::runtime::Handle::current(),
            max_decompressed,
            upstream_encoding: UpstreamEncoding::Gzip,
            rules: Arc::new(CompiledRules::defaults()),
            metrics: Arc::new(Metrics::new()),
            inflate_cap: None,
            counted: false,
        }
    }

    #[tokio::test]
    async fn small_bodies_are_decoded_inline_and_larger_ones_left_to_a_blocking_thread() {
        let small = b"{}\n{\"type\":\"event\"}\n{\"message\":\"x\"}\n".to_vec();
        let gzip = |data: &[u8]| crate::upstream::compress(crate::config::UpstreamEncoding::Gzip, data).unwrap();
        let decoded = decode_inline(&input(ContentEncoding::Gzip, gzip(&small), 1 << 20)).unwrap();
        assert_eq!(decoded.as_deref(), Some(&small[..]));
        let at_budget = vec![b' '; INLINE_MAX_BYTES];
        assert!(
            decode_inline(&input(ContentEncoding::Identity, at_budget.clone(), 1 << 20))
                .unwrap()
                .is_some()
        );

        // Small on the wire, over the inline budget once decompressed: decoded again off the runtime, in full.
        let big = vec![b' '; INLINE_MAX_BYTES + 1];
        let wire = gzip(&big);
        assert!(wire.len() < INLINE_MAX_BYTES);
        assert!(
            decode_inline(&input(ContentEncoding::Gzip, wire.clone(), 1 << 20))
                .unwrap()
                .is_none()
        );
        assert_eq!(decode_plain(ContentEncoding::Gzip, &wire, 1 << 20).unwrap(), big);
        let over_budget = vec![b' '; INLINE_MAX_BYTES + 1];
        assert!(
            decode_inline(&input(ContentEncoding::Identity, over_budget, 1 << 20))
                .unwrap()
                .is_none()
        );

        // Over the real cap while under the budget: refused at once, as the blocking path would.
        assert!(matches!(
            decode_inline(&input(ContentEncoding::Gzip, gzip(&at_budget), 1000)),
            Err(RelayError::DecompressedTooLarge { limit: 1000 })
        ));
        assert!(matches!(
            decode_inline(&input(ContentEncoding::Gzip, b"not gzip".to_vec(), 1 << 20)),
            Err(RelayError::InvalidCompression(_))
        ));
    }

    #[test]
    fn oversized_events_refuse_the_envelope_and_other_items_are_dropped() {
        let metrics = Metrics::new();
        let mut envelope = Envelope::new(Map::new());
        envelope
            .items
            .push(Item::new("event", Bytes::from(vec![b' '; 2 * 1024 * 1024])));
        assert!(matches!(
            enforce_item_limits(&mut envelope, Some(&metrics)),
            Err(RelayError::ItemTooLarge { .. })
        ));

        let mut envelope = Envelope::new(Map::new());
        envelope.items.push(Item::new("event", Bytes::from_static(b"{}")));
        envelope
            .items
            .push(Item::new("check_in", Bytes::from(vec![b' '; 200 * 1024])));
        enforce_item_limits(&mut envelope, Some(&metrics)).unwrap();
        assert_eq!(envelope.items.len(), 1);
        assert_eq!(
            metrics
                .items_dropped
                .with_label_values(&["check_in", "too_large"])
                .get(),
            1
        );
    }
}
