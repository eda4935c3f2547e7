//! A real Prometheus (Debian's `prometheus`) scrapes a real relay under SDK traffic, with the shipped
//! `docker/prometheus.yml` and `docker/alerts.yml`: `promtool check rules` passes, every alert rule evaluates without
//! error, and every query of the Grafana dashboard (`docker/grafana/dashboards/scrub-relay.json`) returns data.
//!
//! `.ci/run` installs Prometheus and points `SCRUB_RELAY_TEST_PROMETHEUS` at its binary (`promtool` is found beside
//! it). Without the variable the Prometheus test skips with a message, except under `CI=true`, where it fails. The
//! dashboard's own structure (datasource, provisioning, compose mounts) is checked without Prometheus.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use common::{Answer, Capture, MiniSentry, RelayHandle};

const DASHBOARD: &str = "docker/grafana/dashboards/scrub-relay.json";
/// Prometheus scrapes and evaluates rules this often in the test (15 s in the shipped file).
const INTERVAL: &str = "1s";
/// How long Prometheus may take to start, and then to show the traffic in every query.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read_repo_file(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel of the dashboard that queries Prometheus (rows hold no queries), with its title.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            found.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            found.push(panel);
        }
    }
    found
}

/// (panel title, PromQL) for every query of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().expect("panel title").to_owned();
            panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title:?} has no queries"))
                .iter()
                .map(move |target| {
                    let expr = target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{title}: a target without expr"));
                    (title.clone(), expr.to_owned())
                })
        })
        .collect()
}

#[test]
fn the_dashboard_is_provisioned_by_compose_and_covers_the_promised_views() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "scrub-relay");

    // The datasource every panel names is the one the provisioning file creates.
    let datasources = read_repo_file("docker/grafana/provisioning/datasources/prometheus.yaml");
    let datasources: Value = serde_saphyr::from_str(&datasources).expect("datasource provisioning is YAML");
    let uid = datasources["datasources"][0]["uid"].as_str().expect("datasource uid");
    assert_eq!(datasources["datasources"][0]["url"], "http://prometheus:9090");
    for panel in panels(&dashboard) {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], uid, "{}", panel["title"]);
        }
    }

    // Compose mounts the provisioning directory and the dashboards where the provider looks for them.
    let provider = read_repo_file("docker/grafana/provisioning/dashboards/scrub-relay.yaml");
    let provider: Value = serde_saphyr::from_str(&provider).expect("dashboard provisioning is YAML");
    let dashboards_path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let compose: Value = serde_saphyr::from_str(&read_repo_file("docker/compose.yaml")).expect("compose is YAML");
    let mounts: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_array()
        .expect("grafana volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mounts.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro"),
        "{mounts:?}"
    );
    assert!(
        mounts.contains(&format!("./grafana/dashboards:{dashboards_path}:ro").as_str()),
        "{mounts:?}"
    );

    // The views the dashboard exists for: each of these metrics is queried by some panel.
    let queries = dashboard_queries(&dashboard);
    for metric in [
        "scrub_relay_items_received_total",
        "scrub_relay_items_forwarded_total",
        "scrub_relay_redactions_total",
        "scrub_relay_items_dropped_total",
        "scrub_relay_envelopes_dropped_total",
        "scrub_relay_scrub_duration_seconds_bucket",
        "scrub_relay_request_duration_seconds_bucket",
        "scrub_relay_queue_envelopes",
        "scrub_relay_spool_envelopes",
        "scrub_relay_upstream_requests_total",
        "scrub_relay_ready",
    ] {
        assert!(
            queries.iter().any(|(_, expr)| expr.contains(metric)),
            "no panel shows {metric}"
        );
    }
    assert!(
        queries
            .iter()
            .any(|(_, expr)| expr.contains(r#"reason="rate_limited""#)),
        "no panel shows rate limits"
    );
}

/// A free loopback port for Prometheus, which cannot report the port it bound when given port 0.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `text` with `from` replaced by `to`, which must occur exactly once (the shipped file changed otherwise).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in docker/prometheus.yml");
    text.replacen(from, to, 1)
}

/// A Prometheus server on loopback, stopped (killed) when dropped.
struct Prometheus {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
    base: String,
    client: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus with the shipped `docker/prometheus.yml`, changed only to scrape `target` and to load
    /// the alert rules from the repository, every [`INTERVAL`].
    async fn start(binary: &Path, target: std::net::SocketAddr) -> Prometheus {
        let shipped = read_repo_file("docker/prometheus.yml");
        let config = replace_once(&shipped, "scrub-relay:9091", &target.to_string());
        let config = replace_once(
            &config,
            "/etc/prometheus/alerts.yml",
            repo_path("docker/alerts.yml").to_str().expect("UTF-8 path"),
        );
        let config = replace_once(
            &config,
            "scrape_interval: 15s",
            &format!("scrape_interval: {INTERVAL}\n  evaluation_interval: {INTERVAL}"),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");

        let port = free_port();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let prometheus = Prometheus {
            _child: child,
            _dir: dir,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.base);
        let (client, ready) = (&prometheus.client, ready.as_str());
        poll("Prometheus answers /-/ready", || async move {
            let response = client.get(ready).send().await;
            response.is_ok_and(|r| r.status().is_success()).then_some(())
        })
        .await;
        prometheus
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.base), params).expect("valid URL");
        let response = self.client.get(url).send().await.expect("Prometheus answers");
        let status = response.status();
        let body: Value = response.json().await.expect("Prometheus answers JSON");
        assert!(
            status.is_success() && body["status"] == "success",
            "{path} {params:?}: {status} {body}"
        );
        body["data"].clone()
    }

    /// The result vector of an instant query; a query Prometheus refuses fails the test.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.get("/api/v1/query", &[("query", promql)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`PROMETHEUS_WAIT`]. Scrapes and rule evaluations
