//! Who is sending: Sentry's authentication forms, and the rules for combining them.
//!
//! An SDK names its project key in exactly one of: the `X-Sentry-Auth` header (Python, Rust), an
//! `Authorization: Sentry ...` header, the `sentry_key` query parameter (JavaScript), or the envelope header's `dsn`
//! (JavaScript tunnels). The rules follow Sentry Relay:
//!
//! * two request-level sources at once (two headers, or a header and `sentry_key` in the query) → 401, even when
//!   they agree, because no SDK sends that and an ambiguous identity must not be guessed;
//! * `sentry_version` above 7 → 400; a version that is not a number → 401;
//! * an envelope `dsn` next to request auth must name the same key and project, else 400;
//! * no key anywhere → 401.
//!
//! An `Authorization` header with another scheme (`Bearer`, `Basic`, added by a proxy) is not Sentry auth and is
//! ignored. Pure functions over headers and strings; nothing here touches the network.

use http::HeaderMap;

use crate::dsn::{Dsn, DsnError, is_valid_public_key};
use crate::error::RelayError;

/// The newest protocol version the relay speaks (the one every current SDK sends).
pub const MAX_PROTOCOL_VERSION: u64 = 7;

/// Where a key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    Header,
    Query,
    EnvelopeDsn,
}

/// Auth fields from one source. `client` is only kept when it is safe to repeat in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    pub public_key: String,
    pub version: Option<u64>,
    pub client: Option<String>,
    pub source: AuthSource,
}

/// The resolved sender of one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub project_id: u64,
    pub public_key: String,
    /// The SDK's `sentry_client`, repeated upstream.
    pub client: Option<String>,
    pub source: AuthSource,
    /// The envelope's dsn, when it had one (its host is checked against the tunnel allowlist).
    pub dsn: Option<Dsn>,
}

/// `X-Sentry-Auth`, parsed once: a name given as a string is parsed and validated on every lookup.
pub(crate) const X_SENTRY_AUTH: http::HeaderName = http::HeaderName::from_static("x-sentry-auth");

/// Reads the request-level auth (headers and query). `Ok(None)` when there is none.
pub fn from_request(headers: &HeaderMap, query: Option<&str>) -> Result<Option<RequestAuth>, RelayError> {
    let mut found: Option<RequestAuth> = None;
    let mut add = |auth: RequestAuth| {
        if found.replace(auth).is_some() {
            return Err(RelayError::MultipleAuth);
        }
        Ok(())
    };
    for value in headers.get_all(X_SENTRY_AUTH) {
        let text = value
            .to_str()
            .map_err(|_| RelayError::InvalidAuth("header is not ASCII"))?;
        add(parse_auth_header(text, true)?)?;
    }
    for value in headers.get_all(http::header::AUTHORIZATION) {
        let Ok(text) = value.to_str() else { continue };
        if has_sentry_prefix(text) {
            add(parse_auth_header(text, false)?)?;
        }
    }
    if let Some(auth) = query.and_then(|q| parse_query(q).transpose()) {
        add(auth?)?;
    }
    Ok(found)
}

fn has_sentry_prefix(text: &str) -> bool {
    let text = text.trim_start();
    text.len() > 6 && text[..6].eq_ignore_ascii_case("sentry") && text.as_bytes()[6].is_ascii_whitespace()
}

/// Parses `Sentry sentry_key=..., sentry_version=7, sentry_client=...`. The `Sentry` prefix is optional in
/// `X-Sentry-Auth` (some old SDKs leave it out) and required in `Authorization`.
pub fn parse_auth_header(text: &str, prefix_optional: bool) -> Result<RequestAuth, RelayError> {
    let text = text.trim();
    let pairs = if has_sentry_prefix(text) {
        &text[7..]
    } else if prefix_optional {
        text
    } else {
        return Err(RelayError::InvalidAuth("missing `Sentry` prefix"));
    };
    let pairs = pairs.split(',').filter_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        Some((key.trim(), value.trim().trim_matches('"')))
    });
    build(pairs, AuthSource::Header)?.ok_or(RelayError::InvalidAuth("no sentry_key"))
}

/// Reads `sentry_key`, `sentry_version` and `sentry_client` from a query string. `Ok(None)` without `sentry_key`.
pub fn parse_query(query: &str) -> Result<Option<RequestAuth>, RelayError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key.starts_with("sentry_"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    build(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), AuthSource::Query)
}

