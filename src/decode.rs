//! `Content-Encoding` decoding with a hard cap on the decoded size.
//!
//! Lenient about names (case, whitespace, the empty and `UTF-8` values old Ruby and Android SDKs send), strict about
//! sizes: every decoder reads through `Read::take(cap + 1)`, so a compression bomb costs at most `cap + 1` bytes of
//! memory before it is refused. The output buffer grows in steps (64 KiB, then doubling), never straight to the cap,
//! and each step is charged first (to the relay's memory budget, see `crate::budget`), so a bomb is also stopped
//! when memory is short. Synchronous on purpose: callers run it inline for small bodies, on a blocking thread
//! otherwise. The body is already in memory, so the `bufread` decoders read it in place (no copy through a buffer).

use std::cell::RefCell;
use std::io::{self, Read};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// A supported `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    Identity,
    Gzip,
    /// zlib-wrapped deflate as HTTP specifies; raw deflate is accepted too because some clients send it.
    Deflate,
    Brotli,
    Zstd,
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("decoded body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid compressed data")]
    Invalid(#[source] io::Error),
    /// The charge for the next growth step was refused (the memory budget is exhausted).
    #[error("no memory budget left to decode the body")]
    OverBudget,
}

/// The first output buffer; later steps double it, up to the cap.
pub const FIRST_STEP: usize = 64 * 1024;

/// The header named an encoding we do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported content encoding")]
pub struct UnsupportedEncoding;

impl ContentEncoding {
    /// Parses a `Content-Encoding` value. A list (`gzip, identity`) is accepted when at most one real encoding is in
    /// it; stacked compression is not something any SDK does.
    pub fn parse(value: &[u8]) -> Result<ContentEncoding, UnsupportedEncoding> {
        let text = std::str::from_utf8(value).map_err(|_| UnsupportedEncoding)?;
        let mut found = ContentEncoding::Identity;
        for part in text.split(',') {
            let encoding = match part.trim().to_ascii_lowercase().as_str() {
                "" | "identity" | "utf-8" | "utf8" => continue,
                "gzip" | "x-gzip" => ContentEncoding::Gzip,
                "deflate" => ContentEncoding::Deflate,
                "br" => ContentEncoding::Brotli,
                "zstd" => ContentEncoding::Zstd,
                _ => return Err(UnsupportedEncoding),
            };
            if found != ContentEncoding::Identity {
                return Err(UnsupportedEncoding);
            }
            found = encoding;
        }
        Ok(found)
    }

    /// Guesses the encoding from magic bytes (for `scrub-relay scrub` on a file). Brotli has no magic number, so it
    /// is never guessed.
    pub fn sniff(body: &[u8]) -> ContentEncoding {
        match body {
            [0x1f, 0x8b, ..] => ContentEncoding::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => ContentEncoding::Zstd,
            [cmf, flg, ..] if is_zlib_header(*cmf, *flg) => ContentEncoding::Deflate,
            _ => ContentEncoding::Identity,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContentEncoding::Identity => "identity",
            ContentEncoding::Gzip => "gzip",
            ContentEncoding::Deflate => "deflate",
            ContentEncoding::Brotli => "br",
            ContentEncoding::Zstd => "zstd",
        }
    }
}

/// RFC 1950: deflate method, window ≤ 32 KiB, and the 16-bit header is a multiple of 31.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// Decodes `body`, refusing output larger than `cap` bytes. Identity bodies are checked against the cap too.
pub fn decode(encoding: ContentEncoding, body: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    decode_charged(encoding, body, cap, &mut |_| true)
}

