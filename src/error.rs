//! The HTTP-boundary error: every way a request to the relay can fail, mapped to a status code in one place.
//!
//! Messages name the cause, never a value from the request (no header values, no payload bytes), because they are
//! returned to the client in `{"detail": ...}` and `X-Sentry-Error` and may be logged.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::envelope::EnvelopeError;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("missing authorization information")]
    MissingAuth,
    #[error("multiple authorization payloads requested")]
    MultipleAuth,
    #[error("invalid authorization: {0}")]
    InvalidAuth(&'static str),
    #[error("client requested unsupported protocol version ({0})")]
    UnsupportedProtocolVersion(u64),
    #[error("invalid dsn in envelope header: {0}")]
    InvalidDsn(&'static str),
    #[error("dsn in envelope header does not match the request's {0}")]
    DsnMismatch(&'static str),
    #[error("public key is not allowed")]
    KeyNotAllowed,
    #[error("project is not allowed")]
    ProjectNotAllowed,
    #[error("dsn host is not an allowed tunnel destination")]
    TunnelHostNotAllowed,
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("decompressed body exceeds the limit of {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("{item_type} item of {size} bytes exceeds the limit of {limit} bytes")]
    ItemTooLarge {
        item_type: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("unsupported content encoding")]
    UnsupportedEncoding,
    #[error("unsupported content type")]
    UnsupportedContentType,
    #[error("invalid OTLP request: {0}")]
    InvalidOtlp(#[from] crate::otlp::OtlpError),
    #[error("invalid security report: {0}")]
    InvalidReport(&'static str),
    #[error("invalid check-in: {0}")]
    InvalidCheckIn(&'static str),
    #[error("invalid compressed body")]
    InvalidCompression(#[source] std::io::Error),
    #[error("could not read the request body")]
    BodyRead,
    #[error("timed out reading the request body")]
    BodyTimeout,
    #[error("empty request body")]
    EmptyBody,
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(#[from] EnvelopeError),
    #[error("invalid event: {0}")]
    InvalidEvent(&'static str),
    #[error(transparent)]
    Crashpad(#[from] crate::crashpad::CrashpadError),
    #[error("unreal crash reports cannot be scrubbed by this relay")]
    UnrealUnsupported,
    #[error("upstream rate limit in effect")]
    RateLimited,
    #[error("upstream request failed")]
    UpstreamUnavailable,
    #[error("upstream request timed out")]
    UpstreamTimeout,
    #[error("the relay is at capacity")]
    Overloaded,
    #[error("the relay's memory budget is exhausted; retry later")]
    MemoryBudget,
    #[error("this client holds its share of the relay's memory; retry later")]
    ClientBudget,
    #[error("timed out reading the request body: below the minimum data rate")]
    BodyTooSlow,
    #[error("the relay is shutting down")]
    ShuttingDown,
    #[error("internal error")]
    Internal,
}

impl RelayError {
    /// The HTTP status for this error. This is the only place statuses are chosen.
    pub fn status(&self) -> StatusCode {
        use RelayError::*;
        match self {
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            // Sentry Relay answers 401 for every "who are you" failure, including two competing auth sources.
            MissingAuth | MultipleAuth | InvalidAuth(_) => StatusCode::UNAUTHORIZED,
            // A version we do not speak, or a dsn that contradicts the request, is a malformed request, not an
            // authentication failure (Relay: `UnsupportedProtocolVersion`, `BadEnvelopeAuth`).
            UnsupportedProtocolVersion(_) | InvalidDsn(_) | DsnMismatch(_) => StatusCode::BAD_REQUEST,
            // The operator's allowlists refuse a caller we could identify.
            KeyNotAllowed | ProjectNotAllowed | TunnelHostNotAllowed => StatusCode::FORBIDDEN,
            BodyTooLarge { .. } | DecompressedTooLarge { .. } | ItemTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedEncoding | UnsupportedContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            // The relay cannot open an Unreal container to scrub it, and will not forward it raw.
            UnrealUnsupported => StatusCode::NOT_IMPLEMENTED,
            InvalidCompression(_)
            | BodyRead
            | EmptyBody
            | InvalidEnvelope(_)
            | InvalidEvent(_)
            | InvalidOtlp(_)
            | InvalidReport(_)
            | InvalidCheckIn(_)
            | Crashpad(_) => StatusCode::BAD_REQUEST,
            BodyTimeout | BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            // SDKs back off on 503; both mean "try again later".
            Overloaded | ShuttingDown | MemoryBudget | ClientBudget => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A bounded label for `request_errors_total{reason=...}`.
    pub fn kind(&self) -> &'static str {
        use RelayError::*;
        match self {
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            MissingAuth => "missing_auth",
            MultipleAuth => "multiple_auth",
            InvalidAuth(_) => "invalid_auth",
            UnsupportedProtocolVersion(_) => "unsupported_version",
            InvalidDsn(_) => "invalid_dsn",
            DsnMismatch(_) => "dsn_mismatch",
            KeyNotAllowed => "key_not_allowed",
            ProjectNotAllowed => "project_not_allowed",
            TunnelHostNotAllowed => "tunnel_host_not_allowed",
            BodyTooLarge { .. } => "body_too_large",
            DecompressedTooLarge { .. } => "decompressed_too_large",
            ItemTooLarge { .. } => "item_too_large",
            UnsupportedEncoding => "unsupported_encoding",
            UnsupportedContentType => "unsupported_content_type",
            InvalidOtlp(_) => "invalid_otlp",
            InvalidReport(_) => "invalid_report",
            InvalidCheckIn(_) => "invalid_check_in",
            InvalidCompression(_) => "invalid_compression",
            BodyRead => "body_read",
            BodyTimeout => "body_timeout",
            EmptyBody => "empty_body",
            InvalidEnvelope(_) => "invalid_envelope",
            InvalidEvent(_) => "invalid_event",
            Crashpad(error) => error.kind(),
            UnrealUnsupported => "unreal_unsupported",
            RateLimited => "rate_limited",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            Overloaded => "overloaded",
            MemoryBudget => "memory_budget",
            ClientBudget => "client_budget",
            BodyTooSlow => "body_too_slow",
            ShuttingDown => "shutting_down",
            Internal => "internal",
        }
    }

    /// The JSON answer: `{"detail": "..."}` with the same text in `X-Sentry-Error`. Server errors are logged loudly,
    /// client errors quietly; neither log line carries request data.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let detail = detail_with_causes(&self);
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), kind = self.kind(), error = %detail, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), kind = self.kind(), error = %detail, "request refused");
        }
        let mut response = json_error(status, &detail);
        if matches!(self, RelayError::MemoryBudget | RelayError::ClientBudget) {
            // Memory frees up as requests in flight finish: a second is a fair wait, and SDKs honour it.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<crate::budget::Exhausted> for RelayError {
    fn from(exhausted: crate::budget::Exhausted) -> RelayError {
        use crate::budget::Exhausted;
        match exhausted {
            Exhausted::Relay => RelayError::MemoryBudget,
            Exhausted::Client => RelayError::ClientBudget,
            // Waiting cannot help: the request is larger than the memory the relay (or one client) may use.
            Exhausted::TooLarge { limit } => RelayError::BodyTooLarge { limit },
        }
    }
}

/// `{"detail": detail}` with `X-Sentry-Error: detail`, for any status.
pub fn json_error(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "detail": detail }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Our messages are ASCII without control characters; fall back to no header rather than fail the answer.
    if let Ok(value) = HeaderValue::from_str(detail) {
        headers.insert("x-sentry-error", value);
    }
    response
}

/// The error's message followed by its sources, like Relay renders `BadStoreRequest` chains.
fn detail_with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // `#[from]` variants already include their cause in the message.
        if !detail.ends_with(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
    }
    detail.retain(|c| !c.is_control());
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_answers_json_with_detail_and_header() {
        let response = RelayError::UnsupportedProtocolVersion(8).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()["x-sentry-error"],
            "client requested unsupported protocol version (8)",
            "X-Sentry-Error carries the detail"
        );
    }

    #[test]
    fn envelope_errors_keep_their_message() {
        let error = RelayError::from(EnvelopeError::InvalidHeader);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            detail_with_causes(&error),
            "invalid envelope: envelope header is not a JSON object"
        );
    }

    #[test]
    fn compression_errors_render_their_cause() {
        let error = RelayError::InvalidCompression(std::io::Error::other("corrupt deflate stream"));
        assert_eq!(
            detail_with_causes(&error),
            "invalid compressed body: corrupt deflate stream"
        );
    }
}
