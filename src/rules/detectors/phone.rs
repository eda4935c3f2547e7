//! Phone numbers of the whole world, validated with libphonenumber's metadata (the `phonenumber` crate) rather than
//! one regex: a candidate is a number only if it is a valid number for its country.
//!
//! Candidates are digit groups with single separators (space, `-`, `.`, parentheses), 8 to 15 digits:
//! - after a `+` country code (`+44 20 7946 0958`, `+49 (0)30 1234567`, `+33 1 23 45 67 89`, `+919876543210`);
//! - in the national format of the configured region when it is not `US` (the `phone_us` detector covers NANP):
//!   written with the trunk prefix `0` and at least one separator (`020 7946 0958` for `GB`).
//!
//! libphonenumber's own parse and validity check cost 5 to 40 µs per candidate (its regexes sit behind one global
//! mutex and are looked up by pattern string), so a candidate first passes [`may_be_valid`]: every type pattern of
//! every region that shares the calling code, compiled once per code. Most look-alikes stop there.
//!
//! Timestamps, unix milliseconds, versions, order numbers, ISBNs, ports and durations have no `+`, no trunk `0` with
//! separators, or fail the metadata's validity check. A run that continues a longer number (a digit, letter or
//! `digit.` right before or after) is never a candidate.

use std::sync::{LazyLock, OnceLock};

use phonenumber::country::Id;
use phonenumber::metadata::{DATABASE, Metadata};
use regex::Regex;

/// A region national numbers are read in (a CLDR id: `US`, `GB`, `DE`, ...).
pub type Region = Id;

/// E.164's longest number.
const MAX_DIGITS: usize = 15;
/// The shortest full international number worth a look (country code and national number).
const MIN_DIGITS: usize = 8;
/// The shortest national number looked at.
const MIN_NATIONAL_DIGITS: usize = 7;

/// The region that national numbers are read in, from `rules.yaml` (`US` when unset).
pub fn parse_region(text: &str) -> Option<Id> {
    text.trim().to_ascii_uppercase().parse().ok()
}

/// Loads the metadata and compiles the patterns of +1 (the largest code) once, so the first event with a phone
/// number does not pay for them.
pub fn warm() {
    let _ = phonenumber::parse(None, "+442079460958");
    let _ = calling_code_patterns(1);
}

/// Compiles the patterns of `region`'s calling code once, for a set that reads national numbers there.
pub fn warm_region(region: Id) {
    if let Some(meta) = DATABASE.by_id(region.as_ref()) {
        let _ = calling_code_patterns(meta.country_code());
    }
}

/// Calls `push(start, end)` for every valid phone number in `text`: international ones always, national ones when
/// `region` is given.
pub fn find(text: &str, region: Option<Id>, push: &mut dyn FnMut(usize, usize)) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Straight to the next byte that may start a candidate (a vectorized search): a byte-by-byte loop cost more
        // than the candidates on the raw SDK mix, whose strings with a `+` and eight digits average 470 bytes.
        let next = match region {
            None => memchr::memchr(b'+', &bytes[i..]),
            Some(_) => memchr::memchr3(b'+', b'0', b'(', &bytes[i..]),
        };
        let Some(offset) = next else {
            return;
        };
        i += offset;
        let b = bytes[i];
        let international = b == b'+';
        let national = region.is_some() && (b == b'0' || (b == b'(' && bytes.get(i + 1) == Some(&b'0')));
        if !(international || national) || !super::number_boundary_before(bytes, i) {
            i += 1;
            continue;
        }
        let from = if international { i + 1 } else { i };
        let groups = digit_groups(bytes, from);
        match longest_valid(text, i, &groups, if international { None } else { region }) {
            Some(end) => {
                push(i, end);
                i = end;
            }
            None => i = groups.last().map_or(i + 1, |g| g.1.max(i + 1)),
        }
    }
}

