//! The deployment files, proven: `docker/Dockerfile` builds an image that runs the way the README and the Kubernetes
//! manifests run it and scrubs a real SDK's traffic; the Kubernetes manifests pass strict schema validation; the
//! compose file validates.
//!
//! `.ci/run` prepares the tools and says where they are:
//! - `SCRUB_RELAY_TEST_DOCKER_HOST`: an isolated Docker daemon with stand-ins for the two base images
//!   (`.ci/docker-setup`, which explains them), and `SCRUB_RELAY_TEST_PYTHON`: the real sentry-python SDK;
//! - `SCRUB_RELAY_TEST_PYTHON`'s directory also holds `kubernetes-validate` and `check-jsonschema`
//!   (tests/tools/requirements.txt);
//! - `SCRUB_RELAY_TEST_DOCKER_COMPOSE`: Debian's `docker-compose`.
//!
//! A test whose tool is missing skips with the reason, except under `CI=true`, where it fails.
//!
//! Run the image test alone: `.ci/docker-setup` prints the DOCKER_HOST to use, then
//! `SCRUB_RELAY_TEST_DOCKER_HOST=<it> SCRUB_RELAY_TEST_PYTHON=.venv/bin/python cargo test --test container image`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{Answer, MiniSentry, Recorded, WAIT};

/// The planted PII of tests/sdk/python/send.py; none of it may come out of the container.
const RAW_SECRETS: [&str; 4] = [
    "jane.doe@example.com",
    "123-45-6789",
    "hunter2-S3cret!",
    "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
];
const MASKED_EMAIL: &str = "***@example.com";
/// Debian's docker CLI, which matches the daemon `.ci/docker-setup` starts (another `docker` on PATH may not).
const DOCKER: &str = "/usr/bin/docker";
/// The image the test builds; the container and volume names carry the test's process id.
const IMAGE: &str = "scrub-relay:container-test";
/// The whole build, cold (every crate compiled in release) on two cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// Docker's HEALTHCHECK runs every 10 s (docker/Dockerfile); a few rounds.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn show(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes manifests and the compose file

#[test]
fn kubernetes_manifests_pass_strict_validation() {
    let Some(python) = common::tool("SCRUB_RELAY_TEST_PYTHON", "the Python venv with kubernetes-validate") else {
        return;
    };
    let validate = python.with_file_name("kubernetes-validate");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(repo().join("docker/kubernetes"))
        .expect("docker/kubernetes")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 3, "{manifests:?}");
    // The oldest Kubernetes the manifests claim (native sidecars: 1.29; the preStop sleep action: 1.30), and the
    // newest schema the tool bundles.
    for version in ["1.30.0", "latest"] {
        let mut command = Command::new(&validate);
        command.args(["--strict", "--no-warn"]);
        if version != "latest" {
            command.args(["--kubernetes-version", version]);
        }
        let output = command
            .args(&manifests)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", validate.display()));
        assert!(
            output.status.success(),
            "kubernetes-validate --strict ({version}):\n{}",
            show(&output)
        );
        // Every document was checked (the tool says "passed" once per resource).
        let passed = String::from_utf8_lossy(&output.stdout).matches(" passed ").count();
        let documents: usize = manifests
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("manifest");
                let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
                documents.iter().filter(|document| !document.is_null()).count()
            })
            .sum();
        assert_eq!(passed, documents, "{}", show(&output));
    }
}

