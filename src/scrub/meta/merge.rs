//! The log merged into the `_meta` an SDK already sent, written in one pass over a small tree of the SDK's text:
//! byte for byte what [`merge_meta`](super::merge_meta) into the parsed `Value` followed by `serde_json::to_writer`
//! gives, without building, serializing and freeing that `Value` (a sixth of the scrub of the raw SDK captures,
//! for the few items that carry a `_meta`; issue #11).
//!
//! SDK values are kept as slices of its text, so the text must be what serde_json would write back: [`parse`] gives
//! up (and the caller takes the `Value` route) on whitespace, numbers serde_json would write differently (fractions,
//! exponents, `-0`, leading zeros, more digits than any `i64` holds), escapes it would write differently, duplicate
//! keys (serde_json keeps the first key's place with the last value) and objects wider than [`NARROW`] or deeper
//! than [`MAX_DEPTH`]. SDKs write compact JSON of short keys, so none of these happens in the captures.

use std::collections::HashMap;

use super::super::stream::find_string_special;
use super::{LogEntry, MetaLog, NARROW, decimal, push_escaped};

/// Deeper SDK `_meta` goes the `Value` way (serde_json's own limit is 128; the writer here recurses).
const MAX_DEPTH: usize = 64;

const NONE: u32 = u32::MAX;
const LEAF: &[u8] = b"\"\"";
const REM: &[u8] = b"\"rem\"";
const LEN: &[u8] = b"\"len\"";

/// A value of the merged `_meta`.
#[derive(Clone, Copy)]
enum Val<'a> {
    /// An object: index of `Tree::objects`.
    Object(u32),
    /// Any other SDK value, as its text (already what serde_json writes).
    Raw(&'a [u8]),
    /// A `rem` list the log appends to: the SDK's own array (if it sent one) and the entries whose remarks follow,
    /// chained through `Tree::next_remark`.
    Rem {
        sdk: Option<&'a [u8]>,
        first: u32,
        last: u32,
    },
    /// A `len` the log added.
    Len(usize),
}

/// A key and its value, in its object's list of keys (insertion order, as `serde_json::Map` keeps them).
struct Node<'a> {
    /// The key as JSON, quotes included.
    key: &'a [u8],
    value: Val<'a>,
    next: u32,
}

#[derive(Clone, Copy)]
struct Object<'a> {
    first: u32,
    last: u32,
    len: u32,
    /// The SDK's text of the object (empty for ours), written as it is while the log leaves the object alone.
    sdk: &'a [u8],
    /// Whether a log path went through the object (which may change it): then it is written key by key.
    touched: bool,
}

/// The merged `_meta`: SDK objects and the log's paths in one tree, each object's keys a linked list. A node whose
/// value is replaced (an SDK value that is not an object where the log needs one, as `merge_meta` replaces it)
/// keeps its place and gets a new object, so children of the old one are never found again.
pub(super) struct Tree<'a> {
    nodes: Vec<Node<'a>>,
    objects: Vec<Object<'a>>,
    /// Keys of objects wider than [`NARROW`] (the log adding many fields under one node); narrower ones are searched
    /// in place, so no input makes this quadratic.
    wide: HashMap<(u32, &'a [u8]), u32>,
    /// Per log entry, the next entry whose remarks follow it in the same `rem` list.
    next_remark: Vec<u32>,
    text: &'a [u8],
    log: &'a MetaLog,
    root: u32,
}

