//! Minidumps (`attachment_type: event.minidump`, and the crashpad route's upload), scrubbed in place: every length,
//! offset and RVA stays where it was, so Sentry can still stackwalk and symbolicate the crash.
//!
//! rust-minidump's `minidump` crate parses the header, the stream directory, the threads, the exception and the
//! modules. What the stackwalker and symbolicator read is kept byte for byte: the header and directory, the structural
//! streams (threads, modules, memory descriptors, exception, system and misc info, ...), the thread contexts, module
//! names' length prefixes and basenames, and CodeView signatures, GUIDs, ages and ELF build ids. Every other byte is
//! read as text, both as ASCII/UTF-8 runs and as UTF-16LE runs: stack and heap memory (where `argv` and the environment
//! block sit on Linux), the `/proc` streams (`environ`, `cmdline`, `maps`, `status`), the directory part of module and
//! CodeView paths, and streams this relay does not know. There the value detectors, sensitive `key=value` pairs (and
//! `--secret-flag value` pairs of a command line) and the user name of home-directory paths are overwritten with `*`
//! of the same length. Scanning everything that is not structure, rather than a list of places, means a stream or a
//! string this file does not know about is scrubbed too.
//!
//! A dump compressed with gzip, zstd, bzip2 or xz (recognised by magic bytes, as crashpad uploaders send them) is
//! decompressed under [`MAX_INFLATED`] and forwarded decompressed. Pure: bytes in, bytes and counts out.

use std::io::Read;

use minidump::format::{CvSignature, MINIDUMP_STREAM_TYPE as St};
use minidump::{Minidump, MinidumpException, MinidumpMemory64List, MinidumpModuleList, MinidumpThreadList};

use bytes::Bytes;
use serde_json::Value;

use super::{Ctx, InflateError};
use crate::envelope::Item;
use crate::rules::detectors::Kind;
use crate::scrub::{ChangeAction, ExtraSpan, Scrubber, Seg};

/// The largest decompressed dump accepted, the same as the attachment limit: Sentry allows 200 MiB, but a dump that
/// size is a full-memory dump that no SDK sends by default, and each one costs its size in memory while scrubbed.
pub const MAX_INFLATED: usize = 100 * 1024 * 1024;

/// Text runs shorter than this are not read: no detector matches fewer bytes, and binary data is full of short runs.
const MIN_RUN: usize = 6;

/// How many times [`scrub_within`] reads a dump at most. A pass that masks something is followed by one that checks
/// nothing new appeared; every cascade the fuzzer has found settled on the second pass. Past the cap the dump is
/// forwarded as the last pass left it, masked at least as much as one pass would.
const MAX_PASSES: usize = 8;

/// What overwrites a secret, byte for byte (UTF-16 runs get it as `*\0`).
const FILL: u8 = b'*';

/// The rule id user names in home-directory paths are counted under (the `user_path` detector's).
#[cfg(test)]
const USERPATH_RULE: &str = "user_path";

/// How a dump arrived compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Compression {
    /// Recognises a compressed dump by its magic bytes.
    pub fn sniff(data: &[u8]) -> Option<Compression> {
        match data {
            [0x1f, 0x8b, ..] => Some(Compression::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Compression::Zstd),
            [b'B', b'Z', b'h', ..] => Some(Compression::Bzip2),
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some(Compression::Xz),
            _ => None,
        }
    }

    /// The file name suffix this compression adds (`upload.dmp.gz`), removed once the dump is decompressed.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Bzip2 => ".bz2",
            Compression::Xz => ".xz",
        }
    }
}

/// Why a dump was not scrubbed. [`MinidumpError::outcome`] is the metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MinidumpError {
    #[error("not a minidump (no MDMP signature)")]
    NotMinidump,
    #[error("malformed minidump")]
    Malformed,
    #[error("decompressed minidump exceeds {MAX_INFLATED} bytes")]
    TooLarge,
    /// Past the cap of this pass ([`Ctx::inflate_cap`]), under [`MAX_INFLATED`]: not a verdict on the dump.
    #[error("decompressed minidump exceeds this pass's cap")]
    PastInflateCap,
    #[error("invalid compressed minidump")]
    BadCompression,
}

impl From<InflateError> for MinidumpError {
    fn from(error: InflateError) -> MinidumpError {
        match error {
            InflateError::Corrupt => MinidumpError::BadCompression,
            InflateError::PastCap => MinidumpError::PastInflateCap,
            InflateError::TooLarge => MinidumpError::TooLarge,
        }
    }
}

impl MinidumpError {
    pub fn outcome(&self) -> &'static str {
        match self {
            MinidumpError::NotMinidump => "not_minidump",
            MinidumpError::Malformed => "malformed",
            MinidumpError::TooLarge | MinidumpError::PastInflateCap => "too_large",
            MinidumpError::BadCompression => "bad_compression",
        }
    }
}

/// A scrubbed dump.
#[derive(Debug)]
pub struct Scrubbed {
    /// The dump, decompressed if it came compressed. `None` when nothing changed and it came uncompressed, so the
    /// caller keeps the original bytes.
    pub bytes: Option<Vec<u8>>,
    /// How it came compressed, if it did.
    pub compression: Option<Compression>,
    /// Secrets overwritten (also counted per rule in the scrubber's tally).
    pub redactions: u64,
}

/// Every metric label [`scrub`] and its callers report: `scrubbed`, `unchanged`, then the errors.
pub const OUTCOMES: [&str; 6] = [
    "scrubbed",
    "unchanged",
    "not_minidump",
    "malformed",
    "too_large",
    "bad_compression",
];

