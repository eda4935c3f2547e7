//! Sentry `_meta` remarks: `{"_meta": {"request": {"headers": {"Authorization": {"": {"rem": [...], "len": n}}}}}}`.
//!
//! Sentry's UI reads these to show which rule removed what. Entries mirror the path of the changed field (array
//! indices as string keys) and are merged into whatever `_meta` the SDK already sent.
//!
//! The walk records entries in a [`MetaLog`]: every path segment and remark goes into one string buffer, already as
//! the JSON text that will be written, so a change costs no allocation of its own (an owned `String` per segment and
//! per rule id was about 7 % of the scrub of a PII-dense event, half of it in freeing them; issue #11).
//!
//! Two ways to the same JSON: [`merge_meta`] builds a `Value` tree (needed to merge into the SDK's own `_meta`, and by
//! the tree walk), and [`write_meta`] writes the object straight from the log, for the common case of an item
//! without a `_meta` of its own. On PII-dense events the tree cost about 40 % of the scrub: a `String` and a hashed
//! map per path segment, serialized and then freed (issue #11). Entries come in document order, so `write_meta`
//! mostly writes them in one pass, closing and opening objects as paths change; a trie over the paths handles the
//! rest (a path that comes back after another one, duplicate keys). An item that brings its own `_meta` (python SDK
//! events, some node ones) is merged by [`write_merged_meta`] over a small tree of the SDK's text ([`merge`]), which
//! falls back to the `Value` tree only for text serde_json would write back otherwise.

mod merge;

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Remark, Seg};

/// The `_meta` entries of one item, in the order they were recorded. Each entry is a path, remarks and maybe the
/// original length. Path segments and remarks are kept as the JSON text [`write_meta`] writes (`"key"`,
/// `,["rule","s",0,10]`), rendered once when recorded, so writing the object is mostly copying ranges of one buffer.
/// Remarks are kept only as that text (the `Value` route parses it back): a record of each remark beside its text
/// was 64 bytes written per remark, for an address list thousands of them (issue #11).
/// Cleared, not dropped, between items, so its buffers are reused.
#[derive(Debug, Default)]
pub struct MetaLog {
    /// Rendered path segments and remarks, back to back; the raw text of a segment that needed escapes follows its
    /// JSON. UTF-8 (made of `str`s and their JSON escapes), kept as bytes because pushing bytes is cheaper.
    text: Vec<u8>,
    /// Path segments of all entries, in order.
    segments: Vec<Segment>,
    entries: Vec<LogEntry>,
}

/// One path segment: byte ranges of `MetaLog::text`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// The segment as a JSON string, quotes included.
    json: (usize, usize),
    /// The segment itself: inside the quotes of `json` unless it needed escapes.
    raw: (usize, usize),
}

#[derive(Debug, Clone, Copy)]
struct LogEntry {
    /// Range of `MetaLog::segments`.
    segments: (usize, usize),
    /// How many leading segments are the same as the previous entry's.
    shared: usize,
    /// Byte range of `MetaLog::text`: the remarks as JSON arrays, each after a comma.
    remarks_json: (usize, usize),
    len: Option<usize>,
}

/// One entry of a [`MetaLog`], borrowed.
#[derive(Clone, Copy)]
pub(crate) struct EntryRef<'l> {
    log: &'l MetaLog,
    /// `log.text`, checked to be UTF-8 once for all entries.
    text: &'l str,
    entry: LogEntry,
}

impl<'l> EntryRef<'l> {
    pub(crate) fn path(self) -> impl Iterator<Item = &'l str> {
        let (log, text) = (self.log, self.text);
        log.segments[self.entry.segments.0..self.entry.segments.1]
            .iter()
            .map(move |segment| &text[segment.raw.0..segment.raw.1])
    }

    /// The entry's remarks as the `Value`s [`merge_meta`] adds: `["rule","s",start,end]` each, read back from their
    /// JSON (which is what serde_json writes for those values).
    pub(crate) fn remark_values(self) -> Vec<Value> {
        let (start, end) = self.entry.remarks_json;
        if start == end {
            return Vec::new();
        }
        // `[` and the remarks after the comma before the first one.
        let mut list = String::with_capacity(end - start + 1);
        list.push('[');
        list.push_str(&self.text[start + 1..end]);
        list.push(']');
        serde_json::from_str(&list).expect("the log's remarks are JSON")
    }

    fn has_remarks(self) -> bool {
        self.entry.remarks_json.0 < self.entry.remarks_json.1
    }

    pub(crate) fn len(self) -> Option<usize> {
        self.entry.len
    }
}

/// Whether `text` needs escapes as a JSON string (a `"`, `\` or control character). Segments and rule ids are
/// short: their last bytes are read as one word (overlapping bytes already read, which does not change a yes/no),
/// not byte by byte. Inlined: called for every segment and rule id, and the call cost about a fifth of it.
#[inline(always)]
fn needs_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let len = bytes.len();
    let special = |word: u64| super::stream::string_special_flags(word) != 0;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    match len {
        0 => false,
        1..=3 => bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\'),
        4..=7 => special(super::four_to_eight_bytes(bytes)),
        _ => (0..len / 8).any(|n| special(word(n * 8))) || special(word(len - 8)),
    }
}

