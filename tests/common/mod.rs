//! Shared integration-test harness: a real relay on `127.0.0.1:0`, a recording upstream ([`MiniSentry`]), a raw
//! HTTP/1.1 client that replays SDK captures byte for byte, and loaders for `tests/fixtures/sdk/`.
//!
//! Synchronisation is by channels with timeouts, never sleeps: `MiniSentry::next` waits for the next upstream
//! request, and `wait_until` polls a condition (such as a metric) until it holds or the timeout fails the test.

#![allow(dead_code)]

pub mod tls;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use scrub_relay::config::Config;
use scrub_relay::decode::{self, ContentEncoding};
use scrub_relay::envelope::Envelope;
use scrub_relay::metrics::Metrics;
use scrub_relay::server::{self, AppState};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Where an external tool the test drives is (an SDK, a browser, Prometheus, a Docker daemon), from the variable
/// `.ci/run` sets after installing it; `None`, with the reason printed, when the test should skip. Under `CI=true`
/// a missing tool is a failure, so a broken install step cannot pass as a skipped test.
pub fn tool(variable: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{variable} ({what}) is not set and CI=true: run the tests through .ci/run, which installs it")
        }
        _ => {
            eprintln!("skipping: {variable} ({what}) is not set; `.ci/run` installs it and sets the variable");
            None
        }
    }
}

/// How long a driver script (an SDK, a browser) may run; a hang is a failure, not a stuck CI.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a driver script in `dir` to completion, stdin closed, and returns its output for the test to read its
/// report from. A script that cannot start, runs past [`SCRIPT_TIMEOUT`] (it is killed then) or exits non-zero
/// fails the test with its stdout and stderr.
pub async fn run_to_completion(program: impl AsRef<Path>, args: &[&str], dir: &Path) -> Output {
    let path = program.as_ref();
    let program = path.display();
    let child = tokio::process::Command::new(path)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("cannot read the output of {program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The report a driver script prints: the last line of its stdout that is JSON. None fails the test with the
/// script's stdout and stderr.
pub fn json_report(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            panic!("no JSON report on stdout:\n{stdout}\n--- stderr\n{stderr}")
        })
}

// ---------------------------------------------------------------------------------------------------------------
// MiniSentry: the recording upstream

/// One request the upstream received, with its body decompressed and parsed.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The HTTP version the request came in (HTTP/2 when ALPN chose it).
    pub version: http::Version,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body as it arrived (compressed).
    pub raw_body: Bytes,
    /// The body after `Content-Encoding` was undone.
    pub body: Bytes,
    /// `body` parsed as an envelope, when it is one.
    pub envelope: Option<Envelope>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `sentry_key` of the `X-Sentry-Auth` header.
    pub fn auth_key(&self) -> Option<String> {
        let auth = scrub_relay::auth::parse_auth_header(self.header("x-sentry-auth")?, false).ok()?;
        Some(auth.public_key)
    }

    /// The `sentry_client` of the `X-Sentry-Auth` header.
    pub fn auth_client(&self) -> Option<String> {
        scrub_relay::auth::parse_auth_header(self.header("x-sentry-auth")?, false)
            .ok()?
            .client
    }

    /// The envelope, or a test failure.
    pub fn envelope(&self) -> &Envelope {
        self.envelope.as_ref().expect("upstream body is an envelope")
    }
}