/// The digit groups starting at `from`: `(start, end)` of each run of digits, separated by one separator (a space,
/// `-` or `.`) or by parentheses around a group, up to [`MAX_DIGITS`] + 1 digits.
fn digit_groups(bytes: &[u8], from: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut pos = from;
    let mut digits = 0;
    loop {
        // An opening parenthesis may start a group: `(0)30`, `(020)`.
        let open = bytes.get(pos) == Some(&b'(');
        let start = pos + usize::from(open);
        let mut end = start;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            break;
        }
        digits += end - start;
        let mut next = end;
        if open {
            if bytes.get(end) != Some(&b')') {
                break;
            }
            next += 1;
        }
        groups.push((start, end));
        if digits > MAX_DIGITS {
            break;
        }
        // One separator (or `) ` after a parenthesised group, or nothing after it: `(0)30`).
        match bytes.get(next) {
            Some(b' ' | b'-' | b'.') if bytes.get(next + 1).is_some_and(|b| b.is_ascii_digit() || *b == b'(') => {
                pos = next + 1;
            }
            Some(b'(') => pos = next,
            Some(b) if open && b.is_ascii_digit() => pos = next,
            _ => break,
        }
    }
    groups
}

/// The end of the longest run of whole groups (from the first) that is a valid number, trying at most a few.
fn longest_valid(text: &str, start: usize, groups: &[(usize, usize)], region: Option<Id>) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut tries = 0;
    for n in (1..=groups.len()).rev() {
        let end = groups[n - 1].1;
        let closing = usize::from(bytes.get(end) == Some(&b')'));
        let digits: usize = groups[..n].iter().map(|(s, e)| e - s).sum();
        let min = if region.is_some() {
            MIN_NATIONAL_DIGITS
        } else {
            MIN_DIGITS
        };
        if digits > MAX_DIGITS {
            continue;
        }
        if digits < min {
            return None;
        }
        // The first try is the whole run; a run that ends inside a longer number is never a phone.
        if n == groups.len() && !super::number_boundary_after(bytes, end + closing) {
            return None;
        }
        if region.is_some() && n == 1 {
            return None; // national numbers need a separator
        }
        // `192.168.100.200`: dotted groups of up to three digits are addresses and versions, not phones.
        if dotted_quad(bytes, &groups[..n]) {
            return None;
        }
        tries += 1;
        if tries > 4 {
            return None;
        }
        if is_valid_number(&text[start..end], region) {
            return Some(end);
        }
    }
    None
}

/// Whether `candidate` is a valid phone number read in `region` (`None`: international only). The same candidates come
/// back in every event of an application (its support line, a test number), and the library's check costs thousands
/// of instructions even behind [`may_be_valid`], so each thread remembers its last verdicts ([`VerdictMemo`]).
fn is_valid_number(candidate: &str, region: Option<Id>) -> bool {
    let check = || {
        may_be_valid(candidate, region)
            && phonenumber::parse(region, candidate).is_ok_and(|number| phonenumber::is_valid(&number))
    };
    if candidate.len() > MEMO_KEY_LEN {
        return check();
    }
    VERDICTS.with(|memo| {
        let Ok(mut memo) = memo.try_borrow_mut() else {
            return check();
        };
        memo.get_or_insert(candidate, region, check)
    })
}

/// The longest candidate [`VerdictMemo`] keeps (`+49 (0)30 1234 5678 9` is 22 bytes).
const MEMO_KEY_LEN: usize = 32;
/// Its slots: direct-mapped by a hash of the candidate.
const MEMO_SLOTS: usize = 64;

/// A fixed-size, per-thread memo of [`is_valid_number`]: the verdict is a pure function of the candidate and the
/// region, so a remembered one is the one the library would give. Bounded: a slot is overwritten by the next
/// candidate that hashes to it.
struct VerdictMemo {
    slots: [Option<MemoSlot>; MEMO_SLOTS],
}

#[derive(Clone, Copy)]
struct MemoSlot {
    key: [u8; MEMO_KEY_LEN],
    len: u8,
    region: Option<Id>,
    valid: bool,
}

impl VerdictMemo {
    fn get_or_insert(&mut self, candidate: &str, region: Option<Id>, check: impl FnOnce() -> bool) -> bool {
        let bytes = candidate.as_bytes();
        // FNV-1a: the key is a few bytes of digits and separators.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let slot = &mut self.slots[(hash >> 32) as usize % MEMO_SLOTS];
        if let Some(kept) = slot
            && usize::from(kept.len) == bytes.len()
            && kept.region == region
            && kept.key[..bytes.len()] == *bytes
        {
            return kept.valid;
        }
        let valid = check();
        let mut key = [0u8; MEMO_KEY_LEN];
        key[..bytes.len()].copy_from_slice(bytes);
        *slot = Some(MemoSlot {
            key,
            len: bytes.len() as u8,
            region,
            valid,
        });
        valid
    }
}

