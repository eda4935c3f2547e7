//! `replay_recording` items: a `{"segment_id":N}` header line, then the rrweb events of one Session Replay segment
//! as zlib-compressed JSON (or plain JSON starting with `[` when the SDK's compression worker could not load).
//!
//! Every string leaf of every event gets the value detectors (DOM text nodes, attribute values, input `text`,
//! mutation texts and attributes, CSS, breadcrumbs); the request and response of network spans (`type: 5`,
//! `tag: performanceSpan`) are walked as data, so their headers and bodies get the key and header rules too. Numbers,
//! keys and array shapes are never touched: node ids, `type`, `source` and `timestamp` are what the player needs.
//! A changed recording is re-encoded as zlib, the only compression Sentry's consumer reads. A recording that cannot
//! be decoded cannot be scrubbed, so the pipeline drops the whole replay with it.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::ZlibEncoder;
use serde_json::Value;

use super::{Ctx, Format, InflateError};
use crate::envelope::Item;
use crate::scrub::{Scope, Scrubber, Seg, TextMode};

/// Sentry's cap on a compressed recording (`max_replay_compressed_size`).
pub const MAX_COMPRESSED_BYTES: usize = 10 * 1024 * 1024;
/// Sentry's cap on an inflated recording (`max_replay_uncompressed_size`); a zlib bomb stops here.
pub const MAX_INFLATED_BYTES: usize = 100 * 1024 * 1024;

/// Why a recording could not be decoded. Names the defect, never the content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordingError {
    #[error("recording has no header line")]
    NoHeaderLine,
    #[error("recording header is not a JSON object with an integer segment_id")]
    InvalidHeader,
    #[error("recording is larger than {MAX_COMPRESSED_BYTES} bytes")]
    TooLarge,
    #[error("recording inflates to more than {MAX_INFLATED_BYTES} bytes")]
    InflatedTooLarge,
    /// Past the cap of this pass ([`Ctx::inflate_cap`]), under [`MAX_INFLATED_BYTES`]: not a verdict on the recording.
    #[error("recording inflates past this pass's cap")]
    PastInflateCap,
    #[error("recording body is neither zlib nor JSON")]
    NotCompressed,
    #[error("recording body is truncated or corrupt zlib")]
    CorruptCompression,
    #[error("recording is not a JSON array of events")]
    NotJson,
}

/// Scrubs one `replay_recording` item. On a decoding failure the item is dropped and the pipeline drops the rest of
/// the replay (its `replay_event`) too.
pub fn process(item: Item, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    let scrubbed = scrub(item.payload(), cx.scrubber, cx.inflate_cap(MAX_INFLATED_BYTES));
    if scrubbed == Err(RecordingError::PastInflateCap) {
        cx.past_inflate_cap();
        return Some(item);
    }
    super::finish_replay(item, scrubbed, Format::ReplayRecording, cx)
}

/// Decodes, scrubs and re-encodes a recording (header line and body), its body inflated only up to `cap` (at most
/// [`MAX_INFLATED_BYTES`]). `Ok(None)`: nothing changed, keep the bytes.
pub(crate) fn scrub(bytes: &[u8], scrubber: &mut Scrubber<'_>, cap: usize) -> Result<Option<Vec<u8>>, RecordingError> {
    if bytes.len() > MAX_COMPRESSED_BYTES {
        return Err(RecordingError::TooLarge);
    }
    let newline = memchr::memchr(b'\n', bytes).ok_or(RecordingError::NoHeaderLine)?;
    let (header, body) = (&bytes[..newline], &bytes[newline + 1..]);
    let header_ok = serde_json::from_slice::<Value>(header)
        .ok()
        .is_some_and(|h| h.get("segment_id").is_some_and(Value::is_u64));
    if !header_ok {
        return Err(RecordingError::InvalidHeader);
    }
    let (json, mut recompress) = decode_body(body, cap)?;
    let Ok(Value::Array(mut events)) = serde_json::from_slice::<Value>(&json) else {
        return Err(RecordingError::NotJson);
    };
    drop(json);

    let changed_before = std::mem::replace(&mut scrubber.changed, false);
    let collect_meta = std::mem::replace(&mut scrubber.collect_meta, false);
    scrub_events(&mut events, scrubber);
    recompress |= scrubber.changed;
    scrubber.changed |= changed_before;
    scrubber.collect_meta = collect_meta;
    if !recompress {
        return Ok(None);
    }

    // Serializing a `Value` cannot fail (string keys, finite numbers from the parser).
    let json = serde_json::to_vec(&Value::Array(events)).expect("JSON value serializes");
    let mut out = Vec::with_capacity(header.len() + 1 + json.len() / 4);
    out.extend_from_slice(header);
    out.push(b'\n');
    let mut encoder = ZlibEncoder::new(out, Compression::default());
    // Writing into a Vec cannot fail.
    encoder.write_all(&json).expect("zlib into memory");
    Ok(Some(encoder.finish().expect("zlib into memory")))
}

