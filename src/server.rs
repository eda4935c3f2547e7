//! The accept loop and request routing: connections in, one hyper service per connection, graceful drain out.
//!
//! [`run`] takes an already-bound listener and a shutdown future (style §2), so the binary passes SIGTERM and tests
//! pass a oneshot on port 0. Each connection is served by hyper-util's auto builder (HTTP/1.1 with keep-alive and
//! chunked bodies, or HTTP/2 when the client opens with the h2 preface). A semaphore bounds open connections; when
//! it is exhausted new clients wait in the kernel's backlog instead of costing memory here.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::admin::AdminRoute;
use crate::config::Config;
use crate::delivery::{Delivery, DeliveryConfig};
use crate::dsn::HostPattern;
use crate::error::RelayError;
use crate::ingest::{self, Endpoint};
use crate::metrics::Metrics;
use crate::rules::CompiledRules;
use crate::shutdown::Readiness;
use crate::upstream::Upstream;

/// Connections accepted beyond `max_connections` while the relay is saturated. They are served health, readiness and
/// metrics (so probes and Prometheus still get through) and a 503 for ingest, then closed.
const OVERFLOW_CONNECTIONS: usize = 64;

/// The TCP peer of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

/// Everything a request handler needs. Shared as `Arc<AppState>`.
pub struct AppState {
    pub config: Config,
    /// The rules in force. Handlers clone the inner `Arc` once per request, so a reload (which swaps it under the
    /// write lock) never blocks or changes a request already being processed.
    pub rules: RwLock<Arc<CompiledRules>>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    /// The delivery queue, spool and rate limits: ingest hands every scrubbed envelope to it.
    pub delivery: Delivery,
    pub readiness: Readiness,
    /// `config.effective_tunnel_hosts()`, computed once.
    pub tunnel_hosts: Vec<HostPattern>,
    /// Bounds how many bodies are decoded and scrubbed at once. The work is CPU-bound, so more jobs than cores add
    /// no throughput, and each may hold up to `max_decompressed_bytes`: without this bound a burst of large bodies
    /// could claim one blocking thread and one decompressed buffer each. Requests over the bound wait their turn.
    /// This is the lane of small bodies (`ingest::SMALL_BODY`); larger ones take `processing_large`, so a few huge
    /// bodies never hold every slot while small envelopes wait.
    pub processing: Arc<Semaphore>,
    /// The processing lane of bodies larger than `ingest::SMALL_BODY`.
    pub processing_large: Arc<Semaphore>,
    /// The memory budget every request's buffers are charged to.
    pub budget: Arc<crate::budget::Budget>,
    /// Open connections per client address, for `max_client_connections`.
    pub client_connections: ClientConnections,
}

/// The relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] crate::upstream::BuildError),
    #[error("cannot use the spool directory {path}: {source}")]
    Spool {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl AppState {
    /// Validates the config and builds the shared state. Starts the delivery workers (and replays the spool), so it
    /// must be called inside the Tokio runtime.
    pub fn new(config: Config, rules: CompiledRules, metrics: Arc<Metrics>) -> Result<Arc<AppState>, StartError> {
        config.validate()?;
        let upstream = Upstream::new(&config, metrics.clone())?;
        let spool = config
            .spool_dir
            .as_ref()
            .map(|dir| dir.display().to_string())
            .unwrap_or_default();
        let delivery = Delivery::start(
            DeliveryConfig::from(&config),
            Arc::new(upstream.clone()),
            metrics.clone(),
        )
        .map_err(|source| StartError::Spool { path: spool, source })?;
        let readiness = Readiness::new(metrics.clone());
        let tunnel_hosts = config.effective_tunnel_hosts();
        let budget = crate::budget::Budget::new(
            config.memory_budget(),
            config.client_budget(),
            config.memory_wait,
            Some(metrics.clone()),
        );
        let (small_slots, large_slots) = processing_slots();
        Ok(Arc::new(AppState {
            config,
            rules: RwLock::new(Arc::new(rules)),
            metrics,
            upstream,
            delivery,
            readiness,
            tunnel_hosts,
            processing: Arc::new(Semaphore::new(small_slots)),
            processing_large: Arc::new(Semaphore::new(large_slots)),
            budget,
            client_connections: ClientConnections::default(),
        }))
    }

    /// Ready for traffic: serving, not shutting down, and the delivery queue (and spool) can take more.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready() && !self.delivery.is_full()
    }

    /// The rules in force right now.
    pub fn rules(&self) -> Arc<CompiledRules> {
        // A poisoned lock only means a writer panicked between two plain assignments; the value is still whole.
        self.rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Swaps in new rules; requests already running keep the ones they started with.
    pub fn replace_rules(&self, rules: Arc<CompiledRules>) {
        *self.rules.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = rules;
    }
}

/// The slots of the two processing lanes. Small bodies: twice the cores, so one slot can decode while another waits
/// on memory. Large bodies: half the cores (at least one), so huge bodies and compression bombs decoding at once
/// leave the other half of the CPU to small envelopes (measured in `benches/attack.py`'s bombs).
fn processing_slots() -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (cores * 2, (cores / 2).max(1))
}

