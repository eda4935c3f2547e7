//! OTLP/HTTP traces and logs: decode (protobuf or OTLP/JSON), scrub, and encode again in the encoding that came in.
//! Pure: the route handler in `routes::otlp` feeds it bytes and forwards what it returns.
//!
//! Protobuf goes through the OpenTelemetry project's own prost types (`opentelemetry-proto`); fields those types do
//! not know are dropped by the decoder, so nothing unscrubbed rides along. OTLP/JSON is walked as JSON, following the
//! OTLP/JSON mapping (lowerCamelCase names; snake_case read too), so 64-bit integers written as strings and hex ids
//! come out exactly as they went in; a field the mapping does not name gets the generic walk (key rules, detectors).
//!
//! What is scrubbed: resource, scope, span, span event, link and log record attributes (see `scrub::otlp` for the
//! key rules), span names, status messages, event names and log bodies (detectors). Ids, kinds, times, severities,
//! flags and status codes stay. Server spans of a dropped route (health checks, static files) are removed with every
//! span below them in the same request, as segments of those routes are for span v2 items. When nothing changed the
//! original bytes are forwarded.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Map, Value};

use crate::envelope::ItemType;
use crate::filter::{self, RouteMatcher};
use crate::pipeline::{DropReason, Report};
use crate::rules::CompiledRules;
use crate::scrub::{Scrubber, Seg};

/// The two encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a `Content-Type` (parameters such as `charset` ignored). Only the two types the OTLP/HTTP spec names:
    /// Sentry answers 415 to anything else, `application/protobuf` included.
    pub fn from_content_type(value: &str) -> Option<Encoding> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Encoding::Protobuf)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Which OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

impl Signal {
    /// The item type spans and log records count as in the metrics.
    pub fn item_type(self) -> ItemType {
        match self {
            Signal::Traces => ItemType::Span,
            Signal::Logs => ItemType::Log,
        }
    }
}

/// Why a body is not an OTLP request of the expected signal. The message names the cause, never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    #[error("not a valid OTLP protobuf message")]
    Protobuf,
    #[error("not valid JSON")]
    Json,
    #[error("JSON is not an OTLP {0} request")]
    Shape(&'static str),
}

/// What [`process`] did.
#[derive(Debug)]
pub struct Processed {
    /// The body to forward, in the encoding that came in; `None` when no span or record is left.
    pub body: Option<Bytes>,
    /// Spans or log records received and forwarded.
    pub received: u64,
    pub forwarded: u64,
    /// Redactions, truncations and dropped spans, in the form the envelope pipeline reports them.
    pub report: Report,
}

