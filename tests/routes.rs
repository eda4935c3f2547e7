//! The routes beside envelopes, driven as their real clients drive them: HTTP cron check-ins with curl, CSP reports
//! from headless Debian chromium, Reporting API arrays and NEL reports by hand, OTLP traces and logs from the real
//! OpenTelemetry Python SDK (protobuf, gzip) and as hand-written OTLP/JSON. MiniSentry records what reaches the
//! upstream and decodes it (OTLP protobuf with the same `opentelemetry-proto` types the exporters' protos describe).
//! Then bad input on every route: each gets its status and error metric, and nothing reaches the upstream.
//!
//! The Python OpenTelemetry SDK and the browser are installed by `.ci/run`, which sets `SCRUB_RELAY_TEST_OTEL_PYTHON`
//! and `SCRUB_RELAY_TEST_BROWSER_DIR`; without them those two tests skip with a message, except under `CI=true`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use common::{Answer, MiniSentry, Recorded, RelayHandle, SCRIPT_TIMEOUT, headers, send_raw};

const PROJECT: u64 = 42;
const KEY: &str = "publickey123";
const EMAIL: &str = "jane.doe@example.com";
const SSN: &str = "123-45-6789";
const PASSWORD: &str = "hunter2-S3cret!";
const BEARER_SECRET: &str = "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr";
const CLIENT_IP: &str = "203.0.113.77";

async fn relay_and_upstream() -> (MiniSentry, RelayHandle) {
    let upstream = MiniSentry::start().await;
    let relay = common::start_relay(common::relay_config(&upstream)).await;
    (upstream, relay)
}

fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what}: `{secret}` reached the upstream:\n{text}"
        );
    }
}

fn counter(family: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
    family.with_label_values(labels).get()
}

// ---------------------------------------------------------------------------------------------------------------
// Cron check-ins

async fn curl(args: &[&str]) -> (u16, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "15"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
    (code.trim().parse().expect("status code"), body.to_owned())
}

fn check_in(recorded: &Recorded) -> Value {
    assert_eq!(recorded.path, format!("/api/{PROJECT}/envelope/"));
    let items = &recorded.envelope().items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].type_name(), "check_in");
    serde_json::from_slice(items[0].payload()).expect("check-in JSON")
}

