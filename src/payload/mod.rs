//! Payload formats: one module per way an item's bytes are encoded. Each decodes its format, scrubs what it holds
//! through the envelope's one [`Scrubber`] (so rules, detectors, counts and `_meta` are shared), and encodes the
//! result; the pipeline picks the module by item type in one `match`, so a new format is one file and one line.
//!
//! - [`json`]: events, transactions, spans, logs and every other JSON item (streaming walk, tree walk when needed).
//! - [`text`]: UTF-8 text gets the value detectors; anything else follows the binary policy.
//! - [`attachment`]: picks JSON, text or the attachment policy for an `attachment` item.
//! - [`security`]: browser reports (`raw_security`, `nel`): URLs, referrers, samples and policies.
//! - [`minidump`]: native crash dumps (`event.minidump` attachments), scrubbed in place.
//! - [`replay_recording`]: Session Replay recordings (header line + zlib or plain rrweb JSON).
//! - [`replay_video`]: mobile and native replays (msgpack: replay event, recording, mp4).
//!
//! A replay is all or nothing: when a recording or video cannot be kept, [`crate::pipeline::Report::drop_replay`]
//! makes the pipeline remove the rest of the replay too, because Sentry cannot use half of one.

pub mod attachment;
pub mod json;
pub mod minidump;
pub mod replay_recording;
pub mod replay_video;
pub mod security;
pub mod text;

use std::io::Read;

use bytes::Bytes;

use crate::envelope::Item;
use crate::pipeline::{DropReason, Report};
use crate::scrub::Scrubber;

/// What every format module gets for one item: the envelope's scrubber and report, and how to walk JSON.
pub struct Ctx<'s, 'e> {
    pub scrubber: &'s mut Scrubber<'e>,
    pub report: &'s mut Report,
    /// Stream over JSON (the relay's way) rather than build a tree (`ProcessOptions::tree_walk_only`).
    pub stream: bool,
    /// What a compressed payload inside an item may inflate to in this pass (`ProcessOptions::inflate_cap`).
    pub inflate_cap: usize,
}

impl Ctx<'_, '_> {
    /// The most a payload of a format whose own cap is `format_max` may inflate to in this pass.
    pub(crate) fn inflate_cap(&self, format_max: usize) -> usize {
        self.inflate_cap.min(format_max)
    }

    /// A payload inflates past this pass's cap but perhaps not its format's: the caller keeps the item as it is, and
    /// the pipeline's caller processes the whole envelope again without the cap ([`Report::past_inflate_cap`]).
    pub(crate) fn past_inflate_cap(&mut self) {
        self.report.past_inflate_cap = true;
    }
}

/// Why a compressed payload inside an item could not be read under its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// The decoder failed: corrupt or truncated data.
    Corrupt,
    /// Past this pass's cap, which is under the format's own ([`Ctx::past_inflate_cap`]): no verdict on the payload.
    PastCap,
    /// Past the format's own cap.
    TooLarge,
}

/// Reads `decoder` to the end under `cap`, itself at most `format_max`, the format's own cap: it never holds more
/// than `cap + 1` bytes, so a bomb stops there.
pub(crate) fn inflate(decoder: impl Read, cap: usize, format_max: usize) -> Result<Vec<u8>, InflateError> {
    let cap = cap.min(format_max);
    let mut out = Vec::new();
    decoder
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| InflateError::Corrupt)?;
    if out.len() > cap {
        return Err(if cap < format_max {
            InflateError::PastCap
        } else {
            InflateError::TooLarge
        });
    }
    Ok(out)
}

/// A payload format whose outcomes are counted (`scrub_relay_payloads_total{format}`): the ones that are not plain
/// JSON or text, where "scrubbed", "forwarded unscrubbed" and "dropped" are each a decision worth watching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    ReplayRecording,
    ReplayVideo,
    /// An `attachment` item: scrubbed as JSON or text, or passed or dropped by the attachment policy.
    Attachment,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::ReplayRecording => "replay_recording",
            Format::ReplayVideo => "replay_video",
            Format::Attachment => "attachment",
        }
    }

    pub const ALL: [Format; 3] = [Format::ReplayRecording, Format::ReplayVideo, Format::Attachment];
}

/// What happened to one payload of a counted [`Format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Decoded, scrubbed (or found clean) and forwarded.
    Scrubbed,
    /// Forwarded without scrubbing because the rules say so (a binary attachment under a `forward` policy).
    ForwardedUnscrubbed,
    /// Dropped because the rules say so.
    DroppedPolicy,
    /// Dropped because it could not be decoded (and so could not be scrubbed).
    DroppedInvalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Scrubbed => "scrubbed",
            Outcome::ForwardedUnscrubbed => "forwarded_unscrubbed",
            Outcome::DroppedPolicy => "dropped_policy",
            Outcome::DroppedInvalid => "dropped_invalid",
        }
    }

    pub const ALL: [Outcome; 4] = [
        Outcome::Scrubbed,
        Outcome::ForwardedUnscrubbed,
        Outcome::DroppedPolicy,
        Outcome::DroppedInvalid,
    ];
}

/// The end of a replay payload's scrub, the same for recordings and videos: new bytes (if anything changed) and
/// "scrubbed", or, when it could not be decoded, the whole replay dropped as invalid (never forwarded raw).
fn finish_replay<E>(
    mut item: Item,
    scrubbed: Result<Option<Vec<u8>>, E>,
    format: Format,
    cx: &mut Ctx<'_, '_>,
) -> Option<Item> {
    match scrubbed {
        Ok(scrubbed) => {
            if let Some(bytes) = scrubbed {
                item.set_payload(Bytes::from(bytes));
            }
            cx.report.count(format, Outcome::Scrubbed);
            Some(item)
        }
        Err(_) => {
            cx.report.count(format, Outcome::DroppedInvalid);
            cx.report.drop_replay(item.ty(), DropReason::InvalidReplay);
            None
        }
    }
}

#[cfg(test)]
mod tests;
