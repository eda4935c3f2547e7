//! Sentry `_meta` remarks: `{"_meta": {"request": {"headers": {"Authorization": {"": {"rem": [...], "len": n}}}}}}`.
//!
//! Sentry's UI reads these to show which rule removed what. Entries mirror the path of the changed field (array
//! indices as string keys) and are merged into whatever `_meta` the SDK already sent.
//!
//! The walk records entries in a [`MetaLog`]: every path segment and rule id goes into one string buffer, so a change
//! costs no allocation of its own (an owned `String` per segment and per rule id was about 7 % of the scrub of a
//! PII-dense event, half of it in freeing them; issue #11).
//!
//! Two ways to the same JSON: [`merge_meta`] builds a `Value` tree (needed to merge into the SDK's own `_meta`, and by
//! the tree walk), and [`write_meta`] writes the object straight from the log, for the common case of an item
//! without a `_meta` of its own. On PII-dense events the tree cost about 40 % of the scrub: a `String` and a hashed
//! map per path segment, serialized and then freed (issue #11).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Remark, Seg};

/// The `_meta` entries of one item, in the order they were recorded. Each entry is a path, remarks and maybe the
/// original length; path segments and rule ids are ranges of one string buffer. Cleared, not dropped, between
/// items, so its buffers are reused.
#[derive(Debug, Default)]
pub struct MetaLog {
    /// Path segments and rule ids, back to back.
    text: String,
    /// Path segments of all entries, in order: byte ranges of `text`.
    segments: Vec<(usize, usize)>,
    entries: Vec<LogEntry>,
    remarks: Vec<LogRemark>,
}

#[derive(Debug, Clone, Copy)]
struct LogEntry {
    /// Range of `MetaLog::segments`.
    segments: (usize, usize),
    /// Range of `MetaLog::remarks`.
    remarks: (usize, usize),
    len: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct LogRemark {
    /// Byte range of `MetaLog::text`.
    rule: (usize, usize),
    ty: &'static str,
    range: Option<(usize, usize)>,
}

/// One entry of a [`MetaLog`], borrowed.
#[derive(Clone, Copy)]
pub(crate) struct EntryRef<'l> {
    log: &'l MetaLog,
    entry: LogEntry,
}

impl<'l> EntryRef<'l> {
    pub(crate) fn path(self) -> impl Iterator<Item = &'l str> {
        let log = self.log;
        log.segments[self.entry.segments.0..self.entry.segments.1]
            .iter()
            .map(move |&(start, end)| &log.text[start..end])
    }

    pub(crate) fn remarks(self) -> impl Iterator<Item = Remark<'l>> {
        let log = self.log;
        log.remarks[self.entry.remarks.0..self.entry.remarks.1]
            .iter()
            .map(move |remark| Remark {
                rule: &log.text[remark.rule.0..remark.rule.1],
                ty: remark.ty,
                range: remark.range,
            })
    }

    fn has_remarks(self) -> bool {
        self.entry.remarks.0 < self.entry.remarks.1
    }

    pub(crate) fn len(self) -> Option<usize> {
        self.entry.len
    }
}

