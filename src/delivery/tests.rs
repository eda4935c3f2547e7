//! Delivery against a scripted upstream: ordering, outage and recovery, backpressure, shutdown, rate limits and the
//! spool. The real HTTP path is covered end to end in `tests/delivery.rs`; here the upstream's answers are scripted so
//! each rule can be checked on its own, with paused time where backoff or `Retry-After` matters.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

type Script = Box<dyn Fn(&Job) -> Option<Result<UpstreamReply, SendError>> + Send + Sync>;

/// A scripted upstream: answers each attempt with the script (`None` = never answer), records what it accepted.
struct ScriptedUpstream {
    script: Mutex<Script>,
    attempts: AtomicUsize,
    delivered: Mutex<Vec<Job>>,
    changed: watch::Sender<usize>,
}

impl ScriptedUpstream {
    fn new(script: Script) -> Arc<ScriptedUpstream> {
        Arc::new(ScriptedUpstream {
            script: Mutex::new(script),
            attempts: AtomicUsize::new(0),
            delivered: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        })
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
        self.changed.send_modify(|n| *n += 1);
    }

    fn delivered_ids(&self) -> Vec<usize> {
        self.delivered.lock().unwrap().iter().map(job_id).collect()
    }

    /// Waits (bounded) until `condition` holds, re-checking after every attempt the upstream sees.
    async fn wait_for(&self, what: &str, condition: impl Fn(&ScriptedUpstream) -> bool) {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                changed.borrow_and_update();
                if condition(self) {
                    return;
                }
                changed.changed().await.expect("sender lives in self");
            }
        };
        tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
    }
}

impl Transport for ScriptedUpstream {
    fn send<'a>(&'a self, job: &'a Job) -> Pin<Box<dyn Future<Output = Result<UpstreamReply, SendError>> + Send + 'a>> {
        Box::pin(async move {
            let answer = (self.script.lock().unwrap())(job);
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let Some(answer) = answer else {
                self.changed.send_modify(|n| *n += 1);
                return std::future::pending().await;
            };
            if matches!(&answer, Ok(reply) if (200..300).contains(&reply.status)) {
                self.delivered.lock().unwrap().push(job.clone());
            }
            self.changed.send_modify(|n| *n += 1);
            answer
        })
    }
}

/// Polls a condition the upstream's attempts do not signal (gauges updated after the attempt), with a deadline.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let poll = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
}

fn reply(status: u16) -> Option<Result<UpstreamReply, SendError>> {
    Some(Ok(UpstreamReply {
        status,
        retry_after: None,
        rate_limits: None,
    }))
}

fn accept() -> Script {
    Box::new(|_| reply(200))
}

fn down() -> Script {
    Box::new(|_| Some(Err(SendError::Network)))
}

fn job_with(id: usize, items: &[&str]) -> Job {
    let mut envelope = format!("{{\"event_id\":\"{id:032x}\"}}\n");
    for item in items {
        envelope.push_str(&format!("{{\"type\":\"{item}\"}}\n{{\"n\":{id}}}\n"));
    }
    Job {
        project_id: 42,
        public_key: "e12d836b15bb49d7bbf99e64295d995b".into(),
        sentry_client: Some("sentry.test/1.0".into()),
        user_agent: None,
        forwarded_for: None,
        envelope: Bytes::from(envelope),
        encoded: None,
        received_at: SystemTime::now(),
        destination: Destination::Envelope,
    }
}

fn job(id: usize) -> Job {
    job_with(id, &["event"])
}

fn job_id(job: &Job) -> usize {
    let envelope = Envelope::parse(job.envelope.clone()).expect("test envelopes parse");
    usize::from_str_radix(envelope.event_id().expect("has an id"), 16).expect("hex id")
}

fn item_types(job: &Job) -> Vec<String> {
    let envelope = Envelope::parse(job.envelope.clone()).expect("test envelopes parse");
    envelope.items.iter().map(|item| item.type_name().to_string()).collect()
}

