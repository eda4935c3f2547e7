//! Running the relay in production: `/metrics` in the Prometheus text format with counters that match the traffic,
//! hot reload of the rules under load, logs free of payload values, the `healthcheck` subcommand, upstreams behind a
//! proxy or on HTTPS, and the Docker, Compose and Kubernetes files that ship in `docker/`.
//!
//! Tests that need the real signal path (SIGHUP) or the process's own log output spawn the built binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{MiniSentry, RawResponse, Recorded, WAIT, headers, send_raw};

// === Prometheus text format ===

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: metric family types by name, and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one series `name` with exactly `labels`, or 0 when the series does not exist (yet): a
    /// Prometheus counter that was never incremented is simply absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert!(
            matching.len() <= 1,
            "series {name}{wanted:?} appears {} times",
            matching.len()
        );
        matching.first().map_or(0.0, |s| s.value)
    }

    /// Every series of `name` with a non-zero value, as `(labels, value)`.
    fn nonzero(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.value != 0.0)
            .map(|s| (s.labels.clone(), s.value))
            .collect()
    }
}

/// A strict parser for the text format 0.0.4 (what `prometheus::TextEncoder` writes and Prometheus scrapes): every
/// sample must belong to a family declared by `# TYPE` before it, names and label names must be valid, label values
/// properly escaped, values parseable floats, and no series may appear twice.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut helps = BTreeSet::new();
    let mut seen = BTreeSet::new();
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    for (index, line) in text.lines().enumerate() {
        let at = |message: String| format!("line {}: {message}: {line:?}", index + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            let name = parts.next().ok_or_else(|| at("comment without a metric name".into()))?;
            let tail = parts.next().unwrap_or_default();
            match keyword {
                "HELP" => {
                    check_metric_name(name).map_err(at)?;
                    if !helps.insert(name.to_owned()) {
                        return Err(at("second HELP for the same family".into()));
                    }
                }
                "TYPE" => {
                    check_metric_name(name).map_err(at)?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail) {
                        return Err(at(format!("unknown type {tail:?}")));
                    }
                    if exposition.types.insert(name.to_owned(), tail.to_owned()).is_some() {
                        return Err(at("second TYPE for the same family".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&sample.name, &exposition.types)
            .ok_or_else(|| at(format!("sample {} has no preceding TYPE", sample.name)))?;
        let kind = exposition.types[family].as_str();
        if kind == "counter" && sample.value < 0.0 {
            return Err(at("negative counter".into()));
        }
        if kind == "histogram" && sample.name.ends_with("_bucket") && !sample.labels.contains_key("le") {
            return Err(at("histogram bucket without le".into()));
        }
        if !seen.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        exposition.samples.push(sample);
    }
    Ok(exposition)
}

/// The declared family a sample name belongs to: itself, or a histogram/summary's `_bucket`, `_sum`, `_count`.
fn family_of<'a>(name: &str, types: &'a BTreeMap<String, String>) -> Option<&'a String> {
    if let Some((family, _)) = types.get_key_value(name) {
        return Some(family);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let (family, kind) = types.get_key_value(base)?;
        matches!(kind.as_str(), "histogram" | "summary").then_some(family)
    })
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("invalid label name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value, then `,` or `}`.
            let start = chars.peek().map(|&(i, _)| i).ok_or("unterminated labels")?;
            if after_brace[start..].starts_with('}') {
                chars.next();
                break;
            }
            let eq = after_brace[start..].find('=').ok_or("label without =")? + start;
            let label = &after_brace[start..eq];
            check_label_name(label)?;
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label} value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("invalid escape \\{other}")),
                    },
                    '\n' => return Err("raw newline in a label value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} given twice"));
            }
            match chars.next().map(|(_, c)| c) {
                Some(',') => continue,
                Some('}') => break,
                other => return Err(format!("expected , or }} after a label, found {other:?}")),
            }
        }
        let consumed = chars.peek().map_or(after_brace.len(), |&(i, _)| i);
        rest = &after_brace[consumed..];
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ');
    let value_text = fields.next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text => text
            .parse::<f64>()
            .map_err(|_| format!("value {text:?} is not a float"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("timestamp {timestamp:?} is not an integer"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[test]
fn the_exposition_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let parsed = parse_exposition(good).expect("valid exposition");
    assert_eq!(parsed.value("a_total", &[("x", "q\"\\\n"), ("y", "")]), 3.0);
    assert_eq!(parsed.value("h_count", &[]), 1.0);
    for bad in [
        "a 1\n",                                          // no TYPE
        "# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n", // duplicate series
        "# TYPE a counter\na{x=1} 1\n",                   // unquoted value
        "# TYPE a counter\na{x=\"1\"} one\n",             // not a float
        "# TYPE a counter\na -1\n",                       // negative counter
        "# TYPE a gauge\na 1",                            // no final newline
        "# TYPE a gauge\n\na 1\n",                        // empty line
        "# TYPE a-b gauge\n",                             // bad name
        "# TYPE a gauge\na{x=\"\\q\"} 1\n",               // bad escape
        "# TYPE h histogram\nh_bucket 1\n",               // bucket without le
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn a_fresh_relays_metrics_parse_and_are_all_documented() {
    let metrics = scrub_relay::metrics::Metrics::new();
    let exposition = parse_exposition(&metrics.encode()).expect("valid exposition");
    assert_eq!(exposition.value("scrub_relay_rules_version", &[]), 1.0);
    assert_eq!(exposition.value("scrub_relay_rules_last_reload_ok", &[]), 1.0);
    let docs = read_repo_file("README.md");
    for family in exposition.types.keys() {
        assert!(
            docs.contains(&format!("`{family}`")),
            "README.md does not document {family}"
        );
    }
}

// === Docker, Compose, Kubernetes ===

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|error| panic!("read {relative}: {error}"))
}

fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read_repo_file(relative);
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|error| panic!("{relative} is not valid YAML: {error}"));
    documents.into_iter().filter(|document| !document.is_null()).collect()
}

fn yaml_document(relative: &str) -> Value {
    let text = read_repo_file(relative);
    serde_saphyr::from_str(&text).unwrap_or_else(|error| panic!("{relative} is not valid YAML: {error}"))
}

/// The port of a `host:port` address.
fn port_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map(|(_, port)| port)
        .unwrap_or_else(|| panic!("{address:?} has no port"))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

