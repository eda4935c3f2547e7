//! Value detectors: concrete shapes of secrets and PII found inside any string (emails, US phone numbers, SSNs,
//! Luhn-valid card numbers, bearer tokens, credentials in URLs, private keys, JWTs, cloud keys, IBANs), plus
//! user-defined regex rules.
//!
//! The hot path is "most strings contain nothing". So a single cheap pass over each string ([`Prefilter`]) counts
//! digits, dots, dashes, capitals and the few bytes that start each detector's literal (`@`, `b` of `bearer`, `_` of
//! `sk_`, `J` of `eyJ`, ...), in long strings only as far as the counts are compared; only when a count allows it
//! does a short scan look for the literal itself, and a detector's regex only runs when its literal is there.
//! Digit-shaped detectors (card, SSN, phone, IBAN) need a minimum digit count before they look at all.
//!
//! Each detector is narrow on purpose: cards must pass Luhn and start like a real card, phones need the NANP shape with
//! separators (or `+1`), SSNs need dashes and valid ranges. Over-scrubbing ids, timestamps, dates, versions and
//! ports is a bug.

use std::sync::LazyLock;

use regex::Regex;

use super::Action;

mod catalog;
#[cfg(test)]
mod generators;
mod ipv6;
pub mod phone;
mod taxid;
mod userpath;

/// The byte ranges of the user-name segments of home-directory paths in `text` (`jane` in `/home/jane/app.py`,
/// `C:\Users\jane\...`), as the `user_path` detector finds them, without a [`DetectorSet`]. For callers that
/// overwrite the user name in place (minidump module paths keep their length).
pub fn user_path_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    userpath::find(text.as_bytes(), &mut |start, end| spans.push(start..end));
    spans
}

/// The built-in detector kinds, in priority order: when two matches overlap, the earlier kind wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    PrivateKey,
    UrlCredentials,
    BearerToken,
    Jwt,
    AwsAccessKey,
    ProviderSecret,
    ApiToken,
    CredentialInText,
    UserPath,
    Email,
    CreditCard,
    Iban,
    Itin,
    Ssn,
    LabelledTaxId,
    PhoneUs,
    PhoneIntl,
    Ipv6,
    Ipv4,
    Custom,
}

impl Kind {
    /// The rule id used in metrics, remarks and the rules file.
    pub fn id(self) -> &'static str {
        match self {
            Kind::PrivateKey => "private_key",
            Kind::UrlCredentials => "url_credentials",
            Kind::BearerToken => "bearer_token",
            Kind::Jwt => "jwt",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::ProviderSecret => "provider_secret",
            Kind::ApiToken => "api_token",
            Kind::CredentialInText => "credential_in_text",
            Kind::UserPath => "user_path",
            Kind::Email => "email",
            Kind::CreditCard => "credit_card",
            Kind::Iban => "iban",
            Kind::LabelledTaxId => "labelled_tax_id",
            Kind::Itin => "itin",
            Kind::Ssn => "ssn",
            Kind::PhoneUs => "phone_us",
            Kind::PhoneIntl => "phone_intl",
            Kind::Ipv6 => "ipv6",
            Kind::Ipv4 => "ipv4",
            Kind::Custom => "custom",
        }
    }

    /// Every kind but [`Kind::Custom`]: the ones `rules.yaml` names under `detectors`.
    pub const BUILT_IN: [Kind; 19] = [
        Kind::PrivateKey,
        Kind::UrlCredentials,
        Kind::BearerToken,
        Kind::Jwt,
        Kind::AwsAccessKey,
        Kind::ProviderSecret,
        Kind::ApiToken,
        Kind::CredentialInText,
        Kind::UserPath,
        Kind::Email,
        Kind::CreditCard,
        Kind::Iban,
        Kind::Itin,
        Kind::Ssn,
        Kind::LabelledTaxId,
        Kind::PhoneUs,
        Kind::PhoneIntl,
        Kind::Ipv6,
        Kind::Ipv4,
    ];

    /// This kind's bit in a mask of kinds.
    fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The trigger bit this kind needs from the prefilter (0 = always runs).
    fn trigger(self) -> u32 {
        match self {
            Kind::PrivateKey => T_PRIVATE_KEY,
            Kind::UrlCredentials => T_AT,
            Kind::BearerToken => T_BEARER,
            Kind::Jwt => T_JWT,
            Kind::AwsAccessKey => T_AWS,
            Kind::ApiToken => T_API_TOKEN,
            Kind::Email => T_AT,
            Kind::CredentialInText => T_CREDENTIAL_WORD,
            Kind::UserPath => T_USER_PATH,
            Kind::ProviderSecret => T_CATALOG,
            Kind::LabelledTaxId => T_TAX_LABEL,
            Kind::PhoneIntl => T_PLUS,
            _ => 0,
        }
    }
}

const T_AT: u32 = 1;
const T_BEARER: u32 = 1 << 1;
const T_PRIVATE_KEY: u32 = 1 << 2;
const T_JWT: u32 = 1 << 3;
const T_AWS: u32 = 1 << 4;
const T_API_TOKEN: u32 = 1 << 5;
const T_CREDENTIAL_WORD: u32 = 1 << 6;
const T_USER_PATH: u32 = 1 << 7;
const T_CATALOG: u32 = 1 << 8;
const T_TAX_LABEL: u32 = 1 << 9;
const T_PLUS: u32 = 1 << 10;

/// Every trigger family, for callers that want all of them.
const T_ALL: u32 = T_AT
    | T_BEARER
    | T_PRIVATE_KEY
    | T_JWT
    | T_AWS
    | T_API_TOKEN
    | T_CREDENTIAL_WORD
    | T_USER_PATH
    | T_CATALOG
    | T_TAX_LABEL
    | T_PLUS;

/// How many bytes of each class a string holds, byte by byte through [`CLASS_COUNTS`] and [`CLASS_FLAGS`]: about four
/// instructions a byte and nothing to set up. Most families are ruled out by these counts alone (no digit, no `@`,
/// no `b`, no `_`...), so plain prose never reaches a substring search. The classes that are only ever asked "any?"
/// (`_`, `@`, `%`, `b`, `A`, `J`, non-ASCII) hold 1 or 0.
///
/// The prefilter counts strings shorter than [`SHORT_COUNT`] so ([`Classes::of`]), most values being short; longer
/// ones are read by [`Classes::of_long`], which stops where the thresholds are decided, and this exact count is what
/// tests check it against.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    digits: u32,
    uppers: u32,
    dots: u32,
    dashes: u32,
    underscores: u32,
    ats: u32,
    percents: u32,
    /// `b` or `B`: every `bearer`/`basic` starts with one.
    bs: u32,
    /// `A`: every AWS key id and Google API key starts with one.
    cap_as: u32,
    /// `J`: every JWT starts with `eyJ`.
    cap_js: u32,
    non_ascii: u32,
    /// `/` or `\`: every home-directory path has two.
    slashes: u32,
    /// `:`: every IPv6 address has two.
    colons: u32,
}

/// The classes [`Counts::of`] counts, one byte each of a `u64` ([`CLASS_COUNTS`]).
const COUNTED: usize = 6;

/// The classes it only needs to see once: one bit each of a byte, OR-ed together.
const F_UNDERSCORE: u8 = 1;
const F_AT: u8 = 1 << 1;
const F_PERCENT: u8 = 1 << 2;
const F_B: u8 = 1 << 3;
const F_CAP_A: u8 = 1 << 4;
const F_CAP_J: u8 = 1 << 5;
const F_NON_ASCII: u8 = 1 << 6;

/// Strings shorter than this are counted exactly ([`Counts::of`]); longer ones are read by [`Classes::of_long`]'s
/// scans, which stop at each class's largest threshold and cost a fraction of an instruction a byte where the count
/// costs four.
const SHORT_COUNT: usize = 128;

/// For each byte value, a one in the byte of a `u64` that counts its class: digits, capitals, dots, dashes,
/// slashes (`/`, `\`) and colons, bytes 0 to 5. Up to 255 bytes cannot carry one byte into the next.
static CLASS_COUNTS: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = (b.is_ascii_digit() as u64)
            | ((b.is_ascii_uppercase() as u64) << 8)
            | (((b == b'.') as u64) << 16)
            | (((b == b'-') as u64) << 24)
            | (((b == b'/' || b == b'\\') as u64) << 32)
            | (((b == b':') as u64) << 40);
        i += 1;
    }
    table
};

/// For each byte value, the `F_*` flags it sets.
static CLASS_FLAGS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = (if b == b'_' { F_UNDERSCORE } else { 0 })
            | (if b == b'@' { F_AT } else { 0 })
            | (if b == b'%' { F_PERCENT } else { 0 })
            | (if b | 0x20 == b'b' { F_B } else { 0 })
            | (if b == b'A' { F_CAP_A } else { 0 })
            | (if b == b'J' { F_CAP_J } else { 0 })
            | (if b >= 0x80 { F_NON_ASCII } else { 0 });
        i += 1;
    }
    table
};

impl Counts {
    fn of(bytes: &[u8]) -> Counts {
        let (mut total, mut seen) = ([0u32; COUNTED], 0u8);
        // 255 bytes per `u64` at most, so no byte of it overflows; the prefilter's strings are one chunk.
        for chunk in bytes.chunks(255) {
            let mut counts = 0u64;
            for &b in chunk {
                counts += CLASS_COUNTS[usize::from(b)];
                seen |= CLASS_FLAGS[usize::from(b)];
            }
            for (i, sum) in total.iter_mut().enumerate() {
                *sum += ((counts >> (8 * i)) & 0xff) as u32;
            }
        }
        let has = |flag: u8| u32::from(seen & flag != 0);
        let [digits, uppers, dots, dashes, slashes, colons] = total;
        Counts {
            digits,
            uppers,
            dots,
            dashes,
            underscores: has(F_UNDERSCORE),
            ats: has(F_AT),
            percents: has(F_PERCENT),
            bs: has(F_B),
            cap_as: has(F_CAP_A),
            cap_js: has(F_CAP_J),
            non_ascii: has(F_NON_ASCII),
            slashes,
            colons,
        }
    }
}

/// A count that stops at `CAP`, the largest threshold it is compared with: it can only be asked "at least `N`?" for
/// an `N` up to `CAP` (a larger one does not compile), where it answers like the exact count. Long strings are
/// counted only that far ([`Classes::of_long`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountTo<const CAP: u32>(u32);

impl<const CAP: u32> CountTo<CAP> {
    fn new(count: u32) -> CountTo<CAP> {
        CountTo(count.min(CAP))
    }

    /// The positions an iterator yields, taken no further than `CAP`.
    fn of_hits(hits: impl Iterator<Item = usize>) -> CountTo<CAP> {
        CountTo(hits.take(CAP as usize).count() as u32)
    }

    /// Whether the count is `N` or more.
    ///
    /// ```
    /// # use scrub_relay::rules::detectors::CountTo;
    /// assert!(!CountTo::<13>::default().at_least::<13>());
    /// ```
    /// ```compile_fail
    /// # use scrub_relay::rules::detectors::CountTo;
    /// CountTo::<13>::default().at_least::<14>(); // 14 is past what the count holds
    /// ```
    pub fn at_least<const N: u32>(self) -> bool {
        const { assert!(N <= CAP, "a count that stops at CAP cannot tell a larger threshold") };
        self.0 >= N
    }
}

/// The largest thresholds the digit and capital counts are compared with ([`Prefilter::allows`]: cards 13, IBANs 2
/// capitals; [`Prefilter::for_families`]: AWS key ids 4 capitals and 20 capitals and digits together).
const DIGITS_CAP: u32 = 13;
const UPPERS_CAP: u32 = 4;
const UPPERS_AND_DIGITS_CAP: u32 = 20;

/// What [`Prefilter::for_families`] reads of a string's bytes: each counted class as far as its largest threshold,
/// and whether the string holds each of the bytes only asked "any?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Classes {
    digits: CountTo<DIGITS_CAP>,
    uppers: CountTo<UPPERS_CAP>,
    /// Capitals and digits together (an AWS key id has 20).
    uppers_and_digits: CountTo<UPPERS_AND_DIGITS_CAP>,
    dots: CountTo<3>,
    dashes: CountTo<5>,
    /// `/` or `\`.
    slashes: CountTo<2>,
    colons: CountTo<2>,
    underscore: bool,
    at: bool,
    percent: bool,
    /// `b` or `B`.
    b: bool,
    cap_a: bool,
    cap_j: bool,
    non_ascii: bool,
}

impl Classes {
    /// Short strings counted exactly ([`Counts::of`]), long ones by [`Classes::of_long`].
    fn of(bytes: &[u8]) -> Classes {
        if bytes.len() < SHORT_COUNT {
            Classes::from_counts(&Counts::of(bytes))
        } else {
            Classes::of_long(bytes)
        }
    }

    /// The exact counts, each stopped at its threshold.
    fn from_counts(c: &Counts) -> Classes {
        Classes {
            digits: CountTo::new(c.digits),
            uppers: CountTo::new(c.uppers),
            uppers_and_digits: CountTo::new(c.uppers + c.digits),
            dots: CountTo::new(c.dots),
            dashes: CountTo::new(c.dashes),
            slashes: CountTo::new(c.slashes),
            colons: CountTo::new(c.colons),
            underscore: c.underscores > 0,
            at: c.ats > 0,
            percent: c.percents > 0,
            b: c.bs > 0,
            cap_a: c.cap_as > 0,
            cap_j: c.cap_js > 0,
            non_ascii: c.non_ascii > 0,
        }
    }

    /// Without counting every class over every byte (a vector pass over all thirteen cost about 5.6 instructions
    /// a byte): digits and capitals counted until their thresholds are all reached ([`digits_and_uppers`]), the
    /// other classes found by `memchr` scans (vectorized, a fraction of an instruction a byte) that stop at their
    /// threshold's hit. On the raw captures' gen_ai prompts (10 KB of prose, PII at the start) and 42 KB blob of
    /// e-mail addresses, the scrub pass went from 10.54 M to 10.20 M instructions.
    fn of_long(bytes: &[u8]) -> Classes {
        let (digits, uppers) = digits_and_uppers(bytes);
        let any = |byte: u8| memchr::memchr(byte, bytes).is_some();
        Classes {
            digits: CountTo::new(digits),
            uppers: CountTo::new(uppers),
            uppers_and_digits: CountTo::new(digits + uppers),
            dots: CountTo::of_hits(memchr::memchr_iter(b'.', bytes)),
            dashes: CountTo::of_hits(memchr::memchr_iter(b'-', bytes)),
            slashes: CountTo::of_hits(memchr::memchr2_iter(b'/', b'\\', bytes)),
            colons: CountTo::of_hits(memchr::memchr_iter(b':', bytes)),
            underscore: any(b'_'),
            at: any(b'@'),
            percent: any(b'%'),
            b: memchr::memchr2(b'b', b'B', bytes).is_some(),
            cap_a: any(b'A'),
            cap_j: any(b'J'),
            non_ascii: !bytes.is_ascii(),
        }
    }
}

/// The digits and capitals of `bytes`, counted 240 bytes at a time (a `u8` count cannot overflow; the compiler
/// vectorizes the two sums) until both have reached every threshold they are compared with: from there the counts
/// are only lower bounds, the same once stopped at [`DIGITS_CAP`] and [`UPPERS_CAP`] as the exact ones.
fn digits_and_uppers(bytes: &[u8]) -> (u32, u32) {
    const CHUNK: usize = 240;
    let (mut digits, mut uppers) = (0, 0);
    for chunk in bytes.chunks(CHUNK) {
        let (d, u) = chunk.iter().fold((0u8, 0u8), |(d, u), &b| {
            (
                d.wrapping_add(u8::from(b.is_ascii_digit())),
                u.wrapping_add(u8::from(b.is_ascii_uppercase())),
            )
        });
        digits += u32::from(d);
        uppers += u32::from(u);
        if digits >= DIGITS_CAP && uppers >= UPPERS_CAP && digits + uppers >= UPPERS_AND_DIGITS_CAP {
            break;
        }
    }
    (digits, uppers)
}

/// What a string can hold: trigger bits and counts of the characters detectors need.
///
/// Each trigger family fires only when the string holds a literal that every match of its detector contains, so a
/// family that stays off can never hide a match. The literals, and what makes each necessary:
///
/// - `T_AT`: `@` or `%40` (the email scanner and the URL-credential regex need one).
/// - `T_BEARER`: `bearer` or `basic` in any case, then a space or tab (`(?i)\b(bearer|basic)[ \t]+`).
/// - `T_PRIVATE_KEY`: `-----BEGIN ` and `PRIVATE KEY` (the regex is case-sensitive).
/// - `T_JWT`: `eyJ` and two dots.
/// - `T_AWS`: `A` followed by one of the eight key-id prefixes' last three letters, 4 capitals, 20 capitals or digits.
/// - `T_API_TOKEN`: a `_` or `-` right after one of the token prefixes (`sk_`, `ghp_`, `xoxb-`, ...), or `AIza`.
/// - `T_USER_PATH`: two `/` or `\`, and `/ho`, `/us`, `\us` or `\do` in any case (`/home/`, `/Users/`,
///   `C:\Users\`, `C:\Documents and Settings\`).
/// - `T_CATALOG`: one of the provider-secret catalog's literals (an Aho-Corasick scan, on strings of 20 bytes or
///   more: no catalog token is shorter).
/// - `T_TAX_LABEL`: nine digits and `ssn`, `ss#`, `soc`, `tax`, `tin` or `iti` in any case (every label starts so).
/// - `T_PLUS`: eight digits and a `+` (an international phone number's country code).
/// - `T_CREDENTIAL_WORD`: an ASCII digit (the value must hold one) and one of `passw`, `passp`, `pwd`, `secret`,
///   `api[_ -]?k`, `token` in any case.
///
/// The case-insensitive regexes also match `ſ` (U+017F) for `s` and the Kelvin sign (U+212A) for `k`; a string
/// holding either switches the case-insensitive families on without a search.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefilter {
    pub triggers: u32,
    pub digits: CountTo<DIGITS_CAP>,
    pub dots: CountTo<3>,
    pub dashes: CountTo<5>,
    pub uppers: CountTo<UPPERS_CAP>,
    pub colons: CountTo<2>,
}

