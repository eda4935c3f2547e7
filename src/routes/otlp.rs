//! OTLP/HTTP: `POST /api/<id>/integration/otlp/v1/traces` and `/v1/logs`, as OpenTelemetry SDKs and Collectors
//! send them (`x-sentry-auth: sentry sentry_key=...`).
//!
//! `application/x-protobuf` or `application/json`, anything else 415 (Sentry refuses `application/protobuf` too);
//! often gzip, which ingest's decoders handle under Relay's 12 MiB container limit. The body is scrubbed by
//! [`crate::otlp::process`] and queued, in its encoding, for the upstream's same OTLP path. The answer is 202 with an
//! empty export response in the request's encoding. Traces answer 429 while the upstream limits the project's spans;
//! logs ignore rate limits, as Sentry's route does.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{WhenLimited, content_type, identify, queue, with_body};
use crate::auth;
use crate::delivery::{DataCategory, Destination, RateLimited};
use crate::error::RelayError;
use crate::ingest;
use crate::otlp::{self, Encoding, Signal};
use crate::server::AppState;

/// Relay's container limit, which its OTLP routes use.
const MAX_OTLP_BYTES: usize = 12 * 1024 * 1024;

pub async fn handle(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    signal: Signal,
    project_id: u64,
) -> Result<Response<Full<Bytes>>, RelayError> {
    let (parts, body) = request.into_parts();
    let request_auth = auth::from_request(&parts.headers, parts.uri.query())?;
    let encoding = Encoding::from_content_type(&content_type(&parts)).ok_or(RelayError::UnsupportedContentType)?;
    let identity = identify(state, request_auth, project_id)?;
    if signal == Signal::Traces {
        // Refused before the body is read, as envelopes whose every item is limited are.
        let now = tokio::time::Instant::now();
        let limits = state.delivery.rate_limits();
        if let Some(until) = limits.limited_until(project_id, Some(DataCategory::Span), now) {
            let retry_after_secs = until.saturating_duration_since(now).as_secs_f64().ceil() as u64;
            state
                .metrics
                .items_dropped
                .with_label_values(&[signal.item_type().as_str(), "rate_limited"])
                .inc();
            return Ok(ingest::rate_limited(RateLimited {
                retry_after_secs: retry_after_secs.max(1),
                header: limits.active_header(project_id, now).unwrap_or_default(),
            }));
        }
    }
    let rules = state.rules();
    let metrics = state.metrics.clone();
    let scrubbed = with_body(state, &parts, body, MAX_OTLP_BYTES, move |body| {
        let started = std::time::Instant::now();
        let processed = otlp::process(signal, encoding, body, &rules, project_id)?;
        metrics.scrub_duration.observe(started.elapsed().as_secs_f64());
        let label = [signal.item_type().as_str()];
        metrics
            .items_received
            .with_label_values(&label)
            .inc_by(processed.received);
        metrics
            .items_forwarded
            .with_label_values(&label)
            .inc_by(processed.forwarded);
        ingest::record_report(&metrics, &processed.report);
        Ok(processed.body)
    })
    .await?;
    let destination = match signal {
        Signal::Traces => Destination::OtlpTraces(encoding),
        Signal::Logs => Destination::OtlpLogs(encoding),
    };
    // Nothing left to send (an empty request, or only health-check spans) is answered as accepted too: the exporter
    // did nothing wrong. Traces' rate limits were checked before the body was read.
    queue(
        state,
        &parts,
        identity,
        scrubbed,
        destination,
        accepted(encoding),
        WhenLimited::Refuse,
    )
    .await
}

/// 202 with an empty export response (`{}` in JSON, no bytes in protobuf): a full success to every exporter.
fn accepted(encoding: Encoding) -> Response<Full<Bytes>> {
    let body = match encoding {
        Encoding::Protobuf => Bytes::new(),
        Encoding::Json => Bytes::from_static(b"{}"),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    response
}
