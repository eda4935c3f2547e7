//! The crashpad route `/api/<id>/minidump/`: a raw minidump, or crashpad's multipart upload, turned into an envelope
//! the way Sentry Relay builds one, so the ordinary pipeline scrubs it and delivery forwards it.
//!
//! A body sent as `application/octet-stream` or `application/x-dmp` is the dump itself. Otherwise it is
//! `multipart/form-data`: `upload_file_minidump` (required) is the dump; `__sentry-event` is the event as msgpack;
//! `__sentry-breadcrumb1` and `__sentry-breadcrumb2` are sentry-native's two breadcrumb ring files, each a run of
//! msgpack breadcrumbs, merged by timestamp into the event; any other file is an attachment. Form fields without a
//! file name (crashpad's `guid`, `prod`, `ver`, ... annotations) go into the event's `extra`, except `sentry` (JSON
//! merged into the event) and `sentry[a][b]` (set at that path), as Sentry reads them. The dump is decompressed here
//! (crashpad uploaders may gzip, zstd, bzip2 or xz it) and must be a minidump: Relay refuses anything else with 400.
//!
//! Pure and synchronous: the body is already in memory, so multer's parser never waits and is polled once.

use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::{Map, Value};

use crate::envelope::{Envelope, Item};
use crate::payload::minidump::{self as dump, MinidumpError};

/// Sentry keeps the last 100 breadcrumbs of an event.
const MAX_BREADCRUMBS: usize = 100;

/// Why a crashpad upload was refused. Each is a 400 with this message, counted by [`CrashpadError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CrashpadError {
    #[error("expected a multipart/form-data or application/octet-stream body")]
    ContentType,
    #[error("invalid multipart body")]
    Multipart,
    #[error("missing minidump (no upload_file_minidump field)")]
    MissingMinidump,
    #[error("invalid minidump: {0}")]
    Minidump(&'static str),
    #[error("invalid msgpack in {0}")]
    Msgpack(&'static str),
    #[error("too many attachments")]
    TooManyAttachments,
    /// The minidump decompresses past the cap [`envelope_within`] was given, under its format's: not a verdict on
    /// the upload.
    #[error("minidump decompresses past this pass's cap")]
    PastInflateCap,
}

impl CrashpadError {
    /// A bounded label for `request_errors_total{reason=...}`.
    pub fn kind(&self) -> &'static str {
        match self {
            CrashpadError::ContentType => "minidump_content_type",
            CrashpadError::Multipart => "minidump_multipart",
            CrashpadError::MissingMinidump => "minidump_missing",
            CrashpadError::Minidump(_) => "minidump_invalid",
            CrashpadError::Msgpack(_) => "minidump_msgpack",
            CrashpadError::TooManyAttachments => "minidump_too_many_attachments",
            CrashpadError::PastInflateCap => "minidump_past_inflate_cap",
        }
    }
}

/// Sentry's limit on attachments per envelope.
const MAX_ATTACHMENTS: usize = 30;

/// Builds the envelope for one upload. `content_type` is the request's `Content-Type`.
pub fn envelope(
    body: Bytes,
    content_type: Option<&str>,
    new_event_id: impl FnOnce() -> String,
) -> Result<Envelope, CrashpadError> {
    envelope_within(body, content_type, new_event_id, dump::MAX_INFLATED)
}

/// [`envelope`], a compressed minidump decompressed only up to `cap` (see [`dump::decompress_within`]).
pub fn envelope_within(
    body: Bytes,
    content_type: Option<&str>,
    new_event_id: impl FnOnce() -> String,
    cap: usize,
) -> Result<Envelope, CrashpadError> {
    let mime = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let upload = match mime.as_str() {
        "application/octet-stream" | "application/x-dmp" => Upload {
            minidump: Some((body, "Minidump".to_string())),
            ..Upload::default()
        },
        "multipart/form-data" => multipart(body, content_type.unwrap_or(""))?,
        _ => return Err(CrashpadError::ContentType),
    };
    build(upload, new_event_id, cap)
}