impl Prefilter {
    /// Every trigger family of `text`.
    pub fn of(text: &str) -> Prefilter {
        Prefilter::for_families(text, T_ALL)
    }

    /// The trigger families in `wanted` (others stay off without being looked for), and the counts.
    fn for_families(text: &str, wanted: u32) -> Prefilter {
        Prefilter::from_classes(text, wanted, &Classes::of(text.as_bytes()))
    }

    /// [`Prefilter::for_families`] from the classes of `text`'s bytes.
    fn from_classes(text: &str, wanted: u32, c: &Classes) -> Prefilter {
        let bytes = text.as_bytes();
        let unicode_fold = || c.non_ascii && (text.contains('\u{17F}') || text.contains('\u{212A}'));
        let mut triggers = 0;
        // A macro, not a closure taking `&dyn Fn`: an indirect call per family cost more than most of the checks.
        macro_rules! check {
            ($bit:expr, $maybe:expr) => {
                if wanted & $bit != 0 && $maybe {
                    triggers |= $bit;
                }
            };
        }
        check!(T_AT, c.at || (c.percent && text.contains("%40")));
        check!(T_BEARER, c.b && (unicode_fold() || has_bearer_word(bytes)));
        check!(
            T_PRIVATE_KEY,
            c.dashes.at_least::<5>() && text.contains("-----BEGIN ") && text.contains("PRIVATE KEY")
        );
        check!(T_JWT, c.cap_j && c.dots.at_least::<2>() && text.contains("eyJ"));
        check!(
            T_AWS,
            c.cap_a && c.uppers.at_least::<4>() && c.uppers_and_digits.at_least::<20>() && has_aws_prefix(bytes)
        );
        check!(
            T_API_TOKEN,
            (c.underscore && has_token_prefix(bytes, b'_', UNDERSCORE_TOKEN_PREFIXES))
                || (c.dashes.at_least::<1>() && has_token_prefix(bytes, b'-', DASH_TOKEN_PREFIXES))
                || (c.cap_a && c.uppers.at_least::<2>() && text.contains("AIza"))
        );
        check!(
            T_CREDENTIAL_WORD,
            c.digits.at_least::<1>() && (unicode_fold() || has_credential_word(bytes))
        );
        check!(T_USER_PATH, c.slashes.at_least::<2>() && userpath::maybe(bytes));
        check!(T_CATALOG, catalog::maybe(text));
        check!(T_TAX_LABEL, c.digits.at_least::<9>() && taxid::maybe_labelled(bytes));
        check!(
            T_PLUS,
            c.digits.at_least::<8>() && memchr::memchr(b'+', bytes).is_some()
        );
        Prefilter {
            triggers,
            digits: c.digits,
            dots: c.dots,
            dashes: c.dashes,
            uppers: c.uppers,
            colons: c.colons,
        }
    }

    /// [`Kind::bit`] of every kind that can possibly match (custom rules always can). `Kind::BUILT_IN` is a
    /// constant, so this unrolls into straight-line code.
    fn allowed_kinds(&self) -> u32 {
        Kind::BUILT_IN.iter().fold(Kind::Custom.bit(), |bits, &kind| {
            if self.allows(kind) { bits | kind.bit() } else { bits }
        })
    }

    /// Whether a kind can possibly match a string with these counts.
    fn allows(&self, kind: Kind) -> bool {
        let trigger = kind.trigger();
        if trigger != 0 && self.triggers & trigger == 0 {
            return false;
        }
        match kind {
            Kind::CreditCard => self.digits.at_least::<13>(),
            Kind::Iban => self.digits.at_least::<10>() && self.uppers.at_least::<2>(),
            Kind::Ssn => self.digits.at_least::<9>() && self.dashes.at_least::<2>(),
            Kind::PhoneUs => self.digits.at_least::<10>(),
            Kind::Ipv4 => self.digits.at_least::<4>() && self.dots.at_least::<3>(),
            Kind::Itin => self.digits.at_least::<9>(),
            Kind::Ipv6 => self.digits.at_least::<1>() && self.colons.at_least::<2>(),
            _ => true,
        }
    }
}

/// Whether `bytes` starts with the lower-case ASCII `word`, in any case.
fn starts_with_ignore_case(bytes: &[u8], word: &[u8]) -> bool {
    bytes.len() >= word.len() && bytes[..word.len()].eq_ignore_ascii_case(word)
}

/// Whether any three consecutive bytes, ASCII-lower-cased, satisfy `hit`. Written in blocks of 16 starts without a
/// branch inside, and `hit` with `&`/`|` instead of `&&`/`||`, so the compiler vectorizes it: about 0.06 ns per
/// byte, where a scalar scan that stops at each candidate letter costs about 0.7 ns. The last block of a string
/// shorter than 18 bytes is the string padded with zero bytes, which lower to spaces: **`hit` is never true when one
/// of its bytes is a space** (a test checks every predicate), so the padding finds nothing. Before, a scalar loop did
/// the last starts, and on strings of a few dozen bytes it cost more than the blocks. The scans below run only when it
/// finds the first three letters of one of their words.
#[inline(always)]
fn any_trigram(bytes: &[u8], hit: impl Fn(u8, u8, u8) -> bool) -> bool {
    const STARTS: usize = 16;
    let block_hits = |block: &[u8; STARTS + 2]| {
        (0..STARTS).fold(false, |any, k| {
            any | hit(block[k] | 0x20, block[k + 1] | 0x20, block[k + 2] | 0x20)
        })
    };
    if bytes.len() < 3 {
        return false;
    }
    let mut at = 0;
    while let Some(block) = bytes.get(at..at + STARTS + 2) {
        let Ok(block) = <&[u8; STARTS + 2]>::try_from(block) else {
            break; // cannot happen: the slice is that long
        };
        if block_hits(block) {
            return true;
        }
        at += STARTS;
    }
    // The starts left: from a string of a block or more, its last block, which reads some starts again (harmless
    // for "any") and needs no padded copy (a call to `memcpy` per string).
    if let Some(last) = bytes.len().checked_sub(STARTS + 2).and_then(|from| bytes.get(from..)) {
        return <&[u8; STARTS + 2]>::try_from(last).is_ok_and(block_hits);
    }
    let mut tail = [0u8; STARTS + 2];
    let rest = &bytes[at..];
    tail[..rest.len()].copy_from_slice(rest);
    block_hits(&tail)
}

/// `bea` or `bas`: how `bearer` and `basic` start ([`any_trigram`] lower-cases).
#[inline(always)]
fn bearer_trigram(a: u8, b: u8, c: u8) -> bool {
    (a == b'b') & (((b == b'e') & (c == b'a')) | ((b == b'a') & (c == b's')))
}

/// `pas`, `pwd`, `sec`, `api` or `tok`: how the credential words start.
#[inline(always)]
fn credential_trigram(a: u8, b: u8, c: u8) -> bool {
    ((a == b'p') & (((b == b'a') & (c == b's')) | ((b == b'w') & (c == b'd'))))
        | ((a == b's') & (b == b'e') & (c == b'c'))
        | ((a == b'a') & (b == b'p') & (c == b'i'))
        | ((a == b't') & (b == b'o') & (c == b'k'))
}

/// `bearer` or `basic` (any case) followed by a space or tab. Long strings go from `b` to `b` by `memchr2`
/// (vectorized, and prose has few): the trigram scan reads every byte, and on the raw captures' 10 KB gen_ai
/// prompts it was most of the prefilter's cost after the counts.
fn has_bearer_word(bytes: &[u8]) -> bool {
    if bytes.len() >= SHORT_COUNT {
        return memchr::memchr2_iter(b'b', b'B', bytes).any(|i| is_bearer_word_at(&bytes[i..]));
    }
    if !any_trigram(bytes, bearer_trigram) {
        return false;
    }
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b | 0x20 == b'b' && is_bearer_word_at(&bytes[i..]))
}

/// Whether `rest` starts with `bearer` or `basic` (any case) and a space or tab.
fn is_bearer_word_at(rest: &[u8]) -> bool {
    let word = if starts_with_ignore_case(rest, b"bearer") {
        6
    } else if starts_with_ignore_case(rest, b"basic") {
        5
    } else {
        return false;
    };
    matches!(rest.get(word), Some(b' ' | b'\t'))
}

/// The words the credential regex starts with (`password|passwd|passphrase|pwd|secret|api[_ -]?key|...token`), cut
/// to the shortest prefix that still tells them apart from common prose.
fn has_credential_word(bytes: &[u8]) -> bool {
    if !any_trigram(bytes, credential_trigram) {
        return false;
    }
    bytes.iter().enumerate().any(|(i, &b)| {
        let rest = &bytes[i..];
        match b | 0x20 {
            b'p' => {
                starts_with_ignore_case(rest, b"passw")
                    || starts_with_ignore_case(rest, b"passp")
                    || starts_with_ignore_case(rest, b"pwd")
            }
            b's' => starts_with_ignore_case(rest, b"secret"),
            b't' => starts_with_ignore_case(rest, b"token"),
            b'a' => {
                starts_with_ignore_case(rest, b"api")
                    && match rest.get(3) {
                        Some(b'k' | b'K') => true,
                        Some(b'_' | b'-' | b' ') => rest.get(4).is_some_and(|b| b | 0x20 == b'k'),
                        _ => false,
                    }
            }
            _ => false,
        }
    })
}

/// `AKIA`, `ASIA`, `AGPA`, `AIDA`, `AROA`, `ANPA`, `ANVA` or `AIPA` (case-sensitive, like the AWS regex).
fn has_aws_prefix(bytes: &[u8]) -> bool {
    const TAILS: [&[u8; 3]; 8] = [b"KIA", b"SIA", b"GPA", b"IDA", b"ROA", b"NPA", b"NVA", b"IPA"];
    memchr::memchr_iter(b'A', bytes).any(|i| {
        bytes
            .get(i + 1..i + 4)
            .is_some_and(|tail| TAILS.iter().any(|t| t[..] == *tail))
    })
}

/// What comes right before the `_` of the API-token regex's literal prefixes (`sk_`, `rk_`, `whsec_`, `gh[pousr]_`,
/// `github_pat_`, `npm_`), case-sensitive like the regex.
const UNDERSCORE_TOKEN_PREFIXES: &[&[u8]] = &[
    b"sk",
    b"rk",
    b"whsec",
    b"ghp",
    b"gho",
    b"ghu",
    b"ghs",
    b"ghr",
    b"github_pat",
    b"npm",
];

/// ... and before the `-` of `sk-`, `glpat-`, `xox[abprs]-`.
const DASH_TOKEN_PREFIXES: &[&[u8]] = &[b"sk", b"glpat", b"xoxa", b"xoxb", b"xoxp", b"xoxr", b"xoxs"];

/// Whether some `separator` in `bytes` directly follows one of `prefixes`.
fn has_token_prefix(bytes: &[u8], separator: u8, prefixes: &[&[u8]]) -> bool {
    memchr::memchr_iter(separator, bytes).any(|i| prefixes.iter().any(|p| bytes[..i].ends_with(p)))
}

/// Strings shorter than this cannot hold any built-in shape (the shortest is an email like `a@b.co`).
const MIN_BUILT_IN_LEN: usize = 6;

/// One compiled detector: a kind, the id it reports under, and what it writes.
#[derive(Debug, Clone)]
pub struct Detector {
    pub kind: Kind,
    pub id: String,
    pub replacement: String,
    pub action: Action,
    /// Only for [`Kind::Custom`].
    pub regex: Option<Regex>,
}

/// A match: the byte range to replace and the index of the detector that found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
}

/// All enabled detectors of an engine, in priority order.
#[derive(Debug, Clone, Default)]
pub struct DetectorSet {
    pub detectors: Vec<Detector>,
    /// Whether any custom rule is enabled (they run on short strings too).
    pub has_custom: bool,
    /// The trigger families of the enabled detectors: the prefilter looks for no others.
    triggers: u32,
    /// [`Kind::bit`] of every enabled detector.
    kinds: u32,
    /// The region `phone_intl` reads national numbers in; `None` for `US` (NANP is `phone_us`'s), where only `+`
    /// numbers are looked for.
    phone_region: Option<phone::Region>,
    /// For each kind (by [`Kind::bit`]'s position), a bit per index of the detectors of that kind; `None` when there
    /// are more than 64 detectors. Lets [`DetectorSet::find_once`] visit only the detectors the prefilter allows.
    by_kind: Option<[u64; KINDS]>,
}

/// How many kinds there are ([`Kind::Custom`] is the last).
const KINDS: usize = Kind::Custom as usize + 1;

impl DetectorSet {
    pub fn new(detectors: Vec<Detector>) -> DetectorSet {
        let has_custom = detectors.iter().any(|d| d.kind == Kind::Custom);
        let triggers = detectors.iter().fold(0, |bits, d| bits | d.kind.trigger());
        let kinds = detectors.iter().fold(0, |bits, d| bits | d.kind.bit());
        warm_kinds(kinds);
        let by_kind = (detectors.len() <= 64).then(|| {
            let mut by_kind = [0u64; KINDS];
            for (index, detector) in detectors.iter().enumerate() {
                by_kind[detector.kind as usize] |= 1 << index;
            }
            by_kind
        });
        DetectorSet {
            detectors,
            has_custom,
            triggers,
            kinds,
            phone_region: None,
            by_kind,
        }
    }

    /// Reads national phone numbers in `region` too (`US`: only `+` numbers, NANP being `phone_us`'s).
    pub fn with_phone_region(mut self, region: phone::Region) -> DetectorSet {
        self.phone_region = (region != phone::Region::US).then_some(region);
        if let Some(region) = self.phone_region
            && self.kinds & Kind::PhoneIntl.bit() != 0
        {
            phone::warm_region(region);
        }
        self
    }
}

impl DetectorSet {
    /// Like [`DetectorSet::find`] with only the enabled detectors of one kind (none if it is switched off): file
    /// paths get the user-path detector alone.
    pub fn find_only(&self, kind: Kind, text: &str, hits: &mut Vec<Hit>) {
        hits.clear();
        if self.kinds & kind.bit() == 0 || text.len() < MIN_BUILT_IN_LEN {
            return;
        }
        if !Prefilter::for_families(text, kind.trigger()).allows(kind) {
            return;
        }
        for (index, detector) in self.detectors.iter().enumerate() {
            if detector.kind == kind {
                find_kind(kind, None, self.phone_region, text, &mut |start, end| {
                    hits.push(Hit {
                        start,
                        end,
                        detector: index,
                    })
                });
            }
        }
        hits.sort_by_key(|h| h.start);
    }

    /// Appends every match in `text` to `hits` (cleared first), sorted by start, without overlaps.
    pub fn find(&self, text: &str, hits: &mut Vec<Hit>) {
        self.find_with_views(text, hits, &mut NoViews);
    }

    /// [`DetectorSet::find`], asking `views` before reading a string again ([`CleanViews`]).
    pub fn find_with_views(&self, text: &str, hits: &mut Vec<Hit>, views: &mut dyn CleanViews) {
        self.find_once(text, hits);
        if !hits.is_empty() {
            self.read_again(text, hits, views);
        }
    }

    /// [`DetectorSet::find`] without reading the text again.
    fn find_once(&self, text: &str, hits: &mut Vec<Hit>) {
        hits.clear();
        if text.is_empty() || self.detectors.is_empty() {
            return;
        }
        let short = text.len() < MIN_BUILT_IN_LEN;
        if short && !self.has_custom {
            return;
        }
        // One bit per kind that may match, worked out once: a `match` on the kind per detector was an indirect jump
        // per detector and about a fifth of the time on an innocent sentence.
        let allowed = if short {
            Kind::Custom.bit()
        } else {
            let pre = Prefilter::for_families(text, self.triggers);
            let national_phone = self.phone_region.is_some() && pre.digits.at_least::<7>();
            pre.allowed_kinds() | if national_phone { Kind::PhoneIntl.bit() } else { 0 }
        };
        let allowed = allowed & self.kinds;
        if allowed == 0 {
            return;
        }
        let mut run = |index: usize, detector: &Detector| {
            find_kind(
                detector.kind,
                detector.regex.as_ref(),
                self.phone_region,
                text,
                &mut |start, end| {
                    hits.push(Hit {
                        start,
                        end,
                        detector: index,
                    })
                },
            )
        };
        match &self.by_kind {
            // The allowed detectors' indices as one mask, visited lowest first: the same order as the loop below,
            // without a test per detector (most strings allow two or three of the nineteen).
            Some(by_kind) => {
                let mut kinds = allowed;
                let mut indices = 0u64;
                while kinds != 0 {
                    indices |= by_kind[kinds.trailing_zeros() as usize];
                    kinds &= kinds - 1;
                }
                while indices != 0 {
                    let index = indices.trailing_zeros() as usize;
                    indices &= indices - 1;
                    run(index, &self.detectors[index]);
                }
            }
            None => {
                for (index, detector) in self.detectors.iter().enumerate() {
                    if allowed & detector.kind.bit() != 0 {
                        run(index, detector);
                    }
                }
            }
        }
        join_hits(hits);
    }

