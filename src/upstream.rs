//! One POST of one scrubbed envelope to the configured upstream Sentry.
//!
//! The destination is always `<configured upstream>/api/<project_id>/envelope/`; nothing in a request can change
//! the host. Auth is rebuilt from the resolved identity (never copied from the client's headers), and the body is
//! compressed as configured. Retries, queueing and spooling are the caller's business: `send` makes one attempt and
//! reports what the upstream said, including `Retry-After` and `X-Sentry-Rate-Limits`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::Full;

use crate::config::{Config, UpstreamEncoding};
use crate::metrics::Metrics;

/// What to send: the uncompressed envelope and who it is from.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub project_id: u64,
    pub public_key: String,
    /// The SDK's `sentry_client`; `scrub-relay/<version>` when the SDK gave none.
    pub sentry_client: Option<String>,
    /// The SDK's `User-Agent`, kept so Sentry's SDK statistics stay right.
    pub user_agent: Option<HeaderValue>,
    /// The SDK's IP, sent as `X-Forwarded-For` so Sentry can resolve `{{auto}}` user IPs. Only set when the rules
    /// allow sending the client IP (`send_default_pii: true`); `None` keeps the client's address to ourselves.
    pub forwarded_for: Option<std::net::IpAddr>,
    /// The serialized, scrubbed envelope (or, for another destination, the scrubbed body).
    pub envelope: Bytes,
    /// The upstream route and content type.
    pub destination: crate::delivery::Destination,
    /// The envelope already encoded (see [`Encoded`]); used when its encoding is the configured one.
    pub encoded: Option<Encoded>,
}

/// An envelope encoded for the upstream ahead of sending: compressed on the thread that scrubbed it, or the SDK's
/// own compressed bytes when they decode to exactly the envelope the relay would send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub encoding: UpstreamEncoding,
    pub body: Bytes,
}

impl Encoded {
    /// Compresses `envelope` as `encoding` says. `None` if that fails (sending compresses again and reports it).
    pub fn compress(encoding: UpstreamEncoding, envelope: &Bytes) -> Option<Encoded> {
        let body = match encoding {
            // Nothing to do, and no copy either.
            UpstreamEncoding::Identity => envelope.clone(),
            _ => Bytes::from(compress(encoding, envelope).ok()?),
        };
        Some(Encoded { encoding, body })
    }
}

/// What the upstream answered. The body is kept (capped) so its `detail` can reach the SDK.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub retry_after: Option<HeaderValue>,
    pub rate_limits: Option<HeaderValue>,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl UpstreamResponse {
    /// What the relay keeps of an answer: its status, the headers delivery reads, and the (capped) body.
    fn new(status: StatusCode, headers: &HeaderMap, body: Vec<u8>) -> UpstreamResponse {
        let header = |name: &HeaderName| headers.get(name).cloned();
        UpstreamResponse {
            status,
            retry_after: header(&http::header::RETRY_AFTER),
            rate_limits: header(&X_SENTRY_RATE_LIMITS),
            content_type: header(&http::header::CONTENT_TYPE),
            body: Bytes::from(body),
        }
    }
}

/// A request that got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream request timed out")]
    Timeout,
    #[error("could not connect to the upstream")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("upstream request failed")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("could not compress the envelope")]
    Compress(#[source] std::io::Error),
}

impl UpstreamError {
    /// A bounded label for `upstream_requests_total{outcome=...}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Timeout => "timeout",
            UpstreamError::Connect(_) | UpstreamError::Request(_) => "network_error",
            UpstreamError::Compress(_) => "compress_error",
        }
    }
}

/// Header names, parsed once: a name given as a string is parsed and validated on every insert or lookup.
pub(crate) const X_SENTRY_RATE_LIMITS: HeaderName = HeaderName::from_static("x-sentry-rate-limits");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The largest upstream answer body we keep; Sentry's answers are a few dozen bytes.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Envelopes smaller than this are compressed on the calling task; larger ones on a blocking thread.
const INLINE_COMPRESS_LIMIT: usize = 64 * 1024;