/// Decompresses `payload` if it is compressed, under [`MAX_INFLATED`].
pub fn decompress(payload: &[u8]) -> Result<(std::borrow::Cow<'_, [u8]>, Option<Compression>), MinidumpError> {
    decompress_within(payload, MAX_INFLATED)
}

/// [`decompress`] under `cap` (at most [`MAX_INFLATED`]); past a lower cap, [`MinidumpError::PastInflateCap`].
pub fn decompress_within(
    payload: &[u8],
    cap: usize,
) -> Result<(std::borrow::Cow<'_, [u8]>, Option<Compression>), MinidumpError> {
    let cap = cap.min(MAX_INFLATED);
    let Some(compression) = Compression::sniff(payload) else {
        return Ok((std::borrow::Cow::Borrowed(payload), None));
    };
    let reader: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(payload)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(payload).map_err(|_| MinidumpError::BadCompression)?)
        }
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(payload)),
        // The dictionary size comes from the input: 64 MiB is xz's largest preset (-9), and refuses a header that asks
        // for more instead of allocating it.
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(payload, true, 64 * 1024)),
    };
    let out = super::inflate(reader, cap, MAX_INFLATED)?;
    Ok((std::borrow::Cow::Owned(out), Some(compression)))
}

/// Scrubs a minidump (decompressing it first if needed). Counts go to `scrubber`'s tally; see the module docs.
pub fn scrub(payload: &[u8], scrubber: &mut Scrubber<'_>) -> Result<Scrubbed, MinidumpError> {
    scrub_within(payload, scrubber, MAX_INFLATED)
}

/// [`scrub`], a compressed dump decompressed only up to `cap` (see [`decompress_within`]).
pub fn scrub_within(payload: &[u8], scrubber: &mut Scrubber<'_>, cap: usize) -> Result<Scrubbed, MinidumpError> {
    let (data, compression) = decompress_within(payload, cap)?;
    let protected = protected_ranges(&data)?;
    let mut free = Vec::new();
    let mut start = 0;
    for &(p_start, p_end) in protected.iter().chain(std::iter::once(&(data.len(), data.len()))) {
        if p_start > start {
            free.push(start..p_start);
        }
        start = start.max(p_end);
    }
    let user_path_rule = user_path_rule(scrubber);
    let mut data = data.into_owned();
    let mut redactions = 0;
    // Masking changes what the next look sees: a masked `://` no longer makes the path after it a URL's, a masked
    // name makes a word boundary before `Bearer`. What this relay forwards must hold nothing a second look (another
    // relay, Sentry's own scrubbing) would still mask, so passes repeat until one changes nothing; each pass that
    // counts something has overwritten at least one more byte. The `minidump` fuzz target checks that scrubbing a
    // scrubbed dump leaves it as it is.
    for _ in 0..MAX_PASSES {
        let mut found = 0;
        // Learned names first, so the detectors read what will be forwarded.
        if let Some(rule) = user_path_rule {
            let names = learned_user_names(&data);
            for range in &free {
                found += mask_learned_names(&mut data[range.clone()], &names, rule, scrubber);
            }
        }
        for range in &free {
            found += scrub_region(&mut data[range.clone()], scrubber);
        }
        redactions += found;
        if found == 0 {
            break;
        }
    }
    let bytes = (redactions > 0 || compression.is_some()).then_some(data);
    Ok(Scrubbed {
        bytes,
        compression,
        redactions,
    })
}

