//! The streaming walk: one pass over a JSON text that copies what no rule touches and rewrites only what a rule
//! changes, without building a `serde_json::Value` tree of the whole item.
//!
//! It follows the same [`Scope`]s and calls the same rule functions as the tree walk in `walk.rs`, so both apply one
//! policy. Small subtrees whose rules need a whole object or list at once (header lists of pairs, values under
//! sensitive keys) are parsed into a `Value` and handed to the tree walk. What it does not handle at all (keys with
//! escapes or emails, very deep nesting, duplicate span lists in a container a drop rule removes spans from) makes it
//! give up with [`Bail::NeedsTree`], and the caller walks that item as a tree; a transaction on a drop route ends it
//! with [`Bail::Dropped`], and the caller drops it without a tree. A span container whose segment span may be on a
//! drop route ends it with [`Bail::SpansDropped`]: the caller streams it again, removing those spans and their
//! children ([`DropCheck::RemoveSegmentSpans`]). Both walks give the same JSON value; the streamed text differs only
//! in whitespace, in where `_meta` sits among the root's keys, and in keeping numbers as written; the trail lists
//! the same changes, in the order the text was read.
//!
//! Input is validated as strictly as `serde_json` does (UTF-8, escapes and surrogates, control characters, number
//! grammar and range), because an item the stream accepts is forwarded without the tree ever seeing it.
//! Why streaming: see "Tree walk vs streaming" in `benches/README.md`.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::walk::{AttributeRule, Field, attribute_value_scope, is_scalar_typed};
use super::{Scope, Scrubber, Seg, merge_meta, meta};
use crate::filter;

/// Why the streaming walk gave up on a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bail {
    /// Not JSON (the tree walk's parser would refuse it too).
    Invalid,
    /// Valid so far, but the tree walk must handle it (see the module docs).
    NeedsTree,
    /// Valid, and a transaction that a drop route removes ([`DropCheck::Transaction`]): its name and `request.url`
    /// read as the tree walk reads them (the last of duplicate keys wins, whatever its type); or a span container
    /// whose spans all go ([`DropCheck::RemoveSegmentSpans`]).
    Dropped,
    /// Valid so far, and a segment span of a span container may be on a drop route ([`DropCheck::SegmentSpans`]):
    /// stream it again with [`DropCheck::RemoveSegmentSpans`].
    SpansDropped,
}

/// Which drop rule the stream checks while it reads an item, giving up when one applies (the caller removes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropCheck {
    None,
    /// A transaction by its name or `request.url`.
    Transaction,
    /// Segment spans of a span container by their name or route attributes: gives up with [`Bail::SpansDropped`]
    /// when any value of them, duplicates included, hits a route.
    SegmentSpans,
    /// Removes the segment spans on a drop route and the spans below them, as `filter::filter_span_items` does on
    /// the tree (the spans are read once first to find them), and gives up with [`Bail::Dropped`] if none is left.
    RemoveSegmentSpans,
}

/// What the streaming walk made of an item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Streamed {
    /// The scrubbed payload; `None` when nothing changed.
    pub(crate) payload: Option<Vec<u8>>,
    /// Spans removed by [`DropCheck::RemoveSegmentSpans`], and spans left.
    pub(crate) spans_removed: usize,
    pub(crate) spans_kept: usize,
}

/// Nesting deeper than this is left to the tree walk (serde_json itself stops at 128).
const MAX_DEPTH: usize = 120;

/// Scrubs one item's JSON payload. A `None` payload: nothing changed, forward the payload as it is. On `Err` the
/// scrubber's counters, trail and `_meta` are as they were before the call.
pub(crate) fn scrub_item_json(
    scrubber: &mut Scrubber<'_>,
    payload: &[u8],
    scope: Scope,
    check: DropCheck,
) -> Result<Streamed, Bail> {
    let text = std::str::from_utf8(payload).map_err(|_| Bail::Invalid)?;
    let changed_before = scrubber.changed;
    let result = with_rollback(scrubber, |scrubber| {
        let mut stream = Stream::new(scrubber, text, check);
        stream.document(scope, Vec::new())?;
        if stream.spans_removed > 0 {
            if stream.spans_kept == 0 {
                return Err(Bail::Dropped);
            }
            stream.scrubber.changed = true;
        }
        Ok((stream.out, stream.spans_removed, stream.spans_kept))
    });
    if result.is_err() {
        scrubber.meta.clear();
        scrubber.changed = changed_before;
    }
    let (out, spans_removed, spans_kept) = result?;
    Ok(Streamed {
        payload: scrubber.changed.then_some(out),
        spans_removed,
        spans_kept,
    })
}

