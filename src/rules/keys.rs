//! Key-word matching for sensitive JSON keys, and name matching for sensitive HTTP headers.
//!
//! Substring matching over-scrubs (`auth` in `author`, `pin` in `shipping`, `token` in `max_tokens`), so keys are
//! compared by *words*: a key is split on `_`, `-`, `.`, spaces and camelCase humps, lower-cased, and matches a rule
//! when the rule's words appear in it as a consecutive run. `userPassword`, `db_password`, `API_KEY`, `apiKey` and
//! `x_api_key` match; `author`, `shipping_method`, `max_tokens` and `tokenizer` do not.
//!
//! The normalized key joins its words with `_` and a single Aho-Corasick automaton over the normalized rule words finds
//! candidates; a candidate counts only when it starts and ends on word boundaries.

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};

/// Splits `key` into lower-case words joined by `_`, appending to `out` (cleared first).
///
/// `userPassword` → `user_password`, `APIKey` → `api_key`, `connect.sid` → `connect_sid`, `X-Hub-Signature-256` →
/// `x_hub_signature_256`.
pub fn normalize_key_into(key: &str, out: &mut String) {
    out.clear();
    if key.is_ascii() {
        return normalize_ascii_key_into(key.as_bytes(), out);
    }
    let mut prev: Option<char> = None;
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' || c == '-' || c == '.' || c == ' ' || c == '/' || c == ':' {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev = None;
            continue;
        }
        if c.is_uppercase() {
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                // The last capital of an acronym starts a new word: `APIKey` → `api`, `key`.
                Some(p) if p.is_uppercase() => chars.peek().is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            for lower in c.to_lowercase() {
                out.push(lower);
            }
        } else {
            out.push(c);
        }
        prev = Some(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
}

/// The same as the general path, byte by byte, for the (usual) ASCII keys.
fn normalize_ascii_key_into(key: &[u8], buf: &mut String) {
    let mut prev: u8 = 0; // 0: start of a word
    for (i, &c) in key.iter().enumerate() {
        if matches!(c, b'_' | b'-' | b'.' | b' ' | b'/' | b':') {
            if !buf.is_empty() && !buf.ends_with('_') {
                buf.push('_');
            }
            prev = 0;
            continue;
        }
        if c.is_ascii_uppercase() {
            let boundary = if prev.is_ascii_lowercase() || prev.is_ascii_digit() {
                true
            } else if prev.is_ascii_uppercase() {
                key.get(i + 1).is_some_and(u8::is_ascii_lowercase)
            } else {
                false
            };
            if boundary && !buf.is_empty() && !buf.ends_with('_') {
                buf.push('_');
            }
            buf.push(char::from(c.to_ascii_lowercase()));
        } else {
            buf.push(char::from(c));
        }
        prev = c;
    }
    while buf.ends_with('_') {
        buf.pop();
    }
}

/// Convenience wrapper around [`normalize_key_into`].
pub fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    normalize_key_into(key, &mut out);
    out
}

/// Matches JSON keys against sensitive key words, with an explicit list of safe keys that never match.
#[derive(Debug, Clone)]
pub struct KeyMatcher {
    automaton: Option<AhoCorasick>,
    /// Keys that match only as a whole (`account` but not `account_id`). A handful: a list beats hashing.
    exact: Vec<String>,
    safe: HashSet<String>,
}