/// The upstream client. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    client: Client,
    /// How long one attempt may take, connecting, sending and reading the answer.
    timeout: Duration,
    base: Arc<str>,
    /// Parsed request URLs by destination and project: a request clones one instead of formatting and parsing its
    /// URL (6.4 k instructions, about 0.6 % of the python event's requests; `benches/codec.rs`). Project ids come
    /// from requests, so the map is emptied when it reaches [`URL_CACHE_MAX`].
    urls: Arc<Mutex<HashMap<(crate::delivery::Destination, u64), http::Uri>>>,
    encoding: UpstreamEncoding,
    metrics: Arc<Metrics>,
}

/// How requests reach the upstream.
#[derive(Clone)]
enum Client {
    /// hyper-util's pooled client (the one reqwest is built on) over rustls, verifying certificates against the
    /// platform's roots as reqwest does. Per request it skips what reqwest adds around it and the relay does not use:
    /// the redirect layer (which parses the URL again even when redirects are off), the retry layer's copy of every
    /// request, a second header map: about 30 k instructions of the python event's 750 k, and 17 % more envelopes
    /// per relay CPU-second (benches/LOAD.md, tenth pass).
    Direct(Arc<hyper_util::client::legacy::Client<HttpsConnector, Full<Bytes>>>),
    /// reqwest, when `HTTP_PROXY`, `HTTPS_PROXY` or `ALL_PROXY` (less `NO_PROXY`) send the upstream through a proxy:
    /// it speaks to HTTP proxies and tunnels through them.
    Proxied(reqwest::Client),
}

type HttpsConnector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The HTTP client could not be built: TLS (no CA certificates to verify the upstream with) or reqwest's builder.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe_build_error(.0.as_ref()))]
pub struct BuildError(Box<dyn std::error::Error + Send + Sync>);

/// At most this many parsed URLs are kept (a few hundred KiB).
const URL_CACHE_MAX: usize = 1024;

