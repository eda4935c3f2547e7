//! The scrubbing walk over JSON payloads: key rules, header rules, value detectors, `send_default_pii` removals and
//! truncation, with `_meta` remarks and an optional per-change trail for `--explain`.
//!
//! Two walks apply one policy: `stream` reads each item's JSON text once and is what the relay runs; `walk` works on
//! a `serde_json::Value` tree and handles the subtrees and rare shapes the stream hands it (see `stream`'s docs).
//! Both call the same rule functions, and a test holds them to the same output on every SDK capture.
//!
//! The walk knows the shape of Sentry payloads through a small set of [`Scope`]s (event root, request, headers,
//! frame, typed attributes, ...). The scope decides which fields are never touched (ids, timestamps, releases,
//! line numbers), which are file paths (frame filenames, debug images: the user-path detector only, so traces still
//! symbolicate), which are free text (detectors only), which are source code (detectors only, never key rules) and
//! where key and header rules apply. Anything the walk does not know is walked generically:
//! key rules on keys, detectors on string values.
//!
//! A [`Scrubber`] is created per envelope and is cheap: no regex is compiled here.

mod meta;
mod otlp;
pub mod security;
pub(crate) mod stream;
mod text;
mod walk;

pub use meta::{MetaLog, merge_meta};
pub(crate) use text::ExtraSpan;
pub use text::TextMode;
pub use walk::Scope;

use std::borrow::Cow;
use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::envelope::ItemType;
use crate::rules::detectors::{CleanViews, Hit};
use crate::rules::{Action, Engine};

/// What happened to a field, for `--explain` (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    /// The whole value was replaced.
    Replaced,
    /// Part of a string was replaced by a value detector.
    Masked,
    /// A value (or part of it) was replaced by its HMAC.
    Hashed,
    /// The field was deleted.
    Removed,
    /// The value was cut to its length limit.
    Truncated,
}

impl ChangeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Replaced => "replaced",
            ChangeAction::Masked => "masked",
            ChangeAction::Hashed => "hashed",
            ChangeAction::Removed => "removed",
            ChangeAction::Truncated => "truncated",
        }
    }
}

/// One change, as `--explain` shows it: where and by which rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Index of the item in the received envelope; `None` for the envelope header.
    pub item_index: Option<usize>,
    #[serde(serialize_with = "serialize_item_type")]
    pub item_type: Option<ItemType>,
    /// Dotted JSON path, e.g. `request.headers.Authorization` or `items.0.attributes.gen_ai.prompt.value`.
    pub path: String,
    pub rule: String,
    pub action: ChangeAction,
}

fn serialize_item_type<S: serde::Serializer>(ty: &Option<ItemType>, s: S) -> Result<S::Ok, S::Error> {
    match ty {
        Some(ty) => s.serialize_str(ty.as_str()),
        None => s.serialize_str("envelope_header"),
    }
}

/// A path segment into the JSON tree being walked.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'t> {
    Key(&'t str),
    Index(usize),
}

impl Seg<'_> {
    fn to_owned_string(self) -> String {
        match self {
            Seg::Key(k) => k.to_string(),
            Seg::Index(i) => i.to_string(),
        }
    }
}

/// A `_meta` remark: `[rule_id, type]` or `[rule_id, type, start, end]`. The rule id is borrowed: [`MetaLog`]
/// copies it into its own buffer, so recording a change allocates nothing per remark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remark<'r> {
    pub rule: &'r str,
    /// `s` substituted, `x` removed, `p` pseudonymized (hashed).
    pub ty: &'static str,
    pub range: Option<(usize, usize)>,
}

/// Counters and trails gathered while scrubbing one envelope.
#[derive(Debug, Default)]
pub struct Tally {
    pub redactions: BTreeMap<String, u64>,
    pub truncations: BTreeMap<String, u64>,
    pub changes: Vec<Change>,
    /// Redactions counted but not yet in `redactions`, by rule: a payload uses a few rules, and finding one here
    /// (lengths compared first) costs a fraction of a search of the map, which compares bytes at every step (about
    /// a tenth of recording a change; issue #11). Added to `redactions` by [`Tally::settle`] before anyone reads it.
    recent: Vec<(Box<str>, u64)>,
}

impl Tally {
    /// Rules counted in `recent`; a payload's other rules go to the map directly.
    const RECENT: usize = 16;

    /// Counts `add` redactions by `rule`.
    fn count_redaction(&mut self, rule: &str, add: u64) {
        for (name, count) in &mut self.recent {
            if name.len() == rule.len() && **name == *rule {
                *count += add;
                return;
            }
        }
        if self.recent.len() < Tally::RECENT {
            self.recent.push((rule.into(), add));
        } else {
            add_count(&mut self.redactions, rule, add);
        }
    }