/// The byte ranges that are structure, sorted and merged. Also checks that the dump is whole: every stream inside the
/// file, the threads, exception and modules parse.
fn protected_ranges(data: &[u8]) -> Result<Vec<(usize, usize)>, MinidumpError> {
    match data.get(..4) {
        Some(b"MDMP") | Some(b"PMDM") => {}
        _ => return Err(MinidumpError::NotMinidump),
    }
    let dump = Minidump::read(data).map_err(|_| MinidumpError::Malformed)?;
    let big_endian = data.starts_with(b"PMDM");
    let read_u32 = |at: usize| -> Result<u32, MinidumpError> {
        let bytes: [u8; 4] = data
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or(MinidumpError::Malformed)?;
        Ok(if big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        })
    };
    let mut ranges = Vec::new();
    let mut protect = |start: u64, len: u64| -> Result<(), MinidumpError> {
        let end = start.checked_add(len).ok_or(MinidumpError::Malformed)?;
        if end > data.len() as u64 {
            // A stream or record past the end: a truncated upload.
            return Err(MinidumpError::Malformed);
        }
        if len > 0 {
            ranges.push((start as usize, end as usize));
        }
        Ok(())
    };
    // Header (32 bytes) and the stream directory (12 bytes per stream).
    protect(0, 32)?;
    let count = u64::from(read_u32(8)?);
    let directory = u64::from(read_u32(12)?);
    protect(directory, count * 12)?;

    for stream in dump.all_streams() {
        let location = stream.location;
        let (rva, size) = (u64::from(location.rva), u64::from(location.data_size));
        if rva.saturating_add(size) > data.len() as u64 {
            return Err(MinidumpError::Malformed);
        }
        if is_structural(stream.stream_type) {
            protect(rva, size)?;
        }
        if stream.stream_type == St::MemoryListStream as u32 {
            // The parser skips regions that point past the end; a truncated upload is refused instead.
            let count = u64::from(read_u32(rva as usize)?);
            if 4 + count * 16 > size {
                return Err(MinidumpError::Malformed);
            }
            for index in 0..count {
                let descriptor = (rva + 4 + index * 16) as usize;
                let (len, at) = (read_u32(descriptor + 8)?, read_u32(descriptor + 12)?);
                if u64::from(at) + u64::from(len) > data.len() as u64 {
                    return Err(MinidumpError::Malformed);
                }
            }
        }
    }
    match dump.get_stream::<MinidumpMemory64List<'_>>() {
        Ok(_) | Err(minidump::Error::StreamNotFound) => {}
        Err(_) => return Err(MinidumpError::Malformed),
    }

    match dump.get_stream::<MinidumpThreadList<'_>>() {
        Ok(threads) => {
            for thread in &threads.threads {
                let context = thread.raw.thread_context;
                protect(u64::from(context.rva), u64::from(context.data_size))?;
                // The stack bytes themselves are memory, read as text; only their bounds are checked here.
                let stack = thread.raw.stack.memory;
                if u64::from(stack.rva) + u64::from(stack.data_size) > data.len() as u64 {
                    return Err(MinidumpError::Malformed);
                }
            }
        }
        Err(minidump::Error::StreamNotFound) => {}
        Err(_) => return Err(MinidumpError::Malformed),
    }
    match dump.get_stream::<MinidumpException<'_>>() {
        Ok(exception) => {
            let context = exception.raw.thread_context;
            protect(u64::from(context.rva), u64::from(context.data_size))?;
        }
        Err(minidump::Error::StreamNotFound) => {}
        Err(_) => return Err(MinidumpError::Malformed),
    }
    match dump.get_stream::<MinidumpModuleList>() {
        Ok(modules) => {
            for module in modules.iter() {
                let name_rva = u64::from(module.raw.module_name_rva);
                let name_len = u64::from(read_u32(name_rva as usize)?);
                // Length prefix, then the basename (after the last `/` or `\`): what symbolication matches on.
                protect(name_rva, 4)?;
                let name = data
                    .get(name_rva as usize + 4..)
                    .and_then(|rest| rest.get(..name_len as usize))
                    .ok_or(MinidumpError::Malformed)?;
                let basename_at = utf16_basename_start(name);
                protect(name_rva + 4 + basename_at as u64, name_len - basename_at as u64)?;

                let cv = module.raw.cv_record;
                if cv.data_size > 0 {
                    protect_codeview(
                        data,
                        u64::from(cv.rva),
                        u64::from(cv.data_size),
                        &read_u32,
                        &mut protect,
                    )?;
                }
            }
        }
        Err(minidump::Error::StreamNotFound) => {}
        Err(_) => return Err(MinidumpError::Malformed),
    }

    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    Ok(merged)
}

/// Streams that are binary structure (ids, addresses, sizes, contexts): never read as text. Everything else is.
/// Public for the fuzz target `minidump`, which checks that these streams come out byte for byte.
pub fn is_structural(stream_type: u32) -> bool {
    const STRUCTURAL: [St; 18] = [
        St::ThreadListStream,
        St::ModuleListStream,
        St::MemoryListStream,
        St::ExceptionStream,
        St::SystemInfoStream,
        St::ThreadExListStream,
        St::Memory64ListStream,
        St::HandleDataStream,
        St::FunctionTable,
        St::UnloadedModuleListStream,
        St::MiscInfoStream,
        St::MemoryInfoListStream,
        St::ThreadInfoListStream,
        St::ThreadNamesStream,
        St::BreakpadInfoStream,
        St::LinuxAuxv,
        St::LinuxDsoDebug,
        St::CrashpadInfoStream,
    ];
    STRUCTURAL.iter().any(|s| *s as u32 == stream_type)
}

/// Keeps a CodeView record's identity (signature, GUID or signature+age, ELF build id) and its path's basename; the
/// directory part of the path stays readable as text.
fn protect_codeview(
    data: &[u8],
    rva: u64,
    size: u64,
    read_u32: &impl Fn(usize) -> Result<u32, MinidumpError>,
    protect: &mut impl FnMut(u64, u64) -> Result<(), MinidumpError>,
) -> Result<(), MinidumpError> {
    if rva.saturating_add(size) > data.len() as u64 {
        return Err(MinidumpError::Malformed);
    }
    let header = match read_u32(rva as usize) {
        Ok(signature) if signature == CvSignature::Pdb70 as u32 => 24,
        Ok(signature) if signature == CvSignature::Pdb20 as u32 => 16,
        // ELF build ids and unknown records are identity through and through.
        _ => size,
    };
    let header = header.min(size);
    protect(rva, header)?;
    let path = &data[(rva + header) as usize..(rva + size) as usize];
    let path_len = path.iter().position(|b| *b == 0).unwrap_or(path.len());
    let basename_at = path[..path_len]
        .iter()
        .rposition(|b| *b == b'/' || *b == b'\\')
        .map_or(0, |i| i + 1);
    protect(rva + header + basename_at as u64, (path_len - basename_at) as u64)
}

/// The byte offset, within a UTF-16LE name, where its basename starts.
fn utf16_basename_start(name: &[u8]) -> usize {
    name.chunks_exact(2)
        .rposition(|unit| unit == [b'/', 0] || unit == [b'\\', 0])
        .map_or(0, |i| (i + 1) * 2)
}