/// The parts of an upload.
#[derive(Default)]
struct Upload {
    minidump: Option<(Bytes, String)>,
    event: Option<Map<String, Value>>,
    breadcrumbs: Vec<Value>,
    /// `(file name, content type, bytes)`.
    attachments: Vec<(String, Option<String>, Bytes)>,
    form: Vec<(String, String)>,
}

fn multipart(body: Bytes, content_type: &str) -> Result<Upload, CrashpadError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| CrashpadError::ContentType)?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut upload = Upload::default();
    loop {
        // The whole body is one ready chunk, so every step completes on its first poll; `None` would mean multer
        // wanted more input than the body has, which is a truncated body.
        let field = parts
            .next_field()
            .now_or_never()
            .ok_or(CrashpadError::Multipart)?
            .map_err(|_| CrashpadError::Multipart)?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(|m| m.essence_str().to_string());
        let data = field
            .bytes()
            .now_or_never()
            .ok_or(CrashpadError::Multipart)?
            .map_err(|_| CrashpadError::Multipart)?;
        match name.as_str() {
            "upload_file_minidump" => {
                upload.minidump = Some((data, file_name.unwrap_or_else(|| "Minidump".to_string())));
            }
            "__sentry-event" => match msgpack_values(&data, "__sentry-event")?.into_iter().next() {
                Some(Value::Object(event)) => upload.event = Some(event),
                _ => return Err(CrashpadError::Msgpack("__sentry-event")),
            },
            "__sentry-breadcrumb1" | "__sentry-breadcrumb2" => {
                upload.breadcrumbs.extend(msgpack_values(&data, "__sentry-breadcrumb")?);
            }
            _ => match file_name {
                Some(file_name) => {
                    if upload.attachments.len() >= MAX_ATTACHMENTS {
                        return Err(CrashpadError::TooManyAttachments);
                    }
                    upload.attachments.push((file_name, content_type, data));
                }
                None => upload.form.push((name, String::from_utf8_lossy(&data).into_owned())),
            },
        }
    }
    Ok(upload)
}

/// A run of concatenated msgpack values (one for the event, many for a breadcrumb file).
fn msgpack_values(data: &[u8], field: &'static str) -> Result<Vec<Value>, CrashpadError> {
    let mut cursor = std::io::Cursor::new(data);
    let mut values = Vec::new();
    while (cursor.position() as usize) < data.len() {
        let value: Value = rmp_serde::from_read(&mut cursor).map_err(|_| CrashpadError::Msgpack(field))?;
        values.push(value);
    }
    Ok(values)
}