    /// Adds `from`'s counts and changes to this tally. Its recent counts are counted here like any others, not
    /// first settled into a map of owned rule ids of its own (a walk that may give up counts into a tally of its
    /// own, one per JSON string inside a string: `stream::with_rollback`).
    pub(crate) fn absorb(&mut self, from: Tally) {
        for (rule, count) in &from.recent {
            if *count > 0 {
                self.count_redaction(rule, *count);
            }
        }
        for (rule, count) in from.redactions {
            *self.redactions.entry(rule).or_default() += count;
        }
        for (rule, count) in from.truncations {
            *self.truncations.entry(rule).or_default() += count;
        }
        self.changes.extend(from.changes);
    }

    /// Moves the counts kept in `recent` to `redactions`. The rules stay, counting from zero.
    pub(crate) fn settle(&mut self) {
        for (name, count) in &mut self.recent {
            if *count > 0 {
                add_count(&mut self.redactions, name, std::mem::take(count));
            }
        }
    }
}

fn add_count(counts: &mut BTreeMap<String, u64>, rule: &str, add: u64) {
    match counts.get_mut(rule) {
        Some(count) => *count += add,
        None => {
            counts.insert(rule.to_string(), add);
        }
    }
}

/// Whether two strings hold the same text; the same `str` (a rule id borrowed from the engine, met again) is known
/// without comparing bytes.
#[inline]
fn same_text(a: &str, b: &str) -> bool {
    a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
}

/// Scrubs JSON values and strings with one engine. One per envelope.
pub struct Scrubber<'e> {
    pub(crate) engine: &'e Engine,
    pub(crate) explain: bool,
    /// Collect `_meta` entries (event-like items only).
    pub(crate) collect_meta: bool,
    pub(crate) item_index: Option<usize>,
    pub(crate) item_type: Option<ItemType>,
    /// Set when anything in the current item changed.
    pub(crate) changed: bool,
    pub(crate) meta: MetaLog,
    pub(crate) tally: Tally,
    /// Depth of nested JSON-in-string walks; they record no `_meta` of their own.
    pub(crate) nested: u32,
    scratch: String,
    hits: Vec<Hit>,
    key_verdicts: KeyVerdicts,
}

impl Drop for Scrubber<'_> {
    fn drop(&mut self) {
        let mut carried = Carried {
            key_verdicts: std::mem::replace(&mut self.key_verdicts, KeyVerdicts::new(0)),
            meta: std::mem::take(&mut self.meta),
            hits: std::mem::take(&mut self.hits),
        };
        carried.meta.clear();
        if carried.meta.heap_bytes() > Carried::MAX_META_BYTES {
            carried.meta = MetaLog::default();
        }
        carried.hits.clear();
        carried.hits.shrink_to(Carried::MAX_HITS);
        // `try_with`: a scrubber dropped while the thread itself is being torn down just loses its state.
        let _ = CARRIED.try_with(|cell| *cell.borrow_mut() = Some(carried));
    }
}

/// What the last scrubber on a thread hands to the next one: its key verdicts (envelopes repeat the same keys, and
/// one envelope alone is too short to warm the table) and its buffers, which a fresh scrubber grew again at every
/// envelope (about 35 reallocations per raw python event, issue #11).
struct Carried {
    key_verdicts: KeyVerdicts,
    meta: MetaLog,
    hits: Vec<Hit>,
}

impl Carried {
    /// A `_meta` log that grew past this (an envelope with thousands of findings) is let go rather than kept.
    const MAX_META_BYTES: usize = 256 * 1024;
    /// Hits kept room for; a string holds a handful.
    const MAX_HITS: usize = 256;

    /// This thread's carried state; empty buffers and key verdicts for `engine` when there is none or when it
    /// holds another engine's verdicts.
    fn take(engine: u64) -> Carried {
        let carried = CARRIED.try_with(|cell| cell.borrow_mut().take()).ok().flatten();
        match carried {
            Some(mut carried) => {
                if carried.key_verdicts.engine != engine {
                    carried.key_verdicts = KeyVerdicts::new(engine);
                }
                carried
            }
            None => Carried {
                key_verdicts: KeyVerdicts::new(engine),
                meta: MetaLog::default(),
                hits: Vec::new(),
            },
        }
    }
}

thread_local! {
    static CARRIED: std::cell::RefCell<Option<Carried>> = const { std::cell::RefCell::new(None) };
}

