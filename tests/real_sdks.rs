//! The real SDKs against the real relay: Python `sentry-sdk` (gzip and br), `@sentry/node` 11.x (direct and
//! tunnel) and 10.x, and the Rust `sentry` crate each send an error, a transaction or spans, and a log full of
//! planted PII through the relay to MiniSentry, which must receive all of it with the PII gone and the innocent
//! fields (ids, release, token counts) intact.
//!
//! The Python and Node SDKs are installed by `.ci/run`, which points `SCRUB_RELAY_TEST_PYTHON`,
//! `SCRUB_RELAY_TEST_NODE_DIR` and `SCRUB_RELAY_TEST_NODE10_DIR` at them. Without those variables the tests skip
//! with a message, except under `CI=true`, where a missing SDK is a failure.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::{MiniSentry, Recorded, RelayHandle};

/// The PII every driver plants. None of it may reach MiniSentry through the relay.
const EMAIL: &str = "jane.doe@example.com";
const MASKED_EMAIL: &str = "***@example.com";
const SSN: &str = "123-45-6789";
const PASSWORD: &str = "hunter2-S3cret!";
const BEARER_SECRET: &str = "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr";
const RAW_SECRETS: [&str; 4] = [EMAIL, SSN, PASSWORD, BEARER_SECRET];

const RELEASE: &str = "scrub-relay-sdktest@1.2.3";
const PROJECT: u64 = 42;
const PUBLIC_KEY: &str = "publickey123";
/// How long MiniSentry waits for the forwarded items after the SDK got its answers.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a driver script prints on stdout: the ids the forwarded data must still carry.
#[derive(Debug)]
struct Sent {
    event_id: String,
    trace_id: String,
    prompt_len: usize,
}

fn dsn(relay: std::net::SocketAddr) -> String {
    format!("http://{PUBLIC_KEY}@{relay}/{PROJECT}")
}

/// Runs a driver script to completion and parses its report; any failure shows the script's stderr.
async fn run_script(program: &Path, args: &[&str], dir: &Path) -> Sent {
    let report = common::json_report(&common::run_to_completion(program, args, dir).await);
    Sent {
        event_id: report["event_id"].as_str().expect("event_id").to_owned(),
        trace_id: report["trace_id"].as_str().expect("trace_id").to_owned(),
        prompt_len: report["prompt_len"].as_u64().expect("prompt_len") as usize,
    }
}

/// Every JSON item payload MiniSentry received, with its item type.
fn items(received: &[Recorded]) -> Vec<(String, Value)> {
    received
        .iter()
        .flat_map(|request| request.envelope().items.clone())
        .filter_map(|item| {
            let payload: Value = serde_json::from_slice(item.payload()).ok()?;
            Some((item.type_name().to_owned(), payload))
        })
        .collect()
}

/// Container items (`span`, `log`) hold their entries under `items`.
fn entries<'a>(items: &'a [(String, Value)], ty: &str) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|(name, _)| name == ty)
        .flat_map(|(_, payload)| payload["items"].as_array().into_iter().flatten())
        .collect()
}

fn has_everything(received: &[Recorded], event_id: &str) -> bool {
    let items = items(received);
    let has_event = items
        .iter()
        .any(|(ty, payload)| ty == "event" && payload["event_id"] == event_id);
    let has_spans = items.iter().any(|(ty, _)| ty == "transaction" || ty == "span");
    let has_log = items.iter().any(|(ty, _)| ty == "log");
    has_event && has_spans && has_log
}

/// String value of a typed attribute (`{"value": ..., "type": ...}`) or a plain field.
fn attribute<'a>(entry: &'a Value, key: &str) -> &'a Value {
    let attribute = &entry["attributes"][key];
    if attribute.is_object() {
        &attribute["value"]
    } else {
        &entry["data"][key]
    }
}