fn build(upload: Upload, new_event_id: impl FnOnce() -> String, cap: usize) -> Result<Envelope, CrashpadError> {
    let (raw_dump, mut filename) = upload.minidump.ok_or(CrashpadError::MissingMinidump)?;
    let (dump_bytes, compression) = dump::decompress_within(&raw_dump, cap).map_err(|error| match error {
        MinidumpError::PastInflateCap => CrashpadError::PastInflateCap,
        MinidumpError::TooLarge => CrashpadError::Minidump("decompressed minidump too large"),
        _ => CrashpadError::Minidump("invalid compressed minidump"),
    })?;
    if !(dump_bytes.starts_with(b"MDMP") || dump_bytes.starts_with(b"PMDM")) {
        return Err(CrashpadError::Minidump("no MDMP signature"));
    }
    let dump_bytes = match compression {
        Some(compression) => {
            if let Some(stripped) = filename.strip_suffix(compression.suffix()) {
                filename = stripped.to_string();
            }
            Bytes::from(dump_bytes.into_owned())
        }
        None => raw_dump.clone(),
    };

    let mut event = upload.event.unwrap_or_default();
    for (name, value) in upload.form {
        merge_form_field(&mut event, &name, value);
    }
    if !upload.breadcrumbs.is_empty() {
        let mut breadcrumbs = match event.remove("breadcrumbs") {
            Some(Value::Array(values)) => values,
            Some(Value::Object(mut object)) => match object.remove("values") {
                Some(Value::Array(values)) => values,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        breadcrumbs.extend(upload.breadcrumbs);
        // Stable: breadcrumbs with equal (or no) timestamps keep their file order.
        breadcrumbs.sort_by(|a, b| timestamp(a).total_cmp(&timestamp(b)));
        let excess = breadcrumbs.len().saturating_sub(MAX_BREADCRUMBS);
        breadcrumbs.drain(..excess);
        event.insert("breadcrumbs".into(), serde_json::json!({ "values": breadcrumbs }));
    }
    let event_id = event
        .get("event_id")
        .and_then(Value::as_str)
        .and_then(crate::ingest::normalize_event_id)
        .unwrap_or_else(new_event_id);
    event.insert("event_id".into(), Value::String(event_id.clone()));

    let mut headers = Map::new();
    headers.insert("event_id".into(), Value::String(event_id));
    let mut envelope = Envelope::new(headers);
    let event_json = serde_json::to_vec(&Value::Object(event)).map_err(|_| CrashpadError::Msgpack("__sentry-event"))?;
    let mut item = Item::new("event", Bytes::from(event_json));
    item.headers_mut()
        .insert("content_type".into(), Value::String("application/json".into()));
    envelope.items.push(item);

    let mut item = Item::new("attachment", dump_bytes);
    let headers = item.headers_mut();
    headers.insert("attachment_type".into(), Value::String("event.minidump".into()));
    headers.insert("filename".into(), Value::String(filename));
    headers.insert("content_type".into(), Value::String("application/octet-stream".into()));
    envelope.items.push(item);

    for (filename, content_type, data) in upload.attachments {
        let mut item = Item::new("attachment", data);
        let headers = item.headers_mut();
        headers.insert("attachment_type".into(), Value::String("event.attachment".into()));
        headers.insert("filename".into(), Value::String(filename));
        if let Some(content_type) = content_type {
            headers.insert("content_type".into(), Value::String(content_type));
        }
        envelope.items.push(item);
    }
    Ok(envelope)
}

/// A breadcrumb's time as seconds: a number, or an RFC 3339 string compared by its digits (same format, same order).
fn timestamp(breadcrumb: &Value) -> f64 {
    match breadcrumb.get("timestamp") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => rfc3339_seconds(s).unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Seconds since 1970 of `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` (offsets ignored: one SDK writes one form).
fn rfc3339_seconds(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 19 {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut seconds = (days * 86_400 + h * 3600 + mi * 60 + sec) as f64;
    if b.get(19) == Some(&b'.') {
        let digits: String = s[20..].chars().take_while(char::is_ascii_digit).collect();
        if let Ok(fraction) = format!("0.{digits}").parse::<f64>() {
            seconds += fraction;
        }
    }
    Some(seconds)
}

/// `sentry` (a JSON object merged into the event), `sentry[a][b]` (set at `a.b`), anything else into `extra`.
fn merge_form_field(event: &mut Map<String, Value>, name: &str, value: String) {
    if name == "sentry" {
        if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&value) {
            for (key, value) in fields {
                event.insert(key, value);
            }
        }
        return;
    }
    if let Some(path) = name.strip_prefix("sentry[") {
        let keys: Vec<&str> = path.trim_end_matches(']').split("][").collect();
        if keys.iter().all(|k| !k.is_empty()) && keys.len() <= 8 {
            let mut target = event;
            for key in &keys[..keys.len() - 1] {
                let slot = target
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                let Value::Object(next) = slot else { return };
                target = next;
            }
            target.insert(keys[keys.len() - 1].to_string(), Value::String(value));
            return;
        }
    }
    let extra = event.entry("extra").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(extra) = extra {
        extra.insert(name.to_string(), Value::String(value));
    }
}

/// Sentry's hyphenated form of a 32-hex event id, as crashpad expects the answer.
pub fn hyphenated(id: &str) -> String {
    if id.len() != 32 {
        return id.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}
