//! End-to-end load benchmark: replays the real SDK captures in `tests/fixtures/sdk/` (gzip'd and brotli'd Python
//! envelopes, chunked Node envelopes, uncompressed Rust envelopes) against the release `scrub-relay` binary, whose
//! upstream is a counting sink on loopback, and reports requests/s, MB/s, latency percentiles and the relay's CPU time.
//!
//! ```text
//! cargo bench --bench load -- [--seconds 20] [--requests 300000] [--connections 32] [--warmup 3] \
//!     [--only mix|single] [--capture py-error-event-rawpii] [--relay-cpu 0] [--relay-binary PATH] \
//!     [--relay-arg=--upstream-encoding=identity ...] [--sink-latency-ms 0] [--rate 1500] [--sink-tls h2|http1] \
//!     [--vary 1000]
//! ```
//!
//! Two scenarios, each against a fresh relay process: **mix** replays every capture round-robin, **single** replays
//! one capture (by default the raw 1.8 KB gzip sentry-python error event, PII included, the issue #11 yardstick).
//! The headline figure is envelopes answered per relay CPU-second, which stays meaningful on a shared machine.
//! By default each connection sends its next request as soon as the last is answered (closed loop: the relay's
//! capacity); with `--rate N` requests are sent on a fixed schedule of N per second whatever the answers do (open
//! loop); a request that goes out late because every connection was busy counts its latency from its scheduled
//! time, so a relay that falls behind shows its queueing in the percentiles instead of slowing the load down.
//! Everything runs on 127.0.0.1 and stops by itself: after `--seconds` or `--requests`, whichever comes first.
//! The load generator, the sink and the relay share the machine, so the figures are a floor for a dedicated host.
//! `--vary N` replays N versions of the single capture that differ as one app's events do (ids, timestamps, email
//! addresses), so that strings the relay remembers from earlier envelopes help only where real traffic repeats too.
//! With `--sink-tls` the sink is HTTPS, as Sentry's ingest is, offering HTTP/2 (`h2`) or only HTTP/1.1 (`http1`) by
//! ALPN, with the test certificate of `tests/fixtures/tls/` (the relay is given its CA through `SSL_CERT_FILE`).
//! The HTTP/1.1 client is written out by hand so that each capture is replayed with its own framing
//! (Content-Length or chunked), its own Content-Encoding and its own auth style, byte for byte.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[path = "support/variants.rs"]
mod variants;

#[path = "../tests/common/tls.rs"]
mod tls;

/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ) on every mainstream architecture.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// Node pipes gzip output in pieces of this size; we chunk compressed Node bodies the same way.
const NODE_CHUNK: usize = 16 * 1024;

/// The capture the `single` scenario replays: a real sentry-python error event, gzip, PII included.
const SINGLE_CAPTURE: &str = "py-error-event-rawpii";

struct Options {
    seconds: u64,
    requests: u64,
    connections: usize,
    warmup: u64,
    /// Extra flags for `scrub-relay run`, from `--relay-arg=--flag=value` (repeatable).
    relay_args: Vec<String>,
    /// `mix`, `single`, or both when `None`.
    only: Option<String>,
    /// The capture label the `single` scenario replays.
    capture: String,
    /// Pin the relay to this CPU with `taskset` (run the bench itself under `taskset -c <other cpu>`).
    relay_cpu: Option<u32>,
    /// Another `scrub-relay` binary to measure (an older build, for interleaved A/B runs).
    relay_binary: Option<PathBuf>,
    /// How long the sink takes to answer: the round trip to a remote Sentry, as the relay's delivery sees it.
    sink_latency: Duration,
    /// Requests per second on a fixed schedule (open loop); `None`: as fast as the relay answers.
    rate: Option<u64>,
    /// Serve the sink over TLS offering these ALPN protocols; `None`: plain HTTP/1.1.
    sink_tls: Option<Vec<Vec<u8>>>,
    /// `single` replays this many versions of its capture ([`varied_captures`]); 0: the capture as captured.
    vary: usize,
}