/// The assertions shared by every SDK: the planted PII is gone, what identifies and measures the data is not.
fn assert_scrubbed(sdk: &str, received: &[Recorded], sent: &Sent) {
    for request in received {
        let text = String::from_utf8_lossy(&request.envelope().to_bytes()).into_owned();
        for secret in RAW_SECRETS {
            assert!(
                !text.contains(secret),
                "{sdk}: `{secret}` reached the upstream:\n{text}"
            );
        }
    }
    let items = items(received);

    // The error event: masked, filtered, and still the same event.
    let event = items
        .iter()
        .find(|(ty, payload)| ty == "event" && payload["event_id"] == sent.event_id.as_str())
        .map(|(_, payload)| payload)
        .unwrap_or_else(|| panic!("{sdk}: event {} not forwarded", sent.event_id));
    let message = event["exception"]["values"][0]["value"]
        .as_str()
        .or_else(|| event["message"].as_str())
        .or_else(|| event["logentry"]["message"].as_str())
        .unwrap_or_else(|| panic!("{sdk}: event has no message: {event}"));
    assert!(message.contains(MASKED_EMAIL), "{sdk}: email not masked in `{message}`");
    assert_eq!(event["extra"]["password"], "[FILTERED]", "{sdk}: extra.password");
    assert_eq!(event["release"], RELEASE, "{sdk}: release");
    assert_eq!(event["extra"]["order_total"], 4999, "{sdk}: innocent extra");
    assert_eq!(event["user"]["id"], "u-1001", "{sdk}: user id");
    assert_eq!(event["user"]["email"], format!("{MASKED_EMAIL}"), "{sdk}: user email");

    // Spans: the db statement is masked, the gen_ai prompt cut, token counts and trace ids untouched.
    let mut spans: Vec<&Value> = entries(&items, "span");
    for (ty, payload) in &items {
        if ty == "transaction" {
            assert_eq!(
                payload["contexts"]["trace"]["trace_id"],
                sent.trace_id.as_str(),
                "{sdk}: transaction trace id"
            );
            assert_eq!(payload["transaction"], "POST /api/chat", "{sdk}: transaction name");
            spans.extend(payload["spans"].as_array().into_iter().flatten());
        }
    }
    let name = |span: &Value| {
        span["name"]
            .as_str()
            .or_else(|| span["description"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    let db = spans
        .iter()
        .find(|span| name(span).starts_with("SELECT"))
        .unwrap_or_else(|| panic!("{sdk}: db span not forwarded"));
    assert_eq!(
        name(db),
        format!("SELECT * FROM users WHERE email = '{MASKED_EMAIL}'"),
        "{sdk}: db span name"
    );
    assert_eq!(db["trace_id"], sent.trace_id.as_str(), "{sdk}: db span trace id");
    let chat = spans
        .iter()
        .find(|span| name(span) == "chat gpt-4o")
        .unwrap_or_else(|| panic!("{sdk}: gen_ai span not forwarded"));
    assert_eq!(chat["trace_id"], sent.trace_id.as_str(), "{sdk}: gen_ai span trace id");
    assert_eq!(
        attribute(chat, "gen_ai.usage.input_tokens"),
        2500,
        "{sdk}: input tokens"
    );
    assert_eq!(
        attribute(chat, "gen_ai.usage.output_tokens"),
        120,
        "{sdk}: output tokens"
    );
    assert_eq!(attribute(chat, "gen_ai.request.model"), "gpt-4o", "{sdk}: model");
    let prompt = attribute(chat, "gen_ai.prompt")
        .as_str()
        .expect("gen_ai.prompt is a string");
    assert!(
        prompt.starts_with("You are a support bot."),
        "{sdk}: prompt start: {prompt}"
    );
    assert!(
        prompt.chars().count() < sent.prompt_len && prompt.chars().count() <= 2100,
        "{sdk}: prompt of {} chars not truncated to about 2000",
        prompt.chars().count()
    );

    // What the SDKs add about the runtime (versions, OS, CPU, memory, module lists) is never personal data;
    // V8's `11.3.244.8-node.38` looks like an IP address, kernel versions like phone numbers.
    for (ty, payload) in &items {
        if ty == "event" || ty == "transaction" {
            for key in ["os", "device", "runtime", "app", "culture", "rust", "trace"] {
                assert_untouched(sdk, &format!("{ty} contexts.{key}"), &payload["contexts"][key]);
            }
            assert_untouched(sdk, &format!("{ty} sdk"), &payload["sdk"]);
            assert_untouched(sdk, &format!("{ty} modules"), &payload["modules"]);
        }
    }
    for entry in entries(&items, "span").into_iter().chain(entries(&items, "log")) {
        for (key, attribute) in entry["attributes"].as_object().into_iter().flatten() {
            let runtime = ["sentry.", "process.", "device.", "os.", "culture.", "app.", "server."];
            if runtime.iter().any(|prefix| key.starts_with(prefix)) && !key.starts_with("sentry.message.") {
                assert_untouched(sdk, key, attribute);
            }
        }
    }

    // The log: body and parameters masked.
    let logs = entries(&items, "log");
    let log = logs
        .iter()
        .find(|log| log["body"].as_str().is_some_and(|body| body.starts_with("User ")))
        .unwrap_or_else(|| panic!("{sdk}: log not forwarded"));
    let body = log["body"].as_str().expect("log body");
    assert!(
        body.contains(MASKED_EMAIL) && body.contains("signed up"),
        "{sdk}: log body `{body}`"
    );
    assert!(
        log["trace_id"].as_str().is_some_and(|id| id.len() == 32),
        "{sdk}: log trace id: {log}"
    );
}

/// Fails if any string under `value` carries a redaction.
fn assert_untouched(sdk: &str, place: &str, value: &Value) {
    match value {
        Value::String(text) => {
            for marker in ["[redacted]", "[FILTERED]", "[Filtered]", "***@", "[truncated]"] {
                assert!(!text.contains(marker), "{sdk}: innocent {place} was scrubbed: `{text}`");
            }
        }
        Value::Array(values) => values.iter().for_each(|value| assert_untouched(sdk, place, value)),
        Value::Object(map) => map.values().for_each(|value| assert_untouched(sdk, place, value)),
        _ => {}
    }
}

async fn relay_and_upstream() -> (MiniSentry, RelayHandle) {
    let upstream = MiniSentry::start().await;
    let relay = common::start_relay(common::relay_config(&upstream)).await;
    (upstream, relay)
}

/// Collects what MiniSentry receives until `done` holds; after [`DELIVERY_TIMEOUT`] fails with what did arrive.
async fn collect_until(upstream: &MiniSentry, sdk: &str, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    let mut received = Vec::new();
    loop {
        while let Some(request) = upstream.try_next().await {
            received.push(request);
        }
        if done(&received) {
            return received;
        }
        if tokio::time::Instant::now() > deadline {
            let summary: Vec<Vec<String>> = received
                .iter()
                .map(|request| {
                    request
                        .envelope()
                        .items
                        .iter()
                        .map(|item| item.type_name().to_owned())
                        .collect()
                })
                .collect();
            panic!(
                "{sdk}: the upstream did not receive an event, spans and a log within {DELIVERY_TIMEOUT:?}; got {summary:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn python_sdk(compression: &str) {
    let Some(python) = common::tool("SCRUB_RELAY_TEST_PYTHON", "the sentry-python SDK") else {
        return;
    };
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python");

    let (upstream, relay) = relay_and_upstream().await;
    let sent = run_script(&python, &["send.py", &dsn(relay.addr), compression], &script_dir).await;
    let sdk = format!("python/{compression}");
    let received = collect_until(&upstream, &sdk, |received| has_everything(received, &sent.event_id)).await;
    assert_scrubbed(&sdk, &received, &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_gzip() {
    python_sdk("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_brotli() {
    python_sdk("br").await;
}

/// The control: straight to MiniSentry, the driver's PII arrives raw, so the relay really is what removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_really_sends_raw_pii() {
    let Some(python) = common::tool("SCRUB_RELAY_TEST_PYTHON", "the sentry-python SDK") else {
        return;
    };
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python");
    let upstream = MiniSentry::start().await;
    let direct = format!("http://{PUBLIC_KEY}@{}/{PROJECT}", upstream.addr);
    let sent = run_script(&python, &["send.py", &direct, "gzip"], &script_dir).await;
    let received = collect_until(&upstream, "python direct", |received| {
        has_everything(received, &sent.event_id)
    })
    .await;
    let all: String = received
        .iter()
        .map(|request| String::from_utf8_lossy(&request.envelope().to_bytes()).into_owned())
        .collect();
    for secret in RAW_SECRETS {
        assert!(
            all.contains(secret),
            "the Python driver no longer sends `{secret}`; the relay tests prove nothing"
        );
    }
}

async fn node_sdk(variable: &str, sdk: &str, tunnel: bool) {
    let Some(dir) = common::tool(variable, "the @sentry/node SDK") else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node/send.js");
    let (upstream, relay) = relay_and_upstream().await;
    let dsn = dsn(relay.addr);
    let tunnel_url = format!("http://{}/tunnel", relay.addr);
    let mut args = vec![script.to_str().expect("UTF-8 path"), dsn.as_str()];
    if tunnel {
        args.push(&tunnel_url);
    }
    let sent = run_script(Path::new("node"), &args, &dir).await;
    let received = collect_until(&upstream, sdk, |received| has_everything(received, &sent.event_id)).await;
    assert_scrubbed(sdk, &received, &sent);
    if tunnel {
        // The tunnel's `dsn` names the relay; upstream must not see a DSN for a host it is not.
        for request in &received {
            assert_eq!(
                request.path,
                format!("/api/{PROJECT}/envelope/"),
                "{sdk}: tunnel envelope forwarded elsewhere"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_11() {
    node_sdk("SCRUB_RELAY_TEST_NODE_DIR", "node 11", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_11_tunnel() {
    node_sdk("SCRUB_RELAY_TEST_NODE_DIR", "node 11 tunnel", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_10() {
    node_sdk("SCRUB_RELAY_TEST_NODE10_DIR", "node 10", false).await;
}

/// The Rust SDK in this process. `sentry::init` binds a process-wide client, so this is the only test that uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk() {
    let (upstream, relay) = relay_and_upstream().await;
    let dsn = dsn(relay.addr);
    // The SDK blocks (flush, close); keep it off the runtime threads that serve the relay.
    let sent = tokio::task::spawn_blocking(move || drive_rust_sdk(&dsn))
        .await
        .expect("Rust SDK driver");
    let received = collect_until(&upstream, "rust", |received| has_everything(received, &sent.event_id)).await;
    assert_scrubbed("rust", &received, &sent);
}

fn drive_rust_sdk(dsn: &str) -> Sent {
    use sentry::protocol::{Event, Exception, Level, Request, User};

    // The SDK's reqwest client needs a rustls provider even for plain http; the relay may have installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let guard = sentry::init(
        sentry::ClientOptions::new()
            .dsn(dsn)
            .release(RELEASE)
            .environment("sdktest")
            .server_name("sdktest-host")
            .traces_sample_rate(1.0)
            .send_default_pii(true),
    );
    assert!(guard.is_enabled(), "the Rust SDK did not accept the DSN {dsn}");

    let event_id = sentry::with_scope(
        |scope| {
            scope.set_user(Some(User {
                id: Some("u-1001".into()),
                email: Some(EMAIL.into()),
                ..Default::default()
            }));
            scope.set_extra("password", PASSWORD.into());
            scope.set_extra("order_total", 4999.into());
            scope.set_tag("checkout.step", "payment");
        },
        || {
            sentry::capture_event(Event {
                level: Level::Error,
                exception: vec![Exception {
                    ty: "SignupError".into(),
                    value: Some(format!("signup failed for {EMAIL} with SSN {SSN}")),
                    ..Default::default()
                }]
                .into(),
                request: Some(Request {
                    url: "https://shop.example.com/api/signup".parse().ok(),
                    method: Some("POST".into()),
                    headers: [("Authorization".to_owned(), format!("Bearer {BEARER_SECRET}"))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
    );

    let prompt =
        format!("You are a support bot. Customer Jane Doe, email {EMAIL}, SSN {SSN}. ") + &"Be kind. ".repeat(300);
    let transaction = sentry::start_transaction(sentry::TransactionContext::new("POST /api/chat", "http.server"));
    let trace_id = transaction.get_trace_context().trace_id.to_string();
    let db = transaction.start_child("db", &format!("SELECT * FROM users WHERE email = '{EMAIL}'"));
    db.set_data("db.system", "postgresql".into());
    db.finish();
    let chat = transaction.start_child("gen_ai.chat", "chat gpt-4o");
    chat.set_data("gen_ai.request.model", "gpt-4o".into());
    chat.set_data("gen_ai.prompt", prompt.clone().into());
    chat.set_data("gen_ai.usage.input_tokens", 2500.into());
    chat.set_data("gen_ai.usage.output_tokens", 120.into());
    chat.finish();
    transaction.finish();

    sentry::logger_info!(
        ssn = SSN,
        user.email = EMAIL,
        "User {} signed up with SSN {}",
        EMAIL,
        SSN
    );

    assert!(
        guard.flush(Some(Duration::from_secs(20))),
        "the Rust SDK did not flush within 20 s"
    );
    drop(guard);
    Sent {
        event_id: event_id.simple().to_string(),
        trace_id,
        prompt_len: prompt.chars().count(),
    }
}
