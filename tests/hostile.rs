//! The relay's defences against hostile and broken clients, end to end on loopback: slow clients are cut, the memory
//! budget refuses with 503 and recovers, one client cannot take everyone's memory or connections, a compression bomb
//! stops at a bounded cost, small envelopes have their own lane (which bombs small on the wire leave), and health
//! answers while connections are saturated.
//! Every assertion is on statuses, answers and metrics, never on how long something took.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use scrub_relay::config::{Config, MIB};

const EVENT_ID: &str = "9ec79c33ec9942ab8353589fcb2e04dc";
const KEY: &str = "publickey123";
const AUTH: &str = "Sentry sentry_key=publickey123, sentry_version=7, sentry_client=test/1.0";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Opens a connection and sends the head of an envelope POST declaring `length` bytes, plus `extra` header lines.
async fn start_upload(relay: &RelayHandle, length: usize, extra: &str) -> TcpStream {
    let mut stream = TcpStream::connect(relay.addr).await.expect("connect");
    let head = format!(
        "POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sentry-Auth: {AUTH}\r\n{extra}Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
}

/// `count` keep-alive connections to the relay, each of which has been answered (so the relay holds it open).
async fn open_answered_connections(relay: &RelayHandle, count: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
        open.push(stream);
    }
    open
}

fn refused(relay: &RelayHandle, reason: &str) -> u64 {
    relay.metrics().connections_refused.with_label_values(&[reason]).get()
}

fn errors(relay: &RelayHandle, reason: &str) -> u64 {
    relay.metrics().request_errors.with_label_values(&[reason]).get()
}

/// Reads until the relay closes the connection; what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the relay closed the connection");
    seen
}

/// A good client's envelope gets 200 and reaches the upstream.
async fn good_client_gets_through(relay: &RelayHandle, mini: &MiniSentry) {
    let response = post_envelope(relay, 42, KEY, &event_envelope(EVENT_ID)).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let upstream = mini.next().await;
    assert_eq!(upstream.envelope().event_id(), Some(EVENT_ID));
}

#[tokio::test]
async fn a_client_trickling_its_body_is_cut() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(Config {
        min_body_rate: 64 * 1024,
        min_rate_grace: Duration::from_millis(200),
        // Far beyond the test's wait: only the minimum rate can cut this client.
        body_timeout: Duration::from_secs(3600),
        ..relay_config(&mini)
    })
    .await;
    let mut slow = start_upload(&relay, MIB, "").await;
    slow.write_all(b"{\"event_id\":").await.unwrap();
    let response = tokio::time::timeout(WAIT, read_response(&mut slow))
        .await
        .expect("the slow client is answered and cut");
    assert_eq!(response.status, 408);
    assert!(response.detail().contains("minimum data rate"), "{}", response.detail());
    assert_eq!(refused(&relay, "slow_body"), 1);
    assert_eq!(relay.state.budget.used(), 0, "its buffer went back to the budget");
    good_client_gets_through(&relay, &mini).await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(Config {
        header_timeout: Duration::from_millis(300),
        ..relay_config(&mini)
    })
    .await;
    let mut slow = TcpStream::connect(relay.addr).await.unwrap();
    slow.write_all(b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sentry-")
        .await
        .unwrap();
    let seen = read_until_closed(&mut slow).await;
    assert!(
        seen.is_empty() || seen.starts_with(b"HTTP/1.1 408"),
        "closed without serving the request: {:?}",
        String::from_utf8_lossy(&seen)
    );
    good_client_gets_through(&relay, &mini).await;
}

#[tokio::test]
async fn the_memory_budget_refuses_with_503_and_recovers() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(Config {
        memory_limit: Some(4 * MIB),
        max_client_bytes: Some(2 * MIB),
        memory_wait: Duration::from_millis(200),
        min_body_rate: 0,
        body_timeout: Duration::from_secs(3600),
        ..relay_config(&mini)
    })
    .await;
    let budget = relay.state.budget.clone();
    assert_eq!(budget.total(), 2 * MIB, "half the memory limit");
    assert_eq!(relay.metrics().memory_budget_bytes.get(), 2 * MIB as i64);

    // A stalled upload that declared the whole budget holds it once more than half has arrived.
    let mut hog = start_upload(&relay, 2 * MIB, "").await;
    hog.write_all(&vec![b' '; MIB + 1]).await.unwrap();
    wait_until("the upload holds the whole budget", || budget.used() == 2 * MIB).await;
    assert_eq!(relay.metrics().memory_budget_used_bytes.get(), 2 * MIB as i64);

    let response = post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(response.detail().contains("memory budget"), "{}", response.detail());
    assert_eq!(errors(&relay, "memory_budget"), 1);

    drop(hog);
    wait_until("the stalled upload gave its memory back", || budget.used() == 0).await;
    good_client_gets_through(&relay, &mini).await;
    assert_eq!(budget.used(), 0, "every charge is released once the envelope is queued");
}

