//! Scrubbing inside one string: value detectors, key rules on `name=value` pairs (query strings, form bodies,
//! cookie strings), and the rewrite that applies every hit at once so `_meta` ranges stay exact.

use std::borrow::Cow;

use super::{ChangeAction, Remark, Scrubber, Seg, is_already_filtered};
use crate::rules::Action;
use crate::rules::detectors::{CleanViews, HMAC_SHAPE, Hit, Kind, kept_part, masked_view};

/// How many times [`Scrubber::read_forwarded_again`] reads a string with a key rule's span as it will be forwarded.
const FORWARDED_REREADS: usize = 2;

/// How a string is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextMode {
    /// Free text: detectors, plus key rules on query parameters after a `?`; JSON objects in strings are walked.
    Free,
    /// Source code (frame context lines): detectors only, never key rules.
    Source,
    /// The whole string is a query string or form body: `a=b&c=d`.
    Query,
    /// The whole string is a cookie header: `a=b; c=d`.
    Cookie,
    /// Free text without the JSON-in-string walk (attachments, unparseable items).
    Plain,
    /// A file path: the user-path detector only (frame filenames, debug image files).
    Path,
}

/// Which rule produced a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleRef {
    Key,
    Detector(usize),
    /// The caller's own span, `extra[i]` of [`Scrubber::redaction_spans`].
    Extra(usize),
}

/// How a key's value ended where it was found. A detector hit merged into the value can cover that end (a closing
/// quote, an `&` inside a URL's user-info); the forwarded text then has the mask where the end was, and any second
/// reading of it (this relay's, Sentry's own scrubbing) runs the value on to the next end. [`merge_overlaps`] carries
/// the value on to there at once, so what is forwarded reads the same under the rules as what was masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueEnd {
    /// Not a key's value (a detector hit), or one a second reading cannot run on (a number).
    Fixed,
    /// A query-string or cookie value: ends at the separator.
    Separator(u8),
    /// An unquoted `name=value` in free text: ends at whitespace or punctuation ([`ends_embedded_value`]).
    Embedded,
    /// A quoted value: ends at the closing quote.
    Quote(u8),
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    rule: RuleRef,
    ends: ValueEnd,
}

/// A span a caller of [`Scrubber::redaction_spans`] found itself (a minidump's nested home-directory names and
/// stray-byte pairs): it joins the merge with the key and detector spans, counted under `rule`.
pub(crate) struct ExtraSpan<'r> {
    pub start: usize,
    pub end: usize,
    pub rule: &'r str,
    /// A sensitive key's unquoted value (it runs on like one, see [`ValueEnd`]), rather than a value found by its shape.
    pub key_value: bool,
}

