//! OTLP attributes and values, in both encodings (prost messages and OTLP/JSON): the rules Sentry's typed attributes
//! get. An attribute's key decides first (ids stay; client IPs go with `send_default_pii` off; sensitive keys and
//! `http.*.header.*` under the header rules are replaced), then string values get the detectors (`url.query` read as
//! a query string) and the truncation limits. Numbers and booleans under a sensitive key are removed rather than turned
//! into strings, so every attribute keeps a valid OTLP type. Nested arrays and key-value lists follow the same rules.

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use serde_json::Value;

use super::walk::{AttributeRule, attribute_value_scope};
use super::{Scope, Scrubber, Seg, TextMode};

/// How a string under `key` is read.
fn mode_for(key: &str) -> TextMode {
    if attribute_value_scope(key) == Scope::Query {
        TextMode::Query
    } else {
        TextMode::Free
    }
}

impl Scrubber<'_> {
    /// Free text (span names, status messages, event names): detectors and `key=value` pairs.
    pub(crate) fn otlp_text(&mut self, text: &mut String, path: &[Seg<'_>]) {
        if let Some(scrubbed) = self.scrub_str(text, TextMode::Free, path) {
            *text = scrubbed;
        }
    }

    /// A string value under an attribute key: detectors, then the key's length limit.
    fn otlp_string(&mut self, key: &str, text: &mut String, path: &[Seg<'_>]) {
        if let Some(scrubbed) = self.scrub_str(text, mode_for(key), path) {
            *text = scrubbed;
        }
        if let Some(cut) = self.truncate_str(key, text, path) {
            *text = cut;
        }
    }

    /// Scrubs protobuf attributes in place, removing those that must go.
    pub(crate) fn otlp_attributes(&mut self, attributes: &mut Vec<KeyValue>, path: &[Seg<'_>]) {
        attributes.retain_mut(|attribute| self.otlp_attribute(attribute, path));
    }

    /// One protobuf attribute; `false` when it must be removed.
    fn otlp_attribute(&mut self, attribute: &mut KeyValue, path: &[Seg<'_>]) -> bool {
        let key = attribute.key.clone();
        let mut inner: Vec<Seg<'_>> = path.to_vec();
        inner.push(Seg::Key(&key));
        match self.attribute_rule(&key) {
            AttributeRule::Untouched => true,
            AttributeRule::Remove(rule) => {
                self.record_attribute_removal(path, &key, rule);
                false
            }
            AttributeRule::Redact(rule) => {
                let Some(value) = attribute.value.as_mut() else {
                    return true;
                };
                if !self.otlp_redact(value, rule, &inner) {
                    self.record_attribute_removal(path, &key, rule);
                    return false;
                }
                true
            }
            AttributeRule::Walk => {
                if let Some(value) = attribute.value.as_mut() {
                    self.otlp_any(&key, value, &inner);
                }
                true
            }
        }
    }

    /// Replaces a value under a sensitive key: strings (also in arrays) in place; `false` for anything else, which
    /// is removed instead (a number turned into a string would break its type).
    fn otlp_redact(&mut self, value: &mut AnyValue, rule: &'static str, path: &[Seg<'_>]) -> bool {
        match value.value.as_mut() {
            None => true,
            Some(Any::StringValue(text)) => {
                if let Some(replacement) = self.redact_str(text, rule, path) {
                    *text = replacement.into_owned();
                }
                true
            }
            Some(Any::ArrayValue(array)) => array.values.iter_mut().all(|item| self.otlp_redact(item, rule, path)),
            Some(_) => false,
        }
    }

    /// A value under a key the rules let through: strings get the detectors, lists and maps are walked.
    pub(crate) fn otlp_any(&mut self, key: &str, value: &mut AnyValue, path: &[Seg<'_>]) {
        match value.value.as_mut() {
            Some(Any::StringValue(text)) => self.otlp_string(key, text, path),
            Some(Any::ArrayValue(array)) => {
                for item in &mut array.values {
                    self.otlp_any(key, item, path);
                }
            }
            Some(Any::KvlistValue(list)) => self.otlp_attributes(&mut list.values, path),
            Some(Any::BytesValue(bytes)) => {
                // Bytes are usually binary; text in them gets the detectors like any string.
                if let Ok(text) = std::str::from_utf8(bytes)
                    && let Some(scrubbed) = self.scrub_str(text, TextMode::Plain, path)
                {
                    *bytes = scrubbed.into_bytes();
                }
            }
            Some(Any::BoolValue(_) | Any::IntValue(_) | Any::DoubleValue(_) | Any::StringValueStrindex(_)) | None => {}
        }
    }

    /// Scrubs OTLP/JSON attributes (`[{"key": ..., "value": {...}}]`) in place. Entries that are not key-value
    /// objects are walked generically (key rules and detectors), never forwarded unscrubbed.
    pub(crate) fn otlp_json_attributes(&mut self, attributes: &mut Value, path: &[Seg<'_>]) {
        let Value::Array(items) = attributes else {
            let mut generic = path.to_vec();
            self.walk_value(attributes, Scope::Data, &mut generic);
            return;
        };
        items.retain_mut(|attribute| self.otlp_json_attribute(attribute, path));
    }

    fn otlp_json_attribute(&mut self, attribute: &mut Value, path: &[Seg<'_>]) -> bool {
        let key = match attribute.get("key").and_then(Value::as_str) {
            Some(key) => key.to_string(),
            None => {
                let mut generic = path.to_vec();
                self.walk_value(attribute, Scope::Data, &mut generic);
                return true;
            }
        };
        let mut inner: Vec<Seg<'_>> = path.to_vec();
        inner.push(Seg::Key(&key));
        let value = attribute.as_object_mut().and_then(|object| object.get_mut("value"));
        match self.attribute_rule(&key) {
            AttributeRule::Untouched => true,
            AttributeRule::Remove(rule) => {
                self.record_attribute_removal(path, &key, rule);
                false
            }
            AttributeRule::Redact(rule) => {
                let Some(value) = value else { return true };
                if !self.otlp_json_redact(value, rule, &inner) {
                    self.record_attribute_removal(path, &key, rule);
                    return false;
                }
                true
            }
            AttributeRule::Walk => {
                if let Some(value) = value {
                    self.otlp_json_any(&key, value, &inner);
                }
                true
            }
        }
    }

    /// The JSON form of [`Self::otlp_redact`].
    fn otlp_json_redact(&mut self, value: &mut Value, rule: &'static str, path: &[Seg<'_>]) -> bool {
        let Value::Object(object) = value else {
            return matches!(value, Value::Null);
        };
        if object.is_empty() {
            return true;
        }
        let string_key = ["stringValue", "string_value"]
            .into_iter()
            .find(|key| object.contains_key(*key));
        if let Some(Value::String(text)) = string_key.and_then(|key| object.get_mut(key)) {
            if let Some(replacement) = self.redact_str(text, rule, path) {
                *text = replacement.into_owned();
            }
            return object.len() == 1;
        }
        if let Some(values) = array_values(object) {
            return values.iter_mut().all(|item| self.otlp_json_redact(item, rule, path));
        }
        false
    }

    /// The JSON form of [`Self::otlp_any`]. An `AnyValue` is an object with one of `stringValue`, `arrayValue`,
    /// `kvlistValue`, `bytesValue` (base64) or a scalar; snake_case names are read too. Anything else is walked
    /// generically.
    pub(crate) fn otlp_json_any(&mut self, key: &str, value: &mut Value, path: &[Seg<'_>]) {
        let Value::Object(object) = value else {
            if let Value::String(text) = value {
                self.otlp_string(key, text, path);
            }
            return;
        };
        for (field, inner) in object.iter_mut() {
            match (field.as_str(), inner) {
                ("stringValue" | "string_value", Value::String(text)) => self.otlp_string(key, text, path),
                ("arrayValue" | "array_value", Value::Object(array)) => {
                    if let Some(Value::Array(items)) = array.get_mut("values") {
                        for item in items {
                            self.otlp_json_any(key, item, path);
                        }
                    }
                }
                ("kvlistValue" | "kvlist_value", Value::Object(list)) => {
                    if let Some(values) = list.get_mut("values") {
                        self.otlp_json_attributes(values, path);
                    }
                }
                ("boolValue" | "bool_value" | "intValue" | "int_value" | "doubleValue" | "double_value", _) => {}
                ("bytesValue" | "bytes_value", Value::String(encoded)) => {
                    // Base64: text inside gets the detectors like any string; binary stays as it is.
                    use base64::Engine as _;
                    let engine = base64::engine::general_purpose::STANDARD;
                    if let Ok(raw) = engine.decode(encoded.as_bytes())
                        && let Ok(text) = std::str::from_utf8(&raw)
                        && let Some(scrubbed) = self.scrub_str(text, TextMode::Plain, path)
                    {
                        *encoded = engine.encode(scrubbed);
                    }
                }
                (_, other) => {
                    let mut generic = path.to_vec();
                    self.walk_value(other, Scope::Data, &mut generic);
                }
            }
        }
    }
}

/// The `values` of an `arrayValue`, in either spelling.
fn array_values(object: &mut serde_json::Map<String, Value>) -> Option<&mut Vec<Value>> {
    let array = match object.get("arrayValue") {
        Some(_) => object.get_mut("arrayValue"),
        None => object.get_mut("array_value"),
    }?;
    match array.get_mut("values") {
        Some(Value::Array(values)) => Some(values),
        _ => None,
    }
}