    /// Reads `text` again as it will be forwarded, each hit replaced by its detector's mask, and adds what that
    /// reading finds outside the masks. A mask changes what is next to it: it ends the `scheme://` of a URL whose
    /// user name held a phone number (`sftp://ops-[redacted]-jane@host.example.org` has an address, which
    /// `sftp://ops-+447911123456-jane@host.example.org` has not: a URL's user name is none), and it ends a number
    /// that a digit after a `/` made part of a longer one (`+80000020000/***@example.org`, where the local part
    /// `000000000000000` followed). Any second reading of the forwarded text (this relay's, Sentry's) finds those,
    /// so the first one does. Found by the `security_report` fuzz target. Rarely adds anything, so it runs at most
    /// [`MAX_REREADS`] times, and only on strings where something was found.
    fn read_again(&self, text: &str, hits: &mut Vec<Hit>, views: &mut dyn CleanViews) {
        // A reading adds only what it finds in kept text: when the hits cover the whole string there is none.
        if !keeps_text(text, hits) {
            return;
        }
        // The view, its stretches and the second reading's hits reuse one set of buffers per thread (three
        // allocations per string with hits before). A nested call (none today) would get fresh ones.
        let mut fresh = ReadAgainScratch::default();
        READ_AGAIN_SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                self.read_again_with(text, hits, &mut scratch, views);
                // One huge string must not pin its copy to the thread.
                if scratch.view.capacity() > MAX_KEPT_SCRATCH {
                    *scratch = ReadAgainScratch::default();
                }
            }
            Err(_) => self.read_again_with(text, hits, &mut fresh, views),
        });
    }

    fn read_again_with(
        &self,
        text: &str,
        hits: &mut Vec<Hit>,
        scratch: &mut ReadAgainScratch,
        views: &mut dyn CleanViews,
    ) {
        let ReadAgainScratch { view, kept, more } = scratch;
        for _ in 0..MAX_REREADS {
            let masks = hits.iter().map(|hit| (hit.start, hit.end, self.mask_of(hit.detector)));
            masked_view(text, masks, view, kept);
            let view_is_clean = views.clean(view, &mut || {
                self.find_once(view, more);
                more.is_empty()
            });
            if view_is_clean {
                return;
            }
            let before = hits.len();
            for found in more.iter() {
                // Its ends are outside every hit (the masks it spans are hits already), so it is new.
                if let Some((start, end)) = kept_part(kept, found) {
                    hits.push(Hit {
                        start,
                        end,
                        detector: found.detector,
                    });
                }
            }
            if hits.len() == before {
                return;
            }
            join_hits(hits);
            if !keeps_text(text, hits) {
                return;
            }
        }
    }

    /// What a hit of detector `index` is replaced with, as a second reading sees it.
    pub(crate) fn mask_of(&self, index: usize) -> &str {
        let detector = &self.detectors[index];
        if detector.action == Action::Hash {
            HMAC_SHAPE
        } else {
            &detector.replacement
        }
    }
}

/// What a hashed value looks like to a second reading: `hmac:` and 32 hex digits.
pub(crate) const HMAC_SHAPE: &str = "hmac:00000000000000000000000000000000";

/// Writes into `view` the text as it will be forwarded: `text` with each of `masks` (start, end and what replaces
/// it; in order, not overlapping) replaced, and into `kept` each stretch of `text` the view keeps (where it starts in
/// the view, where in `text`, its length), as [`kept_part`] reads them. Both are cleared first.
pub(crate) fn masked_view<'m>(
    text: &str,
    masks: impl Iterator<Item = (usize, usize, &'m str)>,
    view: &mut String,
    kept: &mut Vec<(usize, usize, usize)>,
) {
    view.clear();
    kept.clear();
    let mut cursor = 0;
    for (start, end, mask) in masks {
        kept.push((view.len(), cursor, start - cursor));
        view.push_str(&text[cursor..start]);
        view.push_str(mask);
        cursor = end;
    }
    kept.push((view.len(), cursor, text.len() - cursor));
    view.push_str(&text[cursor..]);
}

/// The part of `found`, a hit in a view of a text, that lies in the text's kept stretches (each: where it starts in
/// the view, where in the text, its length; in order), mapped back to the text; `None` when it lies in masks. The
/// stretches are found by binary search, and the hits of one reading do not overlap, so mapping a reading's hits is
/// linear in them.
pub(crate) fn kept_part(kept: &[(usize, usize, usize)], found: &Hit) -> Option<(usize, usize)> {
    let first = kept.partition_point(|&(at, _, len)| at + len <= found.start);
    let last = kept.partition_point(|&(at, _, _)| at < found.end);
    let mut mapped = kept[first..last].iter().filter_map(|&(at, from, len)| {
        let (start, end) = (found.start.max(at), found.end.min(at + len));
        (start < end).then(|| (from + start - at, from + end - at))
    });
    let (start, end) = mapped.next()?;
    Some((start, mapped.next_back().map_or(end, |(_, last_end)| last_end)))
}

/// What a caller remembers of the second readings ([`DetectorSet::find_with_views`]): views, texts as they will be
/// forwarded with each finding replaced by its mask, in which the detectors found nothing. A view repeats where its
/// text does not: the same message, query or log line with another user's address or number reads the same once
/// masked, so from the second such string on its second reading is a lookup. Only a view where nothing at all was
/// found is remembered: whether a finding in a view adds anything depends on where the masks are, which the view
/// alone does not say.
pub trait CleanViews {
    /// Whether the detectors find nothing in `view`: remembered, or `read` (which reads it and says whether it found
    /// nothing), and remembered when clean. One call, so a memo looks its view up once.
    fn clean(&mut self, view: &str, read: &mut dyn FnMut() -> bool) -> bool;
}

/// Remembers nothing: every second reading reads.
struct NoViews;

impl CleanViews for NoViews {
    fn clean(&mut self, _view: &str, read: &mut dyn FnMut() -> bool) -> bool {
        read()
    }
}

/// How many times [`DetectorSet::find`] reads a string again (see `read_again`).
const MAX_REREADS: usize = 2;

/// Sorts hits by start and joins overlapping ones.
fn join_hits(hits: &mut Vec<Hit>) {
    if hits.len() > 1 {
        // Stable sort keeps priority order between hits that start at the same byte. An overlapping hit widens the
        // one before it rather than being dropped: an address whose local part starts inside another hit would
        // otherwise be forwarded (found by the `security_report` fuzz target). Joined in place: no second vector.
        hits.sort_by_key(|h| h.start);
        let mut kept = 0;
        for i in 0..hits.len() {
            let hit = hits[i];
            if kept > 0 && hit.start < hits[kept - 1].end {
                let last = &mut hits[kept - 1];
                last.end = last.end.max(hit.end);
            } else {
                hits[kept] = hit;
                kept += 1;
            }
        }
        hits.truncate(kept);
    }
}

/// Whether any byte of `text` lies outside `hits` (sorted, not overlapping).
fn keeps_text(text: &str, hits: &[Hit]) -> bool {
    let mut cursor = 0;
    for hit in hits {
        if hit.start > cursor {
            return true;
        }
        cursor = cursor.max(hit.end);
    }
    cursor < text.len()
}

/// The largest view [`DetectorSet::read_again`] keeps for the next string.
const MAX_KEPT_SCRATCH: usize = 64 * 1024;

/// The buffers of [`DetectorSet::read_again`].
#[derive(Default)]
struct ReadAgainScratch {
    view: String,
    kept: Vec<(usize, usize, usize)>,
    more: Vec<Hit>,
}

thread_local! {
    static READ_AGAIN_SCRATCH: std::cell::RefCell<ReadAgainScratch> = std::cell::RefCell::default();
}

macro_rules! regex {
    ($name:ident, $re:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($re).expect(concat!("built-in regex ", $re)));
    };
    ($name:ident, $kind:expr, $re:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| {
            mark_built($kind);
            Regex::new($re).expect(concat!("built-in regex ", $re))
        });
    };
}

/// The built-in regexes, each with the one kind that searches with it. They, the provider catalog's automaton
/// ([`Kind::ProviderSecret`]) and the phone metadata ([`Kind::PhoneIntl`]) are built when a [`DetectorSet`] that
/// enables their kind is (at start and on reload, like every other rule), not inside the first request that needs
/// one.
fn built_in_regexes() -> [(Kind, &'static LazyLock<Regex>); 9] {
    [
        (Kind::BearerToken, &BEARER),
        (Kind::UrlCredentials, &URL_CREDENTIALS),
        (Kind::PrivateKey, &PRIVATE_KEY),
        (Kind::Jwt, &JWT),
        (Kind::AwsAccessKey, &AWS),
        (Kind::ApiToken, &API_TOKEN),
        (Kind::CredentialInText, &CREDENTIAL_IN_TEXT),
        (Kind::Iban, &IBAN),
        (Kind::Ipv4, &IPV4),
    ]
}

/// Builds the automata of the kinds in `kinds` (a mask of [`Kind::bit`]s) that are not built yet; returns which of
/// those kinds have automata (built now or before). Of the phone metadata, the calling code +1's patterns are built
/// here; the other codes' are built when a number with that code is first seen ([`phone::warm`]).
fn warm_kinds(kinds: u32) -> u32 {
    let mut warmed = 0;
    for (kind, regex) in built_in_regexes() {
        if kinds & kind.bit() != 0 {
            LazyLock::force(regex);
            warmed |= kind.bit();
        }
    }
    if kinds & Kind::ProviderSecret.bit() != 0 {
        catalog::warm();
        warmed |= Kind::ProviderSecret.bit();
    }
    if kinds & Kind::PhoneIntl.bit() != 0 {
        phone::warm();
        warmed |= Kind::PhoneIntl.bit();
    }
    warmed
}

/// The kinds whose automata have been built in this process (test builds only: the test of [`warm_kinds`] reads it).
static BUILT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Notes that an automaton of `kind` is being built.
fn mark_built(kind: Kind) {
    if cfg!(test) {
        BUILT.fetch_or(kind.bit(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
regex!(
    EMAIL,
    r"(?i)[a-z0-9][a-z0-9._%+\-]*(?:@|%40)(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,24}\b"
);
#[cfg(test)]
regex!(
    PHONE,
    r"(?:\+1[ .\-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .\-])[0-9]{3}[ .\-][0-9]{4}|\+1[2-9][0-9]{9}"
);
#[cfg(test)]
regex!(SSN, r"[0-9]{3}-[0-9]{2}-[0-9]{4}");
regex!(
    BEARER,
    Kind::BearerToken,
    r"(?i)\b(bearer|basic)[ \t]+([A-Za-z0-9\-._~+/]+=*)"
);
regex!(
    URL_CREDENTIALS,
    Kind::UrlCredentials,
    r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://([^\s/?#@:]+:[^\s/?#@]+)@"
);
regex!(
    PRIVATE_KEY,
    Kind::PrivateKey,
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\z)"
);
regex!(
    JWT,
    Kind::Jwt,
    r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
);
regex!(
    AWS,
    Kind::AwsAccessKey,
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"
);
regex!(
    API_TOKEN,
    Kind::ApiToken,
    r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{36})"
);
regex!(
    CREDENTIAL_IN_TEXT,
    Kind::CredentialInText,
    r#"(?i)\b(?:password|passwd|pwd|passphrase|secret|api[_ -]?key|access[_ -]?token|auth[_ -]?token|token)\b(?:\s*(?:[:=]|\bis\b)\s*|\s+)["']?([^\s"',;()\[\]{}<>&#]{6,})"#
);
regex!(
    IBAN,
    Kind::Iban,
    r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"
);
regex!(
    IPV4,
    Kind::Ipv4,
    r"\b(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}\b"
);

/// Words that follow "bearer"/"basic" in prose and are not credentials.
const BEARER_STOPWORDS: &[&str] = &[
    "a",
    "an",
    "and",
    "auth",
    "authentication",
    "authorization",
    "bond",
    "bonds",
    "for",
    "header",
    "in",
    "is",
    "of",
    "or",
    "scheme",
    "the",
    "to",
    "token",
    "tokens",
    "usage",
    "with",
];

fn find_kind(
    kind: Kind,
    custom: Option<&Regex>,
    phone_region: Option<phone::Region>,
    text: &str,
    push: &mut dyn FnMut(usize, usize),
) {
    let bytes = text.as_bytes();
    match kind {
        Kind::ProviderSecret => catalog::find(text, push),
        Kind::LabelledTaxId => taxid::find_labelled(bytes, push),
        Kind::Itin => taxid::find_itins(bytes, push),
        Kind::PhoneIntl => phone::find(text, phone_region, push),
        Kind::Ipv6 => ipv6::find(bytes, push),
        Kind::Email => find_emails(bytes, push),
        Kind::PhoneUs => us_phone_shapes(bytes, &mut |start, end| {
            if number_boundary_before(bytes, start) && number_boundary_after(bytes, end) {
                push(start, end);
            }
        }),
        Kind::Ssn => ssn_shapes(bytes, &mut |start, end| {
            if !number_boundary_before(bytes, start) || !number_boundary_after(bytes, end) {
                return;
            }
            let s = &bytes[start..end];
            let (area, group, serial) = (&s[0..3], &s[4..6], &s[7..11]);
            if area == b"000" || area == b"666" || group == b"00" || serial == b"0000" {
                return;
            }
            push(start, end);
        }),
        Kind::CreditCard => find_cards(bytes, push),
        Kind::BearerToken => {
            for caps in BEARER.captures_iter(text) {
                let (Some(scheme), Some(token)) = (caps.get(1), caps.get(2)) else {
                    continue;
                };
                let value = token.as_str();
                if BEARER_STOPWORDS
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(value.trim_end_matches('.')))
                {
                    continue;
                }
                if scheme.as_str().eq_ignore_ascii_case("basic") && !is_basic_credential(value) {
                    continue;
                }
                push(token.start(), token.end());
            }
        }
        Kind::UrlCredentials => {
            if !has_scheme_separator(bytes) {
                return;
            }
            for caps in URL_CREDENTIALS.captures_iter(text) {
                if let Some(userinfo) = caps.get(1) {
                    push(userinfo.start(), userinfo.end());
                }
            }
        }
        Kind::UserPath => userpath::find(bytes, push),
        Kind::PrivateKey => regex_hits(&PRIVATE_KEY, text, push),
        Kind::Jwt => regex_hits(&JWT, text, push),
        Kind::AwsAccessKey => regex_hits(&AWS, text, push),
        Kind::ApiToken => {
            // `\b` is Unicode's: whether a letter like `é` before a prefix is a word character, the regex decides.
            // So does it on long strings, where its literal search skips faster than a stop at every `_` and `-`
            // (the trigger fires on `task_id`, `disk-usage`).
            if text.len() <= API_TOKEN_SCAN_MAX_LEN && text.is_ascii() {
                api_tokens(bytes, push);
            } else {
                regex_hits(&API_TOKEN, text, push);
            }
        }
        Kind::CredentialInText => {
            let mut value = |start: usize, end: usize| {
                // A credential mixes letters and digits; prose ("password required") and code
                // ("password = form['password']") do not.
                let v = text[start..end].trim_end_matches(['.', '!', '?']);
                let has_digit = v.bytes().any(|b| b.is_ascii_digit());
                let has_letter = v.bytes().any(|b| b.is_ascii_alphabetic());
                let placeholder = v.starts_with("[") || v.starts_with("hmac:") || v.starts_with("***");
                if has_digit && has_letter && !placeholder {
                    push(start, end);
                }
            };
            if text.is_ascii() {
                credential_values(bytes, &mut value);
            } else {
                // `\s`, `\b` and `(?i)` reach beyond ASCII (U+00A0, `é`, `ſ`, the Kelvin sign): the regex decides.
                for caps in CREDENTIAL_IN_TEXT.captures_iter(text) {
                    if let Some(m) = caps.get(1) {
                        value(m.start(), m.end());
                    }
                }
            }
        }
        Kind::Iban => {
            // Every match starts with two capitals and two digits: without them the regex need not run.
            if !any_quad(bytes, |a, b, c, d| {
                a.is_ascii_uppercase() & b.is_ascii_uppercase() & c.is_ascii_digit() & d.is_ascii_digit()
            }) {
                return;
            }
            for m in IBAN.find_iter(text) {
                if iban_valid(m.as_str()) {
                    push(m.start(), m.end());
                }
            }
        }
        Kind::Ipv4 => {
            // Every match holds three dots, each between two digits.
            if !has_dotted_digits(bytes, 3) {
                return;
            }
            for m in IPV4.find_iter(text) {
                let dotted_before = m.start() > 0 && bytes[m.start() - 1] == b'.';
                let dotted_after =
                    bytes.get(m.end()) == Some(&b'.') && bytes.get(m.end() + 1).is_some_and(u8::is_ascii_digit);
                // `11.3.244.8-node.38`, `v1.2.3.4`: versions, not addresses.
                let versioned = matches!(bytes.get(m.end()), Some(b'-' | b'+' | b'_'))
                    || bytes.get(m.end()).is_some_and(u8::is_ascii_alphabetic)
                    || m.start() > 0 && matches!(bytes[m.start() - 1], b'v' | b'V' | b'-' | b'_');
                if !dotted_before && !dotted_after && !versioned && !is_non_public_ipv4(m.as_str()) {
                    push(m.start(), m.end());
                }
            }
        }
        Kind::Custom => {
            if let Some(regex) = custom {
                for m in regex.find_iter(text) {
                    if m.start() < m.end() {
                        push(m.start(), m.end());
                    }
                }
            }
        }
    }
}

/// Whether `bytes` holds `://`: a jump from `:` to `:` (`str::contains` sets up a substring searcher per call, which
/// cost more than the rest of the check on the short strings with an `@` that ask it).
fn has_scheme_separator(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b':', bytes).any(|i| bytes[i + 1..].starts_with(b"//"))
}

/// Calls `found(start, end)` for every match of the API-token regex (`API_TOKEN`) in ASCII `bytes`, as its
/// `find_iter` reports them (leftmost first, not overlapping), without the regex. At any start at most one of its
/// alternatives can match (their literal prefixes differ within their first three bytes, and `gh[pousr]_` never
/// reads `github_`), and each ends where its character class does (greedy `{n,}` with nothing after it) or after a
/// fixed count (`AIza`, `npm_`). `sk-(?:proj-|ant-)?[...]{20,}` matches exactly when 20 class bytes follow `sk-`
/// (`proj-` and `ant-` are class bytes too), and ends at the same place either way. Every match has a `_`, `-` or
/// the `A` of `AIza` at most six bytes after its start, so only the few bytes before one of those are tried (the
/// regex's own search cost more than the rest of the detectors on strings with a token). A test compares the two.
fn api_tokens(bytes: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let mut at = 0;
    while at < bytes.len() {
        let Some(offset) = memchr::memchr3(b'_', b'-', b'A', &bytes[at..]) else {
            return;
        };
        let mark = at + offset;
        let mut matched = None;
        for start in mark.saturating_sub(6).max(at)..=mark {
            if !matches!(bytes[start], b's' | b'r' | b'w' | b'g' | b'x' | b'A' | b'n') {
                continue; // no prefix starts so
            }
            if let Some(end) = api_token_at(bytes, start) {
                matched = Some((start, end));
                break;
            }
        }
        match matched {
            Some((start, end)) => {
                found(start, end);
                at = end;
            }
            None => at = mark + 1,
        }
    }
}

/// The longest string [`api_tokens`] scans; the regex reads longer ones.
const API_TOKEN_SCAN_MAX_LEN: usize = 512;

/// The end of the API-token regex's match starting at `start`, if one does (ASCII `bytes`).
fn api_token_at(bytes: &[u8], start: usize) -> Option<usize> {
    if start > 0 && is_word_byte(bytes[start - 1]) {
        return None; // `\b`: every prefix starts with a letter
    }
    let rest = &bytes[start..];
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let alnum_underscore = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let alnum_dash = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    let alnum_both = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    // The class run after a prefix of `skip` bytes: its end, when it is at least `min` long.
    let run = |skip: usize, min: usize, class: &dyn Fn(u8) -> bool| {
        let len = rest.get(skip..)?.iter().take_while(|&&b| class(b)).count();
        (len >= min).then_some(start + skip + len)
    };
    // Exactly `count` class bytes after the prefix.
    let exact = |skip: usize, count: usize, class: &dyn Fn(u8) -> bool| {
        rest.get(skip..skip + count)?
            .iter()
            .all(|&b| class(b))
            .then_some(start + skip + count)
    };
    match rest.first()? {
        b's' | b'r' => {
            if rest.len() >= 8
                && rest[1] == b'k'
                && rest[2] == b'_'
                && (&rest[3..7] == b"live" || &rest[3..7] == b"test")
                && rest[7] == b'_'
            {
                run(8, 10, &alnum)
            } else if rest.starts_with(b"sk-") {
                run(3, 20, &alnum_both)
            } else {
                None
            }
        }
        b'w' if rest.starts_with(b"whsec_") => run(6, 16, &alnum),
        b'g' => {
            if rest.len() >= 4
                && rest[1] == b'h'
                && matches!(rest[2], b'p' | b'o' | b'u' | b's' | b'r')
                && rest[3] == b'_'
            {
                run(4, 30, &alnum)
            } else if rest.starts_with(b"github_pat_") {
                run(11, 20, &alnum_underscore)
            } else if rest.starts_with(b"glpat-") {
                run(6, 20, &alnum_both)
            } else {
                None
            }
        }
        b'x' if rest.len() >= 5
            && rest.starts_with(b"xox")
            && matches!(rest[3], b'a' | b'b' | b'p' | b'r' | b's')
            && rest[4] == b'-' =>
        {
            run(5, 10, &alnum_dash)
        }
        b'A' if rest.starts_with(b"AIza") => exact(4, 35, &alnum_both),
        b'n' if rest.starts_with(b"npm_") => exact(4, 36, &alnum),
        _ => None,
    }
}

/// Calls `found(start, end)` for every match of `[0-9]{3}-[0-9]{2}-[0-9]{4}`, as the regex's `find_iter` reports
/// them (leftmost first, not overlapping), without the regex: the shape is fixed, so each match's first dash is three
/// bytes after its start, and `memchr` jumps from one dash to the next. A test compares it with the regex.
fn ssn_shapes(bytes: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    // Where the next match may start: the regex resumes after the end of the previous one.
    let mut from = 0;
    let mut dash_from = 3;
    while dash_from < bytes.len() {
        let Some(offset) = memchr::memchr(b'-', &bytes[dash_from..]) else {
            return;
        };
        let dash = dash_from + offset;
        let start = dash - 3;
        if start >= from
            && start + 11 <= bytes.len()
            && digits(start..dash)
            && digits(dash + 1..dash + 3)
            && bytes[dash + 3] == b'-'
            && digits(dash + 4..dash + 8)
        {
            found(start, start + 11);
            from = start + 11;
            dash_from = from + 3;
        } else {
            dash_from = dash + 1;
        }
    }
}

/// Calls `found(start, end)` for every match of the US phone regex (test-only `PHONE`)
/// `(?:\+1[ .\-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .\-])[0-9]{3}[ .\-][0-9]{4}|\+1[2-9][0-9]{9}`, as its
/// `find_iter` reports them (leftmost first, not overlapping), without the regex: at any start, at most one way of
/// reading the pattern can match (each optional part is followed by something it cannot be), so trying the
/// branches in the regex's order at each start gives the regex's match. A test compares the two.
fn us_phone_shapes(bytes: &[u8], found: &mut dyn FnMut(usize, usize)) {
    // Only a few starts can match: every match starts with `+`, or holds `[0-9]{3}[ .\-][0-9]{4}` whose separator
    // is at most 12 bytes after its start (`+1 (312) 555-0148`'s is 12). So the scan jumps to the next `+`, or to 12
    // bytes before the next such separator, and tries the 13 starts from there: strings with many digits and no
    // phone shape (timestamps, ids, versions) are not read position by position.
    let mut at = 0;
    let mut plus = memchr::memchr(b'+', bytes);
    while at < bytes.len() {
        if plus.is_some_and(|p| p < at) {
            plus = memchr::memchr(b'+', &bytes[at..]).map(|offset| at + offset);
        }
        // A match that starts before the next `+` ends before it (its only `+` is its first byte), so its
        // separator is before it too.
        let before_plus = plus.unwrap_or(bytes.len());
        let tail = phone_tail(bytes, at, before_plus);
        let start = match (plus, tail) {
            (Some(plus), Some(tail)) => plus.min(tail.saturating_sub(12)),
            (Some(plus), None) => plus,
            (None, Some(tail)) => tail.saturating_sub(12),
            (None, None) => return,
        };
        at = at.max(start);
        let window_end = (at + 13).min(bytes.len());
        while at < window_end {
            if let Some(end) = us_phone_at(bytes, at) {
                found(at, end);
                at = end;
                break;
            }
            at += 1;
        }
    }
}

/// The first separator `s` in `from..before` of `[0-9]{3}[ .\-][0-9]{4}` whose digits start at `from` or later (`s`
/// is at least `from + 3`). Such a separator ends a run of three or more digits, so the scan goes from digit run to
/// digit run (sixteen bytes at a time through prose) rather than stopping at every space, dot and dash: a `memchr3`
/// per space of the raw captures' 10 KB prompts was 5 % of their scrub. A test compares it with that search.
fn phone_tail(bytes: &[u8], from: usize, before: usize) -> Option<usize> {
    let mut at = from;
    while let Some(run) = taxid::next_digit(bytes, at).filter(|&run| run < before) {
        let end = bytes[run..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |len| run + len);
        if end - run >= 3
            && end < before
            && matches!(bytes[end], b' ' | b'.' | b'-')
            && bytes
                .get(end + 1..end + 5)
                .is_some_and(|next| next.iter().all(u8::is_ascii_digit))
        {
            return Some(end);
        }
        at = end;
    }
    None
}

/// The end of the US phone regex's match starting at `at`, if one does.
fn us_phone_at(bytes: &[u8], at: usize) -> Option<usize> {
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let digit = |i: usize| byte(i).is_ascii_digit();
    let area_digit = |i: usize| matches!(byte(i), b'2'..=b'9');
    let separator = |i: usize| matches!(byte(i), b' ' | b'.' | b'-');
    // `[0-9]{3}[ .\-][0-9]{4}` from `i`.
    let tail = |i: usize| {
        (digit(i) && digit(i + 1) && digit(i + 2) && separator(i + 3))
            .then_some(i + 4)
            .and_then(|j| (digit(j) && digit(j + 1) && digit(j + 2) && digit(j + 3)).then_some(j + 4))
    };
    // The area code and what follows, from `i`: `\([2-9][0-9]{2}\) ?` or `[2-9][0-9]{2}[ .\-]`, then the tail.
    let area_and_tail = |i: usize| {
        if byte(i) == b'(' {
            if area_digit(i + 1) && digit(i + 2) && digit(i + 3) && byte(i + 4) == b')' {
                // The optional space: the tail starts with a digit, so it is taken when it is there.
                return tail(if byte(i + 5) == b' ' { i + 6 } else { i + 5 });
            }
            None
        } else if area_digit(i) && digit(i + 1) && digit(i + 2) && separator(i + 3) {
            tail(i + 4)
        } else {
            None
        }
    };
    match byte(at) {
        b'+' => {
            if byte(at + 1) != b'1' {
                return None;
            }
            // `\+1[ .\-]?` then the area code, which starts with `(` or a digit: the separator is taken when it is
            // there. Without the `+1`, nothing matches from a `+`; then the second branch, `\+1[2-9][0-9]{9}`.
            let area = if separator(at + 2) { at + 3 } else { at + 2 };
            area_and_tail(area).or_else(|| (area_digit(at + 2) && (at + 3..at + 12).all(digit)).then_some(at + 12))
        }
        b'(' | b'2'..=b'9' => area_and_tail(at),
        _ => None,
    }
}

/// [`credential_values`] tries every start of strings up to this long; longer ones skip to the next possible word.
const CREDENTIAL_SCAN_MAX_LEN: usize = 160;

/// The credential words of `CREDENTIAL_IN_TEXT`, in its order (`[_ -]?` written out; `api[_ -]?key` and the others
/// never match at the same start as another word, so the order only matters to the regex's reading).
const CREDENTIAL_WORDS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pwd",
    b"passphrase",
    b"secret",
    b"api_key",
    b"api-key",
    b"api key",
    b"apikey",
    b"access_token",
    b"access-token",
    b"access token",
    b"accesstoken",
    b"auth_token",
    b"auth-token",
    b"auth token",
    b"authtoken",
    b"token",
];

