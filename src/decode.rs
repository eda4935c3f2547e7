//! `Content-Encoding` decoding with a hard cap on the decoded size.
//!
//! Lenient about names (case, whitespace, the empty and `UTF-8` values old Ruby and Android SDKs send), strict about
//! sizes: every decoder reads through `Read::take(cap + 1)`, so a compression bomb costs at most `cap + 1` bytes of
//! memory before it is refused. The output buffer grows in steps (64 KiB, then doubling), never straight to the cap,
//! and each step is charged first (to the relay's memory budget, see `crate::budget`), so a bomb is also stopped
//! when memory is short. Synchronous on purpose: callers run it inline for small bodies, on a blocking thread
//! otherwise. The body is already in memory, so the `bufread` decoders read it in place (no copy through a buffer).

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
        ContentEncoding::Gzip => read_capped(flate2::bufread::MultiGzDecoder::new(body), cap, charge),
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
        if out.len() == out.capacity() {
            if out.len() >= limit {
                break;
            }
            let target = out.capacity().saturating_mul(2).max(FIRST_STEP).min(limit);
            if !charge(target - out.capacity()) {
                return Err(DecodeError::OverBudget);
            }
            out.reserve_exact(target - out.len());
        }
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