/// Recent verdicts of the key matcher for one engine, and what the walk decided for a key in a scope. Payloads
/// repeat a few dozen keys (every span has the same attribute names), and normalising and matching a key costs
/// several times more than hashing it; so does working out a field's fate (skip lists, id and IP keys, header
/// names, the child scope: about a tenth of the scrub of a raw python event, issue #11).
struct KeyVerdicts {
    /// [`Engine::id`] of the rules the verdicts came from.
    engine: u64,
    sensitive: KeyMemo<bool>,
    fields: KeyMemo<walk::KeyFacts>,
    /// Strings the text pass left as they were, by [`TextMode`]: an SDK sends the same frame names, context lines,
    /// module names and SDK metadata in every event, and reading one again through every detector costs a hundred
    /// times more than finding it here ([`Scrubber::scrub_str`]).
    clean: Memo<()>,
    /// What the value detectors found in a string, for the strings that hold findings ([`FoundMemo`]).
    found: FoundMemo,
    /// Strings with findings as they will be forwarded, where a second reading found nothing ([`ViewMemo`]).
    views: ViewMemo,
}

impl KeyVerdicts {
    /// Longer strings are read every time rather than kept: a full table then holds at most 2 x 1,024 x 128 bytes
    /// of text per thread, and the long strings that repeat (stack traces, queries) are seldom free of findings.
    const MAX_CLEAN_LEN: usize = 128;

    fn new(engine: u64) -> KeyVerdicts {
        KeyVerdicts {
            engine,
            sensitive: KeyMemo::with_sets(256),
            // A scope and key per set: a raw python event asks about a hundred, and three keys in one set of two
            // evict each other at every event. A slot is a cache line (an [`InlineKey`] and the facts): 128 KiB.
            fields: KeyMemo::with_sets(1024),
            clean: Memo::with_sets(1024),
            found: FoundMemo::with_sets(1024),
            views: ViewMemo::with_sets(512, 128),
        }
    }
}

/// A bounded table of values by key, two-way set associative (a direct-mapped table of 256 slots missed on about one
/// key in six of the raw python event: keys that collide evicted each other at every event), so keys chosen to
/// collide only cost a recomputation. The memos below pick a key's set from their own hash of it.
struct TwoWay<K, V> {
    /// Sets of two slots each: a power of two.
    sets: usize,
    slots: Vec<Option<(K, V)>>,
}

impl<K, V: Copy> TwoWay<K, V> {
    fn with_sets(sets: usize) -> TwoWay<K, V> {
        debug_assert!(sets.is_power_of_two());
        TwoWay {
            sets,
            slots: Vec::new(),
        }
    }

    /// The first slot of the set `hash`'s high bits pick, allocating the table on first use.
    fn set_of(&mut self, hash: u64) -> usize {
        if self.slots.is_empty() {
            self.slots.resize_with(self.sets * 2, || None);
        }
        (hash >> (64 - self.sets.trailing_zeros())) as usize * 2
    }

    /// The value of the key in `set` that `is_key` accepts; a hit in the second slot moves to the first, so the slot
    /// a miss evicts is the colder.
    fn get(&mut self, set: usize, is_key: impl Fn(&K) -> bool) -> Option<V> {
        for way in 0..2 {
            if let Some((cached, value)) = &self.slots[set + way]
                && is_key(cached)
            {
                let value = *value;
                if way == 1 {
                    self.slots.swap(set, set + 1);
                }
                return Some(value);
            }
        }
        None
    }

    /// Keeps a value in the first slot of its set, moving the one there to the second (evicting the colder).
    fn put(&mut self, set: usize, key: K, value: V) {
        self.slots[set + 1] = self.slots[set].take();
        self.slots[set] = Some((key, value));
    }

    /// Writes over the first slot of a set: after a [`TwoWay::get`] that found its key, which moved it there.
    fn replace_first(&mut self, set: usize, key: K, value: V) {
        self.slots[set] = Some((key, value));
    }
}

/// FxHash's multiplier, which the memos' hashes multiply by.
const FX_K: u64 = 0x517c_c1b7_2722_0a95;

/// A memo of values by object key and a small tag (a scope), for keys of at most [`InlineKey::CAPACITY`] bytes,
/// kept in the slot itself: a lookup reads one slot and compares its words, where a boxed key cost a second cache
/// line and a `memcmp` call per hit (with them, the key-facts lookup was 5.9 % of the scrub's time on the raw
/// captures and 2.3 % of its instructions, issue #11).
struct KeyMemo<V>(TwoWay<InlineKey, V>);