thread_local! {
    static VERDICTS: std::cell::RefCell<VerdictMemo> =
        const { std::cell::RefCell::new(VerdictMemo { slots: [None; MEMO_SLOTS] }) };
}

/// A necessary condition for `phonenumber::is_valid` on what `phonenumber::parse(region, candidate)` reads: the
/// national significant number (after the calling code, with or without a national prefix the metadata would strip)
/// starts with a match of some type pattern (fixed line, mobile, toll free, ...) of some region of that code. That is
/// what validity requires, minus the general pattern and the length checks, so `false` is never wrong.
fn may_be_valid(candidate: &str, region: Option<Id>) -> bool {
    let mut digits = [0u8; MAX_DIGITS + 1];
    let mut len = 0;
    for b in candidate.bytes().filter(u8::is_ascii_digit) {
        if len == digits.len() {
            return true; // longer than any number: let the library decide
        }
        digits[len] = b;
        len += 1;
    }
    let digits = std::str::from_utf8(&digits[..len]).unwrap_or_default();
    let (code, national) = match region {
        Some(region) => match DATABASE.by_id(region.as_ref()) {
            Some(meta) => (meta.country_code(), digits),
            None => return true,
        },
        // Calling codes are prefix-free: the first 1 to 3 digits that are one.
        None => match (1..=3.min(digits.len())).find_map(|n| {
            let code: u16 = digits[..n].parse().ok()?;
            DATABASE.region(&code).map(|_| (code, &digits[n..]))
        }) {
            Some(found) => found,
            None => return false, // parse fails on an unknown calling code
        },
    };
    match calling_code_patterns(code) {
        Some(patterns) => patterns.may_match(national),
        None => true,
    }
}

/// Every type pattern of the regions of one calling code, as one regex anchored at the start, and how those regions
/// strip a national prefix.
struct CodePatterns {
    types: Regex,
    /// Each region's national prefix (`0`, `1`, `180020`, ...) and the rule that rewrites a local number it captures
    /// (`([457]\d{6})$` -> `268$1` for Antigua).
    national_prefixes: Vec<(Regex, Option<String>)>,
    /// The same prefix rules as one set: one pass says which of them apply (most numbers start with none).
    any_national_prefix: regex::RegexSet,
}

impl CodePatterns {
    /// Whether `national`, or what a region's national prefix rule would make of it, may be a number of this code.
    fn may_match(&self, national: &str) -> bool {
        self.types.is_match(national)
            || self.any_national_prefix.matches(national).iter().any(|index| {
                let (prefix, transform) = &self.national_prefixes[index];
                let Some(caps) = prefix.captures(national) else {
                    return false;
                };
                let rest = &national[caps.get(0).map_or(0, |m| m.end())..];
                if self.types.is_match(rest) {
                    return true;
                }
                match transform {
                    Some(rule) if caps.get(1).is_some() => {
                        let mut rewritten = String::new();
                        caps.expand(rule, &mut rewritten);
                        rewritten.push_str(rest);
                        self.types.is_match(&rewritten)
                    }
                    _ => false,
                }
            })
    }