/// Decodes, scrubs and re-encodes one OTLP request. In dry-run mode the body is forwarded as it came and the report
/// says what would have changed.
pub fn process(
    signal: Signal,
    encoding: Encoding,
    body: Bytes,
    rules: &CompiledRules,
    project_id: u64,
) -> Result<Processed, OtlpError> {
    let engine = rules.engine(Some(project_id));
    let mut scrubber = Scrubber::new(engine, false);
    scrubber.begin_item(None, Some(signal.item_type()), false);
    let routes = &engine.routes;
    let mut counts = Counts::default();
    let changed_body = match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => {
            let mut request = ExportTraceServiceRequest::decode(&body[..]).map_err(|_| OtlpError::Protobuf)?;
            scrub_traces(&mut request, &mut scrubber, routes, &mut counts);
            (scrubber.changed || counts.dropped > 0).then(|| request.encode_to_vec())
        }
        (Signal::Logs, Encoding::Protobuf) => {
            let mut request = ExportLogsServiceRequest::decode(&body[..]).map_err(|_| OtlpError::Protobuf)?;
            scrub_logs(&mut request, &mut scrubber, &mut counts);
            scrubber.changed.then(|| request.encode_to_vec())
        }
        (_, Encoding::Json) => {
            let mut root = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(root)) => root,
                Ok(_) => return Err(OtlpError::Shape(signal_name(signal))),
                Err(_) => return Err(OtlpError::Json),
            };
            match signal {
                Signal::Traces => json_traces(&mut root, &mut scrubber, routes, &mut counts)?,
                Signal::Logs => json_logs(&mut root, &mut scrubber, &mut counts)?,
            }
            (scrubber.changed || counts.dropped > 0).then(|| {
                // Serializing a `Value` built from parsed JSON cannot fail.
                serde_json::to_vec(&Value::Object(root)).unwrap_or_default()
            })
        }
    };
    let tally = scrubber.into_tally();
    let mut report = Report {
        redactions: tally.redactions,
        truncations: tally.truncations,
        ..Report::default()
    };
    let dropped = vec![(signal.item_type(), DropReason::FilteredRoute); counts.dropped as usize];
    let forwarded = counts.received - counts.dropped;
    let body = if rules.dry_run() {
        report.dry_run = true;
        report.would_drop = dropped;
        Some(body)
    } else {
        report.dropped = dropped;
        (forwarded > 0).then(|| changed_body.map_or(body, Bytes::from))
    };
    Ok(Processed {
        body,
        received: counts.received,
        forwarded: if rules.dry_run() { counts.received } else { forwarded },
        report,
    })
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "traces",
        Signal::Logs => "logs",
    }
}

#[derive(Debug, Default)]
struct Counts {
    received: u64,
    dropped: u64,
}

fn scrub_resource(resource: Option<&mut Resource>, scrubber: &mut Scrubber<'_>) {
    if let Some(resource) = resource {
        scrubber.otlp_attributes(&mut resource.attributes, &[Seg::Key("resource")]);
    }
}

fn scrub_scope(scope: Option<&mut InstrumentationScope>, scrubber: &mut Scrubber<'_>) {
    if let Some(scope) = scope {
        scrubber.otlp_attributes(&mut scope.attributes, &[Seg::Key("scope")]);
    }
}

fn scrub_traces(
    request: &mut ExportTraceServiceRequest,
    scrubber: &mut Scrubber<'_>,
    routes: &RouteMatcher,
    counts: &mut Counts,
) {
    let spans = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans);
    let dropped = dropped_span_ids(spans.map(|span| {
        let hits = span.kind == SpanKind::Server as i32 && span_hits_route(span, routes);
        (span.span_id.as_slice(), span.parent_span_id.as_slice(), hits)
    }));
    for resource_spans in &mut request.resource_spans {
        scrub_resource(resource_spans.resource.as_mut(), scrubber);
        for scope_spans in &mut resource_spans.scope_spans {
            scrub_scope(scope_spans.scope.as_mut(), scrubber);
            counts.received += scope_spans.spans.len() as u64;
            if !dropped.is_empty() {
                let before = scope_spans.spans.len();
                scope_spans.spans.retain(|span| !dropped.contains(&span.span_id));
                counts.dropped += (before - scope_spans.spans.len()) as u64;
            }
            for span in &mut scope_spans.spans {
                scrubber.otlp_text(&mut span.name, &[Seg::Key("name")]);
                scrubber.otlp_attributes(&mut span.attributes, &[Seg::Key("attributes")]);
                for event in &mut span.events {
                    scrubber.otlp_text(&mut event.name, &[Seg::Key("events"), Seg::Key("name")]);
                    scrubber.otlp_attributes(&mut event.attributes, &[Seg::Key("events")]);
                }
                for link in &mut span.links {
                    scrubber.otlp_attributes(&mut link.attributes, &[Seg::Key("links")]);
                }
                if let Some(status) = span.status.as_mut() {
                    scrubber.otlp_text(&mut status.message, &[Seg::Key("status"), Seg::Key("message")]);
                }
            }
        }
    }
}

