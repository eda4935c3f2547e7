//! The command line: `run` (the default), `scrub`, `check` and `healthcheck`. Every `run` flag can also be set as an
//! environment variable `SCRUB_RELAY_<FLAG_NAME>` (e.g. `SCRUB_RELAY_UPSTREAM`), which is how containers configure
//! the relay.
//!
//! Exit codes: 0 success; 1 runtime failure (cannot bind, bad input to `scrub`); 2 `check` found a problem;
//! 64 (`EX_USAGE`) a bad configuration or rules file at startup, reported as one line before any port is bound.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError, UpstreamEncoding, parse_duration, parse_size};
use crate::decode::{self, ContentEncoding};
use crate::dsn::HostPattern;
use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::pipeline::{self, ProcessOptions};
use crate::reload::{self, Reloader};
use crate::rules::{CompiledRules, RulesError};
use crate::server::{self, AppState};

/// Exit code for a configuration the relay refuses to start with (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code of `check` when the rules file has a problem.
pub const EXIT_CHECK_FAILED: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "scrub-relay", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, `scrub-relay` runs the relay.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (the default).
    Run(Box<RunArgs>),
    /// Scrub one envelope from FILE (or stdin) and write it, uncompressed, to stdout.
    Scrub(ScrubArgs),
    /// Validate a rules file: prints "ok", or the problem with its line and exits 2.
    Check(CheckArgs),
    /// Ask a running relay's health route; exits 0 when healthy, 1 otherwise (the container image's HEALTHCHECK).
    Healthcheck(crate::healthcheck::HealthcheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address to listen on.
    #[arg(long, env = "SCRUB_RELAY_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Base URL of the Sentry that receives scrubbed envelopes (never taken from requests).
    #[arg(long, env = "SCRUB_RELAY_UPSTREAM", default_value = "https://sentry.io")]
    pub upstream: String,
    /// Rules file. Default: ./rules.yaml if it exists, else the built-in rules.
    #[arg(long, env = "SCRUB_RELAY_RULES")]
    pub rules: Option<PathBuf>,
    /// Path of the JavaScript tunnel endpoint.
    #[arg(long, env = "SCRUB_RELAY_TUNNEL_PATH", default_value = "/tunnel")]
    pub tunnel_path: String,
    /// Hosts a tunnel envelope's dsn may name, comma-separated; `*.example.com` allows subdomains.
    /// Default: the upstream's host and its subdomains.
    #[arg(long, env = "SCRUB_RELAY_TUNNEL_ALLOWED_HOSTS", value_delimiter = ',')]
    pub tunnel_allowed_hosts: Vec<String>,
    /// Only accept these public keys (comma-separated). Default: any.
    #[arg(long, env = "SCRUB_RELAY_ALLOWED_KEYS", value_delimiter = ',')]
    pub allowed_keys: Vec<String>,
    /// Only accept these project ids (comma-separated). Default: any.
    #[arg(long, env = "SCRUB_RELAY_ALLOWED_PROJECTS", value_delimiter = ',')]
    pub allowed_projects: Vec<u64>,
    /// Largest request body as received (e.g. 40MiB).
    #[arg(long, env = "SCRUB_RELAY_MAX_BODY_BYTES", default_value = "40MiB", value_parser = parse_size)]
    pub max_body_bytes: usize,
    /// Largest body after decompression (e.g. 200MiB).
    #[arg(long, env = "SCRUB_RELAY_MAX_DECOMPRESSED_BYTES", default_value = "200MiB", value_parser = parse_size)]
    pub max_decompressed_bytes: usize,
    /// Timeout of one upstream request (e.g. 30s).
    #[arg(long, env = "SCRUB_RELAY_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Connect timeout to the upstream.
    #[arg(long, env = "SCRUB_RELAY_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// Grace period for in-flight requests after SIGTERM (keep it under the orchestrator's kill timeout).
    #[arg(long, env = "SCRUB_RELAY_SHUTDOWN_TIMEOUT", default_value = "8s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Compression of forwarded envelopes.
    #[arg(long, env = "SCRUB_RELAY_UPSTREAM_ENCODING", value_enum, default_value = "gzip")]
    pub upstream_encoding: UpstreamEncoding,
    /// Client connections served at once.
    #[arg(long, env = "SCRUB_RELAY_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: usize,
    /// A second address serving only /metrics and the health routes (e.g. 0.0.0.0:9091), for Prometheus and
    /// probes. Default: none (they are served on --listen only).
    #[arg(long, env = "SCRUB_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often the rules file is checked for changes and reloaded (0 turns this off; SIGHUP always reloads).
    #[arg(long, env = "SCRUB_RELAY_RULES_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub rules_poll_interval: Duration,
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
    /// Directory for the disk spool: accepted envelopes survive an upstream outage and a crash. Default: none
    /// (memory only).
    #[arg(long, env = "SCRUB_RELAY_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Size cap of the spool (e.g. 1GiB). When it and the memory queue are full, SDKs get 503.
    #[arg(long, env = "SCRUB_RELAY_SPOOL_MAX_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub spool_max_bytes: usize,
    /// Envelopes undelivered this long after arrival are dropped (e.g. 24h).
    #[arg(long, env = "SCRUB_RELAY_SPOOL_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub spool_max_age: Duration,
    /// Envelopes held in memory for delivery.
    #[arg(long, env = "SCRUB_RELAY_QUEUE_MAX_ENVELOPES", default_value = "10000")]
    pub queue_max_envelopes: usize,
    /// Bytes held in memory for delivery (e.g. 256MiB).
    #[arg(long, env = "SCRUB_RELAY_QUEUE_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub queue_max_bytes: usize,
    /// Time a client has to send its whole request body.
    #[arg(long, env = "SCRUB_RELAY_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Time a client has to send its request headers (also the idle time of a keep-alive connection).
    #[arg(long, env = "SCRUB_RELAY_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Slowest average body upload accepted after the first 5 s, per second (e.g. 4KiB); 0 turns it off.
    #[arg(long, env = "SCRUB_RELAY_MIN_BODY_RATE", default_value = "4KiB", value_parser = parse_size)]
    pub min_body_rate: usize,
    /// Memory the relay may use (e.g. 1GiB); half of it is the budget for requests in flight. Default: the
    /// container's cgroup memory limit, else 1GiB.
    #[arg(long, env = "SCRUB_RELAY_MEMORY_LIMIT", value_parser = parse_size)]
    pub memory_limit: Option<usize>,
    /// Longest a request waits for memory budget before it gets 503 with Retry-After.
    #[arg(long, env = "SCRUB_RELAY_MEMORY_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub memory_wait: Duration,
    /// Most memory budget one client address may hold at once (e.g. 64MiB). Default: half the budget.
    #[arg(long, env = "SCRUB_RELAY_MAX_CLIENT_BYTES", value_parser = parse_size)]
    pub max_client_bytes: Option<usize>,
    /// Most open connections from one client address (0: no cap).
    #[arg(long, env = "SCRUB_RELAY_MAX_CLIENT_CONNECTIONS", default_value = "256")]
    pub max_client_connections: usize,
    /// Header a trusted load balancer sets to the client address (e.g. X-Forwarded-For: its last entry is used).
    /// Default: none, the TCP peer address. Only set it when every request comes through that balancer.
    #[arg(long, env = "SCRUB_RELAY_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<http::HeaderName>,
    /// Upstream requests in flight at once. Envelopes delivered per second are at most this divided by the upstream's
    /// round trip.
    #[arg(long, env = "SCRUB_RELAY_UPSTREAM_CONCURRENCY", default_value = "128")]
    pub upstream_concurrency: usize,
    /// Wait after the first upstream failure; doubles per failure, half of it random.
    #[arg(long, env = "SCRUB_RELAY_RETRY_INITIAL_BACKOFF", default_value = "500ms", value_parser = parse_duration)]
    pub retry_initial_backoff: Duration,
    /// Cap on the wait between upstream retries.
    #[arg(long, env = "SCRUB_RELAY_RETRY_MAX_BACKOFF", default_value = "60s", value_parser = parse_duration)]
    pub retry_max_backoff: Duration,
}

