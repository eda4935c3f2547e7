//! US taxpayer numbers beyond the dashed SSN: the ITIN shape (`9xx-7x-xxxx`, `9xx-8x-xxxx`, dashes or spaces), and
//! an SSN or ITIN written without separators when a label stands right before it ("SSN 123456789",
//! "social security no. 123 45 6789", "ITIN: 912781234"). The context-word approach is Presidio's; here it is bounded:
//! only a label followed by at most a few separator characters and short filler words counts, so a nine-digit id
//! elsewhere in the same string stays.

/// Labels, lower-case; matched as whole words in any case. Longer ones first, so "tax id number" wins over "tax id".
const LABELS: &[&[u8]] = &[
    b"social security number",
    b"social security no",
    b"social security #",
    b"social security",
    b"taxpayer identification number",
    b"taxpayer id",
    b"tax id number",
    b"tax id",
    b"tax-id",
    b"taxid",
    b"ssn",
    b"ss#",
    b"itin",
    b"tin",
];

/// Words allowed between the label and the number ("SSN is 123456789", "ITIN number: ...").
const FILLERS: &[&[u8]] = &[b"is", b"number", b"no", b"num", b"nr", b"was", b"of"];

/// How many bytes may separate a label from its number (separators and fillers together).
const MAX_GAP: usize = 16;

/// The ITIN's group (the middle two digits): 50-65, 70-88, 90-92, 94-99 (IRS ranges).
fn itin_group(group: u32) -> bool {
    matches!(group, 50..=65 | 70..=88 | 90..=92 | 94..=99)
}

/// Whether nine digits are a possible SSN (no 000/666/9xx area, no 00 group, no 0000 serial) or an ITIN.
fn valid_ssn_or_itin(d: &[u8; 9]) -> bool {
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..].iter().fold(0u32, |n, &x| n * 10 + u32::from(x));
    if area >= 900 {
        return itin_group(group);
    }
    area != 0 && area != 666 && group != 0 && serial != 0
}

/// Calls `push(start, end)` for every ITIN in the dashed or spaced shape `9dd-dd-dddd` / `9dd dd dddd`.
pub fn find_itins(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
    for start in memchr::memchr_iter(b'9', bytes) {
        let Some(candidate) = bytes.get(start..start + 11) else {
            return;
        };
        let sep = candidate[3];
        if !matches!(sep, b'-' | b' ') || candidate[6] != sep {
            continue;
        }
        let digits = [0, 1, 2, 4, 5, 7, 8, 9, 10];
        if !digits.iter().all(|&i| candidate[i].is_ascii_digit()) {
            continue;
        }
        if !super::number_boundary_before(bytes, start) || !super::number_boundary_after(bytes, start + 11) {
            continue;
        }
        let group = u32::from(candidate[4] - b'0') * 10 + u32::from(candidate[5] - b'0');
        if itin_group(group) {
            push(start, start + 11);
        }
    }
}

/// Calls `push(start, end)` for the number after each label: nine digits, bare or grouped 3-2-4 by spaces, dots or
/// dashes, that form a valid SSN or ITIN.
///
/// Driven by the numbers rather than the labels: long strings hold many words starting with `s`, `t` or `i` (and the
/// trigger's trigrams: `setting`, `syntax`, `position`) but few nine-digit numbers, and trying every label at every
/// word start cost about 5 ns per byte of the raw SDK mix (a tenth of the whole scrub). A labelled number can only
/// begin at one of [`number_starts`], and its label starts at most [`WINDOW`] bytes before it, so only those bytes
/// are read for a label; the number is then checked by [`number_after`] from that label, as the left-to-right scan
/// did. Same result: between a label and its number lie only separators and fillers, where no label starts, so no
/// two labels name one number and the scan's skipping never passed over a label (a test compares the two on
/// generated strings and on the SDK captures).
pub fn find_labelled(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
    number_starts(bytes, &mut |start| {
        for i in start.saturating_sub(WINDOW)..start {
            if let Some(after) = label_at(bytes, i)
                && let Some((s, e)) = number_after(bytes, after)
                && s == start
            {
                push(s, e);
                return;
            }
        }
    });
}

/// The longest label.
const MAX_LABEL: usize = {
    let mut max = 0;
    let mut i = 0;
    while i < LABELS.len() {
        if LABELS[i].len() > max {
            max = LABELS[i].len();
        }
        i += 1;
    }
    max
};

/// How far before its number a label may start: [`number_after`] takes a number starting less than [`MAX_GAP`]
/// bytes after the label's end.
const WINDOW: usize = MAX_LABEL + MAX_GAP - 1;