impl<V: Copy> KeyMemo<V> {
    fn with_sets(sets: usize) -> KeyMemo<V> {
        KeyMemo(TwoWay::with_sets(sets))
    }

    /// The first slot of a key's set, allocating the table on first use.
    fn set(&mut self, key: &InlineKey) -> usize {
        self.0.set_of(key.hash())
    }

    fn get(&mut self, set: usize, key: &InlineKey) -> Option<V> {
        self.0.get(set, |kept| kept == key)
    }

    fn put(&mut self, set: usize, key: InlineKey, value: V) {
        self.0.put(set, key, value);
    }
}

/// A key of at most [`InlineKey::CAPACITY`] bytes and its tag as [`KeyMemo`] keeps it: the key's eight-byte words,
/// its last bytes as [`tail_word`] reads them, zeros up to the last word, and the length and tag in that one. Of two
/// keys of one length, the words differ wherever the bytes do (`tail_word` tells apart the tails of one length), so
/// comparing the words compares the keys, without a call or a length-dependent loop.
#[derive(Debug, Clone, Copy, Eq)]
struct InlineKey([u64; InlineKey::WORDS]);

impl PartialEq for InlineKey {
    /// Word by word without a branch: the derived comparison of the array is a `bcmp` call.
    fn eq(&self, other: &InlineKey) -> bool {
        self.0.iter().zip(&other.0).fold(0, |differ, (a, b)| differ | (a ^ b)) == 0
    }
}

impl InlineKey {
    /// Seven words and a value of up to eight bytes make a slot of 64 bytes, one cache line.
    const WORDS: usize = 7;
    /// Longer keys are worked out every time rather than kept. The longest object keys of the raw captures are
    /// OpenTelemetry header attributes of up to 37 bytes (`http.request.header.transfer_encoding`).
    const CAPACITY: usize = (Self::WORDS - 1) * 8;

    #[inline]
    fn new(key: &str, tag: u8) -> Option<InlineKey> {
        let bytes = key.as_bytes();
        if bytes.len() > Self::CAPACITY {
            return None;
        }
        let mut words = [0; Self::WORDS];
        let full = bytes.len() / 8;
        // A word at a time under a condition: a loop of plain copies up to `full` compiles to a `memcpy` call.
        for (n, word) in words[..Self::WORDS - 1].iter_mut().enumerate() {
            if n < full {
                *word = u64::from_le_bytes(bytes[n * 8..n * 8 + 8].try_into().expect("eight bytes"));
            }
        }
        let tail = &bytes[full * 8..];
        if !tail.is_empty() {
            words[full] = tail_word(tail);
        }
        words[Self::WORDS - 1] = u64::from(tag) << 8 | bytes.len() as u64;
        Some(InlineKey(words))
    }

    /// The words times odd multipliers, summed: seven multiplies side by side rather than a chain of seven steps.
    /// Every bit of a word reaches the high bits of its product, from which [`TwoWay`] reads the set.
    fn hash(&self) -> u64 {
        const MULTIPLIERS: [u64; InlineKey::WORDS] = {
            let mut multipliers = [0; InlineKey::WORDS];
            let mut n = 0;
            while n < InlineKey::WORDS {
                multipliers[n] = FX_K.wrapping_mul(2 * n as u64 + 3);
                n += 1;
            }
            multipliers
        };
        self.0.iter().zip(MULTIPLIERS).fold(0, |hash: u64, (word, multiplier)| {
            hash.wrapping_add(word.wrapping_mul(multiplier))
        })
    }
}

// A slot of the key memos is one cache line, so a lookup reads one (jemalloc aligns the tables to a page).
const _: () = assert!(std::mem::size_of::<Option<(InlineKey, walk::KeyFacts)>>() == 64);
const _: () = assert!(std::mem::size_of::<Option<(InlineKey, bool)>>() == 64);

/// A memo of values by string and a small tag (a [`TextMode`]), in a [`TwoWay`] table: for strings longer than
/// keys ([`KeyVerdicts::MAX_CLEAN_LEN`]), kept boxed.
struct Memo<V>(TwoWay<(Box<str>, u16), V>);

impl<V: Copy> Memo<V> {
    fn with_sets(sets: usize) -> Memo<V> {
        Memo(TwoWay::with_sets(sets))
    }