impl RunArgs {
    /// The validated runtime configuration.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let upstream =
            url::Url::parse(&self.upstream).map_err(|e| ConfigError::Upstream(format!("not a URL ({e})")))?;
        let tunnel_allowed_hosts = self
            .tunnel_allowed_hosts
            .iter()
            .filter(|h| !h.trim().is_empty())
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::TunnelHosts)?;
        let config = Config {
            listen: self.listen,
            upstream,
            rules_path: self.rules.clone(),
            tunnel_path: self.tunnel_path.clone(),
            tunnel_allowed_hosts,
            allowed_keys: self
                .allowed_keys
                .iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect(),
            allowed_projects: self.allowed_projects.clone(),
            max_body_bytes: self.max_body_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            upstream_timeout: self.upstream_timeout,
            upstream_connect_timeout: self.upstream_connect_timeout,
            shutdown_timeout: self.shutdown_timeout,
            upstream_encoding: self.upstream_encoding,
            max_connections: self.max_connections,
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes as u64,
            spool_max_age: self.spool_max_age,
            queue_max_envelopes: self.queue_max_envelopes,
            queue_max_bytes: self.queue_max_bytes,
            upstream_concurrency: self.upstream_concurrency,
            retry_initial_backoff: self.retry_initial_backoff,
            retry_max_backoff: self.retry_max_backoff,
            body_timeout: self.body_timeout,
            header_timeout: self.header_timeout,
            min_body_rate: self.min_body_rate,
            memory_limit: self.memory_limit,
            memory_wait: self.memory_wait,
            max_client_bytes: self.max_client_bytes,
            max_client_connections: self.max_client_connections,
            client_ip_header: self.client_ip_header.clone(),
            ..Config::default()
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputEncoding {
    /// gzip, zlib and zstd are recognised by their magic bytes; anything else is read as is.
    Auto,
    Identity,
    Gzip,
    Deflate,
    Br,
    Zstd,
}

#[derive(Debug, Clone, Args)]
pub struct ScrubArgs {
    /// Rules file. Default: ./rules.yaml if it exists, else the built-in rules.
    #[arg(long, env = "SCRUB_RELAY_RULES")]
    pub rules: Option<PathBuf>,
    /// Compression of the input. Brotli has no magic bytes, so it must be named.
    #[arg(long, value_enum, default_value = "auto")]
    pub encoding: InputEncoding,
    /// Write what was changed (path and rule, never values) to stderr.
    #[arg(long)]
    pub explain: bool,
    /// Project id used to pick per-project rules.
    #[arg(long)]
    pub project: Option<u64>,
    /// The envelope file; stdin when absent.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Rules file. Default: ./rules.yaml if it exists, else the built-in rules.
    #[arg(long, env = "SCRUB_RELAY_RULES")]
    pub rules: Option<PathBuf>,
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(*args),
        Some(Command::Scrub(args)) => scrub(args),
        Some(Command::Check(args)) => check(args),
        Some(Command::Healthcheck(args)) => crate::healthcheck::run(&args),
    }
}