#[tokio::test]
async fn one_client_cannot_take_everyones_memory_and_the_address_comes_from_the_trusted_header() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(Config {
        memory_limit: Some(8 * MIB),
        max_client_bytes: Some(MIB),
        memory_wait: Duration::from_millis(200),
        min_body_rate: 0,
        body_timeout: Duration::from_secs(3600),
        client_ip_header: Some(http::HeaderName::from_static("x-forwarded-for")),
        ..relay_config(&mini)
    })
    .await;
    let budget = relay.state.budget.clone();
    let mut hog = start_upload(&relay, MIB, "X-Forwarded-For: 198.51.100.7\r\n").await;
    hog.write_all(&vec![b' '; MIB / 2 + 1]).await.unwrap();
    wait_until("the upload holds its client's whole share", || budget.used() == MIB).await;

    let post_as = |forwarded_for: &'static str| {
        let addr = relay.addr;
        async move {
            send_raw(
                addr,
                "POST",
                "/api/42/envelope/",
                &headers(&[("X-Sentry-Auth", AUTH), ("X-Forwarded-For", forwarded_for)]),
                &event_envelope(EVENT_ID),
                false,
            )
            .await
        }
    };
    // The same client, even when it writes another address first: the balancer's entry is the last one.
    for forwarded_for in ["198.51.100.7", "198.51.100.8, 198.51.100.7"] {
        let response = post_as(forwarded_for).await;
        assert_eq!(response.status, 503, "{forwarded_for}");
        assert_eq!(response.header("retry-after"), Some("1"));
    }
    assert_eq!(errors(&relay, "client_budget"), 2);

    // Another client is served while the first one holds its share.
    let response = post_as("198.51.100.7, 198.51.100.8").await;
    assert_eq!(response.status, 200);
    assert_eq!(mini.next().await.envelope().event_id(), Some(EVENT_ID));
    drop(hog);
}

#[tokio::test]
async fn a_compression_bomb_stops_at_a_bounded_cost() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(Config {
        memory_limit: Some(16 * MIB),
        ..relay_config(&mini)
    })
    .await;
    // 64 MiB of zeros in about 64 KiB: under the 200 MiB decompressed cap, over the 8 MiB budget.
    let bomb = gzip(&vec![0u8; 64 * MIB]);
    let response = send_raw(
        relay.addr,
        "POST",
        "/api/42/envelope/",
        &headers(&[("X-Sentry-Auth", AUTH), ("Content-Encoding", "gzip")]),
        &bomb,
        false,
    )
    .await;
    assert_eq!(response.status, 413, "{}", response.detail());
    // One client may hold half the budget (4 MiB here): the bomb stops there, not at the 200 MiB cap.
    let share = relay.state.config.client_budget();
    assert_eq!(share, 4 * MIB);
    assert_eq!(
        response.detail(),
        format!("decompressed body exceeds the limit of {share} bytes")
    );
    let budget = &relay.state.budget;
    assert!(budget.peak() <= share, "peak {}", budget.peak());
    assert_eq!(budget.used(), 0);
    good_client_gets_through(&relay, &mini).await;
}

#[tokio::test]
async fn an_oversized_item_of_an_unknown_type_is_dropped_alone() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let mut body = event_envelope(EVENT_ID);
    let huge = format!("[{}0]", "0,".repeat(6 * MIB));
    body.extend_from_slice(format!("{{\"type\":\"future_thing\",\"length\":{}}}\n", huge.len()).as_bytes());
    body.extend_from_slice(huge.as_bytes());
    body.push(b'\n');
    let response = post_envelope(&relay, 42, KEY, &body).await;
    assert_eq!(response.status, 200);
    let upstream = mini.next().await;
    assert_eq!(upstream.envelope().items.len(), 1, "only the event is forwarded");
    assert_eq!(
        relay
            .metrics()
            .items_dropped
            .with_label_values(&["other", "too_large"])
            .get(),
        1
    );
}