fn span_hits_route(span: &Span, routes: &RouteMatcher) -> bool {
    filter::segment_hits_route(Some(&span.name), |key| string_attribute(&span.attributes, key), routes)
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
            Any::StringValue(text) => Some(text.as_str()),
            _ => None,
        })
}

/// The ids of spans to drop: those that hit a route, and every span whose parent chain leads to one.
fn dropped_span_ids<'a, Id: AsRef<[u8]> + ?Sized + 'a>(
    spans: impl Iterator<Item = (&'a Id, &'a Id, bool)>,
) -> Vec<Vec<u8>> {
    let spans: Vec<(&[u8], &[u8], bool)> = spans
        .map(|(id, parent, hit)| (id.as_ref(), parent.as_ref(), hit))
        .collect();
    let mut dropped: Vec<Vec<u8>> = spans
        .iter()
        .filter(|(id, _, hit)| *hit && !id.is_empty())
        .map(|(id, _, _)| id.to_vec())
        .collect();
    if dropped.is_empty() {
        return dropped;
    }
    // Children may come before their parents: repeat until nothing new is found (one pass per level at most).
    loop {
        let before = dropped.len();
        for (id, parent, _) in &spans {
            if !id.is_empty()
                && !parent.is_empty()
                && dropped.iter().any(|d| d == parent)
                && !dropped.iter().any(|d| d == id)
            {
                dropped.push(id.to_vec());
            }
        }
        if dropped.len() == before {
            return dropped;
        }
    }
}

fn scrub_logs(request: &mut ExportLogsServiceRequest, scrubber: &mut Scrubber<'_>, counts: &mut Counts) {
    for resource_logs in &mut request.resource_logs {
        scrub_resource(resource_logs.resource.as_mut(), scrubber);
        for scope_logs in &mut resource_logs.scope_logs {
            scrub_scope(scope_logs.scope.as_mut(), scrubber);
            counts.received += scope_logs.log_records.len() as u64;
            for record in &mut scope_logs.log_records {
                if let Some(body) = record.body.as_mut() {
                    scrubber.otlp_any("body", body, &[Seg::Key("body")]);
                }
                scrubber.otlp_attributes(&mut record.attributes, &[Seg::Key("attributes")]);
            }
        }
    }
}

/// A field by its lowerCamelCase name, or its snake_case one.
fn field<'a>(object: &'a mut Map<String, Value>, camel: &str, snake: &str) -> Option<&'a mut Value> {
    if object.contains_key(camel) {
        object.get_mut(camel)
    } else {
        object.get_mut(snake)
    }
}

/// An array of objects under a field (absent is empty, as in protobuf); anything else is the wrong shape.
fn objects<'a>(
    object: &'a mut Map<String, Value>,
    camel: &str,
    snake: &str,
    signal: &'static str,
) -> Result<Vec<&'a mut Map<String, Value>>, OtlpError> {
    match field(object, camel, snake) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter_mut()
            .map(|item| item.as_object_mut().ok_or(OtlpError::Shape(signal)))
            .collect(),
        Some(_) => Err(OtlpError::Shape(signal)),
    }
}

/// The top level must hold only the signal's list: a logs body sent to the traces route (or anything else) is
/// refused rather than forwarded with fields nobody scrubbed.
fn only_field(root: &Map<String, Value>, camel: &str, snake: &str, signal: &'static str) -> Result<(), OtlpError> {
    if root.keys().all(|key| key == camel || key == snake) {
        Ok(())
    } else {
        Err(OtlpError::Shape(signal))
    }
}

/// Resource and scope attributes, and the generic walk for anything else beside them.
fn json_container(container: &mut Map<String, Value>, scrubber: &mut Scrubber<'_>, list: (&str, &str)) {
    for (key, value) in container.iter_mut() {
        match key.as_str() {
            "resource" | "scope" => {
                if let Some(object) = value.as_object_mut() {
                    json_attributes_and_rest(object, scrubber, &[]);
                }
            }
            "schemaUrl" | "schema_url" => {}
            other if other == list.0 || other == list.1 => {}
            _ => scrubber.walk_value(value, crate::scrub::Scope::Data, &mut Vec::new()),
        }
    }
}

