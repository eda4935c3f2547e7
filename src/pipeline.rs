//! `process`: one envelope in, the scrubbed envelope and a report out. Synchronous and pure, so the server and
//! `scrub-relay scrub` do exactly the same thing.
//!
//! Per item: dispatch by type to its payload format in [`crate::payload`] (JSON payloads are parsed and walked; text
//! attachments get the value detectors; binary content and unparseable JSON follow the rules' policy), which drops
//! filtered transactions and segment spans, scrubs, truncates, and re-encodes *only* if something changed, so
//! untouched items stay byte-identical. The envelope
//! header (`trace.transaction`, `trace.user_segment`) is scrubbed too; `dsn` is left alone because its public key
//! routes the envelope upstream and is not a secret.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::envelope::{Envelope, Item, ItemType};
use crate::payload::{self, Ctx, Format, Outcome};
use crate::rules::{CompiledRules, Engine};
use crate::scrub::{Change, Scope, Scrubber};

pub use crate::scrub::ChangeAction;

/// Options for one call of [`process`].
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// The project the envelope is for; selects per-project overrides.
    pub project_id: Option<u64>,
    /// Fill [`Report::changes`] (paths and rule ids, never values).
    pub explain: bool,
    /// Walk every JSON item as a `serde_json::Value` tree instead of streaming it. The result is the same JSON;
    /// this exists so tests can compare the two walks and benchmarks can measure them.
    pub tree_walk_only: bool,
    /// Caps what a compressed payload inside an item (a replay recording, a minidump) may inflate to, below its
    /// format's own cap. Past it, processing stops and [`Report::past_inflate_cap`] is set: the small processing
    /// lane uses this so a small envelope holding a bomb moves to the large lane instead of inflating there.
    pub inflate_cap: Option<usize>,
}

/// The result of [`process`].
#[derive(Debug, Clone)]
pub struct Processed {
    /// Kept items, scrubbed, with the header scrubbed. In dry-run mode: the input, unchanged.
    pub envelope: Envelope,
    pub report: Report,
}

/// What [`process`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Rule id → values redacted (in dry-run mode: what would have been redacted).
    pub redactions: BTreeMap<String, u64>,
    /// Truncation field name (as configured) → values truncated.
    pub truncations: BTreeMap<String, u64>,
    /// Items removed, with why. Empty in dry-run mode (see `would_drop`).
    #[serde(serialize_with = "serialize_dropped")]
    pub dropped: Vec<(ItemType, DropReason)>,
    /// In dry-run mode: the items that would have been removed.
    #[serde(serialize_with = "serialize_dropped")]
    pub would_drop: Vec<(ItemType, DropReason)>,
    /// Spans removed from span containers that themselves were kept.
    pub dropped_spans: u64,
    /// JSON items the streaming walk left to the tree walk: keys with escapes or emails, very deep nesting, items a
    /// drop rule removes, JSON that does not parse. The slow path; see `scrub::stream`. Not part of the report
    /// `scrub-relay scrub` prints: it says how, not what.
    #[serde(skip)]
    pub tree_walked_items: u64,
    /// Minidumps by outcome (`scrubbed`, `unchanged`, `malformed`, ...; see `payload::minidump::OUTCOMES`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub minidumps: BTreeMap<&'static str, u64>,
    /// Only filled when `ProcessOptions::explain` is set.
    pub changes: Vec<Change>,
    pub dry_run: bool,
    /// Outcomes of the payload formats that are not plain JSON (replays, attachments), for the metrics.
    #[serde(skip)]
    pub payloads: BTreeMap<(Format, Outcome), u64>,
    /// Set when a replay item was removed: the rest of its replay goes too, for this reason.
    #[serde(skip)]
    pub(crate) replay_dropped: Option<DropReason>,
    /// A compressed payload inflates past `ProcessOptions::inflate_cap`: processing stopped there, and the
    /// envelope is incomplete; process it again without the cap.
    #[serde(skip)]
    pub past_inflate_cap: bool,
}

impl Report {
    /// Total number of redactions over all rules.
    pub fn total_redactions(&self) -> u64 {
        self.redactions.values().sum()
    }

    /// Counts one payload's outcome.
    pub(crate) fn count(&mut self, format: Format, outcome: Outcome) {
        *self.payloads.entry((format, outcome)).or_default() += 1;
    }

    /// Records a removed replay item; the pipeline then removes the rest of the replay with the same reason.
    pub(crate) fn drop_replay(&mut self, ty: ItemType, reason: DropReason) {
        self.dropped.push((ty, reason));
        self.replay_dropped.get_or_insert(reason);
    }
}

