//! The delivery guarantee, end to end: a real relay (in process, or the built binary when the test kills it) in front
//! of MiniSentry, with a TCP switch between them that cuts and restores the upstream on the same port.
//!
//! - an outage under steady traffic: every envelope answered 200 arrives after the upstream comes back, exactly once;
//! - `kill -9` while the upstream is down: what reached the spool is delivered by the next start;
//! - an upstream 429 with rate limits: the SDK gets 429 for that category, other categories still flow;
//! - a corrupt spool entry: counted, logged without payload, the rest delivered;
//! - backpressure: full queue (no spool) and upstream down gives 503 with `Retry-After`;
//! - a graceful shutdown with envelopes still queued: they go to the spool, and the next start delivers them.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use common::{MiniSentry, RelayHandle, WAIT, post_envelope, relay_config, start_relay, wait_until};
use scrub_relay::config::Config;
use scrub_relay::delivery::DataCategory;

const KEY: &str = "e12d836b15bb49d7bbf99e64295d995b";
const PROJECT: u64 = 42;

/// A TCP forwarder on a fixed loopback port in front of MiniSentry. `cut` closes the port and every connection
/// through it (the relay sees "connection refused"); `restore` listens on the same port again.
struct Switch {
    addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Switch {
    async fn start(target: SocketAddr) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind switch");
        let addr = listener.local_addr().expect("switch addr");
        let mut switch = Switch {
            addr,
            target,
            accept: None,
        };
        switch.serve(listener);
        switch
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        self.accept = Some(tokio::spawn(async move {
            // Owned by this task: aborting the task drops the set, which aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
    }

    async fn restore(&mut self) {
        // tokio sets SO_REUSEADDR, so the port can be bound again right after the old sockets closed.
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the switch on the same port");
        self.serve(listener);
    }
}

fn event_id(n: usize) -> String {
    format!("{n:032x}")
}

fn id_number(event_id: &str) -> usize {
    usize::from_str_radix(&event_id.replace('-', ""), 16).expect("hex event id")
}

fn event(n: usize) -> Vec<u8> {
    common::event_envelope(&event_id(n))
}

fn envelope_with(n: usize, items: &[&str]) -> Vec<u8> {
    let mut body = format!("{{\"event_id\":\"{}\"}}\n", event_id(n));
    for item in items {
        body.push_str(&format!("{{\"type\":\"{item}\"}}\n{{\"n\":{n}}}\n"));
    }
    body.into_bytes()
}

/// A relay config with fast retries, forwarding through `upstream_url`.
fn fast_config(upstream: &MiniSentry, upstream_url: &str, spool: Option<&Path>) -> Config {
    let mut config = relay_config(upstream);
    config.upstream = url::Url::parse(upstream_url).expect("upstream URL");
    config.upstream_connect_timeout = Duration::from_secs(2);
    config.retry_initial_backoff = Duration::from_millis(10);
    config.retry_max_backoff = Duration::from_millis(100);
    config.spool_dir = spool.map(Path::to_path_buf);
    config
}

/// Collects envelopes MiniSentry received until `expected` distinct event ids are in; returns them in arrival order
/// with duplicates kept.
async fn receive_ids(upstream: &MiniSentry, expected: usize) -> Vec<usize> {
    let mut ids = Vec::new();
    let mut distinct = HashSet::new();
    while distinct.len() < expected {
        let recorded = upstream.next().await;
        let id = id_number(recorded.envelope().event_id().expect("event id"));
        distinct.insert(id);
        ids.push(id);
    }
    ids
}

fn gauge(relay: &RelayHandle, which: fn(&scrub_relay::metrics::Metrics) -> i64) -> i64 {
    which(relay.metrics())
}

#[tokio::test]
async fn an_outage_under_steady_traffic_loses_nothing_and_duplicates_nothing() {
    let spool = tempfile::tempdir().expect("spool dir");
    let upstream = MiniSentry::start().await;
    let mut switch = Switch::start(upstream.addr).await;
    let mut config = fast_config(&upstream, &switch.url(), Some(spool.path()));
    // Arrival order is kept give or take the envelopes in flight at once: few workers make that window narrow.
    config.upstream_concurrency = 8;
    let relay = start_relay(config.clone()).await;

    // Healthy: the first envelopes flow straight through.
    for n in 0..5 {
        assert_eq!(post_envelope(&relay, PROJECT, KEY, &event(n)).await.status, 200);
    }
    assert_eq!(receive_ids(&upstream, 5).await, vec![0, 1, 2, 3, 4]);

    switch.cut().await;
    for n in 5..35 {
        let response = post_envelope(&relay, PROJECT, KEY, &event(n)).await;
        assert_eq!(response.status, 200, "accepted while the upstream is down");
    }
    // Everything accepted during the outage ends up on disk.
    wait_until("the outage's envelopes are spooled", || {
        gauge(&relay, |m| m.spool_envelopes.get()) == 30 && gauge(&relay, |m| m.queue_envelopes.get()) == 0
    })
    .await;
    assert!(relay.metrics().upstream_retries.get() >= 1);

    switch.restore().await;
    let ids = receive_ids(&upstream, 30).await;
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (5..35).collect::<Vec<_>>(), "each envelope exactly once");
    // The probe that finds the upstream back is one fresh envelope; after it, arrival order give or take the
    // envelopes in flight at once.
    let workers = config.upstream_concurrency;
    let rest: Vec<usize> = ids[1..].iter().copied().filter(|id| *id != ids[0]).collect();
    let expected: Vec<usize> = (5..35).filter(|id| *id != ids[0]).collect();
    for (position, id) in rest.iter().enumerate() {
        assert!(
            id.abs_diff(expected[position]) <= workers,
            "{id} arrived at position {position}: order {ids:?}"
        );
    }
    wait_until("spool drained", || gauge(&relay, |m| m.spool_envelopes.get()) == 0).await;
    assert!(
        upstream.try_next().await.is_none(),
        "no duplicate arrived after the last one"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn an_upstream_429_limits_that_category_and_others_still_flow() {
    let upstream = MiniSentry::start().await;
    upstream.answer_next(common::Answer::rate_limited("60", "60:error:project:quota_exceeded"));
    let relay = start_relay(fast_config(&upstream, &upstream.url(), None)).await;

    // The first error is accepted; the upstream answers it with 429 and a limit on errors.
    assert_eq!(post_envelope(&relay, PROJECT, KEY, &event(1)).await.status, 200);
    upstream.next().await;
    let delivery = relay.state.delivery.clone();
    wait_until("the limit is known", || {
        delivery
            .rate_limits()
            .limited_until(PROJECT, Some(DataCategory::Error), tokio::time::Instant::now())
            .is_some()
    })
    .await;

    // The SDK's next error is refused, with the headers Sentry SDKs obey.
    let refused = post_envelope(&relay, PROJECT, KEY, &event(2)).await;
    assert_eq!(refused.status, 429);
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let limits = refused.header("x-sentry-rate-limits").expect("X-Sentry-Rate-Limits");
    assert!(limits.contains(":error:"), "{limits}");

    // Another project, and other categories of this one, still flow.
    assert_eq!(post_envelope(&relay, PROJECT + 1, KEY, &event(3)).await.status, 200);
    assert_eq!(id_number(upstream.next().await.envelope().event_id().unwrap()), 3);
    let mixed = post_envelope(&relay, PROJECT, KEY, &envelope_with(4, &["event", "transaction"])).await;
    assert_eq!(mixed.status, 200);
    let forwarded = upstream.next().await;
    let types: Vec<&str> = forwarded.envelope().items.iter().map(|item| item.type_name()).collect();
    assert_eq!(types, vec!["transaction"], "the limited error item is not sent");
    assert!(
        relay
            .metrics()
            .items_dropped
            .with_label_values(&["event", "rate_limited"])
            .get()
            >= 2
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_without_spool_answers_503_with_retry_after() {
    let upstream = MiniSentry::start().await;
    let mut switch = Switch::start(upstream.addr).await;
    switch.cut().await;
    let mut config = fast_config(&upstream, &switch.url(), None);
    config.queue_max_envelopes = 2;
    let relay = start_relay(config).await;

    assert_eq!(post_envelope(&relay, PROJECT, KEY, &event(1)).await.status, 200);
    assert_eq!(post_envelope(&relay, PROJECT, KEY, &event(2)).await.status, 200);
    let refused = post_envelope(&relay, PROJECT, KEY, &event(3)).await;
    assert_eq!(refused.status, 503);
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let ready = common::send_raw(relay.addr, "GET", "/readyz", &[], b"", false).await;
    assert_eq!(ready.status, 503, "not ready while full");
    let scrape = common::send_raw(relay.addr, "GET", "/metrics", &[], b"", false).await;
    assert!(
        String::from_utf8_lossy(&scrape.body)
            .lines()
            .any(|line| line == "scrub_relay_ready 0"),
        "the ready gauge agrees with /readyz"
    );

    switch.restore().await;
    assert_eq!(
        receive_ids(&upstream, 2).await.len(),
        2,
        "what was accepted is delivered"
    );
    wait_until("queue drained", || gauge(&relay, |m| m.queue_envelopes.get()) == 0).await;
    assert_eq!(
        post_envelope(&relay, PROJECT, KEY, &event(4)).await.status,
        200,
        "accepting again"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_spools_what_it_could_not_send_and_the_next_start_delivers_it() {
    let spool = tempfile::tempdir().expect("spool dir");
    let upstream = MiniSentry::start().await;
    // An upstream that takes every request and never answers in time: envelopes stay in memory (nothing failed, so
    // nothing was spooled yet), some of them in flight when shutdown begins.
    upstream.answer_always(common::Answer::ok().delay(Duration::from_secs(30)));
    let mut config = fast_config(&upstream, &upstream.url(), Some(spool.path()));
    config.shutdown_timeout = Duration::from_millis(300);
    // Fewer workers than envelopes: some are in flight and the rest wait in the queue when shutdown begins.
    config.upstream_concurrency = 8;
    let relay = start_relay(config.clone()).await;
    for n in 0..20 {
        assert_eq!(post_envelope(&relay, PROJECT, KEY, &event(n)).await.status, 200);
    }
    // Every worker holds one unanswered request.
    let workers = config.upstream_concurrency;
    wait_until("every worker is waiting on the upstream", || {
        upstream.received() == workers
    })
    .await;
    assert_eq!(
        relay.metrics().spool_envelopes.get(),
        0,
        "the upstream is slow, not failing: nothing spooled yet"
    );
    let metrics = relay.state.metrics.clone();
    relay.shutdown().await;
    assert_eq!(
        metrics.spool_envelopes.get(),
        20,
        "everything not delivered is on disk after shutdown"
    );
    assert_eq!(metrics.queue_envelopes.get(), 0);
    assert_eq!(metrics.envelopes_dropped.with_label_values(&["shutdown"]).get(), 0);

    // Forget what the first relay had in flight (never answered), then deliver for real.
    assert_eq!(upstream.next_n(workers).await.len(), workers);
    upstream.answer_always(common::Answer::ok());
    let relay = start_relay(config).await;
    let ids = receive_ids(&upstream, 20).await;
    assert_eq!(ids.len(), 20, "each spooled envelope once: {ids:?}");
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    wait_until("spool drained", || gauge(&relay, |m| m.spool_envelopes.get()) == 0).await;
    assert!(upstream.try_next().await.is_none(), "no duplicates");
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// The built binary, for the tests that kill it or read its logs

struct Binary {
    child: tokio::process::Child,
    addr: SocketAddr,
    logs: tokio::sync::mpsc::UnboundedReceiver<String>,
}

fn free_port() -> SocketAddr {
    // Bound and released at once; the binary binds it right after. Loopback ports are not handed out again that fast.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn spawn_binary(upstream: &str, spool: &Path) -> Binary {
    let addr = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scrub-relay"))
        .args(["run", "--listen", &addr.to_string(), "--upstream", upstream])
        .arg("--spool-dir")
        .arg(spool)
        .args([
            "--retry-initial-backoff",
            "10ms",
            "--retry-max-backoff",
            "100ms",
            "--upstream-connect-timeout",
            "2s",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn scrub-relay");
    let (tx, mut logs) = tokio::sync::mpsc::unbounded_channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    // Serving once it accepts connections (it binds after the spool is opened and the workers started).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay binary did not start serving"
        );
        if let Ok(Some(status)) = child.try_wait() {
            let mut output = Vec::new();
            while let Ok(line) = logs.try_recv() {
                output.push(line);
            }
            panic!("the relay binary exited with {status}: {}", output.join("\n"));
        }
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Binary { child, addr, logs }
}

impl Binary {
    async fn post(&self, body: &[u8]) -> common::RawResponse {
        let auth = format!("Sentry sentry_key={KEY}, sentry_version=7, sentry_client=test/1.0");
        common::send_raw(
            self.addr,
            "POST",
            &format!("/api/{PROJECT}/envelope/"),
            &common::headers(&[("X-Sentry-Auth", &auth)]),
            body,
            false,
        )
        .await
    }

    /// The value of an unlabelled metric from `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let response = common::send_raw(self.addr, "GET", "/metrics", &[], b"", false).await;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait_for_metric(&self, name: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let current = self.metric(name).await;
            if current == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at {current}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a log line containing `needle`.
    async fn wait_for_log(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(line) = self.logs.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("the relay exited before logging {needle:?}");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    }
}

#[tokio::test]
async fn kill_9_while_the_upstream_is_down_loses_nothing_that_reached_the_spool() {
    let spool = tempfile::tempdir().expect("spool dir");
    let upstream = MiniSentry::start().await;
    let mut switch = Switch::start(upstream.addr).await;
    switch.cut().await;

    let mut relay = spawn_binary(&switch.url(), spool.path()).await;
    for n in 0..20 {
        assert_eq!(relay.post(&event(n)).await.status, 200);
    }
    relay.wait_for_metric("scrub_relay_spool_envelopes", 20.0).await;
    relay.child.start_kill().expect("SIGKILL");
    relay.child.wait().await.expect("reaped");

    switch.restore().await;
    let relay = spawn_binary(&switch.url(), spool.path()).await;
    let mut ids = receive_ids(&upstream, 20).await;
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..20).collect::<Vec<_>>(),
        "everything acknowledged before the kill is delivered once"
    );
    relay.wait_for_metric("scrub_relay_spool_envelopes", 0.0).await;
    assert!(upstream.try_next().await.is_none(), "no duplicates");
}

#[tokio::test]
async fn a_corrupt_spool_entry_is_reported_and_the_rest_delivered() {
    use scrub_relay::delivery::Job;
    use scrub_relay::delivery::spool::{Spool, SpoolConfig, SpoolMetrics};

    let spool_dir = tempfile::tempdir().expect("spool dir");
    let secret = "payload-marker-7f3a";
    {
        let metrics = scrub_relay::metrics::Metrics::new();
        let spool_metrics = SpoolMetrics {
            envelopes: metrics.spool_envelopes.clone(),
            bytes: metrics.spool_bytes.clone(),
            corrupt: metrics.spool_corrupt.clone(),
        };
        let config = SpoolConfig {
            dir: spool_dir.path().to_path_buf(),
            max_bytes: 1 << 20,
        };
        let (spool, _) = Spool::open(config, spool_metrics).expect("open spool");
        for n in 0..3u64 {
            let body = format!(
                "{{\"event_id\":\"{}\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"{secret}\"}}\n",
                event_id(n as usize)
            );
            let job = Job {
                project_id: PROJECT,
                public_key: KEY.into(),
                sentry_client: Some("test/1.0".into()),
                user_agent: None,
                forwarded_for: None,
                envelope: body.into(),
                encoded: None,
                received_at: std::time::SystemTime::now(),
                destination: scrub_relay::delivery::Destination::Envelope,
            };
            spool.write(n, &job).expect("write entry");
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(spool_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let truncated = std::fs::read(&entries[1]).unwrap();
    std::fs::write(&entries[1], &truncated[..truncated.len() - 5]).unwrap();

    let upstream = MiniSentry::start().await;
    let mut relay = spawn_binary(&upstream.url(), spool_dir.path()).await;
    let mut ids = receive_ids(&upstream, 2).await;
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 2]);
    let line = relay.wait_for_log("corrupt").await;
    assert!(!line.contains(secret), "the log line carries no payload: {line}");
    relay.wait_for_metric("scrub_relay_spool_corrupt_total", 1.0).await;
    relay.wait_for_metric("scrub_relay_spool_envelopes", 0.0).await;
    assert!(
        spool_dir
            .path()
            .join("corrupt")
            .join(entries[1].file_name().unwrap())
            .exists(),
        "moved aside"
    );
}
