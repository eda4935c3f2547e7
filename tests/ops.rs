//! Running the relay in production: `/metrics` in the Prometheus text format with counters that match the traffic,
//! hot reload of the rules under load, logs free of payload values, the `healthcheck` subcommand, and the Docker,
//! Compose and Kubernetes files that ship in `docker/`.
//!
//! Tests that need the real signal path (SIGHUP) or the process's own log output spawn the built binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

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
    let docs = read_repo_file("docs/operations.md");
    for family in exposition.types.keys() {
        assert!(
            docs.contains(&format!("`{family}`")),
            "docs/operations.md does not document {family}"
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
        BTreeSet::from(["app", "prometheus", "scrub-relay"])
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
    let docs = read_repo_file("docs/operations.md");
    assert!(
        docs.contains(&format!("port {}", port_of(metrics_listen))),
        "docs name the metrics port"
    );
    assert!(
        docs.contains(&format!("@scrub-relay:{}/", port_of(listen))),
        "docs name the app's DSN"
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
    ] {
        let documents = yaml_documents(file);
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
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
        let config_map = documents
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == config_map_name)
            .expect("the ConfigMap is in the same file");
        let rules_file = Path::new(rules_path).file_name().unwrap().to_str().unwrap();
        let rules_yaml = config_map["data"][rules_file]
            .as_str()
            .expect("rules.yaml in the ConfigMap");
        let _ = rules_yaml;

        // The spool is on a volume, and the root filesystem is read-only.
        let spool = env_value(relay, "SCRUB_RELAY_SPOOL_DIR").expect("spool dir");
        assert!(
            relay["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == spool),
            "{file}: spool volume"
        );
        assert_eq!(relay["securityContext"]["readOnlyRootFilesystem"], true, "{file}");
    }

    let shared = yaml_documents("docker/kubernetes/shared-service.yaml");
    let deployment = shared.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
        "a shared service runs several replicas"
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