/// The merged `_meta` of `sdk` (the SDK's `_meta` text) and `log`, or `None` when `sdk` is not in the form this
/// route can copy (see the module docs): the caller then merges through a `Value`, which handles anything.
pub(super) fn merge<'a>(sdk: &'a str, log: &'a MetaLog) -> Option<Tree<'a>> {
    // Sized for the SDK's keys too (a key and its value take at least five bytes of its text, an object two, and
    // SDK `_meta` is mostly short keys and objects): growing the node list once cost more than the rest of a push.
    let mut tree = Tree {
        nodes: Vec::with_capacity(log.entries.len() * 2 + sdk.len() / 12 + 16),
        objects: Vec::with_capacity(log.entries.len() + sdk.len() / 24 + 8),
        wide: HashMap::new(),
        next_remark: vec![NONE; log.entries.len()],
        text: &log.text,
        log,
        root: NONE,
    };
    let mut parser = Parser {
        text: sdk.as_bytes(),
        pos: 0,
    };
    let root = parser.value(&mut tree, 0)?;
    if parser.pos != sdk.len() {
        return None;
    }
    let root = match root {
        Val::Object(root) => root,
        // An SDK `_meta` that is not an object is replaced by ours, as `merge_meta` does.
        _ => tree.object(),
    };
    // The objects along the last entry's path, the root first. Entries come in document order and mostly start as
    // the one before did: those objects are taken from here, not looked up again. They are still the ones a lookup
    // would find: an entry only puts objects in place of values that are not objects, and replaces an object only
    // at a leaf's `rem`, which no path goes through before the leaf's `""`.
    let mut chain = Vec::with_capacity(16);
    chain.push(root);
    for (at, entry) in log.entries.iter().enumerate() {
        tree.add(&mut chain, at as u32, entry);
    }
    tree.root = root;
    Some(tree)
}

impl<'a> Tree<'a> {
    fn object(&mut self) -> u32 {
        self.objects.push(Object {
            first: NONE,
            last: NONE,
            len: 0,
            sdk: b"",
            touched: false,
        });
        (self.objects.len() - 1) as u32
    }

    /// The node of `key` in `object`.
    fn find(&self, object: u32, key: &[u8]) -> Option<u32> {
        let list = self.objects[object as usize];
        if list.last != NONE && self.nodes[list.last as usize].key == key {
            return Some(list.last);
        }
        if list.len as usize > NARROW {
            return self.wide.get(&(object, key)).copied();
        }
        let mut node = list.first;
        while node != NONE && self.nodes[node as usize].key != key {
            node = self.nodes[node as usize].next;
        }
        (node != NONE).then_some(node)
    }

    /// Appends `key` to `object` (which does not hold it).
    fn push(&mut self, object: u32, key: &'a [u8], value: Val<'a>) -> u32 {
        let id = self.nodes.len() as u32;
        self.nodes.push(Node { key, value, next: NONE });
        let list = &mut self.objects[object as usize];
        let previous = std::mem::replace(&mut list.last, id);
        if previous == NONE {
            list.first = id;
        } else {
            self.nodes[previous as usize].next = id;
        }
        list.len += 1;
        let len = list.len as usize;
        if len == NARROW + 1 {
            let mut node = self.objects[object as usize].first;
            while node != NONE {
                self.wide.insert((object, self.nodes[node as usize].key), node);
                node = self.nodes[node as usize].next;
            }
        } else if len > NARROW + 1 {
            self.wide.insert((object, key), id);
        }
        id
    }

    /// The object under `key` in `object`, made (or put in place of a value that is not one) if needed: `descend`.
    fn child_object(&mut self, object: u32, key: &'a [u8]) -> u32 {
        self.objects[object as usize].touched = true;
        match self.find(object, key) {
            Some(node) => match self.nodes[node as usize].value {
                Val::Object(child) => child,
                _ => {
                    let child = self.object();
                    self.nodes[node as usize].value = Val::Object(child);
                    child
                }
            },
            None => {
                let child = self.object();
                self.push(object, key, Val::Object(child));
                child
            }
        }
    }