/// Reads one unprotected region as ASCII/UTF-8 runs and as UTF-16LE runs at both alignments, overwriting what the
/// rules find. Returns how many secrets were overwritten.
fn scrub_region(region: &mut [u8], scrubber: &mut Scrubber<'_>) -> u64 {
    let mut spans = Vec::new();
    let mut count = 0;
    count += scrub_utf8_runs(region, scrubber, &mut spans);
    for parity in 0..2 {
        count += scrub_utf16_runs(region, parity, scrubber, &mut spans);
    }
    count
}

fn is_text_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) || b == b'\t' || b >= 0x80
}

/// ASCII and UTF-8 text: runs of printable bytes, NUL-separated records (environment blocks, command lines) each
/// one run.
fn scrub_utf8_runs(region: &mut [u8], scrubber: &mut Scrubber<'_>, spans: &mut Vec<(usize, usize)>) -> u64 {
    let mut count = 0;
    let mut pos = 0;
    // A command-line flag with a sensitive name (`--password`) was the previous NUL-separated record, so this record
    // is its value.
    let mut value_follows = false;
    while pos < region.len() {
        if !is_text_byte(region[pos]) {
            pos += 1;
            continue;
        }
        let start = pos;
        while pos < region.len() && is_text_byte(region[pos]) {
            pos += 1;
        }
        let end = pos;
        let separated_by_one_nul = region.get(end) == Some(&0) && region.get(end + 1).is_some_and(|b| is_text_byte(*b));
        spans.clear();
        let mut flag = false;
        if value_follows && region[start..end].iter().any(|&b| b != FILL) {
            // The whole record is the flag's value.
            spans.push((0, end - start));
            scrubber.record(
                &[Seg::Key("minidump")],
                None,
                "sensitive_key",
                ChangeAction::Replaced,
                &[],
                None,
            );
        } else if end - start >= 2 {
            let mut offset = 0;
            for chunk in region[start..end].utf8_chunks() {
                let text = chunk.valid();
                if text.len() >= MIN_RUN {
                    let before = spans.len();
                    text_spans(text, scrubber, spans);
                    for span in &mut spans[before..] {
                        span.0 += offset;
                        span.1 += offset;
                    }
                }
                flag = text.len() == end - start && is_sensitive_flag(text, scrubber);
                offset += text.len() + chunk.invalid().len();
            }
        }
        value_follows = flag && separated_by_one_nul;
        for &(s, e) in spans.iter() {
            region[start + s..start + e].fill(FILL);
        }
        count += spans.len() as u64;
    }
    count
}

/// UTF-16LE text at one alignment: ASCII, Latin-1 and Latin Extended-A code units (user names in Windows paths are
/// often accented), which is what module names, Windows environment blocks and wide strings in memory hold.
fn scrub_utf16_runs(
    region: &mut [u8],
    parity: usize,
    scrubber: &mut Scrubber<'_>,
    spans: &mut Vec<(usize, usize)>,
) -> u64 {
    let is_text_unit = |u: u16| (0x20..0x7f).contains(&u) || u == 9 || (0xa0..0x180).contains(&u);
    let units = region.len().saturating_sub(parity) / 2;
    let unit_at = |region: &[u8], i: usize| u16::from_le_bytes([region[parity + 2 * i], region[parity + 2 * i + 1]]);
    let mut count = 0;
    let mut text = String::new();
    // For each byte of `text`, the index of the code unit it came from.
    let mut unit_of_byte: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < units {
        if !is_text_unit(unit_at(region, i)) {
            i += 1;
            continue;
        }
        let start = i;
        while i < units && is_text_unit(unit_at(region, i)) {
            i += 1;
        }
        if i - start < MIN_RUN {
            continue;
        }
        text.clear();
        unit_of_byte.clear();
        for unit in start..i {
            // Every accepted unit is a scalar value below U+0180.
            let c = char::from_u32(u32::from(unit_at(region, unit))).unwrap_or('?');
            text.push(c);
            unit_of_byte.resize(text.len(), unit);
        }
        spans.clear();
        text_spans(&text, scrubber, spans);
        for &(s, e) in spans.iter() {
            let (first, last) = (unit_of_byte[s], unit_of_byte[e - 1]);
            for unit in first..=last {
                let at = parity + 2 * unit;
                region[at] = FILL;
                region[at + 1] = 0;
            }
        }
        count += spans.len() as u64;
    }
    count
}

/// The spans of `text` to overwrite: value detectors and sensitive `key=value` pairs, a pair behind a stray byte,
/// and user names in home-directory paths, joined where they overlap and counted by the envelope's scrubber. Appended
/// to `out`.
fn text_spans(text: &str, scrubber: &mut Scrubber<'_>, out: &mut Vec<(usize, usize)>) {
    let path = [Seg::Key("minidump")];
    let mut extra = Vec::new();
    if let Some((start, end)) = leading_pair(text, scrubber) {
        extra.push(ExtraSpan {
            start,
            end,
            rule: "sensitive_key",
            key_value: true,
        });
    }
    // The `user_path` detector only takes paths that start a token. A dump's paths are also nested
    // (`/var/lib/docker/.../home/<user>/` in `maps`, an app unpacked under another root), so when the rules enable
    // it, nested home directories are found here too, under the same rule id. Where the detector ends the name
    // elsewhere (`/home/jane]x` stops it at `]`), the union is masked, so no byte of the name survives to be found
    // on a second look.
    if let Some(rule) = user_path_rule(scrubber) {
        let mut names = Vec::new();
        user_name_spans(text, &mut names);
        extra.extend(names.into_iter().map(|(start, end)| ExtraSpan {
            start,
            end,
            rule,
            key_value: false,
        }));
    }
    scrubber.redaction_spans(text, &path, &extra, out);
}

