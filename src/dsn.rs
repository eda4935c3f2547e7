//! Sentry DSNs (`https://<public_key>@<host>/<project_id>`) and the checks shared by every place that reads a key.
//!
//! The relay only ever reads a DSN to learn *who* is sending (key + project). Where the envelope goes is the
//! configured upstream, never the DSN's host, so a DSN cannot turn the relay into an open proxy.

use std::fmt;

/// Why a DSN could not be used. Messages never repeat the DSN itself (it carries a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("not a URL")]
    NotAUrl,
    #[error("scheme must be http or https")]
    Scheme,
    #[error("no public key")]
    MissingKey,
    #[error("public key has invalid characters")]
    InvalidKey,
    #[error("no host")]
    MissingHost,
    #[error("no numeric project id")]
    InvalidProjectId,
}

/// A parsed DSN. `Display` prints it without the secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    pub scheme: String,
    pub public_key: String,
    pub host: String,
    pub port: Option<u16>,
    /// Path segments before the project id (self-hosted Sentry behind a path prefix).
    pub path_prefix: String,
    pub project_id: u64,
}

impl Dsn {
    pub fn parse(text: &str) -> Result<Dsn, DsnError> {
        let url = url::Url::parse(text.trim()).map_err(|_| DsnError::NotAUrl)?;
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(DsnError::Scheme);
        }
        let public_key = url.username();
        if public_key.is_empty() {
            return Err(DsnError::MissingKey);
        }
        if !is_valid_public_key(public_key) {
            return Err(DsnError::InvalidKey);
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(DsnError::MissingHost)?;
        let path = url.path().trim_end_matches('/');
        let (prefix, id) = path.rsplit_once('/').ok_or(DsnError::InvalidProjectId)?;
        let project_id = parse_project_id(id).ok_or(DsnError::InvalidProjectId)?;
        Ok(Dsn {
            scheme: scheme.to_owned(),
            public_key: public_key.to_owned(),
            host: host.to_ascii_lowercase(),
            port: url.port(),
            path_prefix: prefix.to_owned(),
            project_id,
        })
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}@{}", self.scheme, self.public_key, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{}/{}", self.path_prefix, self.project_id)
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({self})")
    }
}

/// Public keys are 32 hex characters in Sentry, but self-hosted setups and tests use other tokens. We accept
/// 1..=64 ASCII letters, digits, `-` and `_`: enough for every real key, and safe to splice into an
/// `X-Sentry-Auth` header and a metric-free log line.
pub fn is_valid_public_key(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Project ids are positive integers. Leading `+`, signs and whitespace are refused.
pub fn parse_project_id(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&id| id > 0)
}

/// A host an operator allows in tunnel DSNs: an exact name or `*.suffix` (any subdomain, not the suffix itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim().to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, text),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'));
        if !valid {
            return Err(format!("invalid host pattern `{name}`"));
        }
        Ok(if wildcard {
            HostPattern::Subdomains(name)
        } else {
            HostPattern::Exact(name)
        })
    }

    /// Case-insensitive; `host` is already lowercase when it comes from [`Dsn::parse`].
    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        match self {
            HostPattern::Exact(name) => host == *name,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Subdomains(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sdk_dsns() {
        let dsn = Dsn::parse("http://publickey123@127.0.0.1:38441/42").unwrap();
        assert_eq!(
            (dsn.public_key.as_str(), dsn.host.as_str(), dsn.port, dsn.project_id),
            ("publickey123", "127.0.0.1", Some(38441), 42)
        );
        let dsn =
            Dsn::parse("https://e12d836b15bb49d7bbf99e64295d995b:secret@O1.ingest.us.sentry.io/prefix/7/").unwrap();
        assert_eq!(dsn.host, "o1.ingest.us.sentry.io", "hosts are compared lowercase");
        assert_eq!(dsn.path_prefix, "/prefix");
        assert_eq!(dsn.project_id, 7);
        assert!(!dsn.to_string().contains("secret"), "Display leaves out the secret key");
    }

    #[test]
    fn rejects_unusable_dsns() {
        assert_eq!(Dsn::parse("not a url"), Err(DsnError::NotAUrl));
        assert_eq!(Dsn::parse("ftp://k@h/1"), Err(DsnError::Scheme));
        assert_eq!(Dsn::parse("https://h/1"), Err(DsnError::MissingKey));
        assert_eq!(Dsn::parse("https://k@h/abc"), Err(DsnError::InvalidProjectId));
        assert_eq!(Dsn::parse("https://k@h/0"), Err(DsnError::InvalidProjectId));
        assert_eq!(Dsn::parse("https://k%2C%20x@h/1"), Err(DsnError::InvalidKey));
    }

    #[test]
    fn host_patterns() {
        let wildcard = HostPattern::parse("*.sentry.io").unwrap();
        assert!(wildcard.matches("o1.ingest.us.sentry.io"));
        assert!(!wildcard.matches("sentry.io"), "a wildcard means subdomains only");
        assert!(!wildcard.matches("evilsentry.io"), "the suffix must start at a dot");
        assert!(HostPattern::parse("Sentry.IO").unwrap().matches("sentry.io"));
        assert!(HostPattern::parse("bad/host").is_err());
    }
}
