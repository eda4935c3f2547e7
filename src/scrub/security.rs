//! Browser security reports (CSP violations, NEL network errors): the URLs in them, their referrers and script
//! samples.
//!
//! A URL keeps its origin (scheme, host and port), which Sentry groups by; its path loses emails (detectors) and
//! segments that look like tokens or ids (`url_token`); its query string and fragment go through the key rules, the
//! detectors, and the same token check on each value and each `/` segment, so a reset link's `?reset=<token>` goes
//! even though `reset` is not a sensitive key. Policies lose their nonces. Directives, dispositions, status codes, line numbers, phases and
//! report types are never touched; any other field gets the generic walk (key rules and detectors).

use serde_json::{Map, Value};

use super::{Remark, Scope, Scrubber, Seg, TextMode};

/// Passes over one URL at most; past them it goes out as the last pass left it (every cascade found so far settles
/// on the second pass).
const MAX_URL_PASSES: usize = 4;

/// The rule id for tokens removed from URLs by their shape.
pub const URL_TOKEN_RULE: &str = "url_token";

/// Fields holding a URL, in the legacy (kebab-case), Reporting API (camelCase) and NEL (snake_case) shapes.
const URL_FIELDS: &[&str] = &[
    "document-uri",
    "blocked-uri",
    "referrer",
    "source-file",
    "documentURL",
    "blockedURL",
    "sourceFile",
    "url",
    "document_uri",
    "blocked_uri",
    "source_file",
];

/// Fields that stay as the browser wrote them: what Sentry groups and filters by, numbers, and report metadata.
pub const KEPT_FIELDS: &[&str] = &[
    "violated-directive",
    "effective-directive",
    "effectiveDirective",
    "violatedDirective",
    "disposition",
    "status-code",
    "statusCode",
    "status_code",
    "line-number",
    "lineNumber",
    "column-number",
    "columnNumber",
    "type",
    "age",
    "user_agent",
    "elapsed_time",
    "method",
    "phase",
    "protocol",
    "sampling_fraction",
    "server_ip",
];