/// [`decode`], asking `charge(additional)` before the output buffer grows by `additional` bytes; `false` stops the
/// decoder with [`DecodeError::OverBudget`]. The buffer's capacity never exceeds what was charged.
pub fn decode_charged(
    encoding: ContentEncoding,
    body: &[u8],
    cap: usize,
    charge: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    match encoding {
        ContentEncoding::Identity => {
            if body.len() > cap {
                return Err(DecodeError::TooLarge { limit: cap });
            }
            if !charge(body.len()) {
                return Err(DecodeError::OverBudget);
            }
            Ok(body.to_vec())
        }
        ContentEncoding::Gzip => gunzip(body, cap, charge),
        ContentEncoding::Deflate => match body {
            [cmf, flg, ..] if is_zlib_header(*cmf, *flg) => {
                read_capped(flate2::bufread::ZlibDecoder::new(body), cap, charge)
            }
            _ => read_capped(flate2::bufread::DeflateDecoder::new(body), cap, charge),
        },
        ContentEncoding::Brotli => read_capped(brotli::Decompressor::new(body, 64 * 1024), cap, charge),
        ContentEncoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(body).map_err(DecodeError::Invalid)?;
            read_capped(decoder, cap, charge)
        }
    }
}

/// Reads at most `cap + 1` bytes, growing the buffer in charged steps: reading through `take(spare)` never lets
/// `read_to_end` grow it behind our back.
fn read_capped(
    mut reader: impl Read,
    cap: usize,
    charge: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    let limit = cap.saturating_add(1);
    let mut out = Vec::new();
    loop {
        grow_charged(&mut out, FIRST_STEP, cap, charge)?;
        let spare = (out.capacity() - out.len()).min(limit - out.len());
        let read = (&mut reader)
            .take(spare as u64)
            .read_to_end(&mut out)
            .map_err(DecodeError::Invalid)?;
        if read < spare {
            break;
        }
    }
    if out.len() > cap {
        return Err(DecodeError::TooLarge { limit: cap });
    }
    Ok(out)
}

/// Makes room in `out` once it is full, in steps charged before they are taken: `first` for the first, then
/// doubling (at least [`FIRST_STEP`]), never past `cap + 1` bytes. `TooLarge` when it already holds that many.
fn grow_charged(
    out: &mut Vec<u8>,
    first: usize,
    cap: usize,
    charge: &mut dyn FnMut(usize) -> bool,
) -> Result<(), DecodeError> {
    let limit = cap.saturating_add(1);
    if out.len() < out.capacity() {
        return Ok(());
    }
    if out.len() >= limit {
        return Err(DecodeError::TooLarge { limit: cap });
    }
    let target = if out.capacity() == 0 {
        first
    } else {
        out.capacity().saturating_mul(2).max(FIRST_STEP)
    }
    .min(limit);
    if !charge(target - out.capacity()) {
        return Err(DecodeError::OverBudget);
    }
    out.reserve_exact(target - out.len());
    Ok(())
}

thread_local! {
    /// One raw inflate state per thread, reset between bodies instead of allocated for each (issue #11). flate2
    /// resets a raw state with the default window in place; a gzip-mode one (`Decompress::new_gzip`) it would build
    /// anew, so the gzip framing is read here, as flate2's own gzip decoders do.
    static INFLATE: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
}

/// gzip (RFC 1952), any number of members, as `flate2::bufread::MultiGzDecoder` reads it (each member's CRC-32 and
/// length checked; anything after a member must be another member), with the thread's reused inflate state and the
/// output written in place (no `read_to_end`, which zeroes every buffer it reads into).
fn gunzip(body: &[u8], cap: usize, charge: &mut dyn FnMut(usize) -> bool) -> Result<Vec<u8>, DecodeError> {
    INFLATE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let inflate = slot.get_or_insert_with(|| flate2::Decompress::new(false));
            gunzip_with(inflate, body, cap, charge)
        }
        // Only if a `charge` callback decoded a body itself: that one gets a state of its own.
        Err(_) => gunzip_with(&mut flate2::Decompress::new(false), body, cap, charge),
    })
}