#[test]
fn compose_runs_an_app_the_relay_and_prometheus_on_the_documented_ports() {
    let compose = yaml_document("docker/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    assert_eq!(
        services.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["app", "grafana", "prometheus", "scrub-relay"])
    );

    let relay = &compose["services"]["scrub-relay"];
    assert_eq!(str_at(relay, "/build/dockerfile"), "docker/Dockerfile");
    let listen = str_at(relay, "/environment/SCRUB_RELAY_LISTEN");
    let metrics_listen = str_at(relay, "/environment/SCRUB_RELAY_METRICS_LISTEN");
    let published: Vec<&str> = relay["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        published,
        [format!("{0}:{0}", port_of(listen))],
        "the ingest port is published, metrics is not"
    );
    assert!(
        relay["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/var/lib/scrub-relay/spool"))),
        "the spool is on a volume"
    );

    // The app sends to the relay by its service name and ingest port, and waits until the relay is healthy.
    let dsn = str_at(&compose["services"]["app"], "/environment/SENTRY_DSN");
    assert!(
        dsn.starts_with("http://") && dsn.contains(&format!("@scrub-relay:{}/", port_of(listen))),
        "{dsn}"
    );
    assert_eq!(
        str_at(&compose["services"]["app"], "/depends_on/scrub-relay/condition"),
        "service_healthy"
    );
    let app_script = str_at(&compose["services"]["app"], "/volumes/0");
    assert!(
        repo_path("docker").join(app_script.split(':').next().unwrap()).exists(),
        "{app_script} exists"
    );

    // Prometheus scrapes the relay's metrics listener.
    let prometheus = yaml_document("docker/prometheus.yml");
    let target = str_at(&prometheus, "/scrape_configs/0/static_configs/0/targets/0");
    assert_eq!(target, format!("scrub-relay:{}", port_of(metrics_listen)));
    assert_eq!(str_at(&prometheus, "/scrape_configs/0/metrics_path"), "/metrics");

    // The docs name the same ports.
    let docs = read_repo_file("README.md");
    assert!(
        docs.contains(&format!("port {}", port_of(metrics_listen))),
        "docs name the metrics port"
    );
    assert!(
        docs.contains(&format!("@scrub-relay:{}/", port_of(listen))),
        "docs name the app's DSN"
    );
}

/// A Kubernetes quantity in bytes (`512Mi`, `1Gi`).
fn kubernetes_bytes(quantity: &str) -> u64 {
    let (number, factor) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|number| (number, *factor)))
        .unwrap_or((quantity, 1));
    number
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("quantity {quantity:?}"))
        * factor
}

#[test]
fn the_example_alerts_use_metrics_the_relay_exports() {
    let alerts = yaml_document("docker/alerts.yml");
    let rules = alerts["groups"][0]["rules"].as_array().expect("alert rules");
    assert!(rules.len() >= 3);
    let docs = read_repo_file("README.md");
    let metric = regex::Regex::new(r"scrub_relay_[a-z_]+").expect("valid regex");
    for rule in rules {
        let name = str_at(rule, "/alert");
        let expr = str_at(rule, "/expr");
        let mut names = metric.find_iter(expr).map(|m| m.as_str()).peekable();
        assert!(names.peek().is_some(), "{name} uses a relay metric");
        for used in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(used, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
            assert!(
                docs.contains(&format!("| `{family}` |")),
                "{name}: {used} is not a documented metric"
            );
        }
    }
    // Prometheus loads the file where compose mounts it.
    let prometheus = yaml_document("docker/prometheus.yml");
    let rule_file = str_at(&prometheus, "/rule_files/0");
    let compose = yaml_document("docker/compose.yaml");
    let mounts = compose["services"]["prometheus"]["volumes"]
        .as_array()
        .expect("volumes");
    assert!(
        mounts
            .iter()
            .any(|m| m.as_str() == Some(&format!("./alerts.yml:{rule_file}:ro"))),
        "alerts.yml mounted"
    );
}

/// Every container in a pod spec, init containers included.
fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|key| pod_spec[key].as_array())
        .flatten()
        .collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

