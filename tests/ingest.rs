//! End-to-end tests of the ingest path: real relay on loopback, real upstream (MiniSentry), real SDK captures.

mod common;

use std::io::Write;

use base64::Engine as _;

use common::*;
use scrub_relay::envelope::Envelope;
use scrub_relay::pipeline::{self, ProcessOptions};
use scrub_relay::rules::CompiledRules;

const EVENT_ID: &str = "9ec79c33ec9942ab8353589fcb2e04dc";
const KEY: &str = "publickey123";

/// What the relay must forward for an SDK envelope: exactly what the pipeline makes of it.
fn expected_upstream(envelope: &[u8], project_id: u64) -> Option<Vec<u8>> {
    let envelope = Envelope::parse(envelope.to_vec().into()).expect("capture parses");
    let options = ProcessOptions {
        project_id: Some(project_id),
        explain: false,
        ..ProcessOptions::default()
    };
    let processed = pipeline::process(envelope, &CompiledRules::defaults(), &options);
    (!processed.envelope.items.is_empty()).then(|| processed.envelope.to_bytes().to_vec())
}

#[tokio::test]
async fn every_sdk_capture_is_accepted_and_forwarded() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let captures = Capture::all();
    assert!(captures.len() > 80, "the fixtures are all there");
    for capture in &captures {
        let before = mini.received();
        let response = capture.replay(&relay).await;
        assert_eq!(
            response.status,
            200,
            "{}: {:?}",
            capture.name,
            String::from_utf8_lossy(&response.body)
        );
        match expected_upstream(&capture.envelope_bytes(), 42) {
            Some(expected) => {
                let upstream = mini.next().await;
                assert_eq!(upstream.path, "/api/42/envelope/", "{}", capture.name);
                assert_eq!(upstream.query, None, "{}: no query upstream", capture.name);
                assert_eq!(upstream.auth_key().as_deref(), Some(KEY), "{}", capture.name);
                assert!(upstream.header("x-sentry-auth").unwrap().contains("sentry_version=7"));
                assert_eq!(upstream.header("content-type"), Some("application/x-sentry-envelope"));
                assert_eq!(upstream.header("content-encoding"), Some("gzip"), "{}", capture.name);
                assert!(
                    upstream.envelope.is_some(),
                    "{}: upstream body parses as an envelope",
                    capture.name
                );
                assert!(
                    upstream.body[..] == expected[..],
                    "{}: upstream got what the pipeline produced",
                    capture.name
                );
                let sdk_agent = capture
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("user-agent"));
                if let Some((_, agent)) = sdk_agent {
                    assert_eq!(
                        upstream.header("user-agent"),
                        Some(agent.as_str()),
                        "{}: SDK User-Agent kept",
                        capture.name
                    );
                }
            }
            None => assert_eq!(
                mini.received(),
                before,
                "{}: the pipeline dropped everything",
                capture.name
            ),
        }
        let event_id = capture.envelope_bytes().split(|&b| b == b'\n').next().map(|line| {
            serde_json::from_slice::<serde_json::Value>(line).unwrap()["event_id"]
                .as_str()
                .map(|id| id.replace('-', ""))
        });
        assert_eq!(
            response.json()["id"].as_str().map(str::to_owned),
            event_id.flatten(),
            "{}: id answered",
            capture.name
        );
    }
    assert_eq!(relay.metrics().envelopes_received.get() as usize, captures.len());
}

#[tokio::test]
async fn sdk_client_name_is_repeated_upstream() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    assert_eq!(Capture::load("py-error-event").replay(&relay).await.status, 200);
    assert_eq!(mini.next().await.auth_client().as_deref(), Some("sentry.python/2.75.0"));
    assert_eq!(Capture::load("node-error-1").replay(&relay).await.status, 200);
    assert_eq!(
        mini.next().await.auth_client().as_deref(),
        Some("sentry.javascript.node/11.12.0")
    );
}

#[tokio::test]
async fn tunnel_forwards_allowed_hosts_only() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    // The capture's dsn names 127.0.0.1, the upstream's host: allowed by default.
    let capture = Capture::load("node-tunnel-1");
    let response = capture.replay(&relay).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    let upstream = mini.next().await;
    assert_eq!(upstream.path, "/api/42/envelope/", "project from the dsn");
    assert_eq!(upstream.auth_key().as_deref(), Some(KEY), "key from the dsn");
    assert_eq!(
        upstream.auth_client().as_deref(),
        Some("sentry.javascript.node/11.12.0"),
        "client from the envelope's sdk header"
    );

    let mut config = relay_config(&mini);
    config.tunnel_allowed_hosts = vec![scrub_relay::dsn::HostPattern::parse("*.ingest.sentry.io").unwrap()];
    let strict = start_relay(config).await;
    let response = capture.replay(&strict).await;
    assert_eq!(response.status, 403);
    assert_eq!(response.detail(), "dsn host is not an allowed tunnel destination");

    let no_dsn = send_raw(relay.addr, "POST", "/tunnel", &[], &event_envelope(EVENT_ID), false).await;
    assert_eq!(no_dsn.status, 401);
    assert_eq!(no_dsn.detail(), "missing authorization information");
    assert_eq!(mini.received(), 1, "refused tunnel requests never reach the upstream");
}