impl Options {
    fn from_args() -> Options {
        let mut options = Options {
            seconds: 20,
            requests: 300_000,
            connections: 32,
            warmup: 3,
            relay_args: Vec::new(),
            only: None,
            capture: SINGLE_CAPTURE.to_owned(),
            relay_cpu: None,
            relay_binary: None,
            sink_latency: Duration::ZERO,
            rate: None,
            sink_tls: None,
            vary: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = || args.next().and_then(|value| value.parse::<u64>().ok());
            match arg.as_str() {
                "--only" => options.only = args.next(),
                "--relay-binary" => options.relay_binary = args.next().map(PathBuf::from),
                "--capture" => options.capture = args.next().expect("--capture takes a capture label"),
                "--relay-cpu" => options.relay_cpu = Some(number().expect("--relay-cpu takes a CPU number") as u32),
                "--seconds" => options.seconds = number().expect("--seconds takes a number"),
                "--requests" => options.requests = number().expect("--requests takes a number"),
                "--connections" => options.connections = number().expect("--connections takes a number") as usize,
                "--warmup" => options.warmup = number().expect("--warmup takes a number"),
                "--rate" => options.rate = Some(number().expect("--rate takes requests per second").max(1)),
                "--vary" => options.vary = number().expect("--vary takes a number of versions") as usize,
                "--sink-tls" => {
                    options.sink_tls = Some(match args.next().as_deref() {
                        Some("h2") => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                        Some("http1") => vec![b"http/1.1".to_vec()],
                        _ => panic!("--sink-tls takes h2 or http1"),
                    })
                }
                "--sink-latency-ms" => {
                    options.sink_latency = Duration::from_millis(number().expect("--sink-latency-ms takes a number"))
                }
                _ if arg.starts_with("--relay-arg=") => {
                    options.relay_args.push(arg["--relay-arg=".len()..].to_owned());
                }
                // `cargo bench` passes `--bench`; libtest-style filters mean nothing here.
                _ => {}
            }
        }
        options
    }
}

/// One capture, ready to be written to a socket as-is.
struct Capture {
    label: String,
    /// Request line, headers and the body with its framing.
    wire: Bytes,
    /// The body as the SDK sent it (compressed, without chunk framing).
    body: Bytes,
    /// Envelope bytes after decompression.
    envelope_len: u64,
    /// Request line and headers, without the framing ones: [`Capture::with_body`] frames another body the same way.
    head: String,
    chunked: bool,
    gzip: bool,
}

impl Capture {
    /// This request with `body` (compressed as the original was) instead of its own.
    fn with_body(&self, body: Bytes, envelope_len: u64) -> Capture {
        Capture {
            label: self.label.clone(),
            wire: frame(&self.head, &body, self.chunked),
            body,
            envelope_len,
            head: self.head.clone(),
            chunked: self.chunked,
            gzip: self.gzip,
        }
    }
}

/// The head, then `body` with `Content-Length`, or chunked as Node sends it.
fn frame(head: &str, body: &[u8], chunked: bool) -> Bytes {
    let mut wire = Vec::with_capacity(head.len() + body.len() + 64);
    if chunked {
        wire.extend_from_slice(head.as_bytes());
        wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for piece in body.chunks(NODE_CHUNK) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
    } else {
        wire.extend_from_slice(head.as_bytes());
        wire.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        wire.extend_from_slice(body);
    }
    Bytes::from(wire)
}

/// `count` versions of a gzip capture ([`variants::variants`]), each compressed at gzip's best level (sentry-python's) and
/// framed as the original was.
fn varied_captures(capture: &Capture, count: usize) -> Vec<Capture> {
    use std::io::{Read, Write};
    assert!(capture.gzip, "--vary needs a gzip capture");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&capture.body[..])
        .read_to_string(&mut text)
        .expect("the capture is UTF-8 gzip");
    variants::variants(&text, count, 11)
        .into_iter()
        .map(|varied| {
            let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gzip.write_all(varied.as_bytes()).expect("gzip in memory");
            capture.with_body(Bytes::from(gzip.finish().expect("gzip in memory")), varied.len() as u64)
        })
        .collect()
}