/// Where the label at `i` ends, if one starts there: a whole word (`tin` in `tinder` is not one; `ss#` ends itself),
/// not preceded by a letter or digit; the first of [`LABELS`] that matches decides.
fn label_at(bytes: &[u8], i: usize) -> Option<usize> {
    let b = bytes[i] | 0x20;
    if !matches!(b, b's' | b't' | b'i') || (i > 0 && bytes[i - 1].is_ascii_alphanumeric()) {
        return None;
    }
    let label = LABELS.iter().find(|l| starts_with_ci(&bytes[i..], l))?;
    let after = i + label.len();
    if label.last() != Some(&b'#') && bytes.get(after).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    Some(after)
}

/// Calls `found(start)` for every place a number [`number_after`] accepts can start: a run of exactly nine digits,
/// or `ddd?dd?dddd` with one separator (` `, `-` or `.`) twice, with no digit before or after either. (The number
/// starts right after a separator, a filler or a label, never after a digit; it ends at a number boundary.)
fn number_starts(bytes: &[u8], found: &mut dyn FnMut(usize)) {
    let mut i = 0;
    while let Some(start) = next_digit(bytes, i) {
        i = start;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        match i - start {
            9 => found(start),
            3 if grouped_at(bytes, start) => found(start),
            _ => {}
        }
    }
}

/// The first ASCII digit at or after `from`. Sixteen bytes at a time while there is none (a branch-free test per
/// block, which the compiler vectorizes): prose between the numbers costs a fraction of a byte-by-byte scan.
pub(super) fn next_digit(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(block) = bytes.get(i..i + 16) {
        if block.iter().fold(false, |any, b| any | b.is_ascii_digit()) {
            break;
        }
        i += 16;
    }
    bytes.get(i..)?.iter().position(u8::is_ascii_digit).map(|at| i + at)
}

/// Whether `ddd?dd?dddd` (one separator of ` `, `-`, `.`, twice) starts at `start`, not followed by a digit.
fn grouped_at(bytes: &[u8], start: usize) -> bool {
    let Some(s) = bytes.get(start..start + 11) else {
        return false;
    };
    matches!(s[3], b' ' | b'-' | b'.')
        && s[6] == s[3]
        && [0, 1, 2, 4, 5, 7, 8, 9, 10].iter().all(|&k| s[k].is_ascii_digit())
        && !bytes.get(start + 11).is_some_and(u8::is_ascii_digit)
}

/// The nine-digit number starting within [`MAX_GAP`] bytes of `from`, past separators and filler words.
fn number_after(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut pos = from;
    let limit = bytes.len().min(from + MAX_GAP);
    loop {
        while pos < limit
            && matches!(
                bytes[pos],
                b' ' | b'\t' | b':' | b'=' | b'#' | b'.' | b'"' | b'\'' | b'(' | b'-'
            )
        {
            pos += 1;
        }
        if pos >= limit {
            return None;
        }
        if bytes[pos].is_ascii_digit() {
            break;
        }
        let filler = FILLERS.iter().find(|f| {
            starts_with_ci(&bytes[pos..], f) && !bytes.get(pos + f.len()).is_some_and(u8::is_ascii_alphanumeric)
        })?;
        pos += filler.len();
    }
    let start = pos;
    let mut digits = [0u8; 9];
    let mut n = 0;
    // 9 digits in a row, or 3-2-4 with one separator kind.
    let mut sep = None;
    while pos < bytes.len() && n < 9 {
        let b = bytes[pos];
        if b.is_ascii_digit() {
            digits[n] = b - b'0';
            n += 1;
            pos += 1;
        } else if (n == 3 || n == 5) && matches!(b, b' ' | b'-' | b'.') && sep.is_none_or(|s| s == b) {
            sep = Some(b);
            pos += 1;
        } else {
            return None;
        }
    }
    if n != 9 || (sep.is_some() && !grouped(&bytes[start..pos])) {
        return None;
    }
    if !super::number_boundary_after(bytes, pos) {
        return None;
    }
    valid_ssn_or_itin(&digits).then_some((start, pos))
}

/// `ddd?dd?dddd` with the same separator twice.
fn grouped(s: &[u8]) -> bool {
    s.len() == 11 && s[3] == s[6] && !s[3].is_ascii_digit()
}

fn starts_with_ci(bytes: &[u8], word: &[u8]) -> bool {
    bytes.len() >= word.len() && bytes[..word.len()].eq_ignore_ascii_case(word)
}

/// Whether `bytes` may hold a label: `ssn`, `ss#`, `soc`, `tax`, `iti` or `tin` in any case (vectorized).
pub fn maybe_labelled(bytes: &[u8]) -> bool {
    super::any_trigram(bytes, label_trigram)
}