fn config(spool_dir: Option<&std::path::Path>) -> DeliveryConfig {
    DeliveryConfig {
        workers: 1,
        queue_max_envelopes: 1000,
        queue_max_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        spool: spool_dir.map(|dir| SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
        }),
        backoff: Backoff {
            initial: Duration::from_millis(2),
            max: Duration::from_millis(10),
        },
    }
}

fn start(config: DeliveryConfig, upstream: &Arc<ScriptedUpstream>) -> (Delivery, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let delivery = Delivery::start(config, upstream.clone(), metrics.clone()).expect("delivery starts");
    (delivery, metrics)
}

/// Lets the worker of a current-thread runtime run until it waits for an envelope.
async fn until_idle(delivery: &Delivery) {
    while delivery.shared.lock().idle_workers == 0 {
        tokio::task::yield_now().await;
    }
}

/// On one busy runtime thread, ingest yields to a worker that was woken but not polled yet, instead of queueing ahead
/// of it; a worker busy on a slow upstream does not make ingest wait (the queue absorbs that).
#[tokio::test(flavor = "current_thread")]
async fn ingest_waits_only_for_workers_the_runtime_has_not_polled() {
    let upstream = ScriptedUpstream::new(accept());
    let (delivery, _metrics) = start(config(None), &upstream);
    until_idle(&delivery).await;
    // Queued without yielding, as a CPU-bound runtime queues them: the woken worker has not run.
    for id in 0..=STARVED_QUEUE {
        delivery.submit(job(id)).await.expect("accepted");
    }
    assert!(!delivery.keeps_up());
    assert_eq!(upstream.attempts.load(Ordering::SeqCst), 0);
    delivery.wait_for_idle_workers().await;
    assert!(
        upstream.attempts.load(Ordering::SeqCst) >= 1,
        "the worker ran before ingest went on"
    );

    // The upstream never answers: the worker is busy, not starved, and a long queue does not hold ingest.
    let upstream = ScriptedUpstream::new(Box::new(|_| None));
    let (delivery, _metrics) = start(config(None), &upstream);
    until_idle(&delivery).await;
    delivery.submit(job(0)).await.expect("accepted");
    upstream
        .wait_for("the worker holds the first envelope", |u| {
            u.attempts.load(Ordering::SeqCst) == 1
        })
        .await;
    for id in 1..=2 * STARVED_QUEUE {
        delivery.submit(job(id)).await.expect("accepted");
    }
    assert!(!delivery.keeps_up());
    // A guard against hanging, not a timing assertion: the wait returns without any worker running.
    tokio::time::timeout(Duration::from_secs(60), delivery.wait_for_idle_workers())
        .await
        .expect("ingest does not wait for a worker busy on the upstream");
}

#[tokio::test]
async fn delivers_everything_once_in_order_after_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = ScriptedUpstream::new(down());
    let (delivery, metrics) = start(config(Some(dir.path())), &upstream);

    delivery.submit(job(0)).await.expect("accepted");
    // The first failure moves the memory queue to the spool.
    upstream
        .wait_for("first failure", |u| u.attempts.load(Ordering::SeqCst) >= 1)
        .await;
    for id in 1..30 {
        delivery
            .submit(job(id))
            .await
            .expect("accepted while the upstream is down");
    }
    // While the upstream is down every accepted envelope ends up on disk.
    eventually("all spooled", || {
        metrics.spool_envelopes.get() == 30 && metrics.queue_envelopes.get() == 0
    })
    .await;
    assert!(metrics.upstream_retries.get() >= 1);

    upstream.set(accept());
    upstream
        .wait_for("all delivered", |u| u.delivered.lock().unwrap().len() >= 30)
        .await;
    let ids = upstream.delivered_ids();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..30).collect::<Vec<_>>(), "once each");
    // The probe that finds the upstream back is a fresh envelope; after it, arrival order.
    let mut after_probe = ids[1..].to_vec();
    after_probe.sort_unstable();
    assert_eq!(ids[1..], after_probe[..], "in arrival order after the probe: {ids:?}");
    assert_eq!(metrics.envelopes_forwarded.get(), 30);
    let report = delivery.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report, ShutdownReport::default());
    assert_eq!(metrics.spool_envelopes.get(), 0);
    assert_eq!(metrics.queue_envelopes.get(), 0);
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        0
    );
}