fn load_captures(dir: &Path, relay: SocketAddr) -> Vec<Capture> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/fixtures/sdk exists")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.to_string_lossy().ends_with(".headers.json"))
        .collect();
    names.sort();
    let mut captures = Vec::new();
    for headers_path in names {
        let meta: Value = serde_json::from_slice(&std::fs::read(&headers_path).expect("readable capture"))
            .expect("capture headers are JSON");
        let label = meta["label"].as_str().expect("label").to_owned();
        // Tunnel captures name the capture server's port in their envelope `dsn`; the relay rightly refuses them.
        if label.contains("tunnel") {
            continue;
        }
        let body = std::fs::read(dir.join(format!("{label}.body"))).expect("capture body");
        let chunked = meta["transfer_chunked"].as_bool().unwrap_or(false);
        let envelope_len = meta["decompressed_length"].as_u64().unwrap_or(body.len() as u64);
        let query = meta["query"].as_str().unwrap_or("");
        let path = meta["path"].as_str().expect("path");
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };

        let mut head = format!("POST {target} HTTP/1.1\r\n");
        for pair in meta["headers"].as_array().expect("headers") {
            let name = pair[0].as_str().expect("header name");
            let value = pair[1].as_str().expect("header value");
            match name.to_ascii_lowercase().as_str() {
                "host" => head.push_str(&format!("{name}: {relay}\r\n")),
                "content-length" | "transfer-encoding" | "connection" => {}
                _ => head.push_str(&format!("{name}: {value}\r\n")),
            }
        }
        let gzip = meta["headers"].as_array().expect("headers").iter().any(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|name| name.eq_ignore_ascii_case("content-encoding"))
                && pair[1] == "gzip"
        });
        captures.push(Capture {
            label,
            wire: frame(&head, &body, chunked),
            body: Bytes::from(body),
            envelope_len,
            head,
            chunked,
            gzip,
        });
    }
    captures
}

/// What the upstream sink saw.
#[derive(Default)]
struct SinkCounts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// A stand-in for Sentry: reads every request completely and answers like Sentry does. Over TLS when `tls` is given
/// (HTTP/1.1 or HTTP/2, as ALPN settles), else plain HTTP/1.1.
async fn start_sink(latency: Duration, tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Arc<SinkCounts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink address");
    let counts = Arc::new(SinkCounts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = Arc::clone(&shared);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let counts = Arc::clone(&counts);
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        counts.requests.fetch_add(1, Ordering::Relaxed);
                        counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        let response = Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(
                                br#"{"id":"00000000000000000000000000000000"}"#,
                            )))
                            .expect("static response");
                        Ok::<_, hyper::Error>(response)
                    }
                });
                match tls {
                    None => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// The sink's TLS: the test certificate for `localhost` (signed by `tests/fixtures/tls/ca.pem`), offering `alpn`.
fn sink_tls(root: &Path, alpn: &[Vec<u8>]) -> tokio_rustls::TlsAcceptor {
    let dir = root.join("tests/fixtures/tls");
    let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
    tls::acceptor(&dir.join("localhost.pem"), &dir.join("localhost.key"), &alpn)
}

/// A keep-alive HTTP/1.1 connection that sends prepared requests and reads whole responses.
struct Connection {
    reader: BufReader<TcpStream>,
    line: String,
}

impl Connection {
    async fn open(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
            line: String::new(),
        })
    }

    /// Sends one request and returns the response status, and whether the server keeps the connection open.
    async fn exchange(&mut self, wire: &[u8]) -> io::Result<(u16, bool)> {
        self.reader.get_mut().write_all(wire).await?;
        self.line.clear();
        if self.reader.read_line(&mut self.line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut keep_alive = true;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        if chunked {
            loop {
                self.line.clear();
                self.reader.read_line(&mut self.line).await?;
                let size = usize::from_str_radix(self.line.trim_end(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                self.skip(size + 2).await?;
                if size == 0 {
                    break;
                }
            }
        } else {
            self.skip(content_length).await?;
        }
        Ok((status, keep_alive))
    }

    async fn skip(&mut self, mut count: usize) -> io::Result<()> {
        let mut buffer = [0u8; 4096];
        while count > 0 {
            let want = count.min(buffer.len());
            let read = self.reader.read(&mut buffer[..want]).await?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            count -= read;
        }
        Ok(())
    }
}

/// Per-worker results, merged at the end.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: std::collections::BTreeMap<u16, u64>,
    errors: u64,
    wire_bytes: u64,
    body_bytes: u64,
    envelope_bytes: u64,
}

fn process_cpu_seconds(pid: u32) -> Option<f64> {
    process_cpu(pid).map(|cpu| cpu.user + cpu.system)
}

/// A process's CPU time so far, in seconds, as the kernel splits it.
#[derive(Clone, Copy, Default)]
struct ProcessCpu {
    user: f64,
    /// System calls, and what the kernel does inside them: on loopback that includes delivering the bytes to the
    /// receiving peer and waking it, work that a network card's receiver does on another machine in production.
    system: f64,
}

fn process_cpu(pid: u32) -> Option<ProcessCpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(ProcessCpu {
        user: utime / CLOCK_TICKS_PER_SECOND,
        system: stime / CLOCK_TICKS_PER_SECOND,
    })
}