/// Scrubs JSON found inside a string (`nested` is already raised by the caller). `Ok(None)`: nothing changed.
pub(crate) fn scrub_nested_json(
    scrubber: &mut Scrubber<'_>,
    json: &str,
    path: &[Seg<'_>],
) -> Result<Option<Vec<u8>>, Bail> {
    let changed_before = scrubber.changed;
    let result = with_rollback(scrubber, |scrubber| {
        let mut stream = Stream::new(scrubber, json, DropCheck::None);
        stream.document(Scope::Data, path.to_vec())?;
        Ok(stream.out)
    });
    if result.is_err() {
        scrubber.changed = changed_before;
    }
    let out = result?;
    Ok(scrubber.changed.then_some(out))
}

/// Runs `f` against a fresh tally and adds it to the scrubber's only if `f` succeeds, so a walk that gives up
/// half-way does not count its redactions twice when the tree walk redoes them.
fn with_rollback<T>(
    scrubber: &mut Scrubber<'_>,
    f: impl FnOnce(&mut Scrubber<'_>) -> Result<T, Bail>,
) -> Result<T, Bail> {
    let saved = std::mem::take(&mut scrubber.tally);
    let result = f(scrubber);
    let partial = std::mem::replace(&mut scrubber.tally, saved);
    if result.is_ok() {
        scrubber.tally.absorb(partial);
    }
    result
}

/// Whether a span may be a segment on a drop route ([`DropCheck::SegmentSpans`]): any of its values, duplicate
/// keys included, says so. A superset of what the tree walk's filter drops (it reads the last of duplicates).
#[derive(Debug, Default)]
struct SegmentFacts {
    is_segment: bool,
    hits_route: bool,
}

/// What [`DropCheck::RemoveSegmentSpans`] reads of a span, as the tree walk's filter reads it from a `Value` (the
/// last of duplicate keys wins, whatever it holds).
#[derive(Debug, Default)]
struct SpanFacts<'a> {
    is_segment: bool,
    name: Option<Cow<'a, str>>,
    span_id: Option<Cow<'a, str>>,
    parent_span_id: Option<Cow<'a, str>>,
    /// By [`SPAN_ATTRIBUTES`].
    attributes: [Option<Cow<'a, str>>; 5],
}

/// The attributes [`SpanFacts`] keeps: the segment's route and its id.
const SPAN_ATTRIBUTES: [&str; 5] = [
    filter::SEGMENT_ROUTE_ATTRIBUTES[0],
    filter::SEGMENT_ROUTE_ATTRIBUTES[1],
    filter::SEGMENT_ROUTE_ATTRIBUTES[2],
    filter::SEGMENT_ROUTE_ATTRIBUTES[3],
    "sentry.segment.id",
];

impl SpanFacts<'_> {
    fn attribute(&self, key: &str) -> Option<&str> {
        let index = SPAN_ATTRIBUTES.iter().position(|k| *k == key)?;
        self.attributes[index].as_deref()
    }
}

/// What the drop rules need from a transaction, read before anything is scrubbed.
#[derive(Debug, Default)]
struct TransactionFacts<'a> {
    name: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
}

struct Stream<'a, 's, 'e> {
    scrubber: &'s mut Scrubber<'e>,
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    depth: usize,
    check: DropCheck,
    segment: SegmentFacts,
    transaction: TransactionFacts<'a>,
    spans_removed: usize,
    spans_kept: usize,
}

impl<'a, 's, 'e> Stream<'a, 's, 'e> {
    fn new(scrubber: &'s mut Scrubber<'e>, text: &'a str, check: DropCheck) -> Self {
        let check = if scrubber.engine.routes.is_empty() {
            DropCheck::None
        } else {
            check
        };
        Stream {
            scrubber,
            text,
            bytes: text.as_bytes(),
            pos: 0,
            out: Vec::with_capacity(text.len() + 64),
            depth: 0,
            check,
            segment: SegmentFacts::default(),
            transaction: TransactionFacts::default(),
            spans_removed: 0,
            spans_kept: 0,
        }
    }