#[test]
fn the_compose_file_validates() {
    let compose = repo().join("docker/compose.yaml");
    // The Compose Specification's schema, which current Docker Compose validates against (check-jsonschema ships
    // a copy of it).
    if let Some(python) = common::tool("SCRUB_RELAY_TEST_PYTHON", "the Python venv with check-jsonschema") {
        let checker = python.with_file_name("check-jsonschema");
        let output = Command::new(&checker)
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(&compose)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", checker.display()));
        assert!(output.status.success(), "compose-spec schema:\n{}", show(&output));
    }
    // Debian's docker-compose (1.29) resolves the whole file: interpolation, paths, service references. It predates
    // the top-level `name`, so that one key is given to it as the project name instead.
    if let Some(docker_compose) = common::tool("SCRUB_RELAY_TEST_DOCKER_COMPOSE", "Debian's docker-compose") {
        let text = std::fs::read_to_string(&compose).expect("compose.yaml");
        let name_line = text
            .lines()
            .find(|line| line.starts_with("name: "))
            .expect("a project name");
        let project = name_line.trim_start_matches("name: ");
        // Beside the original, so relative paths resolve the same way.
        let copy = tempfile::Builder::new()
            .prefix(".compose-check-")
            .suffix(".yaml")
            .tempfile_in(repo().join("docker"))
            .expect("temp file in docker/");
        std::fs::write(copy.path(), text.replacen(&format!("{name_line}\n"), "", 1)).expect("write copy");
        let output = Command::new(&docker_compose)
            .arg("--project-name")
            .arg(project)
            .arg("--file")
            .arg(copy.path())
            .arg("config")
            .env("SENTRY_KEY", "publickey")
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", docker_compose.display()));
        assert!(output.status.success(), "docker-compose config:\n{}", show(&output));
        let resolved = String::from_utf8_lossy(&output.stdout);
        for service in ["scrub-relay:", "app:", "prometheus:", "grafana:"] {
            assert!(resolved.contains(service), "{service} in {resolved}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The image

/// The `docker` CLI talking to the test's daemon.
fn docker(host: &str) -> Command {
    let mut command = Command::new(DOCKER);
    command
        .env("DOCKER_HOST", host)
        .env("DOCKER_BUILDKIT", "1")
        .stdin(Stdio::null());
    command
}

fn run_docker(host: &str, args: &[&str]) -> Output {
    docker(host)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {DOCKER}: {error}"))
}

/// `docker <args>`, which must succeed; its trimmed stdout.
fn docker_ok(host: &str, args: &[&str]) -> String {
    let output = run_docker(host, args);
    assert!(output.status.success(), "docker {args:?}: {}", show(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes the test's containers and volume, whatever happened.
struct Cleanup {
    host: String,
    containers: Vec<String>,
    volume: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = run_docker(&self.host, &["rm", "--force", container]);
        }
        let _ = run_docker(&self.host, &["volume", "rm", "--force", &self.volume]);
    }
}

/// A free loopback port for the relay in the container (it shares the host's network).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Builds docker/Dockerfile as it is, but for its `# syntax=` line: that names a frontend image the machines here
/// cannot pull, and BuildKit's built-in frontend reads the same Dockerfile.
fn build_image(host: &str) {
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).expect("docker/Dockerfile");
    let (syntax, rest): (Vec<&str>, Vec<&str>) = dockerfile.lines().partition(|line| line.starts_with("# syntax="));
    assert_eq!(syntax.len(), 1, "the Dockerfile starts with its syntax line");
    let mut child = docker(host)
        .args(["build", "--network", "host", "--tag", IMAGE, "--file", "-", "."])
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {DOCKER}: {error}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rest.join("\n").as_bytes())
        .expect("Dockerfile to docker build");
    // The build runs for minutes; a thread waits for it so the timeout can end a stuck one.
    let (done, finished) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match finished.recv_timeout(BUILD_TIMEOUT) {
        Ok(output) => output.expect("docker build output"),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("docker build did not finish within {BUILD_TIMEOUT:?}");
        }
    };
    assert!(output.status.success(), "docker build:\n{}", show(&output));
}

/// Polls Docker's own health status of `container` (its HEALTHCHECK, from the image) until it is healthy.
async fn wait_healthy(host: &str, container: &str) {
    let deadline = tokio::time::Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let state = docker_ok(
            host,
            &[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.Health.Status}}",
                container,
            ],
        );
        match state.as_str() {
            "running healthy" => return,
            "running starting" => {}
            _ => panic!(
                "{container} is {state}:\n{}",
                show(&run_docker(host, &["logs", container]))
            ),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{container} not healthy within {HEALTHY_TIMEOUT:?}:\n{}",
            show(&run_docker(host, &["logs", container]))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `docker run` the image as docker/kubernetes/*.yaml run it: non-root, read-only root filesystem, every capability
/// dropped, no privilege escalation, the rules mounted read-only, the spool on a volume. `--network host`: the
/// test's daemon has no bridge network, and the relay must reach MiniSentry on loopback.
fn run_relay(
    host: &str,
    name: &str,
    volume: &str,
    listen: SocketAddr,
    upstream: &MiniSentry,
    extra: &[&str],
) -> Output {
    let rules = format!("{}:/etc/scrub-relay/rules.yaml:ro", repo().join("rules.yaml").display());
    let spool = format!("type=volume,source={volume},target=/var/lib/scrub-relay/spool");
    let listen = format!("SCRUB_RELAY_LISTEN={listen}");
    let upstream = format!("SCRUB_RELAY_UPSTREAM={}", upstream.url());
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--user",
        "65532:65532",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        &rules,
        "--mount",
        &spool,
        "--env",
        &listen,
        "--env",
        &upstream,
        "--env",
        "SCRUB_RELAY_LOG_FORMAT=json",
    ];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    run_docker(host, &args)
}

/// Every upstream request until one carries `event_id`'s event, or [`WAIT`] passes without a request.
async fn until_event(upstream: &MiniSentry, event_id: &str) -> Vec<Recorded> {
    let mut received = Vec::new();
    loop {
        let request = upstream.next().await;
        let found = request
            .envelope()
            .items
            .iter()
            .any(|item| item.ty().as_str() == "event")
            && request.envelope().event_id() == Some(event_id);
        received.push(request);
        if found {
            return received;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_builds_runs_unprivileged_scrubs_a_real_sdk_and_drains_on_stop() {
    let Some(host) = common::tool("SCRUB_RELAY_TEST_DOCKER_HOST", "a Docker daemon with the base images") else {
        return;
    };
    let Some(python) = common::tool("SCRUB_RELAY_TEST_PYTHON", "the real sentry-python SDK") else {
        return;
    };
    let host = host.to_str().expect("UTF-8 DOCKER_HOST").to_owned();
    {
        let host = host.clone();
        tokio::task::spawn_blocking(move || build_image(&host))
            .await
            .expect("build task");
    }

    let id = std::process::id();
    let first = format!("scrub-relay-test-{id}-a");
    let second = format!("scrub-relay-test-{id}-b");
    let refused = format!("scrub-relay-test-{id}-c");
    let volume = format!("scrub-relay-test-{id}-spool");
    let _cleanup = Cleanup {
        host: host.clone(),
        containers: vec![first.clone(), second.clone(), refused.clone()],
        volume: volume.clone(),
    };

    // 1. Started as the manifests start it, the relay becomes healthy by the image's own HEALTHCHECK.
    let upstream = MiniSentry::start().await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let started = run_relay(&host, &first, &volume, listen, &upstream, &[]);
    assert!(started.status.success(), "docker run: {}", show(&started));
    wait_healthy(&host, &first).await;
    assert_eq!(
        docker_ok(&host, &["inspect", "--format", "{{.Config.User}}", &first]),
        "65532:65532"
    );

    // 2. The real Python SDK sends its error, transaction and logs full of PII through the container.
    let dsn = format!("http://publickey123@{listen}/42");
    let script_dir = repo().join("tests/sdk/python");
    let sent = common::json_report(&common::run_to_completion(&python, &["send.py", &dsn, "gzip"], &script_dir).await);
    let event_id = sent["event_id"].as_str().expect("event_id");
    let received = until_event(&upstream, event_id).await;
    let forwarded: String = received
        .iter()
        .map(|request| String::from_utf8_lossy(&request.envelope().to_bytes()).into_owned())
        .collect();
    for secret in RAW_SECRETS {
        assert!(!forwarded.contains(secret), "the container forwarded a planted secret");
    }
    assert!(
        forwarded.contains(MASKED_EMAIL),
        "the email keeps its domain: {forwarded}"
    );
    assert!(
        received
            .iter()
            .all(|request| request.auth_key().as_deref() == Some("publickey123"))
    );

    // 3. An envelope accepted while the upstream fails, then `docker stop`: the relay drains it to the spool volume
    //    and exits 0.
    upstream.answer_always(Answer::status(503));
    const HELD: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
    let response = common::send_raw(
        listen,
        "POST",
        "/api/42/envelope/",
        &common::headers(&[("X-Sentry-Auth", "Sentry sentry_key=publickey123, sentry_version=7")]),
        &common::event_envelope(HELD),
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.detail());
    // The relay tried to deliver it (and got 503); the SDK's last envelopes may come first.
    until_event(&upstream, HELD).await;
    docker_ok(&host, &["stop", &first]);
    let exit = docker_ok(&host, &["inspect", "--format", "{{.State.ExitCode}}", &first]);
    let logs = run_docker(&host, &["logs", &first]);
    assert_eq!(exit, "0", "docker stop: exit code {exit}:\n{}", show(&logs));
    let logs = String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    for secret in RAW_SECRETS {
        assert!(!logs.contains(secret), "the relay's own log holds a payload value");
    }

    // 4. A new container on the same volume delivers what the first one spooled.
    upstream.answer_always(Answer::ok());
    let started = run_relay(&host, &second, &volume, listen, &upstream, &[]);
    assert!(started.status.success(), "docker run: {}", show(&started));
    let delivered = tokio::time::timeout(WAIT * 2, until_event(&upstream, HELD)).await;
    assert!(
        delivered.is_ok(),
        "the spooled envelope was not delivered after the restart:\n{}",
        show(&run_docker(&host, &["logs", &second]))
    );
    docker_ok(&host, &["stop", &second]);
    assert_eq!(
        docker_ok(&host, &["inspect", "--format", "{{.State.ExitCode}}", &second]),
        "0"
    );

    // 5. A spool directory the non-root user cannot write (here: on the read-only root filesystem) stops the start
    //    with one line that names it.
    let started = run_relay(
        &host,
        &refused,
        &volume,
        listen,
        &upstream,
        &["--env", "SCRUB_RELAY_SPOOL_DIR=/etc/scrub-relay"],
    );
    assert!(started.status.success(), "docker run: {}", show(&started));
    let exit = docker_ok(&host, &["wait", &refused]);
    let logs = run_docker(&host, &["logs", &refused]);
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert_eq!(exit, "64", "{}", show(&logs));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("scrub-relay: ") && stderr.contains("spool directory /etc/scrub-relay"),
        "{stderr}"
    );
}