/// CPU seconds the whole machine spent busy (all processes, all cores) since boot, from `/proc/stat`.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy / CLOCK_TICKS_PER_SECOND)
}

/// The machine's CPUs (`cpuN` lines of /proc/stat). Not `available_parallelism`: under `taskset` that is the bench's
/// own share, and "other processes: 1.4 cores of 1" said nothing.
fn machine_cpus() -> usize {
    std::fs::read_to_string("/proc/stat").map_or(0, |stat| {
        stat.lines()
            .filter(|line| line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count()
    })
}

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn wait_until_ready(relay: SocketAddr, deadline: Duration) {
    let started = Instant::now();
    let probe = format!("GET /healthz HTTP/1.1\r\nHost: {relay}\r\n\r\n");
    loop {
        if let Ok(mut connection) = Connection::open(relay).await {
            if let Ok((200, _)) = connection.exchange(probe.as_bytes()).await {
                return;
            }
        }
        assert!(
            started.elapsed() < deadline,
            "the relay did not answer /healthz within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `connections` workers replaying captures round-robin until `until` or `budget` requests. With `rate`,
/// request `i` is due at `i / rate` seconds after the start, and its latency counts from then if it goes out late.
async fn drive(
    relay: SocketAddr,
    captures: Arc<Vec<Capture>>,
    connections: usize,
    until: Instant,
    budget: u64,
    rate: Option<u64>,
) -> (Tally, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (captures, next, stop) = (Arc::clone(&captures), Arc::clone(&next), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut connection = None;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index as u64 >= budget {
                    break;
                }
                let capture = &captures[index % captures.len()];
                let due = rate.map(|rate| started + Duration::from_secs_f64(index as f64 / rate as f64));
                // A request picked up late (every connection was busy: the relay is behind) counts from its due
                // time. One picked up early waits and counts from when it is sent: the timer wakes up to a
                // millisecond late, which is the load generator's delay, not the relay's.
                let mut late_since = None;
                if let Some(due) = due {
                    if due >= until {
                        break;
                    }
                    if due <= Instant::now() {
                        late_since = Some(due);
                    } else {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                if connection.is_none() {
                    match Connection::open(relay).await {
                        Ok(opened) => connection = Some(opened),
                        Err(_) => {
                            tally.errors += 1;
                            continue;
                        }
                    }
                }
                let sent = late_since.unwrap_or_else(Instant::now);
                let result = connection.as_mut().expect("opened above").exchange(&capture.wire).await;
                let elapsed = sent.elapsed();
                match result {
                    Ok((status, keep_alive)) => {
                        tally
                            .latencies_us
                            .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                        *tally.statuses.entry(status).or_default() += 1;
                        tally.wire_bytes += capture.wire.len() as u64;
                        tally.body_bytes += capture.body.len() as u64;
                        tally.envelope_bytes += capture.envelope_len;
                        if !keep_alive {
                            connection = None;
                        }
                    }
                    Err(_) => {
                        tally.errors += 1;
                        connection = None;
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await.expect("worker does not panic");
        total.latencies_us.extend(tally.latencies_us);
        for (status, count) in tally.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
        total.errors += tally.errors;
        total.wire_bytes += tally.wire_bytes;
        total.body_bytes += tally.body_bytes;
        total.envelope_bytes += tally.envelope_bytes;
    }
    stop.store(true, Ordering::Relaxed);
    (total, started.elapsed())
}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() {
    let options = Options::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let scenarios: &[&str] = match options.only.as_deref() {
        None => &["mix", "single"],
        Some("mix") => &["mix"],
        Some("single") => &["single"],
        Some(other) => panic!("--only takes mix or single, not {other}"),
    };
    for scenario in scenarios {
        runtime.block_on(run(&options, scenario));
    }
}

/// One scenario against a fresh relay process: `mix` (every capture) or `single` (`--capture`).
async fn run(options: &Options, scenario: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tls = options.sink_tls.as_deref().map(|alpn| sink_tls(root, alpn));
    let (sink, sink_counts) = start_sink(options.sink_latency, tls).await;
    // With a TLS sink the relay trusts the test CA only (`roots` stays an empty directory, kept until the run ends).
    let roots = options
        .sink_tls
        .is_some()
        .then(|| tempfile::tempdir().expect("temporary directory"));

    // Pick a free port for the relay; the tiny window between closing this listener and the relay binding it
    // is acceptable for a benchmark on loopback.
    let relay = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("address")
    };
    let binary = options
        .relay_binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_scrub-relay")));
    let mut command = match options.relay_cpu {
        Some(cpu) => {
            let mut command = tokio::process::Command::new("taskset");
            command.args(["-c".as_ref(), cpu.to_string().as_ref(), binary.as_os_str()]);
            command
        }
        None => tokio::process::Command::new(&binary),
    };
    if let Some(roots) = &roots {
        command
            .env("SSL_CERT_FILE", root.join("tests/fixtures/tls/ca.pem"))
            .env("SSL_CERT_DIR", roots.path());
    }
    let mut child = command
        .args(relay_arguments(relay, sink, options.sink_tls.is_some(), root))
        .args(&options.relay_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay binary (and taskset, with --relay-cpu)");
    // taskset execs the relay, so the pid is the relay's either way.
    let pid = child.id().expect("relay pid");
    wait_until_ready(relay, Duration::from_secs(20)).await;

    let mut captures = load_captures(&root.join("tests/fixtures/sdk"), relay);
    if scenario == "single" {
        captures.retain(|capture| capture.label == options.capture);
        assert!(!captures.is_empty(), "no capture labelled {}", options.capture);
        if options.vary > 0 {
            captures = varied_captures(&captures[0], options.vary);
        }
    }
    let captures = Arc::new(captures);
    let mix_envelope: u64 = captures.iter().map(|capture| capture.envelope_len).sum();
    let mix_body: u64 = captures.iter().map(|capture| capture.body.len() as u64).sum();
    println!();
    println!(
        "## {scenario}: replaying {} (mean body {} B on the wire, {} B decompressed) over {} connections{}",
        if scenario == "single" && options.vary > 0 {
            format!("{} versions of {}", options.vary, options.capture)
        } else if scenario == "single" {
            options.capture.clone()
        } else {
            format!("{} captures round-robin", captures.len())
        },
        mix_body / captures.len() as u64,
        mix_envelope / captures.len() as u64,
        options.connections,
        options
            .relay_cpu
            .map_or(String::new(), |cpu| format!(", relay pinned to CPU {cpu}"))
    );
    if let Some(bad) = captures.iter().find(|capture| capture.wire.is_empty()) {
        panic!("capture {} is empty", bad.label);
    }

    if options.warmup > 0 {
        let until = Instant::now() + Duration::from_secs(options.warmup);
        let (warm, _) = drive(
            relay,
            Arc::clone(&captures),
            options.connections,
            until,
            u64::MAX,
            options.rate,
        )
        .await;
        println!("warm-up: {} requests in {} s", warm.latencies_us.len(), options.warmup);
    }

    let forwarded_before = sink_counts.requests.load(Ordering::Relaxed);
    let sink_bytes_before = sink_counts.bytes.load(Ordering::Relaxed);
    let relay_cpu_before = process_cpu(pid).unwrap_or_default();
    let own_cpu_before = process_cpu_seconds(std::process::id()).unwrap_or(0.0);
    let machine_before = machine_busy_seconds().unwrap_or(0.0);
    let until = Instant::now() + Duration::from_secs(options.seconds);
    let (mut tally, elapsed) = drive(
        relay,
        Arc::clone(&captures),
        options.connections,
        until,
        options.requests,
        options.rate,
    )
    .await;
    let relay_cpu_after = process_cpu(pid).unwrap_or_default();
    let relay_user = relay_cpu_after.user - relay_cpu_before.user;
    let relay_system = relay_cpu_after.system - relay_cpu_before.system;
    let relay_cpu = relay_user + relay_system;
    let own_cpu = process_cpu_seconds(std::process::id()).unwrap_or(0.0) - own_cpu_before;
    let machine = machine_busy_seconds().unwrap_or(0.0) - machine_before;

    // The relay may answer before it forwards; wait (bounded) for its queue to drain before counting.
    let drain_started = Instant::now();
    let mut last = sink_counts.requests.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sink_counts.requests.load(Ordering::Relaxed);
        if now == last || drain_started.elapsed() > Duration::from_secs(30) {
            break;
        }
        last = now;
    }
    let forwarded = sink_counts.requests.load(Ordering::Relaxed) - forwarded_before;
    let forwarded_bytes = sink_counts.bytes.load(Ordering::Relaxed) - sink_bytes_before;

    tally.latencies_us.sort_unstable();
    let seconds = elapsed.as_secs_f64();
    let requests = tally.latencies_us.len() as f64;
    let mb = |bytes: u64| bytes as f64 / 1_000_000.0 / seconds;
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| duration | {seconds:.1} s |");
    println!("| connections | {} |", options.connections);
    if let Some(rate) = options.rate {
        println!("| schedule | {rate} requests/s, open loop (a late request's latency from its due time) |");
    }
    println!(
        "| requests answered | {} ({:.0} req/s) |",
        tally.latencies_us.len(),
        requests / seconds
    );
    println!("| statuses | {:?} |", tally.statuses);
    println!("| transport errors | {} |", tally.errors);
    println!("| request bodies on the wire | {:.2} MB/s |", mb(tally.body_bytes));
    println!("| requests incl. HTTP framing | {:.2} MB/s |", mb(tally.wire_bytes));
    println!("| envelopes decompressed | {:.2} MB/s |", mb(tally.envelope_bytes));
    println!(
        "| latency p50 / p90 / p99 / max | {:.2} / {:.2} / {:.2} / {:.2} ms |",
        percentile(&tally.latencies_us, 0.50),
        percentile(&tally.latencies_us, 0.90),
        percentile(&tally.latencies_us, 0.99),
        percentile(&tally.latencies_us, 1.0)
    );
    println!(
        "| relay CPU | {relay_cpu:.1} s over {seconds:.1} s = {:.2} cores |",
        relay_cpu / seconds
    );
    println!(
        "| relay CPU per 1000 requests | {:.3} s |",
        relay_cpu / requests * 1000.0
    );
    // The split tells a slower day for the relay's own code from a slower day for the kernel's loopback path.
    println!(
        "| relay CPU per envelope, user + system | {:.1} + {:.1} µs |",
        relay_user / requests * 1e6,
        relay_system / requests * 1e6
    );
    println!(
        "| **envelopes answered per relay CPU-second** | **{:.0}** |",
        requests / relay_cpu.max(f64::EPSILON)
    );
    println!(
        "| load generator + sink CPU | {own_cpu:.1} s = {:.2} cores |",
        own_cpu / seconds
    );
    // The machine may be shared (CI, other builds): say how much CPU went to anything else during the run.
    println!(
        "| other processes on the machine | {:.2} cores of {} |",
        (machine - relay_cpu - own_cpu).max(0.0) / seconds,
        machine_cpus()
    );
    println!(
        "| forwarded to the sink | {forwarded} envelopes, {:.2} MB/s |",
        mb(forwarded_bytes)
    );

    println!("| relay peak RSS | {:.0} MiB |", peak_rss_mib(pid).unwrap_or(0.0));

    child.kill().await.ok();
    let _ = child.wait().await;
}

/// Command-line arguments that start the relay on `relay`, forwarding to the sink, with the shipped rules.
fn relay_arguments(relay: SocketAddr, sink: SocketAddr, tls: bool, root: &Path) -> Vec<String> {
    let mut arguments = vec!["run".to_owned(), "--listen".to_owned(), relay.to_string()];
    let upstream = if tls {
        format!("https://localhost:{}", sink.port())
    } else {
        format!("http://{sink}")
    };
    arguments.extend(["--upstream".to_owned(), upstream]);
    let rules = root.join("rules.yaml");
    if rules.exists() {
        arguments.extend(["--rules".to_owned(), rules.to_string_lossy().into_owned()]);
    }
    arguments
}