impl Upstream {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Upstream, BuildError> {
        install_crypto_provider();
        let base: Arc<str> = config.upstream.as_str().trim_end_matches('/').into();
        let proxied = base
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| hyper_util::client::proxy::matcher::Matcher::from_env().intercept(&uri))
            .is_some();
        let client = if proxied {
            // Not the proxy's URL: it may carry a password.
            tracing::info!("the upstream is reached through the proxy the environment names (HTTP_PROXY and friends)");
            let client = reqwest::Client::builder()
                .connect_timeout(config.upstream_connect_timeout)
                .timeout(config.upstream_timeout)
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                // The upstream is configuration; a redirect would let the upstream pick another destination.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|error| BuildError(error.into()))?;
            Client::Proxied(client)
        } else {
            Client::Direct(Arc::new(direct_client(config)?))
        };
        Ok(Upstream {
            client,
            timeout: config.upstream_timeout,
            base,
            urls: Arc::default(),
            encoding: config.upstream_encoding,
            metrics,
        })
    }

    /// `<upstream>/api/<project_id>/envelope/`.
    pub fn envelope_url(&self, project_id: u64) -> String {
        self.url(crate::delivery::Destination::Envelope, project_id)
    }

    /// The configured upstream plus the destination's fixed path: never anything taken from a request but the
    /// validated project id.
    pub fn url(&self, destination: crate::delivery::Destination, project_id: u64) -> String {
        format!("{}{}", self.base, destination.path(project_id))
    }

    /// [`Upstream::url`], parsed; from the cache when it was asked for before. The text when it does not parse
    /// (the configured upstream is a valid URL, so it always does; the client then reports the error).
    fn request_url(&self, destination: crate::delivery::Destination, project_id: u64) -> Result<http::Uri, String> {
        let key = (destination, project_id);
        let cached = self
            .urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(url) = cached {
            return Ok(url);
        }
        let text = self.url(destination, project_id);
        let url = http::Uri::try_from(text.as_str()).map_err(|_| text)?;
        let mut urls = self.urls.lock().unwrap_or_else(PoisonError::into_inner);
        if urls.len() >= URL_CACHE_MAX {
            urls.clear();
        }
        urls.insert(key, url.clone());
        Ok(url)
    }

    /// One attempt. Any HTTP answer, 2xx or not, is `Ok`.
    pub async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let encoding = self.encoding;
        let uncompressed = request.envelope.len();
        let body = match request.encoded {
            Some(encoded) if encoded.encoding == encoding => encoded.body,
            _ if uncompressed <= INLINE_COMPRESS_LIMIT => {
                Bytes::from(compress(encoding, &request.envelope).map_err(UpstreamError::Compress)?)
            }
            _ => {
                let envelope = request.envelope.clone();
                let compressed = tokio::task::spawn_blocking(move || compress(encoding, &envelope))
                    .await
                    .map_err(|_| UpstreamError::Compress(std::io::Error::other("compression task failed")))?;
                Bytes::from(compressed.map_err(UpstreamError::Compress)?)
            }
        };

        let client = request
            .sentry_client
            .as_deref()
            .unwrap_or(concat!("scrub-relay/", env!("CARGO_PKG_VERSION")));
        // Appended rather than formatted: `format!` costs more than the copies.
        let mut auth = String::with_capacity(64 + request.public_key.len() + client.len());
        auth.push_str("Sentry sentry_key=");
        auth.push_str(&request.public_key);
        auth.push_str(", sentry_version=7, sentry_client=");
        auth.push_str(client);
        let mut headers = HeaderMap::new();
        // Key and client were validated to header-safe characters (`auth::safe_client`, `dsn::is_valid_public_key`).
        headers.insert(
            crate::auth::X_SENTRY_AUTH,
            HeaderValue::from_str(&auth).map_err(|_| invalid_header())?,
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(request.destination.content_type()),
        );
        match encoding {
            UpstreamEncoding::Gzip => {
                headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            UpstreamEncoding::Zstd => {
                headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            }
            UpstreamEncoding::Identity => {}
        }
        let user_agent = request.user_agent.clone().unwrap_or(HeaderValue::from_static(concat!(
            "scrub-relay/",
            env!("CARGO_PKG_VERSION")
        )));
        headers.insert(http::header::USER_AGENT, user_agent);
        if let Some(ip) = request.forwarded_for {
            // An IP address always formats to a valid header value.
            headers.insert(
                X_FORWARDED_FOR,
                HeaderValue::from_str(&ip.to_string()).expect("IP is a header value"),
            );
        }

        self.metrics.forwarded_uncompressed_bytes().inc_by(uncompressed as u64);
        self.metrics.forwarded_wire_bytes().inc_by(body.len() as u64);
        let started = Instant::now();
        let result = self
            .post(self.request_url(request.destination, request.project_id), headers, body)
            .await;
        self.metrics.upstream_duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(response) => status_outcome(response.status),
            Err(error) => error.outcome(),
        };
        self.metrics.count_upstream_request(outcome);
        if let Err(error) = &result {
            tracing::warn!(project_id = request.project_id, outcome, error = %error_chain(error), "upstream request failed");
        }
        result
    }

    /// POSTs `body` to `url` (the text when it did not parse: the client reports that error).
    async fn post(
        &self,
        url: Result<http::Uri, String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        match &self.client {
            Client::Direct(client) => {
                let url = url.map_err(|_| UpstreamError::Request("the upstream URL is not a valid URI".into()))?;
                let mut request = http::Request::new(Full::new(body));
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = url;
                *request.headers_mut() = headers;
                // One deadline for connecting, sending and reading the answer, as reqwest's `timeout` is.
                match tokio::time::timeout(self.timeout, exchange(client, request)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(UpstreamError::Timeout),
                }
            }
            Client::Proxied(client) => {
                let url = url.map_or_else(|text| text, |url| url.to_string());
                let sent = client.post(url).headers(headers).body(body).send().await;
                let mut response = sent.map_err(classify)?;
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(classify)? {
                    if keep_response_chunk(&mut body, &chunk) {
                        break;
                    }
                }
                Ok(UpstreamResponse::new(response.status(), response.headers(), body))
            }
        }
    }
}

