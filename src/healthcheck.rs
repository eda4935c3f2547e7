//! `scrub-relay healthcheck`: asks a running relay whether it is healthy and exits 0 (yes) or 1 (no).
//!
//! It exists because the container image has no shell and no curl, so Docker's `HEALTHCHECK` has nothing else to run.
//! It speaks just enough HTTP/1.1 over a blocking `std::net::TcpStream` (one GET, read the status line) to need no
//! runtime and no extra dependency, and it starts in a millisecond.
//!
//! By default it asks the liveness route of the relay's own listen address (`SCRUB_RELAY_LISTEN`, so the same
//! environment that configures `run` configures the check). Liveness, not readiness, because Docker (Swarm) restarts
//! an unhealthy container: a relay that is merely applying backpressure (queue and spool full) or draining must not
//! be killed for it. Pass `--url http://127.0.0.1:3000/readyz` to wait for readiness instead.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where the relay listens when `SCRUB_RELAY_LISTEN` is not set; mirrors the `run` default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// The route asked by default: liveness (see the module docs for why not readiness).
pub const DEFAULT_PATH: &str = "/healthz";
/// The whole check (connect, send, first line of the answer) must finish within this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// A status line is short; anything longer than this is not an HTTP answer we care to read.
const MAX_STATUS_LINE: usize = 1024;

/// Arguments of the `healthcheck` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// Full URL to ask (plain http only). Default: `http://<listen address>/healthz`, with an unspecified address
    /// (0.0.0.0, [::]) replaced by loopback.
    #[arg(long, env = "SCRUB_RELAY_HEALTHCHECK_URL")]
    pub url: Option<String>,
    /// The relay's listen address, read from the same variable `run` uses, to build the default URL.
    #[arg(long, env = "SCRUB_RELAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT.as_secs())]
    pub timeout_secs: u64,
}

impl HealthcheckArgs {
    /// The URL this invocation asks.
    pub fn target_url(&self) -> Result<String, HealthcheckError> {
        match &self.url {
            Some(url) => Ok(url.clone()),
            None => default_url(&self.listen),
        }
    }
}

/// Why the relay was not found healthy. The messages name the cause in one line.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("invalid health check URL: {0}")]
    InvalidUrl(String),
    #[error("invalid listen address {0:?}: expected host:port")]
    InvalidListen(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("no answer from {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("the answer from {0} is not HTTP")]
    NotHttp(SocketAddr),
    #[error("{url} answered {status}")]
    Unhealthy { url: String, status: u16 },
}

/// `http://<listen>/healthz`, with an unspecified bind address turned into the matching loopback address.
pub fn default_url(listen: &str) -> Result<String, HealthcheckError> {
    let host_port = match listen.parse::<SocketAddr>() {
        Ok(addr) => {
            let ip = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            SocketAddr::new(ip, addr.port()).to_string()
        }
        // A host name (`localhost:3000`) is fine as it is.
        Err(_)
            if listen
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) =>
        {
            listen.to_owned()
        }
        Err(_) => return Err(HealthcheckError::InvalidListen(listen.to_owned())),
    };
    Ok(format!("http://{host_port}{DEFAULT_PATH}"))
}

/// Sends one `GET` to `url` and returns the status code when it is 2xx.
pub fn check(url: &str, timeout: Duration) -> Result<u16, HealthcheckError> {
    let parsed = url::Url::parse(url).map_err(|error| HealthcheckError::InvalidUrl(error.to_string()))?;
    if parsed.scheme() != "http" {
        return Err(HealthcheckError::InvalidUrl(format!(
            "scheme {:?} is not http",
            parsed.scheme()
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| HealthcheckError::InvalidUrl("no host".to_owned()))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    // `host_str` keeps the brackets of an IPv6 literal, which `ToSocketAddrs` does not accept.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (bare_host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| HealthcheckError::Resolve(format!("{host}:{port}")))?;

    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| HealthcheckError::Connect { addr, source })?;
    let io = |source| HealthcheckError::Io { addr, source };
    let path = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: scrub-relay-healthcheck/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.set_write_timeout(Some(remaining(deadline))).map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;

    // Read until the end of the status line; the rest of the answer does not matter.
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        stream.set_read_timeout(Some(remaining(deadline))).map_err(io)?;
        match stream.read(&mut chunk).map_err(io)? {
            0 => break,
            read => head.extend_from_slice(&chunk[..read]),
        }
    }
    let status = parse_status_line(&head).ok_or(HealthcheckError::NotHttp(addr))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(HealthcheckError::Unhealthy {
            url: url.to_owned(),
            status,
        })
    }
}

/// Time left until `deadline`, never zero (a zero timeout means "block forever" to std).
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line_end = head.iter().position(|&byte| byte == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Runs the subcommand: prints one line and returns the process exit code (0 healthy, 1 not).
pub fn run(args: &HealthcheckArgs) -> std::process::ExitCode {
    let outcome = args
        .target_url()
        .and_then(|url| check(&url, Duration::from_secs(args.timeout_secs.max(1))));
    match outcome {
        Ok(status) => {
            println!("healthy ({status})");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("unhealthy: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_uses_loopback_for_unspecified_addresses() {
        assert_eq!(default_url("0.0.0.0:3000").unwrap(), "http://127.0.0.1:3000/healthz");
        assert_eq!(default_url("[::]:8080").unwrap(), "http://[::1]:8080/healthz");
        assert_eq!(default_url("10.1.2.3:3000").unwrap(), "http://10.1.2.3:3000/healthz");
        assert_eq!(default_url("localhost:3000").unwrap(), "http://localhost:3000/healthz");
        assert!(default_url("3000").is_err());
        assert!(default_url(":3000").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx: y"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None, "no end of line yet");
    }

    #[test]
    fn only_plain_http_urls() {
        assert!(matches!(
            check("https://127.0.0.1:1/healthz", DEFAULT_TIMEOUT),
            Err(HealthcheckError::InvalidUrl(_))
        ));
        assert!(matches!(
            check("not a url", DEFAULT_TIMEOUT),
            Err(HealthcheckError::InvalidUrl(_))
        ));
    }

    #[test]
    fn a_closed_port_is_unhealthy() {
        // Bind then drop: the port is (for this instant) known to be closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let outcome = check(&format!("http://127.0.0.1:{port}/healthz"), DEFAULT_TIMEOUT);
        assert!(matches!(outcome, Err(HealthcheckError::Connect { .. })), "{outcome:?}");
    }

    #[test]
    fn a_non_2xx_answer_is_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let _ = socket.read(&mut request).unwrap();
            socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let outcome = check(&format!("http://{addr}/readyz"), DEFAULT_TIMEOUT);
        assert!(
            matches!(outcome, Err(HealthcheckError::Unhealthy { status: 503, .. })),
            "{outcome:?}"
        );
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");
    }
}