    /// The whole text: one value and nothing after it but whitespace.
    fn document<'p>(&mut self, scope: Scope, mut path: Vec<Seg<'p>>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        self.skip_ws();
        self.value(scope, &mut path, None)?;
        self.skip_ws();
        if self.pos != self.bytes.len() {
            return Err(Bail::Invalid);
        }
        if self.check == DropCheck::Transaction {
            let facts = &self.transaction;
            if filter::transaction_hits_route(
                facts.name.as_deref(),
                facts.url.as_deref(),
                &self.scrubber.engine.routes,
            ) {
                return Err(Bail::Dropped);
            }
        }
        Ok(())
    }

    /// Any value in a scope. `field` is the object key it sits under, for truncation limits.
    fn value<'p>(&mut self, scope: Scope, path: &mut Vec<Seg<'p>>, field: Option<&'p str>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        match self.peek() {
            Some(b'{') => self.object(scope, path),
            Some(b'[') => self.array(scope, path),
            Some(b'"') => self.string(scope, path, field),
            Some(_) => {
                let start = self.pos;
                self.skip_scalar()?;
                self.out.extend_from_slice(&self.bytes[start..self.pos]);
                Ok(())
            }
            None => Err(Bail::Invalid),
        }
    }

    fn object<'p>(&mut self, scope: Scope, path: &mut Vec<Seg<'p>>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        if scope == Scope::Attributes {
            return self.attributes(path);
        }
        self.enter()?;
        let engine = self.scrubber.engine;
        let key_rules = scope.applies_key_rules();
        let strip_pii = !engine.send_default_pii;
        let root_meta = self.depth == 1 && self.scrubber.collect_meta && self.scrubber.nested == 0;
        let span_facts = scope == Scope::SpanV2 && self.check == DropCheck::SegmentSpans;
        if span_facts {
            self.segment = SegmentFacts::default();
        }
        let removing_spans = scope == Scope::SpanContainer && self.check == DropCheck::RemoveSegmentSpans;
        let mut items_seen = false;
        let mut sdk_meta = None;
        let (mut first_read, mut first_written) = (true, true);
        self.pos += 1;
        self.out.push(b'{');
        while let Some(key) = self.next_key(&mut first_read)? {
            let facts = self.scrubber.key_facts(scope, key);
            if key_rules && facts.has_at {
                // Keys holding emails are renamed, which needs the whole object (collisions): tree walk.
                return Err(Bail::NeedsTree);
            }
            if strip_pii && facts.removed_without_pii && !self.at_null() {
                self.skip_value()?;
                self.scrubber.record_pii_removal(path, key);
                continue;
            }
            if root_meta && key == "_meta" {
                let start = self.pos;
                self.skip_value()?;
                sdk_meta = Some(&self.text[start..self.pos]);
                continue;
            }
            if span_facts {
                self.note_span_field(key)?;
            }
            if removing_spans && key == "items" && std::mem::replace(&mut items_seen, true) {
                // The tree walk filters only the last of duplicate `items`.
                return Err(Bail::NeedsTree);
            }
            if self.check == DropCheck::Transaction {
                self.note_transaction_field(scope, key)?;
            }
            self.write_key(key, &mut first_written);
            path.push(Seg::Key(key));
            let result = match facts.field {
                Field::Skip => self.copy_value(),
                Field::Redact(rule) => self.redact(rule.name(), path),
                Field::Walk(child) => self.value(child, path, Some(key)),
            };
            path.pop();
            result?;
        }
        if root_meta {
            self.write_meta(sdk_meta, &mut first_written)?;
        }
        self.out.push(b'}');
        self.depth -= 1;
        Ok(())
    }

    fn array<'p>(&mut self, scope: Scope, path: &mut Vec<Seg<'p>>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        if scope.takes_pairs() {
            // Header, query, cookie and tag lists: pairs are read as name and value, and client-IP headers are
            // removed from the list. Small, so the tree walk does it.
            return self.tree_value(path, |scrubber, value, path| scrubber.walk_value(value, scope, path));
        }
        let removed = if scope == Scope::SpanItems && self.check == DropCheck::RemoveSegmentSpans {
            self.spans_to_remove()?
        } else {
            Vec::new()
        };
        self.enter()?;
        let element = scope.element();
        self.out.push(b'[');
        // Indices count the elements written: removed spans are not in the tree the other walk sees.
        let (mut read, mut index) = (0, 0);
        self.elements(|stream| {
            if removed.get(read).copied().unwrap_or(false) {
                stream.skip_value()?;
                stream.spans_removed += 1;
            } else {
                if index > 0 {
                    stream.out.push(b',');
                }
                path.push(Seg::Index(index));
                let result = stream.value(element, path, None);
                path.pop();
                result?;
                index += 1;
            }
            read += 1;
            Ok(())
        })?;
        if !removed.is_empty() {
            self.spans_kept += index;
        }
        self.out.push(b']');
        self.depth -= 1;
        Ok(())
    }

    /// A string value: detectors and key rules in text, then the truncation limit of the key it sits under.
    fn string<'p>(&mut self, scope: Scope, path: &mut Vec<Seg<'p>>, field: Option<&'p str>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        let start = self.pos;
        let content = self.read_string()?;
        let scrubbed = self.scrubber.scrub_string_in(&content, scope, path);
        let truncated = match field {
            Some(key) => self
                .scrubber
                .truncate_str(key, scrubbed.as_deref().unwrap_or(&content), path),
            None => None,
        };
        match truncated.or(scrubbed) {
            Some(new) => write_json_string(&mut self.out, &new),
            None => self.out.extend_from_slice(&self.bytes[start..self.pos]),
        }
        Ok(())
    }

    /// A value under a sensitive key: strings here, anything else through the tree walk.
    fn redact<'p>(&mut self, rule: &'static str, path: &mut Vec<Seg<'p>>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        if self.peek() != Some(b'"') {
            return self.tree_value(path, |scrubber, value, path| scrubber.redact(value, rule, path));
        }
        let start = self.pos;
        let content = self.read_string()?;
        match self.scrubber.redact_str(&content, rule, path) {
            Some(replacement) => write_json_string(&mut self.out, &replacement),
            None => self.out.extend_from_slice(&self.bytes[start..self.pos]),
        }
        Ok(())
    }

    /// Typed attributes of v2 spans, logs and metrics: `{name: {"type", "value"}}`.
    fn attributes<'p>(&mut self, path: &mut Vec<Seg<'p>>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        self.enter()?;
        let (mut first_read, mut first_written) = (true, true);
        self.pos += 1;
        self.out.push(b'{');
        while let Some(key) = self.next_key(&mut first_read)? {
            if self.check == DropCheck::SegmentSpans && filter::SEGMENT_ROUTE_ATTRIBUTES.contains(&key) {
                self.segment.hits_route |= self.attribute_hits_route(key)?;
                self.give_up_on_dropped_segment()?;
            }
            let rule = self.scrubber.attribute_rule(key);
            if let AttributeRule::Remove(rule) = rule {
                self.skip_value()?;
                self.scrubber.record_attribute_removal(path, key, rule);
                continue;
            }
            if let AttributeRule::Redact(rule) = rule {
                let start = self.pos;
                self.skip_value()?;
                let mut value: Value = parse(&self.text[start..self.pos])?;
                if is_scalar_typed(&value) {
                    // A string in an `integer` attribute would break its type: the attribute goes.
                    self.scrubber.record_attribute_removal(path, key, rule);
                    continue;
                }
                self.write_key(key, &mut first_written);
                path.push(Seg::Key(key));
                self.walk_tree(&mut value, start, path, |scrubber, value, path| {
                    scrubber.redact_attribute(value, rule, path)
                });
                path.pop();
                continue;
            }
            self.write_key(key, &mut first_written);
            path.push(Seg::Key(key));
            let result = match rule {
                AttributeRule::Walk => self.attribute_value(key, path),
                _ => self.copy_value(),
            };
            path.pop();
            result?;
        }
        self.out.push(b'}');
        self.depth -= 1;
        Ok(())
    }

    /// One attribute to walk: in a typed attribute only `value` (by the attribute's scope and length limit), in an
    /// untyped one everything, as data.
    fn attribute_value<'p>(&mut self, key: &'p str, path: &mut Vec<Seg<'p>>) -> Result<(), Bail>
    where
        'a: 'p,
    {
        if self.peek() != Some(b'{') || !self.object_has_key("value")? {
            return self.value(Scope::Data, path, None);
        }
        self.enter()?;
        let (mut first_read, mut first_written) = (true, true);
        self.pos += 1;
        self.out.push(b'{');
        while let Some(member) = self.next_key(&mut first_read)? {
            self.write_key(member, &mut first_written);
            if member == "value" {
                path.push(Seg::Key("value"));
                let result = self.value(attribute_value_scope(key), path, Some(key));
                path.pop();
                result?;
            } else {
                self.copy_value()?;
            }
        }
        self.out.push(b'}');
        self.depth -= 1;
        Ok(())
    }

    /// Parses the value at the cursor into a tree, lets `walk` change it, and writes it (as it was, if unchanged).
    fn tree_value<'p>(
        &mut self,
        path: &[Seg<'p>],
        walk: impl for<'t> FnOnce(&mut Scrubber<'e>, &'t mut Value, &mut Vec<Seg<'t>>),
    ) -> Result<(), Bail>
    where
        'a: 'p,
    {
        let start = self.pos;
        self.skip_value()?;
        let mut value: Value = parse(&self.text[start..self.pos])?;
        self.walk_tree(&mut value, start, path, walk);
        Ok(())
    }

    /// Walks a parsed value (read from `start` up to the cursor) and writes it.
    fn walk_tree(
        &mut self,
        value: &mut Value,
        start: usize,
        path: &[Seg<'_>],
        walk: impl for<'t> FnOnce(&mut Scrubber<'e>, &'t mut Value, &mut Vec<Seg<'t>>),
    ) {
        let changed_before = std::mem::replace(&mut self.scrubber.changed, false);
        {
            let mut tree_path: Vec<Seg<'_>> = path.to_vec();
            walk(&mut *self.scrubber, value, &mut tree_path);
        }
        if self.scrubber.changed {
            // Serializing a `Value` that came from the parser cannot fail.
            serde_json::to_writer(&mut self.out, &*value).expect("JSON value serializes");
        } else {
            self.out.extend_from_slice(&self.bytes[start..self.pos]);
        }
        self.scrubber.changed |= changed_before;
    }

    /// Writes the root's `_meta`: the SDK's own, merged with the remarks of this walk.
    fn write_meta(&mut self, sdk_meta: Option<&'a str>, first: &mut bool) -> Result<(), Bail> {
        if self.scrubber.meta.is_empty() {
            if let Some(raw) = sdk_meta {
                self.write_key("_meta", first);
                self.out.extend_from_slice(raw.as_bytes());
            }
            return Ok(());
        }
        if sdk_meta.is_none() && self.scrubber.meta.writable() {
            // Nothing to merge with: written straight from the log, without a `Value` tree.
            self.write_key("_meta", first);
            meta::write_meta(&self.scrubber.meta, &mut self.out);
            // Cleared, not dropped: its buffers serve the next item.
            self.scrubber.meta.clear();
            return Ok(());
        }
        let (start, was_first) = (self.out.len(), *first);
        self.write_key("_meta", first);
        // The SDK's `_meta` and ours merged in one pass (or, with none from the SDK, a log `write_meta` cannot
        // write, merged into an empty one).
        if meta::write_merged_meta(sdk_meta.unwrap_or("{}"), &self.scrubber.meta, &mut self.out) {
            self.scrubber.meta.clear();
            return Ok(());
        }
        // An SDK `_meta` in a form only the `Value` route reproduces byte for byte (whitespace, floats, duplicate
        // keys, ...; see `meta::write_merged_meta`): parsed, merged and written back through serde_json.
        self.out.truncate(start);
        *first = was_first;
        let mut root = Map::new();
        if let Some(raw) = sdk_meta {
            root.insert("_meta".into(), parse(raw)?);
        }
        merge_meta(&mut root, &self.scrubber.meta);
        self.scrubber.meta.clear();
        if let Some(meta) = root.get("_meta") {
            self.write_key("_meta", first);
            serde_json::to_writer(&mut self.out, meta).expect("JSON value serializes");
        }
        Ok(())
    }

    fn note_span_field(&mut self, key: &'a str) -> Result<(), Bail> {
        match key {
            "is_segment" => self.segment.is_segment |= self.bytes[self.pos..].starts_with(b"true"),
            "name" if self.peek() == Some(b'"') => {
                let name = self.peek_string()?;
                self.segment.hits_route |= self.scrubber.engine.routes.matches_name(&name);
            }
            _ => {}
        }
        self.give_up_on_dropped_segment()
    }

    /// Gives up on a span container as soon as a span may be a segment on a drop route: what was scrubbed so far is
    /// thrown away, so the sooner the better.
    fn give_up_on_dropped_segment(&self) -> Result<(), Bail> {
        if self.segment.is_segment && self.segment.hits_route {
            return Err(Bail::SpansDropped);
        }
        Ok(())
    }

    /// Notes the transaction's name and `request.url` as `filter::should_drop_transaction` reads them from the tree:
    /// a later duplicate key replaces an earlier one whatever it holds (a name that is not a string is none), and a
    /// later `request` brings its own `url` or none.
    fn note_transaction_field(&mut self, scope: Scope, key: &'a str) -> Result<(), Bail> {
        let string = |stream: &mut Self| match stream.peek() {
            Some(b'"') => stream.peek_string().map(Some),
            _ => Ok(None),
        };
        if self.depth == 1 && key == "transaction" {
            self.transaction.name = string(self)?;
        } else if self.depth == 1 && key == "request" {
            self.transaction.url = None;
        } else if self.depth == 2 && scope == Scope::Request && key == "url" {
            self.transaction.url = string(self)?;
        }
        Ok(())
    }

    /// Whether any string the route attribute `key` at the cursor holds (plain, or any `value` of a typed one)
    /// hits a drop route, without moving the cursor.
    fn attribute_hits_route(&mut self, key: &str) -> Result<bool, Bail> {
        let routes = &self.scrubber.engine.routes;
        let hits = |value: &str| filter::route_attribute_hits(key, value, routes);
        match self.peek() {
            Some(b'"') => Ok(hits(&self.peek_string()?)),
            Some(b'{') => {
                let start = self.pos;
                self.pos += 1;
                let mut first = true;
                let mut found = false;
                while let Some(member) = self.next_key(&mut first)? {
                    if member == "value" && self.peek() == Some(b'"') {
                        found |= hits(&self.read_string()?);
                    } else {
                        self.skip_value()?;
                    }
                }
                self.pos = start;
                Ok(found)
            }
            _ => Ok(false),
        }
    }

    /// Reads the span list at the cursor (without moving it) and says which spans go, by index; empty when none.
    fn spans_to_remove(&mut self) -> Result<Vec<bool>, Bail> {
        let (start, depth) = (self.pos, self.depth);
        let mut spans = Vec::new();
        self.elements(|stream| {
            spans.push(stream.span_facts()?);
            Ok(())
        })?;
        (self.pos, self.depth) = (start, depth);
        let routes = &self.scrubber.engine.routes;
        let links: Vec<filter::SpanLinks<'_>> = spans
            .iter()
            .map(|span| filter::SpanLinks {
                id: span.span_id.as_deref(),
                parent: span.parent_span_id.as_deref(),
                segment: span.attribute("sentry.segment.id"),
                dropped_segment: span.is_segment
                    && filter::segment_hits_route(span.name.as_deref(), |key| span.attribute(key), routes),
            })
            .collect();
        Ok(filter::spans_to_remove(&links).unwrap_or_default())
    }

    /// Moves through the array at the cursor (on its `[`) to past its `]`, calling `element` with the cursor on each
    /// element; `element` must move past it.
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Result<(), Bail>) -> Result<(), Bail> {
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            self.skip_ws();
            match self.next_byte() {
                Some(b',') => self.skip_ws(),
                Some(b']') => return Ok(()),
                _ => return Err(Bail::Invalid),
            }
        }
    }

    /// Enters the object at the cursor (past its `{`), or moves past a value that is not one: `false`.
    fn enter_object_or_skip(&mut self) -> Result<bool, Bail> {
        if self.peek() != Some(b'{') {
            self.skip_value()?;
            return Ok(false);
        }
        self.enter()?;
        self.pos += 1;
        Ok(true)
    }

    /// [`SpanFacts`] of the value at the cursor (none unless an object); the cursor moves past it.
    fn span_facts(&mut self) -> Result<SpanFacts<'a>, Bail> {
        let mut facts = SpanFacts::default();
        if !self.enter_object_or_skip()? {
            return Ok(facts);
        }
        let mut first = true;
        while let Some(key) = self.next_key(&mut first)? {
            match key {
                "is_segment" => {
                    facts.is_segment = self.bytes[self.pos..].starts_with(b"true");
                    self.skip_value()?;
                }
                "name" => facts.name = self.string_or_none()?,
                "span_id" => facts.span_id = self.string_or_none()?,
                "parent_span_id" => facts.parent_span_id = self.string_or_none()?,
                "attributes" => facts.attributes = self.span_attributes()?,
                _ => self.skip_value()?,
            }
        }
        self.depth -= 1;
        Ok(facts)
    }

    /// The [`SPAN_ATTRIBUTES`] of the value at the cursor (none unless an object); the cursor moves past it.
    fn span_attributes(&mut self) -> Result<[Option<Cow<'a, str>>; 5], Bail> {
        let mut attributes = <[Option<Cow<'a, str>>; 5]>::default();
        if !self.enter_object_or_skip()? {
            return Ok(attributes);
        }
        let mut first = true;
        while let Some(name) = self.next_key(&mut first)? {
            match SPAN_ATTRIBUTES.iter().position(|k| *k == name) {
                Some(index) => attributes[index] = self.attribute_string()?,
                None => self.skip_value()?,
            }
        }
        self.depth -= 1;
        Ok(attributes)
    }

    /// The string at the cursor, `None` for any other value; the cursor moves past it.
    fn string_or_none(&mut self) -> Result<Option<Cow<'a, str>>, Bail> {
        if self.peek() == Some(b'"') {
            return self.read_string().map(Some);
        }
        self.skip_value()?;
        Ok(None)
    }

    /// An attribute's string as `filter` reads it: a plain string, or a typed attribute's last `value` if that is a
    /// string; the cursor moves past it.
    fn attribute_string(&mut self) -> Result<Option<Cow<'a, str>>, Bail> {
        if self.peek() != Some(b'{') {
            return self.string_or_none();
        }
        self.enter()?;
        self.pos += 1;
        let mut first = true;
        let mut value = None;
        while let Some(member) = self.next_key(&mut first)? {
            if member == "value" {
                value = self.string_or_none()?;
            } else {
                self.skip_value()?;
            }
        }
        self.depth -= 1;
        Ok(value)
    }

    /// Whether the object at the cursor has a member `name`, without moving the cursor.
    fn object_has_key(&mut self, name: &str) -> Result<bool, Bail> {
        let start = self.pos;
        self.pos += 1;
        let mut first = true;
        let mut found = false;
        while let Some(member) = self.next_key(&mut first)? {
            found |= member == name;
            self.skip_value()?;
        }
        self.pos = start;
        Ok(found)
    }

    // ---- Reading and writing JSON text ----

    fn enter(&mut self) -> Result<(), Bail> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Bail::NeedsTree);
        }
        Ok(())
    }

    /// The next member's key of the object being read, with the cursor on its value; `None` after the closing
    /// brace. The cursor starts just after `{`, with `first` set.
    fn next_key(&mut self, first: &mut bool) -> Result<Option<&'a str>, Bail> {
        self.skip_ws();
        if std::mem::take(first) {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(None);
            }
        } else {
            match self.next_byte() {
                Some(b',') => self.skip_ws(),
                Some(b'}') => return Ok(None),
                _ => return Err(Bail::Invalid),
            }
        }
        if self.peek() != Some(b'"') {
            return Err(Bail::Invalid);
        }
        let start = self.pos + 1;
        if self.scan_string()? {
            // Keys are matched and reported as written; an escaped key is rare enough for the tree walk.
            return Err(Bail::NeedsTree);
        }
        let key = &self.text[start..self.pos - 1];
        self.skip_ws();
        if self.next_byte() != Some(b':') {
            return Err(Bail::Invalid);
        }
        self.skip_ws();
        Ok(Some(key))
    }

    /// Writes `"key":`, preceded by a comma unless it is the first member written.
    fn write_key(&mut self, key: &str, first: &mut bool) {
        if !std::mem::take(first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn copy_value(&mut self) -> Result<(), Bail> {
        let start = self.pos;
        self.skip_value()?;
        self.out.extend_from_slice(&self.bytes[start..self.pos]);
        Ok(())
    }

    /// The string at the cursor, unescaped; the cursor moves past it.
    fn read_string(&mut self) -> Result<Cow<'a, str>, Bail> {
        let start = self.pos;
        let escaped = self.scan_string()?;
        if escaped {
            let mut decoded = String::with_capacity(self.pos - start);
            unescape(&self.text[start + 1..self.pos - 1], &mut decoded)?;
            return Ok(Cow::Owned(decoded));
        }
        Ok(Cow::Borrowed(&self.text[start + 1..self.pos - 1]))
    }

    fn peek_string(&mut self) -> Result<Cow<'a, str>, Bail> {
        let start = self.pos;
        let result = self.read_string();
        self.pos = start;
        result
    }

    /// Moves past the string at the cursor (on its opening quote); returns whether it holds escapes. Raw control
    /// characters are refused as by every JSON parser; escapes are checked when the string is decoded, or by
    /// [`Self::skip_value`].
    #[inline]
    fn scan_string(&mut self) -> Result<bool, Bail> {
        // Most keys and many values end within their first sixteen bytes: their closing quote is found here,
        // without the setup of the general loop.
        let from = self.pos + 1;
        if let Some(words) = self.bytes.get(from..from + 16) {
            let word = |at: usize| u64::from_le_bytes(words[at..at + 8].try_into().expect("an 8-byte word"));
            let mut flags = string_special_flags(word(0));
            let mut end = from;
            if flags == 0 {
                flags = string_special_flags(word(8));
                end += 8;
            }
            if flags != 0 {
                end += (flags.trailing_zeros() / 8) as usize;
                if self.bytes[end] == b'"' {
                    self.pos = end + 1;
                    return Ok(false);
                }
            }
        }
        self.scan_string_loop()
    }

    /// [`Self::scan_string`] for a string with an escape, a control character or more than 16 bytes.
    #[inline(never)]
    fn scan_string_loop(&mut self) -> Result<bool, Bail> {
        let mut i = self.pos + 1;
        let mut escaped = false;
        loop {
            let end = find_string_special(self.bytes, i).ok_or(Bail::Invalid)?;
            match self.bytes[end] {
                b'"' => {
                    self.pos = end + 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    // Skip the escaped character: `\"` must not end the string. `\uXXXX` digits hold no quote.
                    i = end + 2;
                    if i > self.bytes.len() {
                        return Err(Bail::Invalid);
                    }
                }
                _ => return Err(Bail::Invalid),
            }
        }
    }

    /// Moves past one value, checking it is valid JSON.
    fn skip_value(&mut self) -> Result<(), Bail> {
        match self.peek() {
            Some(b'"') => {
                let start = self.pos;
                if self.scan_string()? {
                    unescape(&self.text[start + 1..self.pos - 1], &mut String::new())?;
                }
                Ok(())
            }
            Some(b'{') => {
                self.enter()?;
                self.pos += 1;
                let mut first = true;
                while self.next_key(&mut first)?.is_some() {
                    self.skip_value()?;
                }
                self.depth -= 1;
                Ok(())
            }
            Some(b'[') => {
                self.enter()?;
                self.elements(Self::skip_value)?;
                self.depth -= 1;
                Ok(())
            }
            Some(_) => self.skip_scalar(),
            None => Err(Bail::Invalid),
        }
    }

    /// Moves past `true`, `false`, `null` or a number.
    fn skip_scalar(&mut self) -> Result<(), Bail> {
        let literal: &[u8] = match self.peek() {
            Some(b't') => b"true",
            Some(b'f') => b"false",
            Some(b'n') => b"null",
            _ => return self.skip_number(),
        };
        if !self.bytes[self.pos..].starts_with(literal) {
            return Err(Bail::Invalid);
        }
        self.pos += literal.len();
        Ok(())
    }

    /// Moves past a number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, refusing what would overflow a
    /// float as serde_json does.
    fn skip_number(&mut self) -> Result<(), Bail> {
        let start = self.pos;
        let bytes = self.bytes;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while *i < bytes.len() && bytes[*i].is_ascii_digit() {
                *i += 1;
            }
            *i - from
        };
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return Err(Bail::Invalid),
        }
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return Err(Bail::Invalid);
            }
        }
        let mut exponent = false;
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            exponent = true;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return Err(Bail::Invalid);
            }
        }
        // Only an exponent or more than 308 digits can overflow a float (integers beyond 64 bits become floats in
        // serde_json); parsing every timestamp to check would cost more than the rest of the scan.
        if (exponent || i - start > 300) && !self.text[start..i].parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(Bail::Invalid);
        }
        self.pos = i;
        Ok(())
    }

    fn at_null(&self) -> bool {
        self.bytes[self.pos..].starts_with(b"null")
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }
}