/// How MiniSentry answers. Default: 200 `{"id": ...}`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Hold the answer this long (for timeout tests). The request is recorded before the delay.
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer::status(200).body(r#"{"id":"00000000000000000000000000000000"}"#)
    }

    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: "{}".into(),
            delay: None,
        }
    }

    /// 429 with `Retry-After` and `X-Sentry-Rate-Limits`.
    pub fn rate_limited(retry_after: &str, rate_limits: &str) -> Answer {
        Answer::status(429)
            .header("retry-after", retry_after)
            .header("x-sentry-rate-limits", rate_limits)
            .body(r#"{"detail":"event rejected due to rate limit"}"#)
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: &str) -> Answer {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Answer {
        self.delay = Some(delay);
        self
    }
}

#[derive(Default)]
struct Script {
    once: VecDeque<Answer>,
    always: Option<Answer>,
}

/// A real HTTP server (HTTP/1.1 and HTTP/2) on loopback that records every request and answers as scripted.
pub struct MiniSentry {
    pub addr: SocketAddr,
    /// `https` when it serves TLS ([`MiniSentry::start_tls`]).
    tls: bool,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Recorded>>,
    script: Arc<Mutex<Script>>,
    count: Arc<AtomicUsize>,
    /// TLS handshakes that did not complete (the client refused the certificate, or spoke plain HTTP).
    refused_handshakes: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl MiniSentry {
    pub async fn start() -> MiniSentry {
        MiniSentry::serve(None).await
    }

    /// Serves HTTPS as `localhost` with the certificate and key [`tls_fixture`]`("<certificate>.{pem,key}")`,
    /// offering `alpn` (e.g. `[b"h2", b"http/1.1"]`, as Sentry's ingest does).
    pub async fn start_tls(certificate: &str, alpn: &[&[u8]]) -> MiniSentry {
        let acceptor = tls::acceptor(
            &tls_fixture(&format!("{certificate}.pem")),
            &tls_fixture(&format!("{certificate}.key")),
            alpn,
        );
        MiniSentry::serve(Some(acceptor)).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> MiniSentry {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind MiniSentry");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(Script::default()));
        let count = Arc::new(AtomicUsize::new(0));
        let refused_handshakes = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (task_script, task_count, task_refused) = (script.clone(), count.clone(), refused_handshakes.clone());
        let is_tls = tls.is_some();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                };
                let (tx, script, count) = (tx.clone(), task_script.clone(), task_count.clone());
                let (tls, refused) = (tls.clone(), task_refused.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (tx, script, count) = (tx.clone(), script.clone(), count.clone());
                        async move { Ok::<_, Infallible>(record_and_answer(request, &tx, &script, &count).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Err(_) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        MiniSentry {
            addr,
            tls: is_tls,
            received: tokio::sync::Mutex::new(rx),
            script,
            count,
            refused_handshakes,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:<port>`, or `https://localhost:<port>` for TLS: pass as the relay's upstream.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// TLS handshakes that did not complete so far.
    pub fn refused_handshakes(&self) -> usize {
        self.refused_handshakes.load(Ordering::SeqCst)
    }

    /// Answer the next request with `answer` (queued; falls back to the `answer_always` answer or 200).
    pub fn answer_next(&self, answer: Answer) {
        self.script.lock().unwrap().once.push_back(answer);
    }

    /// Answer every request (after queued ones) with `answer`.
    pub fn answer_always(&self, answer: Answer) {
        self.script.lock().unwrap().always = Some(answer);
    }

    /// How many requests arrived so far.
    pub fn received(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The next recorded request; fails the test after [`WAIT`].
    pub async fn next(&self) -> Recorded {
        let mut rx = self.received.lock().await;
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("MiniSentry: no upstream request within the timeout")
            .expect("MiniSentry stopped")
    }

    /// The next `n` recorded requests, in arrival order.
    pub async fn next_n(&self, n: usize) -> Vec<Recorded> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// A request already recorded, without waiting.
    pub async fn try_next(&self) -> Option<Recorded> {
        self.received.lock().await.try_recv().ok()
    }
}

impl Drop for MiniSentry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn record_and_answer(
    request: Request<Incoming>,
    tx: &mpsc::UnboundedSender<Recorded>,
    script: &Mutex<Script>,
    count: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let raw_body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let encoding = parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| ContentEncoding::parse(v.as_bytes()).expect("upstream got a known Content-Encoding"))
        .unwrap_or(ContentEncoding::Identity);
    let body = Bytes::from(decode::decode(encoding, &raw_body, 1 << 30).expect("upstream body decodes"));
    let envelope = Envelope::parse(body.clone()).ok();
    let answer = {
        let mut script = script.lock().unwrap();
        script
            .once
            .pop_front()
            .or_else(|| script.always.clone())
            .unwrap_or_else(Answer::ok)
    };
    let recorded = Recorded {
        method: parts.method,
        version: parts.version,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        raw_body,
        body,
        envelope,
    };
    count.fetch_add(1, Ordering::SeqCst);
    let _ = tx.send(recorded);
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = StatusCode::from_u16(answer.status).expect("valid scripted status");
    for (name, value) in answer.headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            http::HeaderValue::from_str(&value).expect("valid header value"),
        );
    }
    response
}

// ---------------------------------------------------------------------------------------------------------------
// The relay under test

/// A relay serving on `127.0.0.1:<port>` inside the test's runtime.
pub struct RelayHandle {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// Triggers shutdown without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Triggers shutdown and waits until `server::run` has returned (drain included).
    pub async fn shutdown(mut self) {
        self.trigger_shutdown();
        if let Some(join) = self.join.take() {
            tokio::time::timeout(WAIT, join)
                .await
                .expect("relay stops within the timeout")
                .expect("relay task");
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// A config for tests: listen on port 0, forward to `upstream`, short timeouts.
pub fn relay_config(upstream: &MiniSentry) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream: url::Url::parse(&upstream.url()).expect("MiniSentry URL"),
        upstream_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Starts the relay with the built-in rules (or `config.rules_path` when set).
pub async fn start_relay(config: Config) -> RelayHandle {
    let rules = scrub_relay::cli::load_rules(config.rules_path.as_deref()).expect("test rules load");
    let state = AppState::new(config, rules, Arc::new(Metrics::new())).expect("valid test config");
    start_relay_with_state(state).await
}

/// Starts the relay with a state the test built itself.
pub async fn start_relay_with_state(state: Arc<AppState>) -> RelayHandle {
    let listener = TcpListener::bind(state.config.listen).await.expect("bind relay");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task_state = state.clone();
    let join = tokio::spawn(async move {
        server::run(listener, task_state, async {
            let _ = stopped.await;
        })
        .await;
    });
    RelayHandle {
        addr,
        state,
        stop: Some(stop),
        join: Some(join),
    }
}

/// Polls `condition` until it holds; fails the test after [`WAIT`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: sends exactly the headers and framing given

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("JSON body, got {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// `detail` of a JSON error answer.
    pub fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one HTTP/1.1 request with exactly these headers, in this order. With `chunked`, the body goes out in
/// chunked framing (add `Transfer-Encoding: chunked` to `headers` yourself, as the SDK did); otherwise a
/// `Content-Length` is added when `headers` has none. A `Host` header is added when missing.
pub async fn send_raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    chunked: bool,
) -> RawResponse {
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !chunked && !has("content-length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect to relay");
    let mut wire = head.into_bytes();
    if chunked {
        // Several chunks, like Node's piped streams, so chunk boundaries are exercised.
        for chunk in body.chunks(1000) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
    } else {
        wire.extend_from_slice(body);
    }
    // The server may answer early (413) and close; a failed write then is expected, the answer is what matters.
    let _ = stream.write_all(&wire).await;
    tokio::time::timeout(WAIT, read_response(&mut stream))
        .await
        .expect("relay answers within the timeout")
}

/// Reads one HTTP/1.1 response (after any request written by hand).
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let header_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut rest = buffer[header_end + 4..].to_vec();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(length) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        while rest.len() < length {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed mid-body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(length);
        rest
    } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            if find(&rest, b"0\r\n\r\n").is_some() {
                break;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.expect("read body");
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        dechunk(&rest)
    } else {
        rest
    };
    RawResponse { status, headers, body }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// `(name, value)` pairs from string slices.
pub fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
}

/// POSTs an envelope to `/api/<project>/envelope/` with `X-Sentry-Auth` for `key`.
pub async fn post_envelope(relay: &RelayHandle, project: u64, key: &str, body: &[u8]) -> RawResponse {
    let auth = format!("Sentry sentry_key={key}, sentry_version=7, sentry_client=test/1.0");
    send_raw(
        relay.addr,
        "POST",
        &format!("/api/{project}/envelope/"),
        &headers(&[("X-Sentry-Auth", &auth)]),
        body,
        false,
    )
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Envelopes and captures

/// A small error-event envelope with the given event id.
pub fn event_envelope(event_id: &str) -> Vec<u8> {
    format!(
        "{{\"event_id\":\"{event_id}\"}}\n{{\"type\":\"event\"}}\n{{\"event_id\":\"{event_id}\",\"message\":\"hello\",\"level\":\"error\"}}\n"
    )
    .into_bytes()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("write to Vec");
    encoder.finish().expect("write to Vec")
}

pub fn brotli(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 4, 22);
        writer.write_all(data).expect("write to Vec");
    }
    out
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd into Vec")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdk")
}

/// A file of the test-only TLS material in `tests/fixtures/tls/` (see its `make.sh`).
pub fn tls_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// One captured SDK request from `tests/fixtures/sdk/`.
#[derive(Debug, Clone)]
pub struct Capture {
    pub name: String,
    pub method: String,
    pub path: String,
    pub query: String,
    /// Every header, in wire order and original case.
    pub headers: Vec<(String, String)>,
    pub chunked: bool,
    /// The body exactly as received (compressed when the SDK compressed it; chunk framing removed).
    pub body: Vec<u8>,
}

impl Capture {
    pub fn load(name: &str) -> Capture {
        let dir = fixtures_dir();
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{name}.headers.json"))).expect("capture headers file"),
        )
        .expect("capture headers JSON");
        let body = std::fs::read(dir.join(format!("{name}.body"))).expect("capture body file");
        let headers = meta["headers"]
            .as_array()
            .expect("headers array")
            .iter()
            .map(|pair| {
                let (name, value) = (
                    pair[0].as_str().unwrap().to_owned(),
                    pair[1].as_str().unwrap().to_owned(),
                );
                // A few captures recorded a Content-Length that differs from the stored body by a few bytes; the
                // stored body is the one that decompresses to the stored envelope, so its length is the truth.
                let value = if name.eq_ignore_ascii_case("content-length") {
                    body.len().to_string()
                } else {
                    value
                };
                (name, value)
            })
            .collect();
        Capture {
            name: name.to_owned(),
            method: meta["method"].as_str().expect("method").to_owned(),
            path: meta["path"].as_str().expect("path").to_owned(),
            query: meta["query"].as_str().unwrap_or_default().to_owned(),
            headers,
            chunked: meta["transfer_chunked"].as_bool().unwrap_or(false),
            body,
        }
    }

    /// Every capture, sorted by name.
    pub fn all() -> Vec<Capture> {
        let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
            .expect("fixtures dir")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".headers.json").map(str::to_owned)
            })
            .collect();
        names.sort();
        names.iter().map(|name| Capture::load(name)).collect()
    }

    /// Path plus query, as on the request line.
    pub fn target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    /// The decompressed envelope the SDK sent.
    pub fn envelope_bytes(&self) -> Vec<u8> {
        let encoding = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-encoding"))
            .map(|(_, v)| ContentEncoding::parse(v.as_bytes()).expect("known encoding"))
            .unwrap_or(ContentEncoding::Identity);
        decode::decode(encoding, &self.body, 1 << 30).expect("capture decodes")
    }

    /// Replays the capture against the relay: same method, target, headers (in order) and framing.
    pub async fn replay(&self, relay: &RelayHandle) -> RawResponse {
        self.send_to(relay.addr).await
    }

    /// Sends this request, byte for byte, to a relay listening on `addr`.
    pub async fn send_to(&self, addr: SocketAddr) -> RawResponse {
        send_raw(
            addr,
            &self.method,
            &self.target(),
            &self.headers,
            &self.body,
            self.chunked,
        )
        .await
    }
}
