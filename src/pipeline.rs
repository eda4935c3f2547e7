//! `process`: one envelope in, the scrubbed envelope and a report out. Synchronous and pure, so the server and
//! `scrub-relay scrub` do exactly the same thing.
//!
//! Per item: decide by type (JSON payloads are parsed and walked; text attachments get the value detectors; binary
//! content and unparseable JSON follow the rules' policy), drop filtered transactions and segment spans, scrub,
//! truncate, and re-serialize *only* if something changed, so untouched items stay byte-identical. The envelope
//! header (`trace.transaction`, `trace.user_segment`) is scrubbed too; `dsn` is left alone because its public key
//! routes the envelope upstream and is not a secret.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::envelope::{Envelope, Item, ItemType};
use crate::filter;
use crate::rules::{BinaryPolicy, CompiledRules, Engine, UnparseablePolicy};
use crate::scrub::stream::{self, DropCheck};
use crate::scrub::{Change, Scope, Scrubber, TextMode, merge_meta};

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
    /// Only filled when `ProcessOptions::explain` is set.
    pub changes: Vec<Change>,
    pub dry_run: bool,
}

impl Report {
    /// Total number of redactions over all rules.
    pub fn total_redactions(&self) -> u64 {
        self.redactions.values().sum()
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
}

impl DropReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::FilteredRoute => "filtered_route",
            DropReason::BinaryAttachment => "binary_attachment",
            DropReason::UnparseableJson => "unparseable_json",
        }
    }

    pub const ALL: [DropReason; 3] = [
        DropReason::FilteredRoute,
        DropReason::BinaryAttachment,
        DropReason::UnparseableJson,
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
        if let Some(item) = process_item(item, index, ty, stream, &mut scrubber, &mut report) {
            kept.push(item);
        }
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

fn process_item(
    mut item: Item,
    index: usize,
    ty: ItemType,
    stream: bool,
    scrubber: &mut Scrubber<'_>,
    report: &mut Report,
) -> Option<Item> {
    let engine = scrubber.engine;
    scrubber.begin_item(Some(index), Some(ty), carries_meta(ty));
    let Some(scope) = json_scope(&item, ty) else {
        return match ty {
            // Counts of discarded events by reason and category: nothing to scrub, nothing to break.
            ItemType::ClientReport => Some(item),
            ItemType::Attachment => scrub_attachment(item, stream, scrubber, report),
            // Replay recordings and videos, statsd lines, and unknown items that are not JSON.
            _ => scrub_text_or_binary(item, scrubber, report),
        };
    };
    if stream {
        let check = match ty {
            ItemType::Transaction => DropCheck::Transaction,
            ItemType::Span => DropCheck::SegmentSpans,
            _ => DropCheck::None,
        };
        // When the stream gives up (not JSON, a shape it leaves to the tree, an item a drop rule removes), the tree
        // walk below decides, from a clean slate.
        if streamed(&mut item, scope, check, scrubber, report) {
            return Some(item);
        }
    }
    let Some(mut value) = parse_json(&item) else {
        return unparseable(item, scrubber, report, ty);
    };
    match ty {
        ItemType::Transaction if filter::should_drop_transaction(&value, &engine.routes) => {
            report.dropped.push((ty, DropReason::FilteredRoute));
            return None;
        }
        ItemType::Span => {
            if let Some(Value::Array(spans)) = value.get_mut("items") {
                let removed = filter::filter_span_items(spans, &engine.routes);
                if removed > 0 {
                    if spans.is_empty() {
                        report.dropped.push((ty, DropReason::FilteredRoute));
                        return None;
                    }
                    report.dropped_spans += removed as u64;
                    let remaining = spans.len();
                    item.headers_mut().insert("item_count".into(), Value::from(remaining));
                    scrubber.changed = true;
                }
            }
        }
        _ => {}
    }
    walk_and_store(item, value, scope, scrubber)
}

/// Scrubs a JSON payload with the streaming walk, storing the result if something changed. `false` (item and
/// scrubber untouched) when the stream gave up and the tree walk must decide.
fn streamed(item: &mut Item, scope: Scope, check: DropCheck, scrubber: &mut Scrubber<'_>, report: &mut Report) -> bool {
    match stream::scrub_item_json(scrubber, item.payload(), scope, check) {
        Ok(None) => true,
        Ok(Some(scrubbed)) => {
            item.set_payload(Bytes::from(scrubbed));
            true
        }
        Err(_) => {
            report.tree_walked_items += 1;
            false
        }
    }
}

/// The scope a JSON item's payload is walked in, or `None` when the item is not walked as JSON.
fn json_scope(item: &Item, ty: ItemType) -> Option<Scope> {
    match ty {
        ItemType::Span => Some(Scope::SpanContainer),
        ItemType::Log => Some(Scope::LogContainer),
        ItemType::TraceMetric => Some(Scope::MetricContainer),
        ItemType::Session | ItemType::Sessions => Some(Scope::Session),
        ItemType::Event
        | ItemType::Transaction
        | ItemType::Feedback
        | ItemType::UserReport
        | ItemType::ReplayEvent
        | ItemType::CheckIn
        | ItemType::Profile
        | ItemType::ProfileChunk => Some(Scope::EventRoot),
        ItemType::Other if looks_like_json(item) => Some(Scope::EventRoot),
        _ => None,
    }
}

/// An item of a type this relay does not know is walked as JSON when it says it is JSON or starts like it.
fn looks_like_json(item: &Item) -> bool {
    item.content_type().is_some_and(|c| c.contains("json"))
        || item
            .payload()
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[')
}

fn parse_json(item: &Item) -> Option<Value> {
    serde_json::from_slice::<Value>(item.payload()).ok()
}

/// A JSON item that did not parse: never forwarded raw.
fn unparseable(mut item: Item, scrubber: &mut Scrubber<'_>, report: &mut Report, ty: ItemType) -> Option<Item> {
    match scrubber.engine.policy.unparseable_json {
        UnparseablePolicy::Drop => {
            report.dropped.push((ty, DropReason::UnparseableJson));
            None
        }
        UnparseablePolicy::ScrubAsText => match scrub_utf8_payload(&mut item, scrubber) {
            Ok(()) => Some(item),
            Err(_) => {
                report.dropped.push((ty, DropReason::UnparseableJson));
                None
            }
        },
    }
}

/// Walks a parsed payload and stores it back only if something changed.
fn walk_and_store(mut item: Item, mut value: Value, scope: Scope, scrubber: &mut Scrubber<'_>) -> Option<Item> {
    let changed_before_walk = scrubber.changed;
    {
        let mut path = Vec::new();
        scrubber.walk_value(&mut value, scope, &mut path);
    }
    if scrubber.changed || changed_before_walk {
        if scrubber.collect_meta
            && let Value::Object(root) = &mut value
        {
            let meta = std::mem::take(&mut scrubber.meta);
            merge_meta(root, meta);
        }
        // Serializing a `Value` cannot fail (string keys, finite numbers from the parser).
        let bytes = serde_json::to_vec(&value).expect("JSON value serializes");
        item.set_payload(Bytes::from(bytes));
    }
    Some(item)
}

fn scrub_attachment(mut item: Item, stream: bool, scrubber: &mut Scrubber<'_>, report: &mut Report) -> Option<Item> {
    // File names are chosen by apps (`invoice-jane.doe@example.com.pdf`): detectors only, no key rules.
    if let Some(Value::String(name)) = item.headers_mut().get_mut("filename") {
        scrubber.scrub_text(name, TextMode::Source, &[crate::scrub::Seg::Key("filename")]);
    }
    let json_like = item.content_type().is_some_and(|c| c.contains("json"))
        || item.filename().is_some_and(|f| f.ends_with(".json"));
    if json_like {
        scrubber.collect_meta = false;
        // Not JSON after all is scrubbed as text below.
        if stream && streamed(&mut item, Scope::Data, DropCheck::None, scrubber, report) {
            return Some(item);
        }
        if let Ok(value) = serde_json::from_slice::<Value>(item.payload()) {
            return walk_and_store(item, value, Scope::Data, scrubber);
        }
    }
    scrub_text_or_binary(item, scrubber, report)
}

/// Applies the value detectors to a payload that is valid UTF-8 text; `Err` (payload untouched) when it is not.
fn scrub_utf8_payload(item: &mut Item, scrubber: &mut Scrubber<'_>) -> Result<(), std::str::Utf8Error> {
    let mut text = std::str::from_utf8(item.payload())?.to_string();
    if scrubber.scrub_text(&mut text, TextMode::Plain, &Vec::new()) {
        item.set_payload(Bytes::from(text));
    }
    Ok(())
}

/// Valid UTF-8 gets the value detectors; anything else follows the binary policy.
fn scrub_text_or_binary(mut item: Item, scrubber: &mut Scrubber<'_>, report: &mut Report) -> Option<Item> {
    let ty = item.ty();
    match scrub_utf8_payload(&mut item, scrubber) {
        Ok(()) => Some(item),
        Err(_) => match scrubber.engine.policy.binary_items {
            BinaryPolicy::Forward => Some(item),
            BinaryPolicy::Drop => {
                report.dropped.push((ty, DropReason::BinaryAttachment));
                None
            }
        },
    }
}