/// happen on Prometheus's own clock, so the test waits for their results, never for a duration.
async fn poll<T, Fut>(what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PROMETHEUS_WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Real SDK traffic of every kind the dashboard shows: every capture in `tests/fixtures/sdk/` (errors, transactions,
/// logs, attachments, health checks that are dropped), one envelope Sentry answers 429 (so the next errors are
/// dropped for the rate limit) and one malformed request.
async fn send_traffic(relay: &RelayHandle, upstream: &MiniSentry) {
    upstream.answer_next(Answer::rate_limited("60", "60:error:project"));
    let first = common::post_envelope(relay, 7, "publickey", &common::event_envelope(&"a".repeat(32))).await;
    assert_eq!(first.status, 200, "{}", first.detail());
    common::wait_until("the upstream answered 429", || {
        relay.metrics().upstream_requests.with_label_values(&["429"]).get() == 1
    })
    .await;
    // The next error for that project is dropped at the door, as Sentry asked.
    let limited = common::post_envelope(relay, 7, "publickey", &common::event_envelope(&"b".repeat(32))).await;
    assert_eq!(limited.status, 429, "{}", limited.detail());

    let captures = Capture::all();
    for capture in &captures {
        let response = capture.replay(relay).await;
        assert!(response.status < 500, "{}: {}", capture.name, response.status);
    }
    let malformed = common::post_envelope(relay, 7, "publickey", b"not an envelope").await;
    assert_eq!(malformed.status, 400, "{}", malformed.detail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_relay_and_every_alert_and_dashboard_query_evaluates() {
    let Some(binary) = common::tool("SCRUB_RELAY_TEST_PROMETHEUS", "Prometheus") else {
        return;
    };

    // The shipped alert rules pass Prometheus's own checker.
    let promtool = binary.with_file_name("promtool");
    let check = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo_path("docker/alerts.yml"))
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", promtool.display()));
    assert!(
        check.status.success(),
        "promtool check rules docker/alerts.yml:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let upstream = MiniSentry::start().await;
    let relay = common::start_relay(common::relay_config(&upstream)).await;
    let prometheus = Prometheus::start(&binary, relay.addr).await;
    send_traffic(&relay, &upstream).await;
    let received = relay.metrics().envelopes_received.get();

    // Prometheus has scraped the relay after the traffic.
    let prometheus = &prometheus;
    poll("Prometheus has scraped the traffic", || async move {
        let result = prometheus.query("scrub_relay_envelopes_received_total").await;
        let value = result.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
        (value >= received as f64).then_some(())
    })
    .await;

    // Every alert rule in the shipped file has been evaluated by Prometheus without an error.
    let alerts: Value = serde_saphyr::from_str(&read_repo_file("docker/alerts.yml")).expect("alerts.yml is YAML");
    let shipped: BTreeSet<String> = alerts["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules"))
        .map(|rule| rule["alert"].as_str().expect("alert name").to_owned())
        .collect();
    let evaluated = poll("Prometheus has evaluated every alert rule", || async move {
        let data = prometheus.get("/api/v1/rules", &[]).await;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.iter().all(|rule| {
            rule["lastEvaluation"]
                .as_str()
                .is_some_and(|time| !time.starts_with("0001"))
        });
        (evaluated && !rules.is_empty()).then_some(rules)
    })
    .await;
    let loaded: BTreeSet<String> = evaluated
        .iter()
        .map(|rule| rule["name"].as_str().expect("rule name").to_owned())
        .collect();
    assert_eq!(
        loaded, shipped,
        "Prometheus loaded the alert rules of docker/alerts.yml"
    );
    for rule in &evaluated {
        assert_eq!(
            rule["health"], "ok",
            "alert {} does not evaluate: {}",
            rule["name"], rule["lastError"]
        );
        // And the expression on its own, as an operator would paste it into the query page.
        prometheus.query(rule["query"].as_str().expect("rule query")).await;
    }

    // The dashboard's instance variable finds the relay; every panel query returns data for it.
    let instances = prometheus
        .get(
            "/api/v1/label/instance/values",
            &[("match[]", "scrub_relay_build_info")],
        )
        .await;
    let instance = relay.addr.to_string();
    assert_eq!(instances, serde_json::json!([instance]));
    let queries: Vec<(String, String)> = dashboard_queries(&dashboard())
        .into_iter()
        .map(|(title, expr)| {
            // Grafana's own variables: the rate window it would pick for a 1 s scrape interval, and the instance.
            let expr = expr.replace("$__rate_interval", "1m").replace("$instance", &instance);
            assert!(!expr.contains('$'), "{title}: an unknown variable in {expr}");
            (title, expr)
        })
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let deadline = tokio::time::Instant::now() + PROMETHEUS_WAIT;
    for (title, expr) in &queries {
        // A rate needs two scrapes of a series after it first appeared: wait for Prometheus, not for a duration.
        while prometheus.query(expr).await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "dashboard panel {title:?}: no data for {expr}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