    /// `None` when a pattern does not compile here: the library alone decides for that code.
    fn build(code: u16) -> Option<CodePatterns> {
        if code == 1 {
            super::mark_built(super::Kind::PhoneIntl);
        }
        let regions: Vec<&Metadata> = DATABASE.by_code(&code)?;
        let mut types = Vec::new();
        let mut national_prefixes = Vec::new();
        for meta in &regions {
            let d = meta.descriptors();
            let kinds = [
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ];
            for descriptor in kinds.into_iter().flatten() {
                types.push(format!("(?:{})", descriptor.national_number().as_str()));
            }
            // Without a parsing rule, the national prefix itself is stripped (libphonenumber's default).
            let prefix = match (meta.national_prefix_for_parsing(), meta.national_prefix()) {
                (Some(rule), _) => Some(format!("(?x)^(?:{})", rule.as_str())),
                (None, Some(prefix)) => Some(format!("^{}", regex::escape(prefix))),
                (None, None) => None,
            };
            if let Some(prefix) = prefix {
                let prefix = Regex::new(&prefix).ok()?;
                national_prefixes.push((prefix, meta.national_prefix_transform_rule().map(str::to_string)));
            }
        }
        let any_national_prefix = regex::RegexSet::new(national_prefixes.iter().map(|(r, _)| r.as_str())).ok()?;
        if types.is_empty() {
            return Some(CodePatterns {
                types: Regex::new("[^\\s\\S]").ok()?,
                national_prefixes,
                any_national_prefix,
            });
        }
        // A large alternation (+1 has 25 regions): a bigger lazy-DFA cache keeps its states instead of rebuilding
        // them on every search.
        let types = regex::RegexBuilder::new(&format!("(?x)^(?:{})", types.join("|")))
            .dfa_size_limit(16 << 20)
            .build()
            .ok()?;
        Some(CodePatterns {
            types,
            national_prefixes,
            any_national_prefix,
        })
    }
}

/// The patterns of each calling code (1 to 999), compiled on first use: a few milliseconds for the largest (+1, 25
/// regions), once per process.
fn calling_code_patterns(code: u16) -> Option<&'static CodePatterns> {
    static CODES: LazyLock<Vec<OnceLock<Option<CodePatterns>>>> =
        LazyLock::new(|| (0..1000).map(|_| OnceLock::new()).collect());
    CODES
        .get(usize::from(code))?
        .get_or_init(|| CodePatterns::build(code))
        .as_ref()
}