fn build<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    source: AuthSource,
) -> Result<Option<RequestAuth>, RelayError> {
    let (mut key, mut version, mut client) = (None, None, None);
    for (name, value) in pairs {
        match name {
            "sentry_key" if key.is_some() => return Err(RelayError::MultipleAuth),
            "sentry_key" => key = Some(value),
            "sentry_version" => version = Some(value),
            "sentry_client" => client = Some(value),
            _ => {}
        }
    }
    let Some(key) = key else { return Ok(None) };
    if !is_valid_public_key(key) {
        return Err(RelayError::InvalidAuth("malformed sentry_key"));
    }
    let version = match version {
        None => None,
        Some(text) => {
            let version = parse_version(text).ok_or(RelayError::InvalidAuth("malformed sentry_version"))?;
            if version > MAX_PROTOCOL_VERSION {
                return Err(RelayError::UnsupportedProtocolVersion(version));
            }
            Some(version)
        }
    };
    Ok(Some(RequestAuth {
        public_key: key.to_owned(),
        version,
        client: client.and_then(safe_client),
        source,
    }))
}

/// `7` or `7.0` (some old SDKs send a float).
fn parse_version(text: &str) -> Option<u64> {
    let whole = text.split_once('.').map_or(text, |(whole, _)| whole);
    whole.parse().ok()
}

/// `sentry_client` goes back into a header we build, so only a plain `name/version` token survives: no commas or
/// `=` that could smuggle a second key into `X-Sentry-Auth`.
pub fn safe_client(client: &str) -> Option<String> {
    let ok = (1..=128).contains(&client.len())
        && client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_' | b'+' | b':' | b'@'));
    ok.then(|| client.to_owned())
}

/// Combines request auth, the path's project id and the envelope's `dsn` into one identity.
pub fn resolve(
    request: Option<RequestAuth>,
    path_project: Option<u64>,
    envelope_dsn: Option<&str>,
) -> Result<Identity, RelayError> {
    let dsn = match envelope_dsn {
        None => None,
        Some(text) => Some(Dsn::parse(text).map_err(|e| RelayError::InvalidDsn(dsn_reason(e)))?),
    };
    match (request, dsn) {
        (Some(auth), dsn) => {
            let project_id = match (path_project, &dsn) {
                (Some(id), _) => id,
                (None, Some(dsn)) => dsn.project_id,
                // Every route with request auth has a project id in its path; this is a programming error guard.
                (None, None) => return Err(RelayError::MissingAuth),
            };
            if let Some(dsn) = &dsn {
                if dsn.public_key != auth.public_key {
                    return Err(RelayError::DsnMismatch("public key"));
                }
                if dsn.project_id != project_id {
                    return Err(RelayError::DsnMismatch("project id"));
                }
            }
            Ok(Identity {
                project_id,
                public_key: auth.public_key,
                client: auth.client,
                source: auth.source,
                dsn,
            })
        }
        (None, Some(dsn)) => {
            if path_project.is_some_and(|id| id != dsn.project_id) {
                return Err(RelayError::DsnMismatch("project id"));
            }
            Ok(Identity {
                project_id: dsn.project_id,
                public_key: dsn.public_key.clone(),
                client: None,
                source: AuthSource::EnvelopeDsn,
                dsn: Some(dsn),
            })
        }
        (None, None) => Err(RelayError::MissingAuth),
    }
}

fn dsn_reason(error: DsnError) -> &'static str {
    match error {
        DsnError::NotAUrl => "not a URL",
        DsnError::Scheme => "scheme must be http or https",
        DsnError::MissingKey => "no public key",
        DsnError::InvalidKey => "public key has invalid characters",
        DsnError::MissingHost => "no host",
        DsnError::InvalidProjectId => "no numeric project id",
    }
}