    /// The first slot of a key's set, allocating the table on first use. The key is hashed eight bytes at a time
    /// (FxHash's step; FNV-1a, a multiply per byte, cost more than the lookup), and the set is read from the high
    /// bits of one more multiply, which every byte reaches.
    fn set(&mut self, key: &str, tag: u16) -> usize {
        let step = |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(FX_K);
        let bytes = key.as_bytes();
        let mut hash = step(0, (u64::from(tag) << 32) | bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            hash = step(hash, u64::from_le_bytes(word.try_into().expect("an 8-byte chunk")));
        }
        hash = step(hash, tail_word(words.remainder()));
        self.0.set_of(hash.wrapping_mul(FX_K))
    }

    /// The cached value.
    fn get(&mut self, set: usize, key: &str, tag: u16) -> Option<V> {
        self.0
            .get(set, |(cached, cached_tag)| *cached_tag == tag && **cached == *key)
    }

    fn put(&mut self, set: usize, key: &str, tag: u16, value: V) {
        self.0.put(set, (key.into(), tag), value);
    }
}

/// What [`DetectorSet::find`](crate::rules::detectors::DetectorSet::find) found in strings of at most
/// [`FoundMemo::MAX_LEN`] bytes. Raw SDK events repeat their personal data across fields and events (the python
/// capture sends its address 8 times and its SSN, phone and card 2 to 4 times), and reading a string through every
/// detector costs ten to a hundred times a lookup here. What is replayed is exactly what `find` returned for that
/// string under these rules: the table belongs to one engine like the other verdicts.
///
/// Unlike the clean-string memo, this one is keyed by a 128-bit digest of the string (two SipHash values under a
/// random key drawn per table: of the string, and of the string and one more byte), never by the string: the strings
/// it holds findings for are the secrets themselves, and the relay keeps no copy of them past the request. Two
/// strings share an entry only when both 64-bit halves collide, a chance of about 2^-127 per lookup that no sender
/// can steer without the key.
struct FoundMemo {
    key: std::hash::RandomState,
    table: TwoWay<[u64; 2], Found>,
}

/// The hits of one string, each as start, end and detector index in a byte.
#[derive(Debug, Clone, Copy)]
struct Found {
    len: u8,
    hits: [[u8; 3]; Found::MAX_HITS],
}

impl Found {
    /// Strings with more hits are read every time.
    const MAX_HITS: usize = 8;
}

impl FoundMemo {
    /// Longer strings are read every time: positions must fit a byte, and long strings seldom repeat.
    const MAX_LEN: usize = 128;

    fn with_sets(sets: usize) -> FoundMemo {
        FoundMemo {
            key: std::hash::RandomState::new(),
            table: TwoWay::with_sets(sets),
        }
    }

    fn digest(&self, text: &str) -> [u64; 2] {
        digest(&self.key, text)
    }

    /// Fills `hits` (cleared first) with what was kept for `digest`; false when nothing was.
    fn get(&mut self, digest: [u64; 2], hits: &mut Vec<Hit>) -> bool {
        let set = self.table.set_of(digest[0]);
        let Some(found) = self.table.get(set, |kept| *kept == digest) else {
            return false;
        };
        hits.clear();
        hits.extend(
            found.hits[..usize::from(found.len)]
                .iter()
                .map(|&[start, end, detector]| Hit {
                    start: usize::from(start),
                    end: usize::from(end),
                    detector: usize::from(detector),
                }),
        );
        true
    }

    /// Keeps `hits` for `digest`, unless they do not fit ([`Found::MAX_HITS`], byte-sized positions and indices).
    fn put(&mut self, digest: [u64; 2], hits: &[Hit]) {
        if hits.len() > Found::MAX_HITS {
            return;
        }
        let mut found = Found {
            len: 0,
            hits: [[0; 3]; Found::MAX_HITS],
        };
        for (slot, hit) in found.hits.iter_mut().zip(hits) {
            let (Ok(start), Ok(end), Ok(detector)) = (
                u8::try_from(hit.start),
                u8::try_from(hit.end),
                u8::try_from(hit.detector),
            ) else {
                return;
            };
            *slot = [start, end, detector];
        }
        found.len = hits.len() as u8;
        let set = self.table.set_of(digest[0]);
        self.table.put(set, digest, found);
    }
}

const _: () = assert!(FoundMemo::MAX_LEN <= u8::MAX as usize, "positions are kept in a byte");

/// The 128-bit digest the memos of strings that may hold secrets key by: two SipHash values under the table's key.
fn digest(key: &std::hash::RandomState, text: &str) -> [u64; 2] {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = key.build_hasher();
    text.hash(&mut hasher);
    let first = hasher.finish();
    // The same key on a longer input: a second value as independent of the first as SipHash's outputs are of each
    // other, without reading the text again.
    hasher.write_u8(1);
    [first, hasher.finish()]
}