/// The rules file in force: the given path, else `./rules.yaml` when present, else none (built-in rules).
pub fn rules_path(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from("rules.yaml")).filter(|p| p.is_file()),
    }
}

/// Loads and compiles the rules in force.
pub fn load_rules(path: Option<&Path>) -> Result<CompiledRules, String> {
    match path {
        Some(path) => CompiledRules::load(path).map_err(|error| match error {
            // The read error already names the file.
            RulesError::Read { .. } => error.to_string(),
            _ => format!("{}: {error}", path.display()),
        }),
        None => Ok(CompiledRules::defaults()),
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(error) = args.log.init() {
        return fail(EXIT_CONFIG, &error.to_string());
    }
    let mut config = match args.to_config() {
        Ok(config) => config,
        Err(error) => return fail(EXIT_CONFIG, &error.to_string()),
    };
    config.rules_path = rules_path(config.rules_path.as_deref());
    // With a rules file, a `Reloader` remembers it for SIGHUP and polling; the built-in rules never change.
    let (rules, reloader) = match config.rules_path.as_deref() {
        Some(path) => match Reloader::load(path) {
            Ok((rules, reloader)) => (rules, Some(Arc::new(reloader))),
            Err(error @ RulesError::Read { .. }) => return fail(EXIT_CONFIG, &error.to_string()),
            Err(error) => return fail(EXIT_CONFIG, &format!("{}: {error}", path.display())),
        },
        None => (CompiledRules::defaults(), None),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(async move {
        let listen = config.listen;
        let state = match AppState::new(config, rules, Arc::new(Metrics::new())) {
            Ok(state) => state,
            Err(error) => return fail(EXIT_CONFIG, &error.to_string()),
        };
        match &state.config.rules_path {
            Some(path) => tracing::info!(path = %path.display(), "rules loaded"),
            None => tracing::info!("no rules file; using the built-in rules"),
        }
        // Before binding: SIGHUP's default action would otherwise kill a relay that is already taking traffic.
        let install: reload::Install = {
            let state = state.clone();
            Arc::new(move |rules| state.replace_rules(Arc::new(rules)))
        };
        match reload::reload_on_sighup(reloader.clone(), state.metrics.clone(), install.clone()) {
            Ok(task) => drop(tokio::spawn(task)),
            Err(error) => return fail(1, &format!("cannot install the SIGHUP handler: {error}")),
        }
        if let Some(reloader) = reloader {
            tokio::spawn(reload::reload_on_change(
                reloader,
                state.metrics.clone(),
                install,
                args.rules_poll_interval,
            ));
        }
        if let Some(metrics_listen) = args.metrics_listen {
            let listener = match tokio::net::TcpListener::bind(metrics_listen).await {
                Ok(listener) => listener,
                Err(error) => return fail(1, &format!("cannot listen on {metrics_listen}: {error}")),
            };
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics listening");
            }
            let ready_state = state.clone();
            let is_ready = Arc::new(move || ready_state.is_ready());
            tokio::spawn(crate::admin::serve(listener, state.metrics.clone(), is_ready));
        }
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => return fail(1, &format!("cannot listen on {listen}: {error}")),
        };
        server::run(listener, state, crate::shutdown::signal()).await;
        ExitCode::SUCCESS
    })
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("scrub-relay: {message}");
    ExitCode::from(code)
}