/// Open connections per client (TCP peer) address.
#[derive(Default)]
pub struct ClientConnections(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

/// One open connection of a client; counted down when dropped.
pub struct ClientConnection {
    state: Arc<AppState>,
    ip: IpAddr,
}

impl ClientConnections {
    /// Connections open from `ip` right now.
    pub fn count(&self, ip: IpAddr) -> usize {
        let open = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }

    /// Counts a new connection from `ip`, or `None` when that address already has `cap` open (0: no cap).
    fn open(state: &Arc<AppState>, ip: IpAddr) -> Option<ClientConnection> {
        let cap = state.config.max_client_connections;
        let mut open = state
            .client_connections
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_insert(0);
        if cap != 0 && *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientConnection {
            state: state.clone(),
            ip,
        })
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut open = self
            .state
            .client_connections
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The client address of a request: the trusted load balancer's header when one is configured (the last
/// `X-Forwarded-For` entry, the one the balancer appended; earlier entries are whatever the client sent), else the
/// TCP peer.
fn client_addr(config: &Config, headers: &http::HeaderMap, peer: IpAddr) -> IpAddr {
    let Some(name) = &config.client_ip_header else {
        return peer;
    };
    headers
        .get_all(name)
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(|last| parse_ip(last.trim()))
        .unwrap_or(peer)
}

/// An address as proxies write it: bare, `[v6]`, or with a port.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets in-flight requests finish within
/// `config.shutdown_timeout`, and returns.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let connections_limit = Arc::new(Semaphore::new(state.config.max_connections));
    let overflow_limit = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .keep_alive(true);
    // HTTP/2 has no header-read timeout that closes idle connections; pings find dead peers instead.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, upstream = %state.config.upstream, "listening");
    }
    state.readiness.set(true);
    tokio::pin!(shutdown);
    loop {
        // A free connection slot, else (while saturated) an overflow slot that serves only the operator routes.
        let (permit, overflow) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = connections_limit.clone().acquire_owned() => match permit {
                Ok(permit) => (permit, false),
                Err(_) => break, // the semaphores are never closed
            },
            permit = overflow_limit.clone().acquire_owned() => match permit {
                Ok(permit) => (permit, true),
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning on a failing accept.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(client_connection) = ClientConnections::open(&state, peer.ip()) else {
            // Closing at once costs the client a reconnect and us nothing; the address is not logged (it is the
            // client's), the metric says it happened.
            state
                .metrics
                .connections_refused
                .with_label_values(&["client_connections"])
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let state = state.clone();
        let builder = builder.clone();
        let mut drain = drain_rx.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _client_connection = client_connection;
            let service = service_fn(move |mut request: Request<Incoming>| {
                let client = client_addr(&state.config, request.headers(), peer.ip());
                request.extensions_mut().insert(ClientAddr(client));
                let state = state.clone();
                async move {
                    if overflow {
                        Ok::<_, Infallible>(handle_overflow(&state, request).await)
                    } else {
                        Ok::<_, Infallible>(handle(&state, request).await)
                    }
                }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => log_connection_end(result),
                () = async { drop(drain.wait_for(|draining| *draining).await) } => {
                    // Finish the requests in flight, refuse new ones on this connection, then close.
                    connection.as_mut().graceful_shutdown();
                    log_connection_end(connection.await);
                }
            }
        });
    }

    state.readiness.set(false);
    drop(listener);
    let _ = drain_tx.send(true);
    let in_flight = connections.len();
    let grace = state.config.shutdown_timeout;
    let shutdown_started = Instant::now();
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    match drained {
        Ok(()) => tracing::info!(connections = in_flight, "drained; stopped"),
        Err(_) => {
            tracing::warn!(
                remaining = connections.len(),
                grace_seconds = grace.as_secs_f64(),
                "drain timed out; closing"
            );
            connections.shutdown().await;
        }
    }
    // No request can submit anymore: flush the delivery queue in what is left of the grace period, then spool the rest.
    state
        .delivery
        .clone()
        .shutdown(grace.saturating_sub(shutdown_started.elapsed()))
        .await;
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        // Clients that vanish mid-request are routine; nothing here carries request data.
        tracing::debug!(error = %error, "connection ended with an error");
    }
}