#[test]
fn kubernetes_manifests_probe_real_routes_on_declared_ports() {
    for file in [
        "docker/kubernetes/shared-service.yaml",
        "docker/kubernetes/sidecar.yaml",
        "docker/kubernetes/statefulset.yaml",
    ] {
        let documents = yaml_documents(file);
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
            .expect("a Deployment or StatefulSet");
        let pod = &deployment["spec"]["template"]["spec"];
        let relay = containers(pod)
            .into_iter()
            .find(|c| {
                c["image"]
                    .as_str()
                    .is_some_and(|image| image.starts_with("scrub-relay"))
            })
            .unwrap_or_else(|| panic!("{file}: no relay container"));
        let declared_ports: BTreeMap<&str, u64> = relay["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().expect("named port"),
                    p["containerPort"].as_u64().expect("port number"),
                )
            })
            .collect();
        let metrics_port: u64 = port_of(env_value(relay, "SCRUB_RELAY_METRICS_LISTEN").expect("metrics listener"))
            .parse()
            .expect("numeric port");

        let mut probes = 0;
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(get) = relay[probe].get("httpGet") else {
                continue;
            };
            probes += 1;
            let path = get["path"].as_str().expect("probe path");
            let route = scrub_relay::admin::AdminRoute::from_path(path)
                .unwrap_or_else(|| panic!("{file}: {probe} asks {path}, which the relay does not serve"));
            let expected = if probe == "livenessProbe" {
                scrub_relay::admin::AdminRoute::Liveness
            } else {
                scrub_relay::admin::AdminRoute::Readiness
            };
            assert_eq!(route, expected, "{file}: {probe} asks the wrong kind of health");
            let port = get["port"].as_str().expect("named probe port");
            assert_eq!(
                declared_ports.get(port),
                Some(&metrics_port),
                "{file}: {probe} port {port} is the metrics listener"
            );
        }
        assert!(probes >= 2, "{file}: liveness and readiness probes");

        // The rules come from a ConfigMap mounted as a directory over the default rules path, and that rules file
        // compiles.
        let rules_path = env_value(relay, "SCRUB_RELAY_RULES").expect("rules path");
        let mount = relay["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| rules_path.starts_with(m["mountPath"].as_str().unwrap_or("//")))
            .expect("the rules directory is mounted");
        assert!(
            mount.get("subPath").is_none(),
            "{file}: a subPath mount would never see ConfigMap updates"
        );
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("volume");
        let config_map_name = volume["configMap"]["name"].as_str().expect("a ConfigMap volume");
        let config_map = yaml_documents("docker/kubernetes/shared-service.yaml")
            .into_iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == config_map_name)
            .expect("the ConfigMap is defined in shared-service.yaml");
        let rules_file = Path::new(rules_path).file_name().unwrap().to_str().unwrap();
        let rules_yaml = config_map["data"][rules_file]
            .as_str()
            .expect("rules.yaml in the ConfigMap");
        assert!(
            rules_yaml == read_repo_file("rules.yaml"),
            "the ConfigMap in shared-service.yaml must hold a copy of rules.yaml, indented by 4 spaces; copy it again"
        );
        scrub_relay::rules::CompiledRules::from_yaml(rules_yaml)
            .unwrap_or_else(|error| panic!("{file}: the ConfigMap's rules do not compile: {error}"));

        // The spool is on a volume, and the root filesystem is read-only.
        let spool = env_value(relay, "SCRUB_RELAY_SPOOL_DIR").expect("spool dir");
        let spool_mount = relay["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == spool)
            .unwrap_or_else(|| panic!("{file}: the spool is on a volume"));
        assert_eq!(relay["securityContext"]["readOnlyRootFilesystem"], true, "{file}");

        // The relay's own caps fit the pod's: a full spool answers 503, a full emptyDir gets the pod evicted; the
        // memory queue must leave room under the memory limit for requests being decoded.
        // An emptyDir with a sizeLimit, or a StatefulSet's claim with its storage request.
        let spool_volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .chain(
                deployment["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .find(|v| v["name"] == spool_mount["name"] || v["metadata"]["name"] == spool_mount["name"])
            .unwrap_or_else(|| panic!("{file}: no volume for the spool"));
        let size_limit = kubernetes_bytes(
            spool_volume["emptyDir"]["sizeLimit"]
                .as_str()
                .or(spool_volume["spec"]["resources"]["requests"]["storage"].as_str())
                .expect("spool sizeLimit or storage request"),
        );
        let spool_max = env_value(relay, "SCRUB_RELAY_SPOOL_MAX_BYTES").expect("spool cap set for the volume");
        let spool_max = scrub_relay::config::parse_size(spool_max).expect("a size") as u64;
        assert!(
            spool_max < size_limit,
            "{file}: spool cap {spool_max} must stay under the volume's {size_limit}"
        );
        let memory_limit = kubernetes_bytes(relay["resources"]["limits"]["memory"].as_str().expect("memory limit"));
        let queue_max = env_value(relay, "SCRUB_RELAY_QUEUE_MAX_BYTES").expect("queue cap set for the memory limit");
        let queue_max = scrub_relay::config::parse_size(queue_max).expect("a size") as u64;
        assert!(
            queue_max * 2 <= memory_limit,
            "{file}: queue cap {queue_max} leaves too little of {memory_limit}"
        );
    }

    let shared = yaml_documents("docker/kubernetes/shared-service.yaml");
    let deployment = shared.iter().find(|d| d["kind"] == "Deployment").unwrap();
    // The autoscaler owns the replica count, keeps several, and a node drain can always evict one of them.
    let autoscaler = shared
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .expect("a HorizontalPodAutoscaler");
    assert_eq!(autoscaler["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        autoscaler["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the autoscaler owns the replica count"
    );
    let min_replicas = autoscaler["spec"]["minReplicas"].as_u64().expect("minReplicas");
    let budget = shared
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert!(
        min_replicas >= 2 && budget["spec"]["minAvailable"].as_u64().expect("minAvailable") < min_replicas,
        "a shared service runs several replicas and can lose one to a drain"
    );
    let resource = &autoscaler["spec"]["metrics"][0]["resource"];
    assert_eq!(resource["name"], "cpu");
    assert!(
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"].is_string(),
        "CPU utilization is relative to the container's CPU request"
    );
    let service = shared.iter().find(|d| d["kind"] == "Service").expect("a Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn the_dockerfile_runs_unprivileged_with_a_shell_free_healthcheck() {
    let dockerfile = read_repo_file("docker/Dockerfile");
    let instruction = |keyword: &str| -> Vec<String> {
        dockerfile
            .lines()
            .filter(|line| line.starts_with(keyword))
            .map(|line| line[keyword.len()..].trim().to_owned())
            .collect()
    };
    assert!(
        instruction("FROM ").last().unwrap().ends_with(":nonroot"),
        "runtime stage runs as nonroot"
    );
    assert_eq!(instruction("USER "), ["nonroot:nonroot"]);
    assert_eq!(instruction("STOPSIGNAL "), ["SIGTERM"]);
    assert_eq!(instruction("EXPOSE "), ["3000"]);
    assert_eq!(instruction("VOLUME "), [r#"["/var/lib/scrub-relay/spool"]"#]);
    let healthcheck = instruction("HEALTHCHECK ").pop().expect("a HEALTHCHECK");
    assert!(
        healthcheck.ends_with(r#"CMD ["/scrub-relay", "healthcheck"]"#),
        "exec form, no shell: {healthcheck}"
    );
    assert!(dockerfile.contains("COPY rules.yaml /etc/scrub-relay/rules.yaml"));
    assert!(dockerfile.contains("SCRUB_RELAY_LISTEN=0.0.0.0:3000"));
    assert!(dockerfile.contains("SCRUB_RELAY_SPOOL_DIR=/var/lib/scrub-relay/spool"));
    let ignore = read_repo_file(".dockerignore");
    assert!(
        ignore.lines().any(|line| line == "target/"),
        ".dockerignore keeps build output out of the context"
    );
}

// === The relay as a process ===

/// Log lines a spawned relay wrote to stderr, shared with the thread that reads them.
#[derive(Default)]
struct LogLines {
    lines: Mutex<Vec<String>>,
    added: Condvar,
}

impl LogLines {
    /// Waits until some line satisfies `predicate` and returns it; fails the test after [`WAIT`].
    fn wait_for(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|line| predicate(line)) {
                return line.clone();
            }
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| {
                panic!(
                    "timed out waiting for a log line: {what}\n--- log so far ---\n{}",
                    lines.join("\n")
                )
            });
            lines = self.added.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// The relay binary, running with JSON logs on stderr.
struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    logs: Arc<LogLines>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A JSON log line's field, or `None` when the line is not JSON or has no such string field.
fn log_field(line: &str, field: &str) -> Option<String> {
    let value: Value = serde_json::from_str(line).ok()?;
    value.get(field)?.as_str().map(str::to_owned)
}

impl RelayProcess {
    /// Starts `scrub-relay run` on loopback port 0 (main and metrics listeners) with `args` added, and waits until
    /// both listeners are bound.
    fn start(upstream: &MiniSentry, args: &[&str]) -> RelayProcess {
        RelayProcess::start_with_env(&upstream.url(), args, &[])
    }

    /// [`RelayProcess::start`] with `upstream` as the upstream URL and `env` added to its environment.
    fn start_with_env(upstream: &str, args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_scrub-relay"));
        // The test's own environment must not configure the relay under test, nor send its upstream through a proxy.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy().to_ascii_uppercase();
            if name_text.starts_with("SCRUB_RELAY_") || name_text == "RUST_LOG" || name_text.ends_with("_PROXY") {
                command.env_remove(name);
            }
        }
        command
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--upstream",
            ])
            .arg(upstream)
            .envs(env.iter().copied())
            .args(["--log-format", "json"])
            .args(args)
            .args(if args.contains(&"--shutdown-timeout") {
                &[][..]
            } else {
                &["--shutdown-timeout", "5s"][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the relay binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(LogLines::default());
        let reader_logs = logs.clone();
        let reader = std::thread::spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            while stderr.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                reader_logs.lines.lock().unwrap().push(text);
                reader_logs.added.notify_all();
                line.clear();
            }
        });
        let listening = logs.wait_for("the relay listens", |line| {
            log_field(line, "message").as_deref() == Some("listening")
        });
        let metrics_listening = logs.wait_for("the metrics listener listens", |line| {
            log_field(line, "message").as_deref() == Some("metrics listening")
        });
        let addr = log_field(&listening, "addr")
            .expect("addr field")
            .parse()
            .expect("socket address");
        let metrics_addr = log_field(&metrics_listening, "addr")
            .expect("addr field")
            .parse()
            .expect("socket address");
        RelayProcess {
            child,
            addr,
            metrics_addr,
            logs,
            reader: Some(reader),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.expect("run kill").success(), "kill -{signal} failed");
    }

    /// The metrics listener's `/metrics`, parsed.
    async fn metrics(&self) -> Exposition {
        let response = send_raw(self.metrics_addr, "GET", "/metrics", &[], b"", false).await;
        assert_eq!(response.status, 200);
        parse_exposition(&String::from_utf8(response.body).expect("UTF-8")).expect("valid exposition")
    }

    /// Polls `/metrics` until `condition` holds; fails the test after [`WAIT`].
    async fn wait_for_metrics(&self, what: &str, condition: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let exposition = self.metrics().await;
            if condition(&exposition) {
                return exposition;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit and for its last log line; returns every log line.
    fn stop(self) -> Vec<String> {
        self.signal("TERM");
        self.wait_for_exit()
    }

    /// Waits for the process to exit cleanly and for its last log line; returns every log line.
    fn wait_for_exit(mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the relay") {
                assert!(status.success(), "the relay exits cleanly on SIGTERM: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "the relay did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reader
            .take()
            .expect("reader thread")
            .join()
            .expect("reader thread");
        self.logs.all()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // Only a failed test gets here with the process still running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs an uncompressed envelope to `/api/42/envelope/` as the Python SDK would.
async fn post(addr: SocketAddr, envelope: &[u8]) -> RawResponse {
    let auth = "Sentry sentry_key=publickey123, sentry_version=7, sentry_client=sentry.python/2.75.0";
    send_raw(
        addr,
        "POST",
        "/api/42/envelope/",
        &headers(&[
            ("X-Sentry-Auth", auth),
            ("Content-Type", "application/x-sentry-envelope"),
        ]),
        envelope,
        false,
    )
    .await
}

/// An error event whose message carries `text`.
fn message_envelope(event_id: &str, text: &str) -> Vec<u8> {
    let event = serde_json::json!({
        "event_id": event_id,
        "message": text,
        "level": "error",
        "platform": "python",
        "sdk": {"name": "sentry.python", "version": "2.75.0"},
    });
    format!("{{\"event_id\":\"{event_id}\"}}\n{{\"type\":\"event\"}}\n{event}\n").into_bytes()
}

/// The message of the first event item in a forwarded envelope.
fn forwarded_message(recorded: &Recorded) -> String {
    let envelope = recorded.envelope();
    let item = envelope
        .items
        .iter()
        .find(|item| item.type_name() == "event")
        .expect("an event item");
    let event: Value = serde_json::from_slice(item.payload()).expect("event JSON");
    event["message"]
        .as_str()
        .or_else(|| event["logentry"]["message"].as_str())
        .expect("a message")
        .to_owned()
}

/// Waits for the forwarded envelope whose header carries `event_id`, skipping others (background traffic).
async fn forwarded_with_id(upstream: &MiniSentry, event_id: &str) -> Recorded {
    loop {
        let recorded = upstream.next().await;
        if recorded.envelope.as_ref().and_then(|envelope| envelope.event_id()) == Some(event_id) {
            return recorded;
        }
    }
}

/// A 32-hex-digit event id for the n-th envelope of a test.
fn event_id(n: usize) -> String {
    format!("{n:032x}")
}

// === Metrics match the traffic ===

#[tokio::test]
async fn dropped_health_check_spans_are_counted() {
    let upstream = MiniSentry::start().await;
    let relay = common::start_relay(common::relay_config(&upstream)).await;
    // @sentry/node in span-streaming mode: four segment spans, three of them on health-check routes.
    assert_eq!(common::Capture::load("node-http-2").replay(&relay).await.status, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let response = send_raw(relay.addr, "GET", "/metrics", &[], b"", false).await;
        let metrics = parse_exposition(&String::from_utf8(response.body).expect("UTF-8")).expect("valid exposition");
        if metrics.value("scrub_relay_envelopes_forwarded_total", &[]) >= 1.0 {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the envelope was never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metrics.value("scrub_relay_spans_dropped_total", &[]), 3.0);
    // The stream removes them itself (issue #11): no item is handed to the tree walk.
    assert_eq!(metrics.value("scrub_relay_items_tree_walked_total", &[]), 0.0);
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let upstream = MiniSentry::start().await;
    let relay = common::start_relay(common::relay_config(&upstream)).await;

    // One Python error event with one planted email, and one real Python health-check transaction.
    let event = message_envelope(&event_id(1), "Refund failed for jane.doe@example.com");
    assert_eq!(post(relay.addr, &event).await.status, 200);
    let health = common::Capture::load("py-health-1");
    let response = send_raw(
        relay.addr,
        &health.method,
        &health.target(),
        &health.headers,
        &health.body,
        false,
    )
    .await;
    assert_eq!(response.status, 200, "a filtered envelope is still accepted");

    let forwarded = forwarded_with_id(&upstream, &event_id(1)).await;
    let message = forwarded_message(&forwarded);
    assert!(
        !message.contains("jane.doe") && message.contains("Refund failed for"),
        "{message}"
    );

    let scrape = |relay: &common::RelayHandle| {
        let addr = relay.addr;
        async move {
            let response = send_raw(addr, "GET", "/metrics", &[], b"", false).await;
            assert_eq!(response.status, 200);
            assert_eq!(
                response.header("content-type"),
                Some("text/plain; version=0.0.4; charset=utf-8")
            );
            parse_exposition(&String::from_utf8(response.body).expect("UTF-8")).expect("valid exposition")
        }
    };
    // Delivery is asynchronous: wait until the upstream's answer has been counted.
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = scrape(&relay).await;
        if metrics.value("scrub_relay_envelopes_forwarded_total", &[]) >= 1.0 {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forwarded envelope was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let series = |name: &str| -> Vec<String> {
        let mut found: Vec<String> = metrics
            .nonzero(name)
            .into_iter()
            .map(|(labels, value)| {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{{{}}} {value}", labels.join(","))
            })
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        series("scrub_relay_items_received_total"),
        ["{item_type=event} 1", "{item_type=transaction} 1"]
    );
    assert_eq!(series("scrub_relay_items_forwarded_total"), ["{item_type=event} 1"]);
    assert_eq!(
        series("scrub_relay_items_dropped_total"),
        ["{item_type=transaction,reason=filtered_route} 1"]
    );
    assert_eq!(series("scrub_relay_redactions_total"), ["{rule=email} 1"]);
    // The event is streamed; so is the filtered transaction, which the stream removes without the tree walk.
    assert_eq!(metrics.value("scrub_relay_items_tree_walked_total", &[]), 0.0);
    assert_eq!(
        metrics.value(
            "scrub_relay_requests_total",
            &[("endpoint", "envelope"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(metrics.value("scrub_relay_envelopes_received_total", &[]), 2.0);
    assert_eq!(metrics.value("scrub_relay_envelopes_forwarded_total", &[]), 1.0);
    assert_eq!(series("scrub_relay_upstream_requests_total"), ["{outcome=2xx} 1"]);
    assert_eq!(series("scrub_relay_request_errors_total"), Vec::<String>::new());
    let wire_bytes = (event.len() + health.body.len()) as f64;
    assert_eq!(
        metrics.value("scrub_relay_received_bytes_total", &[("stage", "wire")]),
        wire_bytes
    );
    assert_eq!(metrics.value("scrub_relay_scrub_duration_seconds_count", &[]), 2.0);
    assert_eq!(metrics.value("scrub_relay_ready", &[]), 1.0);
    assert_eq!(upstream.received(), 1, "the health check never reached the upstream");
    relay.shutdown().await;
}

// === Hot reload ===

/// Replaces a file the way editors and the kubelet do (write a temporary file, rename it over), so a poll never
/// reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("write the temporary file");
    std::fs::rename(&temporary, path).expect("rename over the rules file");
}

const RULES_V1: &str = "version: 1\n";
/// V1 plus a custom rule for a made-up internal code that no built-in detector knows.
const RULES_V2: &str = "version: 1\ncustom_rules:\n  - id: zebra_code\n    pattern: 'ZEBRA-CODE-[0-9]+'\n";
/// Invalid: an unknown field on line 3.
const RULES_INVALID: &str = "version: 1\ncustom_rules: []\nno_such_setting: true\n";
const PLANTED_CODE: &str = "ZEBRA-CODE-12345";

/// Sends the `n`-th envelope of a test, its message holding [`PLANTED_CODE`], and returns that message as the
/// upstream received it.
async fn code_as_forwarded(addr: SocketAddr, upstream: &MiniSentry, n: usize) -> String {
    let response = post(addr, &message_envelope(&event_id(n), &format!("order {PLANTED_CODE}"))).await;
    assert_eq!(response.status, 200, "{}", response.detail());
    forwarded_message(&forwarded_with_id(upstream, &event_id(n)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_under_traffic_and_keeps_them_when_the_new_file_is_invalid() {
    let upstream = MiniSentry::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let rules_path = dir.path().join("rules.yaml");
    write_atomically(&rules_path, RULES_V1);
    // Polling off: only the signal may trigger the reloads this test counts.
    let relay = RelayProcess::start(
        &upstream,
        &["--rules", rules_path.to_str().unwrap(), "--rules-poll-interval", "0"],
    );

    // Background traffic for the whole test: every answer must be 200, reloads included.
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (addr, sent, stop) = (relay.addr, sent.clone(), stop.clone());
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let n = 1000 + sent.load(Ordering::SeqCst);
                let response = post(addr, &message_envelope(&event_id(n), "background traffic")).await;
                if response.status != 200 {
                    failures.push((response.status, String::from_utf8_lossy(&response.body).into_owned()));
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }
    });
    let traffic_passes = |beyond: usize| {
        let sent = sent.clone();
        async move {
            common::wait_until("background traffic goes on", || {
                sent.load(Ordering::SeqCst) > beyond + 3
            })
            .await
        }
    };
    traffic_passes(0).await;

    // Version 1 knows nothing of the code.
    assert!(code_as_forwarded(relay.addr, &upstream, 1).await.contains(PLANTED_CODE));

    // A valid file: the new rule takes effect.
    write_atomically(&rules_path, RULES_V2);
    relay.signal("HUP");
    let metrics = relay
        .wait_for_metrics("the reload is counted", |m| {
            m.value("scrub_relay_rules_reloads_total", &[("result", "ok")]) == 1.0
        })
        .await;
    assert_eq!(metrics.value("scrub_relay_rules_version", &[]), 2.0);
    assert_eq!(metrics.value("scrub_relay_rules_last_reload_ok", &[]), 1.0);
    traffic_passes(sent.load(Ordering::SeqCst)).await;
    let message = code_as_forwarded(relay.addr, &upstream, 2).await;
    assert!(
        !message.contains(PLANTED_CODE) && message.starts_with("order "),
        "redacted by the new rule: {message}"
    );
    relay
        .wait_for_metrics("the new rule is counted", |m| {
            m.value("scrub_relay_redactions_total", &[("rule", "zebra_code")]) >= 1.0
        })
        .await;

    // An invalid file: refused, the old rules stay in force.
    write_atomically(&rules_path, RULES_INVALID);
    relay.signal("HUP");
    let metrics = relay
        .wait_for_metrics("the failed reload is counted", |m| {
            m.value("scrub_relay_rules_reloads_total", &[("result", "error")]) == 1.0
        })
        .await;
    assert_eq!(metrics.value("scrub_relay_rules_last_reload_ok", &[]), 0.0);
    assert_eq!(metrics.value("scrub_relay_rules_version", &[]), 2.0);
    traffic_passes(sent.load(Ordering::SeqCst)).await;
    let message = code_as_forwarded(relay.addr, &upstream, 3).await;
    assert!(
        !message.contains(PLANTED_CODE),
        "the previous rules still apply: {message}"
    );

    // The metrics listener serves the operator routes only.
    assert_eq!(
        post(relay.metrics_addr, &message_envelope(&event_id(4), "x"))
            .await
            .status,
        404
    );
    assert_eq!(
        send_raw(relay.metrics_addr, "GET", "/readyz", &[], b"", false)
            .await
            .status,
        200
    );

    stop.store(true, Ordering::SeqCst);
    let failures = tokio::time::timeout(WAIT, traffic)
        .await
        .expect("traffic stops")
        .expect("traffic task");
    assert_eq!(
        failures,
        Vec::<(u16, String)>::new(),
        "no request failed around the reloads"
    );

    let logs = relay.stop();
    let refusals: Vec<&String> = logs
        .iter()
        .filter(|line| log_field(line, "level").as_deref() == Some("WARN") && line.contains("reload refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "one log line for the refused file: {logs:#?}");
    let error = log_field(refusals[0], "error").expect("the cause is in the error field");
    assert!(error.contains("line 3"), "the cause names the line: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rules_file_is_picked_up_without_a_signal() {
    let upstream = MiniSentry::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let rules_path = dir.path().join("rules.yaml");
    write_atomically(&rules_path, RULES_V1);
    let relay = RelayProcess::start(
        &upstream,
        &[
            "--rules",
            rules_path.to_str().unwrap(),
            "--rules-poll-interval",
            "100ms",
        ],
    );

    write_atomically(&rules_path, RULES_V2);
    relay
        .wait_for_metrics("the changed file is loaded", |m| {
            m.value("scrub_relay_rules_version", &[]) == 2.0
        })
        .await;
    assert!(!code_as_forwarded(relay.addr, &upstream, 1).await.contains(PLANTED_CODE));

    // An invalid edit is reported once, however many polls see it.
    write_atomically(&rules_path, RULES_INVALID);
    relay
        .wait_for_metrics("the invalid file is refused", |m| {
            m.value("scrub_relay_rules_last_reload_ok", &[]) == 0.0
        })
        .await;
    // Let at least a few more polls happen (the next valid change proves they ran), then check the count.
    write_atomically(&rules_path, RULES_V1);
    let metrics = relay
        .wait_for_metrics("the fixed file is loaded", |m| {
            m.value("scrub_relay_rules_version", &[]) == 3.0
        })
        .await;
    assert_eq!(
        metrics.value("scrub_relay_rules_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(metrics.value("scrub_relay_rules_last_reload_ok", &[]), 1.0);
    relay.stop();
}

// === Logs carry no payload values ===

/// `(what it tests, request target, headers, body)` of a request the relay must refuse.
type HostileRequest = (&'static str, String, Vec<(String, String)>, Vec<u8>);

/// Values planted in the fixtures and requests below. None may appear in the relay's log output.
const PLANTED_SECRETS: &[&str] = &[
    "jane.doe@example.com",
    "jane.doe",
    "123-45-6789",
    "hunter2-S3cret!",
    "4111 1111 1111 1111",
    "4111111111111111",
    "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "AKIAIOSFODNN7EXAMPLE",
    "abc123sessionvalue",
    "203.0.113.7",
    // Not a secret (it ships in every browser bundle), but it identifies a project and logs never need it.
    "publickey123",
];

/// The relay forwards with hyper-util's client directly, and with reqwest when the environment sends the upstream
/// through a proxy: `HTTP_PROXY` gets the request (for a plain-HTTP upstream, in absolute form, for the upstream's
/// host), and `NO_PROXY` naming the upstream makes the relay connect directly again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_behind_a_proxy_from_the_environment_is_reached_through_it() {
    // Plays the proxy: it records what reaches it and answers 200 as the upstream would.
    let proxy = MiniSentry::start().await;
    let proxy_url = proxy.url();
    // Not resolvable: only the proxy can deliver there.
    let relay = RelayProcess::start_with_env("http://sentry.invalid:9", &[], &[("HTTP_PROXY", &proxy_url)]);
    let response = post(relay.addr, &common::event_envelope("9ec79c33ec9942ab8353589fcb2e04dc")).await;
    assert_eq!(response.status, 200);
    let proxied = proxy.next().await;
    assert_eq!(proxied.path, "/api/42/envelope/");
    assert_eq!(proxied.headers["host"], "sentry.invalid:9");
    let envelope = proxied.envelope.expect("the envelope reached the proxy");
    assert_eq!(
        envelope.headers.get("event_id").and_then(Value::as_str),
        Some("9ec79c33ec9942ab8353589fcb2e04dc")
    );
    relay.stop();

    let upstream = MiniSentry::start().await;
    let relay = RelayProcess::start_with_env(
        &upstream.url(),
        &[],
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "127.0.0.1")],
    );
    let response = post(relay.addr, &common::event_envelope("0123456789abcdef0123456789abcdef")).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.next().await.path, "/api/42/envelope/");
    relay.stop();
    assert_eq!(proxy.received(), 1, "NO_PROXY: the second relay did not use the proxy");
}

/// A relay that trusts the test CA of `tests/fixtures/tls/` and nothing else (`roots` is an empty directory), as an
/// operator points it at a self-hosted Sentry's private CA.
fn relay_trusting_the_test_ca(upstream: &str, args: &[&str], roots: &Path) -> RelayProcess {
    let ca = common::tls_fixture("ca.pem");
    let env = [
        ("SSL_CERT_FILE", ca.to_str().expect("UTF-8 path")),
        ("SSL_CERT_DIR", roots.to_str().expect("UTF-8 path")),
    ];
    RelayProcess::start_with_env(upstream, args, &env)
}

/// Sentry's ingest is HTTPS and offers HTTP/2 by ALPN: the relay verifies the certificate against the roots it was
/// given, speaks HTTP/2 when offered and HTTP/1.1 otherwise, and what arrives is the scrubbed envelope, gzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_gets_the_scrubbed_envelope_over_the_protocol_it_offers() {
    let roots = tempfile::tempdir().unwrap();
    let capture = common::Capture::load("py-error-event-rawpii");
    let offers: [(&[&[u8]], http::Version); 2] = [
        (&[b"h2", b"http/1.1"], http::Version::HTTP_2),
        (&[b"http/1.1"], http::Version::HTTP_11),
    ];
    for (alpn, version) in offers {
        let upstream = MiniSentry::start_tls("localhost", alpn).await;
        let relay = relay_trusting_the_test_ca(&upstream.url(), &[], roots.path());
        // Two envelopes: the second goes over the connection the first opened, or a new one; either must work.
        for _ in 0..2 {
            let response = capture.send_to(relay.addr).await;
            assert_eq!(response.status, 200, "{version:?}");
            let delivered = upstream.next().await;
            assert_eq!(delivered.version, version);
            assert_eq!(delivered.path, capture.target().split('?').next().unwrap());
            assert_eq!(delivered.header("content-encoding"), Some("gzip"));
            let body = String::from_utf8_lossy(&delivered.body);
            assert!(body.contains("Payment failed for"), "{version:?}: the event arrived");
            // The capture's own secrets, each in it as sent.
            for secret in [
                "jane.doe@example.com",
                "123-45-6789",
                "4111 1111 1111 1111",
                "sk_live_",
                "203.0.113.7",
            ] {
                assert!(!body.contains(secret), "{version:?}: {secret} reached the upstream");
            }
        }
        relay.stop();
        assert_eq!(upstream.refused_handshakes(), 0);
    }
}

/// An upstream whose certificate the relay does not trust gets nothing, not even the envelope's headers: the TLS
/// handshake fails, the envelope waits in the spool, the log says why, and once the upstream is one the relay
/// trusts, the envelope is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_an_untrusted_certificate_gets_nothing_and_the_envelope_waits() {
    let roots = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let spool_args = ["--spool-dir", spool.path().to_str().unwrap()];
    let event_id = "9ec79c33ec9942ab8353589fcb2e04dc";

    let stranger = MiniSentry::start_tls("stranger", &[b"h2", b"http/1.1"]).await;
    let relay = relay_trusting_the_test_ca(&stranger.url(), &spool_args, roots.path());
    let response = post(relay.addr, &common::event_envelope(event_id)).await;
    assert_eq!(response.status, 200);
    relay
        .wait_for_metrics("the refused delivery is kept in the spool", |m| {
            m.value("scrub_relay_upstream_requests_total", &[("outcome", "network_error")]) >= 1.0
                && m.value("scrub_relay_spool_envelopes", &[]) == 1.0
        })
        .await;
    // The server side sees the refusal when the relay's alert arrives, which may be after the relay counted it.
    common::wait_until("the upstream sees the handshake refused", || {
        stranger.refused_handshakes() >= 1
    })
    .await;
    assert_eq!(
        stranger.received(),
        0,
        "no request reached an upstream the relay does not trust"
    );
    let logs = relay.stop();
    assert!(
        logs.iter().any(
            |line| log_field(line, "message").as_deref() == Some("upstream request failed")
                && log_field(line, "error").is_some_and(|error| error.contains("certificate"))
        ),
        "the log names the certificate problem: {logs:#?}"
    );

    let trusted = MiniSentry::start_tls("localhost", &[b"h2", b"http/1.1"]).await;
    let relay = relay_trusting_the_test_ca(&trusted.url(), &spool_args, roots.path());
    let delivered = trusted.next().await;
    assert_eq!(
        delivered.envelope().headers.get("event_id").and_then(Value::as_str),
        Some(event_id)
    );
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_own_logs_never_contain_payload_values() {
    let upstream = MiniSentry::start().await;
    // The first deliveries fail (retry path), one is refused for good with a body full of PII (give-up path).
    upstream.answer_next(common::Answer::status(503).body(r#"{"detail":"jane.doe@example.com overloaded"}"#));
    upstream.answer_next(common::Answer::status(400).body(r#"{"detail":"invalid: hunter2-S3cret! 123-45-6789"}"#));
    // The most verbose level, including the HTTP libraries' own logs: nothing an operator can turn on may leak.
    let relay = RelayProcess::start(&upstream, &["--log-level", "trace"]);

    // Real SDK captures full of PII and secrets.
    for name in [
        "py-error-event-rawpii",
        "py-error-exception-rawpii",
        "py-logs-pii-2",
        "node-error-2",
        "node-tunnel-3",
    ] {
        let response = common::Capture::load(name).send_to(relay.addr).await;
        // The answer may be the upstream's own (scripted failures below), so only the status is looked at.
        assert!(response.status >= 200, "{name}: {}", response.status);
    }

    // Malformed and refused requests that carry the secrets in every place a log line might quote.
    let secret_event =
        br#"{"event_id":"0123456789abcdef0123456789abcdef","message":"jane.doe@example.com hunter2-S3cret!"}"#;
    let auth = "Sentry sentry_key=publickey123, sentry_version=7, sentry_client=sentry.python/2.75.0";
    let with_auth = |extra: &[(&str, &str)]| {
        let mut all = vec![("X-Sentry-Auth", auth)];
        all.extend_from_slice(extra);
        headers(&all)
    };
    let cases: Vec<HostileRequest> = vec![
        // The envelope header is not JSON.
        (
            "bad header",
            "/api/42/envelope/".into(),
            with_auth(&[]),
            b"{\"dsn\":\"https://hunter2-S3cret!@jane.doe@example.com\n".to_vec(),
        ),
        // An item claims more bytes than there are.
        (
            "short item",
            "/api/42/envelope/".into(),
            with_auth(&[]),
            [&b"{}\n{\"type\":\"event\",\"length\":99999}\n"[..], secret_event].concat(),
        ),
        // An event item that is not JSON.
        (
            "broken item",
            "/api/42/envelope/".into(),
            with_auth(&[]),
            b"{}\n{\"type\":\"event\"}\n{\"password\":\"hunter2-S3cret!\", 123-45-6789\n".to_vec(),
        ),
        // Claims gzip, is not.
        (
            "bad gzip",
            "/api/42/envelope/".into(),
            with_auth(&[("Content-Encoding", "gzip")]),
            [&b"{}\n{\"type\":\"event\"}\n"[..], secret_event].concat(),
        ),
        // An unknown encoding whose name is a secret.
        (
            "unknown encoding",
            "/api/42/envelope/".into(),
            with_auth(&[("Content-Encoding", "hunter2-S3cret!")]),
            secret_event.to_vec(),
        ),
        // Two auth sources, the second a live key.
        (
            "two auths",
            "/api/42/envelope/?sentry_key=sk_live_51H8xYzAbCdEfGhIjKlMnOpQr".into(),
            with_auth(&[("Authorization", "Bearer sk_live_51H8xYzAbCdEfGhIjKlMnOpQr")]),
            secret_event.to_vec(),
        ),
        // A malformed auth header.
        (
            "bad auth",
            "/api/42/envelope/".into(),
            headers(&[(
                "X-Sentry-Auth",
                "Sentry sentry_key=jane.doe@example.com,, hunter2-S3cret!",
            )]),
            secret_event.to_vec(),
        ),
        // A tunnel envelope whose DSN points at a host the relay must refuse.
        (
            "foreign tunnel",
            "/tunnel".into(),
            Vec::new(),
            [
                &b"{\"dsn\":\"https://publickey123@evil.example.com/42\"}\n{\"type\":\"event\"}\n"[..],
                secret_event,
            ]
            .concat(),
        ),
        // No such route, with PII in the path and query.
        (
            "unknown path",
            "/api/jane.doe@example.com/envelope/?ssn=123-45-6789".into(),
            with_auth(&[]),
            secret_event.to_vec(),
        ),
        // The legacy store endpoint, a JSON body that stops in the middle.
        (
            "broken store",
            "/api/42/store/".into(),
            with_auth(&[("Content-Type", "application/json")]),
            b"{\"user\":{\"email\":\"jane.doe@example.com\",\"password\":\"hunter2-S3cret!\"".to_vec(),
        ),
    ];
    for (what, target, request_headers, body) in &cases {
        let response = send_raw(relay.addr, "POST", target, request_headers, body, false).await;
        assert!(
            response.status >= 400 || *what == "broken item",
            "{what}: expected a refusal, got {}",
            response.status
        );
        let answer = String::from_utf8_lossy(&response.body);
        for secret in PLANTED_SECRETS {
            assert!(
                !answer.contains(secret),
                "{what}: the error answer quotes {secret:?}: {answer}"
            );
        }
    }

    // Both scripted upstream failures were used: the retry and the give-up paths ran.
    relay
        .wait_for_metrics("the upstream failures were handled", |m| {
            m.value("scrub_relay_upstream_requests_total", &[("outcome", "5xx")]) >= 1.0
                && m.value("scrub_relay_upstream_requests_total", &[("outcome", "4xx")]) >= 1.0
        })
        .await;
    let logs = relay.stop();
    assert!(
        logs.iter()
            .any(|line| log_field(line, "level").as_deref() == Some("DEBUG")),
        "verbose logging was on"
    );
    for line in &logs {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "every line is one JSON object: {line}"
        );
        for secret in PLANTED_SECRETS {
            assert!(!line.contains(secret), "a log line contains {secret:?}:\n{line}");
        }
    }
}

// === Shutdown as the probes see it ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_readiness_is_down_and_liveness_stays_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = MiniSentry::start().await;
    let relay = RelayProcess::start(&upstream, &["--shutdown-timeout", "30s"]);
    let probe = |path: &'static str| {
        let addr = relay.metrics_addr;
        async move { send_raw(addr, "GET", path, &[], b"", false).await.status }
    };
    // Ready once the main listener serves (a moment after it logs that it listens).
    let deadline = tokio::time::Instant::now() + WAIT;
    while probe("/readyz").await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the relay never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A request whose body is still arriving keeps the drain open. `Expect: 100-continue` makes the relay say when
    // it has started reading the body, so the request is known to be in flight before the signal.
    let mut in_flight = tokio::net::TcpStream::connect(relay.addr).await.expect("connect");
    let head = "POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sentry-Auth: Sentry sentry_key=publickey123, \
                sentry_version=7\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n";
    in_flight.write_all(head.as_bytes()).await.expect("send the head");
    let mut continue_line = [0u8; 25];
    tokio::time::timeout(WAIT, in_flight.read_exact(&mut continue_line))
        .await
        .expect("100 Continue")
        .expect("read");
    assert!(
        continue_line.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&continue_line)
    );
    in_flight.write_all(b"{}\n").await.expect("send part of the body");

    relay.signal("TERM");
    let deadline = tokio::time::Instant::now() + WAIT;
    while probe("/readyz").await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never went down after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(probe("/healthz").await, 200, "liveness stays up while draining");
    assert_eq!(probe("/api/relay/healthcheck/live/").await, 200);
    assert_eq!(relay.metrics().await.value("scrub_relay_ready", &[]), 0.0);

    // The client goes away; with nothing left in flight the drain ends and the relay exits.
    drop(in_flight);
    let logs = relay.wait_for_exit();
    assert!(logs.iter().any(|line| line.contains("SIGTERM")), "the signal is logged");
}

// === healthcheck ===

#[tokio::test]
async fn the_healthcheck_subcommand_exits_zero_only_for_a_healthy_relay() {
    let upstream = MiniSentry::start().await;
    let relay = common::start_relay(common::relay_config(&upstream)).await;
    let healthcheck = |args: Vec<String>, listen: Option<String>| async move {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_scrub-relay"));
        command
            .arg("healthcheck")
            .args(args)
            .env_remove("SCRUB_RELAY_HEALTHCHECK_URL")
            .env_remove("SCRUB_RELAY_LISTEN");
        if let Some(listen) = listen {
            command.env("SCRUB_RELAY_LISTEN", listen);
        }
        let output = tokio::time::timeout(WAIT, command.output())
            .await
            .expect("healthcheck finishes")
            .expect("run");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };

    let (code, output) = healthcheck(vec!["--url".into(), relay.url("/healthz")], None).await;
    assert_eq!(code, Some(0), "{output}");
    // No arguments: the URL comes from SCRUB_RELAY_LISTEN, as in the container image.
    let (code, output) = healthcheck(vec![], Some(relay.addr.to_string())).await;
    assert_eq!(code, Some(0), "{output}");
    let (code, output) = healthcheck(vec!["--url".into(), relay.url("/readyz")], None).await;
    assert_eq!(code, Some(0), "{output}");

    // Not ready: readiness fails, liveness still passes.
    relay.state.readiness.set(false);
    let (code, output) = healthcheck(vec!["--url".into(), relay.url("/readyz")], None).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("503"), "{output}");
    let (code, _) = healthcheck(vec!["--url".into(), relay.url("/healthz")], None).await;
    assert_eq!(code, Some(0));

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, output) = healthcheck(vec![], Some(closed.to_string())).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("cannot connect"), "{output}");
    relay.shutdown().await;
}

// === The configuration reference stays true ===

/// `(long flag, env var, default)` of every argument of a subcommand, from the real clap definition.
fn documented_args(subcommand: &str) -> Vec<(String, Option<String>, Option<String>)> {
    use clap::CommandFactory;
    let command = scrub_relay::cli::Cli::command();
    let sub = command
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("no subcommand {subcommand}"));
    sub.get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
            let default = arg
                .get_default_values()
                .first()
                .map(|value| value.to_string_lossy().into_owned());
            Some((long.to_owned(), env, default))
        })
        .filter(|(long, _, _)| long != "help")
        .collect()
}

#[test]
fn every_flag_and_variable_is_documented_with_its_default() {
    let docs = read_repo_file("README.md");
    for subcommand in ["run", "healthcheck"] {
        for (long, env, default) in documented_args(subcommand) {
            let row_start = format!("| `--{long}` |");
            let rows: Vec<&str> = docs.lines().filter(|line| line.starts_with(&row_start)).collect();
            let expected = format!(
                "| `--{long}` | {} | {} | ... |",
                env.as_ref().map_or("-".to_owned(), |env| format!("`{env}`")),
                default
                    .as_ref()
                    .map_or("...".to_owned(), |default| format!("`{default}`"))
            );
            let row = rows.iter().find(|row| {
                env.as_ref().is_none_or(|env| row.contains(&format!("`{env}`")))
                    && default
                        .as_ref()
                        .is_none_or(|default| row.contains(&format!("`{default}`")))
            });
            assert!(
                row.is_some(),
                "README.md: `{subcommand}` needs a configuration row like\n{expected}"
            );
        }
    }
}

#[test]
fn every_variable_the_shipped_files_set_is_one_the_relay_reads() {
    let mut known: BTreeSet<String> = BTreeSet::new();
    for subcommand in ["run", "healthcheck", "check", "scrub"] {
        known.extend(documented_args(subcommand).into_iter().filter_map(|(_, env, _)| env));
    }
    // Named by rules.yaml (`hashing.key_env`), read by the rules engine rather than the CLI.
    known.insert("SCRUB_RELAY_HMAC_KEY".to_owned());
    // Read by the test suite (tests/real_sdks.rs, routes.rs, browser_replay.rs, prometheus.rs, container.rs), which
    // the README documents too.
    known.extend(
        [
            "SCRUB_RELAY_TEST_PYTHON",
            "SCRUB_RELAY_TEST_OTEL_PYTHON",
            "SCRUB_RELAY_TEST_BROWSER_DIR",
            "SCRUB_RELAY_TEST_NODE_DIR",
            "SCRUB_RELAY_TEST_NODE10_DIR",
            "SCRUB_RELAY_TEST_PROMETHEUS",
            "SCRUB_RELAY_TEST_DOCKER_HOST",
        ]
        .map(str::to_owned),
    );
    let pattern = regex::Regex::new(r"SCRUB_RELAY_[A-Z0-9_]+").expect("valid regex");
    for file in [
        "docker/Dockerfile",
        "docker/compose.yaml",
        "docker/kubernetes/shared-service.yaml",
        "docker/kubernetes/sidecar.yaml",
        "docker/kubernetes/statefulset.yaml",
        "README.md",
    ] {
        for found in pattern.find_iter(&read_repo_file(file)) {
            assert!(
                known.contains(found.as_str()),
                "{file} sets {}, which the relay does not read",
                found.as_str()
            );
        }
    }
}
