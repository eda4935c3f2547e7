//! Header lines read straight into a map and written back, for the shapes SDKs write.
//!
//! Reading: objects of plain strings, small non-negative integers, `true`/`false`/`null` and objects of those (an
//! envelope header's `trace`). serde_json's `Value` route cost about 15 k instructions for the two header lines of
//! the raw python event, a third of it in its visitor machinery, in reading strings byte by byte and in growing each
//! map one key at a time (issue #11). Anything else (an escape, a float, a negative number, an array, a key
//! serde_json treats specially, deep nesting, invalid text) is left to serde_json, so the map is always the one
//! `serde_json::from_slice` builds: same keys, same order, the last of duplicate keys winning in the first one's
//! place.
//!
//! Writing: any map, byte for byte as `serde_json::to_writer`; strings with nothing to escape are copied whole.

use serde_json::{Map, Value};

/// Nested objects deeper than this go to serde_json (SDK headers nest one level: `trace`, `sdk`).
const MAX_DEPTH: usize = 4;

/// Keys a map starts with room for: an SDK's envelope header has up to about eight (`event_id`, `sent_at`, `dsn`,
/// `sdk`, `trace`), its `trace` up to about ten, an item header three or four.
const KEYS: usize = 8;

/// The object `line` holds, when it is in the shapes this reader knows; `None` means "ask serde_json", not "invalid".
pub(super) fn quick_object(line: &[u8]) -> Option<Map<String, Value>> {
    let mut reader = Reader { bytes: line, at: 0 };
    reader.skip_whitespace();
    let map = reader.object(0)?;
    reader.skip_whitespace();
    (reader.at == line.len()).then_some(map)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// JSON's whitespace, as serde_json skips it.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn object(&mut self, depth: usize) -> Option<Map<String, Value>> {
        if depth > MAX_DEPTH || self.peek() != Some(b'{') {
            return None;
        }
        self.at += 1;
        let mut map = Map::with_capacity(KEYS);
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(map);
        }
        loop {
            self.skip_whitespace();
            let key = self.string()?;
            // serde_json reads some `$`-keys as markers (raw values, arbitrary-precision numbers) when features ask.
            if key.starts_with('$') {
                return None;
            }
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return None;
            }
            self.at += 1;
            self.skip_whitespace();
            let value = self.value(depth)?;
            // As serde_json's visitor inserts: a duplicate key keeps its first place and takes the last value.
            map.insert(key.to_owned(), value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Some(map);
                }
                _ => return None,
            }
        }
    }

    /// A string without escapes or control characters, valid UTF-8. Read eight bytes at a time: header strings are
    /// ids, timestamps and names, and a byte loop (or `memchr` for the quote and a second pass for the rest) cost
    /// about as much as serde_json's own reading.
    fn string(&mut self) -> Option<&'a str> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let bytes = self.bytes;
        let start = self.at + 1;
        let mut at = start;
        loop {
            if let Some(chunk) = bytes.get(at..at + 8) {
                let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
                // Bytes past ASCII too, to be checked as UTF-8; their high bit is exact.
                let flags = escape_flags(word) | (word & HIGHS);
                if flags == 0 {
                    at += 8;
                    continue;
                }
                // The lowest flag is exact (see `escape_flags`).
                at += (flags.trailing_zeros() / 8) as usize;
            }
            match *bytes.get(at)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                // The rest of a multi-byte character, checked as UTF-8 below.
                _ => at += 1,
            }
        }
        self.at = at + 1;
        std::str::from_utf8(&bytes[start..at]).ok()
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        match self.peek()? {
            b'"' => self.string().map(|text| Value::String(text.to_owned())),
            b'{' => self.object(depth + 1).map(Value::Object),
            b'0'..=b'9' => self.integer(),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            _ => None,
        }
    }

    /// A non-negative integer of at most 18 digits (so it fits a `u64` without a check), as serde_json reads it:
    /// no leading zero, not followed by a fraction or an exponent (those make a float).
    fn integer(&mut self) -> Option<Value> {
        let rest = &self.bytes[self.at..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 18 || (digits > 1 && rest[0] == b'0') || matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let value = rest[..digits]
            .iter()
            .fold(0u64, |value, &digit| value * 10 + u64::from(digit - b'0'));
        self.at += digits;
        Some(Value::from(value))
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Option<Value> {
        if !self.bytes[self.at..].starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some(value)
    }
}

/// The bytes of `word` (little-endian) that end or interrupt a plain string (`"`, `\\`, a control character), each
/// as its high bit. Borrows of the subtractions can flag bytes after a real one, never before it, so the lowest flag
/// is exact.
fn escape_flags(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    ((quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (word.wrapping_sub(ONES * 0x20) & !word))
        & HIGHS
}

/// The high bit of every byte.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether `text` holds a byte serde_json escapes (`"`, `\\`, a control character).
fn needs_escape(text: &[u8]) -> bool {
    let mut words = text.chunks_exact(8);
    let any = words
        .by_ref()
        .any(|chunk| escape_flags(u64::from_le_bytes(chunk.try_into().expect("eight bytes"))) != 0);
    any || words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Writes `map` as compact JSON, byte for byte as `serde_json::to_writer` does; strings without anything to escape
/// (nearly all of an SDK's header) are copied whole rather than through serde_json's table, byte by byte.
pub(super) fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (at, (key, value)) in map.iter().enumerate() {
        if at > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_value(value, out);
    }
    out.push(b'}');
}

pub(super) fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::String(text) => write_string(text, out),
        Value::Object(map) => write_object(map, out),
        Value::Array(values) => {
            out.push(b'[');
            for (at, value) in values.iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                write_value(value, out);
            }
            out.push(b']');
        }
        // Numbers, `true`, `false`, `null`: serde_json's own text (floats are its business). Writing into a Vec
        // cannot fail.
        other => serde_json::to_writer(&mut *out, other).expect("a JSON value serializes"),
    }
}