/// Calls `found(start, end)` with capture group 1 (the value) of every match of `CREDENTIAL_IN_TEXT` in ASCII
/// `bytes`, as its `captures_iter` reports them, without the regex (whose capture search was the largest detector
/// cost on the raw python event). On ASCII, `\s` is `[\t\n\x0B\x0C\r ]`, `\b` is an ASCII word boundary and `(?i)`
/// folds ASCII letters only. At each start, the word is the only one that can match there, and each part after it
/// is followed by something it cannot hold, so the regex's first choice that matches is found without going back:
/// the separator `\s*(?:[:=]|\bis\b)\s*` first, then `\s+`; an optional quote; then at least six value bytes. A test
/// compares it with the regex.
///
/// Strings longer than [`CREDENTIAL_SCAN_MAX_LEN`] go from one possible word start to the next
/// ([`next_credential_start`]) instead of trying every byte: on long prose the regex's search (no literal prefilter
/// for nineteen case-folded words) cost about 1.3 ns a byte, 7 % of the scrub stage on the raw captures, whose 10 KB
/// gen_ai prompts name a password at their start.
fn credential_values(bytes: &[u8], found: &mut dyn FnMut(usize, usize)) {
    let space = |b: u8| matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ');
    let value_byte = |b: u8| {
        !space(b)
            && !matches!(
                b,
                b'"' | b'\'' | b',' | b';' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'<' | b'>' | b'&' | b'#'
            )
    };
    let skip = |mut i: usize, class: &dyn Fn(u8) -> bool| {
        while i < bytes.len() && class(bytes[i]) {
            i += 1;
        }
        i
    };
    // The value from `i`: an optional quote, then six or more value bytes (greedy).
    let value_from = |i: usize| -> Option<(usize, usize)> {
        let start = if matches!(bytes.get(i), Some(b'"' | b'\'')) {
            i + 1
        } else {
            i
        };
        let end = skip(start, &value_byte);
        (end - start >= 6).then_some((start, end))
    };
    let skip_ahead = bytes.len() > CREDENTIAL_SCAN_MAX_LEN;
    let mut at = 0;
    while at < bytes.len() {
        if skip_ahead {
            at = next_credential_start(bytes, at);
            if at == bytes.len() {
                return;
            }
        }
        let starts_word =
            matches!(bytes[at] | 0x20, b'p' | b's' | b'a' | b't') && (at == 0 || !is_word_byte(bytes[at - 1]));
        let keyword_end = if starts_word {
            CREDENTIAL_WORDS
                .iter()
                .find(|w| starts_with_ignore_case(&bytes[at..], w))
                .map(|w| at + w.len())
                .filter(|&end| bytes.get(end).is_none_or(|&b| !is_word_byte(b)))
        } else {
            None
        };
        let Some(end) = keyword_end else {
            at += 1;
            continue;
        };
        // `\s*(?:[:=]|\bis\b)\s*`, then `\s+`.
        let spaced = skip(end, &space);
        let first = match bytes.get(spaced) {
            Some(b':' | b'=') => Some(spaced + 1),
            Some(b'i' | b'I')
                if spaced > end
                    && matches!(bytes.get(spaced + 1), Some(b's' | b'S'))
                    && bytes.get(spaced + 2).is_none_or(|&b| !is_word_byte(b)) =>
            {
                Some(spaced + 2)
            }
            _ => None,
        }
        .and_then(|after| value_from(skip(after, &space)));
        let second = || (spaced > end).then(|| value_from(spaced)).flatten();
        match first.or_else(second) {
            Some((start, value_end)) => {
                found(start, value_end);
                at = value_end;
            }
            None => at += 1,
        }
    }
}

/// The first position from `from` where a credential word can start, or `bytes.len()`: the start of a word (no
/// ASCII word byte before it) whose first three bytes, ASCII-lower-cased, are how a word in [`CREDENTIAL_WORDS`]
/// starts (`pas`, `pwd`, `sec`, `api`, `acc`, `aut` or `tok`). Blocks of 16 starts are tested without a branch, as
/// in [`any_trigram`] (vectorized), and only a block that has one is read start by start.
fn next_credential_start(bytes: &[u8], from: usize) -> usize {
    const STARTS: usize = 16;
    let starts_here = |before: u8, a: u8, b: u8, c: u8| {
        let (a, b, c) = (a | 0x20, b | 0x20, c | 0x20);
        !is_word_byte(before)
            & (credential_trigram(a, b, c)
                | ((a == b'a') & (((b == b'c') & (c == b'c')) | ((b == b'u') & (c == b't')))))
    };
    let starts_at = |i: usize| {
        i + 2 < bytes.len()
            && starts_here(
                i.checked_sub(1).map_or(b' ', |before| bytes[before]),
                bytes[i],
                bytes[i + 1],
                bytes[i + 2],
            )
    };
    if starts_at(from) {
        return from;
    }
    // From here on every start has a byte before it: a block is that byte, its starts and two more.
    let mut at = from + 1;
    while let Some(block) = bytes.get(at - 1..at + STARTS + 2) {
        let Ok(block) = <&[u8; STARTS + 3]>::try_from(block) else {
            break; // cannot happen: the slice is that long
        };
        if (0..STARTS).fold(false, |any, k| {
            any | starts_here(block[k], block[k + 1], block[k + 2], block[k + 3])
        }) {
            break;
        }
        at += STARTS;
    }
    // The block that has a start, or fewer than a block of starts left (the last two bytes start no word: the
    // shortest has three).
    (at..bytes.len()).find(|&i| starts_at(i)).unwrap_or(bytes.len())
}

/// Whether any four consecutive bytes satisfy `hit`; branch-free like [`any_trigram`], so it vectorizes.
#[inline(always)]
fn any_quad(bytes: &[u8], hit: impl Fn(u8, u8, u8, u8) -> bool) -> bool {
    let (Some(second), Some(third), Some(fourth)) = (bytes.get(1..), bytes.get(2..), bytes.get(3..)) else {
        return false;
    };
    let mut any = false;
    for (((&a, &b), &c), &d) in bytes.iter().zip(second).zip(third).zip(fourth) {
        any |= hit(a, b, c, d);
    }
    any
}

/// Whether at least `n` (one or more) dots have an ASCII digit on each side. Jumps from dot to dot and stops at the
/// `n`th: prose has a dot a sentence and few between digits, where counting over every byte (the test's
/// `count_dotted_digits`) cost about five instructions a byte, 2.5 % of the scrub of the raw captures (their 10 KB
/// prompts pass the gate's digit and dot counts).
fn has_dotted_digits(bytes: &[u8], n: usize) -> bool {
    memchr::memchr_iter(b'.', bytes)
        .filter(|&i| i > 0 && bytes[i - 1].is_ascii_digit() && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        .nth(n.saturating_sub(1))
        .is_some()
}

/// How many dots have an ASCII digit on each side: the oracle of [`has_dotted_digits`].
#[cfg(test)]
fn count_dotted_digits(bytes: &[u8]) -> usize {
    let (Some(second), Some(third)) = (bytes.get(1..), bytes.get(2..)) else {
        return 0;
    };
    bytes
        .iter()
        .zip(second)
        .zip(third)
        .map(|((&a, &b), &c)| usize::from(a.is_ascii_digit() & (b == b'.') & c.is_ascii_digit()))
        .sum()
}

/// Finds email addresses by expanding around each `@` (or `%40`) instead of running a regex over the whole string:
/// long prompts full of text cost one `memchr`-style scan. Reports the local part only; the domain stays.
/// Same language as the `EMAIL` regex in the tests: `[a-z0-9][a-z0-9._%+-]*@(label.)+tld`, case-insensitive, where
/// labels are alphanumeric with inner dashes and the TLD is 2-24 letters followed by a non-word character.
fn find_emails(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
    // Where the previous address's local part may not reach back past: its own `@`. Its domain may be the next
    // address's local part (`a@b.cc@d.org`): stopping at the end of that domain would leave `b.cc@d.org`, an address,
    // in the scrubbed text.
    let mut last_end = 0;
    let mut i = 0;
    while i < bytes.len() {
        let Some(offset) = memchr::memchr2(b'@', b'%', &bytes[i..]) else {
            break;
        };
        let at = i + offset;
        let separator = if bytes[at] == b'@' {
            1
        } else if bytes.get(at + 1..at + 3) == Some(b"40".as_slice()) {
            3
        } else {
            i = at + 1;
            continue;
        };
        i = at + separator;
        let mut start = bytes[last_end..at]
            .iter()
            .rposition(|&b| !EMAIL_LOCAL[usize::from(b)])
            .map_or(last_end, |p| last_end + p + 1);
        while start < at && !bytes[start].is_ascii_alphanumeric() {
            start += 1;
        }
        if start == at {
            continue;
        }
        let Some(end) = email_domain_end(bytes, at + separator) else {
            continue;
        };
        // `scheme://user@host` is URL userinfo, not an address.
        if start >= 3 && &bytes[start - 3..start] == b"://" {
            continue;
        }
        push(start, at);
        last_end = at + separator;
        i = end;
    }
}

/// The bytes of an email's local part (`[a-z0-9._%+-]`, any case) and of a domain label (`[a-z0-9-]`), as tables:
/// one load a byte where the comparisons were several, on strings that repeat an address thousands of times.
const EMAIL_LOCAL: [bool; 256] = alphanumeric_and(b"._%+-");
const EMAIL_LABEL: [bool; 256] = alphanumeric_and(b"-");

/// An ASCII word byte (`\w` on ASCII: letters, digits and `_`): what detectors check beside a match, as the regexes'
/// `\b` does. `|`, not `||`, so scans that test many starts at once stay branch-free.
#[inline]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() | (b == b'_')
}