/// Whether two byte strings are equal. Path segments are short: up to 16 bytes are compared as two overlapping
/// words (or four-byte halves), inline, not through a call of `bcmp`.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    len == b.len()
        && match len {
            0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
            4..=8 => super::four_to_eight_bytes(a) == super::four_to_eight_bytes(b),
            9..=16 => word(a, 0) == word(b, 0) && word(a, len - 8) == word(b, len - 8),
            _ => a == b,
        }
}

impl MetaLog {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The heap the log's buffers hold (their capacity), to bound what a thread keeps between envelopes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.segments.capacity() * std::mem::size_of::<Segment>()
            + self.entries.capacity() * std::mem::size_of::<LogEntry>()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.segments.clear();
        self.entries.clear();
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        // Only `str`s and their JSON escapes were pushed; checked once here rather than per segment (a check per
        // segment cost about as much as the rest of `merge_meta`).
        let text = std::str::from_utf8(&self.text).expect("the log holds whole strs");
        self.entries
            .iter()
            .map(move |&entry| EntryRef { log: self, text, entry })
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
        let first_segment = self.segments.len();
        let previous = self.entries.last().map_or((0, 0), |last| last.segments);
        let previous_len = previous.1 - previous.0;
        let count = path.len() + usize::from(extra.is_some());
        let mut shared = 0;
        let mut digits = [0u8; 20];
        for at in 0..count {
            let raw: &str = match path.get(at) {
                Some(Seg::Key(key)) => key,
                Some(&Seg::Index(index)) => decimal_str(index, &mut digits),
                None => extra.unwrap_or_default(),
            };
            // Entries come in document order, so a path mostly starts as the last one did: those segments are
            // compared, not copied again.
            if shared == at && at < previous_len {
                let segment = self.segments[previous.0 + at];
                if same_bytes(&self.text[segment.raw.0..segment.raw.1], raw.as_bytes()) {
                    self.segments.push(segment);
                    shared += 1;
                    continue;
                }
            }
            let segment = self.push_segment(raw);
            self.segments.push(segment);
        }
        let segments = (first_segment, self.segments.len());
        if merge && shared == count && shared == previous_len && !self.entries.is_empty() {
            // The path is the last entry's: drop the copy just made (it holds no text of its own).
            self.segments.truncate(first_segment);
            let json_start = self.text.len();
            self.push_remarks(remarks);
            let json_end = self.text.len();
            if let Some(last) = self.entries.last_mut() {
                // Only the last entry is ever extended, so its remarks' JSON is the last pushed (this path pushed no
                // segment text).
                debug_assert_eq!(last.remarks_json.1, json_start);
                last.remarks_json.1 = json_end;
                if last.len.is_none() {
                    last.len = len;
                }
            }
            return;
        }
        let json_start = self.text.len();
        self.push_remarks(remarks);
        self.entries.push(LogEntry {
            segments,
            shared,
            remarks_json: (json_start, self.text.len()),
            len,
        });
    }

    /// Writes a segment as a JSON string (and its raw text after it when that needed escapes).
    fn push_segment(&mut self, raw: &str) -> Segment {
        let start = self.text.len();
        if needs_escape(raw) {
            push_escaped(&mut self.text, raw);
            let json_end = self.text.len();
            self.text.extend_from_slice(raw.as_bytes());
            Segment {
                json: (start, json_end),
                raw: (json_end, self.text.len()),
            }
        } else {
            self.text.reserve(raw.len() + 2);
            self.text.push(b'"');
            self.text.extend_from_slice(raw.as_bytes());
            self.text.push(b'"');
            Segment {
                json: (start, self.text.len()),
                raw: (start + 1, self.text.len() - 1),
            }
        }
    }

    /// Renders remarks as `,["rule","s",start,end]` each, as serde_json writes the `Value` [`merge_meta`] builds.
    /// A string with many findings has many remarks of one rule and type (an address list: thousands of `@email`),
    /// so their head `,["rule","s"` is rendered once per run and kept on the stack; each remark after the first is
    /// its numbers written backwards from the end of a stack buffer, the head copied before them (a fixed-size copy)
    /// and one copy into the log (a copy per piece and an escape check per rule id cost about twice as much; issue
    /// #11).
    fn push_remarks(&mut self, remarks: &[Remark<'_>]) {
        match remarks {
            [] => {}
            // Most fields have one remark: written straight into the log, without the stack buffers of a run
            // (zeroing them and copying out of them was about a third of recording a one-remark field; issue #11).
            [remark] => self.push_remark(remark),
            _ => self.push_runs(remarks),
        }
    }

    /// [`MetaLog::push_remarks`] of several remarks, in runs of one rule and type.
    fn push_runs(&mut self, remarks: &[Remark<'_>]) {
        let mut rendered = [0u8; HEAD_MAX + TAIL_MAX];
        // The head of the run, at the end of its buffer.
        let mut kept_head = [0u8; HEAD_MAX];
        // The run's rule id and type, and the length of its head in `kept_head` (0: too long to keep there).
        let mut run: Option<(&str, &str, usize)> = None;
        for remark in remarks {
            let tail = render_tail(&mut rendered, remark.range);
            match run {
                Some((rule, ty, len))
                    if len > 0 && super::same_text(rule, remark.rule) && super::same_text(ty, remark.ty) =>
                {
                    // `tail` is at least HEAD_MAX: the tail is at most TAIL_MAX bytes.
                    rendered[tail - HEAD_MAX..tail].copy_from_slice(&kept_head);
                    self.text.extend_from_slice(&rendered[tail - len..]);
                }
                _ => {
                    let start = self.text.len();
                    self.push_head(remark);
                    let len = self.text.len() - start;
                    let kept = if len <= HEAD_MAX {
                        kept_head[HEAD_MAX - len..].copy_from_slice(&self.text[start..]);
                        len
                    } else {
                        0
                    };
                    self.text.extend_from_slice(&rendered[tail..]);
                    run = Some((remark.rule, remark.ty, kept));
                }
            }
        }
    }

    /// Writes one remark, `,["rule","s",start,end]`. A rule id of up to
    /// [`SHORT`] bytes without escapes (all the built-in ones) is written into a fixed-size window at the end of the
    /// log, with fixed-size copies, and the window cut to what was written: one length check and no call, where a
    /// push per piece checked the capacity each time and copied the rule id through `memcpy`.
    fn push_remark(&mut self, remark: &Remark<'_>) {
        let rule = remark.rule.as_bytes();
        let &[ty] = remark.ty.as_bytes() else {
            return self.push_remark_in_pieces(remark);
        };
        if rule.len() > SHORT || needs_escape(remark.rule) {
            return self.push_remark_in_pieces(remark);
        }
        let start = self.text.len();
        self.text.extend_from_slice(&[0; WINDOW]);
        let window = &mut self.text[start..];
        window[..3].copy_from_slice(b",[\"");
        copy_short(&mut window[3..3 + rule.len()], rule);
        let mut at = 3 + rule.len();
        window[at..at + 5].copy_from_slice(&[b'"', b',', b'"', ty, b'"']);
        at += 5;
        if let Some((first, last)) = remark.range {
            for number in [first, last] {
                window[at] = b',';
                let digits = number.checked_ilog10().unwrap_or(0) as usize + 1;
                write_decimal(&mut window[at + 1..at + 1 + digits], number);
                at += 1 + digits;
            }
        }
        window[at] = b']';
        self.text.truncate(start + at + 1);
    }

    /// [`MetaLog::push_remark`] for any rule id and type.
    fn push_remark_in_pieces(&mut self, remark: &Remark<'_>) {
        self.push_head(remark);
        push_tail(&mut self.text, remark.range);
    }

    /// Writes a remark's head, `,["rule","s"`.
    fn push_head(&mut self, remark: &Remark<'_>) {
        let text = &mut self.text;
        text.reserve(remark.rule.len() + 56);
        if needs_escape(remark.rule) {
            text.extend_from_slice(b",[");
            push_escaped(text, remark.rule);
        } else {
            text.extend_from_slice(b",[\"");
            text.extend_from_slice(remark.rule.as_bytes());
            text.push(b'"');
        }
        // `s`, `x` or `p`: nothing to escape.
        match *remark.ty.as_bytes() {
            [ty] => text.extend_from_slice(&[b',', b'"', ty, b'"']),
            ref ty => {
                text.extend_from_slice(b",\"");
                text.extend_from_slice(ty);
                text.push(b'"');
            }
        }
    }

    /// Whether [`write_meta`] can write this log: not when a path has an empty segment, because its node would be
    /// the same key as a field's remark leaf (`""`), which only the `Value` route merges the way it always has.
    pub fn writable(&self) -> bool {
        !self.segments.iter().any(|segment| segment.raw.0 == segment.raw.1)
    }

    fn json(&self, segment: &Segment) -> &[u8] {
        &self.text[segment.json.0..segment.json.1]
    }
}

/// The longest remark head [`MetaLog::push_remarks`] keeps on the stack: `,["` and `","s"` around a rule id of up
/// to 64 bytes as JSON (a longer one, a long custom rule id, is rendered again for every remark).
const HEAD_MAX: usize = 64 + 8;
/// The longest remark tail, `,start,end]`: two numbers of up to 20 digits.
const TAIL_MAX: usize = 43;

/// The longest rule id [`MetaLog::push_remark`] writes through a window, and the window: a remark of such a rule id
/// is at most 8 + 48 + 43 bytes.
const SHORT: usize = 48;
const WINDOW: usize = 112;

/// `dst.copy_from_slice(src)` for the short texts of the log: up to 32 bytes as two overlapping fixed-size copies
/// (inline loads and stores), not a call of `memcpy`.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    debug_assert_eq!(dst.len(), len);
    match len {
        0..=3 => dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s),
        4..=8 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[len - 4..len].copy_from_slice(&src[len - 4..len]);
        }
        9..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[len - 8..len].copy_from_slice(&src[len - 8..len]);
        }
        17..=32 => {
            dst[..16].copy_from_slice(&src[..16]);
            dst[len - 16..len].copy_from_slice(&src[len - 16..len]);
        }
        _ => dst.copy_from_slice(src),
    }
}