/// `ssn`, `ss#`, `soc`, `tax`, `tin` or `iti`, lower-cased as [`super::any_trigram`] passes them.
#[inline(always)]
pub(super) fn label_trigram(a: u8, b: u8, c: u8) -> bool {
    ((a == b's') & (((b == b's') & ((c == b'n') | (c == b'#' | 0x20))) | ((b == b'o') & (c == b'c'))))
        | ((a == b't') & (((b == b'a') & (c == b'x')) | ((b == b'i') & (c == b'n'))))
        | ((a == b'i') & (b == b't') & (c == b'i'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::detectors::generators::Rng;

    fn labelled(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find_labelled(text.as_bytes(), &mut |s, e| out.push(&text[s..e]));
        out
    }

    fn itins(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find_itins(text.as_bytes(), &mut |s, e| out.push(&text[s..e]));
        out
    }

    #[test]
    fn labelled_numbers() {
        for (text, want) in [
            ("SSN 219099999", "219099999"),
            ("ssn: 219099999,", "219099999"),
            ("Social Security Number is 219-09-9999", "219-09-9999"),
            ("social security no. 219 09 9999", "219 09 9999"),
            ("ITIN=912781234", "912781234"),
            ("tax id #912-78-1234", "912-78-1234"),
            ("{\"ssn\": \"219099999\"}", "219099999"),
            ("TIN: 219.09.9999", "219.09.9999"),
            ("taxpayer id number 219099999", "219099999"),
        ] {
            assert_eq!(labelled(text), vec![want], "in {text:?}");
        }
    }

    #[test]
    fn unlabelled_or_invalid_numbers_stay() {
        for text in [
            "order 219099999",
            "SSN 000123456",
            "SSN 666123456",
            "SSN 219009999",
            "SSN 219090000",
            "ITIN 912001234",
            "SSN 2190999990",
            "SSN 21909999",
            "tinder 219099999",
            "ssn lookup failed after 219099999 ms",
            "SSN 219-099-999",
            "SSN 219 09-9999",
            "ssn=%s",
            "SSN 1795386427",
        ] {
            assert!(labelled(text).is_empty(), "{text:?} gave {:?}", labelled(text));
        }
    }

    /// The left-to-right scan [`find_labelled`] replaced, kept as the reference: at every word start a label may
    /// begin, then the number after it.
    fn scan_labelled(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i] | 0x20;
            if !matches!(b, b's' | b't' | b'i') || (i > 0 && bytes[i - 1].is_ascii_alphanumeric()) {
                i += 1;
                continue;
            }
            let Some(label) = LABELS.iter().find(|l| starts_with_ci(&bytes[i..], l)) else {
                i += 1;
                continue;
            };
            let after = i + label.len();
            if label.last() != Some(&b'#') && bytes.get(after).is_some_and(u8::is_ascii_alphanumeric) {
                i += 1;
                continue;
            }
            i = after;
            if let Some((start, end)) = number_after(bytes, after) {
                out.push((start, end));
                i = end;
            }
        }
        out
    }

    fn number_driven(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        find_labelled(bytes, &mut |s, e| out.push((s, e)));
        out
    }

    /// Random strings of labels (in any case), look-alike words, fillers, separators and digit groups of every
    /// length near nine, glued with or without spaces: the number-driven search finds exactly what the full scan
    /// finds. Enough of them hold a labelled number (and a label at the far edge of the window) for this to mean
    /// something.
    #[test]
    fn number_driven_search_finds_what_the_scan_finds() {
        let words: Vec<&str> = "tinder setting syntax position associated ssnap itinerary taxi is number no num nr \
             was of No. the order id x SSN# ss"
            .split_whitespace()
            .collect();
        let separators: &[&str] = &[
            " ", "  ", "\t", ":", ": ", "=", "#", ".", "\"", "'", "(", "-", ", ", "\n", "_", "/",
        ];
        let mut rng = Rng(0x5EED_7A81);
        let mut hits = 0;
        let mut far_edge = 0;
        for _ in 0..40_000 {
            let mut text = String::new();
            for _ in 0..1 + rng.below(14) {
                match rng.below(7) {
                    0 | 1 => {
                        let label = LABELS[rng.below(LABELS.len())];
                        text.extend(label.iter().map(|&b| {
                            let c = char::from(b);
                            if rng.below(2) == 0 { c.to_ascii_uppercase() } else { c }
                        }));
                    }
                    2 => text.push_str(words[rng.below(words.len())]),
                    3 => {
                        let len = if rng.below(2) == 0 { 9 } else { 1 + rng.below(12) };
                        text.extend((0..len).map(|_| char::from(b'0' + rng.below(10) as u8)));
                    }
                    4 => {
                        let sep = [" ", "-", ".", "/"][rng.below(4)];
                        let other = if rng.below(6) == 0 { " " } else { sep };
                        let d = |rng: &mut Rng, n: usize| -> String {
                            (0..n).map(|_| char::from(b'0' + rng.below(10) as u8)).collect()
                        };
                        let group = if rng.below(3) == 0 {
                            90 + rng.below(10)
                        } else {
                            10 + rng.below(90)
                        };
                        let extra = 2 + rng.below(3);
                        let (a, b, c) = (d(&mut rng, 3), d(&mut rng, 4), d(&mut rng, extra));
                        text.push_str(&format!("{a}{sep}{group}{other}{b}"));
                        if rng.below(4) == 0 {
                            text.push_str(&c);
                        }
                    }
                    5 => {
                        // Pad a label to the window's far edge: a gap of up to MAX_GAP bytes before the number.
                        let pad = rng.below(MAX_GAP + 2);
                        text.push_str(&" ".repeat(pad));
                    }
                    _ => text.push_str(separators[rng.below(separators.len())]),
                }
                if rng.below(3) == 0 {
                    text.push(' ');
                }
            }
            let bytes = text.as_bytes();
            let want = scan_labelled(bytes);
            assert_eq!(number_driven(bytes), want, "in {text:?}");
            hits += want.len();
            far_edge += want
                .iter()
                .filter(|(s, _)| {
                    (s.saturating_sub(WINDOW)..*s)
                        .find_map(|i| label_at(bytes, i))
                        .is_some_and(|after| s - after >= 10)
                })
                .count();
        }
        println!("{hits} labelled numbers, {far_edge} far from their label");
        assert!(hits > 2000, "only {hits} labelled numbers generated");
        assert!(far_edge > 50, "only {far_edge} numbers far from their label");
    }

    /// The same comparison on every SDK capture in the repository, whole and line by line.
    #[test]
    fn number_driven_search_on_the_sdk_captures() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk");
        let mut files = 0;
        let mut hits = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("fixture reads");
            files += 1;
            let want = scan_labelled(&bytes);
            assert_eq!(number_driven(&bytes), want);
            hits += want.len();
            for line in bytes.split(|&b| b == b'\n') {
                assert_eq!(number_driven(line), scan_labelled(line));
            }
        }
        assert!(files > 100 && hits > 10, "{files} captures, {hits} labelled numbers");
    }

    #[test]
    fn a_label_at_the_window_edge() {
        // The longest label, then the widest gap number_after allows (15 bytes): still found; one byte more is not.
        let label = "taxpayer identification number";
        assert_eq!(label.len(), MAX_LABEL);
        let text = format!("{label}{}219099999", " ".repeat(MAX_GAP - 1));
        assert_eq!(labelled(&text), ["219099999"]);
        assert_eq!(scan_labelled(text.as_bytes()), number_driven(text.as_bytes()));
        let text = format!("{label}{}219099999", " ".repeat(MAX_GAP));
        assert!(labelled(&text).is_empty());
        // Two labelled numbers, and a nine-digit run with no label in reach.
        let text = format!("SSN 219099999 and {} 219099998; ITIN 912-78-1234", "x".repeat(60));
        assert_eq!(labelled(&text), ["219099999", "912-78-1234"]);
    }

    #[test]
    fn next_digit_across_blocks() {
        let mut rng = Rng(0x5EED_D161);
        for _ in 0..5000 {
            let len = rng.below(70);
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(20) == 0 {
                        b'0' + rng.below(10) as u8
                    } else {
                        b'a' + rng.below(26) as u8
                    }
                })
                .collect();
            for from in 0..=len {
                let want = text[from..].iter().position(u8::is_ascii_digit).map(|at| from + at);
                assert_eq!(next_digit(&text, from), want);
            }
        }
    }

    #[test]
    fn number_starts_are_runs_of_nine_or_3_2_4() {
        let starts = |text: &str| {
            let mut out = Vec::new();
            number_starts(text.as_bytes(), &mut |s| out.push(s));
            out
        };
        assert_eq!(starts("a 123456789 b"), [2]);
        assert_eq!(starts("123-45-6789"), [0]);
        assert_eq!(starts("x 123.45.6789."), [2]);
        assert!(starts("1234567890 12345678 123-45-67890 123-45 6789 1234-56-7890 2026-11-30").is_empty());
    }

    #[test]
    fn itin_shape() {
        assert_eq!(itins("itin 912-78-1234."), ["912-78-1234"]);
        assert_eq!(itins("912 94 1234"), ["912 94 1234"]);
        for text in [
            "912-45-1234",
            "912-93-1234",
            "1912-78-1234",
            "912-78-12345",
            "912-78 1234",
            "912-78-1234-5",
        ] {
            assert!(itins(text).is_empty(), "{text:?}");
        }
    }
}