/// The `user_path` detector's rule id, when the rules enable it.
fn user_path_rule<'e>(scrubber: &Scrubber<'e>) -> Option<&'e str> {
    let engine = scrubber.engine;
    engine
        .detectors
        .detectors
        .iter()
        .find(|d| d.kind == Kind::UserPath)
        .map(|d| d.id.as_str())
}

/// Learned names shorter than this are not masked elsewhere: a two-letter name would hit innocent bytes everywhere.
const MIN_LEARNED_NAME: usize = 3;

/// The user names the dump's own home-directory paths reveal (ASCII, and UTF-16 at both alignments). Memory also
/// holds the bare name (`USER=`, `LOGNAME=`, a shell prompt) and fragments of paths whose start a reused buffer
/// overwrote (`ome/<user>/`): no path pattern finds those, so every occurrence of a learned name is masked too.
fn learned_user_names(data: &[u8]) -> Vec<Vec<u8>> {
    let mut names = std::collections::BTreeSet::new();
    let mut spans = Vec::new();
    let mut collect = |view: &[u8]| {
        for run in view.split(|b| !is_text_byte(*b)).filter(|run| run.len() >= MIN_RUN) {
            let Ok(text) = std::str::from_utf8(run) else { continue };
            spans.clear();
            user_name_spans(text, &mut spans);
            for &(s, e) in &spans {
                let name = &run[s..e];
                if name.len() >= MIN_LEARNED_NAME && name.is_ascii() && !name.contains(&FILL) {
                    names.insert(name.to_vec());
                }
            }
        }
    };
    collect(data);
    for parity in 0..2 {
        // The low bytes of UTF-16 units whose high byte is zero; anything else breaks the run.
        let units = data.get(parity..).unwrap_or_default().chunks_exact(2);
        let low: Vec<u8> = units.map(|unit| if unit[1] == 0 { unit[0] } else { 0 }).collect();
        collect(&low);
    }
    names.into_iter().collect()
}

/// Overwrites every ASCII and UTF-16LE occurrence of the learned user names in `region`. Returns how many.
fn mask_learned_names(region: &mut [u8], names: &[Vec<u8>], rule: &str, scrubber: &mut Scrubber<'_>) -> u64 {
    let mut count = 0;
    for name in names {
        let wide: Vec<u8> = name.iter().flat_map(|&b| [b, 0]).collect();
        for (needle, fill) in [(name.as_slice(), &[FILL][..]), (wide.as_slice(), &[FILL, 0][..])] {
            let hits: Vec<usize> = memchr::memmem::find_iter(region, needle).collect();
            for at in hits {
                for (byte, fill) in region[at..at + needle.len()].iter_mut().zip(fill.iter().cycle()) {
                    *byte = *fill;
                }
                scrubber.record(&[Seg::Key("minidump")], None, rule, ChangeAction::Masked, &[], None);
                count += 1;
            }
        }
    }
    count
}

/// A run cut out of binary data may start with a stray byte (or UTF-16 unit) that happens to be printable, glued to
/// the first key: `tsecret=...` when a `t` sits right before `secret=...`. When the run's first `name=value` pair
/// does not match as it is, its name is tried again without its first one or two characters: the value's span.
fn leading_pair(text: &str, scrubber: &mut Scrubber<'_>) -> Option<(usize, usize)> {
    let eq = text.find('=')?;
    let key = &text[..eq];
    let is_key_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if key.len() < 4 || !key.bytes().all(is_key_char) || scrubber.is_sensitive_key(key) {
        return None;
    }
    let value_len = text[eq + 1..]
        .find(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '&' | ',' | ';' | ')' | ']' | '}' | '"' | '\'' | '<' | '>' | '#' | '|'
                )
        })
        .unwrap_or(text.len() - eq - 1);
    if value_len == 0 {
        return None;
    }
    (1..=2)
        .any(|skip| scrubber.is_sensitive_key(&key[skip..]))
        .then_some((eq + 1, eq + 1 + value_len))
}

/// `--password`, `-token`, `/apikey`: a command-line flag whose name is a sensitive key.
fn is_sensitive_flag(text: &str, scrubber: &mut Scrubber<'_>) -> bool {
    let name = text.trim_start_matches(['-', '/']);
    name.len() < text.len()
        && !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && scrubber.is_sensitive_key(name)
}

/// The user name in home-directory paths: `/home/<user>`, `/Users/<user>`, `C:\Users\<user>` (either slash, any case
/// of `Users`), wherever they start, like Sentry's `@userpath`: a dump's paths are often nested
/// (`/mnt/data/home/<user>/...` in a container). Paths inside URLs (`https://example.com/home/about`) are left alone,
/// and so are the shared profile directories (`Public`, `Shared`, `Default`), which are not user names.
pub fn user_name_spans(text: &str, out: &mut Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let is_name_end = |b: u8| {
        matches!(
            b,
            b'/' | b'\\' | b'"' | b'\'' | b':' | b';' | b' ' | b'\t' | b'=' | b'&' | b'?' | b'>' | b'<' | b'|' | b','
        )
    };
    let mut at = 0;
    while let Some(found) = memchr::memchr2(b'/', b'\\', &bytes[at..]) {
        let slash = at + found;
        at = slash + 1;
        let rest = &bytes[slash..];
        let separator = rest[0];
        let prefix_len = if rest.len() > 6 && rest[5] == separator && rest[1..5].eq_ignore_ascii_case(b"home") {
            6
        } else if rest.len() > 7 && rest[6] == separator && rest[1..6].eq_ignore_ascii_case(b"users") {
            7
        } else {
            continue;
        };
        if in_url(bytes, slash) {
            continue;
        }
        let name_start = slash + prefix_len;
        let name_len = bytes[name_start..]
            .iter()
            .position(|b| is_name_end(*b))
            .unwrap_or(bytes.len() - name_start);
        let name = &text[name_start..name_start + name_len];
        if name_len == 0
            || name.bytes().all(|b| b == FILL)
            || ["public", "shared", "default", "all users", "default user"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s))
        {
            continue;
        }
        out.push((name_start, name_start + name_len));
        at = name_start + name_len;
    }
}

