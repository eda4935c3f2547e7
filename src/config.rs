//! The relay's runtime configuration, built from the CLI (every flag also an environment variable) and validated
//! before a port is bound, so a typo is one clear line at startup instead of a surprise under load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::dsn::HostPattern;

/// How the relay compresses envelopes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UpstreamEncoding {
    /// gzip: accepted by every Sentry version.
    #[default]
    Gzip,
    Zstd,
    /// No compression (useful when the upstream is on the same host).
    Identity,
}

/// Everything `scrub-relay run` needs. `Default` holds the documented defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:3000`.
    pub listen: SocketAddr,
    /// Base URL of the Sentry that receives scrubbed envelopes, e.g. `https://sentry.io` or
    /// `https://sentry.example.com/prefix`. Default `https://sentry.io`. Envelopes always go here, whatever a
    /// request says.
    pub upstream: url::Url,
    /// The rules file. `None`: the compiled-in default rules.
    pub rules_path: Option<PathBuf>,
    /// Path of the JavaScript tunnel endpoint. Default `/tunnel`.
    pub tunnel_path: String,
    /// Hosts a tunnel envelope's `dsn` may name. Empty (the default) means the upstream's host and its subdomains,
    /// so with the default upstream every `*.ingest.*.sentry.io` DSN is accepted.
    pub tunnel_allowed_hosts: Vec<HostPattern>,
    /// Public keys allowed to send. Empty (the default): any.
    pub allowed_keys: Vec<String>,
    /// Project ids allowed to send. Empty (the default): any.
    pub allowed_projects: Vec<u64>,
    /// Largest request body as received, in bytes. Default 40 MiB (Sentry's limit).
    pub max_body_bytes: usize,
    /// Largest body after decompression, in bytes. Default 200 MiB (Sentry's envelope limit).
    pub max_decompressed_bytes: usize,
    /// Whole upstream request timeout (connect, send, answer). Default 30 s.
    pub upstream_timeout: Duration,
    /// TCP + TLS connect timeout to the upstream. Default 5 s.
    pub upstream_connect_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM. Default 8 s: under Docker's 10 s stop grace.
    pub shutdown_timeout: Duration,
    /// Compression of forwarded envelopes. Default gzip.
    pub upstream_encoding: UpstreamEncoding,
    /// Open client connections served at once; further clients wait in the listen backlog. Default 1024.
    pub max_connections: usize,
    /// Time a client has to send its whole request body. Default 60 s.
    pub body_timeout: Duration,
    /// Time a client has to send its request headers; also how long an idle HTTP/1 keep-alive connection is kept.
    /// Default 10 s.
    pub header_timeout: Duration,
    /// Slowest average body rate accepted, in bytes per second, once the first `min_rate_grace` has passed: a
    /// client trickling its body is cut instead of holding a connection and memory for the whole body timeout.
    /// Default 4 KiB/s; 0 turns it off.
    pub min_body_rate: usize,
    /// How long a body may take before `min_body_rate` applies. Default [`MIN_RATE_GRACE`]; not a flag (tests
    /// shorten it).
    pub min_rate_grace: Duration,
    /// Memory the relay may use, in bytes; half of it is the budget for requests in flight (see
    /// [`Config::memory_budget`]). `None`: the container's cgroup limit, else 1 GiB.
    pub memory_limit: Option<usize>,
    /// Longest a request waits for memory budget before it is refused with 503. Default 2 s.
    pub memory_wait: Duration,
    /// Most budget bytes one client address may hold at once. `None`: half the budget.
    pub max_client_bytes: Option<usize>,
    /// Most connections one client address may hold open at once (0: no cap). Default 256.
    pub max_client_connections: usize,
    /// Request header a trusted load balancer puts the client address in (e.g. `X-Forwarded-For`, whose last entry
    /// is used: the one the balancer appended). `None` (the default): the TCP peer's address.
    pub client_ip_header: Option<http::HeaderName>,
    /// Directory of the disk spool (see `docs/delivery.md`). `None` (the default): undelivered envelopes wait in
    /// memory only, and are lost if the process dies while the upstream is down.
    pub spool_dir: Option<PathBuf>,
    /// Size cap of the spool's entry files, in bytes. Default 1 GiB.
    pub spool_max_bytes: u64,
    /// Envelopes still undelivered this long after they arrived are dropped, in memory and in the spool. Default 24 h.
    pub spool_max_age: Duration,
    /// Envelopes held in memory for delivery (waiting, in flight, held back by a rate limit). Default 10 000.
    pub queue_max_envelopes: usize,
    /// Bytes (uncompressed) held in memory for delivery. Default 256 MiB.
    pub queue_max_bytes: usize,
    /// Upstream requests in flight at once. Default 8.
    pub upstream_concurrency: usize,
    /// Wait after the first upstream failure; doubles per failure up to `retry_max_backoff`, half of it random.
    /// Default 500 ms.
    pub retry_initial_backoff: Duration,
    /// Cap on the wait between upstream retries. Default 60 s.
    pub retry_max_backoff: Duration,
}