/// The position of the first `"`, `\\` or control character at or after `from`: eight bytes at a time for the first
/// [`SWAR_BYTES`] (most strings are short, where a SIMD search costs more to set up than it saves), then
/// [`find_string_special_long`].
pub(super) fn find_string_special(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let swar_end = from.saturating_add(SWAR_BYTES);
    while let Some(chunk) = bytes.get(i..i + 8) {
        let flags = string_special_flags(u64::from_le_bytes(chunk.try_into().expect("an 8-byte chunk")));
        if flags != 0 {
            return Some(i + (flags.trailing_zeros() / 8) as usize);
        }
        i += 8;
        if i >= swar_end {
            return find_string_special_long(bytes, i);
        }
    }
    bytes
        .get(i..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| i + p)
}

/// How far [`find_string_special`] reads eight bytes at a time before it takes the vector search.
const SWAR_BYTES: usize = 32;

/// [`find_string_special`] past the first [`SWAR_BYTES`] (`from` is at most `bytes.len()`): the first quote or
/// backslash by `memchr2`, then the smallest byte before it, both vector passes, instead of eight bytes at a time;
/// a control character is searched for again byte by byte only when there is one (the text is then refused).
#[inline(never)]
fn find_string_special_long(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = &bytes[from..];
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    let before = &rest[..end];
    // A min fold, unlike a search that stops at the first hit, compiles to a vector loop.
    if before.iter().fold(u8::MAX, |min, &b| min.min(b)) < 0x20 {
        return before.iter().position(|&b| b < 0x20).map(|p| from + p);
    }
    (end < rest.len()).then_some(from + end)
}

