//! The walk itself: scopes, the per-scope field table, whole-value redaction, typed attributes, removals.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::text::TextMode;
use super::{ChangeAction, Remark, Scrubber, Seg, is_already_filtered};
use crate::rules::Action;
use crate::truncate::truncate;

/// Where in a payload the walk is; decides which fields are skipped, which rules apply, and how strings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Root of an event, transaction, feedback, replay event, check-in, or any unknown JSON item.
    EventRoot,
    Request,
    /// HTTP headers: a dict, or a list of `[name, value]` pairs.
    Headers,
    /// A query string: a string, a dict, or a list of pairs.
    Query,
    /// Cookies: a string, a dict, or a list of pairs.
    Cookies,
    /// `request.data`: a form string, JSON, or anything.
    FormData,
    Env,
    User,
    Contexts,
    TraceContext,
    /// Generic data: key rules on keys, detectors on strings, truncation by key.
    Data,
    Stacktrace,
    Frames,
    Frame,
    /// Source code lines: detectors only.
    Source,
    /// A file path (a frame's `abs_path`, `filename`, `package`; a debug image's `code_file`, `debug_file`): only
    /// the user-path detector, so the user name goes and the path still symbolicates.
    Path,
    /// `debug_meta`: only its `images` are looked at.
    DebugMeta,
    DebugImages,
    DebugImage,
    Breadcrumbs,
    BreadcrumbList,
    Breadcrumb,
    Spans,
    Span,
    Logentry,
    Tags,
    /// Typed attributes `{name: {"type", "value"}}` of v2 spans, logs and metrics.
    Attributes,
    SpanContainer,
    LogContainer,
    MetricContainer,
    SpanItems,
    LogItems,
    MetricItems,
    SpanV2,
    LogItem,
    MetricItem,
    Session,
    SessionAttrs,
    EnvelopeHeader,
    /// The dynamic sampling context (`trace`) in the envelope header.
    Dsc,
}

/// What to do with one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Skip,
    Redact(KeyRule),
    Walk(Scope),
}

/// The rule that redacts a whole field by its key. A byte rather than its name, so [`KeyFacts`] fit the slot of
/// their memo beside the key ([`Scrubber::key_facts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyRule {
    SensitiveHeader,
    SensitiveKey,
}

impl KeyRule {
    /// The rule's name in `_meta` remarks and the tally.
    pub(super) fn name(self) -> &'static str {
        match self {
            KeyRule::SensitiveHeader => "sensitive_header",
            KeyRule::SensitiveKey => "sensitive_key",
        }
    }
}

/// What the walk needs to know of an object key in a scope. A function of the rules, the scope and the key alone,
/// so [`Scrubber::key_facts`] keeps it for the keys that come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyFacts {
    pub(super) field: Field,
    /// Whether `send_default_pii: false` removes the field ([`removed_without_pii`]).
    pub(super) removed_without_pii: bool,
    /// Whether the key holds an `@` (it may be an email, which key rules rename).
    pub(super) has_at: bool,
}

/// Keys whose values are ids, never PII, wherever they appear.
pub(super) fn is_id_key(key: &str) -> bool {
    // Versions (`process.runtime.engine.version: 11.3.244.8-node.38`) look like IPs and dates but never hold PII.
    key == "version"
        || key.ends_with(".version")
        || key.ends_with("_version")
        || matches!(
            key,
            "trace_id"
                | "span_id"
                | "parent_span_id"
                | "event_id"
                | "segment_id"
                | "sid"
                | "check_in_id"
                | "profile_id"
                | "profiler_id"
                | "replay_id"
                | "sentry.segment.id"
                | "sentry.trace.parent_span_id"
                | "thread.id"
                | "thread_id"
                | "process.pid"
        )
}

impl Scope {
    pub(super) fn applies_key_rules(self) -> bool {
        !matches!(
            self,
            Scope::Contexts
                | Scope::Source
                | Scope::Frame
                | Scope::Frames
                | Scope::Stacktrace
                | Scope::Attributes
                | Scope::Session
                | Scope::SessionAttrs
                | Scope::Dsc
                | Scope::EnvelopeHeader
                | Scope::SpanContainer
                | Scope::LogContainer
                | Scope::MetricContainer
                | Scope::Breadcrumbs
                | Scope::Path
                | Scope::DebugMeta
                | Scope::DebugImages
                | Scope::DebugImage
        )
    }