/// One request on hyper-util's client and its answer, the body capped at [`MAX_RESPONSE_BODY`].
async fn exchange(
    client: &hyper_util::client::legacy::Client<HttpsConnector, Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<UpstreamResponse, UpstreamError> {
    use http_body_util::BodyExt;
    let response = client.request(request).await.map_err(|error| {
        if error.is_connect() && caused_by_timeout(&error) {
            // `--upstream-connect-timeout` ran out: a timeout, as reqwest counted it.
            UpstreamError::Timeout
        } else if error.is_connect() {
            UpstreamError::Connect(error.into())
        } else {
            UpstreamError::Request(error.into())
        }
    })?;
    let (parts, mut incoming) = response.into_parts();
    let mut body = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|error| UpstreamError::Request(error.into()))?;
        if let Ok(chunk) = frame.into_data()
            && keep_response_chunk(&mut body, &chunk)
        {
            break;
        }
    }
    Ok(UpstreamResponse::new(parts.status, &parts.headers, body))
}

/// Whether an I/O timeout is among `error`'s causes (hyper-util's connector reports its connect timeout so).
fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    causes(error).any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// `error` and its sources, outermost first.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |cause| cause.source())
}

/// Appends what fits of `chunk` under [`MAX_RESPONSE_BODY`]; true once the cap is reached (the rest is not read).
fn keep_response_chunk(body: &mut Vec<u8>, chunk: &[u8]) -> bool {
    let room = MAX_RESPONSE_BODY.saturating_sub(body.len());
    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    room <= chunk.len()
}

/// Connections to the upstream idle longer than this are closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// hyper-util's client for [`Client::Direct`], set up as reqwest sets up its own: TCP_NODELAY and keep-alive probes,
/// the connect timeout, rustls with the platform's verifier, HTTP/2 when the upstream offers it by ALPN.
fn direct_client(
    config: &Config,
) -> Result<hyper_util::client::legacy::Client<HttpsConnector, Full<Bytes>>, BuildError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier =
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|error| BuildError(error.into()))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| BuildError(error.into()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.set_connect_timeout(Some(config.upstream_connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .build(https),
    )
}

/// TCP keep-alive probes on upstream connections (reqwest's default).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

fn invalid_header() -> UpstreamError {
    UpstreamError::Compress(std::io::Error::other("auth header has invalid characters"))
}

fn classify(error: reqwest::Error) -> UpstreamError {
    if error.is_timeout() {
        UpstreamError::Timeout
    } else if error.is_connect() {
        UpstreamError::Connect(error.into())
    } else {
        UpstreamError::Request(error.into())
    }
}

/// `2xx`, `429`, `4xx`, `5xx`: the bounded outcome label.
pub fn status_outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        429 => "429",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The error and its sources on one line (reqwest hides the useful part in the source chain).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    causes(error).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// The gzip level for forwarded envelopes (see `compress`).
const GZIP_LEVEL: i32 = 1;

/// Compresses a forwarded envelope.
pub fn compress(encoding: UpstreamEncoding, data: &[u8]) -> std::io::Result<Vec<u8>> {
    match encoding {
        UpstreamEncoding::Identity => Ok(data.to_vec()),
        UpstreamEncoding::Gzip => gzip(data),
        UpstreamEncoding::Zstd => zstd(data),
    }
}

/// The zstd level for forwarded envelopes (see `zstd`).
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    /// One zstd context per thread, reused: `zstd::encode_all` made a new one per envelope and, not knowing the
    /// input's size, sized its tables for any input. A one-shot compression with the size known picks tables for a
    /// few KiB: the python event takes 4.8x fewer instructions (207 k instead of 995 k, against 346 k for gzip level
    /// 1) and comes out at 1,841 bytes instead of 1,862 (gzip level 1: 2,302; `benches/codec.rs`, issue #11).
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// zstd (RFC 8878), one frame with the content size in its header.
fn zstd(data: &[u8]) -> std::io::Result<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some(compressor) => compressor,
            empty => empty.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        compressor.compress(data)
    })
}