pub(super) fn write_string(text: &str, out: &mut Vec<u8>) {
    if needs_escape(text.as_bytes()) {
        // Writing a `str` into a Vec cannot fail.
        serde_json::to_writer(&mut *out, text).expect("a string serializes");
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's reading of `line`, as `parse_object` did it before this reader.
    fn by_serde(line: &[u8]) -> Option<Map<String, Value>> {
        match serde_json::from_slice(line) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    /// When the reader answers, its map is serde_json's: equal, and written back the same (same key order).
    fn check(line: &[u8]) -> bool {
        let Some(quick) = quick_object(line) else {
            return false;
        };
        let serde = by_serde(line).unwrap_or_else(|| panic!("serde_json refuses {:?}", String::from_utf8_lossy(line)));
        check_written(&serde);
        assert_eq!(quick, serde, "{:?}", String::from_utf8_lossy(line));
        assert_eq!(
            serde_json::to_vec(&quick).unwrap(),
            serde_json::to_vec(&serde).unwrap(),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        true
    }

    #[test]
    fn the_header_lines_of_every_capture_are_read_here_as_serde_json_reads_them() {
        let mut lines = 0;
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|ext| ext != "envelope") {
                continue;
            }
            let body = std::fs::read(&path).unwrap();
            let Ok(envelope) = super::super::Envelope::parse(bytes::Bytes::from(body.clone())) else {
                continue;
            };
            let header = body.split(|&b| b == b'\n').next().unwrap();
            assert!(check(header), "{path:?}: {:?}", String::from_utf8_lossy(header));
            for item in &envelope.items {
                let line = serde_json::to_vec(item.headers()).unwrap();
                assert!(check(&line), "{path:?}");
                lines += 1;
            }
        }
        assert!(lines > 30, "{lines}");
    }

    #[test]
    fn shapes_it_does_not_know_are_left_to_serde_json() {
        for line in [
            &br#"{"a":"b\"c"}"#[..],
            br#"{"a":1.5}"#,
            br#"{"a":1e3}"#,
            br#"{"a":-1}"#,
            br#"{"a":01}"#,
            br#"{"a":1234567890123456789}"#,
            br#"{"a":[1]}"#,
            br#"{"$serde_json::private::RawValue":"1"}"#,
            br#"{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}"#,
            br#"{"a":"b"} x"#,
            br#"{"a":"b",}"#,
            br#"{"a" "b"}"#,
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\xff\"}",
            br#"{"a":tru}"#,
            br#"["a"]"#,
            br#"{"a":"b""#,
            b"",
        ] {
            assert!(quick_object(line).is_none(), "{:?}", String::from_utf8_lossy(line));
        }
        for line in [
            &br#"{}"#[..],
            br#" { "a" : "b" , "c" : { } } "#,
            b"{\t\"a\":\r\n0}",
            br#"{"a":1,"b":2,"a":3}"#,
            br#"{"a":true,"b":false,"c":null,"d":123456789012345678}"#,
            "{\"é\":\"ü 😀\"}".as_bytes(),
            br#"{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","trace":{"trace_id":"x","sample_rate":"1"}}"#,
        ] {
            assert!(check(line), "{:?}", String::from_utf8_lossy(line));
        }
    }

    /// Strings of every length up to 40 with one byte of every kind at every position: the eight-byte reads stop at
    /// the right byte whether it comes first, last, or in a short tail.
    #[test]
    fn strings_are_read_whole_at_every_length_and_position() {
        for len in 0..40 {
            let plain = "k".repeat(len);
            assert!(check(format!(r#"{{"k":"{plain}","z":1}}"#).as_bytes()), "{len}");
            for at in 0..len {
                for special in [&b"\\"[..], b"\\n", b"\x01", b"\x1f", b"\x7f", "é".as_bytes(), "😀".as_bytes(), b"\xff", b"\xc3"] {
                    let mut text = plain.clone().into_bytes();
                    text.splice(at..at + 1, special.iter().copied());
                    let mut line = br#"{"k":""#.to_vec();
                    line.extend_from_slice(&text);
                    line.extend_from_slice(br#"","z":1}"#);
                    let answered = check(&line);
                    let plain_enough = std::str::from_utf8(&text).is_ok_and(|t| !t.bytes().any(|b| b < 0x20 || b == b'\\'));
                    assert_eq!(answered, plain_enough, "{:?}", String::from_utf8_lossy(&line));
                }
                // A quote ends the string early: the rest is not JSON.
                let mut text = plain.clone().into_bytes();
                text[at] = b'"';
                let mut line = br#"{"k":""#.to_vec();
                line.extend_from_slice(&text);
                line.extend_from_slice(br#"","z":1}"#);
                check(&line);
            }
        }
    }

    /// The writer against serde_json: every map the reader tests read, and values with escapes, floats and arrays.
    fn check_written(map: &Map<String, Value>) {
        let mut out = Vec::new();
        write_object(map, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(map).unwrap());
    }

    #[test]
    fn maps_are_written_as_serde_json_writes_them() {
        let values = [
            r#"{"a":"plain","b":"q\"uote","c":"back\\slash","d":"\u0001\u001f\n\t\u007f","e":"é😀"}"#,
            r#"{"n":[1,-2,3.5,1e300,18446744073709551615,-9223372036854775808],"t":true,"f":false,"z":null}"#,
            r#"{"o":{"p":{"q":[{"r":"s"},[],{}]}},"":"","long":"0123456789abcdef0123456789abcdef\"x"}"#,
        ];
        for text in values {
            let Value::Object(map) = serde_json::from_str::<Value>(text).unwrap() else { unreachable!() };
            check_written(&map);
        }
        for len in 0..40 {
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', '\u{7f}', 'é'] {
                    let mut text: Vec<char> = "k".repeat(len).chars().collect();
                    text[at] = special;
                    let mut map = Map::new();
                    map.insert(text.iter().collect(), Value::String(text.iter().rev().collect()));
                    check_written(&map);
                }
            }
        }
    }

    /// Random lines from pieces of JSON, valid and not: whenever the reader answers, serde_json agrees.
    #[test]
    fn random_lines_are_read_as_serde_json_reads_them() {
        let mut rng = fastrand::Rng::with_seed(23);
        let pieces: &[&[u8]] = &[
            b"{", b"}", b"\"", b":", b",", b" ", b"\t", b"\"a\"", b"\"type\"", b"\"length\"", b"\"\"", b"\"x y\"", b"0",
            b"7", b"42", b"01", b"1.5", b"-3", b"e5", b"true", b"false", b"null", b"nul", b"[", b"]", b"\\", b"\\n",
            b"\xc3\xa9", b"\xc3", b"\x01", b"\"$k\"", b"18446744073709551616", b"999999999999999999",
        ];
        let mut answered = 0;
        for _ in 0..200_000 {
            let mut line = Vec::new();
            if rng.u8(..4) != 0 {
                // Mostly near-valid: an object of a few members, then maybe damaged.
                line.push(b'{');
                for n in 0..rng.usize(0..5) {
                    if n > 0 {
                        line.push(b',');
                    }
                    line.extend_from_slice([&b"\"a\""[..], b"\"b\"", b"\"type\"", b"\"\""][rng.usize(..4)]);
                    line.push(b':');
                    match rng.u8(..6) {
                        0 => line.extend_from_slice(b"{\"t\":\"v\",\"n\":12}"),
                        1 => line.extend_from_slice(b"\"text\""),
                        _ => line.extend_from_slice(pieces[rng.usize(..pieces.len())]),
                    }
                }
                line.push(b'}');
                if rng.u8(..3) == 0 {
                    let at = rng.usize(..=line.len());
                    line.splice(at..at, pieces[rng.usize(..pieces.len())].iter().copied());
                }
            } else {
                for _ in 0..rng.usize(1..12) {
                    line.extend_from_slice(pieces[rng.usize(..pieces.len())]);
                }
            }
            if check(&line) {
                answered += 1;
            }
        }
        assert!(answered > 20_000, "{answered}");
    }
}