#[tokio::test]
async fn memory_only_relay_refuses_when_full() {
    let upstream = ScriptedUpstream::new(down());
    let config = DeliveryConfig {
        queue_max_envelopes: 2,
        ..config(None)
    };
    let (delivery, metrics) = start(config, &upstream);
    delivery.submit(job(0)).await.expect("room for two");
    delivery.submit(job(1)).await.expect("room for two");
    assert!(delivery.is_full());
    let refused = delivery.submit(job(2)).await.expect_err("third is refused");
    assert!(matches!(refused, Rejected::Full { retry_after_secs } if retry_after_secs >= 1));
    assert_eq!(metrics.queue_envelopes.get(), 2);

    upstream.set(accept());
    upstream
        .wait_for("both delivered", |u| u.delivered.lock().unwrap().len() == 2)
        .await;
    assert_eq!(upstream.delivered_ids(), vec![0, 1]);
    assert!(!delivery.is_full());
}

#[tokio::test]
async fn memory_and_spool_full_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = ScriptedUpstream::new(down());
    let entry_size = spool::encode(&job(0)).len() as u64;
    let mut config = config(Some(dir.path()));
    config.queue_max_envelopes = 1;
    // Room for two entries, not three (entries differ by a few bytes: lz4 compresses some ids better).
    config.spool.as_mut().unwrap().max_bytes = entry_size * 2 + entry_size / 2;
    let (delivery, metrics) = start(config, &upstream);
    delivery.submit(job(0)).await.expect("accepted");
    upstream
        .wait_for("first failure", |u| u.attempts.load(Ordering::SeqCst) >= 1)
        .await;
    eventually("first spooled", || {
        metrics.spool_envelopes.get() == 1 && metrics.queue_envelopes.get() == 0
    })
    .await;
    delivery.submit(job(1)).await.expect("spool has room");
    // The spool holds two entries; the memory queue takes one more.
    delivery.submit(job(2)).await.expect("memory has room");
    assert!(delivery.is_full());
    assert!(matches!(delivery.submit(job(3)).await, Err(Rejected::Full { .. })));

    upstream.set(accept());
    upstream
        .wait_for("all delivered", |u| u.delivered.lock().unwrap().len() == 3)
        .await;
    let mut ids = upstream.delivered_ids();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
}

#[tokio::test]
async fn shutdown_spools_what_it_could_not_send_and_the_next_start_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    // An upstream that never answers: envelopes stay in memory, one of them in flight.
    let hanging = ScriptedUpstream::new(Box::new(|_| None));
    let (delivery, metrics) = start(config(Some(dir.path())), &hanging);
    for id in 0..5 {
        delivery.submit(job(id)).await.expect("accepted");
    }
    hanging
        .wait_for("one in flight", |u| u.attempts.load(Ordering::SeqCst) >= 1)
        .await;
    let report = delivery.shutdown(Duration::from_millis(20)).await;
    assert_eq!(report, ShutdownReport { spooled: 5, lost: 0 });
    assert_eq!(metrics.spool_envelopes.get(), 5);
    assert_eq!(metrics.queue_envelopes.get(), 0);

    let upstream = ScriptedUpstream::new(accept());
    let (delivery, _metrics) = start(config(Some(dir.path())), &upstream);
    upstream
        .wait_for("replayed", |u| u.delivered.lock().unwrap().len() == 5)
        .await;
    assert_eq!(upstream.delivered_ids(), vec![0, 1, 2, 3, 4], "replayed oldest first");
    delivery.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_without_spool_counts_what_is_lost() {
    let upstream = ScriptedUpstream::new(down());
    let (delivery, metrics) = start(config(None), &upstream);
    delivery.submit(job(0)).await.expect("accepted");
    let report = delivery.shutdown(Duration::from_millis(20)).await;
    assert_eq!(report, ShutdownReport { spooled: 0, lost: 1 });
    assert_eq!(metrics.envelopes_dropped.with_label_values(&["shutdown"]).get(), 1);
}