thread_local! {
    /// One deflate state per thread, reset between envelopes. A new one allocates and zeroes a few hundred KiB of
    /// window and hash tables (glibc serves that with mmap, so every envelope also paid page faults and munmap),
    /// which cost more than compressing a typical 4 KiB envelope (issue #11). The reset still zeroes zlib-rs' 128 KiB
    /// hash table, whatever the input's size (about 4 µs of the python event's 17; no option of zlib-rs sizes it,
    /// `benches/codec.rs`).
    static DEFLATE: RefCell<Option<Deflater>> = const { RefCell::new(None) };
}

struct Deflater {
    state: zlib_rs::Deflate,
    /// Where the stream is written, reused and kept initialized (its length only grows, up to [`SCRATCH_KEEP`]):
    /// the envelope's body is then one allocation of exactly its size, after one pass of deflate. A guessed size
    /// (a third of the input) was too short for the python event (2,302 bytes of 4,131): a second pass, a realloc,
    /// and a queued body of 5.5 KiB for 2.3 KiB of bytes.
    scratch: Vec<u8>,
}

/// The scratch buffer is given back after an envelope that needed more than this.
const SCRATCH_KEEP: usize = 256 * 1024;

/// zlib's `memLevel` for [`GZIP_LEVEL`]. At level 1 (zlib-rs' "quick": static Huffman codes, written as matches are
/// found) it only sizes two buffers: the symbol buffer the other levels gather a block in, which every reset zeroes,
/// and the pending output, flushed to the caller's buffer when full. The stream is the same at every memLevel (a test
/// compares it with memLevel 8's); the default 8 zeroed 48 KiB per envelope for nothing, 4 zeroes 3 KiB and holds
/// 4 KiB of pending output, more than a typical envelope compresses to.
const GZIP_MEM_LEVEL: i32 = 4;

fn new_deflate() -> zlib_rs::Deflate {
    zlib_rs::Deflate::new_with_config(zlib_rs::DeflateConfig {
        level: GZIP_LEVEL,
        // Negative: a raw deflate stream; `gzip` writes the header and trailer itself.
        window_bits: -15,
        mem_level: GZIP_MEM_LEVEL,
        ..zlib_rs::DeflateConfig::default()
    })
}

/// gzip (RFC 1952): a fixed header, the raw deflate stream, CRC-32 and length.
///
/// Level 1 (zlib-rs' "quick" strategy): on the SDK captures it costs 2.3x less CPU than level 6 for 29 % more bytes
/// (31.5 % of the input instead of 24.4 %). At level 6 compression was a fifth of the relay's CPU; the relay is
/// CPU-bound long before a link to Sentry is full (benches/LOAD.md, issue #11).
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    /// Magic, deflate, no flags, no modification time, no extra flags, OS unknown: what flate2's `GzEncoder` writes.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    with_deflater(|Deflater { state, scratch }| {
        let written = deflate_into(state, data, scratch)?;
        let mut out = Vec::with_capacity(HEADER.len() + written + 8);
        out.extend_from_slice(&HEADER);
        out.extend_from_slice(&scratch[..written]);
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        // ISIZE is the length modulo 2^32.
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        if scratch.len() > SCRATCH_KEEP {
            *scratch = Vec::new();
        }
        Ok(out)
    })
}

