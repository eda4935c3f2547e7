//! Payload formats: one module per way an item's bytes are encoded. Each decodes its format, scrubs what it holds
//! through the envelope's one [`Scrubber`] (so rules, detectors, counts and `_meta` are shared), and encodes the
//! result; the pipeline picks the module by item type in one `match`, so a new format is one file and one line.
//!
//! - [`json`]: events, transactions, spans, logs and every other JSON item (streaming walk, tree walk when needed).
//! - [`text`]: UTF-8 text gets the value detectors; anything else follows the binary policy.
//! - [`attachment`]: picks JSON, text or the attachment policy for an `attachment` item.
//! - [`security`]: browser reports (`raw_security`, `nel`): URLs, referrers, samples and policies.
//! - [`minidump`]: native crash dumps (`event.minidump` attachments), scrubbed in place.

pub mod attachment;
pub mod json;
pub mod minidump;
pub mod security;
pub mod text;

use crate::pipeline::Report;
use crate::scrub::Scrubber;

/// What every format module gets for one item: the envelope's scrubber and report, and how to walk JSON.
pub struct Ctx<'s, 'e> {
    pub scrubber: &'s mut Scrubber<'e>,
    pub report: &'s mut Report,
    /// Stream over JSON (the relay's way) rather than build a tree (`ProcessOptions::tree_walk_only`).
    pub stream: bool,
}