pub const MIB: usize = 1024 * 1024;

/// How long a body may take before `min_body_rate` applies: covers connection warm-up and a slow first chunk.
pub const MIN_RATE_GRACE: Duration = Duration::from_secs(5);

/// The memory limit when neither `--memory-limit` nor a cgroup says otherwise.
pub const DEFAULT_MEMORY_LIMIT: usize = 1024 * MIB;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            upstream: url::Url::parse("https://sentry.io").expect("constant URL parses"),
            rules_path: None,
            tunnel_path: "/tunnel".to_owned(),
            tunnel_allowed_hosts: Vec::new(),
            allowed_keys: Vec::new(),
            allowed_projects: Vec::new(),
            max_body_bytes: 40 * MIB,
            max_decompressed_bytes: 200 * MIB,
            upstream_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(8),
            upstream_encoding: UpstreamEncoding::Gzip,
            max_connections: 1024,
            body_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            min_body_rate: 4 * 1024,
            min_rate_grace: MIN_RATE_GRACE,
            memory_limit: None,
            memory_wait: Duration::from_secs(2),
            max_client_bytes: None,
            max_client_connections: 256,
            client_ip_header: None,
            spool_dir: None,
            spool_max_bytes: 1024 * MIB as u64,
            spool_max_age: Duration::from_secs(24 * 60 * 60),
            queue_max_envelopes: 10_000,
            queue_max_bytes: 256 * MIB,
            upstream_concurrency: 128,
            retry_initial_backoff: Duration::from_millis(500),
            retry_max_backoff: Duration::from_secs(60),
        }
    }
}

/// A configuration problem, quoting the setting by its flag name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--upstream: {0}")]
    Upstream(String),
    #[error("--tunnel-path: must start with `/`, not be under /api/, and not be an operator route")]
    TunnelPath,
    #[error("--{0}: must be greater than zero")]
    Zero(&'static str),
    #[error("--max-decompressed-bytes must be at least --max-body-bytes")]
    DecompressedBelowBody,
    #[error("--retry-max-backoff must be at least --retry-initial-backoff")]
    BackoffBelowInitial,
    #[error("--allowed-keys: `{0}` is not a valid public key")]
    AllowedKey(String),
    #[error("--tunnel-allowed-hosts: {0}")]
    TunnelHosts(String),
}