#[tokio::test]
async fn rejected_envelopes_are_dropped_not_retried() {
    let upstream = ScriptedUpstream::new(Box::new(|job| if job_id(job) == 0 { reply(400) } else { reply(200) }));
    let (delivery, metrics) = start(config(None), &upstream);
    delivery.submit(job(0)).await.unwrap();
    delivery.submit(job(1)).await.unwrap();
    upstream
        .wait_for("second delivered", |u| u.delivered.lock().unwrap().len() == 1)
        .await;
    assert_eq!(upstream.attempts.load(Ordering::SeqCst), 2, "the 400 was not retried");
    assert_eq!(
        metrics
            .envelopes_dropped
            .with_label_values(&["upstream_rejected"])
            .get(),
        1
    );
    assert_eq!(metrics.upstream_retries.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_429_limits_the_category_and_the_envelope_is_retried_after_retry_after() {
    let upstream = ScriptedUpstream::new(Box::new(|_| {
        Some(Ok(UpstreamReply {
            status: 429,
            retry_after: Some("30".into()),
            rate_limits: Some("30:error:project".into()),
        }))
    }));
    let (delivery, metrics) = start(config(None), &upstream);
    let started = Instant::now();
    delivery.submit(job(0)).await.unwrap();
    upstream
        .wait_for("429 answered", |u| u.attempts.load(Ordering::SeqCst) == 1)
        .await;

    // The SDK's next error is refused with the upstream's limit; its transactions still flow.
    let mut errors = Envelope::parse(job(1).envelope).unwrap();
    let limited = delivery
        .enforce_rate_limits(42, &mut errors)
        .expect_err("errors are limited");
    assert_eq!(limited.header, "30:error:project");
    assert!(limited.retry_after_secs <= 30 && limited.retry_after_secs >= 29);
    let mut mixed = Envelope::parse(job_with(2, &["event", "transaction"]).envelope).unwrap();
    delivery
        .enforce_rate_limits(42, &mut mixed)
        .expect("the transaction flows");
    assert_eq!(mixed.items.len(), 1);
    assert_eq!(
        metrics
            .items_dropped
            .with_label_values(&["event", "rate_limited"])
            .get(),
        2
    );

    upstream.set(accept());
    upstream
        .wait_for("retried after Retry-After", |u| u.delivered.lock().unwrap().len() == 1)
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "not before the limit expired: {:?}",
        started.elapsed()
    );
    assert_eq!(upstream.attempts.load(Ordering::SeqCst), 2, "held back, not hammered");
    assert_eq!(metrics.queue_envelopes.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn queued_items_of_a_limited_category_are_not_sent() {
    // The first answer announces a limit on attachments.
    let upstream = ScriptedUpstream::new(Box::new(|_| {
        Some(Ok(UpstreamReply {
            status: 200,
            retry_after: None,
            rate_limits: Some("60:attachment:project".into()),
        }))
    }));
    let (delivery, _metrics) = start(config(None), &upstream);
    delivery.submit(job(0)).await.unwrap();
    upstream
        .wait_for("first delivered", |u| u.delivered.lock().unwrap().len() == 1)
        .await;
    delivery.submit(job_with(1, &["event", "attachment"])).await.unwrap();
    upstream
        .wait_for("second delivered", |u| u.delivered.lock().unwrap().len() == 2)
        .await;
    let second = upstream.delivered.lock().unwrap()[1].clone();
    assert_eq!(
        item_types(&second),
        vec!["event"],
        "the attachment the upstream would refuse is not sent"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_sends_one_probe_at_a_time() {
    let upstream = ScriptedUpstream::new(Box::new(|_| Some(Err(SendError::Timeout))));
    let mut config = config(None);
    config.workers = 4;
    config.backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
    };
    let (delivery, metrics) = start(config, &upstream);
    for id in 0..8 {
        delivery.submit(job(id)).await.unwrap();
    }
    let started = Instant::now();
    upstream
        .wait_for("a few probes", |u| u.attempts.load(Ordering::SeqCst) >= 8)
        .await;
    // Up to four workers fail together at first; after that one probe per backoff step (0.5-1 s, 1-2 s, 2-4 s, ...),
    // so the eighth attempt comes after at least three steps.
    assert!(
        started.elapsed() >= Duration::from_millis(500 + 1000 + 2000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metrics.queue_envelopes.get(), 8, "nothing lost while failing");
    upstream.set(accept());
    upstream
        .wait_for("all delivered", |u| u.delivered.lock().unwrap().len() == 8)
        .await;
}

#[tokio::test]
async fn a_corrupt_spool_entry_is_moved_aside_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let metrics = Metrics::new();
        let spool_metrics = SpoolMetrics {
            envelopes: metrics.spool_envelopes.clone(),
            bytes: metrics.spool_bytes.clone(),
            corrupt: metrics.spool_corrupt.clone(),
        };
        let (spool, _) = Spool::open(
            SpoolConfig {
                dir: dir.path().to_path_buf(),
                max_bytes: 1 << 20,
            },
            spool_metrics,
        )
        .unwrap();
        for id in 0..3 {
            spool.write(id as u64, &job(id)).unwrap();
        }
    }
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let data = std::fs::read(&names[1]).unwrap();
    std::fs::write(&names[1], &data[..data.len() / 2]).unwrap();

    let upstream = ScriptedUpstream::new(accept());
    let (delivery, metrics) = start(config(Some(dir.path())), &upstream);
    upstream
        .wait_for("the others delivered", |u| u.delivered.lock().unwrap().len() == 2)
        .await;
    assert_eq!(upstream.delivered_ids(), vec![0, 2]);
    assert_eq!(metrics.spool_corrupt.get(), 1);
    assert!(dir.path().join("corrupt").join(names[1].file_name().unwrap()).exists());
    delivery.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn expired_envelopes_are_dropped() {
    let upstream = ScriptedUpstream::new(accept());
    let (delivery, metrics) = start(config(None), &upstream);
    let mut old = job(0);
    old.received_at = SystemTime::now() - Duration::from_secs(7200);
    delivery.submit(old).await.unwrap();
    delivery.submit(job(1)).await.unwrap();
    upstream
        .wait_for("fresh one delivered", |u| u.delivered.lock().unwrap().len() == 1)
        .await;
    assert_eq!(upstream.delivered_ids(), vec![1]);
    assert_eq!(metrics.envelopes_dropped.with_label_values(&["expired"]).get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_envelope_the_upstream_keeps_failing_does_not_hold_up_the_others() {
    let upstream = ScriptedUpstream::new(Box::new(|job| if job_id(job) == 0 { reply(503) } else { reply(200) }));
    let mut config = config(None);
    config.backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let (delivery, metrics) = start(config, &upstream);
    let started = Instant::now();
    for id in 0..10 {
        delivery.submit(job(id)).await.unwrap();
    }
    upstream
        .wait_for("the others delivered", |u| u.delivered.lock().unwrap().len() == 9)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "one failing envelope stalled the rest: {:?}",
        started.elapsed()
    );
    let attempts_on_the_bad_one = upstream.attempts.load(Ordering::SeqCst) - 9;
    assert!(
        attempts_on_the_bad_one <= 3,
        "retried hot: {attempts_on_the_bad_one} attempts"
    );
    assert_eq!(metrics.queue_envelopes.get(), 1, "still held, not dropped");

    upstream.set(accept());
    upstream
        .wait_for("the bad one delivered in the end", |u| {
            u.delivered.lock().unwrap().len() == 10
        })
        .await;
}
