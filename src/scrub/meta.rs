//! Sentry `_meta` remarks: `{"_meta": {"request": {"headers": {"Authorization": {"": {"rem": [...], "len": n}}}}}}`.
//!
//! Sentry's UI reads these to show which rule removed what. Entries mirror the path of the changed field (array
//! indices as string keys) and are merged into whatever `_meta` the SDK already sent.
//!
//! Two ways to the same JSON: [`merge_meta`] builds a `Value` tree (needed to merge into the SDK's own `_meta`, and by
//! the tree walk), and [`write_meta`] writes the object straight from the list of entries, for the common case of
//! an item without a `_meta` of its own. On PII-dense events the tree cost about 40 % of the scrub: a `String` and a
//! hashed map per path segment, serialized and then freed (issue #11).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::MetaEntry;

/// Merges remarks into the root object's `_meta`, creating it if needed. Takes the entries by value so rule ids move
/// into the tree instead of being copied (PII-dense payloads have one entry per changed string).
pub fn merge_meta(root: &mut Map<String, Value>, entries: Vec<MetaEntry>) {
    if entries.is_empty() {
        return;
    }
    let meta = root.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        // An SDK sent something that is not `_meta`; ours replaces it rather than being lost.
        *meta = Value::Object(Map::new());
    }
    for entry in entries {
        let mut node = &mut *meta;
        for segment in &entry.path {
            node = descend(node, segment);
        }
        let Value::Object(map) = node else { continue };
        let leaf = map.entry(String::new()).or_insert_with(|| Value::Object(Map::new()));
        if !leaf.is_object() {
            *leaf = Value::Object(Map::new());
        }
        let Value::Object(leaf) = leaf else { continue };
        if !entry.remarks.is_empty() {
            if !matches!(leaf.get("rem"), Some(Value::Array(_))) {
                leaf.insert("rem".into(), Value::Array(Vec::new()));
            }
            if let Some(Value::Array(rem)) = leaf.get_mut("rem") {
                rem.reserve(entry.remarks.len());
                for remark in entry.remarks {
                    let mut item = Vec::with_capacity(if remark.range.is_some() { 4 } else { 2 });
                    item.push(Value::String(remark.rule));
                    item.push(Value::from(remark.ty));
                    if let Some((start, end)) = remark.range {
                        item.push(Value::from(start));
                        item.push(Value::from(end));
                    }
                    rem.push(Value::Array(item));
                }
            }
        }
        if let Some(len) = entry.len
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

/// Whether [`write_meta`] can write these entries: not when a path has an empty segment, because its node would be
/// the same key as a field's remark leaf (`""`), which only the `Value` route merges the way it always has.
pub fn writable(entries: &[MetaEntry]) -> bool {
    !entries.iter().any(|entry| entry.path.iter().any(String::is_empty))
}

/// Writes the `_meta` object for `entries` (which must be [`writable`]) as JSON, byte for byte what [`merge_meta`]
/// into an empty object followed by `serde_json::to_writer` would give: the same keys in the same first-insertion
/// order, remarks concatenated, the first `len` kept.
pub fn write_meta(entries: &[MetaEntry], out: &mut Vec<u8>) {
    debug_assert!(writable(entries));
    // A trie over the paths in an arena; children are kept in first-insertion order as a linked list. Entries
    // arrive in document order, so the child wanted is nearly always the last one made, and most nodes have a few
    // children: those are searched in place. Only the children of wide nodes (a list of many scrubbed objects, or an
    // attacker's object with thousands of keys) go into a map, so no input makes this quadratic.
    const NONE: u32 = u32::MAX;
    /// Children searched in place; a node with more has them in `wide`.
    const NARROW: u32 = 8;
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
        for segment in entry.path.iter().map(String::as_str).chain(std::iter::once("")) {
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
        if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        } else {
            // Writing a string into a Vec cannot fail.
            serde_json::to_writer(&mut *out, text).expect("a string serializes");
        }
    }
    fn number(out: &mut Vec<u8>, value: usize) {
        serde_json::to_writer(&mut *out, &value).expect("a number serializes");
    }
    fn object(nodes: &[Node<'_>], entries: &[MetaEntry], next_entry: &[u32], id: u32, out: &mut Vec<u8>) {
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
    fn leaf(entries: &[MetaEntry], next_entry: &[u32], first_entry: u32, out: &mut Vec<u8>) {
        // `merge_meta` adds `rem` at the first entry with remarks and `len` at the first with a length, so the key
        // that comes first is the one whose entry comes first.
        let mut rem_at = None;
        let mut len = None;
        for (n, entry) in entries_from(entries, next_entry, first_entry).enumerate() {
            if rem_at.is_none() && !entry.remarks.is_empty() {
                rem_at = Some(n);
            }
            if len.is_none() {
                len = entry.len.map(|len| (n, len));
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
                let remarks = entries_from(entries, next_entry, first_entry).flat_map(|entry| &entry.remarks);
                for (n, remark) in remarks.enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    string(out, &remark.rule);
                    out.push(b',');
                    string(out, remark.ty);
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
    fn entries_from<'e>(
        entries: &'e [MetaEntry],
        next_entry: &'e [u32],
        first: u32,
    ) -> impl Iterator<Item = &'e MetaEntry> {
        std::iter::successors(Some(first), move |&at| {
            Some(next_entry[at as usize]).filter(|&next| next != NONE)
        })
        .map(move |at| &entries[at as usize])
    }
    object(&nodes, entries, &next_entry, 0, out);
}

#[cfg(test)]
mod tests {
    use super::super::Remark;
    use super::*;

    fn via_tree(entries: &[MetaEntry]) -> Vec<u8> {
        let mut root = Map::new();
        merge_meta(&mut root, entries.to_vec());
        serde_json::to_vec(&root["_meta"]).unwrap()
    }

    fn direct(entries: &[MetaEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        write_meta(entries, &mut out);
        out
    }

    fn entry(path: &[&str], rules: &[&str], len: Option<usize>) -> MetaEntry {
        MetaEntry {
            path: path.iter().map(|s| s.to_string()).collect(),
            remarks: rules
                .iter()
                .enumerate()
                .map(|(n, rule)| Remark {
                    rule: rule.to_string(),
                    ty: if n % 2 == 0 { "s" } else { "x" },
                    range: (n % 3 == 0).then_some((n, n + 7)),
                })
                .collect(),
            len,
        }
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

        // A wide node (children found through the map), revisited out of order.
        let indices: Vec<String> = (0..40).map(|n| n.to_string()).collect();
        let mut wide: Vec<MetaEntry> = indices
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
            let entries: Vec<MetaEntry> = (0..count)
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