/// `attributes` by the attribute rules, the given fields untouched, the rest by the generic walk.
fn json_attributes_and_rest(object: &mut Map<String, Value>, scrubber: &mut Scrubber<'_>, keep: &[&str]) {
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "attributes" => scrubber.otlp_json_attributes(value, &[Seg::Key("attributes")]),
            "name" | "version" | "droppedAttributesCount" | "dropped_attributes_count" => {}
            other if keep.contains(&other) => {}
            _ => scrubber.walk_value(value, crate::scrub::Scope::Data, &mut Vec::new()),
        }
    }
}

/// Span fields that are ids, times, kinds, counts or flags.
const SPAN_KEPT: &[&str] = &[
    "traceId",
    "trace_id",
    "spanId",
    "span_id",
    "parentSpanId",
    "parent_span_id",
    "traceState",
    "trace_state",
    "flags",
    "kind",
    "startTimeUnixNano",
    "start_time_unix_nano",
    "endTimeUnixNano",
    "end_time_unix_nano",
    "droppedEventsCount",
    "dropped_events_count",
    "droppedLinksCount",
    "dropped_links_count",
];

/// Log record fields that are ids, times, severities or flags.
const LOG_KEPT: &[&str] = &[
    "timeUnixNano",
    "time_unix_nano",
    "observedTimeUnixNano",
    "observed_time_unix_nano",
    "severityNumber",
    "severity_number",
    "severityText",
    "severity_text",
    "flags",
    "traceId",
    "trace_id",
    "spanId",
    "span_id",
    "eventName",
    "event_name",
];

fn json_str<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a str> {
    object.get(camel).or_else(|| object.get(snake)).and_then(Value::as_str)
}

fn json_string_attribute<'a>(span: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    span.get("attributes")?
        .as_array()?
        .iter()
        .find(|attribute| attribute.get("key").and_then(Value::as_str) == Some(key))?
        .get("value")?
        .as_object()
        .and_then(|value| json_str(value, "stringValue", "string_value"))
}

/// `kind` 2, or its enum name as some encoders write it.
fn json_is_server(span: &Map<String, Value>) -> bool {
    match span.get("kind") {
        Some(Value::Number(kind)) => kind.as_i64() == Some(SpanKind::Server as i64),
        Some(Value::String(kind)) => kind == "SPAN_KIND_SERVER",
        _ => false,
    }
}

fn json_traces(
    root: &mut Map<String, Value>,
    scrubber: &mut Scrubber<'_>,
    routes: &RouteMatcher,
    counts: &mut Counts,
) -> Result<(), OtlpError> {
    const SIGNAL: &str = "traces";
    only_field(root, "resourceSpans", "resource_spans", SIGNAL)?;
    // Shape first, over every span, so a bad body is refused before anything is counted.
    let mut resources = objects(root, "resourceSpans", "resource_spans", SIGNAL)?;
    let mut seen: Vec<(String, String, bool)> = Vec::new();
    for resource in &mut resources {
        for scope in objects(resource, "scopeSpans", "scope_spans", SIGNAL)? {
            for span in objects(scope, "spans", "spans", SIGNAL)? {
                let hit = json_is_server(span)
                    && filter::segment_hits_route(
                        span.get("name").and_then(Value::as_str),
                        |key| json_string_attribute(span, key),
                        routes,
                    );
                let id = json_str(span, "spanId", "span_id").unwrap_or_default().to_string();
                let parent = json_str(span, "parentSpanId", "parent_span_id")
                    .unwrap_or_default()
                    .to_string();
                seen.push((id, parent, hit));
            }
        }
    }
    let dropped = dropped_span_ids(
        seen.iter()
            .map(|(id, parent, hit)| (id.as_str(), parent.as_str(), *hit)),
    );
    for resource in resources {
        json_container(resource, scrubber, ("scopeSpans", "scope_spans"));
        let Some(Value::Array(scopes)) = field(resource, "scopeSpans", "scope_spans") else {
            continue;
        };
        for scope in scopes.iter_mut().filter_map(Value::as_object_mut) {
            json_container(scope, scrubber, ("spans", "spans"));
            let Some(Value::Array(spans)) = scope.get_mut("spans") else {
                continue;
            };
            counts.received += spans.len() as u64;
            if !dropped.is_empty() {
                let before = spans.len();
                spans.retain(|span| {
                    let id = span
                        .as_object()
                        .and_then(|s| json_str(s, "spanId", "span_id"))
                        .unwrap_or_default();
                    !dropped.iter().any(|d| d == id.as_bytes())
                });
                counts.dropped += (before - spans.len()) as u64;
            }
            for span in spans.iter_mut().filter_map(Value::as_object_mut) {
                json_span(span, scrubber);
            }
        }
    }
    Ok(())
}