/// ASCII letters and digits, and the bytes of `also`, as a table indexed by byte.
const fn alphanumeric_and(also: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    let mut k = 0;
    while k < also.len() {
        table[also[k] as usize] = true;
        k += 1;
    }
    table
}

/// The end of an email domain starting at `from`: at least two labels, the last all letters (2-24).
fn email_domain_end(bytes: &[u8], from: usize) -> Option<usize> {
    // The longest domain whose last label is a valid TLD followed by a non-word character: the last label after
    // the first that qualifies.
    let mut longest = None;
    let mut first = true;
    let mut pos = from;
    loop {
        let start = pos;
        pos += bytes[pos..]
            .iter()
            .position(|&b| !EMAIL_LABEL[usize::from(b)])
            .unwrap_or(bytes.len() - pos);
        if pos == start || bytes[start] == b'-' || bytes[pos - 1] == b'-' {
            break;
        }
        if !first {
            let tld = &bytes[start..pos];
            let tld_ok = (2..=24).contains(&tld.len()) && tld.iter().all(u8::is_ascii_alphabetic);
            if tld_ok && !bytes.get(pos).copied().is_some_and(is_word_byte) {
                longest = Some(pos);
            }
        }
        first = false;
        if pos + 1 < bytes.len() && bytes[pos] == b'.' && bytes[pos + 1].is_ascii_alphanumeric() {
            pos += 1;
        } else {
            break;
        }
    }
    longest
}

fn regex_hits(regex: &Regex, text: &str, push: &mut dyn FnMut(usize, usize)) {
    for m in regex.find_iter(text) {
        push(m.start(), m.end());
    }
}

/// Loopback, private, link-local, unspecified and broadcast addresses name machines, not people.
fn is_non_public_ipv4(text: &str) -> bool {
    let octets: Vec<u8> = text.split('.').filter_map(|o| o.parse().ok()).collect();
    match octets.as_slice() {
        // A last octet of 0 or 255 is a network or broadcast address, and far more often a version (`6.0.0.0`).
        [_, _, _, 0 | 255] => true,
        [a, b, _, _] => {
            *a == 0
                || *a == 10
                || *a == 127
                || (*a == 169 && *b == 254)
                || (*a == 172 && (16..=31).contains(b))
                || (*a == 192 && *b == 168)
                || *a >= 224
        }
        _ => true,
    }
}

/// A number-shaped match must not continue a larger number: no digit, letter, or `digit.`/`digit-` right before it.
fn number_boundary_before(bytes: &[u8], start: usize) -> bool {
    if start == 0 {
        return true;
    }
    let prev = bytes[start - 1];
    if prev.is_ascii_alphanumeric() || prev == b'_' {
        return false;
    }
    if matches!(prev, b'.' | b'-' | b'/' | b':') && start >= 2 && bytes[start - 2].is_ascii_digit() {
        return false;
    }
    true
}

/// ... and no digit, letter, or `.digit`/`-digit` right after it.
fn number_boundary_after(bytes: &[u8], end: usize) -> bool {
    let Some(&next) = bytes.get(end) else { return true };
    if next.is_ascii_alphanumeric() || next == b'_' {
        return false;
    }
    if matches!(next, b'.' | b'-' | b'/' | b':') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    true
}