impl Config {
    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_upstream(&self.upstream).map_err(ConfigError::Upstream)?;
        let path = self.tunnel_path.as_str();
        let operator_route = crate::admin::AdminRoute::from_path(path).is_some();
        if !path.starts_with('/') || path.starts_with("/api/") || path.len() < 2 || operator_route {
            return Err(ConfigError::TunnelPath);
        }
        for (name, value) in [
            ("max-body-bytes", self.max_body_bytes),
            ("max-decompressed-bytes", self.max_decompressed_bytes),
            ("max-connections", self.max_connections),
            ("queue-max-envelopes", self.queue_max_envelopes),
            ("queue-max-bytes", self.queue_max_bytes),
            ("upstream-concurrency", self.upstream_concurrency),
            (
                "spool-max-bytes",
                usize::try_from(self.spool_max_bytes).unwrap_or(usize::MAX),
            ),
            ("memory-limit", self.memory_limit.unwrap_or(1)),
            ("max-client-bytes", self.max_client_bytes.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("upstream-timeout", self.upstream_timeout),
            ("shutdown-timeout", self.shutdown_timeout),
            ("spool-max-age", self.spool_max_age),
            ("retry-initial-backoff", self.retry_initial_backoff),
            ("body-timeout", self.body_timeout),
            ("header-timeout", self.header_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            return Err(ConfigError::DecompressedBelowBody);
        }
        if self.retry_max_backoff < self.retry_initial_backoff {
            return Err(ConfigError::BackoffBelowInitial);
        }
        if let Some(key) = self.allowed_keys.iter().find(|k| !crate::dsn::is_valid_public_key(k)) {
            return Err(ConfigError::AllowedKey(key.clone()));
        }
        Ok(())
    }

    /// The memory limit in force: the flag, else the container's cgroup limit, else [`DEFAULT_MEMORY_LIMIT`].
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
            .or_else(crate::budget::cgroup_memory_limit)
            .unwrap_or(DEFAULT_MEMORY_LIMIT)
    }

    /// The budget for requests in flight: half the memory limit. The other half is for the delivery queue
    /// (`queue_max_bytes`), the allocator's slack and the process itself.
    pub fn memory_budget(&self) -> usize {
        self.memory_limit() / 2
    }

    /// Most budget one client address may hold: the flag, else half the budget. One client can then still send an
    /// envelope of about a quarter of the budget (its decoded body plus the scrubbed copy), and cannot take it all.
    pub fn client_budget(&self) -> usize {
        self.max_client_bytes.unwrap_or(self.memory_budget() / 2)
    }

    /// The hosts tunnel DSNs may name: the configured list, or the upstream's host and its subdomains.
    pub fn effective_tunnel_hosts(&self) -> Vec<HostPattern> {
        if !self.tunnel_allowed_hosts.is_empty() {
            return self.tunnel_allowed_hosts.clone();
        }
        let host = self.upstream.host_str().unwrap_or_default().to_ascii_lowercase();
        vec![HostPattern::Exact(host.clone()), HostPattern::Subdomains(host)]
    }
}

/// The upstream is a plain base URL: http(s), a host, no credentials, query or fragment.
pub fn validate_upstream(url: &url::Url) -> Result<(), String> {
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("scheme must be http or https".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials (keys come from each request)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(())
}

/// Parses `40MiB`, `512KiB`, `10MB`, `1048576` into bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 40MiB)"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        "kb" => 1000,
        "m" | "mib" => 1024 * 1024,
        "mb" => 1000 * 1000,
        "g" | "gib" => 1024 * 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        _ => return Err(format!("`{text}`: unknown size unit (use B, KiB, MiB, GiB)")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses `30s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 30s)"))?;
    match unit.trim() {
        "" | "s" => Ok(Duration::from_secs(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "m" | "min" => Ok(Duration::from_secs(number.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(number.saturating_mul(3600))),
        _ => Err(format!("`{text}`: unknown duration unit (use ms, s, m, h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn tunnel_hosts_default_to_the_upstream() {
        let hosts = Config::default().effective_tunnel_hosts();
        assert!(hosts.iter().any(|h| h.matches("o1.ingest.us.sentry.io")));
        assert!(hosts.iter().any(|h| h.matches("sentry.io")));
        assert!(!hosts.iter().any(|h| h.matches("evil.example")));
    }

    #[test]
    fn bad_settings_name_their_flag() {
        let config = Config {
            upstream: url::Url::parse("https://k@sentry.io").unwrap(),
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().to_string().starts_with("--upstream"));
        let config = Config {
            tunnel_path: "/api/tunnel".into(),
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::TunnelPath)));
        let config = Config {
            tunnel_path: "/metrics".into(),
            ..Config::default()
        };
        assert!(
            matches!(config.validate(), Err(ConfigError::TunnelPath)),
            "would be shadowed by /metrics"
        );
        let config = Config {
            max_body_bytes: 0,
            ..Config::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "--max-body-bytes: must be greater than zero"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("40MiB"), Ok(40 * MIB));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("soon").is_err());
    }
}