fn json_span(span: &mut Map<String, Value>, scrubber: &mut Scrubber<'_>) {
    for (key, value) in span.iter_mut() {
        match (key.as_str(), value) {
            (key, _) if SPAN_KEPT.contains(&key) => {}
            ("name", Value::String(name)) => scrubber.otlp_text(name, &[Seg::Key("name")]),
            ("attributes", value) => scrubber.otlp_json_attributes(value, &[Seg::Key("attributes")]),
            ("events" | "links", Value::Array(entries)) => {
                for entry in entries.iter_mut() {
                    match entry.as_object_mut() {
                        Some(entry) => json_span_part(entry, scrubber),
                        None => scrubber.walk_value(entry, crate::scrub::Scope::Data, &mut Vec::new()),
                    }
                }
            }
            ("status", Value::Object(status)) => {
                for (key, value) in status.iter_mut() {
                    match (key.as_str(), value) {
                        ("code", _) => {}
                        ("message", Value::String(message)) => {
                            scrubber.otlp_text(message, &[Seg::Key("status"), Seg::Key("message")]);
                        }
                        (_, other) => scrubber.walk_value(other, crate::scrub::Scope::Data, &mut Vec::new()),
                    }
                }
            }
            (_, other) => scrubber.walk_value(other, crate::scrub::Scope::Data, &mut Vec::new()),
        }
    }
}

/// A span event or link: its name is text, its attributes follow the rules, ids and times stay.
fn json_span_part(entry: &mut Map<String, Value>, scrubber: &mut Scrubber<'_>) {
    for (key, value) in entry.iter_mut() {
        match (key.as_str(), value) {
            (key, _) if SPAN_KEPT.contains(&key) => {}
            ("timeUnixNano" | "time_unix_nano" | "droppedAttributesCount" | "dropped_attributes_count", _) => {}
            ("name", Value::String(name)) => scrubber.otlp_text(name, &[Seg::Key("events"), Seg::Key("name")]),
            ("attributes", value) => scrubber.otlp_json_attributes(value, &[Seg::Key("attributes")]),
            (_, other) => scrubber.walk_value(other, crate::scrub::Scope::Data, &mut Vec::new()),
        }
    }
}