/// Finds runs of 13-19 digits (single spaces or dashes allowed between digits) that pass Luhn and start like a card.
///
/// A run starts only at a digit with a number boundary before it, so the scan goes straight from one digit to the
/// next (sixteen bytes at a time through prose); a digit without a boundary (inside a word, an id, a version) takes
/// the rest of its word with it, which is where a byte-by-byte scan over every word would have come out too. It
/// was a third of the detectors' own time on the raw SDK captures (issue #11); a test compares the two scans.
fn find_cards(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
    let mut i = 0;
    // A run of more than `MAX_CARD_GROUPS` groups is a list of numbers, not a card: only the first few are kept.
    let mut groups = [(0, 0); MAX_CARD_GROUPS];
    while let Some(digit) = taxid::next_digit(bytes, i) {
        i = digit;
        if !number_boundary_before(bytes, i) {
            // Skip the rest of this alphanumeric run so we never start inside a word or number.
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            continue;
        }
        let mut count = 0;
        let mut j = i;
        loop {
            let group_start = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if count < MAX_CARD_GROUPS {
                groups[count] = (group_start, j);
            }
            count += 1;
            if j + 1 < bytes.len() && matches!(bytes[j], b' ' | b'-') && bytes[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        let run_end = j;
        if count <= MAX_CARD_GROUPS && number_boundary_after_card(bytes, run_end) {
            card_windows(bytes, &groups[..count], push);
        }
        i = run_end.max(i + 1);
    }
}

/// More digit groups than this in one run are a list of numbers, not a card.
const MAX_CARD_GROUPS: usize = 12;

fn number_boundary_after_card(bytes: &[u8], end: usize) -> bool {
    match bytes.get(end) {
        None => true,
        Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => false,
        Some(b'.') => !bytes.get(end + 1).is_some_and(u8::is_ascii_digit),
        _ => true,
    }
}

/// Tries the whole run of digit groups (at most [`MAX_CARD_GROUPS`]: `find_cards` skips longer runs), then each
/// window of whole groups, as a card number.
fn card_windows(bytes: &[u8], groups: &[(usize, usize)], push: &mut dyn FnMut(usize, usize)) {
    let digits_in = |from: usize, to: usize| -> usize { groups[from..to].iter().map(|(s, e)| e - s).sum() };
    let total = digits_in(0, groups.len());
    if total < 13 {
        return;
    }
    let mut from = 0;
    while from < groups.len() {
        let mut matched = None;
        // Longest window first, so a 16-digit card is not reported as a 13-digit one.
        for to in (from + 1..=groups.len()).rev() {
            let n = digits_in(from, to);
            if !(13..=19).contains(&n) {
                continue;
            }
            let (start, end) = (groups[from].0, groups[to - 1].1);
            if is_card_number(&bytes[start..end]) {
                matched = Some((to, start, end));
                break;
            }
        }
        match matched {
            Some((to, start, end)) => {
                push(start, end);
                from = to;
            }
            None => from += 1,
        }
    }
}

/// Luhn plus a plausible issuer prefix (2221-2720, 3[0456789], 4, 5[0-9], 6).
pub fn is_card_number(candidate: &[u8]) -> bool {
    let mut buffer = [0u8; 19];
    let mut len = 0;
    for &b in candidate.iter().filter(|b| b.is_ascii_digit()) {
        if len == buffer.len() {
            return false; // more than 19 digits
        }
        buffer[len] = b - b'0';
        len += 1;
    }
    let digits = &buffer[..len];
    if len < 13 {
        return false;
    }
    let prefix_ok = match digits[0] {
        2 => {
            let four = digits[..4].iter().fold(0u32, |acc, d| acc * 10 + u32::from(*d));
            (2221..=2720).contains(&four)
        }
        3 => matches!(digits[1], 0 | 4 | 5 | 6 | 7 | 8 | 9),
        4..=6 => true,
        _ => false,
    };
    prefix_ok && luhn_valid(digits)
}

/// The Luhn checksum over decimal digits (values 0-9).
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut d = u32::from(*d);
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// IBAN mod-97 check, after removing spaces.
pub fn iban_valid(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for &b in tail.iter().chain(head.iter()) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// `Basic` credentials are base64 of `user:password`; prose after the word "basic" is not.
fn is_basic_credential(token: &str) -> bool {
    if token.len() < 8 {
        return false;
    }
    crate::decode::base64_decode(token.as_bytes()).is_some_and(|decoded| decoded.contains(&b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefilter_lets_plain_prose_through_without_trigger_families() {
        for sentence in [
            "Order shipped to the warehouse in Chicago",
            "User authenticated successfully, redirecting to the dashboard",
            "Connection pool exhausted while waiting for a free slot; retrying with exponential backoff",
            "Rendering the checkout page took longer than expected because the cache was cold",
        ] {
            let triggers = Prefilter::of(sentence).triggers;
            assert_eq!(
                triggers, 0,
                "no regex family should run on {sentence:?} (fired: {triggers:#b})"
            );
        }
        for (text, family) in [
            ("Authorization: Bearer abc.def", T_BEARER),
            ("key AKIAIOSFODNN7EXAMPLE", T_AWS),
            ("my password is hunter2", T_CREDENTIAL_WORD),
            ("-----BEGIN RSA PRIVATE KEY-----", T_PRIVATE_KEY),
        ] {
            assert_ne!(
                Prefilter::of(text).triggers & family,
                0,
                "{text:?} must reach its detector"
            );
        }
    }

    /// Every positive example of the detector tests below, with the kind that must find something in it.
    const POSITIVES: &[(Kind, &str)] = &[
        (Kind::Email, "contact jane.doe@example.com now"),
        (Kind::Email, "'jane.doe@example.com'"),
        (Kind::Email, "/members/jane@x.org/profile"),
        (Kind::Email, "x=jane+tag@sub.example.co.uk"),
        (Kind::Email, "email=jane.doe%40example.com&x=1"),
        (Kind::PhoneUs, "call +13125550199 today"),
        (Kind::PhoneUs, "call (312) 555-0148 today"),
        (Kind::PhoneUs, "call 312-555-0199 today"),
        (Kind::PhoneUs, "call 312.555.0123 today"),
        (Kind::PhoneUs, "call +1 312 555 0177 today"),
        (Kind::PhoneUs, "call +1 555-123-4567 today"),
        (Kind::PhoneUs, "call (555) 123-4567 today"),
        (Kind::Ssn, "SSN 123-45-6789,"),
        (Kind::Ssn, "ssn='078-05-1120'"),
        (Kind::CreditCard, "card 4111 1111 1111 1111."),
        (Kind::CreditCard, "card 4111-1111-1111-1111."),
        (Kind::CreditCard, "card 4111111111111111."),
        (Kind::CreditCard, "card 5500 0000 0000 0004."),
        (Kind::CreditCard, "card 3782 822463 10005."),
        (Kind::CreditCard, "card 6011111111111117."),
        (Kind::CreditCard, "card 2221000000000009."),
        (Kind::CreditCard, "4111 1111 1111 1111 2026"),
        (Kind::BearerToken, "Authorization: Bearer xyz"),
        (Kind::BearerToken, "bearer abc.def-ghi"),
        (Kind::BearerToken, "Basic dXNlcjpwYXNz"),
        (Kind::BearerToken, "Authorization: Bearer abc.def"),
        (Kind::UrlCredentials, "postgres://admin:hunter2@db.internal:5432/app"),
        (Kind::UrlCredentials, "see https://user:pass@host/x"),
        (
            Kind::UrlCredentials,
            "https://jane:secret@example.com and bob@example.org",
        ),
        (
            Kind::PrivateKey,
            "k=-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY----- end",
        ),
        (Kind::PrivateKey, "-----BEGIN PRIVATE KEY-----\nMIIEv"),
        (Kind::Jwt, "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_abc"),
        (Kind::AwsAccessKey, "key AKIAIOSFODNN7EXAMPLE"),
        (Kind::ApiToken, "k=sk_live_51H8xYzAbCdEfGhIjKlMnOpQr"),
        (Kind::ApiToken, "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
        (Kind::CredentialInText, "password hunter2-S3cret!. Lorem"),
        (Kind::CredentialInText, "db password: 'pa55word'"),
        (Kind::CredentialInText, "token=abc123def456"),
        (Kind::CredentialInText, "API key is sk9f8d7s6"),
        (Kind::CredentialInText, "my password is hunter2"),
        (Kind::Iban, "iban DE89 3704 0044 0532 0130 00."),
        (Kind::Iban, "GB82WEST12345698765432"),
        (Kind::Ipv4, "from 203.0.113.7 at"),
        // Shapes the trigger literals must cover too: a tab after the scheme, the rarer credential words, every
        // token prefix, and the non-ASCII letters that `(?i)` folds onto `s` and `k`.
        (Kind::BearerToken, "Authorization: Bearer\tabc123"),
        (Kind::BearerToken, "BASIC dXNlcjpwYXNz"),
        (Kind::BearerToken, "bearer token123"),
        (Kind::CredentialInText, "the passphrase is abc123xyz"),
        (Kind::CredentialInText, "passwd=abc123xyz"),
        (Kind::CredentialInText, "PWD: abc123xyz"),
        (Kind::CredentialInText, "SECRET=abc123xyz"),
        (Kind::CredentialInText, "api_key=abc123xyz"),
        (Kind::CredentialInText, "api-key: abc123xyz"),
        (Kind::CredentialInText, "apikey abc123xyz"),
        (Kind::CredentialInText, "access token abc123xyz"),
        (Kind::CredentialInText, "auth-token: abc123xyz"),
        (Kind::CredentialInText, "to\u{212A}en=abc123xyz"),
        (Kind::CredentialInText, "\u{17F}ecret=abc123xyz"),
        (Kind::AwsAccessKey, "ASIAIOSFODNN7EXAMPLE"),
        (Kind::AwsAccessKey, "id AGPAIOSFODNN7EXAMPLE,"),
        (Kind::AwsAccessKey, "AIDAIOSFODNN7EXAMPLE"),
        (Kind::AwsAccessKey, "AROAIOSFODNN7EXAMPLE"),
        (Kind::AwsAccessKey, "ANPAIOSFODNN7EXAMPLE"),
        (Kind::AwsAccessKey, "ANVAIOSFODNN7EXAMPLE"),
        (Kind::AwsAccessKey, "AIPAIOSFODNN7EXAMPLE"),
        (Kind::ApiToken, "rk_test_51H8xYzAbCdEfGhIjKlMnOpQr"),
        (Kind::ApiToken, "whsec_AbCdEfGhIjKlMnOpQrSt"),
        (Kind::ApiToken, "gho_16C7e42F292c6912E7710c838347Ae178B4a"),
        (Kind::ApiToken, "ghu_16C7e42F292c6912E7710c838347Ae178B4a"),
        (Kind::ApiToken, "ghs_16C7e42F292c6912E7710c838347Ae178B4a"),
        (Kind::ApiToken, "ghr_16C7e42F292c6912E7710c838347Ae178B4a"),
        (Kind::ApiToken, "github_pat_11ABCDEFG0123456789abcdefghij"),
        (Kind::ApiToken, "xoxb-1234567890-abcdefghij"),
        (Kind::ApiToken, "glpat-abcdefghij0123456789"),
        (Kind::ApiToken, "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
        (Kind::ApiToken, "sk-proj-abcdefghij0123456789XYZ"),
        (Kind::ApiToken, "npm_abcdefghijklmnopqrstuvwxyz0123456789"),
        (Kind::Email, "mail: JANE@EXAMPLE.COM."),
        // Every separator each digit shape allows, and shapes that straddle 16-byte blocks
        // (a digit-free block before the IBAN's first digits, runs across a block edge).
        (Kind::PhoneUs, "+1(312) 555-0148"),
        (Kind::PhoneUs, "+1 (312) 555-0148"),
        (Kind::PhoneUs, "(312)555-0148"),
        (Kind::PhoneUs, "+1-312-555-0148"),
        (Kind::PhoneUs, "+1.312.555.0148"),
        (Kind::PhoneUs, "+1 312-555 0148"),
        (Kind::PhoneUs, "at 2026-11-22 call 312.555-0123"),
        (Kind::PhoneUs, "sixteen bytes.. (312) 555-0148"),
        (Kind::CreditCard, "4111-1111 1111-1111"),
        (Kind::CreditCard, "card:4111111111111111"),
        (Kind::CreditCard, "pay 4111 1111 1111 1111 now"),
        (Kind::CreditCard, "6011 0009 9013 9424 123"),
        (Kind::CreditCard, "sixteen bytes..4111 1111 1111 1111"),
        (Kind::Ssn, "id:123-45-6789"),
        (Kind::Ssn, "2026-11-22 ssn 123-45-6789"),
        (Kind::Ssn, "fifteen bytes. 123-45-6789"),
        (Kind::Iban, "abcdefghijklm GB82WEST12345698765432"),
        (Kind::Iban, "(DE89370400440532013000)"),
        (Kind::Iban, "GB82 WEST 1234 5698 7654 32"),
        // The breadth detectors, each trigger literal and count gate.
        (Kind::UserPath, "/home/jane/app.py"),
        (Kind::UserPath, "at /Users/jdoe/x"),
        (Kind::UserPath, "C:\\Users\\JaneD\\x.cs"),
        (Kind::UserPath, "C:\\\\USERS\\\\JaneD"),
        (Kind::UserPath, "d:/Documents and Settings/jane/x"),
        (Kind::Ipv6, "from 2a00:1450:4001:82b::200e"),
        (Kind::Ipv6, "::ffff:198.51.100.23"),
        (Kind::Ipv6, "[2606:4700:4700::1111]:53"),
        (Kind::LabelledTaxId, "SSN 219099999"),
        (Kind::LabelledTaxId, "Social Security no. 219 09 9999"),
        (Kind::LabelledTaxId, "ss# 219099999"),
        (Kind::LabelledTaxId, "ITIN: 912781234"),
        (Kind::LabelledTaxId, "Tax ID 219099999"),
        (Kind::LabelledTaxId, "TIN 219099999"),
        (Kind::Itin, "912-78-1234"),
        (Kind::Itin, "912 94 1234"),
        (Kind::PhoneIntl, "+44 20 7946 0958"),
        (Kind::PhoneIntl, "tel:+447911123456"),
        (Kind::PhoneIntl, "+49 (0)30 12345678"),
        (
            Kind::ProviderSecret,
            "SG.AbCdEfGhIjKlMnOpQrStUv.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdE",
        ),
        (
            Kind::ProviderSecret,
            "/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1",
        ),
        (Kind::ProviderSecret, "shpat_0123456789abcdef0123456789abcdef"),
        (Kind::ProviderSecret, "0123456789abcdef0123456789abcdef-us12"),
    ];

    /// `find` without any prefilter: every enabled detector runs on every string.
    fn find_unfiltered(detectors: &DetectorSet, text: &str) -> Vec<(usize, usize, usize)> {
        let mut hits = Vec::new();
        for (index, detector) in detectors.detectors.iter().enumerate() {
            find_kind(
                detector.kind,
                detector.regex.as_ref(),
                detectors.phone_region,
                text,
                &mut |start, end| {
                    hits.push(Hit {
                        start,
                        end,
                        detector: index,
                    })
                },
            );
        }
        // As `find` does.
        join_hits(&mut hits);
        if !hits.is_empty() {
            detectors.read_again(text, &mut hits, &mut NoViews);
        }
        hits.iter().map(|h| (h.start, h.end, h.detector)).collect()
    }

    /// Set for the child process of [`every_kinds_automata_are_built_with_its_set`].
    const WARM_CHILD: &str = "SCRUB_RELAY_TEST_WARM_CHILD";

    /// Automata are process-wide and other tests build them, so the check runs in a fresh process: this test binary
    /// again, running only [`warm_child`].
    #[test]
    fn every_kinds_automata_are_built_with_its_set() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "rules::detectors::tests::warm_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(WARM_CHILD, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the child process failed (its output is above)");
    }

    /// For each kind in turn, in a process where nothing is built yet: a set of that kind builds its automata, and
    /// finding every positive example of the kind (as it is, and inside a long non-ASCII string, which takes the
    /// regexes' paths) builds nothing more.
    #[test]
    #[ignore = "run in a fresh process by every_kinds_automata_are_built_with_its_set"]
    fn warm_child() {
        if std::env::var_os(WARM_CHILD).is_none() {
            return;
        }
        let built = || BUILT.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(built(), 0, "nothing is built before the first set");
        let mut hits = Vec::new();
        for kind in Kind::BUILT_IN {
            let detectors = set(&[kind]).with_phone_region(phone::parse_region("GB").unwrap());
            let after_set = built();
            assert_eq!(
                after_set & kind.bit(),
                warm_kinds(kind.bit()),
                "{kind:?}'s automata built with its set"
            );
            let mut found = 0;
            for &(_, text) in POSITIVES.iter().filter(|(k, _)| *k == kind) {
                let long = format!("é {text} {}", "lorem ipsum ".repeat(50));
                for text in [text, long.as_str()] {
                    detectors.find(text, &mut hits);
                    found += hits.len();
                }
            }
            assert!(found > 0, "{kind:?} found its positive examples");
            assert_eq!(built(), after_set, "finding {kind:?} built nothing more");
        }
    }

    #[test]
    fn prefilter_lets_every_positive_example_through() {
        for &(kind, text) in POSITIVES {
            assert!(
                !matches(kind, text).is_empty(),
                "{kind:?} should find something in {text:?}"
            );
            let pre = Prefilter::of(text);
            assert!(
                pre.allows(kind),
                "the prefilter keeps {kind:?} from {text:?} (triggers {:#b})",
                pre.triggers
            );
            // Only its own family asked for, as a detector set with this one kind does.
            assert!(
                Prefilter::for_families(text, kind.trigger()).allows(kind),
                "{kind:?} alone on {text:?}"
            );
            // At every offset within the prefilter's blocks, after prose or after other numbers.
            for pad in 1..=33 {
                for filler in [" ", "x ", "7 "] {
                    let padded = format!("{}{text}", filler.repeat(pad));
                    if !matches(kind, &padded).is_empty() {
                        assert!(Prefilter::of(&padded).allows(kind), "{kind:?} in {padded:?}");
                    }
                }
            }
        }
    }

    /// Random strings over the bytes the digit shapes care about: whenever a digit detector finds something, the
    /// prefilter must have let its kind through, and `find` must agree with running every detector.
    #[test]
    fn prefilter_digit_shapes_never_hide_a_match() {
        // Digit groups of every length, the separators the shapes allow (and a few they do not), capitals, and
        // whole examples, so that real matches sit next to near misses.
        const SEPARATORS: &[&str] = &[
            " ", " ", "-", "-", ".", "(", ")", ") ", "+", "+1", "  ", "--", "T", ":", "x",
        ];
        const WHOLE: &[&str] = &[
            "4111 1111 1111 1111",
            "4111111111111111",
            "3782 822463 10005",
            "(312) 555-0148",
            "+13125550199",
            "312.555.0123",
            "123-45-6789",
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
        ];
        let digit_kinds = [Kind::CreditCard, Kind::Iban, Kind::Ssn, Kind::PhoneUs];
        let all = set(&digit_kinds);
        let mut found = [0usize; 4];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..2 + next(12) {
                match next(10) {
                    0..=3 => {
                        for _ in 0..1 + next(6) {
                            text.push(char::from(b'0' + next(10) as u8));
                        }
                    }
                    4..=6 => text.push_str(SEPARATORS[next(SEPARATORS.len())]),
                    7 => text.push_str(["GB", "DE", "A", "ab"][next(4)]),
                    _ => text.push_str(WHOLE[next(WHOLE.len())]),
                }
            }
            let pre = Prefilter::of(&text);
            for (count, kind) in found.iter_mut().zip(digit_kinds) {
                if !matches(kind, &text).is_empty() {
                    *count += 1;
                    assert!(pre.allows(kind), "the prefilter keeps {kind:?} from {text:?}");
                }
            }
            let mut hits = Vec::new();
            all.find(&text, &mut hits);
            let filtered: Vec<_> = hits.iter().map(|h| (h.start, h.end, h.detector)).collect();
            assert_eq!(
                filtered,
                find_unfiltered(&all, &text),
                "prefilter changed the hits in {text:?}"
            );
        }
        // The generator must reach every shape, or the test checks nothing.
        assert!(
            found.iter().all(|&n| n >= 20),
            "matches per kind (card, IBAN, SSN, phone): {found:?}"
        );
    }

    #[test]
    fn prefilter_never_changes_what_the_detectors_find() {
        let all = set(&Kind::BUILT_IN);
        let everything = POSITIVES.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(" ");
        let texts = POSITIVES.iter().map(|(_, t)| *t).chain([
            everything.as_str(),
            "User authenticated successfully, redirecting to the dashboard",
            "GET /api/orders/7283 returned 200 in 35 ms at 2026-11-22T22:26:34Z",
            "2026-11-22 22:27:07 worker 312 555 0148 4111 1111 1111 1111 1 123-45-6789-0 DE89 3704",
            "ids 4111111111111111abc 1795386427882 978-0-306-40615-7 2026-11-2233 order 123-456-7890",
            "the bearer of bad news",
            "Basic usage is free",
            "task-runner sk-short",
            "ASIA-PACIFIC region",
            "eyJ alone",
        ]);
        for text in texts {
            let mut hits = Vec::new();
            all.find(text, &mut hits);
            let filtered: Vec<_> = hits.iter().map(|h| (h.start, h.end, h.detector)).collect();
            assert_eq!(
                filtered,
                find_unfiltered(&all, text),
                "prefilter changed the hits in {text:?}"
            );
        }
    }

    fn set(kinds: &[Kind]) -> DetectorSet {
        DetectorSet::new(
            kinds
                .iter()
                .map(|k| Detector {
                    kind: *k,
                    id: k.id().into(),
                    replacement: "[redacted]".into(),
                    action: Action::Replace,
                    regex: None,
                })
                .collect(),
        )
    }

    fn matches(kind: Kind, text: &str) -> Vec<String> {
        let mut hits = Vec::new();
        set(&[kind]).find(text, &mut hits);
        hits.iter().map(|h| text[h.start..h.end].to_string()).collect()
    }

    fn assert_finds(kind: Kind, text: &str, want: &str) {
        assert_eq!(
            matches(kind, text),
            vec![want.to_string()],
            "{kind:?} should find {want:?} in {text:?}"
        );
    }

    fn assert_none(kind: Kind, text: &str) {
        assert!(
            matches(kind, text).is_empty(),
            "{kind:?} should find nothing in {text:?}, found {:?}",
            matches(kind, text)
        );
    }

    #[test]
    fn email_masks_local_part() {
        assert_finds(Kind::Email, "contact jane.doe@example.com now", "jane.doe");
        assert_finds(Kind::Email, "'jane.doe@example.com'", "jane.doe");
        assert_finds(Kind::Email, "/members/jane@x.org/profile", "jane");
        assert_finds(Kind::Email, "x=jane+tag@sub.example.co.uk", "jane+tag");
        assert_finds(Kind::Email, "email=jane.doe%40example.com&x=1", "jane.doe");
    }

    #[test]
    fn email_whose_domain_is_the_next_address_local_part_masks_both() {
        // Found by the `otlp` and `security_report` fuzz targets: masking only `jan` left `e.roe@example.org`, an
        // address, for a second pass to find.
        for (text, want) in [
            ("GET /users/jan@e.roe@example.org", ["jan", "e.roe"]),
            ("/users%40ne.roe@example.org/reset", ["users", "ne.roe"]),
            ("two@a.bc@c.de", ["two", "a.bc"]),
        ] {
            assert_eq!(matches(Kind::Email, text), want.map(String::from), "{text}");
        }
        assert_none(Kind::Email, "***@***@example.org");
    }

    #[test]
    fn email_scanner_agrees_with_regex() {
        // Chained addresses (`two@a.bc@c.de`) are the one difference: the regex's matches cannot overlap, the scanner
        // also masks the second local part (see the test above).
        let samples = [
            "a jane.doe@example.com b",
            "x@y.z",
            "x@host.com2 y",
            "-.+jane@x.org",
            "a@b.c.d.example.museum!",
            "mail: JANE@EXAMPLE.COM.",
            "foo@-bad.com",
            "foo@bad-.com ok@good.io",
            "p%40q.com r%40s.org",
            "trail@domain.",
            "name@sub_domain.com",
            "über@example.com",
            "a@b.abcdefghijklmnopqrstuvwxyz",
        ];
        for text in samples {
            let mut scanned = Vec::new();
            find_emails(text.as_bytes(), &mut |s, e| scanned.push(text[s..e].to_string()));
            let mut regexed = Vec::new();
            for m in EMAIL.find_iter(text) {
                if text[..m.start()].ends_with("://") {
                    continue;
                }
                let local = m.as_str();
                let at = local
                    .find('@')
                    .or_else(|| local.find("%40"))
                    .map_or(m.end(), |i| m.start() + i);
                regexed.push(text[m.start()..at].to_string());
            }
            assert_eq!(scanned, regexed, "scanner and regex disagree on {text:?}");
        }
    }

    /// Random strings built from the pieces phone numbers and SSNs are made of, and from their near misses.
    fn digit_shaped_text(rng: &mut generators::Rng) -> String {
        const PIECES: &[&str] = &[
            "+1",
            "+1 ",
            "+1-",
            "+1.",
            "+",
            "(",
            ")",
            ") ",
            "(555)",
            "(312) ",
            "(155)",
            "555-",
            "312.",
            "555 ",
            "123-4567",
            "123-45-6789",
            "078-05-1120",
            "-",
            ".",
            " ",
            "  ",
            "x",
            "a1",
            "_",
            "/",
            ":",
            "1",
            "2",
            "9",
            "0",
            "12",
            "123",
            "1234",
            "4567",
            "55555",
            "+13125550199",
            "+1312555019",
            "000-00-0000",
            "\u{e9}",
            "\u{660}",
        ];
        let pieces = 1 + rng.below(10);
        (0..pieces).map(|_| PIECES[rng.below(PIECES.len())]).collect()
    }

    /// `find_cards` as it was: a byte-by-byte scan that skips every word.
    fn find_cards_by_bytes(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
        let mut i = 0;
        let mut groups = [(0, 0); MAX_CARD_GROUPS];
        while i < bytes.len() {
            if !bytes[i].is_ascii_digit() || !number_boundary_before(bytes, i) {
                if bytes[i].is_ascii_alphanumeric() {
                    while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
                continue;
            }
            let mut count = 0;
            let mut j = i;
            loop {
                let group_start = j;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                if count < MAX_CARD_GROUPS {
                    groups[count] = (group_start, j);
                }
                count += 1;
                if j + 1 < bytes.len() && matches!(bytes[j], b' ' | b'-') && bytes[j + 1].is_ascii_digit() {
                    j += 1;
                } else {
                    break;
                }
            }
            let run_end = j;
            if count <= MAX_CARD_GROUPS && number_boundary_after_card(bytes, run_end) {
                card_windows(bytes, &groups[..count], push);
            }
            i = run_end.max(i + 1);
        }
    }

    #[test]
    fn card_scan_agrees_with_the_byte_by_byte_scan() {
        const PIECES: &[&str] = &[
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5500 0000 0000 0004",
            "378282246310005",
            "6011000990139424",
            "4242",
            "1111",
            "0",
            "7",
            "42",
            " ",
            "-",
            ".",
            "/",
            ":",
            "_",
            "x",
            "ab",
            "a1",
            "9z",
            "v1.2.3",
            "\u{e9}",
            "\u{660}",
            "  ",
            "--",
            "1.",
            "-1",
            "id_4111111111111111",
            "2026-11-30",
        ];
        let mut rng = generators::Rng(0x5EED_CA4D);
        let mut found = 0;
        for round in 0..100_000 {
            let pieces = 1 + rng.below(if round % 8 == 0 { 40 } else { 10 });
            let text: String = (0..pieces).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            find_cards(text.as_bytes(), &mut |s, e| fast.push((s, e)));
            find_cards_by_bytes(text.as_bytes(), &mut |s, e| slow.push((s, e)));
            assert_eq!(fast, slow, "{text:?}");
            found += slow.len();
        }
        assert!(found > 10_000, "{found} cards");
    }

    #[test]
    fn ssn_and_us_phone_scans_agree_with_their_regexes() {
        let mut rng = generators::Rng(0x5EED_5511);
        let (mut ssns, mut phones) = (0, 0);
        for round in 0..200_000 {
            // Some long strings: the phone scan jumps from one possible start to the next.
            let parts = if round % 4 == 0 { 2 + rng.below(8) } else { 1 };
            let text: String = (0..parts).map(|_| digit_shaped_text(&mut rng)).collect();
            let bytes = text.as_bytes();
            let mut scanned = Vec::new();
            ssn_shapes(bytes, &mut |s, e| scanned.push((s, e)));
            let regexed: Vec<_> = SSN.find_iter(&text).map(|m| (m.start(), m.end())).collect();
            assert_eq!(scanned, regexed, "SSN scan and regex disagree on {text:?}");
            ssns += regexed.len();
            let mut scanned = Vec::new();
            us_phone_shapes(bytes, &mut |s, e| scanned.push((s, e)));
            let regexed: Vec<_> = PHONE.find_iter(&text).map(|m| (m.start(), m.end())).collect();
            assert_eq!(scanned, regexed, "phone scan and regex disagree on {text:?}");
            phones += regexed.len();
        }
        // Enough matches that the comparison means something.
        assert!(ssns > 10_000 && phones > 10_000, "{ssns} SSNs, {phones} phones");
    }

    /// `email_domain_end` as it was written first: every label collected, then the longest valid domain.
    fn email_domain_end_by_labels(bytes: &[u8], from: usize) -> Option<usize> {
        let mut labels: Vec<(usize, usize)> = Vec::new();
        let mut pos = from;
        loop {
            let start = pos;
            while pos < bytes.len() && (bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'-') {
                pos += 1;
            }
            if pos == start || bytes[start] == b'-' || bytes[pos - 1] == b'-' {
                break;
            }
            labels.push((start, pos));
            if pos + 1 < bytes.len() && bytes[pos] == b'.' && bytes[pos + 1].is_ascii_alphanumeric() {
                pos += 1;
            } else {
                break;
            }
        }
        let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        (1..labels.len()).rev().map(|k| labels[k]).find_map(|(s, e)| {
            let tld = &bytes[s..e];
            let tld_ok = (2..=24).contains(&tld.len()) && tld.iter().all(u8::is_ascii_alphabetic);
            (tld_ok && !bytes.get(e).copied().is_some_and(is_word)).then_some(e)
        })
    }

    #[test]
    fn credential_scan_agrees_with_the_regex() {
        const PIECES: &[&str] = &[
            "password",
            "PassWord",
            "passwd",
            "pwd",
            "PWD",
            "passphrase",
            "secret",
            "Secret",
            "api_key",
            "api-key",
            "api key",
            "apikey",
            "API_KEY",
            "api__key",
            "access_token",
            "access token",
            "Access-Token",
            "accesstoken",
            "auth_token",
            "authtoken",
            "auth  token",
            "token",
            "TOKEN",
            "tokens",
            "xtoken",
            "_token",
            "pass",
            " ",
            "  ",
            "\t",
            "\n",
            "\r",
            "\x0b",
            "\x0c",
            ":",
            "=",
            " : ",
            "=\"",
            "'",
            "\"",
            "is",
            "IS",
            " is ",
            "isn",
            "is:",
            "abc123",
            "hunter2-S3cret!",
            "x",
            "1",
            "abcdef",
            "a1b2c3d4",
            ",",
            ";",
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            "<",
            ">",
            "&",
            "#",
            ".",
            "!",
            "?",
            "-",
            "_",
            "/",
            "[redacted]",
            "hmac:",
            "***",
        ];
        // Prose around them, with the first letters of credential words inside other words, so strings longer
        // than `CREDENTIAL_SCAN_MAX_LEN` skip from one possible start to the next and land on near misses.
        const PROSE: &[&str] = &[
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ",
            "autumn ",
            "accept ",
            "apiary ",
            "secure ",
            "tokenizer ",
            "passage ",
            "pw ",
            "ta",
            "ap",
            "se",
            "pa",
        ];
        let mut rng = generators::Rng(0x5EED_C4ED);
        let (mut matches, mut long) = (0, 0);
        for round in 0..230_000 {
            let text: String = if round < 200_000 {
                let pieces = 1 + rng.below(9);
                (0..pieces).map(|_| PIECES[rng.below(PIECES.len())]).collect()
            } else {
                let pieces = 20 + rng.below(60);
                (0..pieces)
                    .map(|_| match rng.below(3) {
                        0 => PIECES[rng.below(PIECES.len())],
                        _ => PROSE[rng.below(PROSE.len())],
                    })
                    .collect()
            };
            long += usize::from(text.len() > CREDENTIAL_SCAN_MAX_LEN);
            let mut scanned = Vec::new();
            credential_values(text.as_bytes(), &mut |s, e| scanned.push((s, e)));
            let regexed: Vec<_> = CREDENTIAL_IN_TEXT
                .captures_iter(&text)
                .filter_map(|c| c.get(1))
                .map(|m| (m.start(), m.end()))
                .collect();
            assert_eq!(scanned, regexed, "credential scan and regex disagree on {text:?}");
            matches += regexed.len();
        }
        assert!(matches > 5_000, "{matches} matches");
        assert!(long > 20_000, "{long} strings long enough to skip ahead");
    }

    #[test]
    fn api_token_scan_agrees_with_the_regex() {
        // Every prefix, broken prefixes, class runs around each minimum and fixed length, and what may come before
        // a prefix (a word byte hides it).
        const PREFIXES: &[&str] = &[
            "sk_live_",
            "sk_test_",
            "rk_live_",
            "rk_test_",
            "sk_",
            "rk_liv",
            "sk_live",
            "whsec_",
            "whsec",
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "gha_",
            "github_pat_",
            "github_",
            "xoxa-",
            "xoxb-",
            "xoxp-",
            "xoxr-",
            "xoxs-",
            "xoxc-",
            "xox",
            "glpat-",
            "glpat",
            "AIza",
            "AIz",
            "npm_",
            "sk-",
            "sk-proj-",
            "sk-ant-",
            "proj-",
            "ant-",
            "s",
            "A",
        ];
        const GLUE: &[&str] = &[" ", "=", "x", "_", "-", "/", ".", "\"", "9", "A", ":"];
        const LENGTHS: &[usize] = &[
            1, 4, 9, 10, 11, 15, 16, 17, 19, 20, 21, 25, 29, 30, 31, 34, 35, 36, 37, 41,
        ];
        let mut rng = generators::Rng(0x70_4E45);
        let mut matches = 0;
        for _ in 0..100_000 {
            let mut text = String::new();
            for _ in 0..1 + rng.below(6) {
                match rng.below(3) {
                    0 => {
                        text.push_str(PREFIXES[rng.below(PREFIXES.len())]);
                        // Mostly a run right after it, or the scan meets few tokens.
                        if rng.below(4) != 0 {
                            let alphabet: &[u8] = [&b"aZ09"[..], b"aZ09_", b"aZ09-"][rng.below(3)];
                            for _ in 0..LENGTHS[rng.below(LENGTHS.len())] {
                                text.push(char::from(alphabet[rng.below(alphabet.len())]));
                            }
                        }
                    }
                    1 => {
                        let alphabet: &[u8] = [&b"aZ09"[..], b"aZ09_", b"aZ09-", b"aZ09_-", b"aZ09-_. "][rng.below(5)];
                        for _ in 0..LENGTHS[rng.below(LENGTHS.len())] {
                            text.push(char::from(alphabet[rng.below(alphabet.len())]));
                        }
                    }
                    _ => text.push_str(GLUE[rng.below(GLUE.len())]),
                }
            }
            let mut scanned = Vec::new();
            api_tokens(text.as_bytes(), &mut |s, e| scanned.push((s, e)));
            let regexed: Vec<_> = API_TOKEN.find_iter(&text).map(|m| (m.start(), m.end())).collect();
            assert_eq!(scanned, regexed, "API-token scan and regex disagree on {text:?}");
            matches += regexed.len();
        }
        assert!(matches > 10_000, "{matches} tokens");
    }

    #[test]
    fn email_domain_end_agrees_with_the_label_list() {
        const PIECES: &[&str] = &[
            "a",
            "ab",
            "example",
            "co",
            "uk",
            "x1",
            "1",
            "-",
            ".",
            "..",
            "_",
            "@",
            " ",
            "museum",
            "abcdefghijklmnopqrstuvwxyz",
            "b-c",
            "-d",
            "e-",
            "\u{e9}",
        ];
        let mut rng = generators::Rng(0x5EED_E3A1);
        let mut found = 0;
        for _ in 0..100_000 {
            let pieces = 1 + rng.below(8);
            let text: String = (0..pieces).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let bytes = text.as_bytes();
            for from in 0..=bytes.len() {
                let want = email_domain_end_by_labels(bytes, from);
                assert_eq!(email_domain_end(bytes, from), want, "{text:?} from {from}");
                found += usize::from(want.is_some());
            }
        }
        assert!(found > 10_000, "{found} domains");
    }

    #[test]
    fn iban_and_ipv4_gates_hold_for_every_match() {
        // The gates are necessary conditions: every match of the regex passes them.
        let mut rng = generators::Rng(0x5EED_1BA4);
        const PIECES: &[&str] = &[
            "DE89", "GB82", "WEST", "3704", " ", "0044", "12", "1", "203.", "0.", "113.", "7", "255", "25", ".", "A",
            "Z9", "v", "-",
        ];
        let (mut ibans, mut ips) = (0, 0);
        for _ in 0..100_000 {
            let pieces = 1 + rng.below(12);
            let text: String = (0..pieces).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let bytes = text.as_bytes();
            if IBAN.is_match(&text) {
                ibans += 1;
                assert!(
                    any_quad(bytes, |a, b, c, d| a.is_ascii_uppercase()
                        & b.is_ascii_uppercase()
                        & c.is_ascii_digit()
                        & d.is_ascii_digit()),
                    "{text:?}"
                );
            }
            const OCTETS: &[&str] = &[
                "1.", "23.", "203.", "255", "256.", "0.", "7", ".", "..", "v", "-", " ", "a", "1",
            ];
            let pieces = 1 + rng.below(12);
            let text: String = (0..pieces).map(|_| OCTETS[rng.below(OCTETS.len())]).collect();
            if IPV4.is_match(&text) {
                ips += 1;
                assert!(has_dotted_digits(text.as_bytes(), 3), "{text:?}");
            }
        }
        assert!(ibans > 1000 && ips > 1000, "{ibans} IBANs, {ips} addresses");
    }

    #[test]
    fn phone_tail_agrees_with_a_search_of_every_separator() {
        let by_separators = |bytes: &[u8], at: usize, before: usize| {
            let digits =
                |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|r| r.iter().all(u8::is_ascii_digit));
            memchr::memchr3_iter(b' ', b'.', b'-', &bytes[at..before])
                .map(|offset| at + offset)
                .find(|&s| s >= at + 3 && digits(s - 3..s) && digits(s + 1..s + 5))
        };
        let mut rng = generators::Rng(0x5EED_7A11);
        for _ in 0..20_000 {
            let text = digit_shaped_text(&mut rng);
            let bytes = text.as_bytes();
            for _ in 0..4 {
                let before = rng.below(bytes.len() + 1);
                let at = rng.below(before + 1);
                assert_eq!(
                    phone_tail(bytes, at, before),
                    by_separators(bytes, at, before),
                    "{at}..{before} of {text:?}"
                );
            }
        }
    }

    #[test]
    fn dotted_digits_agree_with_the_count() {
        let mut rng = generators::Rng(0x5EED_D077);
        for _ in 0..20_000 {
            let text = digit_shaped_text(&mut rng);
            let count = count_dotted_digits(text.as_bytes());
            for n in 1..=4 {
                assert_eq!(has_dotted_digits(text.as_bytes(), n), count >= n, "{n} in {text:?}");
            }
        }
    }

    #[test]
    fn email_ignores_versions_and_userinfo() {
        assert_none(Kind::Email, "sdkcap-demo@1.2.3");
        assert_none(Kind::Email, "@sentry/node@11.12.0");
        assert_none(Kind::Email, "http://publickey123@127.0.0.1:38441/42");
        assert_none(Kind::Email, "https://abc123@o1.ingest.sentry.io/42");
        assert_none(Kind::Email, "no at sign here");
    }

    #[test]
    fn phone_positive() {
        for phone in [
            "+13125550199",
            "(312) 555-0148",
            "312-555-0199",
            "312.555.0123",
            "+1 312 555 0177",
            "+1 555-123-4567",
            "(555) 123-4567",
        ] {
            assert_finds(Kind::PhoneUs, &format!("call {phone} today"), phone);
        }
    }

    #[test]
    fn phone_negative() {
        for text in [
            "2026-11-22",
            "1795386427",
            "1795386427.882619",
            "port 41649",
            "version 3.11.7",
            "3125550148",
            "10.0.0.1",
            "ts 2026-11-22T22:27:07.890452Z",
            "order 123-456-7890",
            "id 312-555-01489",
            "978-3-16-148410-0",
            "1.312.555.0123.4",
        ] {
            assert_none(Kind::PhoneUs, text);
        }
    }

    #[test]
    fn non_ascii_digits_neither_panic_nor_match_digit_shapes() {
        // `\d` would match Arabic-Indic digits (two bytes each) and the SSN check slices by byte: ASCII only.
        let arabic = "\u{661}\u{662}\u{663}-\u{664}\u{665}-\u{666}\u{667}\u{668}\u{669}";
        let text = format!("{arabic} near 123-45-6789 and 415-555-0100");
        assert_none(Kind::Ssn, arabic);
        assert_eq!(matches(Kind::Ssn, &text), ["123-45-6789"]);
        assert_eq!(matches(Kind::PhoneUs, &text), ["415-555-0100"]);
    }

    #[test]
    fn ssn_positive_and_negative() {
        assert_finds(Kind::Ssn, "SSN 123-45-6789,", "123-45-6789");
        assert_finds(Kind::Ssn, "ssn='078-05-1120'", "078-05-1120");
        for text in [
            "000-12-3456",
            "666-12-3456",
            "123-00-4567",
            "123-45-0000",
            "2026-11-2233",
            "1123-45-6789",
            "123-45-67890",
            "x123-45-6789",
        ] {
            assert_none(Kind::Ssn, text);
        }
    }

    #[test]
    fn cards_need_luhn_and_issuer() {
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5500 0000 0000 0004",
            "3782 822463 10005",
            "6011111111111117",
            "2221000000000009",
        ] {
            assert_finds(Kind::CreditCard, &format!("card {card}."), card);
        }
        for text in [
            "4111 1111 1111 1112", // Luhn-invalid
            "1234567812345678",    // Luhn-invalid id
            "1795386427882",       // unix ms timestamp (starts with 1)
            "978-0-306-40615-7",   // ISBN-13
            "139797781740416",     // thread id (starts with 1)
            "4111111111111111abc", // part of a token
            "0000000000000000",    // no issuer
            "2026-11-22 22:27:07", // date
            "9999999999999995",    // no issuer
        ] {
            assert_none(Kind::CreditCard, text);
        }
    }

    #[test]
    fn card_inside_longer_digit_run() {
        assert_finds(Kind::CreditCard, "4111 1111 1111 1111 2026", "4111 1111 1111 1111");
    }

    #[test]
    fn bearer_tokens() {
        assert_finds(Kind::BearerToken, "Authorization: Bearer xyz", "xyz");
        assert_finds(Kind::BearerToken, "bearer abc.def-ghi", "abc.def-ghi");
        assert_finds(Kind::BearerToken, "Basic dXNlcjpwYXNz", "dXNlcjpwYXNz");
        assert_none(Kind::BearerToken, "the bearer of bad news");
        assert_none(Kind::BearerToken, "basic authentication failed");
        assert_none(Kind::BearerToken, "Basic usage is free");
    }

    #[test]
    fn url_credentials() {
        assert_finds(
            Kind::UrlCredentials,
            "postgres://admin:hunter2@db.internal:5432/app",
            "admin:hunter2",
        );
        assert_finds(Kind::UrlCredentials, "see https://user:pass@host/x", "user:pass");
        assert_none(Kind::UrlCredentials, "http://publickey123@127.0.0.1:38441/42");
        assert_none(Kind::UrlCredentials, "https://host:8443/path?a=b@c");
    }

    #[test]
    fn private_keys() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        assert_finds(Kind::PrivateKey, &format!("k={key} end"), key);
        assert_finds(
            Kind::PrivateKey,
            "-----BEGIN PRIVATE KEY-----\nMIIEv",
            "-----BEGIN PRIVATE KEY-----\nMIIEv",
        );
        assert_none(
            Kind::PrivateKey,
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        );
    }

    #[test]
    fn tokens_and_keys() {
        assert_finds(
            Kind::Jwt,
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_abc",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_abc",
        );
        assert_finds(Kind::AwsAccessKey, "key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE");
        assert_finds(
            Kind::ApiToken,
            "k=sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
            "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
        );
        assert_finds(
            Kind::ApiToken,
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        );
        assert_none(Kind::ApiToken, "task-runner sk-short");
        assert_none(Kind::AwsAccessKey, "ASIA-PACIFIC region");
        assert_none(Kind::Jwt, "eyJ alone");
    }

    #[test]
    fn credentials_in_text() {
        assert_finds(
            Kind::CredentialInText,
            "password hunter2-S3cret!. Lorem",
            "hunter2-S3cret!.",
        );
        assert_finds(Kind::CredentialInText, "db password: 'pa55word'", "pa55word");
        assert_finds(Kind::CredentialInText, "token=abc123def456", "abc123def456");
        assert_finds(Kind::CredentialInText, "API key is sk9f8d7s6", "sk9f8d7s6");
        for text in [
            "User authenticated successfully",
            "password = form['password']",
            "password required",
            "token expired at 12:00",
            "max_tokens=2048",
            "token count 2500",
            "password reset for user42",
            "secret = os.environ['SECRET_2']",
        ] {
            assert_none(Kind::CredentialInText, text);
        }
    }

    #[test]
    fn iban_mod97() {
        assert_finds(
            Kind::Iban,
            "iban DE89 3704 0044 0532 0130 00.",
            "DE89 3704 0044 0532 0130 00",
        );
        assert_finds(Kind::Iban, "GB82WEST12345698765432", "GB82WEST12345698765432");
        assert_none(Kind::Iban, "DE89 3704 0044 0532 0130 01");
    }

    #[test]
    fn ipv4_when_enabled() {
        assert_finds(Kind::Ipv4, "from 203.0.113.7 at", "203.0.113.7");
        assert_none(Kind::Ipv4, "version 1.2.3.4.5");
        assert_none(Kind::Ipv4, "11.3.244.8-node.38");
        assert_none(Kind::Ipv4, "v8.1.2.3");
        assert_none(Kind::Ipv4, "System.Runtime, Version=6.0.0.0, Culture=neutral");
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.20",
            "172.16.0.3",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert_none(Kind::Ipv4, &format!("http://{private}:8080/health"));
        }
    }

    #[test]
    fn what_a_mask_makes_of_its_neighbours_is_found_at_once() {
        // Found by the `security_report` fuzz target: a second pass over the forwarded text found what the masks
        // made. A phone number inside a URL's user name was masked, and the rest of the name, no longer behind
        // `://`, was an address; an address's local part of digits after `/` made a phone number part of a longer
        // number, until it was masked.
        let detectors = set(&[Kind::Email, Kind::PhoneIntl]);
        let mut hits = Vec::new();
        for (text, want) in [
            (
                "sftp://ops-+447911123456-jane.doe@files.example.org/x and ssh://git@github.com/x",
                vec!["+447911123456", "jane.doe"],
            ),
            (
                "call +447911123456/0123456789@example.org",
                vec!["+447911123456", "0123456789"],
            ),
        ] {
            detectors.find(text, &mut hits);
            let found: Vec<&str> = hits.iter().map(|h| &text[h.start..h.end]).collect();
            assert_eq!(found, want, "{text}");
        }
        // What the relay forwards reads the same on a second pass.
        for forwarded in [
            "sftp://ops-[redacted]-[redacted]@files.example.org/x and ssh://git@github.com/x",
            "call [redacted]/[redacted]@example.org",
        ] {
            detectors.find(forwarded, &mut hits);
            assert!(hits.is_empty(), "{forwarded}");
        }
    }

    /// `read_again` as it was before its shortcuts and reused buffers (issue #11): the reference its replacement
    /// must agree with.
    fn read_again_reference(detectors: &DetectorSet, text: &str, hits: &mut Vec<Hit>) {
        let mut view = String::new();
        let mut kept: Vec<(usize, usize, usize)> = Vec::new();
        let mut more = Vec::new();
        for _ in 0..MAX_REREADS {
            view.clear();
            kept.clear();
            let mut cursor = 0;
            for hit in hits.iter() {
                kept.push((view.len(), cursor, hit.start - cursor));
                view.push_str(&text[cursor..hit.start]);
                view.push_str(detectors.mask_of(hit.detector));
                cursor = hit.end;
            }
            kept.push((view.len(), cursor, text.len() - cursor));
            view.push_str(&text[cursor..]);
            detectors.find_once(&view, &mut more);
            let before = hits.len();
            for found in &more {
                let mut mapped = kept.iter().filter_map(|&(at, from, len)| {
                    let (start, end) = (found.start.max(at), found.end.min(at + len));
                    (start < end).then(|| (from + start - at, from + end - at))
                });
                let Some((start, mut end)) = mapped.next() else {
                    continue;
                };
                if let Some((_, last_end)) = mapped.next_back() {
                    end = last_end;
                }
                hits.push(Hit {
                    start,
                    end,
                    detector: found.detector,
                });
            }
            if hits.len() == before {
                return;
            }
            // `join_hits` as it was: into a second vector.
            hits.sort_by_key(|h| h.start);
            let mut merged: Vec<Hit> = Vec::new();
            for hit in hits.drain(..) {
                match merged.last_mut() {
                    Some(last) if hit.start < last.end => last.end = last.end.max(hit.end),
                    _ => merged.push(hit),
                }
            }
            *hits = merged;
        }
    }

    #[test]
    fn read_again_agrees_with_its_reference() {
        // Strings made of detector examples, the shapes the fuzz target found (masks that end a URL's scheme or a
        // number), digit shapes and glue, so that hits cover whole strings, touch and overlap.
        const GLUE: &[&str] = &[
            "",
            " ",
            "/",
            "-",
            "@",
            "://",
            "sftp://ops-",
            "-jane.doe@files.example.org",
            "@example.org",
            "x",
            "1",
            "+447911123456",
            "jane",
            ".",
            ":",
        ];
        let all = set(&Kind::BUILT_IN);
        let mut rng = generators::Rng(0xA6A1_2E4D);
        let (mut covered, mut added) = (0, 0);
        let mut views = ViewSet::default();
        for round in 0..6_000 {
            let mut text = String::new();
            for _ in 0..1 + rng.below(4) {
                match rng.below(3) {
                    0 => text.push_str(POSITIVES[rng.below(POSITIVES.len())].1),
                    1 => text.push_str(&digit_shaped_text(&mut rng)),
                    _ => text.push_str(GLUE[rng.below(GLUE.len())]),
                }
            }
            if round % 3 == 0 {
                // A whole value: hits that may cover every byte.
                text = POSITIVES[rng.below(POSITIVES.len())]
                    .1
                    .rsplit(' ')
                    .next()
                    .unwrap_or("")
                    .to_string();
            }
            let mut first = Vec::new();
            all.find_once(&text, &mut first);
            if first.is_empty() {
                continue;
            }
            let mut want = first.clone();
            read_again_reference(&all, &text, &mut want);
            let mut got = Vec::new();
            all.find(&text, &mut got);
            assert_eq!(got, want, "read_again disagrees with its reference on {text:?}");
            // Views remembered from every string before: answered from the memo, the same.
            all.find_with_views(&text, &mut got, &mut views);
            assert_eq!(got, want, "a remembered view changed what was found in {text:?}");
            covered += usize::from(!keeps_text(&text, &first));
            added += usize::from(want != first);
        }
        assert!(covered > 100, "hits covering the whole string: {covered}");
        assert!(added > 0, "second readings that added something: {added}");
        assert!(
            views.answered > 100,
            "second readings answered by the memo: {}",
            views.answered
        );
        assert!(
            !views.clean.contains("sftp://ops-[redacted]-jane@files.example.org"),
            "a view whose reading found an address is not clean"
        );
    }

    /// Every view found clean, kept as it is, and how often one was asked for again.
    #[derive(Default)]
    struct ViewSet {
        clean: std::collections::HashSet<String>,
        answered: usize,
    }

    impl CleanViews for ViewSet {
        fn clean(&mut self, view: &str, read: &mut dyn FnMut() -> bool) -> bool {
            if self.clean.contains(view) {
                self.answered += 1;
                return true;
            }
            let clean = read();
            if clean {
                self.clean.insert(view.to_string());
            }
            clean
        }
    }

    #[test]
    fn a_view_is_remembered_only_when_nothing_was_found_in_it() {
        let all = set(&Kind::BUILT_IN);
        let mut views = ViewSet::default();
        let mut hits = Vec::new();
        for address in ["jane.doe", "john.roe"] {
            all.find_with_views(
                &format!("Payment failed for {address}@example.com today"),
                &mut hits,
                &mut views,
            );
            assert_eq!(hits.len(), 1);
        }
        assert_eq!(views.answered, 1, "the second address's view is the first's");
        assert!(views.clean.contains("Payment failed for [redacted]@example.com today"));
        // The fuzz target's URL: its view holds an address the first reading could not see; that view is not clean.
        let text = "sftp://ops-+447911123456-jane@files.example.org/x";
        all.find_with_views(text, &mut hits, &mut views);
        assert!(hits.len() > 1, "{hits:?}");
        assert!(
            !views.clean.iter().any(|view| view.contains("-jane@")),
            "{:?}",
            views.clean
        );
    }

    #[test]
    fn keeps_text_agrees_with_a_byte_map() {
        let mut rng = generators::Rng(0x4EE9_7E47);
        for _ in 0..20_000 {
            let len = rng.below(12);
            let text = "x".repeat(len);
            let mut hits = Vec::new();
            for _ in 0..rng.below(4) {
                let start = rng.below(len + 1);
                let end = start + rng.below(len + 1 - start);
                if start < end {
                    hits.push(Hit {
                        start,
                        end,
                        detector: 0,
                    });
                }
            }
            join_hits(&mut hits);
            let mut covered = vec![false; len];
            for hit in &hits {
                covered[hit.start..hit.end].iter_mut().for_each(|c| *c = true);
            }
            assert_eq!(
                keeps_text(&text, &hits),
                covered.contains(&false),
                "{hits:?} over {len} bytes"
            );
        }
    }

    /// Every predicate [`any_trigram`] is given: it pads the last block with zero bytes, which it lowers to spaces.
    type Trigram = fn(u8, u8, u8) -> bool;
    const TRIGRAMS: &[(&str, Trigram)] = &[
        ("bearer", bearer_trigram),
        ("credential", credential_trigram),
        ("tax label", taxid::label_trigram),
        ("home root", userpath::root_trigram),
    ];

    #[test]
    fn no_trigram_predicate_sees_a_space() {
        for &(name, hit) in TRIGRAMS {
            for x in 0..=255u8 {
                for y in 0..=255u8 {
                    assert!(
                        !hit(b' ', x, y) && !hit(x, b' ', y) && !hit(x, y, b' '),
                        "{name} takes a space with {x:#x}, {y:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn any_trigram_agrees_with_a_window_loop() {
        const BYTES: &[u8] = b"pPaAsSwWdDeEcCiItToOkKbBrRnNxX#/\\hHuU \x00.9\xc5";
        let mut rng = generators::Rng(0x7219_4A11);
        let mut hits = [0usize; 4];
        for _ in 0..40_000 {
            let len = rng.below(60);
            let bytes: Vec<u8> = (0..len).map(|_| BYTES[rng.below(BYTES.len())]).collect();
            for (count, &(name, hit)) in hits.iter_mut().zip(TRIGRAMS) {
                let want = bytes.windows(3).any(|w| hit(w[0] | 0x20, w[1] | 0x20, w[2] | 0x20));
                assert_eq!(any_trigram(&bytes, hit), want, "{name} on {bytes:?}");
                *count += usize::from(want);
            }
        }
        assert!(
            hits.iter().all(|&n| n > 200),
            "strings each predicate found something in: {hits:?}"
        );
    }

    #[test]
    fn counts_agree_with_a_byte_loop() {
        let mut rng = generators::Rng(0xC0_0475);
        const BYTES: &[u8] = b"09aZAJbB._-@%/\\:_ \x80\xff\x00";
        for round in 0..3_000 {
            // Short strings, and long ones across the 255-byte chunks.
            let len = match round % 100 {
                0 => 4_000 + rng.below(600),
                n if n % 3 == 0 => rng.below(300),
                _ => rng.below(70),
            };
            let bytes: Vec<u8> = (0..len).map(|_| BYTES[rng.below(BYTES.len())]).collect();
            let c = Counts::of(&bytes);
            let count = |f: &dyn Fn(u8) -> bool| bytes.iter().filter(|&&b| f(b)).count() as u32;
            let any = |f: &dyn Fn(u8) -> bool| u32::from(bytes.iter().any(|&b| f(b)));
            assert_eq!(c.digits, count(&|b| b.is_ascii_digit()));
            assert_eq!(c.uppers, count(&|b| b.is_ascii_uppercase()));
            assert_eq!(c.dots, count(&|b| b == b'.'));
            assert_eq!(c.dashes, count(&|b| b == b'-'));
            assert_eq!(c.slashes, count(&|b| b == b'/' || b == b'\\'));
            assert_eq!(c.colons, count(&|b| b == b':'));
            assert_eq!(c.underscores, any(&|b| b == b'_'));
            assert_eq!(c.ats, any(&|b| b == b'@'));
            assert_eq!(c.percents, any(&|b| b == b'%'));
            assert_eq!(c.bs, any(&|b| b == b'b' || b == b'B'));
            assert_eq!(c.cap_as, any(&|b| b == b'A'));
            assert_eq!(c.cap_js, any(&|b| b == b'J'));
            assert_eq!(c.non_ascii, any(&|b| b >= 0x80));
        }
    }

    #[test]
    fn counts_of_long_runs_of_one_class() {
        // One class in every byte, around the 255-byte chunks whose `u64` bytes must not carry into each other.
        for len in [254, 255, 256, 510, 511, 16 * 510 + 7] {
            let c = Counts::of(&vec![b'7'; len]);
            assert_eq!((c.digits, c.uppers, c.dots), (len as u32, 0, 0), "{len}");
            let c = Counts::of(&vec![b':'; len]);
            assert_eq!((c.colons, c.slashes), (len as u32, 0), "{len}");
        }
    }

    /// The long path's classes, and the prefilter built from them, against the exact counts stopped at their
    /// thresholds.
    fn assert_long_classes_agree(text: &str) {
        let bytes = text.as_bytes();
        let exact = Classes::from_counts(&Counts::of(bytes));
        let long = Classes::of_long(bytes);
        assert_eq!(long, exact, "{text:?}");
        let from_long = Prefilter::from_classes(text, T_ALL, &long);
        let from_exact = Prefilter::from_classes(text, T_ALL, &exact);
        assert_eq!(from_long.triggers, from_exact.triggers, "{text:?}");
        assert_eq!(from_long.allowed_kinds(), from_exact.allowed_kinds(), "{text:?}");
    }

    #[test]
    fn long_classes_agree_with_the_counts() {
        let mut rng = generators::Rng(0x10_C1A5);
        // Each counted class and each "any?" byte, the two case-folding characters and other non-ASCII ones, and
        // filler.
        const CLASSES: &[&str] = &[
            "0123456789",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            ".",
            "-",
            "/\\",
            ":",
            "_",
            "@",
            "%",
            "bB",
            "A",
            "J",
            "\u{17F}\u{212A}é€",
            "aeiouxyz ",
        ];
        let classes: Vec<Vec<char>> = CLASSES.iter().map(|c| c.chars().collect()).collect();
        let mut near = 0;
        for round in 0..6_000 {
            let len = match round % 10 {
                0 => 2_000 + rng.below(3_000),
                1..=4 => 128 + rng.below(600),
                _ => rng.below(300),
            };
            // Filler, then each class written over 0 to 24 places (some absent): the counts land on both sides of
            // their thresholds, anywhere in the string.
            let filler = &classes[CLASSES.len() - 1];
            let mut chars: Vec<char> = (0..len).map(|_| filler[rng.below(filler.len())]).collect();
            for class in &classes[..CLASSES.len() - 1] {
                let places = if len == 0 || rng.below(3) == 0 {
                    0
                } else {
                    rng.below(25)
                };
                for _ in 0..places {
                    chars[rng.below(len)] = class[rng.below(class.len())];
                }
            }
            let text: String = chars.into_iter().collect();
            assert_long_classes_agree(&text);
            let digits = Counts::of(text.as_bytes()).digits;
            near += usize::from(text.len() >= SHORT_COUNT && (12..=14).contains(&digits));
        }
        assert!(near > 100, "{near} long strings with 12 to 14 digits");
        // The digit and capital count stops in a 240-byte chunk once every threshold is reached: counts that reach
        // them late, early, and just short.
        for (head, filler) in [
            ("4111 1111 1111 1111 ABCD", "x"),
            ("4111 1111 1111 ABCD", "x"),
            ("AKIA", "7"),
            ("", "a1B"),
            (
                "",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
            ),
        ] {
            for len in [0, 100, 215, 216, 239, 240, 241, 479, 480, 481, 2_000] {
                let text = format!("{head}{}", filler.repeat(len));
                assert_long_classes_agree(&text);
                assert_long_classes_agree(&format!("{}{head}", filler.repeat(len)));
            }
        }
    }

    /// The same comparison on every string of every SDK capture: the JSON strings of each line, each line, and the
    /// whole capture.
    #[test]
    fn long_classes_agree_on_the_sdk_captures() {
        fn strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match value {
                serde_json::Value::String(s) => out.push(s),
                serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
                serde_json::Value::Object(map) => {
                    for (key, v) in map {
                        out.push(key);
                        strings(v, out);
                    }
                }
                _ => {}
            }
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk");
        let (mut files, mut long) = (0, 0);
        for entry in std::fs::read_dir(dir).expect("fixtures dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("fixture reads");
            files += 1;
            let capture = String::from_utf8_lossy(&bytes);
            assert_long_classes_agree(&capture);
            for line in capture.lines() {
                assert_long_classes_agree(line);
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let mut found = Vec::new();
                strings(&value, &mut found);
                for text in found {
                    assert_long_classes_agree(text);
                    long += usize::from(text.len() >= SHORT_COUNT);
                }
            }
        }
        assert!(files > 100 && long > 50, "{files} captures, {long} long strings");
    }

    #[test]
    fn bearer_words_agree_with_a_lowercased_search() {
        let mut rng = generators::Rng(0xBEA_7E12);
        const BYTES: &[u8] = b"bBeEaArRsSiIcC \t\x80_x";
        let mut found = 0;
        for round in 0..4_000 {
            // Short strings (the trigram scan) and long ones (from `b` to `b`), some with a word planted.
            let len = if round % 2 == 0 {
                rng.below(SHORT_COUNT)
            } else {
                SHORT_COUNT + rng.below(400)
            };
            let mut bytes: Vec<u8> = (0..len).map(|_| BYTES[rng.below(BYTES.len())]).collect();
            if round % 3 == 0 && len > 8 {
                let word: &[u8] = [b"BeaRer ".as_slice(), b"basic\t", b"bearer", b"basi c"][rng.below(4)];
                let at = rng.below(len - 7);
                bytes[at..at + word.len()].copy_from_slice(word);
            }
            let lower = bytes.to_ascii_lowercase();
            let want = [b"bearer ".as_slice(), b"bearer\t", b"basic ", b"basic\t"]
                .iter()
                .any(|word| lower.windows(word.len()).any(|w| w == *word));
            assert_eq!(has_bearer_word(&bytes), want, "{:?}", String::from_utf8_lossy(&bytes));
            found += usize::from(want);
        }
        assert!(found > 500, "{found} strings with a bearer word");
    }

    #[test]
    fn scheme_separator_agrees_with_contains() {
        let mut rng = generators::Rng(0x0005_EB5E);
        const BYTES: &[u8] = b"://a@";
        for _ in 0..20_000 {
            let len = rng.below(12);
            let text: String = (0..len).map(|_| BYTES[rng.below(BYTES.len())] as char).collect();
            assert_eq!(has_scheme_separator(text.as_bytes()), text.contains("://"), "{text:?}");
        }
    }

    #[test]
    fn more_detectors_than_the_index_mask_holds_find_the_same() {
        // 65 detectors: `find_once` walks them one by one instead of by the per-kind index mask.
        let mut many: Vec<Detector> = set(&Kind::BUILT_IN).detectors;
        let custom = Regex::new("zq[0-9]+").unwrap();
        while many.len() <= 64 {
            many.push(Detector {
                kind: Kind::Custom,
                id: format!("custom_{}", many.len()),
                replacement: "[x]".into(),
                action: Action::Replace,
                regex: Some(custom.clone()),
            });
        }
        let wide = DetectorSet::new(many.clone());
        let narrow = DetectorSet::new(many[..64].to_vec());
        assert!(wide.by_kind.is_none() && narrow.by_kind.is_some());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for &(_, text) in POSITIVES {
            let text = format!("{text} zq77");
            wide.find(&text, &mut a);
            narrow.find(&text, &mut b);
            let ranges = |hits: &[Hit]| {
                hits.iter()
                    .map(|h| (h.start, h.end, h.detector.min(63)))
                    .collect::<Vec<_>>()
            };
            assert_eq!(ranges(&a), ranges(&b), "{text:?}");
        }
    }

    #[test]
    fn overlapping_hits_keep_priority() {
        let detectors = set(&[Kind::UrlCredentials, Kind::Email]);
        let mut hits = Vec::new();
        let text = "https://jane:secret@example.com and bob@example.org";
        detectors.find(text, &mut hits);
        let found: Vec<&str> = hits.iter().map(|h| &text[h.start..h.end]).collect();
        assert_eq!(found, vec!["jane:secret", "bob"]);
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn_valid(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
    }
}