#[tokio::test]
async fn cron_check_ins_from_curl_reach_the_upstream_as_check_in_items() {
    let (upstream, relay) = relay_and_upstream().await;

    let url = relay.url(&format!(
        "/api/{PROJECT}/cron/nightly-backup/{KEY}/?status=in_progress&environment=prod"
    ));
    let (status, _) = curl(&[&url]).await;
    assert_eq!(status, 202);
    let recorded = upstream.next().await;
    assert_eq!(recorded.auth_key().as_deref(), Some(KEY));
    let first = check_in(&recorded);
    assert_eq!(first["monitor_slug"], "nightly-backup");
    assert_eq!(first["status"], "in_progress");
    assert_eq!(first["environment"], "prod");
    assert_eq!(first["check_in_id"], "00000000000000000000000000000000");

    // A JSON POST with the key in the header, as a script would send the closing check-in.
    let url = relay.url(&format!("/api/{PROJECT}/cron/nightly-backup/"));
    let auth = format!("x-sentry-auth: Sentry sentry_key={KEY}, sentry_version=7");
    let body = format!(r#"{{"status":"ok","duration":3.5,"contexts":{{"note":{{"owner":"{EMAIL}"}}}}}}"#);
    let (status, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "--data",
        &body,
        &url,
    ])
    .await;
    assert_eq!(status, 202);
    let second = check_in(&upstream.next().await);
    assert_eq!(second["status"], "ok");
    assert_eq!(second["duration"], 3.5);
    assert_eq!(second["monitor_slug"], "nightly-backup");
    assert_no_secrets("check-in", &second.to_string(), &[EMAIL]);

    assert_eq!(counter(&relay.metrics().requests, &["cron", "202"]), 2);
    assert_eq!(counter(&relay.metrics().items_received, &["check_in"]), 2);
    assert_eq!(counter(&relay.metrics().items_forwarded, &["check_in"]), 2);
    assert_eq!(
        relay.metrics().scrub_duration.get_sample_count(),
        2,
        "each scrub is timed"
    );
    assert!(counter(&relay.metrics().redactions, &["email"]) >= 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Security reports

/// POSTs a browser report to `/api/<project>/<route>`, authenticated in the URL as browsers do.
async fn post_report(relay: &RelayHandle, route: &str, content_type: &str, report: &Value) -> common::RawResponse {
    send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/{route}?sentry_key={KEY}"),
        &headers(&[("Content-Type", content_type)]),
        report.to_string().as_bytes(),
        false,
    )
    .await
}

/// The `raw_security` item payloads of every request, with the request's item headers.
fn security_items(received: &[Recorded]) -> Vec<(serde_json::Map<String, Value>, Value)> {
    received
        .iter()
        .flat_map(|request| request.envelope().items.clone())
        .map(|item| {
            assert_eq!(item.type_name(), "raw_security");
            (
                item.headers().clone(),
                serde_json::from_slice(item.payload()).expect("report JSON"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csp_reports_from_a_real_browser_arrive_scrubbed_with_their_directives() {
    let Some(dir) = common::tool("SCRUB_RELAY_TEST_BROWSER_DIR", "Chromium and tests/browser") else {
        return;
    };
    let (upstream, relay) = relay_and_upstream().await;
    let mut child = tokio::process::Command::new("node")
        .args(["csp.js", &relay.url(""), &PROJECT.to_string(), KEY])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs csp.js");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::time::timeout(SCRIPT_TIMEOUT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("the browser saw its violations in time")
        .expect("read stdout")
        .expect("csp.js printed its report (see its stderr above)");
    let seen: Value = serde_json::from_str(&line).expect("JSON line");
    let origin = seen["origin"].as_str().expect("origin").to_owned();

    // Chromium posts one report per violation: the image and the inline script.
    let received = upstream.next_n(2).await;
    drop(child.stdin.take());
    let _ = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await;

    let reports = security_items(&received);
    let mut directives = Vec::new();
    for (headers, report) in &reports {
        assert_eq!(
            headers["sentry_release"], "web@1.0",
            "the report URL's release is an item header"
        );
        let text = report.to_string();
        assert_no_secrets(
            "browser CSP report",
            &text,
            &[
                EMAIL,
                "9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c",
                "S3cr3tT0k3nValue1234",
                "S3ss10nId9988776655aa",
                "Inv1teT0kenZZ998877",
            ],
        );
        let csp = &report["csp-report"];
        let directive = csp["effective-directive"].as_str().expect("directive kept").to_owned();
        assert_eq!(csp["violated-directive"], directive.as_str());
        let document = csp["document-uri"].as_str().unwrap();
        assert!(
            document.starts_with(&format!("{origin}/users/***@example.com/reset/")),
            "{document}"
        );
        assert!(document.ends_with("&page=2"), "innocent parameters stay: {document}");
        assert!(
            csp["referrer"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{origin}/invite?token="))
        );
        assert_eq!(csp["disposition"], "enforce");
        assert_eq!(csp["status-code"], 200);
        if directive == "img-src" {
            let blocked = csp["blocked-uri"].as_str().unwrap();
            assert!(
                blocked.starts_with("http://localhost:"),
                "the blocked origin stays: {blocked}"
            );
            assert!(blocked.contains("/pixel.gif?session_id="), "{blocked}");
        } else {
            assert_eq!(csp["blocked-uri"], "inline");
            assert_eq!(csp["script-sample"], "console.log(\"***@example.com\")");
        }
        directives.push(directive);
    }
    directives.sort();
    assert_eq!(directives, ["img-src", "script-src-elem"]);
    assert_eq!(counter(&relay.metrics().requests, &["security", "200"]), 2);
    assert_eq!(counter(&relay.metrics().items_forwarded, &["raw_security"]), 2);
    assert!(counter(&relay.metrics().redactions, &["url_token"]) >= 4);
}

#[tokio::test]
async fn reporting_api_arrays_are_split_into_one_item_per_csp_report() {
    let (upstream, relay) = relay_and_upstream().await;
    let report = |directive: &str, blocked: &str| {
        json!({
            "type": "csp-violation",
            "age": 12,
            "url": "https://shop.example/checkout?cart=42&session_token=abc123",
            "user_agent": "Mozilla/5.0",
            "body": {
                "documentURL": "https://shop.example/checkout?cart=42&session_token=abc123",
                "referrer": format!("https://mail.example/u/{EMAIL}/inbox"),
                "blockedURL": blocked,
                "effectiveDirective": directive,
                "originalPolicy": "script-src 'self' 'nonce-r4nd0mN0nc3Value'; report-to csp",
                "sourceFile": "https://shop.example/app.3f2a1b.js",
                "sample": format!("fetch('/api?password={PASSWORD}')"),
                "disposition": "report",
                "statusCode": 200,
                "lineNumber": 10,
                "columnNumber": 3
            }
        })
    };
    let body = json!([
        report("script-src-elem", "https://cdn.evil.example/x.js?uid=9f8a7b6c5d4e3f2a1b0c9d8e"),
        {"type": "deprecation", "age": 1, "url": "https://shop.example/", "user_agent": "Mozilla/5.0", "body": {"id": "x"}},
        report("img-src", "data"),
    ]);
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/security/?sentry_key={KEY}&sentry_environment=prod"),
        &headers(&[("Content-Type", "application/reports+json")]),
        body.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.detail());
    assert_eq!(
        relay.metrics().scrub_duration.get_sample_count(),
        1,
        "the scrub is timed"
    );
    let received = upstream.next().await;
    let reports = security_items(std::slice::from_ref(&received));
    assert_eq!(
        reports.len(),
        2,
        "one item per csp-violation, the deprecation report dropped"
    );
    for (headers, report) in &reports {
        assert_eq!(headers["sentry_environment"], "prod");
        assert_no_secrets(
            "Reporting API report",
            &report.to_string(),
            &[
                EMAIL,
                PASSWORD,
                "abc123",
                "r4nd0mN0nc3Value",
                "9f8a7b6c5d4e3f2a1b0c9d8e",
            ],
        );
        assert_eq!(report["type"], "csp-violation");
        assert_eq!(report["age"], 12);
        let body = &report["body"];
        assert!(
            body["documentURL"]
                .as_str()
                .unwrap()
                .starts_with("https://shop.example/checkout?cart=42&")
        );
        assert_eq!(
            body["sourceFile"], "https://shop.example/app.3f2a1b.js",
            "a file name's short hash stays"
        );
        assert_eq!(
            body["originalPolicy"],
            "script-src 'self' 'nonce-[FILTERED]'; report-to csp"
        );
        assert_eq!(body["statusCode"], 200);
        assert_eq!(body["lineNumber"], 10);
    }
    assert_eq!(reports[0].1["body"]["effectiveDirective"], "script-src-elem");
    assert!(
        reports[0].1["body"]["blockedURL"]
            .as_str()
            .unwrap()
            .starts_with("https://cdn.evil.example/x.js?uid=")
    );
    assert_eq!(reports[1].1["body"]["blockedURL"], "data");
    assert_eq!(
        counter(&relay.metrics().items_dropped, &["raw_security", "unsupported_report"]),
        1
    );
    assert_eq!(counter(&relay.metrics().items_received, &["raw_security"]), 2);

    // The legacy shape on the other path, as `application/csp-report`.
    let legacy = json!({"csp-report": {
        "document-uri": "https://shop.example/reset?token=Zq81TokenValue",
        "violated-directive": "style-src", "effective-directive": "style-src",
        "blocked-uri": "inline", "original-policy": "style-src 'self'", "disposition": "enforce"
    }});
    let response = post_report(&relay, "csp-report/", "application/csp-report", &legacy).await;
    assert_eq!(response.status, 200);
    let reports = security_items(&[upstream.next().await]);
    let csp = &reports[0].1["csp-report"];
    assert_eq!(csp["document-uri"], "https://shop.example/reset?token=[FILTERED]");
    assert_eq!(csp["effective-directive"], "style-src");
}

#[tokio::test]
async fn nel_reports_go_to_the_upstream_nel_route_scrubbed() {
    let (upstream, relay) = relay_and_upstream().await;
    let body = json!([
        {
            "age": 500,
            "type": "network-error",
            "url": "https://api.example/v1/reset/3f1cd9e2-4b5a-4c6d-8e7f-a1b2c3d4e5f6?email=x&api_key=k3yV4lue",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "body": {
                "elapsed_time": 45,
                "method": "POST",
                "phase": "connection",
                "protocol": "http/1.1",
                "referrer": format!("https://app.example/profile/{EMAIL}"),
                "sampling_fraction": 1.0,
                "server_ip": "198.51.100.7",
                "status_code": 0,
                "type": "tcp.timed_out"
            }
        },
        {"age": 1, "type": "csp-violation", "url": "https://app.example/", "user_agent": "x", "body": {}}
    ]);
    let response = post_report(&relay, "nel/", "application/reports+json", &body).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    assert_eq!(
        relay.metrics().scrub_duration.get_sample_count(),
        1,
        "the scrub is timed"
    );
    let recorded = upstream.next().await;
    assert_eq!(recorded.path, format!("/api/{PROJECT}/nel/"));
    assert_eq!(recorded.header("content-type"), Some("application/reports+json"));
    assert_eq!(recorded.auth_key().as_deref(), Some(KEY));
    let text = String::from_utf8_lossy(&recorded.body).into_owned();
    assert_no_secrets(
        "NEL report",
        &text,
        &[EMAIL, "3f1cd9e2-4b5a-4c6d-8e7f-a1b2c3d4e5f6", "k3yV4lue"],
    );
    let reports: Value = serde_json::from_str(&text).unwrap();
    let reports = reports.as_array().expect("an array, as the browser sent");
    assert_eq!(reports.len(), 1, "only network-error reports");
    let report = &reports[0];
    assert!(
        report["url"]
            .as_str()
            .unwrap()
            .starts_with("https://api.example/v1/reset/")
    );
    assert_eq!(report["type"], "network-error");
    assert_eq!(report["age"], 500);
    let nel = &report["body"];
    for (field, value) in [
        ("phase", json!("connection")),
        ("type", json!("tcp.timed_out")),
        ("status_code", json!(0)),
        ("server_ip", json!("198.51.100.7")),
        ("method", json!("POST")),
        ("elapsed_time", json!(45)),
    ] {
        assert_eq!(nel[field], value, "{field} stays");
    }
    assert_eq!(nel["referrer"], "https://app.example/profile/***@example.com");
    assert_eq!(counter(&relay.metrics().items_received, &["nel"]), 1);
    assert_eq!(
        counter(&relay.metrics().items_dropped, &["nel", "unsupported_report"]),
        1
    );
    assert_eq!(counter(&relay.metrics().requests, &["nel", "200"]), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// OTLP

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> &'a str {
    match attribute(attributes, key) {
        Some(Any::StringValue(text)) => text,
        other => panic!("{key}: expected a string attribute, got {other:?}"),
    }
}

fn otlp_post_headers(content_type: &str) -> Vec<(String, String)> {
    headers(&[
        ("Content-Type", content_type),
        ("x-sentry-auth", &format!("sentry sentry_key={KEY}, sentry_version=7")),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_python_sdk_exports_traces_and_logs_through_the_relay() {
    let Some(python) = common::tool("SCRUB_RELAY_TEST_OTEL_PYTHON", "the OpenTelemetry Python SDK") else {
        return;
    };
    let (upstream, relay) = relay_and_upstream().await;
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python");
    let output = common::run_to_completion(
        &python,
        &["otel_send.py", &relay.url(""), &PROJECT.to_string(), KEY, "gzip"],
        &script_dir,
    )
    .await;
    let sent = common::json_report(&output);
    let trace_id = sent["trace_id"].as_str().unwrap().to_owned();

    // Three span exports (the health-check one is dropped whole, so nothing is forwarded for it) and two log exports.
    let received = upstream.next_n(4).await;
    let mut spans = Vec::new();
    let mut logs = Vec::new();
    for recorded in &received {
        assert_eq!(recorded.auth_key().as_deref(), Some(KEY));
        assert_eq!(recorded.header("content-type"), Some("application/x-protobuf"));
        let raw = String::from_utf8_lossy(&recorded.body).into_owned();
        assert_no_secrets(
            "OTLP protobuf",
            &raw,
            &[EMAIL, SSN, PASSWORD, BEARER_SECRET, CLIENT_IP, "abc123def456"],
        );
        if recorded.path == format!("/api/{PROJECT}/integration/otlp/v1/traces") {
            let request = ExportTraceServiceRequest::decode(&recorded.body[..]).expect("protobuf traces");
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
        } else {
            assert_eq!(recorded.path, format!("/api/{PROJECT}/integration/otlp/v1/logs"));
            let request = ExportLogsServiceRequest::decode(&recorded.body[..]).expect("protobuf logs");
            let resource = request.resource_logs[0].resource.as_ref().unwrap();
            assert_eq!(string_attribute(&resource.attributes, "service.name"), "checkout");
            for resource in request.resource_logs {
                for scope in resource.scope_logs {
                    logs.extend(scope.log_records);
                }
            }
        }
    }
    assert_eq!((spans.len(), logs.len()), (2, 2), "two spans and two log records");
    let server = spans
        .iter()
        .find(|span| span.name == "POST /checkout")
        .expect("server span kept");
    assert_eq!(hex(&server.trace_id), trace_id, "ids stay");
    assert_eq!(server.kind, 2);
    assert!(server.start_time_unix_nano > 0 && server.end_time_unix_nano >= server.start_time_unix_nano);
    let attributes = &server.attributes;
    assert_eq!(
        string_attribute(attributes, "http.request.header.authorization"),
        "[FILTERED]"
    );
    assert_eq!(
        string_attribute(attributes, "http.request.header.accept"),
        "application/json"
    );
    assert_eq!(string_attribute(attributes, "user.email"), "***@example.com");
    assert_eq!(string_attribute(attributes, "user.password"), "[FILTERED]");
    assert!(
        attribute(attributes, "client.address").is_none(),
        "the client IP is removed"
    );
    assert_eq!(
        string_attribute(attributes, "url.full"),
        "https://shop.example/checkout?session_token=[FILTERED]&page=2"
    );
    assert_eq!(
        attribute(attributes, "gen_ai.usage.input_tokens"),
        Some(&Any::IntValue(42))
    );
    assert_eq!(attribute(attributes, "max_tokens"), Some(&Any::IntValue(256)));
    assert_eq!(string_attribute(attributes, "http.route"), "/checkout");

    let db = spans
        .iter()
        .find(|span| span.name == "SELECT users")
        .expect("db span kept");
    assert_eq!(db.parent_span_id, server.span_id);
    assert_eq!(
        string_attribute(&db.attributes, "db.statement"),
        "SELECT * FROM users WHERE email = '***@example.com' AND ssn = '[redacted]'"
    );
    assert_eq!(string_attribute(&db.attributes, "db.system"), "postgresql");
    assert_eq!(db.events[0].name, "exception");
    assert_eq!(
        string_attribute(&db.events[0].attributes, "exception.message"),
        "lookup failed for ***@example.com"
    );
    let status = db.status.as_ref().unwrap();
    assert_eq!((status.code, status.message.as_str()), (2, "no user ***@example.com"));

    let warning = logs.iter().find(|log| log.severity_number == 13).expect("the warning");
    match warning.body.as_ref().and_then(|body| body.value.as_ref()) {
        Some(Any::StringValue(body)) => assert_eq!(body, "password reset requested by ***@example.com"),
        other => panic!("log body: {other:?}"),
    }
    assert_eq!(string_attribute(&warning.attributes, "user.email"), "***@example.com");
    assert_eq!(string_attribute(&warning.attributes, "api_key"), "[FILTERED]");

    let metrics = relay.metrics();
    assert_eq!(counter(&metrics.items_received, &["span"]), 3);
    assert_eq!(counter(&metrics.items_forwarded, &["span"]), 2);
    assert_eq!(counter(&metrics.items_dropped, &["span", "filtered_route"]), 1);
    assert_eq!(counter(&metrics.items_received, &["log"]), 2);
    assert_eq!(counter(&metrics.requests, &["otlp_traces", "202"]), 3);
    assert_eq!(counter(&metrics.requests, &["otlp_logs", "202"]), 2);
    assert!(counter(&metrics.redactions, &["sensitive_header"]) >= 1);
    assert!(counter(&metrics.redactions, &["send_default_pii"]) >= 1);
}

fn recorded_text(recorded: &Recorded) -> String {
    String::from_utf8_lossy(&recorded.body).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";

fn json_traces() -> Value {
    let attr = |key: &str, value: Value| json!({"key": key, "value": value});
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", json!({"stringValue": "api"})),
                                    attr("client.address", json!({"stringValue": CLIENT_IP}))]},
        "scopeSpans": [{
            "scope": {"name": "my.library", "version": "1.0.0"},
            "spans": [
                {
                    "traceId": TRACE_ID, "spanId": "eee19b7ec3c1b174", "name": format!("GET /users/{EMAIL}"),
                    "kind": 2, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
                    "attributes": [
                        attr("http.request.header.cookie", json!({"arrayValue": {"values": [{"stringValue": "sid=abc"}]}})),
                        attr("user.id", json!({"intValue": "1234567890123"})),
                        attr("db.query.text", json!({"stringValue": format!("UPDATE users SET ssn='{SSN}'")})),
                        attr("auth.token", json!({"intValue": "987654321"})),
                        attr("http.route", json!({"stringValue": "/users/:email"})),
                        attr("user.ip_address", json!({"stringValue": CLIENT_IP})),
                        attr("request.body", json!({"kvlistValue": {"values": [attr("password", json!({"stringValue": PASSWORD}))]}}))
                    ],
                    "events": [{"timeUnixNano": "1544712660500000000", "name": "retry",
                                "attributes": [attr("note", json!({"stringValue": format!("mail {EMAIL}")}))]}],
                    "status": {"code": 1}
                },
                {
                    "traceId": TRACE_ID, "spanId": "aaa19b7ec3c1b174", "name": "GET /health", "kind": 2,
                    "startTimeUnixNano": "1", "endTimeUnixNano": "2",
                    "attributes": [attr("http.route", json!({"stringValue": "/health"}))]
                },
                {
                    "traceId": TRACE_ID, "spanId": "bbb19b7ec3c1b174", "parentSpanId": "aaa19b7ec3c1b174",
                    "name": "redis GET", "kind": 3, "startTimeUnixNano": "1", "endTimeUnixNano": "2"
                }
            ]
        }]
    }]})
}

#[tokio::test]
async fn hand_written_otlp_json_traces_and_logs_keep_their_encoding() {
    let (upstream, relay) = relay_and_upstream().await;
    let traces = json_traces();
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/integration/otlp/v1/traces"),
        &headers(&[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("x-sentry-auth", &format!("sentry sentry_key={KEY}")),
        ]),
        &common::gzip(traces.to_string().as_bytes()),
        false,
    )
    .await;
    assert_eq!(response.status, 202, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let recorded = upstream.next().await;
    assert_eq!(recorded.path, format!("/api/{PROJECT}/integration/otlp/v1/traces"));
    assert_eq!(recorded.header("content-type"), Some("application/json"));
    let text = String::from_utf8_lossy(&recorded.body).into_owned();
    assert_no_secrets(
        "OTLP/JSON traces",
        &text,
        &[EMAIL, SSN, PASSWORD, CLIENT_IP, "sid=abc", "987654321"],
    );
    let forwarded: Value = serde_json::from_str(&text).unwrap();
    let resource = &forwarded["resourceSpans"][0];
    assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "api");
    let spans = resource["scopeSpans"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "the health-check server span and its child are dropped");
    let span = &spans[0];
    assert_eq!(span["traceId"], TRACE_ID);
    assert_eq!(span["spanId"], "eee19b7ec3c1b174");
    assert_eq!(
        span["startTimeUnixNano"], "1544712660000000000",
        "64-bit ints stay strings"
    );
    assert_eq!(span["name"], "GET /users/***@example.com");
    assert_eq!(span["kind"], 2);
    assert_eq!(span["status"], json!({"code": 1}));
    let attributes: Vec<(String, Value)> = span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone()))
        .collect();
    let get = |key: &str| attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    assert_eq!(
        get("http.request.header.cookie"),
        Some(json!({"arrayValue": {"values": [{"stringValue": "[FILTERED]"}]}}))
    );
    assert_eq!(get("user.id"), Some(json!({"intValue": "1234567890123"})));
    assert_eq!(
        get("db.query.text"),
        Some(json!({"stringValue": "UPDATE users SET ssn='[FILTERED]'"}))
    );
    assert_eq!(
        get("auth.token"),
        None,
        "a number under a sensitive key is removed, never retyped"
    );
    assert_eq!(get("user.ip_address"), None);
    assert_eq!(
        get("request.body"),
        Some(json!({"kvlistValue": {"values": [{"key": "password", "value": {"stringValue": "[FILTERED]"}}]}}))
    );
    assert_eq!(
        span["events"][0]["attributes"][0]["value"]["stringValue"],
        "mail ***@example.com"
    );
    assert_eq!(counter(&relay.metrics().items_dropped, &["span", "filtered_route"]), 2);

    let logs = json!({"resourceLogs": [{"resource": {}, "scopeLogs": [{"scope": {}, "logRecords": [{
        "timeUnixNano": "1544712660300000000", "severityNumber": 17, "severityText": "ERROR",
        "traceId": TRACE_ID, "spanId": "eee19b7ec3c1b174",
        "body": {"stringValue": format!("payment failed for {EMAIL} with Bearer {BEARER_SECRET}")},
        "attributes": [{"key": "http.response.header.set-cookie", "value": {"stringValue": "session=xyz"}},
                       {"key": "retry_count", "value": {"intValue": 3}}]
    }]}]}]});
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/integration/otlp/v1/logs/"),
        &otlp_post_headers("application/json; charset=utf-8"),
        logs.to_string().as_bytes(),
        false,
    )
    .await;
    assert_eq!(response.status, 202);
    let recorded = upstream.next().await;
    assert_eq!(recorded.path, format!("/api/{PROJECT}/integration/otlp/v1/logs"));
    let forwarded: Value = serde_json::from_slice(&recorded.body).unwrap();
    let record = &forwarded["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    let body = record["body"]["stringValue"].as_str().unwrap();
    assert!(body.starts_with("payment failed for ***@example.com with "), "{body}");
    assert_no_secrets(
        "OTLP/JSON log",
        &recorded_text(&recorded),
        &[EMAIL, BEARER_SECRET, "session=xyz"],
    );
    assert_eq!(record["attributes"][0]["value"]["stringValue"], "[FILTERED]");
    assert_eq!(record["attributes"][1]["value"]["intValue"], 3);
    assert_eq!(record["severityNumber"], 17);
    assert_eq!(record["traceId"], TRACE_ID);
    assert_eq!(record["timeUnixNano"], "1544712660300000000");
}

#[tokio::test]
async fn otlp_traces_answer_429_while_spans_are_rate_limited_and_logs_flow() {
    let (upstream, relay) = relay_and_upstream().await;
    upstream.answer_next(Answer::rate_limited("60", "60:span:project"));
    let traces = json_traces().to_string();
    let post = |path: &'static str, body: String| {
        let addr = relay.addr;
        async move {
            send_raw(
                addr,
                "POST",
                &format!("/api/{PROJECT}/integration/otlp/v1/{path}"),
                &otlp_post_headers("application/json"),
                body.as_bytes(),
                false,
            )
            .await
        }
    };
    assert_eq!(post("traces", traces.clone()).await.status, 202);
    upstream.next().await;
    let limits = relay.state.delivery.rate_limits();
    common::wait_until("the upstream's span limit is known", || {
        limits
            .limited_until(
                PROJECT,
                Some(scrub_relay::delivery::DataCategory::Span),
                tokio::time::Instant::now(),
            )
            .is_some()
    })
    .await;
    let limited = post("traces", traces).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert!(limited.header("x-sentry-rate-limits").unwrap().contains("span"));
    let logs = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "hi"}}]}]}]});
    assert_eq!(
        post("logs", logs.to_string()).await.status,
        202,
        "logs ignore rate limits"
    );
    let recorded = upstream.next().await;
    assert!(recorded.path.ends_with("/otlp/v1/logs"));
}

