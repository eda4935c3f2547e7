//! `replay_video` items (mobile and native Session Replay): a msgpack map whose `bin` values are `replay_event` (the
//! replay event's JSON), `replay_recording` (a recording as in [`super::replay_recording`]) and `replay_video` (an
//! mp4). The event and the recording are scrubbed; the mp4 cannot be, so `drop.replay_video` decides whether the
//! replay is forwarded (the default: SDKs mask text and images on the device before encoding) or dropped whole.
//!
//! The map is read with `rmp`'s low-level decoder and only the three keys Sentry reads are kept, each re-encoded as
//! `bin` under the same name, in the order they came (Sentry Relay does the same: its struct ignores other keys).
//! Reading never allocates more than the input: lengths are checked against the bytes left before slicing.

use rmp::Marker;

use super::replay_recording::{self, RecordingError};
use super::{Ctx, Format, Outcome, json};
use crate::envelope::Item;
use crate::pipeline::DropReason;
use crate::rules::BinaryPolicy;
use crate::scrub::Scope;

/// The keys of a `replay_video` map, in Sentry's order.
const KEYS: [&str; 3] = ["replay_event", "replay_recording", "replay_video"];

/// More entries than this is not a replay video; the bound keeps the key loop short whatever the header claims.
const MAX_ENTRIES: u32 = 16;

/// Why a `replay_video` payload could not be read. Names the defect, never the content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VideoError {
    #[error("replay_video is not a msgpack map")]
    NotAMap,
    #[error("replay_video map has a key that is not a string")]
    BadKey,
    #[error("replay_video value is not bytes or a string")]
    BadValue,
    #[error("replay_video is truncated")]
    Truncated,
    #[error("replay_video has bytes after its map")]
    TrailingBytes,
    #[error("replay_video repeats a key")]
    DuplicateKey,
    #[error("replay_video lacks `{0}`")]
    MissingKey(&'static str),
    #[error("replay_video's video is empty")]
    EmptyVideo,
    #[error("replay_video's replay_event is not JSON")]
    InvalidEvent,
    #[error("replay_video's recording: {0}")]
    InvalidRecording(#[from] replay_recording::RecordingError),
}

/// Scrubs one `replay_video` item, or drops the whole replay (policy, or a payload that cannot be decoded).
pub fn process(item: Item, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    if cx.scrubber.engine.policy.replay_video == BinaryPolicy::Drop {
        cx.report.count(Format::ReplayVideo, Outcome::DroppedPolicy);
        cx.report.drop_replay(item.ty(), DropReason::ReplayPolicy);
        return None;
    }
    let scrubbed = scrub(item.payload(), cx);
    if scrubbed == Err(VideoError::InvalidRecording(RecordingError::PastInflateCap)) {
        cx.past_inflate_cap();
        return Some(item);
    }
    super::finish_replay(item, scrubbed, Format::ReplayVideo, cx)
}

/// Decodes, scrubs and re-encodes a `replay_video` payload. `Ok(None)`: nothing changed, keep the bytes.
pub(crate) fn scrub(bytes: &[u8], cx: &mut Ctx<'_, '_>) -> Result<Option<Vec<u8>>, VideoError> {
    let mut parts = decode(bytes)?;
    let mut changed = parts.len() != KEYS.len();
    for (key, value) in parts.iter_mut() {
        let scrubbed = match *key {
            "replay_event" => {
                let collect_meta = std::mem::replace(&mut cx.scrubber.collect_meta, true);
                let result = json::scrub_bytes(value, Scope::EventRoot, cx);
                cx.scrubber.collect_meta = collect_meta;
                result.map_err(|()| VideoError::InvalidEvent)?
            }
            "replay_recording" => {
                let cap = cx.inflate_cap(replay_recording::MAX_INFLATED_BYTES);
                replay_recording::scrub(value, cx.scrubber, cap)?
            }
            _ => None,
        };
        if let Some(scrubbed) = scrubbed {
            *value = std::borrow::Cow::Owned(scrubbed);
            changed = true;
        }
    }
    Ok(changed.then(|| encode(&parts)))
}

/// One known entry of the map: its key and its bytes (borrowed unless the scrub changed them).
type Part<'a> = (&'static str, std::borrow::Cow<'a, [u8]>);

/// The known entries of the map, in their order; unknown keys are skipped. Every key is required.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Part<'_>>, VideoError> {
    let mut rest = bytes;
    let entries = rmp::decode::read_map_len(&mut rest).map_err(|_| VideoError::NotAMap)?;
    if entries > MAX_ENTRIES {
        return Err(VideoError::NotAMap);
    }
    let mut parts: Vec<Part<'_>> = Vec::with_capacity(KEYS.len());
    for _ in 0..entries {
        let key_len = rmp::decode::read_str_len(&mut rest).map_err(|_| VideoError::BadKey)?;
        let key = take(&mut rest, key_len)?;
        let value = read_bytes(&mut rest)?;
        let Some(&known) = KEYS.iter().find(|k| k.as_bytes() == key) else {
            continue;
        };
        if parts.iter().any(|(k, _)| *k == known) {
            return Err(VideoError::DuplicateKey);
        }
        parts.push((known, value.into()));
    }
    if !rest.is_empty() {
        return Err(VideoError::TrailingBytes);
    }
    for key in KEYS {
        if !parts.iter().any(|(k, _)| *k == key) {
            return Err(VideoError::MissingKey(key));
        }
    }
    if parts.iter().any(|(k, v)| *k == "replay_video" && v.is_empty()) {
        return Err(VideoError::EmptyVideo);
    }
    Ok(parts)
}

/// A `bin` or `str` value (SDKs write `bin`; a `str` holding JSON is read the same way).
fn read_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], VideoError> {
    let marker = rest.first().map(|b| Marker::from_u8(*b)).ok_or(VideoError::Truncated)?;
    let len = match marker {
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
            rmp::decode::read_bin_len(rest).map_err(|_| VideoError::Truncated)?
        }
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
            rmp::decode::read_str_len(rest).map_err(|_| VideoError::Truncated)?
        }
        _ => return Err(VideoError::BadValue),
    };
    take(rest, len)
}

/// The next `len` bytes, checked against what is left.
fn take<'a>(rest: &mut &'a [u8], len: u32) -> Result<&'a [u8], VideoError> {
    let len = usize::try_from(len).map_err(|_| VideoError::Truncated)?;
    if len > rest.len() {
        return Err(VideoError::Truncated);
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

/// Writes the map: string keys, `bin` values.
pub(crate) fn encode(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|(k, v)| k.len() + v.len() + 10).sum::<usize>() + 5);
    // Writing into a Vec cannot fail; lengths fit u32 because the item is capped far below 4 GiB.
    rmp::encode::write_map_len(&mut out, parts.len() as u32).expect("msgpack into memory");
    for (key, value) in parts {
        rmp::encode::write_str(&mut out, key).expect("msgpack into memory");
        rmp::encode::write_bin(&mut out, value).expect("msgpack into memory");
    }
    out
}
