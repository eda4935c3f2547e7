//! JSON items (events, transactions, spans, logs, sessions, check-ins, replay events, profiles, unknown JSON): the
//! streaming walk first, the `serde_json::Value` tree walk for what the stream leaves to it, drop rules for
//! health-check transactions and segment spans, and the `unparseable_json` policy for JSON that does not parse.
//! Re-serialized only when something changed, so untouched items stay byte-identical.

use bytes::Bytes;
use serde_json::Value;

use super::Ctx;
use crate::envelope::{Item, ItemType};
use crate::filter;
use crate::pipeline::DropReason;
use crate::rules::UnparseablePolicy;
use crate::scrub::stream::{self, Bail, DropCheck};
use crate::scrub::{Scope, Scrubber, merge_meta};

/// The scope a JSON item's payload is walked in, or `None` when the item is not walked as JSON.
pub fn scope(item: &Item, ty: ItemType) -> Option<Scope> {
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

/// The tree walk's budget: a `Value` costs about 80 bytes per node, so a payload of small values (an 8M-element
/// array) would expand dozens of times over. Payloads with more nodes than this follow the unparseable policy
/// (dropped, or scrubbed as text) instead of being parsed into a tree: about 40 MB at most per item in processing.
pub const TREE_WALK_MAX_NODES: usize = 500_000;

/// Parses a payload for the tree walk, within [`TREE_WALK_MAX_NODES`] (serde_json bounds the depth at 128). `None`
/// when it is not JSON or too big a tree.
pub(crate) fn parse_tree(json: &[u8]) -> Option<Value> {
    if json_nodes_exceed(json, TREE_WALK_MAX_NODES) {
        return None;
    }
    serde_json::from_slice::<Value>(json).ok()
}

/// Whether `json` has more than `max` values, counted from its structure (`[`, `{`, `,` outside strings) without
/// building anything. One pass over at most the whole payload: `memchr` finds where strings start and end, and the
/// structure between them is counted in a loop the compiler vectorises (byte by byte it was 4 % of the scrub of the
/// raw captures, through the transactions on drop routes it checks, issue #11).
pub fn json_nodes_exceed(json: &[u8], max: usize) -> bool {
    let mut nodes = 1usize;
    let mut pos = 0;
    loop {
        let string_start = memchr::memchr(b'"', &json[pos..]).map_or(json.len(), |at| pos + at);
        let structure = json[pos..string_start]
            .iter()
            .filter(|&&byte| matches!(byte, b'[' | b'{' | b','))
            .count();
        nodes += structure;
        if structure > 0 && nodes > max {
            return true;
        }
        // Past the string: its escapes skip the byte after each backslash. One never closed holds no structure.
        pos = string_start + 1;
        loop {
            if pos >= json.len() {
                return false;
            }
            match memchr::memchr2(b'"', b'\\', &json[pos..]) {
                None => return false,
                Some(at) if json[pos + at] == b'\\' => pos += at + 2,
                Some(at) => {
                    pos += at + 1;
                    break;
                }
            }
        }
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

/// Scrubs a JSON item walked in `scope` (from [`scope`]); `None` when a drop rule or the policy removes it.
pub fn process(mut item: Item, ty: ItemType, scope: Scope, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    let engine = cx.scrubber.engine;
    if cx.stream {
        let check = match ty {
            ItemType::Transaction => DropCheck::Transaction,
            ItemType::Span => DropCheck::SegmentSpans,
            _ => DropCheck::None,
        };
        // When the stream gives up (not JSON, a shape it leaves to the tree), the tree walk below decides, from a
        // clean slate.
        let mut streamed = stream_item(&mut item, scope, check, cx);
        if streamed == Err(Bail::SpansDropped) && !json_nodes_exceed(item.payload(), TREE_WALK_MAX_NODES) {
            // A segment span may be on a drop route: the stream removes it (and its children) as the tree walk
            // would, instead of parsing the whole container into a tree (issue #11). One over the tree's node budget
            // follows the unparseable policy below, as it always has.
            streamed = stream_item(&mut item, scope, DropCheck::RemoveSegmentSpans, cx);
        }
        match streamed {
            Ok(spans) => {
                if spans.removed > 0 {
                    cx.report.dropped_spans += spans.removed as u64;
                    item.headers_mut().insert("item_count".into(), Value::from(spans.kept));
                }
                return Some(item);
            }
            // A transaction on a drop route, read by the stream as the tree walk reads it: parsing it into a tree
            // only to drop it was a third of the scrub of the raw SDK captures (issue #11). One over the tree's node
            // budget still follows the unparseable policy below, as it always has.
            Err(Bail::Dropped) if !json_nodes_exceed(item.payload(), TREE_WALK_MAX_NODES) => {
                cx.report.dropped.push((ty, DropReason::FilteredRoute));
                return None;
            }
            Err(_) => cx.report.tree_walked_items += 1,
        }
    }
    let Some(mut value) = parse_tree(item.payload()) else {
        return unparseable(item, ty, cx);
    };
    match ty {
        ItemType::Transaction if filter::should_drop_transaction(&value, &engine.routes) => {
            cx.report.dropped.push((ty, DropReason::FilteredRoute));
            return None;
        }
        ItemType::Span => {
            if let Some(Value::Array(spans)) = value.get_mut("items") {
                let removed = filter::filter_span_items(spans, &engine.routes);
                if removed > 0 {
                    if spans.is_empty() {
                        cx.report.dropped.push((ty, DropReason::FilteredRoute));
                        return None;
                    }
                    cx.report.dropped_spans += removed as u64;
                    let remaining = spans.len();
                    item.headers_mut().insert("item_count".into(), Value::from(remaining));
                    cx.scrubber.changed = true;
                }
            }
        }
        _ => {}
    }
    walk_and_store(item, value, scope, cx.scrubber)
}

/// Scrubs a JSON payload with the streaming walk, storing the result if something changed. `false` (item and
/// scrubber untouched) when the stream gave up and the tree walk must decide.
pub(crate) fn streamed(item: &mut Item, scope: Scope, check: DropCheck, cx: &mut Ctx<'_, '_>) -> bool {
    let done = stream_item(item, scope, check, cx).is_ok();
    if !done {
        cx.report.tree_walked_items += 1;
    }
    done
}

/// Spans a stream removed from a span container, and spans left.
#[derive(Debug, PartialEq, Eq)]
struct SpanCount {
    removed: usize,
    kept: usize,
}

/// [`streamed`], saying why the stream gave up, without counting it.
fn stream_item(item: &mut Item, scope: Scope, check: DropCheck, cx: &mut Ctx<'_, '_>) -> Result<SpanCount, Bail> {
    let streamed = stream::scrub_item_json(cx.scrubber, item.payload(), scope, check)?;
    if let Some(scrubbed) = streamed.payload {
        item.set_payload(Bytes::from(scrubbed));
    }
    Ok(SpanCount {
        removed: streamed.spans_removed,
        kept: streamed.spans_kept,
    })
}

/// Scrubs JSON bytes that are part of a larger payload (a `replay_video`'s event): `Ok(None)` when nothing changed,
/// `Err(())` when they are not JSON.
pub(crate) fn scrub_bytes(bytes: &[u8], scope: Scope, cx: &mut Ctx<'_, '_>) -> Result<Option<Vec<u8>>, ()> {
    let mut item = Item::new("json", Bytes::copy_from_slice(bytes));
    if cx.stream && streamed(&mut item, scope, DropCheck::None, cx) {
        return Ok((item.payload().as_ref() != bytes).then(|| item.payload().to_vec()));
    }
    let value = serde_json::from_slice::<Value>(bytes).map_err(|_| ())?;
    let changed_before = cx.scrubber.changed;
    cx.scrubber.changed = false;
    let item = walk_and_store(item, value, scope, cx.scrubber).ok_or(())?;
    let changed = cx.scrubber.changed;
    cx.scrubber.changed |= changed_before;
    Ok(changed.then(|| item.payload().to_vec()))
}

/// A JSON item that did not parse: never forwarded raw.
pub(crate) fn unparseable(mut item: Item, ty: ItemType, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    match cx.scrubber.engine.policy.unparseable_json {
        UnparseablePolicy::Drop => {
            cx.report.dropped.push((ty, DropReason::UnparseableJson));
            None
        }
        UnparseablePolicy::ScrubAsText => match super::text::scrub_utf8(&mut item, cx.scrubber) {
            Ok(()) => Some(item),
            Err(_) => {
                cx.report.dropped.push((ty, DropReason::UnparseableJson));
                None
            }
        },
    }
}

/// Walks a parsed payload and stores it back only if something changed.
pub(crate) fn walk_and_store(
    mut item: Item,
    mut value: Value,
    scope: Scope,
    scrubber: &mut Scrubber<'_>,
) -> Option<Item> {
    let changed_before_walk = scrubber.changed;
    {
        let mut path = Vec::new();
        scrubber.walk_value(&mut value, scope, &mut path);
    }
    if scrubber.changed || changed_before_walk {
        if scrubber.collect_meta
            && let Value::Object(root) = &mut value
        {
            merge_meta(root, &scrubber.meta);
            scrubber.meta.clear();
        }
        // Serializing a `Value` cannot fail (string keys, finite numbers from the parser).
        let bytes = serde_json::to_vec(&value).expect("JSON value serializes");
        item.set_payload(Bytes::from(bytes));
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::pipeline::{ProcessOptions, process};
    use crate::rules::CompiledRules;

    /// The count byte by byte, as it was: the oracle for the `memchr` count.
    fn nodes_exceed_bytewise(json: &[u8], max: usize) -> bool {
        let mut nodes = 1usize;
        let mut in_string = false;
        let mut escaped = false;
        for &byte in json {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' | b',' => {
                    nodes += 1;
                    if nodes > max {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }

    #[test]
    fn node_counting_matches_the_bytewise_count() {
        // Random texts of structure, quotes, backslashes and letters (escapes at the very end, strings never
        // closed), at every budget around their count.
        let alphabet = b"[{,\"\\a]}";
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let len = rng.usize(..40);
            let text: Vec<u8> = (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            for max in 0..12 {
                assert_eq!(
                    json_nodes_exceed(&text, max),
                    nodes_exceed_bytewise(&text, max),
                    "{:?} {max}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }

    #[test]
    fn node_counting_skips_strings_and_stops_at_the_budget() {
        assert!(!json_nodes_exceed(br#"{"a":[1,2,3]}"#, 5));
        assert!(json_nodes_exceed(br#"{"a":[1,2,3],"b":4}"#, 5));
        assert!(
            !json_nodes_exceed(br#"{"a":"[,,,,,,{{{{\",,,,"}"#, 2),
            "brackets in strings are text"
        );
    }

    /// A payload the stream leaves to the tree walk (an escaped key) with more nodes than the tree may hold is never
    /// built into a tree: it follows the unparseable policy (dropped by default), and a smaller one is walked.
    #[test]
    fn the_tree_walk_refuses_a_payload_over_its_node_budget() {
        let rules = CompiledRules::defaults();
        let payload = |elements: usize| format!("{{\"k\\u0065y\":[{}0]}}", "0,".repeat(elements));
        let run = |json: String| {
            let mut envelope = Envelope::new(serde_json::Map::new());
            envelope.items.push(Item::new("event", Bytes::from(json)));
            process(envelope, &rules, &ProcessOptions::default())
        };
        let bomb = run(payload(TREE_WALK_MAX_NODES));
        assert!(bomb.envelope.items.is_empty());
        assert_eq!(
            bomb.report.dropped,
            vec![(ItemType::Event, DropReason::UnparseableJson)]
        );
        assert_eq!(
            bomb.report.tree_walked_items, 1,
            "the stream gave up on the escaped key"
        );

        let fine = run(payload(1000));
        assert_eq!(fine.envelope.items.len(), 1);
        assert_eq!(fine.report.tree_walked_items, 1);
    }
}