/// While the upstream limits everything, each route answers as Sentry's does: a CSP report gets the 429, a check-in
/// 202 (dropped and counted), and NEL, which ignores rate limits, is still forwarded.
#[tokio::test]
async fn rate_limited_reports_and_check_ins_get_their_routes_answers() {
    let (upstream, relay) = relay_and_upstream().await;
    upstream.answer_next(Answer::rate_limited("60", "60::project"));
    let check_in_url = format!("/api/{PROJECT}/cron/nightly-backup/{KEY}/?status=ok");
    let check_in = || send_raw(relay.addr, "GET", &check_in_url, &[], b"", false);
    assert_eq!(check_in().await.status, 202);
    upstream.next().await;
    let limits = relay.state.delivery.rate_limits();
    common::wait_until("the upstream's limit is known", || {
        limits.has_limits(PROJECT, tokio::time::Instant::now())
    })
    .await;

    let report = json!({"csp-report": {"document-uri": "https://shop.example/", "effective-directive": "img-src"}});
    let limited = post_report(&relay, "security/", "application/csp-report", &report).await;
    assert_eq!(limited.status, 429, "{}", limited.detail());
    assert!(limited.header("retry-after").is_some());
    assert_eq!(check_in().await.status, 202, "a check-in is never answered 429");
    let dropped = |item_type: &str| counter(&relay.metrics().items_dropped, &[item_type, "rate_limited"]);
    assert_eq!((dropped("raw_security"), dropped("check_in")), (1, 1));

    let nel = json!([{"type": "network-error", "url": "https://api.example/", "body": {"type": "tcp.timed_out"}}]);
    let response = post_report(&relay, "nel/", "application/reports+json", &nel).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    assert_eq!(upstream.next().await.path, format!("/api/{PROJECT}/nel/"));
    assert_eq!(
        upstream.received(),
        2,
        "only the first check-in and the NEL report were forwarded"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input

#[tokio::test]
async fn bad_input_on_every_route_gets_its_status_and_metric_and_nothing_is_forwarded() {
    let (upstream, relay) = relay_and_upstream().await;
    let auth = format!("sentry sentry_key={KEY}");
    let valid_traces = ExportTraceServiceRequest::default();
    let mut truncated = json_traces_protobuf();
    truncated.truncate(truncated.len() - 3);
    let big_csp = format!(r#"{{"csp-report":{{"document-uri":"{}"}}}}"#, "a".repeat(1024 * 1024));
    let bomb = common::gzip(&vec![b' '; 13 * 1024 * 1024]);
    let security = format!("/api/{PROJECT}/security/?sentry_key={KEY}");
    let nel = format!("/api/{PROJECT}/nel/?sentry_key={KEY}");
    let traces = format!("/api/{PROJECT}/integration/otlp/v1/traces");
    let logs = format!("/api/{PROJECT}/integration/otlp/v1/logs");
    let cron = format!("/api/{PROJECT}/cron/job/{KEY}/");
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        // wrong content type
        (
            "POST",
            security.clone(),
            vec![("Content-Type", "text/plain")],
            b"{}".to_vec(),
            415,
            "unsupported_content_type",
        ),
        (
            "POST",
            nel.clone(),
            vec![("Content-Type", "application/csp-report")],
            b"[]".to_vec(),
            415,
            "unsupported_content_type",
        ),
        (
            "POST",
            traces.clone(),
            vec![("Content-Type", "application/protobuf"), ("x-sentry-auth", &auth)],
            valid_traces.encode_to_vec(),
            415,
            "unsupported_content_type",
        ),
        // truncated protobuf, wrong-shape JSON
        (
            "POST",
            traces.clone(),
            vec![("Content-Type", "application/x-protobuf"), ("x-sentry-auth", &auth)],
            truncated,
            400,
            "invalid_otlp",
        ),
        (
            "POST",
            traces.clone(),
            vec![("Content-Type", "application/json"), ("x-sentry-auth", &auth)],
            br#"{"resourceLogs":[]}"#.to_vec(),
            400,
            "invalid_otlp",
        ),
        (
            "POST",
            logs.clone(),
            vec![("Content-Type", "application/json"), ("x-sentry-auth", &auth)],
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":"x"}]}]}"#.to_vec(),
            400,
            "invalid_otlp",
        ),
        (
            "POST",
            logs.clone(),
            vec![("Content-Type", "application/json"), ("x-sentry-auth", &auth)],
            b"{\"resourceLogs\":".to_vec(),
            400,
            "invalid_otlp",
        ),
        (
            "POST",
            security.clone(),
            vec![("Content-Type", "application/json")],
            br#"{"report":1}"#.to_vec(),
            400,
            "invalid_report",
        ),
        (
            "POST",
            security.clone(),
            vec![("Content-Type", "application/json")],
            br#"{"expect-ct-report":{"hostname":"a"}}"#.to_vec(),
            400,
            "invalid_report",
        ),
        (
            "POST",
            nel.clone(),
            vec![("Content-Type", "application/reports+json")],
            br#"{"type":"network-error"}"#.to_vec(),
            400,
            "invalid_report",
        ),
        (
            "POST",
            cron.clone(),
            vec![("Content-Type", "application/json")],
            br#"{"status":"finished"}"#.to_vec(),
            400,
            "invalid_check_in",
        ),
        (
            "GET",
            format!("{cron}?status=ok&duration=soon"),
            vec![],
            Vec::new(),
            400,
            "invalid_check_in",
        ),
        (
            "GET",
            format!("/api/{PROJECT}/cron/bad%20slug/{KEY}/?status=ok"),
            vec![],
            Vec::new(),
            400,
            "invalid_check_in",
        ),
        // oversize: a CSP body over 1 MiB, an OTLP body over 12 MiB once decompressed
        (
            "POST",
            security.clone(),
            vec![("Content-Type", "application/json")],
            big_csp.into_bytes(),
            413,
            "body_too_large",
        ),
        (
            "POST",
            logs.clone(),
            vec![
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
                ("x-sentry-auth", &auth),
            ],
            bomb,
            413,
            "decompressed_too_large",
        ),
        // missing auth
        (
            "POST",
            format!("/api/{PROJECT}/security/"),
            vec![("Content-Type", "application/csp-report")],
            b"{}".to_vec(),
            401,
            "missing_auth",
        ),
        (
            "POST",
            format!("/api/{PROJECT}/nel/"),
            vec![("Content-Type", "application/reports+json")],
            b"[]".to_vec(),
            401,
            "missing_auth",
        ),
        (
            "POST",
            traces.clone(),
            vec![("Content-Type", "application/x-protobuf")],
            valid_traces.encode_to_vec(),
            401,
            "missing_auth",
        ),
        (
            "GET",
            format!("/api/{PROJECT}/cron/job/?status=ok"),
            vec![],
            Vec::new(),
            401,
            "missing_auth",
        ),
        // two keys at once, and a method the route does not take
        (
            "GET",
            format!("{cron}?status=ok&sentry_key={KEY}"),
            vec![],
            Vec::new(),
            401,
            "multiple_auth",
        ),
        (
            "GET",
            traces.clone(),
            vec![("x-sentry-auth", &auth)],
            Vec::new(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, target, request_headers, body, status, kind) in cases {
        let before = relay.metrics().request_errors.with_label_values(&[kind]).get();
        let response = send_raw(relay.addr, method, &target, &headers(&request_headers), &body, false).await;
        assert_eq!(
            response.status,
            status,
            "{method} {target}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert!(
            !response.detail().is_empty(),
            "{method} {target}: a JSON error with a detail"
        );
        assert_eq!(
            relay.metrics().request_errors.with_label_values(&[kind]).get(),
            before + 1,
            "{method} {target}: counted as {kind}"
        );
    }
    assert_eq!(relay.metrics().envelopes_received.get(), 0, "nothing was queued");

    // A good request after all of that is the first and only thing the upstream sees.
    let response = send_raw(relay.addr, "GET", &format!("{cron}?status=ok"), &[], b"", false).await;
    assert_eq!(response.status, 202);
    let recorded = upstream.next().await;
    assert_eq!(check_in(&recorded)["status"], "ok");
    assert_eq!(upstream.received(), 1);
}

fn json_traces_protobuf() -> Vec<u8> {
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let span = Span {
        trace_id: vec![7; 16],
        span_id: vec![8; 8],
        name: format!("GET /users/{EMAIL}"),
        attributes: vec![KeyValue {
            key: "user.email".into(),
            value: Some(AnyValue {
                value: Some(Any::StringValue(EMAIL.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

// ---------------------------------------------------------------------------------------------------------------
// Delivery: the same queue, spool and retries as envelopes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_and_nel_bodies_wait_in_the_spool_through_an_outage_and_a_restart() {
    let spool = tempfile::tempdir().expect("spool dir");
    let down = MiniSentry::start().await;
    down.answer_always(Answer::status(503));
    let config = |upstream: &MiniSentry| {
        let mut config = common::relay_config(upstream);
        config.spool_dir = Some(spool.path().to_path_buf());
        config.retry_initial_backoff = Duration::from_millis(10);
        config.retry_max_backoff = Duration::from_millis(100);
        config
    };
    let relay = common::start_relay(config(&down)).await;
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/integration/otlp/v1/traces"),
        &otlp_post_headers("application/x-protobuf"),
        &json_traces_protobuf(),
        false,
    )
    .await;
    assert_eq!(response.status, 202);
    let nel = json!([{"type": "network-error", "age": 1, "url": "https://a.example/?token=t0k3nT0k3nT0k3n99",
                      "user_agent": "x", "body": {"phase": "dns", "type": "dns.unreachable"}}]);
    let response = post_report(&relay, "nel/", "application/reports+json", &nel).await;
    assert_eq!(response.status, 200);
    let spooled = relay.state.metrics.spool_envelopes.clone();
    common::wait_until("both bodies are in the spool", || spooled.get() == 2).await;
    relay.shutdown().await;

    let up = MiniSentry::start().await;
    let relay = common::start_relay(config(&up)).await;
    let mut received = up.next_n(2).await;
    received.sort_by(|a, b| a.path.cmp(&b.path));
    let (otlp, nel) = (&received[0], &received[1]);
    assert_eq!(otlp.path, format!("/api/{PROJECT}/integration/otlp/v1/traces"));
    assert_eq!(otlp.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(otlp.auth_key().as_deref(), Some(KEY));
    let request = ExportTraceServiceRequest::decode(&otlp.body[..]).expect("protobuf traces after the restart");
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.name, "GET /users/***@example.com");
    assert_eq!(string_attribute(&span.attributes, "user.email"), "***@example.com");
    assert_eq!(nel.path, format!("/api/{PROJECT}/nel/"));
    assert_eq!(nel.header("content-type"), Some("application/reports+json"));
    assert_no_secrets("spooled NEL", &recorded_text(nel), &["t0k3nT0k3nT0k3n99"]);
    assert_eq!(relay.state.metrics.spool_corrupt.get(), 0);
    relay.shutdown().await;
}