/// Views in which the detectors found nothing ([`CleanViews`]), by digest like [`FoundMemo`]: a view still holds
/// what only key rules mask (`password=...` in a query string), so no copy of it outlives the request either. Tables
/// of their own, so that views never evict findings.
///
/// Long views (a prompt, a log line or a list with an address in it) repeat as short ones do: the same template with
/// another user's address. But hashing one costs about what reading it again does, and most are never seen twice, so
/// a long view is first remembered by a [`checksum`] (an eighth of the hashing's cost), and its digest is taken only
/// when a view with that checksum comes back: a view is read twice before its third reading is a lookup, and one
/// that never comes back costs its checksum.
struct ViewMemo {
    key: std::hash::RandomState,
    table: TwoWay<[u64; 2], ()>,
    /// Views longer than [`ViewMemo::SHORT`], by checksum: the digest of the last one read clean, or `None` when it
    /// was only seen once.
    long: TwoWay<u64, Option<[u64; 2]>>,
    /// Drawn per table and mixed into every checksum, as the digests are keyed: which views collide differs per
    /// table and is not known to senders.
    checksum_seed: u64,
}

impl ViewMemo {
    /// Views up to this long are remembered by digest at once.
    const SHORT: usize = FoundMemo::MAX_LEN;

    fn with_sets(sets: usize, long_sets: usize) -> ViewMemo {
        use std::hash::BuildHasher;
        let key = std::hash::RandomState::new();
        ViewMemo {
            checksum_seed: key.hash_one(0u8),
            key,
            table: TwoWay::with_sets(sets),
            long: TwoWay::with_sets(long_sets),
        }
    }

    /// [`CleanViews::clean`] of a view longer than [`ViewMemo::SHORT`].
    fn clean_long(&mut self, view: &str, read: &mut dyn FnMut() -> bool) -> bool {
        let checksum = checksum(view.as_bytes(), self.checksum_seed);
        let set = self.long.set_of(checksum);
        // A view whose checksum was seen before is probably that view: worth its digest.
        let kept = self.long.get(set, |kept| *kept == checksum);
        let digest = kept.map(|_| digest(&self.key, view));
        if kept.is_some_and(|kept| kept == digest) {
            return true;
        }
        let clean = read();
        if clean {
            match digest {
                // `get` moved the checksum's entry to the first slot of its set: this view's digest replaces it.
                Some(_) => self.long.replace_first(set, checksum, digest),
                None => self.long.put(set, checksum, None),
            }
        }
        clean
    }
}

impl CleanViews for ViewMemo {
    fn clean(&mut self, view: &str, read: &mut dyn FnMut() -> bool) -> bool {
        if view.len() > Self::SHORT {
            return self.clean_long(view, read);
        }
        let digest = digest(&self.key, view);
        let set = self.table.set_of(digest[0]);
        if self.table.get(set, |kept| *kept == digest).is_some() {
            return true;
        }
        let clean = read();
        if clean {
            self.table.put(set, digest, ());
        }
        clean
    }
}

/// A checksum of `bytes` (more than 32 of them) that any change of a byte, and most moves, change: sums of its
/// eight-byte words and sums of those sums (Fletcher's), in four lanes that the compiler vectorizes (0.025 ns a byte
/// on the bench machine, against 0.2 for the digest's SipHash). Not a digest: it only tells [`ViewMemo`] when a view
/// is worth one.
fn checksum(bytes: &[u8], seed: u64) -> u64 {
    const LANES: usize = 4;
    let word =
        |chunk: &[u8], lane: usize| u64::from_le_bytes(chunk[lane * 8..lane * 8 + 8].try_into().expect("eight bytes"));
    let (mut sums, mut running) = ([0u64; LANES], [0u64; LANES]);
    let mut add = |chunk: &[u8]| {
        for lane in 0..LANES {
            sums[lane] = sums[lane].wrapping_add(word(chunk, lane));
            running[lane] = running[lane].wrapping_add(sums[lane]);
        }
    };
    let mut chunks = bytes.chunks_exact(8 * LANES);
    for chunk in &mut chunks {
        add(chunk);
    }
    if !chunks.remainder().is_empty() {
        // The last 32 bytes, some read again: no padded copy.
        add(&bytes[bytes.len() - 8 * LANES..]);
    }
    sums.iter()
        .chain(&running)
        .fold(seed ^ bytes.len() as u64, |hash, &sum| {
            (hash.rotate_left(5) ^ sum).wrapping_mul(FX_K)
        })
}