impl MetaLog {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.segments.clear();
        self.entries.clear();
        self.remarks.clear();
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.entries.iter().map(|&entry| EntryRef { log: self, entry })
    }

    /// Adds an entry for `path` (and `extra`, a last segment). With `merge`, an entry for the same path as the last
    /// one is joined to it instead: remarks appended, the first length kept.
    pub(crate) fn add(
        &mut self,
        path: &[Seg<'_>],
        extra: Option<&str>,
        remarks: &[Remark<'_>],
        len: Option<usize>,
        merge: bool,
    ) {
        let text_start = self.text.len();
        let first_segment = self.segments.len();
        for seg in path {
            let start = self.text.len();
            match *seg {
                Seg::Key(key) => self.text.push_str(key),
                Seg::Index(index) => push_decimal(&mut self.text, index),
            }
            self.segments.push((start, self.text.len()));
        }
        if let Some(extra) = extra {
            let start = self.text.len();
            self.text.push_str(extra);
            self.segments.push((start, self.text.len()));
        }
        let segments = (first_segment, self.segments.len());
        if merge
            && let Some(last) = self.entries.last()
            && self.same_path(last.segments, segments)
        {
            // The path is already there: drop the copy just written.
            self.segments.truncate(first_segment);
            self.text.truncate(text_start);
            self.push_remarks(remarks);
            let remarks_end = self.remarks.len();
            if let Some(last) = self.entries.last_mut() {
                // Only the last entry is ever extended, so its remarks are the last ones pushed.
                last.remarks.1 = remarks_end;
                if last.len.is_none() {
                    last.len = len;
                }
            }
            return;
        }
        let first_remark = self.remarks.len();
        self.push_remarks(remarks);
        self.entries.push(LogEntry {
            segments,
            remarks: (first_remark, self.remarks.len()),
            len,
        });
    }

    fn push_remarks(&mut self, remarks: &[Remark<'_>]) {
        for remark in remarks {
            let start = self.text.len();
            self.text.push_str(remark.rule);
            self.remarks.push(LogRemark {
                rule: (start, self.text.len()),
                ty: remark.ty,
                range: remark.range,
            });
        }
    }

    fn same_path(&self, a: (usize, usize), b: (usize, usize)) -> bool {
        let (a, b) = (&self.segments[a.0..a.1], &self.segments[b.0..b.1]);
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(&(a0, a1), &(b0, b1))| self.text.as_bytes()[a0..a1] == self.text.as_bytes()[b0..b1])
    }

    /// Whether [`write_meta`] can write this log: not when a path has an empty segment, because its node would be
    /// the same key as a field's remark leaf (`""`), which only the `Value` route merges the way it always has.
    pub fn writable(&self) -> bool {
        !self.segments.iter().any(|(start, end)| start == end)
    }
}

/// `value` in decimal, as `usize`'s `Display` (and serde_json) writes it, without the formatting machinery.
fn decimal(value: usize, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &digits[at..]
}

fn push_decimal(text: &mut String, value: usize) {
    for &digit in decimal(value, &mut [0; 20]) {
        text.push(char::from(digit));
    }
}

/// Merges the log's remarks into the root object's `_meta`, creating it if needed.
pub fn merge_meta(root: &mut Map<String, Value>, log: &MetaLog) {
    if log.is_empty() {
        return;
    }
    let meta = root.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        // An SDK sent something that is not `_meta`; ours replaces it rather than being lost.
        *meta = Value::Object(Map::new());
    }
    for entry in log.entries() {
        let mut node = &mut *meta;
        for segment in entry.path() {
            node = descend(node, segment);
        }
        let Value::Object(map) = node else { continue };
        let leaf = map.entry(String::new()).or_insert_with(|| Value::Object(Map::new()));
        if !leaf.is_object() {
            *leaf = Value::Object(Map::new());
        }
        let Value::Object(leaf) = leaf else { continue };
        if entry.has_remarks() {
            if !matches!(leaf.get("rem"), Some(Value::Array(_))) {
                leaf.insert("rem".into(), Value::Array(Vec::new()));
            }
            if let Some(Value::Array(rem)) = leaf.get_mut("rem") {
                for remark in entry.remarks() {
                    let mut item = Vec::with_capacity(if remark.range.is_some() { 4 } else { 2 });
                    item.push(Value::from(remark.rule));
                    item.push(Value::from(remark.ty));
                    if let Some((start, end)) = remark.range {
                        item.push(Value::from(start));
                        item.push(Value::from(end));
                    }
                    rem.push(Value::Array(item));
                }
            }
        }
        if let Some(len) = entry.len()
            && !leaf.contains_key("len")
        {
            leaf.insert("len".into(), Value::from(len));
        }
    }
}

/// The object under `segment`, created (or made an object) if needed.
fn descend<'a>(node: &'a mut Value, segment: &str) -> &'a mut Value {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(map) => {
            // Look up before inserting: most segments already exist, and `entry` would clone the key every time.
            if !matches!(map.get(segment), Some(Value::Object(_))) {
                map.insert(segment.to_string(), Value::Object(Map::new()));
            }
            match map.get_mut(segment) {
                Some(child) => child,
                // Inserted just above.
                None => unreachable!("segment was inserted"),
            }
        }
        // Made an object just above.
        other => other,
    }
}