    /// The scope of the elements of an array found in this scope.
    pub(super) fn element(self) -> Scope {
        match self {
            Scope::Spans => Scope::Span,
            Scope::Breadcrumbs | Scope::BreadcrumbList => Scope::Breadcrumb,
            Scope::Frames => Scope::Frame,
            Scope::DebugImages => Scope::DebugImage,
            Scope::Path => Scope::Path,
            Scope::SpanItems => Scope::SpanV2,
            Scope::LogItems => Scope::LogItem,
            Scope::MetricItems => Scope::MetricItem,
            Scope::Source => Scope::Source,
            Scope::Session => Scope::Session,
            Scope::Headers | Scope::Query | Scope::Cookies | Scope::Tags | Scope::FormData => Scope::Data,
            _ => Scope::Data,
        }
    }

    pub(super) fn takes_pairs(self) -> bool {
        matches!(self, Scope::Headers | Scope::Query | Scope::Cookies | Scope::Tags)
    }

    /// Fields of this scope that are never touched.
    pub(super) fn skips(self, key: &str) -> bool {
        match self {
            Scope::EventRoot => matches!(
                key,
                "event_id"
                    | "timestamp"
                    | "start_timestamp"
                    | "received"
                    | "release"
                    | "dist"
                    | "environment"
                    | "platform"
                    | "level"
                    | "type"
                    | "sdk"
                    | "modules"
                    | "_meta"
                    | "version"
                    | "transaction_info"
                    | "measurements"
                    | "breakdowns"
                    | "_metrics"
                    | "_metrics_summary"
                    | "errors"
                    | "key_id"
                    | "project"
                    | "logger"
                    | "server_name"
                    | "fingerprint"
                    | "grouping_config"
                    | "ingest_path"
                    | "error_ids"
                    | "trace_ids"
                    | "replay_id"
                    | "segment_id"
                    | "replay_start_timestamp"
                    | "replay_type"
                    | "check_in_id"
                    | "monitor_slug"
                    | "status"
                    | "duration"
            ),
            Scope::Request => matches!(
                key,
                "method" | "inferred_content_type" | "api_target" | "protocol" | "body_size"
            ),
            Scope::User => matches!(key, "ip_address" | "geo"),
            Scope::TraceContext => matches!(
                key,
                "op" | "status" | "origin" | "type" | "sampled" | "exclusive_time" | "hash" | "client_sample_rate"
            ),
            Scope::Span => matches!(
                key,
                "op" | "status"
                    | "origin"
                    | "timestamp"
                    | "start_timestamp"
                    | "exclusive_time"
                    | "same_process_as_parent"
                    | "hash"
                    | "is_segment"
                    | "sampled"
                    | "measurements"
                    | "_metrics_summary"
            ),
            Scope::Breadcrumb => matches!(key, "timestamp" | "type" | "level" | "category"),
            Scope::Stacktrace => key != "frames",
            Scope::Frame => !matches!(
                key,
                "vars" | "context_line" | "pre_context" | "post_context" | "data" | "abs_path" | "filename" | "package"
            ),
            Scope::DebugMeta => key != "images",
            Scope::DebugImage => !matches!(key, "code_file" | "debug_file"),
            Scope::SpanV2 => matches!(
                key,
                "start_timestamp" | "end_timestamp" | "is_segment" | "status" | "kind" | "links" | "_meta"
            ),
            Scope::LogItem => matches!(
                key,
                "timestamp" | "level" | "severity_number" | "severity_text" | "_meta"
            ),
            Scope::MetricItem => matches!(key, "timestamp" | "name" | "type" | "value" | "unit" | "_meta"),
            Scope::SpanContainer | Scope::LogContainer | Scope::MetricContainer => key == "version",
            Scope::Session => !matches!(key, "did" | "attrs" | "aggregates"),
            Scope::SessionAttrs => true,
            Scope::EnvelopeHeader => matches!(key, "event_id" | "sent_at" | "dsn" | "sdk"),
            Scope::Dsc => matches!(
                key,
                "public_key" | "release" | "environment" | "sample_rate" | "sample_rand" | "sampled" | "org_id"
            ),
            _ => false,
        }
    }

