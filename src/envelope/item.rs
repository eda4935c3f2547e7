//! One envelope item: its header (kept whole, unknown keys included) and its payload bytes.

use bytes::Bytes;
use serde_json::{Map, Value};

/// An item of an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    headers: Map<String, Value>,
    payload: Bytes,
}

/// The item types the relay treats differently. Everything else is `Other` and keeps its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemType {
    Event,
    Transaction,
    Span,
    Log,
    TraceMetric,
    Session,
    Sessions,
    ClientReport,
    CheckIn,
    Attachment,
    Feedback,
    UserReport,
    ReplayEvent,
    ReplayRecording,
    ReplayVideo,
    Profile,
    ProfileChunk,
    Statsd,
    /// A browser's CSP report as it posted it (`/security/`, or the JavaScript SDK's `createRawSecurityEnvelope`).
    RawSecurity,
    /// A browser's NEL report (Relay's older envelope form; the relay's `/nel/` route counts its reports as these).
    Nel,
    Other,
}

impl ItemType {
    pub fn from_name(name: &str) -> ItemType {
        match name {
            "event" => ItemType::Event,
            "transaction" => ItemType::Transaction,
            "span" => ItemType::Span,
            "log" => ItemType::Log,
            "trace_metric" => ItemType::TraceMetric,
            "session" => ItemType::Session,
            "sessions" => ItemType::Sessions,
            "client_report" => ItemType::ClientReport,
            "check_in" => ItemType::CheckIn,
            "attachment" => ItemType::Attachment,
            "feedback" => ItemType::Feedback,
            "user_report" => ItemType::UserReport,
            "replay_event" => ItemType::ReplayEvent,
            "replay_recording" => ItemType::ReplayRecording,
            "replay_video" => ItemType::ReplayVideo,
            "profile" => ItemType::Profile,
            "profile_chunk" => ItemType::ProfileChunk,
            "statsd" => ItemType::Statsd,
            "raw_security" => ItemType::RawSecurity,
            "nel" => ItemType::Nel,
            _ => ItemType::Other,
        }
    }

    /// A bounded label for metrics: unknown types all count as `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Event => "event",
            ItemType::Transaction => "transaction",
            ItemType::Span => "span",
            ItemType::Log => "log",
            ItemType::TraceMetric => "trace_metric",
            ItemType::Session => "session",
            ItemType::Sessions => "sessions",
            ItemType::ClientReport => "client_report",
            ItemType::CheckIn => "check_in",
            ItemType::Attachment => "attachment",
            ItemType::Feedback => "feedback",
            ItemType::UserReport => "user_report",
            ItemType::ReplayEvent => "replay_event",
            ItemType::ReplayRecording => "replay_recording",
            ItemType::ReplayVideo => "replay_video",
            ItemType::Profile => "profile",
            ItemType::ProfileChunk => "profile_chunk",
            ItemType::Statsd => "statsd",
            ItemType::RawSecurity => "raw_security",
            ItemType::Nel => "nel",
            ItemType::Other => "other",
        }
    }

    /// Every variant, for pre-registering metric label values.
    pub const ALL: [ItemType; 21] = [
        ItemType::Event,
        ItemType::Transaction,
        ItemType::Span,
        ItemType::Log,
        ItemType::TraceMetric,
        ItemType::Session,
        ItemType::Sessions,
        ItemType::ClientReport,
        ItemType::CheckIn,
        ItemType::Attachment,
        ItemType::Feedback,
        ItemType::UserReport,
        ItemType::ReplayEvent,
        ItemType::ReplayRecording,
        ItemType::ReplayVideo,
        ItemType::Profile,
        ItemType::ProfileChunk,
        ItemType::Statsd,
        ItemType::RawSecurity,
        ItemType::Nel,
        ItemType::Other,
    ];
}

impl Item {
    /// Builds an item from a parsed header (which must hold a string `type`) and its payload.
    pub fn from_parts(headers: Map<String, Value>, payload: Bytes) -> Item {
        Item { headers, payload }
    }

    /// A new item of the given type with a payload; `length` is filled in on serialization.
    pub fn new(ty: &str, payload: Bytes) -> Item {
        let mut headers = Map::new();
        headers.insert("type".into(), Value::String(ty.into()));
        Item { headers, payload }
    }

    /// The `type` header as the SDK wrote it.
    pub fn type_name(&self) -> &str {
        self.headers.get("type").and_then(Value::as_str).unwrap_or("")
    }

    pub fn ty(&self) -> ItemType {
        ItemType::from_name(self.type_name())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers.get("content_type").and_then(Value::as_str)
    }

    pub fn filename(&self) -> Option<&str> {
        self.headers.get("filename").and_then(Value::as_str)
    }

    pub fn headers(&self) -> &Map<String, Value> {
        &self.headers
    }

    pub fn headers_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.headers
    }

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Replaces the payload; the `length` header is rewritten when the envelope is serialized.
    pub fn set_payload(&mut self, payload: Bytes) {
        self.payload = payload;
    }

    /// The header as it goes on the wire, as a map: what [`Item::write_headers_with_length`] writes.
    #[cfg(test)]
    pub(crate) fn headers_with_length(&self) -> Map<String, Value> {
        let mut headers = self.headers.clone();
        headers.insert("length".into(), Value::from(self.payload.len()));
        headers
    }

    /// Writes the header as it goes on the wire (the original keys in order, with `length` set to the payload size)
    /// as compact JSON, without building that map (a copy of the header per item, about 1.6 k instructions on the
    /// python event, issue #11): `length` keeps its place when the SDK sent one, as the map's insert does, and comes
    /// last otherwise.
    pub(crate) fn write_headers_with_length(&self, out: &mut Vec<u8>) {
        let length = self.payload.len();
        let mut wrote_length = false;
        out.push(b'{');
        for (at, (key, value)) in self.headers.iter().enumerate() {
            if at > 0 {
                out.push(b',');
            }
            // Writing a string or a `Value` into a Vec cannot fail.
            serde_json::to_writer(&mut *out, key).expect("JSON string serializes");
            out.push(b':');
            if key == "length" {
                serde_json::to_writer(&mut *out, &length).expect("a number serializes");
                wrote_length = true;
            } else {
                serde_json::to_writer(&mut *out, value).expect("JSON value serializes");
            }
        }
        if !wrote_length {
            if !self.headers.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"length\":");
            serde_json::to_writer(&mut *out, &length).expect("a number serializes");
        }
        out.push(b'}');
    }
}