impl KeyMatcher {
    /// Builds the matcher. Words are normalized the same way keys are, so `api_key`, `apiKey` and `API-KEY` are one
    /// rule.
    pub fn new<'a>(words: impl IntoIterator<Item = &'a str>, safe: impl IntoIterator<Item = &'a str>) -> KeyMatcher {
        let mut patterns: Vec<String> = words.into_iter().map(normalize_key).filter(|w| !w.is_empty()).collect();
        patterns.sort();
        patterns.dedup();
        let automaton = if patterns.is_empty() {
            None
        } else {
            // Standard semantics so overlapping candidates are all reported; a boundary check picks the real ones.
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .expect("key word automaton: a few hundred short literal patterns always build"),
            )
        };
        let safe = safe.into_iter().map(normalize_key).collect();
        KeyMatcher {
            automaton,
            exact: Vec::new(),
            safe,
        }
    }

    /// Adds keys that match only when the whole key equals them (after normalization).
    pub fn with_exact<'a>(mut self, exact: impl IntoIterator<Item = &'a str>) -> KeyMatcher {
        self.exact
            .extend(exact.into_iter().map(normalize_key).filter(|k| !k.is_empty()));
        self
    }

    /// Whether `key` is sensitive. `scratch` is reused between calls to avoid an allocation per key.
    pub fn is_sensitive_with(&self, key: &str, scratch: &mut String) -> bool {
        normalize_key_into(key, scratch);
        if self.exact.iter().any(|e| e == scratch) {
            return !self.safe.contains(scratch.as_str());
        }
        let Some(automaton) = &self.automaton else { return false };
        let normalized = scratch.as_bytes();
        let mut hit = false;
        for m in automaton.find_overlapping_iter(normalized) {
            let starts_on_word = m.start() == 0 || normalized[m.start() - 1] == b'_';
            let ends_on_word = m.end() == normalized.len() || normalized[m.end()] == b'_';
            if starts_on_word && ends_on_word {
                hit = true;
                break;
            }
        }
        hit && !self.safe.contains(scratch.as_str())
    }

    pub fn is_sensitive(&self, key: &str) -> bool {
        self.is_sensitive_with(key, &mut String::new())
    }
}

/// Normalizes a header name: lower case, `_` → `-`.
pub fn normalize_header(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| if c == '_' { '-' } else { c.to_ascii_lowercase() })
        .collect()
}

/// Normalizes a short ASCII header name into `buf` without allocating; `None` if it does not fit or is not ASCII.
pub fn normalize_header_into<'b>(name: &str, buf: &'b mut [u8]) -> Option<&'b str> {
    let name = name.trim();
    if name.len() > buf.len() || !name.is_ascii() {
        return None;
    }
    for (slot, b) in buf.iter_mut().zip(name.bytes()) {
        *slot = if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
    }
    std::str::from_utf8(&buf[..name.len()]).ok()
}

/// Whether two header names are the same (case-insensitive, `_` equal to `-`); `normalized` is already normalized.
pub fn header_name_eq(normalized: &str, name: &str) -> bool {
    let name = name.trim();
    normalized.len() == name.len()
        && normalized
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == if b == b'_' { b'-' } else { b.to_ascii_lowercase() })
}

/// Matches HTTP header names against exact names and `*` globs.
#[derive(Debug, Clone, Default)]
pub struct HeaderMatcher {
    /// Tens of names at most: a linear scan with a length check beats hashing every header name.
    exact: Vec<String>,
    globs: Vec<Vec<String>>,
}

impl HeaderMatcher {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>, patterns: impl IntoIterator<Item = &'a str>) -> Self {
        HeaderMatcher {
            exact: names.into_iter().map(normalize_header).collect(),
            globs: patterns
                .into_iter()
                .map(|p| normalize_header(p).split('*').map(str::to_string).collect())
                .collect(),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let mut buf = [0u8; 128];
        let owned;
        let name = match normalize_header_into(name, &mut buf) {
            Some(normalized) => normalized,
            None => {
                owned = normalize_header(name);
                owned.as_str()
            }
        };
        self.exact.iter().any(|e| e == name) || self.globs.iter().any(|parts| glob_match(parts, name))
    }
}