/// Writes the `_meta` object for `log` (which must be [`MetaLog::writable`]) as JSON, byte for byte what [`merge_meta`]
/// into an empty object followed by `serde_json::to_writer` would give: the same keys in the same first-insertion
/// order, remarks concatenated, the first `len` kept.
pub fn write_meta(log: &MetaLog, out: &mut Vec<u8>) {
    debug_assert!(log.writable());
    let entries: Vec<EntryRef<'_>> = log.entries().collect();
    let entries = entries.as_slice();
    // A trie over the paths in an arena; children are kept in first-insertion order as a linked list. Entries
    // arrive in document order, so the child wanted is nearly always the last one made, and most nodes have a few
    // children: those are searched in place. Only the children of wide nodes (a list of many scrubbed objects, or an
    // attacker's object with thousands of keys) go into a map, so no input makes this quadratic.
    const NONE: u32 = u32::MAX;
    /// Children searched in place; a node with more has them in `wide`. At most this many comparisons per segment,
    /// and few events have a node this wide (the raw python event's widest has 12 children; with 8 here, hashing
    /// their keys cost more than comparing them).
    const NARROW: u32 = 32;
    struct Node<'a> {
        segment: &'a str,
        first_child: u32,
        last_child: u32,
        next_sibling: u32,
        children: u32,
        /// Entries ending here, chained through `next_entry`; only on leaf nodes (segment `""`).
        first_entry: u32,
        last_entry: u32,
    }
    let node = |segment| Node {
        segment,
        first_child: NONE,
        last_child: NONE,
        next_sibling: NONE,
        children: 0,
        first_entry: NONE,
        last_entry: NONE,
    };
    let mut nodes: Vec<Node<'_>> = Vec::with_capacity(entries.len() * 2 + 1);
    nodes.push(node(""));
    let mut wide: HashMap<(u32, &str), u32> = HashMap::new();
    let mut next_entry = vec![NONE; entries.len()];
    for (position, entry) in entries.iter().enumerate() {
        let mut parent = 0u32;
        for segment in entry.path().chain(std::iter::once("")) {
            let at = &nodes[parent as usize];
            let found = if at.last_child != NONE && nodes[at.last_child as usize].segment == segment {
                Some(at.last_child)
            } else if at.children > NARROW {
                wide.get(&(parent, segment)).copied()
            } else {
                let mut child = at.first_child;
                while child != NONE && nodes[child as usize].segment != segment {
                    child = nodes[child as usize].next_sibling;
                }
                (child != NONE).then_some(child)
            };
            parent = match found {
                Some(child) => child,
                None => {
                    let id = nodes.len() as u32;
                    nodes.push(node(segment));
                    let at = &mut nodes[parent as usize];
                    let previous = std::mem::replace(&mut at.last_child, id);
                    at.children += 1;
                    let children = at.children;
                    if previous == NONE {
                        at.first_child = id;
                    } else {
                        nodes[previous as usize].next_sibling = id;
                    }
                    if children == NARROW + 1 {
                        let mut child = nodes[parent as usize].first_child;
                        while child != NONE {
                            wide.insert((parent, nodes[child as usize].segment), child);
                            child = nodes[child as usize].next_sibling;
                        }
                    } else if children > NARROW + 1 {
                        wide.insert((parent, segment), id);
                    }
                    id
                }
            };
        }
        let leaf = &mut nodes[parent as usize];
        if leaf.first_entry == NONE {
            leaf.first_entry = position as u32;
        } else {
            next_entry[leaf.last_entry as usize] = position as u32;
        }
        leaf.last_entry = position as u32;
    }

    fn string(out: &mut Vec<u8>, text: &str) {
        // Paths and rule ids rarely need escapes; serde_json writes the rest exactly as the `Value` route did.
        super::stream::write_json_string(out, text);
    }
    fn number(out: &mut Vec<u8>, value: usize) {
        out.extend_from_slice(decimal(value, &mut [0; 20]));
    }
    fn object(nodes: &[Node<'_>], entries: &[EntryRef<'_>], next_entry: &[u32], id: u32, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut child = nodes[id as usize].first_child;
        let mut first = true;
        while child != NONE {
            if !first {
                out.push(b',');
            }
            first = false;
            let node = &nodes[child as usize];
            string(out, node.segment);
            out.push(b':');
            if node.first_entry == NONE {
                object(nodes, entries, next_entry, child, out);
            } else {
                leaf(entries, next_entry, node.first_entry, out);
            }
            child = node.next_sibling;
        }
        out.push(b'}');
    }
    fn leaf(entries: &[EntryRef<'_>], next_entry: &[u32], first_entry: u32, out: &mut Vec<u8>) {
        // `merge_meta` adds `rem` at the first entry with remarks and `len` at the first with a length, so the key
        // that comes first is the one whose entry comes first.
        let mut rem_at = None;
        let mut len = None;
        for (n, entry) in entries_from(entries, next_entry, first_entry).enumerate() {
            if rem_at.is_none() && entry.has_remarks() {
                rem_at = Some(n);
            }
            if len.is_none() {
                len = entry.len().map(|len| (n, len));
            }
        }
        out.push(b'{');
        let write_len = |out: &mut Vec<u8>, len: usize| {
            out.extend_from_slice(b"\"len\":");
            number(out, len);
        };
        match (rem_at, len) {
            (None, None) => {}
            (None, Some((_, len))) => write_len(out, len),
            (Some(rem_at), len) => {
                if let Some((len_at, len)) = len
                    && len_at < rem_at
                {
                    write_len(out, len);
                    out.push(b',');
                }
                out.extend_from_slice(b"\"rem\":[");
                let remarks = entries_from(entries, next_entry, first_entry).flat_map(|entry| entry.remarks());
                for (n, remark) in remarks.enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    string(out, remark.rule);
                    out.push(b',');
                    // `s`, `x` or `p`: nothing to escape.
                    out.push(b'"');
                    out.extend_from_slice(remark.ty.as_bytes());
                    out.push(b'"');
                    if let Some((start, end)) = remark.range {
                        out.push(b',');
                        number(out, start);
                        out.push(b',');
                        number(out, end);
                    }
                    out.push(b']');
                }
                out.push(b']');
                if let Some((len_at, len)) = len
                    && len_at >= rem_at
                {
                    out.push(b',');
                    write_len(out, len);
                }
            }
        }
        out.push(b'}');
    }
    fn entries_from<'e, 'l>(
        entries: &'e [EntryRef<'l>],
        next_entry: &'e [u32],
        first: u32,
    ) -> impl Iterator<Item = EntryRef<'l>> + 'e {
        std::iter::successors(Some(first), move |&at| {
            Some(next_entry[at as usize]).filter(|&next| next != NONE)
        })
        .map(move |at| entries[at as usize])
    }
    // Roughly what is written: the segments and rule ids, quoted, and the fixed text around them.
    out.reserve(log.text.len() + 32 * log.entries.len() + 16 * log.remarks.len());
    object(&nodes, entries, &next_entry, 0, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry as a test writes it: path, rule ids, original length.
    #[derive(Debug, Clone)]
    struct Owned {
        path: Vec<String>,
        rules: Vec<String>,
        len: Option<usize>,
    }

    fn log_of(entries: &[Owned], merge: bool) -> MetaLog {
        let mut log = MetaLog::default();
        for entry in entries {
            let path: Vec<Seg<'_>> = entry.path.iter().map(|s| Seg::Key(s)).collect();
            let remarks: Vec<Remark<'_>> = entry
                .rules
                .iter()
                .enumerate()
                .map(|(n, rule)| Remark {
                    rule,
                    ty: if n % 2 == 0 { "s" } else { "x" },
                    range: (n % 3 == 0).then_some((n, n + 7)),
                })
                .collect();
            log.add(&path, None, &remarks, entry.len, merge);
        }
        log
    }

    fn via_tree(entries: &[Owned]) -> Vec<u8> {
        let mut root = Map::new();
        merge_meta(&mut root, &log_of(entries, false));
        serde_json::to_vec(&root["_meta"]).unwrap()
    }

    fn direct(entries: &[Owned]) -> Vec<u8> {
        let mut out = Vec::new();
        write_meta(&log_of(entries, false), &mut out);
        out
    }

    fn writable(entries: &[Owned]) -> bool {
        log_of(entries, false).writable()
    }

    fn entry(path: &[&str], rules: &[&str], len: Option<usize>) -> Owned {
        Owned {
            path: path.iter().map(|s| s.to_string()).collect(),
            rules: rules.iter().map(|s| s.to_string()).collect(),
            len,
        }
    }

    /// `add` with `merge` joins an entry to the last one when the paths are equal (as `Scrubber::record` did with
    /// its owned entries): remarks appended, the first length kept; other entries stay apart.
    #[test]
    fn merged_entries_join_the_last_one_only() {
        let mut log = MetaLog::default();
        let remark = |rule| Remark {
            rule,
            ty: "s",
            range: Some((0, 3)),
        };
        log.add(&[Seg::Key("a"), Seg::Index(10)], None, &[remark("r1")], None, true);
        log.add(&[Seg::Key("a")], Some("10"), &[remark("r2")], Some(7), true);
        log.add(&[Seg::Key("a"), Seg::Index(10)], None, &[remark("r3")], Some(9), true);
        log.add(&[Seg::Key("b")], None, &[remark("r4")], Some(1), true);
        log.add(&[Seg::Key("a"), Seg::Index(10)], None, &[remark("r5")], None, true);
        let entries: Vec<(Vec<&str>, Vec<&str>, Option<usize>)> = log
            .entries()
            .map(|e| (e.path().collect(), e.remarks().map(|r| r.rule).collect(), e.len()))
            .collect();
        assert_eq!(
            entries,
            vec![
                (vec!["a", "10"], vec!["r1", "r2", "r3"], Some(7)),
                (vec!["b"], vec!["r4"], Some(1)),
                (vec!["a", "10"], vec!["r5"], None),
            ]
        );
        let mut out = Vec::new();
        write_meta(&log, &mut out);
        let mut root = Map::new();
        merge_meta(&mut root, &log);
        assert_eq!(out, serde_json::to_vec(&root["_meta"]).unwrap());
        log.clear();
        assert!(log.is_empty());
        assert_eq!(log.entries().count(), 0);
    }

    #[test]
    fn written_directly_as_the_value_tree_writes_it() {
        let cases = vec![
            vec![entry(&["message"], &["@email"], Some(120))],
            vec![
                entry(&["request", "headers", "Authorization"], &["@bearer"], None),
                entry(&["request", "query_string"], &["@password", "@email"], Some(80)),
                entry(&["request", "headers", "Cookie"], &["@cookie"], Some(10)),
                entry(&["extra", "a\"b\\c\u{1}é"], &["rule\"quoted"], None),
            ],
            // A path revisited out of order (duplicate keys), a field and its child, a field without remarks.
            vec![
                entry(&["a", "b"], &["r1"], None),
                entry(&["a", "c"], &["r2"], Some(3)),
                entry(&["a", "b"], &["r3"], Some(9)),
                entry(&["a"], &["r4"], None),
                entry(&["a", "b", "d"], &[], Some(4)),
                entry(&["z"], &[], Some(1)),
                entry(&["z"], &["r5"], Some(2)),
            ],
        ];
        for entries in &cases {
            assert!(writable(entries));
            assert_eq!(
                String::from_utf8(direct(entries)).unwrap(),
                String::from_utf8(via_tree(entries)).unwrap()
            );
        }
        assert!(!writable(&[entry(&["a", ""], &["r"], None)]));
        assert!(!writable(&[entry(&["", "a"], &["r"], None)]));

        // A wide node (children found through the map), revisited out of order.
        let indices: Vec<String> = (0..40).map(|n| n.to_string()).collect();
        let mut wide: Vec<Owned> = indices
            .iter()
            .map(|n| entry(&["list", n, "email"], &["@email"], Some(9)))
            .collect();
        wide.push(entry(&["list", "3", "email"], &["@card"], None));
        wide.push(entry(&["list", "39", "phone"], &["@phone"], Some(2)));
        wide.push(entry(&["list", "7"], &["@x"], None));
        assert_eq!(direct(&wide), via_tree(&wide));
    }

    /// Random paths over a small alphabet, so prefixes are shared, revisited and interleaved.
    #[test]
    fn random_entries_match_the_value_tree() {
        let mut rng = fastrand::Rng::with_seed(11);
        let segments = ["a", "b", "c", "0", "1", "rem", "len", "é"];
        let rules = ["@email", "@card", "@password"];
        for _ in 0..3000 {
            let count = rng.usize(1..12);
            let entries: Vec<Owned> = (0..count)
                .map(|_| {
                    let path: Vec<&str> = (0..rng.usize(1..5))
                        .map(|_| segments[rng.usize(..segments.len())])
                        .collect();
                    let remarks: Vec<&str> = (0..rng.usize(0..3)).map(|_| rules[rng.usize(..rules.len())]).collect();
                    entry(&path, &remarks, rng.bool().then(|| rng.usize(..1000)))
                })
                .collect();
            assert_eq!(direct(&entries), via_tree(&entries), "{entries:?}");
        }
    }
}