impl Scrubber<'_> {
    /// Scrubs one report (any of the shapes) in place.
    pub(crate) fn security_report(&mut self, report: &mut Map<String, Value>) {
        for (key, value) in report.iter_mut() {
            let key = key.as_str();
            let path = [Seg::Key(key)];
            match value {
                _ if KEPT_FIELDS.contains(&key) => {}
                Value::String(text) if URL_FIELDS.contains(&key) => self.scrub_url(text, &path),
                Value::String(text) if key == "script-sample" || key == "sample" => {
                    // Up to 40 characters of inline code: the only clue to which script broke, so it stays, minus
                    // what the detectors and `key=value` rules find.
                    if let Some(scrubbed) = self.scrub_str(text, TextMode::Free, &path) {
                        *text = scrubbed;
                    }
                }
                Value::String(text) if key == "original-policy" || key == "originalPolicy" => {
                    self.scrub_policy(text, &path);
                }
                Value::Object(inner) if key == "csp-report" || key == "body" => self.security_report(inner),
                other => self.walk_value(other, Scope::Data, &mut vec![Seg::Key(key)]),
            }
        }
    }

    /// A URL: origin kept, path tokens and emails out, query and fragment through the key rules, detectors and the
    /// token check. Strings that are not URLs (`inline`, `eval`, `data:...`) get the detectors.
    ///
    /// Repeated until a pass changes nothing (at most [`MAX_URL_PASSES`]): a mask can remove what gave the URL its
    /// shape (a `&` inside URL credentials, the only `=`), and the next reading then sees a new pair or token. The
    /// fuzz target found that class several times, each fixed at its spot; the forwarded URL must read the same to a
    /// second relay. Security reports are rare and short, so the confirming pass costs little.
    pub(crate) fn scrub_url(&mut self, url: &mut String, path: &[Seg<'_>]) {
        for _ in 0..MAX_URL_PASSES {
            if !self.scrub_url_once(url, path) {
                break;
            }
        }
    }

    /// One pass of [`Scrubber::scrub_url`]; whether it changed the URL.
    fn scrub_url_once(&mut self, url: &mut String, path: &[Seg<'_>]) -> bool {
        let (origin, rest) = split_origin(url);
        let (before_fragment, fragment) = match rest.split_once('#') {
            Some((before, fragment)) => (before, Some(fragment)),
            None => (rest, None),
        };
        let (url_path, query) = match before_fragment.split_once('?') {
            Some((url_path, query)) => (url_path, Some(query)),
            None => (before_fragment, None),
        };
        let mut out = String::with_capacity(url.len());
        out.push_str(
            &self
                .scrub_str(origin, TextMode::Plain, path)
                .unwrap_or_else(|| origin.to_string()),
        );
        let url_path = self.replace_tokens(url_path, '/', path);
        out.push_str(&self.scrub_str(&url_path, TextMode::Plain, path).unwrap_or(url_path));
        for (separator, part) in [('?', query), ('#', fragment)] {
            let Some(part) = part else { continue };
            out.push(separator);
            // Read the same way whether or not it holds a `=`: the first pass can remove the only one (a
            // `token:` credential running over `?cart=42`), and a second reading must not then find new tokens.
            let tokens_out = self.replace_param_tokens(part, path);
            out.push_str(&self.scrub_str(&tokens_out, TextMode::Query, path).unwrap_or(tokens_out));
        }
        let changed = out != *url;
        if changed {
            *url = out;
        }
        changed
    }

    /// A CSP policy: `'nonce-...'` sources lose their value (a nonce that repeats is a bypass), then the detectors.
    fn scrub_policy(&mut self, policy: &mut String, path: &[Seg<'_>]) {
        let mut out = String::with_capacity(policy.len());
        let mut rest = policy.as_str();
        while let Some(start) = rest.find("'nonce-") {
            let value_start = start + "'nonce-".len();
            let Some(len) = rest[value_start..].find('\'') else {
                break;
            };
            out.push_str(&rest[..value_start]);
            let nonce = &rest[value_start..value_start + len];
            out.push_str(&self.token_replacement(nonce, path));
            rest = &rest[value_start + len..];
        }
        out.push_str(rest);
        let scrubbed = self.scrub_str(&out, TextMode::Plain, path).unwrap_or(out);
        if scrubbed != *policy {
            *policy = scrubbed;
        }
    }

    /// Replaces every `separator`-delimited segment of `text` that looks like a token.
    fn replace_tokens(&mut self, text: &str, separator: char, path: &[Seg<'_>]) -> String {
        let mut out = String::with_capacity(text.len());
        for (i, segment) in text.split(separator).enumerate() {
            if i > 0 {
                out.push(separator);
            }
            if looks_like_token(segment) {
                out.push_str(&self.token_replacement(segment, path));
            } else {
                out.push_str(segment);
            }
        }
        out
    }

    /// A query string or fragment (`a=b&c=d`, `/section/x`, or both): a value that looks like a token is replaced
    /// whole, and so is every `/`-separated segment of a name, a value, or a part without `=` that does. Every
    /// segment is read, with a `=` or without: when the first pass removes a `=` (a detector's hit running over it),
    /// a second reading finds no token the first one left (the `security_report` fuzz target found
    /// `?token://...?cart=42&ses://host/<token>/...` losing its only `=` to a `token:` credential, and the second
    /// pass masking the path-like segment the first had read as part of a pair).
    fn replace_param_tokens(&mut self, text: &str, path: &[Seg<'_>]) -> String {
        let mut out = String::with_capacity(text.len());
        for (i, pair) in text.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value)) => {
                    out.push_str(&self.replace_tokens(name, '/', path));
                    out.push('=');
                    if looks_like_token(value) {
                        out.push_str(&self.token_replacement(value, path));
                    } else {
                        out.push_str(&self.replace_tokens(value, '/', path));
                    }
                }
                None => out.push_str(&self.replace_tokens(pair, '/', path)),
            }
        }
        out
    }

    /// What a token is replaced with: the key replacement, or its HMAC when keys are hashed.
    fn token_replacement(&mut self, token: &str, path: &[Seg<'_>]) -> String {
        let (replacement, action, ty) = self.key_replacement(token);
        let remark = Remark {
            rule: URL_TOKEN_RULE,
            ty,
            range: None,
        };
        self.record(path, None, URL_TOKEN_RULE, action, &[remark], None);
        replacement.into_owned()
    }
}

/// `scheme://authority` and the rest; no origin when the string has no `://` before its first `/`, `?` or `#`.
fn split_origin(url: &str) -> (&str, &str) {
    let Some(scheme_end) = url.find("://") else {
        return ("", url);
    };
    if url[..scheme_end].contains(['/', '?', '#']) {
        return ("", url);
    }
    let authority_start = scheme_end + 3;
    let end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    (&url[..end], &url[end..])
}

/// A path segment or parameter value that is a secret by its shape: a UUID, or 16+ URL-safe characters with a run of
/// 12+ that mixes letters and digits (hex digests, random tokens, session ids). Words, slugs (`my-post-2024`),
/// numbers and file names (`app.3f2a1b.js` has a short hash) stay.
pub fn looks_like_token(text: &str) -> bool {
    let text = text.trim_end_matches('=');
    if is_uuid(text) {
        return true;
    }
    if text.len() < 16
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%'))
    {
        return false;
    }
    text.split(['-', '_', '.', '~']).any(|piece| {
        piece.len() >= 12 && piece.bytes().any(|b| b.is_ascii_digit()) && piece.bytes().any(|b| b.is_ascii_alphabetic())
    })
}

fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shapes() {
        for token in [
            "9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c",
            "3f1cd9e2-4b5a-4c6d-8e7f-a1b2c3d4e5f6",
            "sess_Zx81kQ2mP0aLw9vB",
            "eyJhbGciOiJIUzI1NiJ9abc",
        ] {
            assert!(looks_like_token(token), "{token}");
        }
        for word in [
            "reset",
            "my-blog-post-2024",
            "app.3f2a1b.js",
            "12345678901234567",
            "index.html",
            "checkout",
        ] {
            assert!(!looks_like_token(word), "{word}");
        }
    }

    #[test]
    fn urls_keep_their_origin_and_lose_their_secrets() {
        let rules = crate::rules::CompiledRules::defaults();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut url = "https://bob:hunter2@a.example:8443/u/jane@example.com/reset/9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c\
                       ?next=/home&code=Zx81kQ2mP0aLw9vB77#access_token=abc"
            .to_string();
        scrubber.scrub_url(&mut url, &[]);
        for secret in ["hunter2", "jane@", "9f8a7b6c", "Zx81kQ2mP0aLw9vB77", "abc"] {
            assert!(!url.contains(secret), "{secret} in {url}");
        }
        assert!(
            url.contains("a.example:8443/u/***@example.com/reset/[FILTERED]?next=/home&code=[FILTERED]#"),
            "{url}"
        );
        assert!(url.ends_with("#access_token=[FILTERED]"), "{url}");

        let mut keyword = "inline".to_string();
        scrubber.scrub_url(&mut keyword, &[]);
        assert_eq!(keyword, "inline");
        let mut policy = "script-src 'nonce-abc123XYZ' 'self'".to_string();
        scrubber.scrub_policy(&mut policy, &[]);
        assert_eq!(policy, "script-src 'nonce-[FILTERED]' 'self'");
    }

    /// Scrubs `url` twice: the first pass, and whether the second changed it.
    fn scrub_url_twice(url: &str) -> (String, String) {
        let rules = crate::rules::CompiledRules::defaults();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut once = url.to_string();
        scrubber.scrub_url(&mut once, &[]);
        let mut twice = once.clone();
        scrubber.scrub_url(&mut twice, &[]);
        (once, twice)
    }

    #[test]
    fn a_value_whose_end_a_hit_covers_runs_on_to_its_next_end() {
        // The `security_report` fuzz target (regressions/security_report/url-rewrite-second-pass-995e...): a
        // URL-credentials hit (`us&er:pw`) joined the `session=` value and covered the `&` that ended it, so the
        // forwarded `session=[FILTERED]@h` had a value a second pass masked. The value now runs on to its next `&`.
        let (once, twice) = scrub_url_twice("https://a.example/checkout?cart=42&session=abc.x://us&er:pw@h&page=2");
        assert_eq!(once, "https://a.example/checkout?cart=42&session=[FILTERED]&page=2");
        assert_eq!(twice, once);
    }

    #[test]
    fn a_mask_that_removes_a_separator_gets_a_confirming_pass() {
        // The `security_report` fuzz target (regressions/security_report/url-credentials-cover-the-ampersand): the
        // URL-credentials hit `&:p` covered the `&` between `token:s://` and `:p@=k`, so the forwarded query read
        // as one pair named `token:s://[redacted]@`, whose value a second relay masked. The URL is now scrubbed
        // until a pass changes nothing.
        let (once, twice) = scrub_url_twice("?token:s://&:p@=k");
        assert_eq!(once, "?token:s://[redacted]@=[FILTERED]");
        assert_eq!(twice, once);
        // A URL with nothing to mask takes one pass and stays as it was.
        let (once, twice) = scrub_url_twice("https://a.example/checkout?cart=42&page=2");
        assert_eq!(once, "https://a.example/checkout?cart=42&page=2");
        assert_eq!(twice, once);
    }

    #[test]
    fn query_segments_are_token_checked_with_or_without_a_pair() {
        // The `security_report` fuzz target (regressions/security_report/url-rewrite-second-pass-9eb5...): the query
        // held one `=`, so it was read as pairs and only values were token-checked; the first pass's `token:`
        // credential ran over that `=`, and a second pass read the query as a path and masked `cheQ...Qe`.
        let (once, twice) =
            scrub_url_twice("https://shop.example/?token://x.example?ucart=42&ses://h/cheQQQQQQQQQQQQQ000000Qe/x");
        assert_eq!(once, "https://shop.example/?token:[redacted]&ses://h/[FILTERED]/x");
        assert_eq!(twice, once);
        // Names and values are read segment by segment too: a reset link inside a redirect parameter.
        let (once, _) = scrub_url_twice("https://a.example/login?next=/reset/9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c&lang=en");
        assert_eq!(once, "https://a.example/login?next=/reset/[FILTERED]&lang=en");
    }

    #[test]
    fn url_tokens_are_hashed_when_keys_are() {
        let yaml = "hashing:\n  key_env: PATH\nsensitive_keys:\n  action: hash\n  words: [password]\n";
        let rules = crate::rules::CompiledRules::from_yaml(yaml).unwrap();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let token = "9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c";
        let mut url = format!("https://a.example/reset/{token}");
        scrubber.scrub_url(&mut url, &[]);
        let hashed = scrubber.hash(token);
        assert!(hashed.starts_with("hmac:"), "{hashed}");
        assert_eq!(url, format!("https://a.example/reset/{hashed}"));
    }

    #[test]
    fn origins() {
        assert_eq!(
            split_origin("https://a.example:8443/x?y#z"),
            ("https://a.example:8443", "/x?y#z")
        );
        assert_eq!(split_origin("https://a.example"), ("https://a.example", ""));
        assert_eq!(split_origin("inline"), ("", "inline"));
        assert_eq!(split_origin("/path?next=https://x"), ("", "/path?next=https://x"));
    }
}