/// Appends a remark's tail, `,start,end]` or `]`, as [`render_tail`] renders it.
#[inline]
fn push_tail(out: &mut Vec<u8>, range: Option<(usize, usize)>) {
    if let Some((start, end)) = range {
        out.push(b',');
        push_number(out, start);
        out.push(b',');
        push_number(out, end);
    }
    out.push(b']');
}

/// Writes a remark's tail, `,start,end]` or `]`, at the end of `out`; returns where it starts.
fn render_tail(out: &mut [u8; HEAD_MAX + TAIL_MAX], range: Option<(usize, usize)>) -> usize {
    let mut at = out.len() - 1;
    out[at] = b']';
    if let Some((start, end)) = range {
        at = write_decimal(&mut out[..at], end) - 1;
        out[at] = b',';
        at = write_decimal(&mut out[..at], start) - 1;
        out[at] = b',';
    }
    at
}

/// Writes `value` in decimal at the end of `out`, as `usize`'s `Display` (and serde_json) writes it, without the
/// formatting machinery; returns where its digits start. Two digits per division (offsets into long strings have
/// four or five).
#[inline]
fn write_decimal(out: &mut [u8], value: usize) -> usize {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
                                5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
    let mut at = out.len();
    let mut rest = value;
    while rest >= 100 {
        let pair = (rest % 100) * 2;
        rest /= 100;
        at -= 2;
        out[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        at -= 2;
        out[at..at + 2].copy_from_slice(&PAIRS[rest * 2..rest * 2 + 2]);
    } else {
        at -= 1;
        out[at] = b'0' + rest as u8;
    }
    at
}

/// `value` in decimal ([`write_decimal`]).
fn decimal(value: usize, digits: &mut [u8; 20]) -> &[u8] {
    let at = write_decimal(digits, value);
    &digits[at..]
}

fn decimal_str(value: usize, digits: &mut [u8; 20]) -> &str {
    // ASCII digits: always UTF-8.
    std::str::from_utf8(decimal(value, digits)).unwrap_or_default()
}

/// Appends `value` in decimal; the small numbers most ranges and lengths are without a copy of a digit buffer.
#[inline]
fn push_number(out: &mut Vec<u8>, value: usize) {
    if value < 10 {
        out.push(b'0' + value as u8);
    } else if value < 100 {
        out.extend_from_slice(&[b'0' + (value / 10) as u8, b'0' + (value % 10) as u8]);
    } else {
        out.extend_from_slice(decimal(value, &mut [0; 20]));
    }
}

/// `text` as a JSON string with its escapes, as serde_json writes it.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    serde_json::to_writer(out, text).expect("a string serializes");
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
                rem.extend(entry.remark_values());
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

/// Children of one node the writers compare in place; a node with more goes to a map (trie) or gives up the direct
/// route. At most this many comparisons per segment, and few events have a node this wide (the raw python event's
/// widest has 12 children; with 8 here, hashing their keys cost more than comparing them).
const NARROW: usize = 32;

/// Writes the `_meta` object for `log` (which must be [`MetaLog::writable`]) as JSON, byte for byte what [`merge_meta`]
/// into an empty object followed by `serde_json::to_writer` would give: the same keys in the same first-insertion
/// order, remarks concatenated, the first `len` kept.
pub fn write_meta(log: &MetaLog, out: &mut Vec<u8>) {
    debug_assert!(log.writable());
    // Roughly what is written: the rendered segments and remarks, and the fixed text around them.
    out.reserve(log.text.len() + 16 * log.entries.len());
    let start = out.len();
    if !write_in_order(log, out) {
        out.truncate(start);
        write_through_trie(log, out);
    }
}

/// Writes the `_meta` object for `log` merged into `sdk`, the `_meta` text an SDK sent: byte for byte what
/// [`merge_meta`] into the parsed `sdk` followed by `serde_json::to_writer` would give. Returns false, having written
/// nothing, when `sdk` is in a form only the `Value` route reproduces (see [`merge`]'s docs).
pub fn write_merged_meta(sdk: &str, log: &MetaLog, out: &mut Vec<u8>) -> bool {
    match merge::merge(sdk, log) {
        Some(tree) => {
            tree.write(out);
            true
        }
        None => false,
    }
}

/// The leaf object of one entry alone: `{"rem":[...],"len":n}`.
fn write_leaf(log: &MetaLog, entry: &LogEntry, out: &mut Vec<u8>) {
    out.push(b'{');
    let (start, end) = entry.remarks_json;
    if start < end {
        out.extend_from_slice(b"\"rem\":[");
        // Skips the comma before the first remark.
        out.extend_from_slice(&log.text[start + 1..end]);
        out.push(b']');
        if let Some(len) = entry.len {
            out.extend_from_slice(b",\"len\":");
            push_number(out, len);
        }
    } else if let Some(len) = entry.len {
        out.extend_from_slice(b"\"len\":");
        push_number(out, len);
    }
    out.push(b'}');
}

/// The common case, written in one pass without a tree: every node's entries are consecutive (entries come in
/// document order), so each entry closes the objects it does not share with the previous one and opens its own.
/// Returns false, having written part of the object, when a node comes back after it was closed (a path revisited,
/// duplicate keys) or has more than [`NARROW`] children: the trie handles those.
fn write_in_order(log: &MetaLog, out: &mut Vec<u8>) -> bool {
    /// The `""` key of a field's remarks, among a node's children.
    const LEAF: (usize, usize) = (usize::MAX, usize::MAX);
    // The JSON ranges of the children written so far of each open node, the deepest last; `levels[d]` is where the
    // children of the open node at depth `d` (0: the root) start.
    let mut children: Vec<(usize, usize)> = Vec::with_capacity(32);
    let mut levels: Vec<usize> = Vec::with_capacity(8);
    levels.push(0);
    let text = &log.text;
    let mut open = 0;
    out.push(b'{');
    for entry in &log.entries {
        let path = &log.segments[entry.segments.0..entry.segments.1];
        let shared = entry.shared.min(open);
        for _ in shared..open {
            out.push(b'}');
        }
        if let Some(&end) = levels.get(shared + 1) {
            children.truncate(end);
        }
        levels.truncate(shared + 1);
        // The new child of the node at depth `shared`: a segment, or the leaf when the path ends there.
        let child = path.get(shared).map_or(LEAF, |segment| segment.json);
        let siblings = &children[levels[shared]..];
        if siblings.len() >= NARROW {
            return false;
        }
        let seen = siblings.iter().any(|&(start, end)| {
            if child == LEAF || (start, end) == LEAF {
                child == (start, end)
            } else {
                text[start..end] == text[child.0..child.1]
            }
        });
        if seen {
            return false;
        }
        if !siblings.is_empty() {
            out.push(b',');
        }
        children.push(child);
        for (depth, segment) in path.iter().enumerate().skip(shared) {
            out.extend_from_slice(log.json(segment));
            out.extend_from_slice(b":{");
            levels.push(children.len());
            children.push(path.get(depth + 1).map_or(LEAF, |next| next.json));
        }
        out.extend_from_slice(b"\"\":");
        write_leaf(log, entry, out);
        open = path.len();
    }
    for _ in 0..open {
        out.push(b'}');
    }
    out.push(b'}');
    true
}

/// Any log: a trie over the paths, then written depth first.
fn write_through_trie(log: &MetaLog, out: &mut Vec<u8>) {
    let entries = log.entries.as_slice();
    // A trie over the paths in an arena; children are kept in first-insertion order as a linked list. Entries
    // arrive in document order, so the child wanted is nearly always the last one made, and most nodes have a few
    // children: those are searched in place. Only the children of wide nodes (a list of many scrubbed objects, or an
    // attacker's object with thousands of keys) go into a map, so no input makes this quadratic.
    const NONE: u32 = u32::MAX;
    struct Node<'a> {
        /// The segment as JSON (`b""` for the root and the leaves, which are the key `""`).
        segment: &'a [u8],
        first_child: u32,
        last_child: u32,
        next_sibling: u32,
        children: u32,
        /// Entries ending here, chained through `next_entry`; only on leaf nodes.
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
    const LEAF: &[u8] = b"\"\"";
    let mut nodes: Vec<Node<'_>> = Vec::with_capacity(entries.len() * 2 + 1);
    nodes.push(node(b""));
    let mut wide: HashMap<(u32, &[u8]), u32> = HashMap::new();
    let mut next_entry = vec![NONE; entries.len()];
    for (position, entry) in entries.iter().enumerate() {
        let mut parent = 0u32;
        let path = &log.segments[entry.segments.0..entry.segments.1];
        for segment in path
            .iter()
            .map(|segment| log.json(segment))
            .chain(std::iter::once(LEAF))
        {
            let at = &nodes[parent as usize];
            let found = if at.last_child != NONE && nodes[at.last_child as usize].segment == segment {
                Some(at.last_child)
            } else if at.children as usize > NARROW {
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
                    let children = at.children as usize;
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

    fn object(log: &MetaLog, nodes: &[Node<'_>], next_entry: &[u32], id: u32, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut child = nodes[id as usize].first_child;
        let mut first = true;
        while child != NONE {
            if !first {
                out.push(b',');
            }
            first = false;
            let node = &nodes[child as usize];
            out.extend_from_slice(node.segment);
            out.push(b':');
            if node.first_entry == NONE {
                object(log, nodes, next_entry, child, out);
            } else if next_entry[node.first_entry as usize] == NONE {
                write_leaf(log, &log.entries[node.first_entry as usize], out);
            } else {
                leaf(log, next_entry, node.first_entry, out);
            }
            child = node.next_sibling;
        }
        out.push(b'}');
    }
    /// The leaf object of several entries with the same path.
    fn leaf(log: &MetaLog, next_entry: &[u32], first_entry: u32, out: &mut Vec<u8>) {
        let entries = || {
            std::iter::successors(Some(first_entry), move |&at| {
                Some(next_entry[at as usize]).filter(|&next| next != NONE)
            })
            .map(move |at| &log.entries[at as usize])
        };
        // `merge_meta` adds `rem` at the first entry with remarks and `len` at the first with a length, so the key
        // that comes first is the one whose entry comes first.
        let mut rem_at = None;
        let mut len = None;
        for (n, entry) in entries().enumerate() {
            if rem_at.is_none() && entry.remarks_json.0 < entry.remarks_json.1 {
                rem_at = Some(n);
            }
            if len.is_none() {
                len = entry.len.map(|len| (n, len));
            }
        }
        out.push(b'{');
        let write_len = |out: &mut Vec<u8>, len: usize| {
            out.extend_from_slice(b"\"len\":");
            out.extend_from_slice(decimal(len, &mut [0; 20]));
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
                let mut first = true;
                for entry in entries() {
                    let (start, end) = entry.remarks_json;
                    if start < end {
                        // Each remark follows a comma; the first one's is skipped.
                        out.extend_from_slice(&log.text[if first { start + 1 } else { start }..end]);
                        first = false;
                    }
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
    object(log, &nodes, &next_entry, 0, out);
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

    /// The one-pass writer alone: `None` when it hands the log to the trie.
    fn in_order(log: &MetaLog) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        write_in_order(log, &mut out).then_some(out)
    }

    fn through_trie(log: &MetaLog) -> Vec<u8> {
        let mut out = Vec::new();
        write_through_trie(log, &mut out);
        out
    }

    fn tree_of(log: &MetaLog) -> Vec<u8> {
        let mut root = Map::new();
        merge_meta(&mut root, log);
        serde_json::to_vec(&root["_meta"]).unwrap()
    }

    /// A remark's rule id, type and range.
    type Given = (String, &'static str, Option<(usize, usize)>);

    /// Remarks as `merge_meta` built their `Value`s before it read them back from the log's text: the oracle of
    /// [`EntryRef::remark_values`].
    fn values_of(remarks: &[Given]) -> Vec<Value> {
        remarks
            .iter()
            .map(|(rule, ty, range)| {
                let mut item = vec![Value::from(rule.as_str()), Value::from(*ty)];
                if let Some((start, end)) = range {
                    item.push(Value::from(*start));
                    item.push(Value::from(*end));
                }
                Value::Array(item)
            })
            .collect()
    }

    fn rules_of(entry: EntryRef<'_>) -> Vec<String> {
        entry
            .remark_values()
            .iter()
            .map(|remark| remark[0].as_str().unwrap().to_string())
            .collect()
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|text| text.to_string()).collect()
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
        let entries: Vec<(Vec<&str>, Vec<String>, Option<usize>)> = log
            .entries()
            .map(|e| (e.path().collect(), rules_of(e), e.len()))
            .collect();
        assert_eq!(
            entries,
            vec![
                (vec!["a", "10"], strings(&["r1", "r2", "r3"]), Some(7)),
                (vec!["b"], strings(&["r4"]), Some(1)),
                (vec!["a", "10"], strings(&["r5"]), None),
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

    /// Both writers, each on its own, against the `Value` tree: the one-pass writer on logs in document order
    /// (random trees walked depth first, with index segments, escapes, extra segments, entries without remarks,
    /// merged entries), and the trie on the same logs and on logs the one-pass writer must give up on.
    #[test]
    fn each_writer_matches_the_value_tree() {
        let mut rng = fastrand::Rng::with_seed(7);
        let keys = ["a", "request", "q\"uote", "back\\slash", "ctl\u{1}", "é", "0"];
        let rules = ["@email", "sensitive_key", "!limit", "ru\"le", "line\nfeed"];
        let mut written_in_order = 0;
        for round in 0..2000 {
            // A random tree, walked depth first: every node's entries are consecutive.
            let mut log = MetaLog::default();
            fn walk(
                rng: &mut fastrand::Rng,
                log: &mut MetaLog,
                path: &mut Vec<Seg<'static>>,
                keys: &[&'static str],
                rules: &[&'static str],
                depth: usize,
            ) {
                let children = if depth == 0 { rng.usize(1..6) } else { rng.usize(0..4) };
                let arrays = rng.bool();
                // Keys unique among siblings, as in a JSON object the walk reads.
                let mut used: Vec<usize> = Vec::new();
                // The field's own entry (its leaf) before or after its children, or none.
                let leaf_first = rng.bool();
                let leaf = depth > 0 && (children == 0 || rng.u8(..4) == 0);
                let add_leaf = |rng: &mut fastrand::Rng, log: &mut MetaLog, path: &[Seg<'static>]| {
                    let remarks: Vec<Remark<'_>> = (0..rng.usize(0..3))
                        .map(|n| Remark {
                            rule: rules[rng.usize(..rules.len())],
                            ty: if n == 0 { "s" } else { "x" },
                            range: rng.bool().then(|| (rng.usize(..50), rng.usize(50..5000))),
                        })
                        .collect();
                    let len = rng.bool().then(|| rng.usize(..100_000));
                    // Sometimes the last segment comes as `extra` (a removed key), sometimes the field is recorded
                    // twice in a row (scrubbed, then truncated), which `add` joins.
                    match (path.split_last(), rng.u8(..4)) {
                        (Some((&Seg::Key(key), parent)), 0) => log.add(parent, Some(key), &remarks, len, true),
                        (_, 1) => {
                            log.add(path, None, &remarks, len, true);
                            log.add(path, None, &remarks[..remarks.len().min(1)], Some(3), true);
                        }
                        _ => log.add(path, None, &remarks, len, true),
                    }
                };
                if leaf && leaf_first {
                    add_leaf(rng, log, path);
                }
                let mut index = 0;
                for _ in 0..children {
                    let segment = if arrays {
                        // Ascending, as a list is read.
                        index += rng.usize(1..200);
                        Seg::Index(index)
                    } else {
                        let mut key = rng.usize(..keys.len());
                        while used.contains(&key) {
                            key = (key + 1) % keys.len();
                        }
                        used.push(key);
                        Seg::Key(keys[key])
                    };
                    path.push(segment);
                    if depth < 4 {
                        walk(rng, log, path, keys, rules, depth + 1);
                    }
                    path.pop();
                    if used.len() == keys.len() {
                        break;
                    }
                }
                if leaf && !leaf_first {
                    add_leaf(rng, log, path);
                }
            }
            walk(&mut rng, &mut log, &mut Vec::new(), &keys, &rules, 0);
            if log.is_empty() || !log.writable() {
                continue;
            }
            let expected = tree_of(&log);
            assert_eq!(through_trie(&log), expected, "round {round}");
            assert_eq!(in_order(&log), Some(expected), "round {round}");
            written_in_order += 1;
        }
        assert!(written_in_order > 1000, "{written_in_order}");

        // Revisits, in every shape the one-pass writer must hand to the trie.
        let revisits = [
            vec![
                entry(&["a", "b"], &["r1"], None),
                entry(&["c"], &["r2"], None),
                entry(&["a", "d"], &["r3"], None),
            ],
            vec![
                entry(&["a"], &["r1"], None),
                entry(&["a", "b"], &["r2"], None),
                entry(&["a"], &["r3"], Some(4)),
            ],
            vec![entry(&["a", "b"], &["r1"], None), entry(&["a", "b"], &["r2"], Some(2))],
            vec![
                entry(&["a", "b"], &["r1"], None),
                entry(&["a"], &["r2"], None),
                entry(&["a", "b", "c"], &[], Some(1)),
            ],
        ];
        for entries in &revisits {
            let log = log_of(entries, false);
            assert!(in_order(&log).is_none(), "{entries:?}");
            assert_eq!(through_trie(&log), tree_of(&log), "{entries:?}");
            assert_eq!(direct(entries), via_tree(entries), "{entries:?}");
        }
        // A node wider than NARROW: handed over too, and written right.
        let indices: Vec<String> = (0..=NARROW).map(|n| n.to_string()).collect();
        let wide: Vec<Owned> = indices
            .iter()
            .map(|n| entry(&["list", n], &["@email"], Some(9)))
            .collect();
        let log = log_of(&wide, false);
        assert!(in_order(&log).is_none());
        assert_eq!(direct(&wide), via_tree(&wide));
        let narrow = log_of(&wide[..NARROW], false);
        assert_eq!(in_order(&narrow), Some(tree_of(&narrow)));
    }

    /// Remarks in runs of one rule and type (whose head is rendered once) and rule ids that change, repeat with
    /// the same text from another allocation, need escapes or are too long for the kept head (64 bytes and 65, at
    /// the edge): written as the `Value` tree writes them, and read back as they were given.
    #[test]
    fn runs_of_remarks_match_the_value_tree() {
        let mut rng = fastrand::Rng::with_seed(3);
        let long = |len: usize| "r".repeat(len);
        let rules: Vec<String> = vec![
            "@email".into(),
            "@email".into(),
            "@phone".into(),
            "ru\"le".into(),
            long(63),
            long(64),
            long(65),
            long(200),
            "é".repeat(40),
        ];
        let numbers = [0, 9, 10, 99, 100, 12_345, 99_999, 100_000, 1 << 40, usize::MAX];
        for round in 0..400 {
            let mut log = MetaLog::default();
            let mut given: Vec<Vec<Given>> = Vec::new();
            for field in 0..rng.usize(1..4) {
                let mut remarks: Vec<Remark<'_>> = Vec::new();
                let mut rule = rng.usize(..rules.len());
                let mut ty = "s";
                for _ in 0..rng.usize(1..60) {
                    if rng.u8(..8) == 0 {
                        rule = rng.usize(..rules.len());
                    }
                    if rng.u8(..16) == 0 {
                        ty = ["s", "x", "p"][rng.usize(..3)];
                    }
                    let range = match rng.u8(..4) {
                        0 => None,
                        1 => Some((numbers[rng.usize(..numbers.len())], numbers[rng.usize(..numbers.len())])),
                        _ => {
                            let start = rng.usize(..50_000);
                            Some((start, start + rng.usize(..20)))
                        }
                    };
                    remarks.push(Remark {
                        rule: &rules[rule],
                        ty,
                        range,
                    });
                }
                log.add(&[Seg::Key("extra"), Seg::Index(field)], None, &remarks, Some(7), true);
                given.push(remarks.iter().map(|r| (r.rule.to_string(), r.ty, r.range)).collect());
            }
            let read: Vec<Vec<Value>> = log.entries().map(|entry| entry.remark_values()).collect();
            let given: Vec<Vec<Value>> = given.iter().map(|remarks| values_of(remarks)).collect();
            assert_eq!(read, given, "round {round}");
            let mut out = Vec::new();
            write_meta(&log, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(tree_of(&log)).unwrap(),
                "round {round}"
            );
        }
    }

    #[test]
    fn escapes_are_found_at_every_position_of_every_length() {
        for len in 0..40 {
            let plain = "k".repeat(len);
            assert!(!needs_escape(&plain), "{len}");
            assert!(!needs_escape(&"é".repeat(len)), "{len}");
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1f}', '\0'] {
                    let mut text: Vec<char> = plain.chars().collect();
                    text[at] = special;
                    let text: String = text.into_iter().collect();
                    assert!(needs_escape(&text), "{text:?}");
                    assert_eq!(
                        needs_escape(&text),
                        serde_json::to_string(&text).unwrap() != format!("\"{text}\"")
                    );
                }
            }
        }
        for byte in 0..=0x7fu8 {
            let text = format!("abcdefghij{}", char::from(byte));
            assert_eq!(
                needs_escape(&text),
                serde_json::to_string(&text).unwrap() != format!("\"{text}\""),
                "{byte}"
            );
        }
    }

    #[test]
    fn bytes_are_the_same_as_slice_equality_says() {
        for len in 0..40usize {
            let plain: Vec<u8> = (0..len).map(|n| b'a' + (n % 26) as u8).collect();
            assert!(same_bytes(&plain, &plain.clone()), "{len}");
            if len > 0 {
                assert!(!same_bytes(&plain, &plain[..len - 1]), "{len}");
            }
            for at in 0..len {
                let mut other = plain.clone();
                other[at] ^= 0x80;
                assert!(!same_bytes(&plain, &other), "{len} {at}");
            }
        }
    }

    #[test]
    fn short_copies_copy() {
        let source: Vec<u8> = (0..80u8).collect();
        for len in 0..80 {
            let mut out = vec![0xffu8; len];
            copy_short(&mut out, &source[..len]);
            assert_eq!(out, source[..len], "{len}");
        }
    }

    /// One remark of every rule id length around the window's, every type and numbers of every width: as the
    /// `Value` tree writes it, and read back.
    #[test]
    fn single_remarks_match_the_value_tree() {
        let numbers = [0, 7, 10, 99, 100, 9_999, 10_000, 123_456_789, 1 << 40, usize::MAX];
        for len in 0..=SHORT + 2 {
            let rule = "r".repeat(len);
            for ty in ["s", "x", "p", "sx"] {
                for (n, &first) in numbers.iter().enumerate() {
                    let range = (n % 4 != 3).then_some((first, numbers[(n * 7) % numbers.len()]));
                    let mut log = MetaLog::default();
                    let remark = Remark { rule: &rule, ty, range };
                    log.add(&[Seg::Key("k"), Seg::Index(len)], None, &[remark], Some(n), true);
                    let read: Vec<Value> = log.entries().flat_map(|entry| entry.remark_values()).collect();
                    assert_eq!(read, values_of(&[(rule.clone(), ty, range)]));
                    let mut out = Vec::new();
                    write_meta(&log, &mut out);
                    assert_eq!(out, tree_of(&log), "{len} {ty} {range:?}");
                }
            }
        }
    }

    #[test]
    fn tails_are_pushed_as_they_are_rendered() {
        let numbers = [0, 1, 9, 10, 99, 100, 12_345, 1 << 40, usize::MAX];
        let ranges = numbers
            .iter()
            .flat_map(|&start| numbers.iter().map(move |&end| Some((start, end))))
            .chain([None]);
        for range in ranges {
            let mut rendered = [0u8; HEAD_MAX + TAIL_MAX];
            let at = render_tail(&mut rendered, range);
            let mut pushed = b"x".to_vec();
            push_tail(&mut pushed, range);
            assert_eq!(pushed[1..], rendered[at..], "{range:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        let values = (0..1200)
            .chain((0..64).map(|n| 1usize << n))
            .chain([9_999, 10_000, 123_456_789, usize::MAX]);
        for value in values {
            let mut out = b"x".to_vec();
            push_number(&mut out, value);
            assert_eq!(out, format!("x{value}").into_bytes());
            assert_eq!(decimal(value, &mut [0; 20]), value.to_string().as_bytes());
        }
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