#[tokio::test]
async fn tunnel_destination_never_comes_from_the_request() {
    let mini = MiniSentry::start().await;
    let mut config = relay_config(&mini);
    config.tunnel_allowed_hosts = vec![scrub_relay::dsn::HostPattern::parse("o1.ingest.sentry.io").unwrap()];
    let relay = start_relay(config).await;
    let body = format!(
        "{{\"event_id\":\"{EVENT_ID}\",\"dsn\":\"https://abc@o1.ingest.sentry.io/7\"}}\n{{\"type\":\"event\"}}\n{{}}\n"
    );
    let response = send_raw(relay.addr, "POST", "/tunnel", &[], body.as_bytes(), false).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    let upstream = mini.next().await;
    assert_eq!(
        upstream.path, "/api/7/envelope/",
        "sent to the configured upstream, not to the dsn's host"
    );
    assert_eq!(upstream.auth_key().as_deref(), Some("abc"));
}

#[tokio::test]
async fn envelope_dsn_alone_authenticates_only_for_allowed_hosts() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let body = |dsn: &str| format!("{{\"dsn\":\"{dsn}\"}}\n{{\"type\":\"event\"}}\n{{}}\n").into_bytes();
    // A server-side tunnel forwarding to the envelope endpoint without auth: the dsn names the upstream's host.
    let allowed = send_raw(
        relay.addr,
        "POST",
        "/api/42/envelope/",
        &[],
        &body("http://abc@127.0.0.1:9/42"),
        false,
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.detail());
    assert_eq!(mini.next().await.auth_key().as_deref(), Some("abc"));
    let foreign = send_raw(
        relay.addr,
        "POST",
        "/api/42/envelope/",
        &[],
        &body("http://abc@evil.example/42"),
        false,
    )
    .await;
    assert_eq!(foreign.status, 403);
    let mismatch = send_raw(
        relay.addr,
        "POST",
        "/api/43/envelope/",
        &[],
        &body("http://abc@127.0.0.1/42"),
        false,
    )
    .await;
    assert_eq!(mismatch.status, 400);
    assert_eq!(mini.received(), 1);
}

#[tokio::test]
async fn pipeline_outcomes_are_counted() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    assert_eq!(Capture::load("py-error-event-rawpii").replay(&relay).await.status, 200);
    let upstream = mini.next().await;
    assert!(
        !String::from_utf8_lossy(&upstream.body).contains("hunter2-S3cret!"),
        "the password was scrubbed"
    );
    let exposition = relay.metrics().encode();
    let redactions: u64 = exposition
        .lines()
        .filter(|line| line.starts_with("scrub_relay_redactions_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(redactions > 0, "redactions are counted by rule");
    assert!(relay.metrics().scrub_duration.get_sample_count() >= 1);

    // A health-check transaction is filtered: 200 for the SDK, nothing upstream, a dropped-item count.
    let before = mini.received();
    assert_eq!(Capture::load("py-health-1").replay(&relay).await.status, 200);
    assert_eq!(mini.received(), before);
    assert_eq!(
        relay
            .metrics()
            .items_dropped
            .with_label_values(&["transaction", "filtered_route"])
            .get(),
        1
    );
    assert_eq!(
        relay
            .metrics()
            .envelopes_dropped
            .with_label_values(&["empty_after_filter"])
            .get(),
        1
    );

    // An oversized check-in is dropped alone; the event next to it still goes out.
    let body = format!(
        "{{\"event_id\":\"{EVENT_ID}\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"x\"}}\n{{\"type\":\"check_in\"}}\n{{\"pad\":\"{}\"}}\n",
        "x".repeat(200 * 1024)
    );
    let response = post_envelope(&relay, 42, KEY, body.as_bytes()).await;
    assert_eq!(response.status, 200);
    let upstream = mini.next().await;
    let types: Vec<&str> = upstream.envelope().items.iter().map(|item| item.type_name()).collect();
    assert_eq!(types, ["event"]);
    assert_eq!(
        relay
            .metrics()
            .items_dropped
            .with_label_values(&["check_in", "too_large"])
            .get(),
        1
    );
}

#[tokio::test]
async fn client_ip_goes_upstream_only_when_the_rules_allow_it() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    assert_eq!(
        post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await.status,
        200
    );
    assert_eq!(
        mini.next().await.header("x-forwarded-for"),
        None,
        "send_default_pii is off by default"
    );

    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string("rules.yaml")
        .unwrap()
        .replace("send_default_pii: false", "send_default_pii: true");
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let mut config = relay_config(&mini);
    config.rules_path = Some(dir.path().join("rules.yaml"));
    let relay = start_relay(config).await;
    let spoofed = headers(&[("X-Forwarded-For", "198.51.100.1")]);
    let target = format!("/api/42/envelope/?sentry_key={KEY}");
    assert_eq!(
        send_raw(relay.addr, "POST", &target, &spoofed, &event_envelope(EVENT_ID), false)
            .await
            .status,
        200
    );
    assert_eq!(
        mini.next().await.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "the TCP peer, never a client's claim"
    );
}