fn gunzip_with(
    inflate: &mut flate2::Decompress,
    body: &[u8],
    cap: usize,
    charge: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    // The last member's length (ISIZE) sizes the first step: a 4 KiB envelope gets a 4 KiB buffer (and the fast
    // loop's room, `FAST_DECODE_SLACK`), not 64 KiB. It is only a hint (a body can lie about it): the first step
    // never exceeds `FIRST_STEP`, and more is charged as the output really grows.
    let hint = match body {
        [.., a, b, c, d] if body.len() >= 18 => u32::from_le_bytes([*a, *b, *c, *d]) as usize,
        _ => 0,
    };
    let mut out: Vec<u8> = Vec::new();
    let mut rest = body;
    loop {
        rest = &rest[gzip_header_len(rest)?..];
        inflate.reset(false);
        let member = out.len();
        loop {
            grow_charged(
                &mut out,
                hint.saturating_add(1 + FAST_DECODE_SLACK).clamp(MIN_STEP, FIRST_STEP),
                cap,
                charge,
            )?;
            let (read_before, written_before) = (inflate.total_in(), out.len());
            let status = inflate
                .decompress_vec(rest, &mut out, flate2::FlushDecompress::None)
                .map_err(|error| DecodeError::Invalid(io::Error::new(io::ErrorKind::InvalidInput, error)))?;
            let read = usize::try_from(inflate.total_in() - read_before).unwrap_or(rest.len());
            rest = &rest[read.min(rest.len())..];
            if status == flate2::Status::StreamEnd {
                break;
            }
            if out.len() < out.capacity() && (rest.is_empty() || (read == 0 && out.len() == written_before)) {
                // Room left for output, so the stream stopped for want of input: it is cut short.
                return Err(DecodeError::Invalid(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        if out.len() > cap {
            return Err(DecodeError::TooLarge { limit: cap });
        }
        let Some((trailer, next)) = rest.split_first_chunk::<8>() else {
            return Err(DecodeError::Invalid(io::ErrorKind::UnexpectedEof.into()));
        };
        let [c0, c1, c2, c3, l0, l1, l2, l3] = *trailer;
        let length = (out.len() - member) as u32; // ISIZE is the length modulo 2^32
        if u32::from_le_bytes([c0, c1, c2, c3]) != crc32fast::hash(&out[member..])
            || u32::from_le_bytes([l0, l1, l2, l3]) != length
        {
            return Err(DecodeError::Invalid(io::Error::new(
                io::ErrorKind::InvalidInput,
                "gzip member checksum or length mismatch",
            )));
        }
        rest = next;
        if rest.is_empty() {
            return Ok(out);
        }
    }
}

/// The smallest first output step of [`gunzip`].
const MIN_STEP: usize = 1024;

/// Room beyond a body's announced length in the first output step: zlib-rs decodes with its fast loop only while
/// 260 bytes of output space are left, and symbol by symbol through its state machine after that.
const FAST_DECODE_SLACK: usize = 260;

/// The length of the gzip member header at the start of `data` (RFC 1952 2.3: ID1 ID2 CM FLG MTIME XFL OS, then the
/// optional extra field, name, comment and header CRC the flags announce). Refused as flate2 refuses them: wrong
/// magic or method, a reserved flag set, a header cut short, or a header CRC that does not match.
fn gzip_header_len(data: &[u8]) -> Result<usize, DecodeError> {
    const FHCRC: u8 = 1 << 1;
    const FEXTRA: u8 = 1 << 2;
    const FNAME: u8 = 1 << 3;
    const FCOMMENT: u8 = 1 << 4;
    const FRESERVED: u8 = 0xe0;
    let bad = || DecodeError::Invalid(io::Error::new(io::ErrorKind::InvalidInput, "invalid gzip header"));
    let short = || DecodeError::Invalid(io::ErrorKind::UnexpectedEof.into());
    let Some([0x1f, 0x8b, 8, flags, ..]) = data.first_chunk::<10>().copied() else {
        return Err(bad());
    };
    if flags & FRESERVED != 0 {
        return Err(bad());
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(&[x0, x1]) = data.get(at..at + 2) else {
            return Err(short());
        };
        at += 2 + usize::from(u16::from_le_bytes([x0, x1]));
        if at > data.len() {
            return Err(short());
        }
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = memchr::memchr(0, &data[at..]).ok_or_else(short)?;
            at += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        let Some(&[h0, h1]) = data.get(at..at + 2) else {
            return Err(short());
        };
        if u16::from_le_bytes([h0, h1]) != crc32fast::hash(&data[..at]) as u16 {
            return Err(bad());
        }
        at += 2;
    }
    Ok(at)
}

/// Zlib-compresses `data` (the legacy store endpoint's base64+zlib form, used in tests and the CLI).
pub fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    encoder.write_all(data).expect("write to Vec");
    encoder.finish().expect("write to Vec")
}

/// Old SDKs send either alphabet, with or without padding, sometimes wrapped in lines.
const LENIENT_BASE64: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);

/// Standard or URL-safe base64, padding optional, whitespace ignored. `None` on any other byte.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    GeneralPurpose::new(&alphabet::STANDARD, LENIENT_BASE64)
        .decode(&compact)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT_BASE64).decode(&compact))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn names_are_lenient() {
        assert_eq!(ContentEncoding::parse(b"GZIP"), Ok(ContentEncoding::Gzip));
        assert_eq!(ContentEncoding::parse(b" x-gzip "), Ok(ContentEncoding::Gzip));
        assert_eq!(ContentEncoding::parse(b""), Ok(ContentEncoding::Identity));
        assert_eq!(ContentEncoding::parse(b"UTF-8"), Ok(ContentEncoding::Identity));
        assert_eq!(ContentEncoding::parse(b"br, identity"), Ok(ContentEncoding::Brotli));
        assert_eq!(ContentEncoding::parse(b"lz4"), Err(UnsupportedEncoding));
        assert_eq!(
            ContentEncoding::parse(b"gzip, br"),
            Err(UnsupportedEncoding),
            "stacked encodings"
        );
    }

    #[test]
    fn every_encoding_round_trips() {
        let mut deflate_raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflate_raw.write_all(TEXT).unwrap();
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 4, 22)
            .write_all(TEXT)
            .unwrap();
        let cases = [
            (ContentEncoding::Gzip, gzip(TEXT)),
            (ContentEncoding::Deflate, zlib(TEXT)),
            (ContentEncoding::Deflate, deflate_raw.finish().unwrap()),
            (ContentEncoding::Brotli, br),
            (ContentEncoding::Zstd, zstd::encode_all(TEXT, 3).unwrap()),
            (ContentEncoding::Identity, TEXT.to_vec()),
        ];
        for (encoding, body) in cases {
            assert_eq!(decode(encoding, &body, 1024).unwrap(), TEXT, "{encoding:?}");
        }
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        let bomb = gzip(&vec![0u8; 4 * 1024 * 1024]);
        assert!(matches!(
            decode(ContentEncoding::Gzip, &bomb, 1024 * 1024),
            Err(DecodeError::TooLarge { limit: 1048576 })
        ));
        assert!(matches!(
            decode(ContentEncoding::Identity, &[0; 11], 10),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            decode(ContentEncoding::Identity, &[0; 10], 10).unwrap().len(),
            10,
            "exactly the cap is fine"
        );
    }

    #[test]
    fn decoders_grow_in_charged_steps_and_stop_when_refused() {
        let body = gzip(&vec![b'a'; 1024 * 1024]);
        let mut steps = Vec::new();
        let out = decode_charged(ContentEncoding::Gzip, &body, 8 * 1024 * 1024, &mut |n| {
            steps.push(n);
            true
        })
        .unwrap();
        assert_eq!(out.len(), 1024 * 1024);
        assert_eq!(steps[0], FIRST_STEP, "the first step is small, not the cap");
        assert!(steps.len() > 3, "grown in steps: {steps:?}");
        assert!(out.capacity() <= steps.iter().sum(), "never more than charged");

        // A 64 MiB bomb under a 4 MiB budget: stopped after the charges that fit, whatever the cap says.
        let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
        let mut charged = 0;
        let result = decode_charged(ContentEncoding::Gzip, &bomb, 200 * 1024 * 1024, &mut |n| {
            charged += n;
            charged <= 4 * 1024 * 1024
        });
        assert!(matches!(result, Err(DecodeError::OverBudget)));
        assert!(charged <= 8 * 1024 * 1024);
        // The thread's inflate state, stopped midway by the refusal, serves the next body from its start.
        let again = decode_charged(ContentEncoding::Gzip, &body, 8 * 1024 * 1024, &mut |_| true).unwrap();
        assert!(again == out);
    }

    /// flate2's multi-member gzip reader, as the relay decoded gzip before it read the framing itself.
    fn reference_gunzip(body: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
        read_capped(flate2::bufread::MultiGzDecoder::new(body), cap, &mut |_| true)
    }

    /// Same bytes out, or the same kind of refusal, as flate2's `MultiGzDecoder`.
    fn assert_same_as_flate2(body: &[u8], cap: usize, what: &str) {
        let ours = decode(ContentEncoding::Gzip, body, cap);
        match (ours, reference_gunzip(body, cap)) {
            (Ok(ours), Ok(reference)) => assert!(ours == reference, "{what}: different output"),
            (Err(DecodeError::TooLarge { .. }), Err(DecodeError::TooLarge { .. }))
            | (Err(DecodeError::Invalid(_)), Err(DecodeError::Invalid(_))) => {}
            (ours, reference) => panic!(
                "{what}: ours {:?}, flate2 {:?}",
                ours.map(|out| out.len()),
                reference.map(|out| out.len())
            ),
        }
    }

    /// A gzip member with every optional header field, the header CRC (`FHCRC`) last; `tamper` breaks that CRC.
    fn gzip_with_all_fields(data: &[u8], tamper: bool) -> Vec<u8> {
        let plain = flate2::GzBuilder::new()
            .filename("event.json")
            .comment("from an SDK")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::default());
        let mut plain = plain;
        plain.write_all(data).unwrap();
        let plain = plain.finish().unwrap();
        let header_len = gzip_header_len(&plain).unwrap();
        let mut out = plain[..header_len].to_vec();
        out[3] |= 1 << 1;
        let crc = crc32fast::hash(&out) as u16 ^ u16::from(tamper);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&plain[header_len..]);
        out
    }

    #[test]
    fn gzip_reads_what_flate2_reads() {
        let captures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdk");
        let mut gzip_captures = 0;
        for entry in std::fs::read_dir(captures).unwrap() {
            let path = entry.unwrap().path();
            let body = std::fs::read(&path).unwrap();
            if path.extension().is_some_and(|e| e == "body") && ContentEncoding::sniff(&body) == ContentEncoding::Gzip {
                gzip_captures += 1;
                let decoded = reference_gunzip(&body, 64 << 20).unwrap();
                assert_eq!(decode(ContentEncoding::Gzip, &body, 64 << 20).unwrap(), decoded);
                for cap in [decoded.len(), decoded.len().saturating_sub(1), 100, 0] {
                    assert_same_as_flate2(&body, cap, &format!("{} under {cap}", path.display()));
                }
            }
        }
        assert!(gzip_captures >= 10, "the SDK captures include gzip bodies");

        let long: Vec<u8> = (0..300_000u32).flat_map(|n| format!("{n} ").into_bytes()).collect();
        let mut cases: Vec<(String, Vec<u8>)> = vec![
            ("text".into(), gzip(TEXT)),
            ("empty member".into(), gzip(b"")),
            ("all header fields".into(), gzip_with_all_fields(TEXT, false)),
            ("bad header crc".into(), gzip_with_all_fields(TEXT, true)),
            ("two members".into(), [gzip(TEXT), gzip(b"second\n")].concat()),
            (
                "member, empty member, member".into(),
                [gzip(TEXT), gzip(b""), gzip_with_all_fields(TEXT, false)].concat(),
            ),
            ("trailing zeros".into(), [gzip(TEXT), vec![0; 8]].concat()),
            ("trailing garbage".into(), [gzip(TEXT), b"garbage".to_vec()].concat()),
            ("long".into(), gzip(&long)),
            ("long, two members".into(), [gzip(&long), gzip(&long)].concat()),
            ("empty body".into(), Vec::new()),
        ];
        // Every truncation and every single-byte corruption of a small two-member body.
        let small = [gzip_with_all_fields(b"{\"a\":1}", false), gzip(TEXT)].concat();
        for end in 0..small.len() {
            cases.push((format!("cut at {end}"), small[..end].to_vec()));
        }
        for at in 0..small.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = small.clone();
                bad[at] ^= flip;
                cases.push((format!("byte {at} ^ {flip:#x}"), bad));
            }
        }
        // The thread's inflate state is reused: a long stream stopped midway (its window full), then the whole one.
        let long_body = gzip(&long);
        for at in (1..8).map(|eighth| long_body.len() * eighth / 8) {
            cases.push((format!("long cut at {at}"), long_body[..at].to_vec()));
            let mut bad = long_body.clone();
            bad[at] ^= 0x10;
            cases.push((format!("long, byte {at} ^ 0x10"), bad));
            cases.push(("long after a failed one".into(), long_body.clone()));
        }
        for (what, body) in &cases {
            for cap in [1 << 24, 4_000_000, 1_000, TEXT.len(), TEXT.len() - 1, 0] {
                assert_same_as_flate2(body, cap, &format!("{what} under {cap}"));
            }
        }
    }

    #[test]
    fn gzip_output_starts_at_the_size_the_trailer_gives() {
        let body = gzip(&[b'x'; 4131]);
        let mut steps = Vec::new();
        let out = decode_charged(ContentEncoding::Gzip, &body, 1 << 20, &mut |n| {
            steps.push(n);
            true
        })
        .unwrap();
        assert_eq!(out.len(), 4131);
        assert_eq!(
            steps,
            [4131 + 1 + FAST_DECODE_SLACK],
            "one step, the envelope's size and room for the fast decoding loop"
        );
        // A trailer that lies (claims 4 GiB) gets no more than the usual first step.
        let mut lying = body.clone();
        let len = lying.len();
        lying[len - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        steps.clear();
        let result = decode_charged(ContentEncoding::Gzip, &lying, 1 << 20, &mut |n| {
            steps.push(n);
            true
        });
        assert!(matches!(result, Err(DecodeError::Invalid(_))), "the length is checked");
        assert_eq!(steps, [FIRST_STEP]);
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        assert!(matches!(
            decode(ContentEncoding::Gzip, b"not gzip", 100),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(ContentEncoding::Zstd, b"not zstd", 100),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(ContentEncoding::Brotli, b"\xff\xff\xff\xff", 100),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn sniffing() {
        assert_eq!(ContentEncoding::sniff(&gzip(TEXT)), ContentEncoding::Gzip);
        assert_eq!(ContentEncoding::sniff(&zlib(TEXT)), ContentEncoding::Deflate);
        assert_eq!(
            ContentEncoding::sniff(&zstd::encode_all(TEXT, 3).unwrap()),
            ContentEncoding::Zstd
        );
        assert_eq!(ContentEncoding::sniff(TEXT), ContentEncoding::Identity);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode(b"aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(base64_decode(b"aGVsbG8gd29ybGQ").unwrap(), b"hello world");
        assert!(base64_decode(b"{\"a\":1}").is_none());
    }
}
