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
pub fn find_labelled(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
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
        // A whole word: `tin` in `tinder`, `ssn` in `ssnap` are not labels (`#` ends `ss#` by itself).
        if label.last() != Some(&b'#') && bytes.get(after).is_some_and(u8::is_ascii_alphanumeric) {
            i += 1;
            continue;
        }
        i = after;
        if let Some((start, end)) = number_after(bytes, after) {
            push(start, end);
            i = end;
        }
    }
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
    super::any_trigram(bytes, |a, b, c| {
        ((a == b's') & (((b == b's') & ((c == b'n') | (c == b'#' | 0x20))) | ((b == b'o') & (c == b'c'))))
            | ((a == b't') & (((b == b'a') & (c == b'x')) | ((b == b'i') & (c == b'n'))))
            | ((a == b'i') & (b == b't') & (c == b'i'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