#[tokio::test]
async fn every_content_encoding_is_decoded() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let envelope = event_envelope(EVENT_ID);
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(&envelope).unwrap();
    let mut raw_deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    raw_deflate.write_all(&envelope).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gzip", gzip(&envelope)),
        ("x-gzip", gzip(&envelope)),
        ("deflate", deflate.finish().unwrap()),
        ("deflate", raw_deflate.finish().unwrap()),
        ("br", brotli(&envelope)),
        ("zstd", zstd(&envelope)),
        ("identity", envelope.clone()),
        ("UTF-8", envelope.clone()),
        ("", envelope.clone()),
        ("GZIP", gzip(&envelope)),
    ];
    for (encoding, body) in cases {
        let auth = format!("Sentry sentry_key={KEY}, sentry_version=7");
        let headers = headers(&[("x-sentry-auth", &auth), ("Content-Encoding", encoding)]);
        let response = send_raw(relay.addr, "POST", "/api/42/envelope/", &headers, &body, false).await;
        assert_eq!(response.status, 200, "{encoding}: {}", response.detail());
        assert_eq!(response.json()["id"], EVENT_ID);
        let upstream = mini.next().await;
        assert_eq!(upstream.envelope().event_id(), Some(EVENT_ID), "{encoding}");
        assert_eq!(upstream.envelope().items.len(), 1, "{encoding}");
    }
}

/// Whatever the upstream encoding, the upstream decodes the same envelope bytes. Each body is read here with its
/// format's own reference decoder (flate2's single-member gzip reader, the zstd library's frame reader), not with the
/// relay's decoder; the relays' compression states are reused from one envelope to the next.
#[tokio::test]
async fn every_upstream_encoding_decodes_to_the_same_envelope() {
    use scrub_relay::config::UpstreamEncoding;
    let mini = MiniSentry::start().await;
    let start = |encoding| {
        let mut config = relay_config(&mini);
        config.upstream_encoding = encoding;
        start_relay(config)
    };
    let relays = [
        (start(UpstreamEncoding::Identity).await, None),
        (start(UpstreamEncoding::Gzip).await, Some("gzip")),
        (start(UpstreamEncoding::Zstd).await, Some("zstd")),
    ];
    // Raw PII (scrubbed, so recompressed), a clean python event, node and rust events, a transaction.
    let names = [
        "py-error-event-rawpii",
        "py-error-event",
        "node-error-1",
        "rust-event-1",
        "py-transaction",
        "py-error-exception-rawpii",
    ];
    for name in names {
        let capture = Capture::load(name);
        let mut bodies = Vec::new();
        for (relay, encoding) in &relays {
            let response = capture.replay(relay).await;
            assert_eq!(response.status, 200, "{name}: {}", response.detail());
            let upstream = mini.next().await;
            assert_eq!(upstream.header("content-encoding"), *encoding, "{name}");
            let mut decoded = Vec::new();
            match *encoding {
                None => decoded.extend_from_slice(&upstream.raw_body),
                Some("gzip") => {
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&upstream.raw_body[..]), &mut decoded)
                        .unwrap();
                }
                Some(_) => decoded = zstd::decode_all(&upstream.raw_body[..]).unwrap(),
            }
            bodies.push(decoded);
        }
        assert!(!bodies[0].is_empty());
        assert!(
            bodies[1] == bodies[0],
            "{name}: gzip decodes to the envelope sent without compression"
        );
        assert!(
            bodies[2] == bodies[0],
            "{name}: zstd decodes to the envelope sent without compression"
        );
    }
}