/// The operator's allowlists; an empty list allows everything.
pub fn check_allowed(identity: &Identity, allowed_keys: &[String], allowed_projects: &[u64]) -> Result<(), RelayError> {
    if !allowed_keys.is_empty() && !allowed_keys.contains(&identity.public_key) {
        return Err(RelayError::KeyNotAllowed);
    }
    if !allowed_projects.is_empty() && !allowed_projects.contains(&identity.project_id) {
        return Err(RelayError::ProjectNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn python_and_rust_headers() {
        let py = "Sentry sentry_key=publickey123, sentry_version=7, sentry_client=sentry.python/2.75.0";
        let auth = from_request(&headers(&[("x-sentry-auth", py)]), None).unwrap().unwrap();
        assert_eq!(auth.public_key, "publickey123");
        assert_eq!(auth.client.as_deref(), Some("sentry.python/2.75.0"));
        let rust = "Sentry sentry_key=publickey123, sentry_version=7, sentry_timestamp=1795386767.266112, \
                    sentry_client=sentry.rust/0.49.5";
        let auth = from_request(&headers(&[("X-SENTRY-AUTH", rust)]), None)
            .unwrap()
            .unwrap();
        assert_eq!((auth.version, auth.source), (Some(7), AuthSource::Header));
    }

    #[test]
    fn javascript_query() {
        let q = "sentry_version=7&sentry_key=publickey123&sentry_client=sentry.javascript.node%2F11.12.0";
        let auth = from_request(&HeaderMap::new(), Some(q)).unwrap().unwrap();
        assert_eq!(auth.client.as_deref(), Some("sentry.javascript.node/11.12.0"));
        assert_eq!(auth.source, AuthSource::Query);
        assert!(
            from_request(&HeaderMap::new(), Some("page=2")).unwrap().is_none(),
            "no sentry_key, no auth"
        );
    }

    #[test]
    fn authorization_header_only_counts_with_the_sentry_scheme() {
        let auth = from_request(&headers(&[("authorization", "Sentry sentry_key=abc")]), None)
            .unwrap()
            .unwrap();
        assert_eq!(auth.public_key, "abc");
        assert!(
            from_request(&headers(&[("authorization", "Bearer xyz")]), None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn two_sources_are_refused() {
        let both = headers(&[
            ("x-sentry-auth", "Sentry sentry_key=abc"),
            ("authorization", "Sentry sentry_key=abc"),
        ]);
        assert!(matches!(from_request(&both, None), Err(RelayError::MultipleAuth)));
        let header = headers(&[("x-sentry-auth", "Sentry sentry_key=abc")]);
        assert!(matches!(
            from_request(&header, Some("sentry_key=abc")),
            Err(RelayError::MultipleAuth)
        ));
        assert!(matches!(
            from_request(&HeaderMap::new(), Some("sentry_key=a&sentry_key=b")),
            Err(RelayError::MultipleAuth)
        ));
    }

    #[test]
    fn versions() {
        let v8 = headers(&[("x-sentry-auth", "Sentry sentry_key=abc, sentry_version=8")]);
        assert!(matches!(
            from_request(&v8, None),
            Err(RelayError::UnsupportedProtocolVersion(8))
        ));
        let old = headers(&[("x-sentry-auth", "Sentry sentry_key=abc, sentry_version=5.0")]);
        assert_eq!(from_request(&old, None).unwrap().unwrap().version, Some(5));
        let junk = headers(&[("x-sentry-auth", "Sentry sentry_key=abc, sentry_version=x")]);
        assert!(matches!(from_request(&junk, None), Err(RelayError::InvalidAuth(_))));
    }

    #[test]
    fn client_names_that_could_inject_header_fields_are_dropped() {
        assert_eq!(
            safe_client("sentry.python/2.75.0").as_deref(),
            Some("sentry.python/2.75.0")
        );
        assert_eq!(safe_client("x, sentry_key=evil"), None);
    }

    #[test]
    fn envelope_dsn_rules() {
        let dsn = "http://publickey123@127.0.0.1:38441/42";
        let identity = resolve(None, None, Some(dsn)).unwrap();
        assert_eq!(
            (identity.project_id, identity.public_key.as_str()),
            (42, "publickey123")
        );
        let request = RequestAuth {
            public_key: "publickey123".into(),
            version: Some(7),
            client: None,
            source: AuthSource::Query,
        };
        assert!(
            resolve(Some(request.clone()), Some(42), Some(dsn)).is_ok(),
            "agreeing sources are fine"
        );
        assert!(matches!(
            resolve(Some(request.clone()), Some(43), Some(dsn)),
            Err(RelayError::DsnMismatch("project id"))
        ));
        let other = RequestAuth {
            public_key: "other".into(),
            ..request
        };
        assert!(matches!(
            resolve(Some(other), Some(42), Some(dsn)),
            Err(RelayError::DsnMismatch("public key"))
        ));
        assert!(matches!(resolve(None, Some(42), None), Err(RelayError::MissingAuth)));
        assert!(matches!(
            resolve(None, None, Some("nope")),
            Err(RelayError::InvalidDsn(_))
        ));
    }

    #[test]
    fn allowlists() {
        let identity = resolve(None, None, Some("http://abc@h/42")).unwrap();
        assert!(check_allowed(&identity, &[], &[]).is_ok());
        assert!(matches!(
            check_allowed(&identity, &["zzz".into()], &[]),
            Err(RelayError::KeyNotAllowed)
        ));
        assert!(matches!(
            check_allowed(&identity, &[], &[7]),
            Err(RelayError::ProjectNotAllowed)
        ));
        assert!(check_allowed(&identity, &["abc".into()], &[42]).is_ok());
    }
}