/// The bytes of `word` (little-endian) that are a `"`, `\\` or control character, each as its high bit. Classic "has a
/// zero byte" / "has a byte below n" tricks: borrows can flag bytes after a real match, never before one, so the
/// lowest flag is exact.
pub(super) fn string_special_flags(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let flags = (quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (word.wrapping_sub(ONES * 0x20) & !word);
    flags & HIGHS
}

/// Decodes the escapes of a string's content (between its quotes, as delimited by [`Stream::scan_string`]) into
/// `out`, refusing what serde_json refuses when it reads a `String`: unknown escapes, short or non-hex `\\u` digits,
/// and surrogates that are not a leading one followed at once by a `\\u` trailing one.
fn unescape(raw: &str, out: &mut String) -> Result<(), Bail> {
    let bytes = raw.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'\\', &bytes[i..]) {
        let at = i + offset;
        out.push_str(&raw[copied..at]);
        let escape = *bytes.get(at + 1).ok_or(Bail::Invalid)?;
        i = at + 2;
        let decoded = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = hex4(bytes, i)?;
                i += 4;
                let code = match first {
                    0xD800..=0xDBFF => {
                        if bytes.get(i..i + 2) != Some(b"\\u") {
                            return Err(Bail::Invalid);
                        }
                        let second = hex4(bytes, i + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(Bail::Invalid);
                        }
                        i += 6;
                        0x1_0000 + ((first - 0xD800) << 10 | (second - 0xDC00))
                    }
                    0xDC00..=0xDFFF => return Err(Bail::Invalid),
                    _ => first,
                };
                char::from_u32(code).ok_or(Bail::Invalid)?
            }
            _ => return Err(Bail::Invalid),
        };
        out.push(decoded);
        copied = i;
    }
    out.push_str(&raw[copied..]);
    Ok(())
}

/// The four hex digits of a `\\u` escape at `at`, either case.
fn hex4(bytes: &[u8], at: usize) -> Result<u32, Bail> {
    let digits = bytes.get(at..at + 4).ok_or(Bail::Invalid)?;
    digits.iter().try_fold(0, |code, &digit| {
        let value = char::from(digit).to_digit(16).ok_or(Bail::Invalid)?;
        Ok(code << 4 | value)
    })
}

/// Parses a complete JSON text the stream has already delimited.
fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, Bail> {
    serde_json::from_str(json).map_err(|_| Bail::Invalid)
}

/// Writes `text` as a JSON string, byte for byte as serde_json does (it escapes only `"`, `\\` and control
/// characters). Most strings need no escape: those are copied whole instead of through serde_json's per-byte table.
pub(super) fn write_json_string(out: &mut Vec<u8>, text: &str) {
    if find_string_special(text.as_bytes(), 0).is_none() {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` into a `Vec` cannot fail.
        serde_json::to_writer(out, text).expect("a string serializes");
    }
}

#[cfg(test)]
mod tests;