    /// The scope of a field's value (after skips and key rules).
    pub(super) fn child(self, key: &str) -> Scope {
        match self {
            Scope::EventRoot => match key {
                "request" => Scope::Request,
                "user" => Scope::User,
                "contexts" => Scope::Contexts,
                "spans" => Scope::Spans,
                "breadcrumbs" => Scope::Breadcrumbs,
                "logentry" => Scope::Logentry,
                "tags" => Scope::Tags,
                "stacktrace" => Scope::Stacktrace,
                "debug_meta" => Scope::DebugMeta,
                _ => Scope::Data,
            },
            Scope::Request => match key {
                "query_string" => Scope::Query,
                "headers" => Scope::Headers,
                "cookies" => Scope::Cookies,
                "env" => Scope::Env,
                "data" => Scope::FormData,
                _ => Scope::Data,
            },
            Scope::Contexts => match key {
                "trace" => Scope::TraceContext,
                _ => Scope::Data,
            },
            Scope::Breadcrumbs => match key {
                "values" => Scope::BreadcrumbList,
                _ => Scope::Data,
            },
            Scope::Stacktrace => Scope::Frames,
            Scope::Frame => match key {
                "context_line" | "pre_context" | "post_context" => Scope::Source,
                "abs_path" | "filename" | "package" => Scope::Path,
                _ => Scope::Data,
            },
            Scope::DebugMeta => Scope::DebugImages,
            Scope::DebugImage | Scope::Path => Scope::Path,
            Scope::Span => match key {
                "tags" => Scope::Tags,
                _ => Scope::Data,
            },
            Scope::SpanV2 | Scope::LogItem | Scope::MetricItem => match key {
                "attributes" => Scope::Attributes,
                _ => Scope::Data,
            },
            Scope::SpanContainer => {
                if key == "items" {
                    Scope::SpanItems
                } else {
                    Scope::Data
                }
            }
            Scope::LogContainer => {
                if key == "items" {
                    Scope::LogItems
                } else {
                    Scope::Data
                }
            }
            Scope::MetricContainer => {
                if key == "items" {
                    Scope::MetricItems
                } else {
                    Scope::Data
                }
            }
            Scope::Session => match key {
                "attrs" => Scope::SessionAttrs,
                "aggregates" => Scope::Session,
                _ => Scope::Data,
            },
            Scope::EnvelopeHeader => match key {
                "trace" => Scope::Dsc,
                _ => Scope::Data,
            },
            // Generic data: recognize the well-known containers wherever they appear.
            _ => match key {
                "stacktrace" => Scope::Stacktrace,
                "headers" => Scope::Headers,
                "query_string" | "url.query" | "http.query" => Scope::Query,
                "cookies" => Scope::Cookies,
                _ => Scope::Data,
            },
        }
    }

    pub(super) fn text_mode(self) -> TextMode {
        match self {
            Scope::Source => TextMode::Source,
            Scope::Path => TextMode::Path,
            Scope::Query => TextMode::Query,
            Scope::Cookies => TextMode::Cookie,
            _ => TextMode::Free,
        }
    }
}

/// `http.request.header.<name>` / `http.response.header.<name>` attribute and data keys.
pub(super) fn header_attribute_name(key: &str) -> Option<&str> {
    key.strip_prefix("http.request.header.")
        .or_else(|| key.strip_prefix("http.response.header."))
}