/// Runs `work` on this thread's deflate state, reset first. A state whose work failed is dropped, never reset: its
/// stream did not end and may hold output it could not flush, and zlib-rs 0.6.8's reset forgets where that output
/// starts (`Pending::reset_keep` keeps its offset): the next envelope on this thread would panic mid-compression or
/// come out as a stream that does not decode.
fn with_deflater<T>(work: impl FnOnce(&mut Deflater) -> std::io::Result<T>) -> std::io::Result<T> {
    DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let deflater = slot.get_or_insert_with(|| Deflater {
            state: new_deflate(),
            scratch: Vec::new(),
        });
        deflater.state.reset();
        let result = work(deflater);
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// The whole of `data` as one finished raw deflate stream, written from the start of `out` (grown when short);
/// returns its length.
fn deflate_into(state: &mut zlib_rs::Deflate, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        let consumed = usize::try_from(state.total_in()).unwrap_or(usize::MAX).min(data.len());
        let written = usize::try_from(state.total_out()).unwrap_or(usize::MAX).min(out.len());
        if out.len() - written < 64 {
            let more = out.len().max(data.len() - consumed).max(4096);
            out.resize(out.len() + more, 0);
        }
        let status = state
            .compress(&data[consumed..], &mut out[written..], zlib_rs::DeflateFlush::Finish)
            .map_err(|error| std::io::Error::other(error.as_str()))?;
        if status == zlib_rs::Status::StreamEnd {
            return Ok(usize::try_from(state.total_out()).unwrap_or(usize::MAX).min(out.len()));
        }
    }
}

