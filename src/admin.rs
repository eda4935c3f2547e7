//! The operator routes (`GET /metrics` and the health checks) and the optional second listener that serves only
//! them (`--metrics-listen`), so Prometheus and the kubelet can reach them on a port applications never see.
//!
//! Routes, the same on both listeners:
//! - `GET /metrics`: every metric in the Prometheus text format.
//! - `GET /healthz`, `GET /api/relay/healthcheck/live/`: liveness. 200 `{"is_healthy":true}` while the process
//!   serves HTTP, including while it drains.
//! - `GET /readyz`, `GET /api/relay/healthcheck/ready/`: readiness. 200 `{"is_healthy":true}`, or 503
//!   `{"is_healthy":false}` while shutting down or while the delivery queue and spool are full.
//!
//! The Sentry-Relay paths are there because tooling written for Sentry's own relay probes them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Liveness route (Kubernetes convention).
pub const LIVENESS_PATH: &str = "/healthz";
/// Readiness route (Kubernetes convention).
pub const READINESS_PATH: &str = "/readyz";
/// Liveness route as Sentry Relay spells it.
pub const SENTRY_LIVENESS_PATH: &str = "/api/relay/healthcheck/live/";
/// Readiness route as Sentry Relay spells it.
pub const SENTRY_READINESS_PATH: &str = "/api/relay/healthcheck/ready/";
/// The Prometheus scrape route.
pub const METRICS_PATH: &str = "/metrics";

/// The metrics listener answers a handful of scrapers and probes; more connections than this are refused rather
/// than allowed to pile up.
const MAX_CONNECTIONS: usize = 64;
/// A scraper or probe sends its request line at once; a connection that dawdles longer is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Which operator route a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRoute {
    Metrics,
    Liveness,
    Readiness,
}

impl AdminRoute {
    /// The operator route for `path`, if it is one.
    pub fn from_path(path: &str) -> Option<AdminRoute> {
        match path {
            METRICS_PATH => Some(AdminRoute::Metrics),
            LIVENESS_PATH | SENTRY_LIVENESS_PATH => Some(AdminRoute::Liveness),
            READINESS_PATH | SENTRY_READINESS_PATH => Some(AdminRoute::Readiness),
            _ => None,
        }
    }

    /// The `endpoint` label of `requests_total` for this route.
    pub fn endpoint_label(self) -> &'static str {
        match self {
            AdminRoute::Metrics => "metrics",
            AdminRoute::Liveness | AdminRoute::Readiness => "health",
        }
    }
}

/// Answers an operator route. `ready` is the relay's readiness at this instant.
pub fn respond(route: AdminRoute, metrics: &Metrics, ready: bool) -> Response<Full<Bytes>> {
    match route {
        AdminRoute::Metrics => {
            // Readiness also depends on the delivery queue filling and draining, which nothing signals; setting the
            // gauge at scrape time makes it agree with /readyz whenever Prometheus looks.
            metrics.ready.set(i64::from(ready));
            response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.encode(),
            )
        }
        AdminRoute::Liveness => health(true),
        AdminRoute::Readiness => health(ready),
    }
}

fn health(healthy: bool) -> Response<Full<Bytes>> {
    let (status, body) = match healthy {
        true => (StatusCode::OK, r#"{"is_healthy":true}"#),
        false => (StatusCode::SERVICE_UNAVAILABLE, r#"{"is_healthy":false}"#),
    };
    response(status, "application/json", body.to_owned())
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn status_only(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The metrics listener's whole request handling: operator routes for GET/HEAD, 405 for other methods on them,
/// 404 for everything else (in particular the ingest routes, which this port never serves).
pub fn handle<B>(request: &Request<B>, metrics: &Metrics, ready: bool) -> Response<Full<Bytes>> {
    let route = AdminRoute::from_path(request.uri().path());
    let response = match route {
        Some(route) if matches!(*request.method(), Method::GET | Method::HEAD) => respond(route, metrics, ready),
        Some(_) => status_only(StatusCode::METHOD_NOT_ALLOWED),
        None => status_only(StatusCode::NOT_FOUND),
    };
    let endpoint = route.map_or("other", AdminRoute::endpoint_label);
    metrics
        .requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    response
}

/// Serves the operator routes on `listener` until the process exits.
///
/// It takes no shutdown signal on purpose: during the drain the liveness probe must keep answering 200 and the
/// readiness probe 503, and the last scrape should still see the final counters. The task ends with the runtime.
/// `is_ready` is asked on every readiness request.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, is_ready: Arc<dyn Fn() -> bool + Send + Sync>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: log, back off a little, keep serving.
                tracing::warn!(error = %error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("metrics listener at its connection limit; closing a new connection");
            continue;
        };
        let metrics = metrics.clone();
        let is_ready = is_ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = handle(&request, &metrics, is_ready());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "metrics listener: connection ended with an error");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn routes_and_statuses() {
        let metrics = Metrics::new();
        assert_eq!(
            handle(&get("/healthz"), &metrics, false).status(),
            StatusCode::OK,
            "liveness ignores readiness"
        );
        assert_eq!(
            handle(&get(SENTRY_LIVENESS_PATH), &metrics, false).status(),
            StatusCode::OK
        );
        assert_eq!(handle(&get("/readyz"), &metrics, true).status(), StatusCode::OK);
        assert_eq!(
            handle(&get("/readyz"), &metrics, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            handle(&get(SENTRY_READINESS_PATH), &metrics, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            handle(&get("/api/1/envelope/"), &metrics, true).status(),
            StatusCode::NOT_FOUND
        );
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(handle(&post, &metrics, true).status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(metrics.requests.with_label_values(&["health", "503"]).get(), 2);
        assert_eq!(metrics.requests.with_label_values(&["other", "404"]).get(), 1);
    }

    #[test]
    fn metrics_route_serves_the_text_format() {
        let metrics = Metrics::new();
        let response = handle(&get("/metrics"), &metrics, true);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
}