/// The last bytes of a key (fewer than eight) as one word, read in at most two loads rather than copied into a
/// zeroed word (a `memcpy` call per key). Bytes may be read twice: the key's length is hashed too, so keys of one
/// length still differ wherever their bytes differ.
fn tail_word(tail: &[u8]) -> u64 {
    let len = tail.len();
    match len {
        0 => 0,
        1..=3 => u64::from(tail[0]) | u64::from(tail[len / 2]) << 8 | u64::from(tail[len - 1]) << 16,
        _ => four_to_eight_bytes(tail),
    }
}

/// Four to eight bytes as one word: the first four in the low half, the last four in the high half (overlapping
/// when fewer than eight), in two loads rather than a copy into a zeroed word.
fn four_to_eight_bytes(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let low = u32::from_le_bytes(bytes[..4].try_into().expect("four bytes"));
    let high = u32::from_le_bytes(bytes[len - 4..].try_into().expect("four bytes"));
    u64::from(low) | u64::from(high) << 32
}

impl<'e> Scrubber<'e> {
    pub fn new(engine: &'e Engine, explain: bool) -> Scrubber<'e> {
        let Carried {
            key_verdicts,
            meta,
            hits,
        } = Carried::take(engine.id);
        Scrubber {
            engine,
            explain,
            collect_meta: false,
            item_index: None,
            item_type: None,
            changed: false,
            meta,
            tally: Tally::default(),
            nested: 0,
            scratch: String::new(),
            hits,
            key_verdicts,
        }
    }

    /// Starts a new item: resets the per-item state.
    pub fn begin_item(&mut self, index: Option<usize>, ty: Option<ItemType>, collect_meta: bool) {
        self.item_index = index;
        self.item_type = ty;
        self.collect_meta = collect_meta;
        self.changed = false;
        self.meta.clear();
    }

    pub fn into_tally(mut self) -> Tally {
        self.tally.settle();
        std::mem::take(&mut self.tally)
    }

    pub(crate) fn is_sensitive_key(&mut self, key: &str) -> bool {
        let Some(kept) = InlineKey::new(key, 0) else {
            return self.engine.keys.is_sensitive_with(key, &mut self.scratch);
        };
        let set = self.key_verdicts.sensitive.set(&kept);
        if let Some(verdict) = self.key_verdicts.sensitive.get(set, &kept) {
            return verdict;
        }
        let verdict = self.engine.keys.is_sensitive_with(key, &mut self.scratch);
        self.key_verdicts.sensitive.put(set, kept, verdict);
        verdict
    }

    /// Whether the text pass of [`Scrubber::scrub_str`] found nothing in `text` read as `mode` before. That pass
    /// depends on the text, the mode and the rules only (the memo is the rules' own). Only "nothing found" is kept
    /// here, with the text; of strings with findings only the detectors' hits are kept, by digest ([`FoundMemo`]).
    pub(crate) fn known_clean(&mut self, text: &str, mode: TextMode) -> bool {
        if text.len() > KeyVerdicts::MAX_CLEAN_LEN {
            return false;
        }
        let set = self.key_verdicts.clean.set(text, mode as u16);
        self.key_verdicts.clean.get(set, text, mode as u16).is_some()
    }

    /// Keeps that the text pass found nothing in `text` read as `mode` (strings too long to keep are left out).
    pub(crate) fn remember_clean(&mut self, text: &str, mode: TextMode) {
        if text.len() <= KeyVerdicts::MAX_CLEAN_LEN {
            let set = self.key_verdicts.clean.set(text, mode as u16);
            self.key_verdicts.clean.put(set, text, mode as u16, ());
        }
    }

    /// [`DetectorSet::find`](crate::rules::detectors::DetectorSet::find) on `text`, from [`FoundMemo`] when this
    /// thread read the same string under the same rules before.
    pub(crate) fn find_values(&mut self, text: &str, hits: &mut Vec<Hit>) {
        let detectors = &self.engine.detectors;
        let KeyVerdicts { found, views, .. } = &mut self.key_verdicts;
        if text.len() > FoundMemo::MAX_LEN {
            return detectors.find_with_views(text, hits, views);
        }
        let digest = found.digest(text);
        if found.get(digest, hits) {
            return;
        }
        detectors.find_with_views(text, hits, views);
        // A string without findings is left to the clean-string memo (or, with a key rule's span, read again): its
        // slot would only evict one with findings.
        if !hits.is_empty() {
            found.put(digest, hits);
        }
    }

    /// What the walk does with `key` in `scope` ([`walk::KeyFacts`]), from the memo when it was worked out before:
    /// it depends on nothing else (the rules are the memo's own).
    pub(crate) fn key_facts(&mut self, scope: Scope, key: &str) -> walk::KeyFacts {
        // Never 0 (the tag of the sensitive-key memo), though the tables are apart anyway.
        let Some(kept) = InlineKey::new(key, scope as u8 + 1) else {
            return self.work_out_key_facts(scope, key);
        };
        let set = self.key_verdicts.fields.set(&kept);
        if let Some(facts) = self.key_verdicts.fields.get(set, &kept) {
            return facts;
        }
        let facts = self.work_out_key_facts(scope, key);
        self.key_verdicts.fields.put(set, kept, facts);
        facts
    }

    /// What the key rules put in place of a whole value: its HMAC when keys are hashed, else the key replacement;
    /// with the change's action and remark type (`p` pseudonymized, `s` substituted). The replacement is borrowed
    /// from the rules, so the streaming walk writes it without a copy.
    pub(crate) fn key_replacement(&self, text: &str) -> (Cow<'e, str>, ChangeAction, &'static str) {
        if self.engine.key_action == Action::Hash {
            (Cow::Owned(self.hash(text)), ChangeAction::Hashed, "p")
        } else {
            (
                Cow::Borrowed(self.engine.key_replacement.as_str()),
                ChangeAction::Replaced,
                "s",
            )
        }
    }

    /// HMAC-SHA256 of `text` under the rules' key, as `hmac:` and 32 hex digits (128 bits: plenty to correlate).
    pub(crate) fn hash(&self, text: &str) -> String {
        let key: &[u8] = self.engine.hmac_key.as_deref().unwrap_or_default();
        // HMAC accepts keys of any length, so construction cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(text.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(5 + 32);
        out.push_str("hmac:");
        for byte in &digest[..16] {
            out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
        }
        out
    }

    /// Counts a change and records it for `--explain` and `_meta`.
    pub(crate) fn record(
        &mut self,
        path: &[Seg<'_>],
        extra: Option<&str>,
        rule: &str,
        action: ChangeAction,
        remarks: &[Remark<'_>],
        len: Option<usize>,
    ) {
        self.record_all(path, extra, &[(rule, action)], remarks, len);
    }

    /// Counts changes of one field and records each for `--explain`, in order, and `remarks` as one `_meta` entry:
    /// what [`Scrubber::record`] of each change does, the remarks and length going with the last. A run of changes
    /// by one rule (a string with many findings of one detector) is counted with one look-up, not one per change.
    pub(crate) fn record_all(
        &mut self,
        path: &[Seg<'_>],
        extra: Option<&str>,
        changes: &[(&str, ChangeAction)],
        remarks: &[Remark<'_>],
        len: Option<usize>,
    ) {
        if changes.is_empty() {
            return;
        }
        self.changed = true;
        let mut rest = changes;
        while let Some(&(rule, action)) = rest.first() {
            let run = rest
                .iter()
                .take_while(|&&(other, other_action)| other_action == action && same_text(other, rule))
                .count();
            if action == ChangeAction::Truncated {
                *self.tally.truncations.entry(rule.to_string()).or_default() += run as u64;
            } else {
                self.tally.count_redaction(rule, run as u64);
            }
            rest = &rest[run..];
        }
        if self.explain {
            let mut rendered = String::new();
            for seg in path
                .iter()
                .map(|s| s.to_owned_string())
                .chain(extra.map(str::to_string))
            {
                if !rendered.is_empty() {
                    rendered.push('.');
                }
                rendered.push_str(&seg);
            }
            for &(rule, action) in changes {
                self.tally.changes.push(Change {
                    item_index: self.item_index,
                    item_type: self.item_type,
                    path: rendered.clone(),
                    rule: rule.to_string(),
                    action,
                });
            }
        }
        if self.collect_meta && self.nested == 0 && !remarks.is_empty() {
            // A field's changes are recorded together (scrub, then maybe truncate), so only the last entry can share
            // its path; scanning all entries would make PII-dense payloads quadratic.
            self.meta.add(path, extra, remarks, len, true);
        }
    }
}

/// Values SDKs (and this relay) already wrote in place of a secret; re-redacting them would only add noise.
pub(crate) fn is_already_filtered(value: &str, engine: &Engine) -> bool {
    value.is_empty()
        || value == "[Filtered]"
        || value == "[FILTERED]"
        || value == "[redacted]"
        || value == "[REDACTED]"
        || value == engine.key_replacement
        || value.starts_with("hmac:") && value.len() == 37
}

#[cfg(test)]
mod tests;