/// The decoded cap of the bomb tests' relay: the bombs, 8 MiB of zeros in about 8 KiB of gzip, go over it.
const BOMB_LIMIT: usize = 4 * MIB;

/// A relay that takes 1 MiB on the wire and [`BOMB_LIMIT`] decoded.
async fn bomb_relay(mini: &MiniSentry) -> RelayHandle {
    start_relay(Config {
        max_body_bytes: MIB,
        max_decompressed_bytes: BOMB_LIMIT,
        ..relay_config(mini)
    })
    .await
}

/// Takes every slot of the large-body lane, as if huge bodies were being decoded: a body that moves there waits
/// until the permit is dropped.
async fn hold_the_large_lane(relay: &RelayHandle) -> tokio::sync::OwnedSemaphorePermit {
    let large = relay.state.processing_large.clone();
    let slots = u32::try_from(large.available_permits()).unwrap();
    large.acquire_many_owned(slots).await.unwrap()
}

/// As many bombs as the small lane has slots, sent to `targets` (path, `Content-Type`) in turn; returns once every
/// one has left the small lane, which is then all free.
async fn bombs_leave_the_small_lane(
    relay: &RelayHandle,
    targets: &[(&'static str, Option<&'static str>)],
) -> Vec<tokio::task::JoinHandle<RawResponse>> {
    bodies_leave_the_small_lane(relay, gzip(&vec![0u8; 8 * MIB]), Some("gzip"), targets).await
}

/// As many copies of `body` (with `encoding` as its `Content-Encoding`) as the small lane has slots, sent to `targets`
/// (path, `Content-Type`) in turn; returns once every one has left the small lane, which is then all free.
async fn bodies_leave_the_small_lane(
    relay: &RelayHandle,
    body: Vec<u8>,
    encoding: Option<&'static str>,
    targets: &[(&'static str, Option<&'static str>)],
) -> Vec<tokio::task::JoinHandle<RawResponse>> {
    let small_slots = relay.state.processing.available_permits();
    let bodies = (0..small_slots)
        .map(|n| {
            let (addr, body) = (relay.addr, body.clone());
            let (path, content_type) = targets[n % targets.len()];
            tokio::spawn(async move {
                let mut pairs = vec![("X-Sentry-Auth", AUTH)];
                pairs.extend(encoding.map(|value| ("Content-Encoding", value)));
                pairs.extend(content_type.map(|value| ("Content-Type", value)));
                send_raw(addr, "POST", path, &headers(&pairs), &body, false).await
            })
        })
        .collect();
    wait_until("every body has left the small lane", || {
        relay.metrics().lane_changes.get() == small_slots as u64
    })
    .await;
    assert_eq!(relay.state.processing.available_permits(), small_slots);
    bodies
}

/// Each bomb, let into the large lane, is refused as too large once decoded, and gives back all its memory.
async fn bombs_are_refused(relay: &RelayHandle, bombs: Vec<tokio::task::JoinHandle<RawResponse>>) {
    for bomb in bombs {
        let response = bomb.await.unwrap();
        assert_eq!(response.status, 413, "{}", response.detail());
        assert_eq!(
            response.detail(),
            format!("decompressed body exceeds the limit of {BOMB_LIMIT} bytes")
        );
    }
    assert_eq!(relay.state.budget.used(), 0);
}

#[tokio::test]
async fn small_envelopes_have_a_lane_large_bodies_cannot_fill() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    // Small envelopes pass while every slot of the large-body lane is busy.
    let held = hold_the_large_lane(&relay).await;
    good_client_gets_through(&relay, &mini).await;
    drop(held);
}

#[tokio::test]
async fn compression_bombs_small_on_the_wire_leave_the_small_lane() {
    let mini = MiniSentry::start().await;
    let relay = bomb_relay(&mini).await;
    let held = hold_the_large_lane(&relay).await;
    let bombs = bombs_leave_the_small_lane(&relay, &[("/api/42/envelope/", None)]).await;
    // Small envelopes pass while the bombs wait: plain, and compressed past the inline size but under 1 MiB.
    good_client_gets_through(&relay, &mini).await;
    let padded = format!(
        "{{\"event_id\":\"{EVENT_ID}\"}}\n{{\"type\":\"event\"}}\n{{\"event_id\":\"{EVENT_ID}\",\"message\":\"hello\",\"extra\":{{\"pad\":\"{}\"}}}}\n",
        "ab ".repeat(20_000)
    );
    let response = send_raw(
        relay.addr,
        "POST",
        "/api/42/envelope/",
        &headers(&[("X-Sentry-Auth", AUTH), ("Content-Encoding", "gzip")]),
        &gzip(padded.as_bytes()),
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.detail());
    assert_eq!(mini.next().await.envelope().event_id(), Some(EVENT_ID));
    assert_eq!(
        relay.metrics().lane_changes.get(),
        bombs.len() as u64,
        "the padded envelope stayed"
    );

    drop(held);
    bombs_are_refused(&relay, bombs).await;
    assert_eq!(mini.received(), 2, "no bomb reached the upstream");
}