/// Matches `text` against a glob already split on `*`.
pub(crate) fn glob_match(parts: &[String], text: &str) -> bool {
    match parts {
        [] => text.is_empty(),
        [only] => only == text,
        [first, middle @ .., last] => {
            if !text.starts_with(first.as_str()) || text.len() < first.len() + last.len() {
                return false;
            }
            if !text[first.len()..].ends_with(last.as_str()) {
                return false;
            }
            let mut rest = &text[first.len()..text.len() - last.len()];
            for part in middle {
                match rest.find(part.as_str()) {
                    Some(i) => rest = &rest[i + part.len()..],
                    None => return false,
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_words() -> Vec<&'static str> {
        vec![
            "password",
            "secret",
            "token",
            "api_key",
            "access_key",
            "private_key",
            "ssn",
            "social_security",
            "ein",
            "bank_account",
            "routing_number",
            "account_number",
            "card_number",
            "cvv",
            "pin",
            "date_of_birth",
            "dob",
            "birth_date",
            "passwd",
            "apikey",
            "auth",
            "credentials",
            "mysql_pwd",
            "privatekey",
            "session",
            "csrftoken",
            "sessionid",
            "set_cookie",
            "cookie",
            "authorization",
            "connect.sid",
            "csrf_token",
            "xsrf-token",
            "phpsessid",
        ]
    }

    #[test]
    fn normalization_splits_words() {
        for (key, want) in [
            ("userPassword", "user_password"),
            ("APIKey", "api_key"),
            ("API_KEY", "api_key"),
            ("apiKey", "api_key"),
            ("connect.sid", "connect_sid"),
            ("X-Hub-Signature-256", "x_hub_signature_256"),
            ("gen_ai.usage.input_tokens", "gen_ai_usage_input_tokens"),
            ("__dunder__", "dunder"),
            ("XMLHttpRequest", "xml_http_request"),
        ] {
            assert_eq!(normalize_key(key), want, "normalizing {key}");
        }
    }

    #[test]
    fn sensitive_keys_match_by_word() {
        let m = KeyMatcher::new(default_words(), ["token_type"]);
        for key in [
            "userPassword",
            "db_password",
            "API_KEY",
            "apiKey",
            "csrftoken",
            "x_api_key",
            "connect.sid",
            "set_cookie",
            "password",
            "Authorization",
            "refresh_token",
            "aws_access_key_id",
            "client_secret",
            "X-CSRFToken",
            "http.request.header.x_api_key",
            "cvv",
            "pin",
            "date_of_birth",
            "passwd",
            "x_csrftoken",
            "sessionid",
        ] {
            assert!(m.is_sensitive(key), "{key} should be sensitive");
        }
    }

    #[test]
    fn innocent_keys_do_not_match() {
        let m = KeyMatcher::new(default_words(), ["token_type"]);
        for key in [
            "author",
            "authority",
            "shipping_method",
            "mapping",
            "spinner",
            "opinion",
            "adobe",
            "protein",
            "max_tokens",
            "gen_ai.usage.input_tokens",
            "tokenizer",
            "token_type",
            "shipping",
            "pinned_version",
            "keyboard",
            "public_key",
            "einstein",
            "sessions",
            "dobby",
        ] {
            assert!(!m.is_sensitive(key), "{key} should not be sensitive");
        }
    }

    #[test]
    fn exact_keys_match_whole_keys_only() {
        let m = KeyMatcher::new(["password"], []).with_exact(["account", "routing"]);
        assert!(m.is_sensitive("account"), "account");
        assert!(m.is_sensitive("Routing"), "Routing");
        assert!(!m.is_sensitive("account_id"), "account_id");
        assert!(!m.is_sensitive("routing_key_name"), "routing_key_name");
        assert!(m.is_sensitive("db_password"), "db_password");
    }

    #[test]
    fn header_names_and_globs() {
        let h = HeaderMatcher::new(
            [
                "authorization",
                "proxy-authorization",
                "cookie",
                "set-cookie",
                "x-api-key",
            ],
            ["*-signature", "*-signature-*", "x-*-key", "x-*-token"],
        );
        for name in [
            "Authorization",
            "COOKIE",
            "Stripe-Signature",
            "X-Hub-Signature-256",
            "x_api_key",
            "X-Shopify-Access-Key",
            "x-auth-token",
        ] {
            assert!(h.matches(name), "{name} should be a sensitive header");
        }
        for name in [
            "Host",
            "User-Agent",
            "Content-Type",
            "x-request-id",
            "signature-version",
            "baggage",
        ] {
            assert!(!h.matches(name), "{name} should not be a sensitive header");
        }
    }
}