    /// One log entry, as `merge_meta` adds it.
    fn add(&mut self, chain: &mut Vec<u32>, at: u32, entry: &LogEntry) {
        let log = self.log;
        let shared = entry.shared.min(chain.len() - 1);
        chain.truncate(shared + 1);
        let mut object = chain[shared];
        for segment in &log.segments[entry.segments.0 + shared..entry.segments.1] {
            object = self.child_object(object, log.json(segment));
            chain.push(object);
        }
        let leaf = self.child_object(object, LEAF);
        self.objects[leaf as usize].touched = true;
        if entry.remarks_json.0 < entry.remarks_json.1 {
            match self.find(leaf, REM) {
                Some(node) => {
                    let value = &mut self.nodes[node as usize].value;
                    match *value {
                        Val::Rem { ref mut last, .. } => {
                            self.next_remark[*last as usize] = at;
                            *last = at;
                        }
                        // The SDK's own list: ours follow its remarks.
                        Val::Raw(sdk) if sdk.first() == Some(&b'[') => {
                            *value = Val::Rem {
                                sdk: Some(sdk),
                                first: at,
                                last: at,
                            }
                        }
                        // Not a list: replaced by ours, in its place.
                        _ => {
                            *value = Val::Rem {
                                sdk: None,
                                first: at,
                                last: at,
                            }
                        }
                    }
                }
                None => {
                    self.push(
                        leaf,
                        REM,
                        Val::Rem {
                            sdk: None,
                            first: at,
                            last: at,
                        },
                    );
                }
            }
        }
        if let Some(len) = entry.len
            && self.find(leaf, LEN).is_none()
        {
            self.push(leaf, LEN, Val::Len(len));
        }
    }

    /// Writes the merged `_meta` object.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.reserve(self.text.len() + 16 * self.log.entries.len());
        self.write_object(self.root, out);
    }

    fn write_object(&self, object: u32, out: &mut Vec<u8>) {
        let list = &self.objects[object as usize];
        if !list.touched && !list.sdk.is_empty() {
            // Already as serde_json writes it (checked when read): one copy, however deep.
            out.extend_from_slice(list.sdk);
            return;
        }
        out.push(b'{');
        let mut node = self.objects[object as usize].first;
        while node != NONE {
            let at = &self.nodes[node as usize];
            if node != self.objects[object as usize].first {
                out.push(b',');
            }
            out.extend_from_slice(at.key);
            out.push(b':');
            match at.value {
                Val::Object(child) => self.write_object(child, out),
                Val::Raw(text) => out.extend_from_slice(text),
                Val::Len(len) => out.extend_from_slice(decimal(len, &mut [0; 20])),
                Val::Rem { sdk, first, .. } => {
                    // Each of our remarks follows a comma: the first one's is skipped unless the SDK's list has some
                    // (written without its `]`).
                    let mut bare = true;
                    match sdk {
                        Some(sdk) if sdk.len() > 2 => {
                            out.extend_from_slice(&sdk[..sdk.len() - 1]);
                            bare = false;
                        }
                        _ => out.push(b'['),
                    }
                    let mut entry = first;
                    while entry != NONE {
                        let (start, end) = self.log.entries[entry as usize].remarks_json;
                        out.extend_from_slice(&self.text[if bare { start + 1 } else { start }..end]);
                        bare = false;
                        entry = self.next_remark[entry as usize];
                    }
                    out.push(b']');
                }
            }
            node = at.next;
        }
        out.push(b'}');
    }
}