fn serialize_dropped<S: serde::Serializer>(items: &[(ItemType, DropReason)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for (ty, reason) in items {
        seq.serialize_element(&(ty.as_str(), reason.as_str()))?;
    }
    seq.end()
}

/// Why an item was removed. `as_str` gives bounded metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A transaction or span segment of a health-check or static route.
    FilteredRoute,
    /// Binary content that cannot be scrubbed, with `binary_items: drop`.
    BinaryAttachment,
    /// A JSON item that did not parse, with `unparseable_json: drop` (or not text at all).
    UnparseableJson,
    /// A replay recording or video that could not be decoded, and the rest of its replay.
    InvalidReplay,
    /// A replay removed by `drop.replay_video: drop`.
    ReplayPolicy,
}

impl DropReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::FilteredRoute => "filtered_route",
            DropReason::BinaryAttachment => "binary_attachment",
            DropReason::UnparseableJson => "unparseable_json",
            DropReason::InvalidReplay => "invalid_replay",
            DropReason::ReplayPolicy => "replay_policy",
        }
    }

    pub const ALL: [DropReason; 5] = [
        DropReason::FilteredRoute,
        DropReason::BinaryAttachment,
        DropReason::UnparseableJson,
        DropReason::InvalidReplay,
        DropReason::ReplayPolicy,
    ];
}

/// Scrubs one envelope. See the module docs.
pub fn process(envelope: Envelope, rules: &CompiledRules, options: &ProcessOptions) -> Processed {
    let engine = rules.engine(options.project_id);
    if rules.dry_run() {
        let original = envelope.clone();
        let Processed { mut report, .. } = process_with(envelope, engine, options);
        report.dry_run = true;
        report.would_drop = std::mem::take(&mut report.dropped);
        return Processed {
            envelope: original,
            report,
        };
    }
    process_with(envelope, engine, options)
}

fn process_with(envelope: Envelope, engine: &Engine, options: &ProcessOptions) -> Processed {
    let Envelope { mut headers, items } = envelope;
    let mut scrubber = Scrubber::new(engine, options.explain);
    let stream = !options.tree_walk_only;
    let mut report = Report::default();

    scrubber.begin_item(None, None, false);
    {
        let mut path = Vec::new();
        for (key, value) in headers.iter_mut() {
            if matches!(key.as_str(), "event_id" | "sent_at" | "dsn" | "sdk") {
                continue;
            }
            path.push(crate::scrub::Seg::Key(key.as_str()));
            let scope = if key == "trace" { Scope::Dsc } else { Scope::Data };
            scrubber.walk_value(value, scope, &mut path);
            path.pop();
        }
    }

    let mut kept = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let ty = item.ty();
        let cx = &mut Ctx {
            scrubber: &mut scrubber,
            report: &mut report,
            stream,
            inflate_cap: options.inflate_cap.unwrap_or(usize::MAX),
        };
        if let Some(item) = process_item(item, index, ty, cx) {
            kept.push(item);
        }
        if report.past_inflate_cap {
            break;
        }
    }

    // A replay is all or nothing: Sentry cannot play a recording without its event, nor use an event without one.
    if let Some(reason) = report.replay_dropped {
        kept.retain(|item| {
            let ty = item.ty();
            let replay = matches!(
                ty,
                ItemType::ReplayEvent | ItemType::ReplayRecording | ItemType::ReplayVideo
            );
            if replay {
                report.dropped.push((ty, reason));
            }
            !replay
        });
    }

    let tally = scrubber.into_tally();
    report.redactions = tally.redactions;
    report.truncations = tally.truncations;
    report.changes = tally.changes;
    let mut out = Envelope::new(headers);
    out.items = kept;
    Processed { envelope: out, report }
}

/// Item types whose payload Sentry reads `_meta` from.
fn carries_meta(ty: ItemType) -> bool {
    matches!(
        ty,
        ItemType::Event | ItemType::Transaction | ItemType::Feedback | ItemType::ReplayEvent
    )
}

fn process_item(item: Item, index: usize, ty: ItemType, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    cx.scrubber.begin_item(Some(index), Some(ty), carries_meta(ty));
    // One line per payload format; each module decodes, scrubs through the same scrubber, and encodes.
    match ty {
        // Counts of discarded events by reason and category: nothing to scrub, nothing to break.
        ItemType::ClientReport => Some(item),
        ItemType::Attachment => payload::attachment::process(item, cx),
        ItemType::RawSecurity | ItemType::Nel => payload::security::process(item, ty, cx),
        ItemType::ReplayRecording => payload::replay_recording::process(item, cx),
        ItemType::ReplayVideo => payload::replay_video::process(item, cx),
        _ => match payload::json::scope(&item, ty) {
            Some(scope) => payload::json::process(item, ty, scope, cx),
            // Statsd lines and unknown items that are not JSON.
            None => payload::text::process(item, cx),
        },
    }
}