impl<'e> Scrubber<'e> {
    /// Walks any value in a scope.
    pub(crate) fn walk_value<'t>(&mut self, value: &'t mut Value, scope: Scope, path: &mut Vec<Seg<'t>>) {
        match value {
            Value::String(s) => self.walk_string(s, scope, path),
            Value::Object(map) => self.walk_object(map, scope, path),
            Value::Array(items) => {
                if scope == Scope::Headers && !self.engine.send_default_pii {
                    self.remove_ip_header_pairs(items, path);
                }
                let element = scope.element();
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    if scope.takes_pairs() && is_pair(item) {
                        self.walk_pair(item, scope, path);
                    } else {
                        self.walk_value(item, element, path);
                    }
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn walk_string(&mut self, s: &mut String, scope: Scope, path: &[Seg<'_>]) {
        if let Some(scrubbed) = self.scrub_string_in(s, scope, path) {
            *s = scrubbed;
        }
    }

    /// Scrubs a string value found in a scope; `None` when nothing changed.
    pub(super) fn scrub_string_in(&mut self, s: &str, scope: Scope, path: &[Seg<'_>]) -> Option<String> {
        let mode = if scope == Scope::FormData {
            form_mode(s)
        } else {
            scope.text_mode()
        };
        self.scrub_str(s, mode, path)
    }

    fn walk_object<'t>(&mut self, map: &'t mut Map<String, Value>, scope: Scope, path: &mut Vec<Seg<'t>>) {
        if scope == Scope::Attributes {
            self.prepare_attributes(map, path);
            return self.walk_attributes(map, path);
        }
        if !self.engine.send_default_pii {
            self.remove_pii_fields(map, scope, path);
        }
        let key_rules = scope.applies_key_rules();
        if key_rules && map.keys().any(|k| k.contains('@')) {
            self.scrub_keys(map, path);
        }
        for (key, value) in map.iter_mut() {
            let field = self.classify(scope, key);
            path.push(Seg::Key(key));
            match field {
                Field::Skip => {}
                Field::Redact(rule) => self.redact(value, rule.name(), path),
                Field::Walk(child) => match value {
                    Value::String(s) => {
                        self.walk_string(s, child, path);
                        self.truncate_field(key, s, path);
                    }
                    other => self.walk_value(other, child, path),
                },
            }
            path.pop();
        }
    }

    /// What to do with the field `key` of an object in `scope` (whose key rules apply by
    /// [`Scope::applies_key_rules`]).
    pub(super) fn classify(&mut self, scope: Scope, key: &str) -> Field {
        self.key_facts(scope, key).field
    }

    /// Works out [`KeyFacts`] (see [`Scrubber::key_facts`], which keeps them).
    pub(super) fn work_out_key_facts(&mut self, scope: Scope, key: &str) -> KeyFacts {
        KeyFacts {
            field: self.work_out_field(scope, key, scope.applies_key_rules()),
            removed_without_pii: removed_without_pii(self.engine, scope, key),
            has_at: key.contains('@'),
        }
    }

    fn work_out_field(&mut self, scope: Scope, key: &str, key_rules: bool) -> Field {
        if scope.skips(key) {
            return Field::Skip;
        }
        // With `send_default_pii: true` IP fields are wanted as they are; the IPv4 detector must not undo that.
        if self.engine.send_default_pii && is_ip_field(self.engine, scope, key) {
            return Field::Skip;
        }
        if key_rules {
            if is_id_key(key) {
                return Field::Skip;
            }
            if scope == Scope::Headers && self.engine.headers.matches(key) {
                return Field::Redact(KeyRule::SensitiveHeader);
            }
            if self.is_sensitive_key(key) {
                return Field::Redact(KeyRule::SensitiveKey);
            }
            if let Some(name) = header_attribute_name(key)
                && self.engine.headers.matches(name)
            {
                return Field::Redact(KeyRule::SensitiveHeader);
            }
        }
        Field::Walk(scope.child(key))
    }

    /// Object keys can be data too (`{"by_user": {"jane@x.org": 3}}`): keys holding an email get the detectors.
    /// Rebuilds the map in order; two keys that mask to the same text keep both values (`***@x.org`, `***@x.org#2`).
    fn scrub_keys(&mut self, map: &mut Map<String, Value>, path: &[Seg<'_>]) {
        let old = std::mem::take(map);
        for (key, value) in old {
            let mut new_key = key.clone();
            if key.contains('@') {
                self.scrub_text(&mut new_key, TextMode::Source, path);
            }
            if new_key != key && map.contains_key(&new_key) {
                let mut n = 2;
                while map.contains_key(&format!("{new_key}#{n}")) {
                    n += 1;
                }
                new_key = format!("{new_key}#{n}");
            }
            map.insert(new_key, value);
        }
    }

    /// A `[name, value]` pair in headers, query strings, cookies or tags.
    fn walk_pair<'t>(&mut self, pair: &'t mut Value, scope: Scope, path: &mut Vec<Seg<'t>>) {
        let Value::Array(items) = pair else { return };
        let [name, value] = items.as_mut_slice() else { return };
        let Value::String(name) = name else { return };
        let sensitive = (scope == Scope::Headers && self.engine.headers.matches(name))
            .then_some("sensitive_header")
            .or_else(|| self.is_sensitive_key(name).then_some("sensitive_key"));
        path.push(Seg::Index(1));
        match sensitive {
            Some(rule) => self.redact(value, rule, path),
            None => self.walk_value(value, Scope::Data, path),
        }
        path.pop();
    }

    /// Replaces a whole value (string, number, object, ...) under a sensitive key.
    pub(crate) fn redact(&mut self, value: &mut Value, rule: &'static str, path: &[Seg<'_>]) {
        let text = match &*value {
            Value::Null => return,
            Value::String(s) => {
                if let Some(replacement) = self.redact_str(s, rule, path) {
                    *value = Value::String(replacement.into_owned());
                }
                return;
            }
            Value::Array(a) if a.is_empty() => return,
            Value::Object(o) if o.is_empty() => return,
            // Only a hash reads the value; a replacement would throw the JSON text away (an object under `auth`
            // was about 1 % of the python event's scrub).
            other if self.engine.key_action == Action::Hash => other.to_string(),
            _ => String::new(),
        };
        *value = Value::String(self.replace_whole(&text, rule, path, None).into_owned());
    }

    /// Replaces a whole string under a sensitive key; `None` when it already reads as filtered.
    pub(crate) fn redact_str(&mut self, text: &str, rule: &'static str, path: &[Seg<'_>]) -> Option<Cow<'e, str>> {
        if is_already_filtered(text, self.engine) {
            return None;
        }
        Some(self.replace_whole(text, rule, path, Some(text.chars().count())))
    }