/// Why the HTTP client could not be built, for the one start-up error line: the error and its sources (reqwest's
/// own text is only "builder error"). The usual cause in a container is an image without CA certificates (the TLS
/// verifier loads the system's roots when the client is built, whatever the upstream's scheme), so that case names
/// the bundle and where it was looked for.
fn describe_build_error(error: &(dyn std::error::Error + 'static)) -> String {
    let no_roots = causes(error).any(|cause| {
        matches!(cause.downcast_ref::<rustls::Error>(), Some(rustls::Error::General(message))
            if message.contains("CA certificates"))
    });
    let chain = error_chain(error);
    if no_roots {
        format!(
            "no CA certificate bundle found (the system's, or SSL_CERT_FILE / SSL_CERT_DIR when set); install one \
             (Debian: ca-certificates) or point SSL_CERT_FILE at a PEM file ({chain})"
        )
    } else {
        chain
    }
}

/// rustls needs one process-wide crypto provider; we build with ring (see Cargo.toml). Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str, encoding: UpstreamEncoding) -> Upstream {
        let config = Config {
            upstream: url::Url::parse(url).unwrap(),
            upstream_encoding: encoding,
            ..Config::default()
        };
        Upstream::new(&config, Arc::new(Metrics::new())).unwrap()
    }

    #[test]
    fn envelope_url_keeps_a_path_prefix() {
        let plain = upstream("https://sentry.io", UpstreamEncoding::Gzip);
        assert_eq!(plain.envelope_url(42), "https://sentry.io/api/42/envelope/");
        let otlp = crate::delivery::Destination::OtlpLogs(crate::otlp::Encoding::Protobuf);
        assert_eq!(plain.url(otlp, 42), "https://sentry.io/api/42/integration/otlp/v1/logs");
        let prefixed = upstream("https://sentry.example.com/relay/", UpstreamEncoding::Gzip);
        assert_eq!(
            prefixed.envelope_url(7),
            "https://sentry.example.com/relay/api/7/envelope/"
        );
    }

    #[test]
    fn request_urls_are_parsed_once_and_kept_bounded() {
        let client = upstream("https://sentry.example.com/relay/", UpstreamEncoding::Gzip);
        let otlp = crate::delivery::Destination::OtlpTraces(crate::otlp::Encoding::Protobuf);
        for _ in 0..2 {
            for (destination, project) in [(crate::delivery::Destination::Envelope, 7), (otlp, 7), (otlp, 8)] {
                let url = client.request_url(destination, project).unwrap();
                assert_eq!(url.to_string(), client.url(destination, project));
            }
        }
        assert_eq!(client.urls.lock().unwrap().len(), 3);
        for project in 0..(URL_CACHE_MAX as u64 * 3) {
            let url = client
                .request_url(crate::delivery::Destination::Envelope, project)
                .unwrap();
            assert_eq!(url.path(), format!("/relay/api/{project}/envelope/"));
        }
        assert!(client.urls.lock().unwrap().len() <= URL_CACHE_MAX);
    }

    #[test]
    fn compression_round_trips() {
        let data = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n".repeat(100);
        for (encoding, content) in [
            (UpstreamEncoding::Gzip, crate::decode::ContentEncoding::Gzip),
            (UpstreamEncoding::Zstd, crate::decode::ContentEncoding::Zstd),
            (UpstreamEncoding::Identity, crate::decode::ContentEncoding::Identity),
        ] {
            let compressed = compress(encoding, &data).unwrap();
            assert_eq!(
                crate::decode::decode(content, &compressed, 1 << 20).unwrap(),
                data,
                "{encoding:?}"
            );
            if encoding != UpstreamEncoding::Identity {
                assert!(compressed.len() < data.len() / 4, "{encoding:?} compresses");
            }
        }
    }

    /// The deflate state and the zstd context are reused across envelopes: nothing of one envelope may leak into
    /// the next.
    #[test]
    fn reused_compression_state_starts_clean_every_time() {
        let inputs: Vec<Vec<u8>> = vec![
            b"{\"message\":\"jane.doe@example.com\"}\n".repeat(500),
            Vec::new(),
            b"x".to_vec(),
            incompressible(200_000),
            b"{\"message\":\"[Filtered]\"}\n".repeat(3),
            // Larger than the scratch buffer kept between envelopes.
            (0..400_000u32)
                .map(|n| (n.wrapping_mul(2_246_822_519) >> 24) as u8)
                .collect(),
        ];
        for data in inputs.iter().chain(inputs.iter().rev()) {
            let compressed = compress(UpstreamEncoding::Gzip, data).unwrap();
            assert!(
                gunzip_one_member(&compressed) == *data,
                "{} bytes round trip through gzip",
                data.len()
            );

            let compressed = compress(UpstreamEncoding::Zstd, data).unwrap();
            // A streaming decoder, as an upstream reading the request body uses: one frame, nothing after it.
            let mut decoder = zstd::stream::read::Decoder::new(&compressed[..])
                .unwrap()
                .single_frame();
            let mut frame = Vec::new();
            std::io::Read::read_to_end(&mut decoder, &mut frame).unwrap();
            assert!(frame == *data, "{} bytes round trip through zstd", data.len());
            assert!(zstd::decode_all(&compressed[..]).unwrap() == *data);
        }
    }

    /// [`GZIP_MEM_LEVEL`] only sizes buffers at level 1: the deflate stream is byte for byte the one zlib's default
    /// memLevel (flate2's) writes, so no envelope compresses worse for it.
    #[test]
    fn gzip_mem_level_leaves_the_stream_as_it_was() {
        let inputs: Vec<Vec<u8>> = vec![
            python_event(),
            Vec::new(),
            b"{\"message\":\"jane.doe@example.com\"}\n".repeat(2_000),
            // Incompressible: the pending output fills many times over.
            incompressible(300_000),
        ];
        for data in &inputs {
            let mut default_mem_level = flate2::Compress::new(flate2::Compression::new(1), false);
            let mut expected = Vec::with_capacity(data.len() + 1024);
            let status = default_mem_level
                .compress_vec(data, &mut expected, flate2::FlushCompress::Finish)
                .unwrap();
            assert_eq!(status, flate2::Status::StreamEnd);
            let gzipped = compress(UpstreamEncoding::Gzip, data).unwrap();
            assert!(gzipped[10..gzipped.len() - 8] == expected[..], "{} bytes", data.len());
        }
    }

    /// The reset that a failed stream would get is the one zlib-rs gets wrong: after output it could not flush, the
    /// next compression on that state panics or writes a stream that does not decode (both seen). The relay's next
    /// envelope gets a new state instead.
    #[test]
    fn a_deflate_state_whose_stream_failed_is_not_reused() {
        let failed = with_deflater(|deflater| {
            let mut short = [0u8; 100];
            deflater
                .state
                .compress(&incompressible(100_000), &mut short, zlib_rs::DeflateFlush::Finish)
                .map_err(|error| std::io::Error::other(error.as_str()))?;
            Err::<(), _>(std::io::Error::other("stopped with output pending"))
        });
        assert!(failed.is_err());
        let event = python_event();
        assert!(gunzip_one_member(&compress(UpstreamEncoding::Gzip, &event).unwrap()) == event);
    }

    #[test]
    fn outcome_labels_are_bounded() {
        assert_eq!(status_outcome(StatusCode::OK), "2xx");
        assert_eq!(status_outcome(StatusCode::TOO_MANY_REQUESTS), "429");
        assert_eq!(status_outcome(StatusCode::FORBIDDEN), "4xx");
        assert_eq!(status_outcome(StatusCode::BAD_GATEWAY), "5xx");
        assert_eq!(status_outcome(StatusCode::SWITCHING_PROTOCOLS), "other");
    }

    #[tokio::test]
    async fn unreachable_upstream_is_a_network_error() {
        // Bind and drop a listener to get a loopback port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = upstream(&format!("http://127.0.0.1:{port}"), UpstreamEncoding::Identity);
        let error = client.send(small_request()).await.unwrap_err();
        assert_eq!(error.outcome(), "network_error");
        assert_eq!(
            client
                .metrics
                .upstream_requests
                .with_label_values(&["network_error"])
                .get(),
            1
        );
    }

    #[test]
    fn a_timed_out_cause_anywhere_in_the_chain_is_a_timeout() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Wrapper(#[source] std::io::Error);
        let timed_out = Wrapper(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"));
        assert!(caused_by_timeout(&timed_out));
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!caused_by_timeout(&refused));
    }

    /// The raw python error event as the SDK sent it, decompressed (issue #11's yardstick).
    fn python_event() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sdk/py-error-event-rawpii.envelope"
        ))
        .unwrap()
    }

    /// `len` bytes no compressor shrinks (static Huffman codes expand them).
    fn incompressible(len: u32) -> Vec<u8> {
        (0..len).map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
    }

    /// A single-member gzip decoder, as strict as any upstream's.
    fn gunzip_one_member(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out).unwrap();
        out
    }

    fn small_request() -> UpstreamRequest {
        UpstreamRequest {
            project_id: 1,
            public_key: "abc".into(),
            sentry_client: None,
            user_agent: None,
            forwarded_for: None,
            envelope: Bytes::from_static(b"{}\n"),
            destination: crate::delivery::Destination::Envelope,
            encoded: None,
        }
    }

    /// One deadline covers the whole attempt: an upstream that takes the request and never answers is a timeout,
    /// not a request that hangs its delivery worker.
    #[tokio::test]
    async fn an_upstream_that_never_answers_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
        });
        let config = Config {
            upstream: url::Url::parse(&format!("http://{addr}")).unwrap(),
            upstream_timeout: Duration::from_millis(300),
            upstream_encoding: UpstreamEncoding::Identity,
            ..Config::default()
        };
        let client = Upstream::new(&config, Arc::new(Metrics::new())).unwrap();
        let error = client.send(small_request()).await.unwrap_err();
        assert_eq!(error.outcome(), "timeout");
        silent.abort();
    }
}