/// When the relay changes nothing and the SDK sent one gzip member, the SDK's own compressed bytes go upstream (no
/// recompression); anything else is recompressed from what the relay checked.
#[tokio::test]
async fn unchanged_gzip_envelopes_are_forwarded_as_the_sdk_compressed_them() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let auth = format!("Sentry sentry_key={KEY}, sentry_version=7");
    let gzip_headers = headers(&[("x-sentry-auth", &auth), ("Content-Encoding", "gzip")]);
    // A gzip header our own encoder never writes (name, time, level 9), so a recompressed body cannot match.
    let sdk_gzip = |data: &[u8]| {
        let mut encoder = flate2::GzBuilder::new()
            .filename("envelope")
            .mtime(1_795_386_404)
            .write(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    };
    // The relay's own serialization: compact JSON, `length` on every item, final newline.
    let canonical = |payload: &str| {
        format!(
            "{{\"event_id\":\"{EVENT_ID}\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{payload}\n",
            payload.len()
        )
        .into_bytes()
    };

    let clean = canonical(r#"{"message":"checkout failed","level":"error","tags":{"author":"ci"}}"#);
    let body = sdk_gzip(&clean);
    let response = send_raw(relay.addr, "POST", "/api/42/envelope/", &gzip_headers, &body, false).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    let upstream = mini.next().await;
    assert_eq!(upstream.header("content-encoding"), Some("gzip"));
    assert!(upstream.raw_body[..] == body[..], "the SDK's bytes, untouched");
    assert!(upstream.body[..] == clean[..]);

    // Something scrubbed: recompressed, and the secret is gone.
    let secret = canonical(r#"{"message":"mail jane.doe@example.com","level":"error"}"#);
    let body = sdk_gzip(&secret);
    let response = send_raw(relay.addr, "POST", "/api/42/envelope/", &gzip_headers, &body, false).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    let upstream = mini.next().await;
    assert!(upstream.raw_body[..] != body[..]);
    assert!(!String::from_utf8_lossy(&upstream.body).contains("jane.doe@example.com"));

    // Nothing scrubbed, but the SDK's framing is not the relay's (no `length`): the relay's bytes, recompressed.
    let unframed = format!("{{\"event_id\":\"{EVENT_ID}\"}}\n{{\"type\":\"event\"}}\n{{\"message\":\"ok\"}}\n");
    let body = sdk_gzip(unframed.as_bytes());
    let response = send_raw(relay.addr, "POST", "/api/42/envelope/", &gzip_headers, &body, false).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    let upstream = mini.next().await;
    assert!(upstream.raw_body[..] != body[..]);
    assert!(upstream.body[..] == canonical(r#"{"message":"ok"}"#)[..]);

    // Unchanged, but in two gzip members: recompressed rather than trusting every decoder to read both.
    let (head, tail) = clean.split_at(20);
    let body = [sdk_gzip(head), sdk_gzip(tail)].concat();
    let response = send_raw(relay.addr, "POST", "/api/42/envelope/", &gzip_headers, &body, false).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    let upstream = mini.next().await;
    assert!(upstream.raw_body[..] != body[..]);
    assert!(upstream.body[..] == clean[..]);
}

#[tokio::test]
async fn chunked_bodies_and_keep_alive() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let body = gzip(&event_envelope(EVENT_ID));
    let headers = headers(&[
        ("content-encoding", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive"),
    ]);
    let target = format!("/api/42/envelope/?sentry_key={KEY}&sentry_version=7");
    let response = send_raw(relay.addr, "POST", &target, &headers, &body, true).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    assert_eq!(mini.next().await.envelope().event_id(), Some(EVENT_ID));
}

#[tokio::test]
async fn http2_with_prior_knowledge() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = client
        .post(relay.url(&format!("/api/42/envelope/?sentry_key={KEY}")))
        .body(event_envelope(EVENT_ID))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(mini.next().await.envelope().event_id(), Some(EVENT_ID));
}

#[tokio::test]
async fn store_endpoint_wraps_the_event_in_an_envelope() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let auth = format!("Sentry sentry_key={KEY}, sentry_version=7, sentry_client=raven-python/6.10.0");
    let event = format!(r#"{{"event_id":"{EVENT_ID}","message":"legacy","level":"error"}}"#);
    let response = send_raw(
        relay.addr,
        "POST",
        "/api/42/store/",
        &headers(&[("X-Sentry-Auth", &auth)]),
        event.as_bytes(),
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.detail());
    assert_eq!(response.json()["id"], EVENT_ID);
    let upstream = mini.next().await;
    assert_eq!(upstream.path, "/api/42/envelope/");
    assert_eq!(upstream.envelope().items[0].type_name(), "event");
    assert_eq!(upstream.envelope().items[0].payload()[..], *event.as_bytes());

    // Old SDKs: base64 of zlib, no Content-Encoding.
    let encoded = base64::engine::general_purpose::STANDARD.encode(scrub_relay::decode::zlib(event.as_bytes()));
    let response = send_raw(
        relay.addr,
        "POST",
        "/api/42/store/",
        &headers(&[("X-Sentry-Auth", &auth)]),
        encoded.as_bytes(),
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.detail());
    assert_eq!(mini.next().await.envelope().items[0].payload()[..], *event.as_bytes());
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let preflight = send_raw(
        relay.addr,
        "OPTIONS",
        "/api/42/envelope/",
        &headers(&[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ]),
        b"",
        false,
    )
    .await;
    assert_eq!(preflight.status, 200);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let allowed = preflight.header("access-control-allow-headers").unwrap();
    for header in [
        "x-sentry-auth",
        "content-type",
        "content-encoding",
        "authorization",
        "sentry-trace",
        "baggage",
    ] {
        assert!(allowed.contains(header), "{header} allowed");
    }
    let exposed = preflight.header("access-control-expose-headers").unwrap();
    for header in ["x-sentry-error", "x-sentry-rate-limits", "retry-after"] {
        assert!(exposed.contains(header), "{header} exposed");
    }
    let refused = send_raw(
        relay.addr,
        "POST",
        "/api/42/envelope/",
        &[],
        &event_envelope(EVENT_ID),
        false,
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("*"),
        "errors carry CORS headers too"
    );
    assert_eq!(mini.received(), 0);
}

#[tokio::test]
async fn refusals_name_their_cause() {
    let mini = MiniSentry::start().await;
    let mut config = relay_config(&mini);
    config.allowed_projects = vec![42, 43];
    config.allowed_keys = vec![KEY.to_owned(), "otherkey".to_owned()];
    let relay = start_relay(config).await;
    let envelope = event_envelope(EVENT_ID);
    let auth = |key: &str, version: u32| format!("Sentry sentry_key={key}, sentry_version={version}");
    let header_auth = |key: &str| headers(&[("X-Sentry-Auth", &auth(key, 7))]);
    let dsn_envelope = |dsn: &str| format!("{{\"dsn\":\"{dsn}\"}}\n{{\"type\":\"event\"}}\n{{}}\n").into_bytes();

    struct Case {
        name: &'static str,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        status: u16,
        detail: &'static str,
    }
    let cases = vec![
        Case {
            name: "malformed envelope",
            target: "/api/42/envelope/".into(),
            headers: header_auth(KEY),
            body: b"not json\n".to_vec(),
            status: 400,
            detail: "invalid envelope: envelope header is not a JSON object",
        },
        Case {
            name: "bad item length",
            target: "/api/42/envelope/".into(),
            headers: header_auth(KEY),
            body: b"{}\n{\"type\":\"event\",\"length\":100}\n{}\n".to_vec(),
            status: 400,
            detail: "invalid envelope: item at byte 3 declares 100 bytes but only 3 remain",
        },
        Case {
            name: "empty body",
            target: "/api/42/envelope/".into(),
            headers: header_auth(KEY),
            body: vec![],
            status: 400,
            detail: "empty request body",
        },
        Case {
            name: "no auth",
            target: "/api/42/envelope/".into(),
            headers: vec![],
            body: envelope.clone(),
            status: 401,
            detail: "missing authorization information",
        },
        Case {
            name: "two auth sources",
            target: format!("/api/42/envelope/?sentry_key={KEY}"),
            headers: header_auth(KEY),
            body: envelope.clone(),
            status: 401,
            detail: "multiple authorization payloads requested",
        },
        Case {
            name: "two auth headers",
            target: "/api/42/envelope/".into(),
            headers: headers(&[("X-Sentry-Auth", &auth(KEY, 7)), ("Authorization", &auth(KEY, 7))]),
            body: envelope.clone(),
            status: 401,
            detail: "multiple authorization payloads requested",
        },
        Case {
            name: "protocol version 8",
            target: "/api/42/envelope/".into(),
            headers: headers(&[("X-Sentry-Auth", &auth(KEY, 8))]),
            body: envelope.clone(),
            status: 400,
            detail: "client requested unsupported protocol version (8)",
        },
        Case {
            name: "dsn key mismatch",
            target: "/api/42/envelope/".into(),
            headers: header_auth(KEY),
            body: dsn_envelope("http://otherkey@127.0.0.1/42"),
            status: 400,
            detail: "dsn in envelope header does not match the request's public key",
        },
        Case {
            name: "dsn project mismatch",
            target: "/api/42/envelope/".into(),
            headers: header_auth(KEY),
            body: dsn_envelope("http://publickey123@127.0.0.1/43"),
            status: 400,
            detail: "dsn in envelope header does not match the request's project id",
        },
        Case {
            name: "key not allowed",
            target: "/api/42/envelope/".into(),
            headers: header_auth("strangerkey"),
            body: envelope.clone(),
            status: 403,
            detail: "public key is not allowed",
        },
        Case {
            name: "project not allowed",
            target: "/api/44/envelope/".into(),
            headers: header_auth(KEY),
            body: envelope.clone(),
            status: 403,
            detail: "project is not allowed",
        },
        Case {
            name: "unknown route",
            target: "/api/42/unknown/".into(),
            headers: header_auth(KEY),
            body: envelope.clone(),
            status: 404,
            detail: "not found",
        },
        Case {
            name: "non-numeric project",
            target: "/api/abc/envelope/".into(),
            headers: header_auth(KEY),
            body: envelope.clone(),
            status: 404,
            detail: "not found",
        },
        Case {
            name: "unknown encoding",
            target: "/api/42/envelope/".into(),
            headers: headers(&[("X-Sentry-Auth", &auth(KEY, 7)), ("Content-Encoding", "lz4")]),
            body: envelope.clone(),
            status: 415,
            detail: "unsupported content encoding",
        },
        Case {
            name: "corrupt gzip",
            target: "/api/42/envelope/".into(),
            headers: headers(&[("X-Sentry-Auth", &auth(KEY, 7)), ("Content-Encoding", "gzip")]),
            body: b"\x1f\x8bnot really gzip".to_vec(),
            status: 400,
            detail: "",
        },
    ];
    for case in cases {
        let response = send_raw(relay.addr, "POST", &case.target, &case.headers, &case.body, false).await;
        assert_eq!(response.status, case.status, "{}: {}", case.name, response.detail());
        if case.detail.is_empty() {
            assert!(
                response.detail().starts_with("invalid compressed body"),
                "{}: {}",
                case.name,
                response.detail()
            );
        } else {
            assert_eq!(response.detail(), case.detail, "{}", case.name);
        }
        assert_eq!(
            response.header("x-sentry-error"),
            Some(response.detail().as_str()),
            "{}",
            case.name
        );
    }
    let wrong_method = send_raw(relay.addr, "GET", "/api/42/envelope/", &header_auth(KEY), b"", false).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(mini.received(), 0, "no refused request reached the upstream");
    assert!(
        relay
            .metrics()
            .request_errors
            .with_label_values(&["multiple_auth"])
            .get()
            >= 2
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_and_after_decompression() {
    let mini = MiniSentry::start().await;
    // Memory enough for a client to reach the 200 MiB decompressed cap (the default budget stops a bomb earlier).
    let relay = start_relay(scrub_relay::config::Config {
        memory_limit: Some(2 << 30),
        ..relay_config(&mini)
    })
    .await;
    let auth = format!("Sentry sentry_key={KEY}, sentry_version=7");

    // A Content-Length over the cap is refused before a byte of body is read.
    let too_long = headers(&[("X-Sentry-Auth", &auth), ("Content-Length", "104857600")]);
    let response = send_raw(relay.addr, "POST", "/api/42/envelope/", &too_long, b"", false).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.detail(), "request body exceeds the limit of 41943040 bytes");

    // 1 GiB of zeros, gzipped to about a megabyte: stopped at the decompressed cap.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        bomb.write_all(&zeros).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    assert!(bomb.len() < 40 << 20, "the bomb fits under the wire cap");
    let gzip_auth = headers(&[("X-Sentry-Auth", &auth), ("Content-Encoding", "gzip")]);
    let response = send_raw(relay.addr, "POST", "/api/42/envelope/", &gzip_auth, &bomb, false).await;
    assert_eq!(response.status, 413);
    assert_eq!(
        response.detail(),
        "decompressed body exceeds the limit of 209715200 bytes"
    );

    // The relay is still serving.
    let response = post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await;
    assert_eq!(response.status, 200);
    assert_eq!(mini.next().await.envelope().event_id(), Some(EVENT_ID));
}

#[tokio::test]
async fn chunked_bodies_are_capped_while_streaming() {
    let mini = MiniSentry::start().await;
    let mut config = relay_config(&mini);
    config.max_body_bytes = 4096;
    let relay = start_relay(config).await;
    let body = vec![b'x'; 64 * 1024];
    let target = format!("/api/42/envelope/?sentry_key={KEY}");
    let response = send_raw(
        relay.addr,
        "POST",
        &target,
        &headers(&[("Transfer-Encoding", "chunked")]),
        &body,
        true,
    )
    .await;
    assert_eq!(response.status, 413);
    assert_eq!(response.detail(), "request body exceeds the limit of 4096 bytes");
}

#[tokio::test]
async fn oversized_event_items_are_refused() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let big = format!("{{\"message\":\"{}\"}}", "a".repeat(2 << 20));
    let body = format!("{{}}\n{{\"type\":\"event\"}}\n{big}\n");
    let response = post_envelope(&relay, 42, KEY, body.as_bytes()).await;
    assert_eq!(response.status, 413);
    assert!(response.detail().starts_with("event item of"), "{}", response.detail());
}

#[tokio::test]
async fn upstream_rate_limits_reach_the_sdk() {
    // The SDK is answered when its envelope is queued, so an upstream 429 reaches the SDK on its next request for
    // that category (the relay remembers the limit), as with Sentry's own Relay. `tests/delivery.rs` covers more.
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    mini.answer_next(Answer::rate_limited("60", "60:error:organization:quota_exceeded"));
    let response = post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await;
    assert_eq!(response.status, 200, "queued");
    assert_eq!(mini.next().await.envelope().event_id(), Some(EVENT_ID));
    let delivery = relay.state.delivery.clone();
    wait_until("the limit is remembered", || {
        delivery.rate_limits().has_limits(42, tokio::time::Instant::now())
    })
    .await;
    let response = post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await;
    assert_eq!(response.status, 429);
    let retry_after: u64 = response.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        response.header("x-sentry-rate-limits"),
        Some(format!("{retry_after}:error:project").as_str())
    );

    // Limits announced with a success are passed on with the next accepted request.
    mini.answer_next(Answer::ok().header("x-sentry-rate-limits", "30:transaction:key"));
    let session = b"{}\n{\"type\":\"session\"}\n{\"sid\":\"7c7b6b7a6f6e4b5a9c8d7e6f5a4b3c2d\",\"status\":\"ok\"}\n";
    assert_eq!(post_envelope(&relay, 42, KEY, session).await.status, 200);
    mini.next().await;
    wait_until("the transaction limit is remembered", || {
        delivery
            .rate_limits()
            .active_header(42, tokio::time::Instant::now())
            .is_some_and(|header| header.contains("transaction"))
    })
    .await;
    let response = post_envelope(&relay, 42, KEY, session).await;
    assert_eq!(response.status, 200);
    let limits = response.header("x-sentry-rate-limits").expect("limits passed on");
    assert!(
        limits.contains(":error:") && limits.contains(":transaction:"),
        "{limits}"
    );
}

#[tokio::test]
async fn hostile_json_gets_an_answer_not_a_panic() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let deep_header = format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let response = post_envelope(&relay, 42, KEY, deep_header.as_bytes()).await;
    assert_eq!(response.status, 400);
    assert_eq!(
        response.detail(),
        "invalid envelope: envelope header is not a JSON object"
    );

    // Payloads the pipeline cannot parse: a clear answer, and never the raw payload upstream.
    let deep_payload = format!(
        "{{}}\n{{\"type\":\"event\"}}\n{{\"user\":\"jane.doe@example.com\",\"a\":{}1{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let invalid_utf8 = b"{}\n{\"type\":\"event\"}\n{\"message\":\"\xff\xfe jane.doe@example.com\"}\n".to_vec();
    for (name, body) in [
        ("deep nesting", deep_payload.into_bytes()),
        ("invalid UTF-8", invalid_utf8),
    ] {
        let response = post_envelope(&relay, 42, KEY, &body).await;
        assert!(matches!(response.status, 200 | 400), "{name}: {}", response.status);
        while let Some(upstream) = mini.try_next().await {
            let text = String::from_utf8_lossy(&upstream.body);
            assert!(
                !text.contains("jane.doe@example.com"),
                "{name}: the raw payload was forwarded"
            );
        }
    }

    let response = post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await;
    assert_eq!(response.status, 200, "still serving");
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    for path in [
        "/api/relay/healthcheck/live/",
        "/api/relay/healthcheck/ready/",
        "/healthz",
        "/readyz",
    ] {
        let response = send_raw(relay.addr, "GET", path, &[], b"", false).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.json(), serde_json::json!({ "is_healthy": true }), "{path}");
    }
    assert_eq!(
        post_envelope(&relay, 42, KEY, &event_envelope(EVENT_ID)).await.status,
        200
    );
    // Delivery is asynchronous: wait until the upstream's answer is in.
    mini.next().await;
    wait_until("the upstream answer is counted", || {
        relay.metrics().upstream_requests.with_label_values(&["2xx"]).get() == 1
    })
    .await;
    let metrics = send_raw(relay.addr, "GET", "/metrics", &[], b"", false).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("scrub_relay_requests_total{endpoint=\"envelope\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("scrub_relay_items_received_total{item_type=\"event\"} 1"));
    assert!(text.contains("scrub_relay_upstream_requests_total{outcome=\"2xx\"} 1"));
    let missing = send_raw(relay.addr, "GET", "/nope", &[], b"", false).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), serde_json::json!({ "detail": "not found" }));
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mini = MiniSentry::start().await;
    let mut relay = start_relay(relay_config(&mini)).await;
    let addr = relay.addr;
    // `Expect: 100-continue` makes the relay say when its handler starts reading the body, so the request is
    // provably in flight (headers parsed, body pending) when shutdown begins.
    let body = event_envelope(EVENT_ID);
    let head = format!(
        "POST /api/42/envelope/?sentry_key={KEY} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "connection open until 100 Continue"
        );
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );

    relay.trigger_shutdown();
    let state = relay.state.clone();
    wait_until("readiness turns off", || !state.readiness.is_ready()).await;
    // The listener is closed once draining starts; the request in flight still completes.
    wait_until("the listener is closed", || std::net::TcpStream::connect(addr).is_err()).await;
    stream.write_all(&body).await.unwrap();
    let response = tokio::time::timeout(WAIT, read_response(&mut stream))
        .await
        .expect("answer within the timeout");
    assert_eq!(response.status, 200, "the request in flight finished");
    assert_eq!(
        mini.next().await.envelope().event_id(),
        Some(EVENT_ID),
        "and its envelope was forwarded"
    );
    relay.shutdown().await;
}