/// The inflated JSON of a body, and whether it must be re-encoded even if scrubbing changes nothing (gzip, which
/// Sentry's consumer would silently drop).
fn decode_body(body: &[u8], cap: usize) -> Result<(std::borrow::Cow<'_, [u8]>, bool), RecordingError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Ok((body.into(), false)),
        // zlib: CMF 0x78 (deflate, 32 KiB window) is what every zlib writer emits, fflate included.
        Some(0x78) if body.first() == Some(&0x78) => Ok((inflate(ZlibDecoder::new(body), cap)?.into(), false)),
        Some(0x1f) if body.starts_with(&[0x1f, 0x8b]) => Ok((inflate(GzDecoder::new(body), cap)?.into(), true)),
        _ => Err(RecordingError::NotCompressed),
    }
}

/// Reads a decoder to the end under `cap` (at most [`MAX_INFLATED_BYTES`]).
fn inflate(decoder: impl Read, cap: usize) -> Result<Vec<u8>, RecordingError> {
    super::inflate(decoder, cap, MAX_INFLATED_BYTES).map_err(|error| match error {
        InflateError::Corrupt => RecordingError::CorruptCompression,
        InflateError::PastCap => RecordingError::PastInflateCap,
        InflateError::TooLarge => RecordingError::InflatedTooLarge,
    })
}

/// Walks every rrweb event of a segment.
fn scrub_events(events: &mut [Value], scrubber: &mut Scrubber<'_>) {
    for (i, event) in events.iter_mut().enumerate() {
        // Network spans (`type: 5`, `tag: performanceSpan`) carry request and response headers and bodies at
        // `data.payload.data.{request,response}`: those get key and header rules, the rest of the event detectors.
        let network = event.get("type").and_then(Value::as_u64) == Some(5)
            && event.pointer("/data/tag").and_then(Value::as_str) == Some("performanceSpan");
        let mut taken = Vec::new();
        if network && let Some(Value::Object(data)) = event.pointer_mut("/data/payload/data") {
            for key in ["request", "response"] {
                if let Some(value) = data.get_mut(key) {
                    taken.push((key, std::mem::take(value)));
                }
            }
        }
        strings(event, scrubber, &mut vec![Seg::Index(i)]);
        for (key, mut value) in taken {
            let mut path = vec![
                Seg::Index(i),
                Seg::Key("data"),
                Seg::Key("payload"),
                Seg::Key("data"),
                Seg::Key(key),
            ];
            scrubber.walk_value(&mut value, Scope::Data, &mut path);
            if let Some(slot) = event
                .pointer_mut("/data/payload/data")
                .and_then(|data| data.get_mut(key))
            {
                *slot = value;
            }
        }
    }
}

/// The value detectors on every string leaf; keys, numbers and shapes stay.
fn strings<'t>(value: &'t mut Value, scrubber: &mut Scrubber<'_>, path: &mut Vec<Seg<'t>>) {
    match value {
        Value::String(text) => {
            scrubber.scrub_text(text, TextMode::Free, path);
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                strings(item, scrubber, path);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                path.push(Seg::Key(key));
                strings(item, scrubber, path);
                path.pop();
            }
        }
        _ => {}
    }
}