    /// The replacement (or hash) of a whole value, recorded with the original length when it was a string.
    fn replace_whole(
        &mut self,
        text: &str,
        rule: &'static str,
        path: &[Seg<'_>],
        original_len: Option<usize>,
    ) -> Cow<'e, str> {
        let (replacement, action, ty) = self.key_replacement(text);
        let remark = Remark {
            rule,
            ty,
            range: Some((0, replacement.chars().count())),
        };
        self.record(path, None, rule, action, &[remark], original_len);
        replacement
    }

    fn truncate_field(&mut self, key: &str, value: &mut String, path: &[Seg<'_>]) {
        if let Some(cut) = self.truncate_str(key, value, path) {
            *value = cut;
        }
    }

    /// Cuts a string under `key` to the key's length limit; `None` when it has none or the string fits.
    pub(crate) fn truncate_str(&mut self, key: &str, value: &str, path: &[Seg<'_>]) -> Option<String> {
        if self.engine.truncation.fits_all(value.len()) {
            return None;
        }
        let limit = self.engine.truncation.limit_for(key)?;
        let cut = truncate(value, limit.max_chars, self.engine.truncation.marker())?;
        let marker_chars = self.engine.truncation.marker().chars().count();
        let label = limit.label.to_string();
        let remark = Remark {
            rule: "!limit",
            ty: "s",
            range: Some((cut.kept_chars, cut.kept_chars + marker_chars)),
        };
        self.record(
            path,
            None,
            &label,
            ChangeAction::Truncated,
            &[remark],
            Some(cut.original_chars),
        );
        Some(cut.value)
    }

    /// Deletes what an SDK with `send_default_pii` off would not have sent.
    fn remove_pii_fields(&mut self, map: &mut Map<String, Value>, scope: Scope, path: &[Seg<'_>]) {
        let engine = self.engine;
        let doomed = |key: &str| -> bool { removed_without_pii(engine, scope, key) };
        if !map.keys().any(|k| doomed(k)) {
            return;
        }
        let mut removed = Vec::new();
        map.retain(|key, value| {
            if doomed(key) && !value.is_null() {
                removed.push(key.clone());
                false
            } else {
                true
            }
        });
        for key in removed {
            self.record_pii_removal(path, &key);
        }
    }

    fn remove_ip_header_pairs(&mut self, items: &mut Vec<Value>, path: &[Seg<'_>]) {
        let engine = self.engine;
        let is_ip_pair = |item: &Value| -> bool {
            item.as_array()
                .and_then(|pair| pair.first())
                .and_then(Value::as_str)
                .is_some_and(|name| engine.is_ip_header(name))
        };
        let before = items.len();
        items.retain(|item| !is_ip_pair(item));
        for _ in items.len()..before {
            self.record(path, None, "send_default_pii", ChangeAction::Removed, &[], None);
        }
    }

    /// What an attribute's name alone decides (the value may still turn a redaction into a removal, see
    /// [`is_scalar_typed`]).
    pub(crate) fn attribute_rule(&mut self, key: &str) -> AttributeRule {
        if is_id_key(key) || matches!(key, "sentry.release" | "sentry.environment" | "sentry.sdk.version") {
            return AttributeRule::Untouched;
        }
        let header = header_attribute_name(key);
        if self.engine.is_ip_key(key) || header.is_some_and(|h| self.engine.is_ip_header(h)) {
            return if self.engine.send_default_pii {
                AttributeRule::Untouched
            } else {
                AttributeRule::Remove("send_default_pii")
            };
        }
        if header.is_some_and(|h| self.engine.headers.matches(h)) {
            AttributeRule::Redact("sensitive_header")
        } else if self.is_sensitive_key(key) {
            AttributeRule::Redact("sensitive_key")
        } else {
            AttributeRule::Walk
        }
    }

    /// Removes typed attributes that must go: client IPs (with `send_default_pii` off) and numbers or booleans under
    /// sensitive keys (a string in an `integer` attribute would break its type).
    fn prepare_attributes(&mut self, map: &mut Map<String, Value>, path: &[Seg<'_>]) {
        let mut doomed: Vec<(String, &'static str)> = Vec::new();
        for (key, attribute) in map.iter() {
            match self.attribute_rule(key) {
                AttributeRule::Remove(rule) => doomed.push((key.clone(), rule)),
                AttributeRule::Redact(rule) if is_scalar_typed(attribute) => doomed.push((key.clone(), rule)),
                _ => {}
            }
        }
        if doomed.is_empty() {
            return;
        }
        map.retain(|key, _| !doomed.iter().any(|(k, _)| k == key));
        for (key, rule) in doomed {
            self.record_attribute_removal(path, &key, rule);
        }
    }

    fn walk_attributes<'t>(&mut self, map: &'t mut Map<String, Value>, path: &mut Vec<Seg<'t>>) {
        for (key, attribute) in map.iter_mut() {
            let rule = match self.attribute_rule(key) {
                AttributeRule::Untouched | AttributeRule::Remove(_) => continue,
                AttributeRule::Redact(rule) => Some(rule),
                AttributeRule::Walk => None,
            };
            path.push(Seg::Key(key));
            if let Some(rule) = rule {
                self.redact_attribute(attribute, rule, path);
                path.pop();
                continue;
            }
            let typed = attribute.as_object().is_some_and(|o| o.contains_key("value"));
            if !typed {
                self.walk_value(attribute, Scope::Data, path);
                path.pop();
                continue;
            }
            let Some(value) = attribute.as_object_mut().and_then(|o| o.get_mut("value")) else {
                path.pop();
                continue;
            };
            path.push(Seg::Key("value"));
            let scope = attribute_value_scope(key);
            match value {
                Value::String(s) => {
                    self.walk_string(s, scope, path);
                    self.truncate_field(key, s, path);
                }
                other => self.walk_value(other, scope, path),
            }
            path.pop();
            path.pop();
        }
    }

    /// Redacts an attribute under a sensitive name: a typed one's `value` keeping its type, an untyped one whole.
    pub(super) fn redact_attribute<'t>(
        &mut self,
        attribute: &'t mut Value,
        rule: &'static str,
        path: &mut Vec<Seg<'t>>,
    ) {
        match attribute {
            Value::Object(typed) if typed.contains_key("value") => {
                if let Some(value) = typed.get_mut("value") {
                    path.push(Seg::Key("value"));
                    self.redact_typed(value, rule, path);
                    path.pop();
                }
            }
            other => self.redact(other, rule, path),
        }
    }

    /// Records an attribute removed by [`Self::attribute_rule`] or for holding a number under a sensitive name.
    pub(crate) fn record_attribute_removal(&mut self, path: &[Seg<'_>], key: &str, rule: &str) {
        self.record(path, Some(key), rule, ChangeAction::Removed, &[], None);
    }

    /// Records a field removed because `send_default_pii` is off.
    pub(super) fn record_pii_removal(&mut self, path: &[Seg<'_>], key: &str) {
        let remark = Remark {
            rule: "send_default_pii",
            ty: "x",
            range: None,
        };
        self.record(
            path,
            Some(key),
            "send_default_pii",
            ChangeAction::Removed,
            &[remark],
            None,
        );
    }

    /// Redacts a typed attribute's `value` without changing its type: strings and arrays of strings only (scalars
    /// were removed by [`Self::prepare_attributes`]).
    pub(super) fn redact_typed(&mut self, value: &mut Value, rule: &'static str, path: &mut Vec<Seg<'_>>) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    self.redact(item, rule, path);
                    path.pop();
                }
            }
            other => self.redact(other, rule, path),
        }
    }
}

/// What happens to a typed attribute, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttributeRule {
    /// Ids, releases, and client IPs when `send_default_pii` is on.
    Untouched,
    Remove(&'static str),
    Redact(&'static str),
    /// Key rules and detectors inside the value.
    Walk,
}

/// A typed attribute (`{"type", "value"}`) holding a number or boolean.
pub(super) fn is_scalar_typed(attribute: &Value) -> bool {
    matches!(attribute.get("value"), Some(Value::Number(_) | Value::Bool(_)))
}

/// How the `value` of a typed attribute is read: query strings by name, everything else as data.
pub(crate) fn attribute_value_scope(key: &str) -> Scope {
    match key {
        "url.query" | "http.query" => Scope::Query,
        _ => Scope::Data,
    }
}

/// Fields an SDK with `send_default_pii` off would not have sent: cookies and the end user's IP.
pub(super) fn removed_without_pii(engine: &crate::rules::Engine, scope: Scope, key: &str) -> bool {
    (scope == Scope::Request && key == "cookies") || is_ip_field(engine, scope, key)
}

/// Fields that hold the end user's IP in this scope (removed when `send_default_pii` is false, left alone when true).
fn is_ip_field(engine: &crate::rules::Engine, scope: Scope, key: &str) -> bool {
    match scope {
        Scope::User | Scope::SessionAttrs => key == "ip_address",
        Scope::Env => key == "REMOTE_ADDR" || key.strip_prefix("HTTP_").is_some_and(|h| engine.is_ip_header(h)),
        Scope::Headers => engine.is_ip_header(key),
        Scope::Data | Scope::TraceContext | Scope::Span | Scope::SpanV2 | Scope::LogItem => {
            engine.is_ip_key(key) || header_attribute_name(key).is_some_and(|h| engine.is_ip_header(h))
        }
        _ => false,
    }
}

fn is_pair(value: &Value) -> bool {
    matches!(value, Value::Array(pair) if pair.len() == 2 && pair[0].is_string())
}

/// `request.data` strings that look like a form body (`a=b&c=d`, no spaces) are read as query strings.
pub(super) fn form_mode(text: &str) -> TextMode {
    let looks_like_form =
        text.contains('=') && !text.bytes().any(|b| b.is_ascii_whitespace()) && !text.starts_with('{');
    if looks_like_form {
        TextMode::Query
    } else {
        TextMode::Free
    }
}