fn relay_binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scrub-relay"));
    // Isolated from the developer's environment: no SCRUB_RELAY_* variables, no ./rules.yaml picked up by accident.
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SCRUB_RELAY_")) {
        command.env_remove(name);
    }
    command
}

#[test]
fn scrub_command_runs_the_pipeline_on_every_capture() {
    for capture in Capture::all() {
        let path = fixtures_dir().join(format!("{}.body", capture.name));
        let mut command = relay_binary();
        command.arg("scrub").arg(&path);
        if capture
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("content-encoding") && v == "br")
        {
            command.args(["--encoding", "br"]);
        }
        let output = command.output().expect("run scrub-relay scrub");
        assert!(
            output.status.success(),
            "{}: {}",
            capture.name,
            String::from_utf8_lossy(&output.stderr)
        );
        Envelope::parse(output.stdout.clone().into())
            .unwrap_or_else(|e| panic!("{}: output is an envelope: {e}", capture.name));
        // Exactly what the relay would do: the pipeline with the shipped rules (./rules.yaml is the shipped file).
        let envelope = Envelope::parse(capture.envelope_bytes().into()).unwrap();
        let options = ProcessOptions {
            project_id: None,
            explain: false,
            ..ProcessOptions::default()
        };
        let expected = pipeline::process(envelope, &CompiledRules::defaults(), &options)
            .envelope
            .to_bytes();
        assert!(
            output.stdout == expected[..],
            "{}: scrub output is the pipeline's output",
            capture.name
        );
    }
}