/// Whether the path at `at` is part of a URL: `://` earlier in the same word.
fn in_url(bytes: &[u8], at: usize) -> bool {
    let word_start = bytes[..at]
        .iter()
        .rposition(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'=' | b'(' | b'<'))
        .map_or(0, |i| i + 1);
    memchr::memmem::find(&bytes[word_start..at], b"://").is_some()
}

/// The pipeline's entry for an `event.minidump` attachment: its dump scrubbed (decompressed, and the compression
/// suffix taken off its file name, if it came compressed). A payload that is not a dump this can scrub goes to
/// [`super::text`]: text gets the value detectors, anything else the binary policy. Counts the outcome.
pub fn process(mut item: Item, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    match scrub_within(item.payload(), cx.scrubber, cx.inflate_cap(MAX_INFLATED)) {
        Ok(scrubbed) => {
            let outcome = if scrubbed.redactions > 0 {
                "scrubbed"
            } else {
                "unchanged"
            };
            *cx.report.minidumps.entry(outcome).or_default() += 1;
            if let Some(compression) = scrubbed.compression
                && let Some(Value::String(name)) = item.headers_mut().get_mut("filename")
                && let Some(stripped) = name.strip_suffix(compression.suffix())
            {
                *name = stripped.to_string();
            }
            if let Some(bytes) = scrubbed.bytes {
                item.set_payload(Bytes::from(bytes));
            }
            Some(item)
        }
        Err(MinidumpError::PastInflateCap) => {
            cx.past_inflate_cap();
            Some(item)
        }
        Err(error) => {
            *cx.report.minidumps.entry(error.outcome()).or_default() += 1;
            super::text::process(item, cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::CompiledRules;

    /// A small hand-built Linux minidump: an environment stream, one module with a home-directory path and a PDB70
    /// CodeView record, and one memory region with secrets in ASCII and UTF-16.
    pub(crate) fn synthetic_dump() -> Vec<u8> {
        fn utf16(text: &str) -> Vec<u8> {
            text.encode_utf16().flat_map(u16::to_le_bytes).collect()
        }
        let environ = b"HOME=/home/jane\0API_TOKEN=abc123secret\0LANG=C.UTF-8\0".to_vec();
        let name = utf16("/home/jane/app/libfoo.so");
        let mut cv = b"RSDS".to_vec();
        cv.extend_from_slice(&[0x11; 16]);
        cv.extend_from_slice(&7u32.to_le_bytes());
        cv.extend_from_slice(b"/home/jane/build/libfoo.pdb\0");
        let mut memory = b"\x01\x02password=hunter22\0\0\x07".to_vec();
        memory.extend_from_slice(&utf16("token=wideSecret1"));
        memory.extend_from_slice(b"\0\0 mail jane.roe@example.org \xff");
        // The bare user name, and a path fragment whose start a reused buffer overwrote: no path pattern finds them.
        memory.extend_from_slice(b"\0LOGNAME=jane\0ome/jane/.cache\0");

        let mut out = Vec::new();
        let stream_count = 3u32;
        let directory_rva = 32u32;
        let mut rva = directory_rva + 12 * stream_count;
        let environ_rva = rva;
        rva += environ.len() as u32;
        let modules_rva = rva;
        let modules_len = 4 + 108;
        rva += modules_len;
        let name_rva = rva;
        rva += 4 + name.len() as u32;
        let cv_rva = rva;
        rva += cv.len() as u32;
        let memlist_rva = rva;
        rva += 4 + 16;
        let memory_rva = rva;

        out.extend_from_slice(b"MDMP");
        out.extend_from_slice(&0xa793u32.to_le_bytes());
        out.extend_from_slice(&stream_count.to_le_bytes());
        out.extend_from_slice(&directory_rva.to_le_bytes());
        out.extend_from_slice(&[0; 16]);
        for (ty, size, at) in [
            (St::LinuxEnviron as u32, environ.len() as u32, environ_rva),
            (St::ModuleListStream as u32, modules_len, modules_rva),
            (St::MemoryListStream as u32, 20, memlist_rva),
        ] {
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&at.to_le_bytes());
        }
        out.extend_from_slice(&environ);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x7f00_0000_0000u64.to_le_bytes());
        out.extend_from_slice(&0x1000u32.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&name_rva.to_le_bytes());
        out.extend_from_slice(&[0; 52]);
        out.extend_from_slice(&(cv.len() as u32).to_le_bytes());
        out.extend_from_slice(&cv_rva.to_le_bytes());
        out.extend_from_slice(&[0; 24]);
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&name);
        out.extend_from_slice(&cv);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x5555_0000u64.to_le_bytes());
        out.extend_from_slice(&(memory.len() as u32).to_le_bytes());
        out.extend_from_slice(&memory_rva.to_le_bytes());
        out.extend_from_slice(&memory);
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        memchr::memmem::find(haystack, needle).is_some()
    }

    fn utf16(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn scrub_defaults(data: &[u8]) -> (Result<Scrubbed, MinidumpError>, crate::scrub::Tally) {
        let rules = CompiledRules::defaults();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let result = scrub(data, &mut scrubber);
        (result, scrubber.into_tally())
    }

    #[test]
    fn secrets_are_overwritten_in_place_and_structure_is_kept() {
        let original = synthetic_dump();
        assert!(Minidump::read(&original[..]).is_ok(), "the fixture is a minidump");
        let (result, tally) = scrub_defaults(&original);
        let scrubbed = result.unwrap().bytes.expect("something changed");
        assert_eq!(scrubbed.len(), original.len(), "same length");
        assert_eq!(scrubbed[..68], original[..68], "header and directory untouched");
        for secret in ["abc123secret", "hunter22", "jane.roe", "/home/jane"] {
            assert!(contains(&original, secret.as_bytes()));
            assert!(!contains(&scrubbed, secret.as_bytes()), "{secret} is gone");
        }
        for secret in ["wideSecret1", "/home/jane"] {
            assert!(!contains(&scrubbed, &utf16(secret)), "{secret} is gone in UTF-16");
        }
        assert!(contains(&scrubbed, b"LANG=C.UTF-8\0"), "innocent variables stay");
        assert!(contains(&scrubbed, b"API_TOKEN="), "names stay, values go");
        assert!(
            !contains(&scrubbed, b"jane"),
            "the user name learned from a home path is gone everywhere"
        );
        assert!(
            contains(&scrubbed, b"LOGNAME=****\0ome/****/.cache"),
            "only the name is masked"
        );

        let dump = Minidump::read(&scrubbed[..]).unwrap();
        let modules = dump.get_stream::<MinidumpModuleList>().unwrap();
        let module = modules.iter().next().unwrap();
        use minidump::Module as _;
        assert_eq!(
            module.code_file(),
            "/home/****/app/libfoo.so",
            "basename and other directories stay"
        );
        assert_eq!(module.debug_file().as_deref(), Some("/home/****/build/libfoo.pdb"));
        let original_dump = Minidump::read(&original[..]).unwrap();
        let original_modules = original_dump.get_stream::<MinidumpModuleList>().unwrap();
        let original_module = original_modules.iter().next().unwrap();
        assert_eq!(
            module.debug_identifier(),
            original_module.debug_identifier(),
            "GUID and age stay"
        );
        assert!(tally.redactions.get(USERPATH_RULE).copied().unwrap_or(0) >= 3);
        assert!(tally.redactions.get("sensitive_key").copied().unwrap_or(0) >= 3);
    }

    #[test]
    fn an_innocent_dump_is_left_byte_identical() {
        let mut data = synthetic_dump();
        // Make every secret innocent: same shape, no rule matches.
        for (from, to) in [
            (&b"/home/jane"[..], &b"/opt/jane1"[..]),
            (b"API_TOKEN=abc123secret", b"API_COLOR=abc123secret"),
            (b"password=hunter22", b"language=hunter22"),
            (b"jane.roe@example.org", b"jane.roe-example.org"),
        ] {
            while let Some(at) = memchr::memmem::find(&data, from) {
                data[at..at + from.len()].copy_from_slice(to);
            }
        }
        let wide_from = utf16("token=wideSecret1");
        let wide_to = utf16("color=wideSecret1");
        let at = memchr::memmem::find(&data, &wide_from).unwrap();
        data[at..at + wide_from.len()].copy_from_slice(&wide_to);
        let wide_from = utf16("/home/jane");
        let wide_to = utf16("/opt/jane1");
        let at = memchr::memmem::find(&data, &wide_from).unwrap();
        data[at..at + wide_from.len()].copy_from_slice(&wide_to);

        let (result, _) = scrub_defaults(&data);
        let scrubbed = result.unwrap();
        assert_eq!(scrubbed.redactions, 0);
        assert!(scrubbed.bytes.is_none(), "nothing to rewrite");
    }

    #[test]
    fn compressed_dumps_are_decompressed_under_the_cap() {
        use std::io::Write;
        let original = synthetic_dump();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&original).unwrap();
        let gz = gz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&original).unwrap();
        let bz = bz.finish().unwrap();
        let zst = zstd::encode_all(&original[..], 3).unwrap();
        for (compressed, expected) in [
            (gz, Compression::Gzip),
            (bz, Compression::Bzip2),
            (zst, Compression::Zstd),
        ] {
            let (result, _) = scrub_defaults(&compressed);
            let scrubbed = result.unwrap();
            assert_eq!(scrubbed.compression, Some(expected));
            let bytes = scrubbed.bytes.unwrap();
            assert_eq!(bytes.len(), original.len(), "{expected:?}: forwarded decompressed");
            assert!(!contains(&bytes, b"hunter22"));
        }
        // xz: the magic is recognised; a stream that is not xz after it is refused, not passed on.
        let (result, _) = scrub_defaults(b"\xfd7zXZ\0garbage");
        assert_eq!(result.unwrap_err(), MinidumpError::BadCompression);
        let (result, _) = scrub_defaults(b"\x1f\x8b\x08\0garbage");
        assert_eq!(result.unwrap_err(), MinidumpError::BadCompression);
    }

    #[test]
    fn malformed_dumps_are_refused() {
        let original = synthetic_dump();
        let (result, _) = scrub_defaults(b"PK\x03\x04 not a dump at all");
        assert_eq!(result.unwrap_err(), MinidumpError::NotMinidump);
        let (result, _) = scrub_defaults(b"MDM");
        assert_eq!(result.unwrap_err(), MinidumpError::NotMinidump);
        // Every truncation: refused (or, when only the trailing memory is cut, still refused because a stream points
        // past the end), never a panic.
        for cut in 4..original.len() {
            let (result, _) = scrub_defaults(&original[..cut]);
            assert_eq!(result.unwrap_err(), MinidumpError::Malformed, "cut at {cut}");
        }
        // Directory entries pointing anywhere: no panic.
        let mut data = original.clone();
        for rva_at in [40usize, 52, 64] {
            data[rva_at..rva_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            let (result, _) = scrub_defaults(&data);
            assert!(result.is_err());
        }
    }

    #[test]
    fn a_user_name_the_detector_ends_early_is_masked_whole() {
        // Found by the `minidump` fuzz target: the `user_path` detector ends the name at `]`, the nested-path scan at
        // `=`; the scan's span overlapped the detector's and was dropped, so `]` stayed for a second pass to mask.
        let rules = CompiledRules::from_yaml(include_str!("../../rules.yaml")).unwrap();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut region = b"\0HOME=/home/janportI_TOKEN]=abc\0".to_vec();
        scrub_region(&mut region, &mut scrubber);
        assert_eq!(&region[..], b"\0HOME=/home/***************=abc\0");
    }

    #[test]
    fn a_value_whose_end_a_user_name_covers_runs_on() {
        // Found by the `minidump` fuzz target (regressions/minidump/key-value-end-covered-by-user-name): the
        // `password=` value ended at `#`, the home-directory name after `/home/` ran over it to the next `/`, and the
        // union was masked; in the forwarded bytes nothing ended the value any more, so a second pass masked the
        // `/home/` after it. The value now runs on to where a second reading ends it, here the end of the record.
        let rules = CompiledRules::defaults();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut region = b"\0password=hunter22++/home/*#**+4+/home/****++\0".to_vec();
        scrub_region(&mut region, &mut scrubber);
        assert_eq!(&region[..], b"\0password=***********************************\0");
        let once = region.clone();
        scrub_region(&mut region, &mut scrubber);
        assert_eq!(region, once, "a second pass changes nothing");
    }

    #[test]
    fn a_stray_byte_pair_is_read_beside_other_matches() {
        // `xtoken=` is no sensitive key, `token=` is: the stray-byte retry used to run only when nothing else in the
        // record matched, so an address elsewhere in it let the value through.
        let rules = CompiledRules::defaults();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut region = b"\0xtoken=Pl4ntedValue mail jane.roe@example.org\0".to_vec();
        scrub_region(&mut region, &mut scrubber);
        assert_eq!(&region[..], b"\0xtoken=************ mail ********@example.org\0");
    }

    #[test]
    fn user_names_in_home_paths() {
        let spans = |text: &str| {
            let mut out = Vec::new();
            user_name_spans(text, &mut out);
            out.iter().map(|&(s, e)| text[s..e].to_string()).collect::<Vec<_>>()
        };
        assert_eq!(spans("/home/jane/app/bin"), ["jane"]);
        assert_eq!(spans("HOME=/home/jane"), ["jane"]);
        assert_eq!(spans("/Users/jane.doe/Library"), ["jane.doe"]);
        assert_eq!(spans(r"C:\Users\José\AppData\app.exe"), ["José"]);
        assert_eq!(spans(r"c:/users/jane/x"), ["jane"]);
        assert_eq!(spans("/tmp/x/home/jane/bin"), ["jane"]);
        assert_eq!(spans("PATH=/usr/bin:/home/jane/.cargo/bin"), ["jane"]);
        assert!(spans("https://example.com/home/about").is_empty(), "URLs stay");
        assert!(spans(r"C:\Users\Public\Desktop").is_empty());
        assert!(spans("/home/").is_empty());
        assert!(spans("/homework/jane/").is_empty());
        assert!(spans("/home/****/x").is_empty(), "already scrubbed");
    }

    #[test]
    fn a_stray_byte_before_a_pair_does_not_hide_it() {
        let rules = CompiledRules::defaults();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut region = b"\x01tsecret=Pl4nted\0\x02xtoken=abc123\0\x03author=Jane Doe\0".to_vec();
        scrub_utf8_runs(&mut region, &mut scrubber, &mut Vec::new());
        assert_eq!(
            &region[..],
            &b"\x01tsecret=*******\0\x02xtoken=******\0\x03author=Jane Doe\0"[..]
        );
        let mut wide: Vec<u8> = b"text\0".to_vec();
        wide.extend(utf16("secret=Pl4ntedWide"));
        scrub_utf16_runs(&mut wide, 1, &mut scrubber, &mut Vec::new());
        assert!(!contains(&wide, &utf16("Pl4ntedWide")));
    }

    #[test]
    fn sensitive_flags_take_their_value_with_them() {
        let rules = CompiledRules::defaults();
        let mut scrubber = Scrubber::new(rules.engine(None), false);
        let mut cmdline = b"/usr/bin/app\0--api-key\0Pl4ntedArgKey\0--verbose\0keep-this-arg\0".to_vec();
        scrub_utf8_runs(&mut cmdline, &mut scrubber, &mut Vec::new());
        assert_eq!(
            &cmdline[..],
            &b"/usr/bin/app\0--api-key\0*************\0--verbose\0keep-this-arg\0"[..]
        );
    }
}