/// Reads the SDK's `_meta` into the tree, checking as it goes that each value's text is what serde_json writes.
struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn value(&mut self, tree: &mut Tree<'a>, depth: usize) -> Option<Val<'a>> {
        let start = self.pos;
        match self.peek()? {
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let object = tree.object();
                self.pos += 1;
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    tree.objects[object as usize].sdk = &self.text[start..self.pos];
                    return Some(Val::Object(object));
                }
                loop {
                    let key = self.string()?;
                    if self.peek() != Some(b':') {
                        return None;
                    }
                    self.pos += 1;
                    let value = self.value(tree, depth + 1)?;
                    // Duplicates (serde_json keeps the first place and the last value) and wide objects go the
                    // `Value` way: the check stays cheap and neither comes from an SDK.
                    if tree.objects[object as usize].len as usize >= NARROW || tree.find(object, key).is_some() {
                        return None;
                    }
                    tree.push(object, key, value);
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            tree.objects[object as usize].sdk = &self.text[start..self.pos];
                            return Some(Val::Object(object));
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.pos += 1;
                if self.peek() == Some(b']') {
                    self.pos += 1;
                } else {
                    loop {
                        // Objects in a list are read into the tree too, only to check their keys; the list is kept
                        // as its text.
                        self.value(tree, depth + 1)?;
                        match self.peek()? {
                            b',' => self.pos += 1,
                            b']' => {
                                self.pos += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            b'"' => {
                self.string()?;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => self.integer()?,
        }
        Some(Val::Raw(&self.text[start..self.pos]))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.text[self.pos..].starts_with(word).then(|| self.pos += word.len())
    }

    /// A string, quotes included, when serde_json would write it the same way.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return None;
        }
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.pos = find_string_special(self.text, self.pos)?;
            match self.text[self.pos] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    // The escaped byte can be a quote; `\u` digits are read as plain bytes.
                    self.pos += 2;
                }
                // serde_json refuses raw control characters.
                _ => return None,
            }
        }
        self.pos += 1;
        let json = self.text.get(start..self.pos)?;
        if escaped {
            // Rare: compared with serde_json's own writing of the decoded string (`\/`, `\u0041` or an uppercase
            // hex digit would be written otherwise).
            let decoded: String = serde_json::from_slice(json).ok()?;
            let mut again = Vec::with_capacity(json.len());
            push_escaped(&mut again, &decoded);
            if again != json {
                return None;
            }
        }
        Some(json)
    }

    /// An integer serde_json writes back as it is: no fraction or exponent, no leading zero, not `-0`, and at most
    /// 18 digits (so it fits an `i64` whatever its sign).
    fn integer(&mut self) -> Option<()> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        while self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.text[digits_start..self.pos];
        let canonical = match digits {
            [] => false,
            [b'0'] => !negative,
            [b'0', ..] => false,
            _ => digits.len() <= 18,
        };
        let whole = !matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        (canonical && whole && self.pos > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::super::{MetaLog, merge_meta, write_merged_meta};
    use crate::scrub::{Remark, Seg};

    /// What the `Value` route writes: the SDK's `_meta` parsed, `merge_meta`, serialized. `None` if serde_json
    /// refuses the text.
    fn via_value(sdk: &str, log: &MetaLog) -> Option<Vec<u8>> {
        let mut root = Map::new();
        root.insert("_meta".into(), serde_json::from_str::<Value>(sdk).ok()?);
        merge_meta(&mut root, log);
        Some(serde_json::to_vec(&root["_meta"]).unwrap())
    }

    fn merged(sdk: &str, log: &MetaLog) -> Option<Vec<u8>> {
        let mut out = b"prefix".to_vec();
        if write_merged_meta(sdk, log, &mut out) {
            assert!(out.starts_with(b"prefix"));
            Some(out.split_off(6))
        } else {
            assert_eq!(out, b"prefix", "nothing written when giving up");
            None
        }
    }

    fn log_of(entries: &[(&[&str], &[&str], Option<usize>)]) -> MetaLog {
        let mut log = MetaLog::default();
        for (path, rules, len) in entries {
            let path: Vec<Seg<'_>> = path.iter().map(|key| Seg::Key(key)).collect();
            let remarks: Vec<Remark<'_>> = rules
                .iter()
                .enumerate()
                .map(|(n, rule)| Remark {
                    rule,
                    ty: "s",
                    range: (n == 1).then_some((2, 40)),
                })
                .collect();
            log.add(&path, None, &remarks, *len, false);
        }
        log
    }

    /// The python SDK's `_meta` and ours for the same event, merged as the relay has always merged them: its
    /// objects first in its order, our paths added under them or after them, our remarks after its own in a shared
    /// `rem`, its `len` kept, a value that is not an object replaced in its place.
    #[test]
    fn an_sdk_meta_is_merged_as_it_always_was() {
        let sdk = r#"{"request":{"headers":{"Authorization":{"":{"rem":[["!config","s"]]}}}},"extra":{"password":{"":{"rem":[["!config","s"]],"len":9}},"odd":7},"err":[["x",{"a":1}]]}"#;
        let log = log_of(&[
            (&["request", "headers", "Cookie"], &["@cookie"], Some(40)),
            (&["extra", "password"], &["@password", "@secret"], Some(3)),
            (&["extra", "odd", "deep"], &["@email"], None),
            (&["message"], &[], Some(12)),
            (&["request", "headers", "Authorization"], &["@bearer"], None),
        ]);
        let expected = concat!(
            r#"{"request":{"headers":{"Authorization":{"":{"rem":[["!config","s"],["@bearer","s"]]}},"#,
            r#""Cookie":{"":{"rem":[["@cookie","s"]],"len":40}}}},"#,
            r#""extra":{"password":{"":{"rem":[["!config","s"],["@password","s"],["@secret","s",2,40]],"len":9}},"#,
            r#""odd":{"deep":{"":{"rem":[["@email","s"]]}}}},"#,
            r#""err":[["x",{"a":1}]],"message":{"":{"len":12}}}"#
        );
        assert_eq!(String::from_utf8(merged(sdk, &log).unwrap()).unwrap(), expected);
        assert_eq!(via_value(sdk, &log).unwrap(), expected.as_bytes());

        // Not an object: ours replaces it. `rem` that is not a list: replaced in its place; an empty one: filled.
        let log = log_of(&[(&["a"], &["r1"], Some(5)), (&["b"], &["r2"], None)]);
        for (sdk, expected) in [
            (
                "[1,2]",
                r#"{"a":{"":{"rem":[["r1","s"]],"len":5}},"b":{"":{"rem":[["r2","s"]]}}}"#,
            ),
            (
                "null",
                r#"{"a":{"":{"rem":[["r1","s"]],"len":5}},"b":{"":{"rem":[["r2","s"]]}}}"#,
            ),
            (
                r#"{"b":{"":{"rem":{"x":1},"len":null}},"a":{"":[]}}"#,
                r#"{"b":{"":{"rem":[["r2","s"]],"len":null}},"a":{"":{"rem":[["r1","s"]],"len":5}}}"#,
            ),
            (
                r#"{"a":{"":{"len":1,"rem":[]}}}"#,
                r#"{"a":{"":{"len":1,"rem":[["r1","s"]]}},"b":{"":{"rem":[["r2","s"]]}}}"#,
            ),
        ] {
            assert_eq!(
                String::from_utf8(merged(sdk, &log).unwrap()).unwrap(),
                expected,
                "{sdk}"
            );
            assert_eq!(via_value(sdk, &log).unwrap(), expected.as_bytes(), "{sdk}");
        }
    }

    /// Each form the one-pass route leaves to the `Value` route: text serde_json writes back otherwise (whitespace,
    /// numbers, escapes, duplicate keys; floats too, to keep the check simple) and the route's own limits.
    #[test]
    fn forms_it_cannot_copy_go_the_value_way() {
        let log = log_of(&[(&["a"], &["r1"], Some(5))]);
        let deep = format!(
            "{{\"z\":{}1{}}}",
            "[".repeat(super::MAX_DEPTH + 1),
            "]".repeat(super::MAX_DEPTH + 1)
        );
        let wide = format!(
            "{{{}}}",
            (0..=super::NARROW)
                .map(|n| format!("\"k{n}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let refused = [
            r#"{"a": {}}"#,
            "{\"a\":{}}\n",
            r#"{"a":1.0}"#,
            r#"{"a":1e3}"#,
            r#"{"a":-0}"#,
            r#"{"a\/b":1}"#,
            r#"{"\u0041":1}"#,
            r#"{"a":"\u001F"}"#,
            r#"{"a":1,"a":2}"#,
            r#"[{"a":1,"a":2}]"#,
        ];
        // Written back as sent, but past a limit of this route.
        let limits = [deep.as_str(), wide.as_str(), r#"{"z":1234567890123456789}"#];
        for sdk in limits {
            assert_eq!(via_value(sdk, &log).expect(sdk)[..12], sdk.as_bytes()[..12], "{sdk}");
            assert!(merged(sdk, &log).is_none(), "{sdk}");
        }
        for sdk in refused {
            // The `Value` route takes it.
            assert!(via_value(sdk, &log).is_some(), "{sdk}");
            assert!(merged(sdk, &log).is_none(), "{sdk}");
        }
        // Text serde_json refuses is refused here too (the caller then fails as it always has).
        for sdk in [
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":tru}"#,
            r#"{"a":007}"#,
            "{",
            "",
            r#"{"a":1}x"#,
        ] {
            assert!(via_value(sdk, &log).is_none(), "{sdk}");
            assert!(merged(sdk, &log).is_none(), "{sdk}");
        }
        // What serde_json writes as it was sent is taken.
        let accepted = [
            r#"{"a":{"":{"rem":[["!config","s",0,123456789012345678]],"len":-922337203685477580}}}"#,
            r#"{"q\"uote\\\n\u001f":[true,false,null,"é",0,-1]}"#,
            "{}",
            r#""text""#,
        ];
        for sdk in accepted {
            assert!(merged(sdk, &log).is_some(), "{sdk}");
            assert_eq!(merged(sdk, &log), via_value(sdk, &log), "{sdk}");
        }
    }

    /// A random JSON value as text: mostly what serde_json writes back unchanged, sometimes not (whitespace, floats,
    /// escapes it writes otherwise, duplicate keys, numbers too long). Returns whether it was written plainly.
    fn random_value(rng: &mut fastrand::Rng, out: &mut String, depth: usize, noisy: bool) -> bool {
        let keys = ["a", "b", "0", "", "rem", "len", "err", "é", "q\"uote", "ctl\u{1}"];
        let mut plain = true;
        let space = |rng: &mut fastrand::Rng, out: &mut String, plain: &mut bool| {
            if noisy && rng.u8(..40) == 0 {
                out.push(' ');
                *plain = false;
            }
        };
        let kind = if depth == 0 { 0 } else { rng.u8(..10) };
        match kind {
            0..=3 if depth < 5 => {
                out.push('{');
                let mut used = Vec::new();
                for n in 0..rng.usize(0..5) {
                    if n > 0 {
                        out.push(',');
                    }
                    let mut key = rng.usize(..keys.len());
                    if used.contains(&key) {
                        if noisy && rng.u8(..4) == 0 {
                            plain = false;
                        } else {
                            continue_with_unused(&mut key, &used, keys.len());
                        }
                    }
                    used.push(key);
                    if noisy && keys[key] == "a" && rng.u8(..8) == 0 {
                        out.push_str(r#""\u0061""#);
                        plain = false;
                    } else {
                        out.push_str(&serde_json::to_string(keys[key]).unwrap());
                    }
                    space(rng, out, &mut plain);
                    out.push(':');
                    plain &= random_value(rng, out, depth + 1, noisy);
                }
                // A trailing comma from a skipped key would be invalid: none is left (keys are only skipped when
                // all are used, which 5 < 10 keys never reaches).
                out.push('}');
            }
            4..=5 if depth < 5 => {
                out.push('[');
                for n in 0..rng.usize(0..4) {
                    if n > 0 {
                        out.push(',');
                        space(rng, out, &mut plain);
                    }
                    plain &= random_value(rng, out, depth + 1, noisy);
                }
                out.push(']');
            }
            6 => {
                let number: i64 = match rng.u8(..4) {
                    0 => rng.i64(-1000..1000),
                    1 => rng.i64(-999_999_999_999_999_999..=999_999_999_999_999_999),
                    _ => rng.i64(0..100),
                };
                out.push_str(&number.to_string());
                if noisy && rng.u8(..6) == 0 {
                    match rng.u8(..4) {
                        0 => out.push_str(".5"),
                        1 => out.push_str("e2"),
                        2 => out.push_str("0000000000000000000"),
                        _ => out.push_str(".0"),
                    }
                    plain = false;
                }
            }
            7 => {
                let texts = ["!config", "x", "", "say \"hi\"", "tab\there", "\u{7f}é/", "\u{1b}"];
                out.push_str(&serde_json::to_string(texts[rng.usize(..texts.len())]).unwrap());
                if noisy && rng.u8(..10) == 0 {
                    out.pop();
                    out.push_str(r#"\/""#);
                    plain = false;
                }
            }
            8 => out.push_str(["true", "false", "null"][rng.usize(..3)]),
            _ => {
                // A `rem` list as SDKs write it.
                out.push_str(r#"[["!config","s"],["@ip","x",0,9]]"#);
            }
        }
        space(rng, out, &mut plain);
        plain
    }

    fn continue_with_unused(key: &mut usize, used: &[usize], count: usize) {
        while used.contains(key) {
            *key = (*key + 1) % count;
        }
    }

    /// Random SDK metas merged with random logs (shared keys, `""`, `rem` and `len` as path segments, escapes,
    /// repeated and interleaved paths, wide nodes): what the one-pass route writes is what the `Value` route writes,
    /// and it is taken for every SDK text serde_json writes back unchanged.
    #[test]
    fn random_sdk_metas_and_logs_match_the_value_route() {
        let mut rng = fastrand::Rng::with_seed(29);
        let segments = ["a", "b", "0", "", "rem", "len", "err", "é", "q\"uote"];
        let rules = ["@email", "!config", "ru\"le"];
        let (mut taken, mut left) = (0, 0);
        for round in 0..6000 {
            let mut sdk = String::new();
            let noisy = rng.u8(..3) == 0;
            let depth = usize::from(rng.u8(..20) == 0);
            let plain = random_value(&mut rng, &mut sdk, depth, noisy);
            let mut log = MetaLog::default();
            let wide = rng.u8(..30) == 0;
            let count = if wide { 80 } else { rng.usize(1..10) };
            let indices: Vec<String> = (0..count).map(|n| n.to_string()).collect();
            for n in 0..count {
                let mut path: Vec<Seg<'_>> = (0..rng.usize(0..4))
                    .map(|_| Seg::Key(segments[rng.usize(..segments.len())]))
                    .collect();
                if wide {
                    path = vec![Seg::Key("a"), Seg::Key(&indices[rng.usize(..=n)])];
                }
                let remarks: Vec<Remark<'_>> = (0..rng.usize(0..3))
                    .map(|n| Remark {
                        rule: rules[rng.usize(..rules.len())],
                        ty: if n == 0 { "s" } else { "x" },
                        range: rng.bool().then(|| (rng.usize(..9), rng.usize(9..500))),
                    })
                    .collect();
                let (extra, path) = match path.split_last() {
                    Some((Seg::Key(key), parent)) if rng.bool() => (Some(*key), parent),
                    _ => (None, path.as_slice()),
                };
                log.add(
                    path,
                    extra,
                    &remarks,
                    rng.bool().then(|| rng.usize(..100_000)),
                    rng.bool(),
                );
            }
            let expected = via_value(&sdk, &log);
            match merged(&sdk, &log) {
                Some(out) => {
                    assert_eq!(Some(&out), expected.as_ref(), "round {round}: {sdk}");
                    taken += 1;
                }
                None => {
                    assert!(!plain, "round {round}: {sdk} should be taken");
                    left += 1;
                }
            }
        }
        assert!(taken > 4000 && left > 300, "{taken} taken, {left} left");
    }
}