#[test]
fn scrub_explain_lists_paths_and_rules_but_no_values() {
    let path = fixtures_dir().join("py-error-event-rawpii.body");
    let output = relay_binary().args(["scrub", "--explain"]).arg(&path).output().unwrap();
    assert!(output.status.success());
    let explain = String::from_utf8(output.stderr).unwrap();
    assert!(explain.lines().count() > 3, "several changes explained: {explain}");
    for secret in [
        "hunter2-S3cret!",
        "jane.doe@example.com",
        "123-45-6789",
        "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
    ] {
        assert!(!explain.contains(secret), "explain output leaks a value");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("hunter2-S3cret!"), "the password is scrubbed");

    // Compressed input on stdin, brotli named explicitly.
    let capture = Capture::load("py-compress-br-explicit");
    let mut child = relay_binary()
        .args(["scrub", "--encoding", "br"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&capture.body).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(Envelope::parse(output.stdout.into()).is_ok());
}

#[test]
fn check_command_accepts_the_shipped_rules_and_points_at_broken_lines() {
    let output = relay_binary()
        .args(["check", "--rules", "rules.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("rules.yaml");
    std::fs::write(
        &broken,
        "version: 1\nsend_default_pii: false\nsensitive_kyes:\n  - password\n",
    )
    .unwrap();
    let output = relay_binary().args(["check", "--rules"]).arg(&broken).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stdout);
    assert!(message.contains("line 3"), "the problem names its line: {message}");
}

#[test]
fn bad_startup_configuration_is_one_line_and_exit_64() {
    let cases: [&[&str]; 3] = [
        &[
            "run",
            "--upstream",
            "ftp://sentry.example.com",
            "--listen",
            "127.0.0.1:0",
        ],
        &["--max-body-bytes", "0", "--listen", "127.0.0.1:0"],
        &["run", "--rules", "/nonexistent/rules.yaml", "--listen", "127.0.0.1:0"],
    ];
    for args in cases {
        let output = relay_binary().args(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one clear line, got {stderr}"
        );
        assert!(stderr.starts_with("scrub-relay: "), "{stderr}");
    }
    // The same settings from the environment.
    let env_cases = [
        ("SCRUB_RELAY_UPSTREAM", "ftp://sentry.example.com"),
        ("SCRUB_RELAY_MAX_CONNECTIONS", "0"),
    ];
    for (name, value) in env_cases {
        let output = relay_binary()
            .env(name, value)
            .env("SCRUB_RELAY_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(64),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{name}: one clear line, got {stderr}"
        );
        assert!(
            stderr.starts_with("scrub-relay: --"),
            "{name}: the flag is named: {stderr}"
        );
    }
}

#[test]
fn unusable_files_at_startup_are_named_in_the_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_str().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let spool = not_a_dir.join("spool");
    let no_bundle = dir.path().join("no-such-bundle.pem");
    /// Arguments, environment, and what the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case<'_>; 3] = [
        // A rules path that cannot be read (a directory here: the test runs as root, which reads any file).
        (
            &["run", "--rules", dir_path, "--listen", "127.0.0.1:0"],
            &[],
            &["cannot read rules file", dir_path],
        ),
        // A spool directory that cannot be created or written.
        (
            &["run", "--spool-dir", spool.to_str().unwrap(), "--listen", "127.0.0.1:0"],
            &[],
            &["spool directory", spool.to_str().unwrap()],
        ),
        // No CA certificates: an image without a bundle, made here by pointing the TLS roots at nothing.
        (
            &["run", "--listen", "127.0.0.1:0"],
            &[
                ("SSL_CERT_FILE", no_bundle.to_str().unwrap()),
                ("SSL_CERT_DIR", dir_path),
            ],
            &["CA certificate bundle", "SSL_CERT_FILE"],
        ),
    ];
    for (args, env, named) in cases {
        let output = relay_binary().args(args).envs(env.iter().copied()).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        // One error line, last. The TLS verifier may log a warning first (which file it could not read): that is a
        // log record, not a second error.
        let (errors, others): (Vec<&str>, Vec<&str>) = stderr
            .trim_end()
            .lines()
            .partition(|line| line.starts_with("scrub-relay: "));
        assert_eq!(errors.len(), 1, "{args:?}: one error line, got {stderr}");
        assert!(stderr.trim_end().ends_with(errors[0]), "{stderr}");
        assert!(others.iter().all(|line| line.contains(" WARN ")), "{stderr}");
        for name in named {
            assert!(errors[0].contains(name), "{args:?}: {name:?} is not named in {stderr}");
        }
    }
}