fn json_logs(root: &mut Map<String, Value>, scrubber: &mut Scrubber<'_>, counts: &mut Counts) -> Result<(), OtlpError> {
    const SIGNAL: &str = "logs";
    only_field(root, "resourceLogs", "resource_logs", SIGNAL)?;
    let mut resources = objects(root, "resourceLogs", "resource_logs", SIGNAL)?;
    for resource in &mut resources {
        for scope in objects(resource, "scopeLogs", "scope_logs", SIGNAL)? {
            objects(scope, "logRecords", "log_records", SIGNAL)?;
        }
    }
    for resource in resources {
        json_container(resource, scrubber, ("scopeLogs", "scope_logs"));
        let Some(Value::Array(scopes)) = field(resource, "scopeLogs", "scope_logs") else {
            continue;
        };
        for scope in scopes.iter_mut().filter_map(Value::as_object_mut) {
            json_container(scope, scrubber, ("logRecords", "log_records"));
            let Some(Value::Array(records)) = field(scope, "logRecords", "log_records") else {
                continue;
            };
            counts.received += records.len() as u64;
            for record in records.iter_mut().filter_map(Value::as_object_mut) {
                for (key, value) in record.iter_mut() {
                    match key.as_str() {
                        key if LOG_KEPT.contains(&key) => {}
                        "droppedAttributesCount" | "dropped_attributes_count" => {}
                        "body" => scrubber.otlp_json_any("body", value, &[Seg::Key("body")]),
                        "attributes" => scrubber.otlp_json_attributes(value, &[Seg::Key("attributes")]),
                        _ => scrubber.walk_value(value, crate::scrub::Scope::Data, &mut Vec::new()),
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Any::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn int(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Any::IntValue(value)),
            }),
            ..Default::default()
        }
    }

    fn span(id: u8, parent: Option<u8>, kind: SpanKind, name: &str, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes,
            ..Default::default()
        }
    }

    fn traces(spans: Vec<Span>) -> Bytes {
        Bytes::from(
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        )
    }

    fn spans_of(body: &[u8]) -> Vec<Span> {
        let request = ExportTraceServiceRequest::decode(body).expect("valid protobuf");
        request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    #[test]
    fn protobuf_spans_are_scrubbed_and_health_checks_dropped_with_their_children() {
        let rules = CompiledRules::defaults();
        let body = traces(vec![
            span(
                1,
                None,
                SpanKind::Server,
                "GET /orders",
                vec![
                    string("http.request.header.authorization", "Bearer abc.def.ghi"),
                    string("user.email", "jane.doe@example.com"),
                    string("client.address", "203.0.113.9"),
                    int("db.password", 1234),
                    int("gen_ai.usage.input_tokens", 17),
                    string("http.route", "/orders"),
                ],
            ),
            span(2, None, SpanKind::Server, "GET /healthz", vec![]),
            span(3, Some(2), SpanKind::Internal, "check db", vec![]),
            span(4, Some(3), SpanKind::Client, "SELECT 1", vec![]),
        ]);
        let processed = process(Signal::Traces, Encoding::Protobuf, body, &rules, 1).unwrap();
        assert_eq!((processed.received, processed.forwarded), (4, 1));
        assert_eq!(processed.report.dropped.len(), 3);
        let spans = spans_of(&processed.body.unwrap());
        assert_eq!(spans.len(), 1);
        let kept = &spans[0];
        assert_eq!(
            (kept.span_id.clone(), kept.trace_id.clone(), kept.kind),
            (vec![1; 8], vec![1; 16], 2)
        );
        let keys: Vec<&str> = kept.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.header.authorization",
                "user.email",
                "gen_ai.usage.input_tokens",
                "http.route"
            ],
            "the client IP and the number under a sensitive key are removed"
        );
        assert_eq!(
            string_attribute(&kept.attributes, "http.request.header.authorization"),
            Some("[FILTERED]")
        );
        assert_eq!(
            string_attribute(&kept.attributes, "user.email"),
            Some("***@example.com")
        );
        assert_eq!(
            kept.attributes[2].value.as_ref().unwrap().value,
            Some(Any::IntValue(17))
        );
        assert!(processed.report.redactions["sensitive_header"] >= 1);
    }

    #[test]
    fn untouched_requests_are_forwarded_byte_for_byte() {
        let rules = CompiledRules::defaults();
        let body = traces(vec![span(
            1,
            None,
            SpanKind::Server,
            "GET /orders",
            vec![int("retries", 2)],
        )]);
        let processed = process(Signal::Traces, Encoding::Protobuf, body.clone(), &rules, 1).unwrap();
        assert_eq!(processed.body, Some(body));
        let json = Bytes::from_static(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"a","name":"x"}]}]}]}"#);
        let processed = process(Signal::Traces, Encoding::Json, json.clone(), &rules, 1).unwrap();
        assert_eq!(processed.body, Some(json));
    }

    #[test]
    fn protobuf_log_bodies_and_nested_maps_are_scrubbed() {
        let rules = CompiledRules::defaults();
        let record = LogRecord {
            severity_number: 17,
            body: Some(AnyValue {
                value: Some(Any::StringValue("login failed for jane.doe@example.com".into())),
            }),
            attributes: vec![KeyValue {
                key: "request".into(),
                value: Some(AnyValue {
                    value: Some(Any::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList {
                        values: vec![string("password", "hunter2"), string("path", "/login")],
                    })),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let body = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let processed = process(Signal::Logs, Encoding::Protobuf, Bytes::from(body), &rules, 1).unwrap();
        let request = ExportLogsServiceRequest::decode(&processed.body.unwrap()[..]).unwrap();
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.severity_number, 17);
        assert_eq!(
            record.body.as_ref().unwrap().value,
            Some(Any::StringValue("login failed for ***@example.com".into()))
        );
        let Some(Any::KvlistValue(map)) = &record.attributes[0].value.as_ref().unwrap().value else {
            panic!("the map stays a map")
        };
        assert_eq!(string_attribute(&map.values, "password"), Some("[FILTERED]"));
        assert_eq!(string_attribute(&map.values, "path"), Some("/login"));
    }

    #[test]
    fn bad_bodies_are_refused() {
        let rules = CompiledRules::defaults();
        let refuse = |signal, encoding, body: &'static [u8]| {
            process(signal, encoding, Bytes::from_static(body), &rules, 1).unwrap_err()
        };
        assert_eq!(
            refuse(Signal::Traces, Encoding::Protobuf, b"\x0a\x05\x0a"),
            OtlpError::Protobuf
        );
        assert_eq!(refuse(Signal::Traces, Encoding::Json, b"{"), OtlpError::Json);
        assert_eq!(
            refuse(Signal::Traces, Encoding::Json, b"[]"),
            OtlpError::Shape("traces")
        );
        assert_eq!(
            refuse(Signal::Traces, Encoding::Json, br#"{"resourceLogs":[]}"#),
            OtlpError::Shape("traces")
        );
        assert_eq!(
            refuse(
                Signal::Logs,
                Encoding::Json,
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[1]}]}]}"#
            ),
            OtlpError::Shape("logs")
        );
    }

    #[test]
    fn dry_run_forwards_the_original_and_reports_what_would_change() {
        let shipped = include_str!("../rules.yaml").replace("dry_run: false", "dry_run: true");
        let rules = CompiledRules::from_yaml(&shipped).unwrap();
        let body = traces(vec![
            span(1, None, SpanKind::Server, "GET /healthz", vec![]),
            span(
                2,
                None,
                SpanKind::Server,
                "GET /a",
                vec![string("user.email", "jane.doe@example.com")],
            ),
        ]);
        let processed = process(Signal::Traces, Encoding::Protobuf, body.clone(), &rules, 1).unwrap();
        assert_eq!(processed.body, Some(body));
        assert!(processed.report.dry_run);
        assert_eq!(processed.report.redactions["email"], 1);
        assert_eq!(processed.report.would_drop.len(), 1);
        assert!(processed.report.dropped.is_empty());
        assert_eq!(processed.forwarded, 2);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type("application/x-protobuf"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(
            Encoding::from_content_type("Application/JSON; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::from_content_type("application/protobuf"), None);
        assert_eq!(Encoding::from_content_type(""), None);
    }
}