fn dotted_quad(bytes: &[u8], groups: &[(usize, usize)]) -> bool {
    groups.len() >= 3 && groups.iter().all(|(s, e)| e - s <= 3) && groups.windows(2).all(|w| bytes[w[0].1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phones(text: &str, region: Option<Id>) -> Vec<&str> {
        let mut out = Vec::new();
        find(text, region, &mut |s, e| out.push(&text[s..e]));
        out
    }

    #[test]
    fn international_numbers_in_their_usual_groupings() {
        for phone in [
            "+44 20 7946 0958",
            "+44 7911 123456",
            "+447911123456",
            "+49 30 12345678",
            "+49 (0)30 12345678",
            "+49 151 23456789",
            "+33 1 23 45 67 89",
            "+33 6 12 34 56 78",
            "+91 98765 43210",
            "+91-98765-43210",
            "+61 2 9876 5432",
            "+61 412 345 678",
            "+81 3-1234-5678",
            "+55 11 91234-5678",
            "+34 612 34 56 78",
            "+1 312 555 0177",
        ] {
            assert_eq!(phones(&format!("call {phone} now"), None), vec![phone], "{phone}");
            assert_eq!(
                phones(&format!("({phone})"), None),
                vec![phone],
                "{phone} in parentheses"
            );
        }
    }

    #[test]
    fn national_numbers_in_the_configured_region() {
        let gb = parse_region("gb");
        assert_eq!(phones("ring 020 7946 0958 today", gb), ["020 7946 0958"]);
        assert_eq!(phones("mobile 07911 123456", gb), ["07911 123456"]);
        assert!(phones("ring 020 7946 0958 today", None).is_empty());
        let de = parse_region("DE");
        assert_eq!(phones("Tel. 030 12345678", de), ["030 12345678"]);
        assert_eq!(phones("Tel. (030) 12345678", de), ["(030) 12345678"]);
    }

    #[test]
    fn every_number_of_a_long_string() {
        // The search jumps from one possible start (`+`, and `0` or `(` in a region) to the next: numbers far apart,
        // next to look-alikes that start the same way, are all found.
        let filler = " setting a+b at 2026-11-30 (retry 0) ".repeat(3);
        let text = format!("{filler}+44 20 7946 0958{filler}+1 555-123-4567 +49 30 12345678, (030) 12345678.{filler}");
        assert_eq!(phones(&text, None), ["+44 20 7946 0958", "+49 30 12345678"]);
        assert_eq!(
            phones(&text, parse_region("DE")),
            ["+44 20 7946 0958", "+49 30 12345678", "(030) 12345678"]
        );
    }

    #[test]
    fn the_pattern_check_never_rejects_what_the_library_accepts() {
        // Every region's example numbers, in international form and (for a region) in national form.
        let mut checked = 0;
        for meta in DATABASE.iter() {
            let Ok(region) = meta.id().parse::<Id>() else {
                continue;
            };
            let d = meta.descriptors();
            for descriptor in [d.fixed_line(), d.mobile(), d.toll_free(), d.voip(), d.uan()]
                .into_iter()
                .flatten()
            {
                let Some(example) = descriptor.example() else {
                    continue;
                };
                let international = format!("+{} {example}", meta.country_code());
                if let Ok(number) = phonenumber::parse(None, &international)
                    && phonenumber::is_valid(&number)
                {
                    assert!(may_be_valid(&international, None), "{international}");
                    checked += 1;
                }
                if let Some(prefix) = meta.national_prefix() {
                    let national = format!("{prefix}{example}");
                    if let Ok(number) = phonenumber::parse(Some(region), &national)
                        && phonenumber::is_valid(&number)
                    {
                        assert!(may_be_valid(&national, Some(region)), "{national} in {region:?}");
                    }
                }
            }
        }
        assert!(checked > 500, "only {checked} examples");
        // And it does reject: NANP's fictional 555 exchange, unknown calling codes.
        assert!(!may_be_valid("+1 555-123-4567", None));
        assert!(!may_be_valid("+999 12345678", None));
    }

    #[test]
    fn remembered_verdicts_are_the_library_s() {
        // Valid and invalid candidates, national and international, more of them than the memo has slots (so slots
        // are overwritten), each asked several times in a scrambled order: every answer is the library's.
        let gb = parse_region("GB");
        let mut candidates = Vec::new();
        for i in 0..150u32 {
            candidates.push((format!("+44 20 7946 {:04}", i * 37 % 10_000), None));
            candidates.push((format!("+1 555-123-{:04}", i), None));
            candidates.push((format!("+1 312 555 {:04}", i * 13 % 10_000), None));
            candidates.push((format!("020 7946 {:04}", i * 7 % 10_000), gb));
        }
        let direct = |candidate: &str, region: Option<Id>| {
            may_be_valid(candidate, region)
                && phonenumber::parse(region, candidate).is_ok_and(|number| phonenumber::is_valid(&number))
        };
        let mut valid = 0;
        for round in 0..3 {
            for i in 0..candidates.len() {
                let (candidate, region) = &candidates[(i * 7 + round * 11) % candidates.len()];
                let want = direct(candidate, *region);
                assert_eq!(is_valid_number(candidate, *region), want, "{candidate} in {region:?}");
                valid += usize::from(want);
            }
        }
        assert!(
            valid > 100 && valid < 3 * candidates.len() - 100,
            "{valid} valid answers"
        );
        // The same digits read in another region are another question.
        assert_eq!(is_valid_number("020 7946 0958", gb), direct("020 7946 0958", gb));
        assert_eq!(
            is_valid_number("020 7946 0958", parse_region("DE")),
            direct("020 7946 0958", parse_region("DE"))
        );
    }

    #[test]
    fn look_alikes_stay() {
        for text in [
            "2026-11-22T22:27:07+00:00",
            "1795386427882",
            "+1795386427882",
            "ts 1795386427.882619",
            "1.5e+10",
            "UTC+05:30",
            "version 3.11.7+build.4567",
            "+44",
            "+44 20",
            "+44 20 7946 09581",
            "+99 123 456 789",
            "x+447700900123",
            "order +123-456-7890",
            "ISBN 978-0-306-40615-7",
            "took +1234 ms",
            "port :8080",
        ] {
            assert!(phones(text, None).is_empty(), "{text:?} gave {:?}", phones(text, None));
        }
        let gb = parse_region("GB");
        for text in [
            "02079460958",
            "2026 11 22",
            "0.1.2.3",
            "id 0123456789",
            "192.168.100.200",
            "0 0 0 0",
            "at 00:00:01",
            "01/02/2026",
        ] {
            assert!(phones(text, gb).is_empty(), "{text:?} gave {:?}", phones(text, gb));
        }
    }
}