#[tokio::test]
async fn compression_bombs_on_the_otlp_and_nel_routes_leave_the_small_lane_too() {
    let mini = MiniSentry::start().await;
    // These routes decode under their own caps (12 MiB for both), here lowered by the relay's.
    let relay = bomb_relay(&mini).await;
    let held = hold_the_large_lane(&relay).await;
    let routes = [
        ("/api/42/integration/otlp/v1/traces", Some("application/json")),
        ("/api/42/nel/", Some("application/reports+json")),
    ];
    let bombs = bombs_leave_the_small_lane(&relay, &routes).await;
    good_client_gets_through(&relay, &mini).await;

    drop(held);
    bombs_are_refused(&relay, bombs).await;
    assert_eq!(mini.received(), 1, "no bomb reached the upstream");
}

#[tokio::test]
async fn replay_recordings_inflating_past_the_small_lane_move_to_the_large_lane() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let held = hold_the_large_lane(&relay).await;
    // A recording of 4 MiB of rrweb JSON in about 4 KiB of zlib: a small envelope whose payload inflates past the
    // small lane's 1 MiB (as a recording bomb would, up to Sentry's 100 MiB), yet a valid recording to forward.
    let inflated = [&b"["[..], &vec![b' '; 4 * MIB], b"]"].concat();
    let mut recording = b"{\"segment_id\":0}\n".to_vec();
    {
        use std::io::Write;
        let mut encoder = flate2::write::ZlibEncoder::new(&mut recording, flate2::Compression::best());
        encoder.write_all(&inflated).unwrap();
        encoder.finish().unwrap();
    }
    let mut envelope = format!(
        "{{\"event_id\":\"{EVENT_ID}\"}}\n{{\"type\":\"replay_recording\",\"length\":{}}}\n",
        recording.len()
    )
    .into_bytes();
    envelope.extend_from_slice(&recording);
    envelope.push(b'\n');
    let senders = bodies_leave_the_small_lane(&relay, envelope, None, &[("/api/42/envelope/", None)]).await;
    let small_slots = senders.len();
    good_client_gets_through(&relay, &mini).await;

    drop(held);
    for sender in senders {
        let response = sender.await.unwrap();
        assert_eq!(response.status, 200, "{}", response.detail());
    }
    for _ in 0..small_slots {
        let upstream = mini.next().await;
        let items = &upstream.envelope().items;
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0].payload(),
            &recording[..],
            "the recording is forwarded as it came"
        );
    }
    let received = relay
        .metrics()
        .items_received
        .with_label_values(&["replay_recording"])
        .get();
    assert_eq!(
        received, small_slots as u64,
        "each recording is counted once, not once per lane"
    );
    assert_eq!(relay.state.budget.used(), 0);
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(Config {
        max_client_connections: 2,
        ..relay_config(&mini)
    })
    .await;
    let mut open = open_answered_connections(&relay, 2).await;
    let mut third = TcpStream::connect(relay.addr).await.unwrap();
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n").await;
    assert!(
        read_until_closed(&mut third).await.is_empty(),
        "closed without an answer"
    );
    assert_eq!(refused(&relay, "client_connections"), 1);

    open.pop();
    wait_until("the closed connection is counted out", || {
        relay.state.client_connections.count(LOCALHOST) < 2
    })
    .await;
    good_client_gets_through(&relay, &mini).await;
}

#[tokio::test]
async fn health_and_metrics_answer_while_every_connection_slot_is_taken() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(Config {
        max_connections: 2,
        ..relay_config(&mini)
    })
    .await;
    // Held open to the end: every connection slot stays taken.
    let _open = open_answered_connections(&relay, 2).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = send_raw(relay.addr, "GET", path, &[], b"", false).await;
        assert_eq!(response.status, 200, "{path}");
    }
    let response = post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(refused(&relay, "saturated"), 1);
    assert_eq!(mini.received(), 0);
}