impl<'e> Scrubber<'e> {
    /// Scrubs `text` in place; returns whether it changed.
    pub(crate) fn scrub_text(&mut self, text: &mut String, mode: TextMode, path: &[Seg<'_>]) -> bool {
        match self.scrub_str(text, mode, path) {
            Some(scrubbed) => {
                *text = scrubbed;
                true
            }
            None => false,
        }
    }

    /// Scrubs `text`; returns the new text, or `None` when no rule changed anything.
    pub(crate) fn scrub_str(&mut self, text: &str, mode: TextMode, path: &[Seg<'_>]) -> Option<String> {
        if text.is_empty() {
            return None;
        }
        if mode == TextMode::Free
            && self.nested < 2
            && let Some(result) = self.scrub_json_string(text, path)
        {
            return result;
        }
        if self.known_clean(text, mode) {
            return None;
        }
        let mut spans: Vec<Span> = Vec::new();
        match mode {
            TextMode::Query => self.param_spans(text, 0, b'&', &mut spans),
            TextMode::Cookie => self.param_spans(text, 0, b';', &mut spans),
            TextMode::Free | TextMode::Plain => self.embedded_pair_spans(text, &mut spans),
            TextMode::Source | TextMode::Path => {}
        }
        drop_overlaps(&mut spans);
        let mut hits = std::mem::take(&mut self.hits);
        if mode == TextMode::Path {
            self.engine.detectors.find_only(Kind::UserPath, text, &mut hits);
        } else {
            self.find_values(text, &mut hits);
        }
        if hits.is_empty() && spans.is_empty() {
            self.hits = hits;
            self.remember_clean(text, mode);
            return None;
        }
        let had_key_spans = !spans.is_empty();
        if !hits.is_empty() {
            let detector_spans = hits.iter().map(|h: &Hit| Span {
                start: h.start,
                end: h.end,
                rule: RuleRef::Detector(h.detector),
                ends: ValueEnd::Fixed,
            });
            spans.extend(detector_spans);
            if had_key_spans {
                // Key hits come first at equal starts (stable sort), so they name the rule; an overlapping hit
                // widens the span rather than being dropped, or what only it covered would be forwarded.
                merge_overlaps(&mut spans, text, self.forwarded_mask(RuleRef::Key));
            }
        }
        self.hits = hits;
        if had_key_spans {
            self.read_forwarded_again(text, &mut spans);
        }
        Some(self.apply_spans(text, &spans, path))
    }

    /// Reads `text` as it will be forwarded, every span replaced by its mask, through the detectors, and adds what
    /// they find outside the masks, until they find nothing (at most [`FORWARDED_REREADS`] times). The detectors read
    /// their own masks again ([`DetectorSet::find`](crate::rules::detectors::DetectorSet::find)), not a key rule's:
    /// in `https://svc:pw&token=k@v'jo:secret@db/app` the URL credentials `svc:pw&token=k` and the sensitive value
    /// `k@v` are masked as one, and `https://[redacted]'jo:secret@db/app` has user-info that any second reading
    /// masks (found by the `security_report` fuzz target). A view read clean is remembered as the detectors' own
    /// are, so a query string or log line that comes back with other values costs a lookup.
    fn read_forwarded_again(&mut self, text: &str, spans: &mut Vec<Span>) {
        let mut view = String::with_capacity(text.len());
        let mut kept = Vec::with_capacity(spans.len() + 1);
        let mut found = Vec::new();
        for _ in 0..FORWARDED_REREADS {
            let masks = spans
                .iter()
                .map(|span| (span.start, span.end, self.forwarded_mask(span.rule)));
            masked_view(text, masks, &mut view, &mut kept);
            let detectors = &self.engine.detectors;
            let clean = self.key_verdicts.views.clean(&view, &mut || {
                detectors.find(&view, &mut found);
                found.is_empty()
            });
            if clean {
                return;
            }
            let before = spans.len();
            spans.extend(found.iter().filter_map(|hit| {
                let (start, end) = kept_part(&kept, hit)?;
                Some(Span {
                    start,
                    end,
                    rule: RuleRef::Detector(hit.detector),
                    ends: ValueEnd::Fixed,
                })
            }));
            if spans.len() == before {
                return;
            }
            merge_overlaps(spans, text, self.forwarded_mask(RuleRef::Key));
        }
    }

    /// What a span is replaced with, as a second reading sees it: hashes in their shape ([`HMAC_SHAPE`], which holds
    /// no delimiter of any kind).
    fn forwarded_mask(&self, rule: RuleRef) -> &'e str {
        let engine = self.engine;
        match rule {
            RuleRef::Key | RuleRef::Extra(_) if engine.key_action == Action::Hash => HMAC_SHAPE,
            RuleRef::Key | RuleRef::Extra(_) => engine.key_replacement.as_str(),
            RuleRef::Detector(index) => engine.detectors.mask_of(index),
        }
    }

    /// For formats that must keep every length (minidumps overwrite in place, with `*`): the byte ranges
    /// [`TextMode::Plain`] would replace (value detectors, sensitive `name=value` pairs) and the caller's `extra` spans,
    /// joined where they overlap, appended to `out` and each counted as a change, without building a rewritten string.
    pub(crate) fn redaction_spans(
        &mut self,
        text: &str,
        path: &[Seg<'_>],
        extra: &[ExtraSpan<'_>],
        out: &mut Vec<(usize, usize)>,
    ) {
        let mut spans: Vec<Span> = Vec::new();
        self.embedded_pair_spans(text, &mut spans);
        let mut hits = std::mem::take(&mut self.hits);
        self.engine.detectors.find(text, &mut hits);
        spans.extend(hits.iter().map(|h| Span {
            start: h.start,
            end: h.end,
            rule: RuleRef::Detector(h.detector),
            ends: ValueEnd::Fixed,
        }));
        self.hits = hits;
        spans.extend(extra.iter().enumerate().map(|(i, e)| Span {
            start: e.start,
            end: e.end,
            rule: RuleRef::Extra(i),
            ends: if e.key_value {
                ValueEnd::Embedded
            } else {
                ValueEnd::Fixed
            },
        }));
        // The bytes are overwritten with `*`, which ends no value.
        merge_overlaps(&mut spans, text, "*");
        let engine = self.engine;
        for span in spans {
            // A span already all `*` changes nothing: neither counted nor returned, so a caller that repeats its
            // passes until one finds nothing new (the minidump scrubber) knows when to stop.
            if text.as_bytes()[span.start..span.end].iter().all(|&b| b == b'*') {
                continue;
            }
            let (rule, action) = match span.rule {
                RuleRef::Key => ("sensitive_key", ChangeAction::Replaced),
                RuleRef::Detector(index) => (engine.detectors.detectors[index].id.as_str(), ChangeAction::Masked),
                RuleRef::Extra(i) if extra[i].key_value => (extra[i].rule, ChangeAction::Replaced),
                RuleRef::Extra(i) => (extra[i].rule, ChangeAction::Masked),
            };
            self.record(path, None, rule, action, &[], None);
            out.push((span.start, span.end));
        }
    }

    /// Returns `text` with every span replaced, recording one change per span and one `_meta` entry.
    fn apply_spans(&mut self, text: &str, spans: &[Span], path: &[Seg<'_>]) -> String {
        // Remark ranges and the original length count chars. In ASCII text (nearly all, and the long strings with
        // many findings) a char is a byte, so nothing is counted; otherwise each piece is counted once, as it is
        // copied (counting the text again per span cost more than the rest of a span's work).
        let ascii = text.is_ascii();
        let chars = |piece: &str| if ascii { piece.len() } else { piece.chars().count() };
        let mut out = String::with_capacity(text.len());
        let mut remarks = Vec::with_capacity(spans.len());
        let mut rules: Vec<(&str, ChangeAction)> = Vec::with_capacity(spans.len());
        let mut cursor = 0;
        let mut out_chars = 0;
        let mut original_chars = 0;
        // The last fixed replacement and its length in chars: a string's findings are mostly one detector's.
        let mut last_replacement: Option<(&str, usize)> = None;
        for span in spans {
            let before = &text[cursor..span.start];
            out.push_str(before);
            let before_chars = chars(before);
            out_chars += before_chars;
            let matched = &text[span.start..span.end];
            original_chars += before_chars + chars(matched);
            // Rule ids and fixed replacements borrow from the engine: PII-dense strings have many spans, and two
            // allocations per span showed up in profiles.
            let engine = self.engine;
            let (rule_id, replacement, action): (&str, Cow<'_, str>, _) = match span.rule {
                // `scrub_str` has no extra spans (only `redaction_spans` does); the key's mask would be the safe one.
                RuleRef::Key | RuleRef::Extra(_) => {
                    if engine.key_action == Action::Hash {
                        ("sensitive_key", Cow::Owned(self.hash(matched)), ChangeAction::Hashed)
                    } else {
                        (
                            "sensitive_key",
                            Cow::Borrowed(engine.key_replacement.as_str()),
                            ChangeAction::Replaced,
                        )
                    }
                }
                RuleRef::Detector(index) => {
                    let detector = &engine.detectors.detectors[index];
                    if detector.action == Action::Hash {
                        (
                            detector.id.as_str(),
                            Cow::Owned(self.hash(matched)),
                            ChangeAction::Hashed,
                        )
                    } else {
                        (
                            detector.id.as_str(),
                            Cow::Borrowed(detector.replacement.as_str()),
                            ChangeAction::Masked,
                        )
                    }
                }
            };
            let replacement_chars = match &replacement {
                &Cow::Borrowed(fixed) => match last_replacement {
                    Some((last, count)) if super::same_text(last, fixed) => count,
                    _ => {
                        let count = fixed.chars().count();
                        last_replacement = Some((fixed, count));
                        count
                    }
                },
                Cow::Owned(hashed) => hashed.chars().count(),
            };
            out.push_str(&replacement);
            let ty = if action == ChangeAction::Hashed { "p" } else { "s" };
            remarks.push(Remark {
                rule: rule_id,
                ty,
                range: Some((out_chars, out_chars + replacement_chars)),
            });
            out_chars += replacement_chars;
            rules.push((rule_id, action));
            cursor = span.end;
        }
        let rest = &text[cursor..];
        out.push_str(rest);
        let rest_chars = chars(rest);
        let (original_chars, new_chars) = (original_chars + rest_chars, out_chars + rest_chars);
        let len = (new_chars != original_chars).then_some(original_chars);
        // All remarks go into one `_meta` entry, attached with the last change.
        self.record_all(path, None, &rules, &remarks, len);
        out
    }

    /// Finds key rules applied to keys written inside free text: `name=value` (query strings in URLs, log lines,
    /// `repr` output like `User(password='x')`) and `'name': 'value'` / `"name": value` (Python dict reprs, JSON
    /// fragments). Only the value is replaced, and only when the name is a sensitive key.
    fn embedded_pair_spans(&mut self, text: &str, spans: &mut Vec<Span>) {
        let bytes = text.as_bytes();
        let is_key_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        let is_quote = |b: u8| b == b'\'' || b == b'"';
        for eq in memchr::memchr_iter(b'=', bytes) {
            if eq == 0 || eq + 1 >= bytes.len() {
                continue;
            }
            let (prev, next) = (bytes[eq - 1], bytes[eq + 1]);
            // Comparisons and arrows are code, not pairs; `a = b` with spaces is code too.
            if matches!(prev, b'=' | b'!' | b'<' | b'>' | b' ') || matches!(next, b'=' | b'>' | b' ') {
                continue;
            }
            let mut key_start = eq;
            while key_start > 0 && is_key_char(bytes[key_start - 1]) {
                key_start -= 1;
            }
            if key_start == eq {
                continue;
            }
            let (value_start, value_end, ends) = if is_quote(next) {
                let start = eq + 2;
                match bytes[start.min(bytes.len())..].iter().position(|b| *b == next) {
                    Some(len) => (start, start + len, ValueEnd::Quote(next)),
                    None => continue,
                }
            } else if let Some(close) = bracket_close(bytes, eq + 1) {
                // `token=[Filtered]` (already scrubbed by the SDK) and `token={token}` (a template placeholder)
                // are whole values; cutting them at the first `]`/`}` would leave a stray bracket.
                (eq + 1, close + 1, ValueEnd::Embedded)
            } else {
                let start = eq + 1;
                let len = bytes[start..]
                    .iter()
                    .position(|b| ends_embedded_value(*b))
                    .unwrap_or(bytes.len() - start);
                (start, start + len, ValueEnd::Embedded)
            };
            self.push_key_span(text, key_start..eq, value_start..value_end, ends, spans);
        }
        for colon in memchr::memchr_iter(b':', bytes) {
            if colon < 3 || !is_quote(bytes[colon - 1]) {
                continue;
            }
            let quote = bytes[colon - 1];
            let key_end = colon - 1;
            let mut key_start = key_end;
            while key_start > 0 && is_key_char(bytes[key_start - 1]) {
                key_start -= 1;
            }
            if key_start == key_end || key_start == 0 || bytes[key_start - 1] != quote {
                continue;
            }
            let mut value_start = colon + 1;
            while value_start < bytes.len() && bytes[value_start] == b' ' {
                value_start += 1;
            }
            let Some(&first) = bytes.get(value_start) else { continue };
            let (value_end, ends) = if is_quote(first) {
                value_start += 1;
                match bytes[value_start..].iter().position(|b| *b == first) {
                    Some(len) => (value_start + len, ValueEnd::Quote(first)),
                    None => continue,
                }
            } else if first.is_ascii_digit() || first == b'-' {
                let len = bytes[value_start..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.'))
                    .count();
                (value_start + len, ValueEnd::Fixed)
            } else {
                continue;
            };
            self.push_key_span(text, key_start..key_end, value_start..value_end, ends, spans);
        }
    }

    /// Adds the value's span of an embedded `key=value` pair (byte ranges into `text`) when the key is sensitive and
    /// the value is neither filtered already nor a placeholder.
    fn push_key_span(
        &mut self,
        text: &str,
        key: std::ops::Range<usize>,
        value: std::ops::Range<usize>,
        ends: ValueEnd,
        spans: &mut Vec<Span>,
    ) {
        if value.end <= value.start || value.end > text.len() {
            return;
        }
        // Byte positions come from ASCII delimiters, so they are always char boundaries.
        let (start, end) = (value.start, value.end);
        let value = &text[value];
        if is_already_filtered(value, self.engine) || is_placeholder(value) || !self.is_sensitive_key(&text[key]) {
            return;
        }
        spans.push(Span {
            start,
            end,
            rule: RuleRef::Key,
            ends,
        });
    }

    /// Finds the values of `name=value` pairs whose name is a sensitive key, from `start` to the end of the string.
    /// The whole string is pairs (a query string, a form body, a cookie header), so a pair ends only at the
    /// separator: a space or a quote in one value (`q=it's&stripe_customer=...`) neither cuts a sensitive value short
    /// nor stops the pairs after it from being read.
    fn param_spans(&mut self, text: &str, start: usize, separator: u8, spans: &mut Vec<Span>) {
        let bytes = text.as_bytes();
        let mut pos = start;
        while pos < bytes.len() {
            let end = memchr::memchr(separator, &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
            let pair = &text[pos..end];
            if let Some(eq) = pair.find('=') {
                let name = pair[..eq].trim();
                let value_start = pos + eq + 1;
                let value = &text[value_start..end];
                if !name.is_empty() && !value.is_empty() && !is_already_filtered(value, self.engine) {
                    let decoded = percent_decode(name);
                    if self.is_sensitive_key(&decoded) {
                        spans.push(Span {
                            start: value_start,
                            end,
                            rule: RuleRef::Key,
                            ends: ValueEnd::Separator(separator),
                        });
                    }
                }
            }
            pos = end + 1;
        }
    }

    /// Walks a string holding a JSON object or array (tool arguments, message lists) and re-serializes it if a rule
    /// changed something inside. `None` when the string is not JSON (it is then scrubbed as text); `Some(None)` when
    /// it is JSON and nothing changed.
    fn scrub_json_string(&mut self, text: &str, path: &[Seg<'_>]) -> Option<Option<String>> {
        let trimmed = text.trim();
        let looks_like_json = (trimmed.starts_with('{') && trimmed.ends_with('}'))
            || (trimmed.starts_with('[') && trimmed.ends_with(']') && trimmed.len() > 2);
        if !looks_like_json {
            return None;
        }
        let changed_before = self.changed;
        // Only the top-level `_meta` entry compares counts; cloning the tally for every JSON string cost a map of
        // owned keys per message in gen_ai payloads.
        let redactions_before = (self.collect_meta && self.nested == 0).then(|| {
            self.tally.settle();
            self.tally.redactions.clone()
        });
        self.changed = false;
        self.nested += 1;
        let scrubbed = match super::stream::scrub_nested_json(self, trimmed, path) {
            Ok(scrubbed) => scrubbed.map(|bytes| String::from_utf8(bytes).expect("the stream writes UTF-8")),
            Err(super::stream::Bail::Invalid) => {
                self.nested -= 1;
                self.changed = changed_before;
                return None;
            }
            // Shapes the streaming walk leaves to the tree (keys with escapes or emails, very deep nesting).
            // (No drop rule applies in a string: `Dropped` and `SpansDropped` do not happen here.)
            Err(super::stream::Bail::NeedsTree | super::stream::Bail::Dropped | super::stream::Bail::SpansDropped) => {
                self.scrub_json_tree(trimmed, path)
            }
        };
        self.nested -= 1;
        self.changed = changed_before || self.changed;
        let Some(scrubbed) = scrubbed else {
            return Some(None);
        };
        if let Some(redactions_before) = redactions_before {
            self.tally.settle();
            let mut remarks = Vec::new();
            for (rule, count) in &self.tally.redactions {
                if redactions_before.get(rule) != Some(count) {
                    remarks.push(Remark {
                        rule,
                        ty: "s",
                        range: None,
                    });
                }
            }
            // Its own entry, never joined to the last one (the fields inside were recorded just before).
            self.meta.add(path, None, &remarks, Some(text.chars().count()), false);
        }
        Some(Some(scrubbed))
    }

    /// The tree walk of a JSON string, for what the streaming walk leaves to it; `None` when nothing changed.
    fn scrub_json_tree(&mut self, json: &str, path: &[Seg<'_>]) -> Option<String> {
        // The streaming walk validated the text already; a failure here only means "not JSON after all".
        let mut value = serde_json::from_str::<serde_json::Value>(json).ok()?;
        // Explain paths continue the outer one, so `tool.arguments.ssn` reads as where it was.
        let mut inner_path: Vec<Seg<'_>> = path.to_vec();
        self.walk_value(&mut value, super::Scope::Data, &mut inner_path);
        // Serializing a `Value` we just parsed cannot fail.
        self.changed
            .then(|| serde_json::to_string(&value).expect("JSON value serializes"))
    }
}

/// The position of the `]` or `}` closing a bracket that opens at `start`, within a short, simple token.
fn bracket_close(bytes: &[u8], start: usize) -> Option<usize> {
    let close = match bytes.get(start)? {
        b'[' => b']',
        b'{' => b'}',
        _ => return None,
    };
    let rest = &bytes[start + 1..bytes.len().min(start + 64)];
    let len = rest.iter().position(|b| *b == close)?;
    let inner = &rest[..len];
    inner
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' ' | b':'))
        .then_some(start + 1 + len)
}

/// Format placeholders in log templates (`ssn=%s`, `token={token}`) are not values.
fn is_placeholder(value: &str) -> bool {
    let bytes = value.as_bytes();
    (bytes.first() == Some(&b'%') && bytes.len() <= 3)
        || (value.starts_with('{') && value.ends_with('}'))
        || (value.starts_with("%(") && value.ends_with(")s"))
}

/// Decodes `%XX` escapes and `+` in a query parameter name (invalid escapes stay as they are).
fn percent_decode(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains('%') && !name.contains('+') {
        return std::borrow::Cow::Borrowed(name);
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Sorts spans by start and joins overlapping ones into the first (whose rule names the change). Detector hits
/// never overlap each other (the detectors drop the later one), so a key span and a hit are what meet here: a
/// `credential_in_text` hit can run from a sensitive `token=` value far past its end, over an address it took from
/// the email detector, and dropping either one would forward the part only it covered.
///
/// When a joined group starts with a key's value and reaches past the byte that ended it, the value runs on to its
/// next end (see [`ValueEnd`]; `mask` is what the value is replaced with, which may itself end it), joining what
/// it reaches. Found by the `security_report` and `minidump` fuzz targets: in `?session=abc.x://us&er:pw@h&page=2` a
/// URL-credentials hit (`us&er:pw`) covers the `&` that ended the value, and `session=[FILTERED]@h&page=2` would have
/// a value a second pass masks; the value runs on to the next `&` now.
fn merge_overlaps(spans: &mut Vec<Span>, text: &str, mask: &str) {
    spans.sort_by_key(|s| s.start);
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    // Where the value leading the last group ends (the group's own end when it is not led by a key's value).
    let mut value_end = 0;
    for span in spans.drain(..) {
        if let Some(last) = merged.last_mut() {
            if span.start >= last.end && last.end > value_end {
                run_on(last, &mut value_end, text, mask);
            }
            if span.start < last.end {
                last.end = last.end.max(span.end);
                continue;
            }
        }
        value_end = span.end;
        merged.push(span);
    }
    if let Some(last) = merged.last_mut()
        && last.end > value_end
    {
        run_on(last, &mut value_end, text, mask);
    }
    *spans = merged;
}

/// Extends `group` (led by a key's value whose end it covers) to where a second reading of the forwarded text would
/// end that value, if it would read on past the mask.
fn run_on(group: &mut Span, value_end: &mut usize, text: &str, mask: &str) {
    let bytes = text.as_bytes();
    let from = group.end;
    let next = |stop: &dyn Fn(u8) -> bool| bytes[from..].iter().position(|b| stop(*b)).map(|i| from + i);
    let end = match group.ends {
        ValueEnd::Fixed => None,
        ValueEnd::Separator(separator) => {
            (!mask.as_bytes().contains(&separator)).then(|| next(&|b| b == separator).unwrap_or(bytes.len()))
        }
        ValueEnd::Embedded => {
            // `[FILTERED]` is read back as a whole bracketed value, which is already filtered.
            let ended = bracket_close(mask.as_bytes(), 0).is_some() || mask.bytes().any(ends_embedded_value);
            (!ended).then(|| next(&ends_embedded_value).unwrap_or(bytes.len()))
        }
        // No closing quote further on: a second reading finds no pair at all.
        ValueEnd::Quote(quote) => (!mask.as_bytes().contains(&quote))
            .then(|| next(&|b| b == quote))
            .flatten(),
    };
    if let Some(end) = end {
        group.end = end;
        *value_end = end;
    }
}

/// The bytes that end an unquoted value in free text (`password=...`).
fn ends_embedded_value(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'&' | b',' | b';' | b')' | b']' | b'}' | b'"' | b'\'' | b'<' | b'>' | b'#' | b'|'
        )
}

/// Sorts spans by start (stably, so earlier entries win ties) and drops every span that overlaps one kept before it.
fn drop_overlaps(spans: &mut Vec<Span>) {
    if spans.len() < 2 {
        return;
    }
    spans.sort_by_key(|s| s.start);
    let mut last_end = 0;
    spans.retain(|s| {
        let keep = s.start >= last_end;
        if keep {
            last_end = s.end;
        }
        keep
    });
}