/// Dispatches one request and records its metrics.
pub async fn handle(state: &Arc<AppState>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let route = Route::of(state, request.method(), request.uri().path());
    let endpoint = route.endpoint_label();
    let mut response = match route {
        Route::Admin(admin) => crate::admin::respond(admin, &state.metrics, state.is_ready()),
        Route::Preflight => empty(StatusCode::OK),
        Route::Ingest(endpoint, project_id) => match ingest::handle(state, request, endpoint, project_id).await {
            Ok(response) => response,
            Err(error) => {
                state.metrics.request_errors.with_label_values(&[error.kind()]).inc();
                error.into_response()
            }
        },
        Route::Other(kind, project_id) => match crate::routes::handle(state, request, kind, project_id).await {
            Ok(response) => response,
            Err(error) => reject(state, error),
        },
        Route::WrongMethod => reject(state, RelayError::MethodNotAllowed),
        Route::NotFound => reject(state, RelayError::NotFound),
    };
    if route.wants_cors() {
        add_cors(response.headers_mut());
    }
    state
        .metrics
        .count_request(endpoint, response.status(), started.elapsed().as_secs_f64());
    response
}

/// A request on an overflow connection (accepted while every connection slot was taken): operator routes are
/// served as usual; anything else gets 503 with `Retry-After` and the connection is closed after the answer.
async fn handle_overflow(state: &Arc<AppState>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if AdminRoute::from_path(request.uri().path()).is_some() {
        return handle(state, request).await;
    }
    let route = Route::of(state, request.method(), request.uri().path());
    state
        .metrics
        .connections_refused
        .with_label_values(&["saturated"])
        .inc();
    let mut response = reject(state, RelayError::Overloaded);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if route.wants_cors() {
        add_cors(response.headers_mut());
    }
    state
        .metrics
        .requests
        .with_label_values(&[route.endpoint_label(), response.status().as_str()])
        .inc();
    response
}

fn reject(state: &AppState, error: RelayError) -> Response<Full<Bytes>> {
    state.metrics.request_errors.with_label_values(&[error.kind()]).inc();
    error.into_response()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Metrics and health checks, also served here so a single-port deployment needs nothing else.
    Admin(AdminRoute),
    /// `OPTIONS` on an ingest path: a browser's CORS preflight.
    Preflight,
    Ingest(Endpoint, Option<u64>),
    /// Security reports, NEL, OTLP and cron check-ins (`crate::routes`).
    Other(crate::routes::Kind, u64),
    WrongMethod,
    NotFound,
}

impl Route {
    fn of(state: &AppState, method: &Method, path: &str) -> Route {
        if let Some(admin) = AdminRoute::from_path(path) {
            let get = method == Method::GET || method == Method::HEAD;
            return if get { Route::Admin(admin) } else { Route::WrongMethod };
        }
        let ingest = if path == state.config.tunnel_path || path.strip_suffix('/') == Some(&state.config.tunnel_path) {
            Some(Route::Ingest(Endpoint::Tunnel, None))
        } else {
            api_route(path)
        };
        match ingest {
            Some(Route::Other(kind, project_id)) if kind.allows(method) => Route::Other(kind, project_id),
            Some(route @ Route::Ingest(..)) if method == Method::POST => route,
            Some(_) if method == Method::OPTIONS => Route::Preflight,
            Some(_) => Route::WrongMethod,
            None => Route::NotFound,
        }
    }

    fn endpoint_label(self) -> &'static str {
        match self {
            Route::Admin(admin) => admin.endpoint_label(),
            Route::Ingest(endpoint, _) => endpoint.as_str(),
            Route::Other(kind, _) => kind.as_str(),
            Route::Preflight | Route::WrongMethod | Route::NotFound => "other",
        }
    }

    fn wants_cors(self) -> bool {
        matches!(
            self,
            Route::Preflight | Route::Ingest(..) | Route::Other(..) | Route::WrongMethod
        )
    }
}

/// `/api/<project_id>/envelope/` and `/api/<project_id>/store/`, trailing slash optional, and the other routes of
/// `crate::routes`.
fn api_route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/api/")?;
    let (project, endpoint) = rest.split_once('/')?;
    let project_id = crate::dsn::parse_project_id(project)?;
    let endpoint = match endpoint.trim_end_matches('/') {
        "envelope" => Endpoint::Envelope,
        "store" => Endpoint::Store,
        "minidump" => Endpoint::Minidump,
        rest if rest
            .strip_prefix("unreal/")
            .is_some_and(|key| !key.is_empty() && !key.contains('/')) =>
        {
            Endpoint::Unreal
        }
        _ => return crate::routes::Kind::from_path(endpoint).map(|kind| Route::Other(kind, project_id)),
    };
    Some(Route::Ingest(endpoint, Some(project_id)))
}

/// CORS for browser SDKs (protocol.md): any origin, POST, the headers SDKs send, and the headers they read back.
fn add_cors(headers: &mut http::HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "x-sentry-auth, x-requested-with, origin, accept, content-type, content-encoding, authorization, \
             sentry-trace, baggage",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-sentry-error, x-sentry-rate-limits, retry-after"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("3600"));
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    json_bytes(status, Bytes::from(value.to_string()))
}

/// [`json`] for a body already written as JSON.
pub fn json_bytes(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