/// Most input `scrub` reads, compressed or not: the relay's own default decompressed cap.
const SCRUB_INPUT_CAP: usize = 200 * crate::config::MIB;

fn scrub(args: ScrubArgs) -> ExitCode {
    let rules = match load_rules(rules_path(args.rules.as_deref()).as_deref()) {
        Ok(rules) => rules,
        Err(error) => return fail(EXIT_CONFIG, &error),
    };
    let mut input = Vec::new();
    let read = match &args.file {
        Some(path) => {
            std::fs::File::open(path).and_then(|f| f.take(SCRUB_INPUT_CAP as u64 + 1).read_to_end(&mut input))
        }
        None => std::io::stdin()
            .lock()
            .take(SCRUB_INPUT_CAP as u64 + 1)
            .read_to_end(&mut input),
    };
    if let Err(error) = read {
        return fail(1, &format!("cannot read input: {error}"));
    }
    let encoding = match args.encoding {
        InputEncoding::Auto => ContentEncoding::sniff(&input),
        InputEncoding::Identity => ContentEncoding::Identity,
        InputEncoding::Gzip => ContentEncoding::Gzip,
        InputEncoding::Deflate => ContentEncoding::Deflate,
        InputEncoding::Br => ContentEncoding::Brotli,
        InputEncoding::Zstd => ContentEncoding::Zstd,
    };
    let decoded = match decode::decode(encoding, &input, SCRUB_INPUT_CAP) {
        Ok(decoded) => decoded,
        Err(error) => return fail(1, &format!("cannot decode {} input: {error}", encoding.as_str())),
    };
    let envelope = match Envelope::parse(decoded.into()) {
        Ok(envelope) => envelope,
        Err(error) => return fail(1, &format!("invalid envelope: {error}")),
    };
    let options = ProcessOptions {
        project_id: args.project,
        explain: args.explain,
        ..ProcessOptions::default()
    };
    let processed = pipeline::process(envelope, &rules, &options);
    if args.explain {
        // One line per change: where and which rule, never the value.
        let mut stderr = std::io::stderr().lock();
        for change in &processed.report.changes {
            let item = match (change.item_index, change.item_type) {
                (Some(index), Some(ty)) => format!("item {index} ({})", ty.as_str()),
                _ => "envelope header".to_owned(),
            };
            let _ = writeln!(
                stderr,
                "{item}: {} {} by {}",
                change.path,
                change.action.as_str(),
                change.rule
            );
        }
        for (ty, reason) in &processed.report.dropped {
            let _ = writeln!(stderr, "dropped {} item: {}", ty.as_str(), reason.as_str());
        }
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(&processed.envelope.to_bytes())
        .and_then(|()| stdout.flush())
    {
        return fail(1, &format!("cannot write output: {error}"));
    }
    ExitCode::SUCCESS
}

fn check(args: CheckArgs) -> ExitCode {
    match load_rules(rules_path(args.rules.as_deref()).as_deref()) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("{error}");
            ExitCode::from(EXIT_CHECK_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_invocation_runs_with_defaults() {
        let cli = Cli::try_parse_from(["scrub-relay"]).unwrap();
        assert!(cli.command.is_none());
        let config = cli.run.to_config().unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 3000)));
        assert_eq!(config.max_body_bytes, 40 * crate::config::MIB);
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "scrub-relay",
            "run",
            "--upstream",
            "http://127.0.0.1:9000",
            "--allowed-projects",
            "1,2",
            "--tunnel-allowed-hosts",
            "*.example.com,sentry.example.com",
            "--upstream-timeout",
            "500ms",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("run subcommand")
        };
        let config = args.to_config().unwrap();
        assert_eq!(config.allowed_projects, vec![1, 2]);
        assert_eq!(config.tunnel_allowed_hosts.len(), 2);
        assert_eq!(config.upstream_timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_are_one_clear_error() {
        let error = Cli::try_parse_from(["scrub-relay", "--max-body-bytes", "lots"]).unwrap_err();
        assert!(error.to_string().contains("not a size"));
        let cli = Cli::try_parse_from(["scrub-relay", "--upstream", "ftp://x"]).unwrap();
        assert!(cli.run.to_config().unwrap_err().to_string().starts_with("--upstream"));
    }
}
