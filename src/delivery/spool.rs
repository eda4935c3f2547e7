//! The disk spool: scrubbed envelopes waiting for the upstream, one file each, so they survive a restart or a crash.
//!
//! # Layout
//!
//! ```text
//! <spool-dir>/00000000000000000042-1763884800123.spool   sequence number - arrival time (unix ms)
//! <spool-dir>/00000000000000000043-1763884800456.spool.tmp   being written; never read, removed at start
//! <spool-dir>/corrupt/...                                  entries that failed their checks, kept for inspection
//! ```
//!
//! The zero-padded sequence number makes lexical order arrival order, and the arrival time in the name gives an
//! entry's age without opening it. An entry is written to `*.tmp`, fsynced, renamed into place and the directory
//! fsynced, so a crash at any point leaves either a complete entry or a `.tmp` file, never a half entry under a valid
//! name. An entry is deleted only after the upstream accepted it (or it was given up on), so delivery is
//! at-least-once across crashes.
//!
//! # Entry format (versions 1 and 2, little-endian)
//!
//! ```text
//! 0   4  magic "SRSP"
//! 4   1  version: 1 for an envelope, 2 for another destination
//! 5   1  version 2: the destination (`Destination::code`); version 1: zero
//! 6   2  reserved, zero
//! 8   4  crc32 of every byte from offset 12 to the end (version 2: of bytes 4..8, then 12 to the end)
//! 12  8  arrival time, unix milliseconds
//! 20  8  project id
//! 28  4  uncompressed envelope length
//! 32  .. public key, sentry_client, user agent, forwarded-for: each a u32 length (u32::MAX = absent) + UTF-8 bytes
//! ..  .. the envelope, lz4 block-compressed
//! ```
//!
//! Envelopes are still written as version 1, byte for byte what earlier releases wrote, so a downgrade reads them.
//! OTLP and NEL bodies are version 2: an earlier release moves them aside as corrupt (kept, not misdelivered to the
//! envelope endpoint) instead of reading them as envelopes.
//!
//! Only scrubbed envelopes are ever written here. The files are created with the process umask; the directory should
//! be private to the relay.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};

use super::{Destination, Job};

const MAGIC: &[u8; 4] = b"SRSP";
const VERSION: u8 = 1;
/// Entries for a destination other than the envelope endpoint.
const VERSION_DESTINATION: u8 = 2;
const FIXED_HEADER: usize = 32;
const EXTENSION: &str = "spool";
const TMP_EXTENSION: &str = "tmp";
const CORRUPT_DIR: &str = "corrupt";
/// Largest envelope the spool will decompress: above Sentry's 200 MiB envelope limit, so it only guards against a
/// length field that is wrong in a way the checksum did not catch.
const MAX_ENVELOPE_BYTES: usize = 256 * 1024 * 1024;

/// Where the spool lives and how much it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Total size of the entry files. When reached, new envelopes stay in memory or are refused (503).
    pub max_bytes: u64,
}

/// The spool's gauges and counters, cloned from `Metrics`.
#[derive(Clone)]
pub struct SpoolMetrics {
    pub envelopes: IntGauge,
    pub bytes: IntGauge,
    pub corrupt: IntCounter,
}

/// Why an entry could not be read back. Names the check that failed, never the content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CorruptEntry {
    #[error("entry is shorter than its header")]
    Truncated,
    #[error("bad magic bytes")]
    BadMagic,
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("checksum mismatch")]
    Checksum,
    #[error("header field out of bounds")]
    BadField,
    #[error("declared envelope size {0} exceeds the limit")]
    TooLarge(usize),
    #[error("payload does not decompress to the declared size")]
    BadPayload,
}

/// Why an entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolWriteError {
    #[error("spool is full")]
    Full,
    #[error("spool write failed")]
    Io(#[source] io::Error),
}

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpoolReadError {
    #[error("spool entry is corrupt: {0}")]
    Corrupt(CorruptEntry),
    #[error("spool read failed")]
    Io(#[source] io::Error),
}

/// An entry handed to one worker; nobody else reads it until it is released or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub seq: u64,
    pub received_ms: u64,
    path: PathBuf,
}

#[derive(Debug)]
struct Slot {
    path: PathBuf,
    bytes: u64,
    received_ms: u64,
    /// Being written, or handed to a worker.
    busy: bool,
}

#[derive(Debug, Default)]
struct Index {
    slots: BTreeMap<u64, Slot>,
    bytes: u64,
    /// A write was refused for lack of room and nothing was removed since: full for practical purposes, even if a
    /// few bytes are left.
    refused_since_removal: bool,
}

/// What opening the spool found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub entries: usize,
    pub bytes: u64,
    pub removed_tmp: usize,
    pub moved_aside: usize,
}

/// Fails unless a file can be created in `dir`. An existing directory the relay cannot write in (a read-only mount,
/// another owner) would otherwise only show when the upstream is down and the first envelope has to be spooled.
fn check_writable(dir: &Path) -> io::Result<()> {
    // A `.tmp` name: if the process dies between the two calls, the next `open` removes the leftover.
    let probe = dir.join(format!("write-check.{TMP_EXTENSION}"));
    fs::File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|error| io::Error::new(error.kind(), format!("cannot create a file in it ({error})")))
}

/// The spool directory and an in-memory index of its entries. All methods do blocking file I/O; async callers run
/// them on the blocking pool.
pub struct Spool {
    config: SpoolConfig,
    index: Mutex<Index>,
    metrics: SpoolMetrics,
}

impl Spool {
    /// Opens (creating if needed) the spool directory, removes `.tmp` leftovers of interrupted writes, moves files
    /// with unexpected names aside, and indexes the entries. Entry contents are checked when they are read.
    pub fn open(config: SpoolConfig, metrics: SpoolMetrics) -> io::Result<(Spool, OpenReport)> {
        fs::create_dir_all(&config.dir)?;
        check_writable(&config.dir)?;
        let mut index = Index::default();
        let mut report = OpenReport::default();
        for dirent in fs::read_dir(&config.dir)? {
            let dirent = dirent?;
            if !dirent.file_type()?.is_file() {
                continue;
            }
            let path = dirent.path();
            let name = dirent.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(&format!(".{TMP_EXTENSION}")) {
                // Never acknowledged: the rename that makes an entry valid happens before the SDK gets its 200.
                fs::remove_file(&path)?;
                report.removed_tmp += 1;
                continue;
            }
            match parse_name(&name) {
                Some((seq, received_ms)) => {
                    let bytes = dirent.metadata()?.len();
                    index.bytes += bytes;
                    index.slots.insert(
                        seq,
                        Slot {
                            path,
                            bytes,
                            received_ms,
                            busy: false,
                        },
                    );
                }
                None => {
                    move_aside(&config.dir, &path)?;
                    metrics.corrupt.inc();
                    report.moved_aside += 1;
                    tracing::warn!(file = %name, "moved a file with an unexpected name out of the spool");
                }
            }
        }
        report.entries = index.slots.len();
        report.bytes = index.bytes;
        let spool = Spool {
            config,
            index: Mutex::new(index),
            metrics,
        };
        spool.publish(&spool.lock());
        Ok((spool, report))
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// The sequence number after the newest entry, so numbering continues across restarts.
    pub fn next_seq(&self) -> u64 {
        self.lock().slots.keys().next_back().map_or(0, |seq| seq + 1)
    }

    /// Number of entries, including those being written or sent.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the spool has reached its size cap, or refused a write and has not freed anything since.
    pub fn is_full(&self) -> bool {
        let index = self.lock();
        index.bytes >= self.config.max_bytes || index.refused_since_removal
    }

    /// Writes `job` as entry `seq`, durably: when this returns `Ok`, the entry survives a crash.
    pub fn write(&self, seq: u64, job: &Job) -> Result<(), SpoolWriteError> {
        self.write_inner(seq, job, false).map(|_| ())
    }

    /// Like [`Spool::write`], and the entry stays leased to the caller (it is held back, not free for others).
    pub fn write_leased(&self, seq: u64, job: &Job) -> Result<Lease, SpoolWriteError> {
        self.write_inner(seq, job, true)
    }

    fn write_inner(&self, seq: u64, job: &Job, keep_leased: bool) -> Result<Lease, SpoolWriteError> {
        let encoded = encode(job);
        let bytes = encoded.len() as u64;
        let received_ms = unix_ms(job.received_at);
        let path = self.config.dir.join(entry_name(seq, received_ms));
        {
            let mut index = self.lock();
            if index.bytes + bytes > self.config.max_bytes {
                index.refused_since_removal = true;
                return Err(SpoolWriteError::Full);
            }
            // Reserve the space and the name before writing, so concurrent writers cannot overshoot the cap.
            index.bytes += bytes;
            index.slots.insert(
                seq,
                Slot {
                    path: path.clone(),
                    bytes,
                    received_ms,
                    busy: true,
                },
            );
            self.publish(&index);
        }
        match write_atomically(&self.config.dir, &path, &encoded) {
            Ok(()) => {
                if let Some(slot) = self.lock().slots.get_mut(&seq) {
                    slot.busy = keep_leased;
                }
                Ok(Lease { seq, received_ms, path })
            }
            Err(error) => {
                self.forget(seq);
                Err(SpoolWriteError::Io(error))
            }
        }
    }

    /// Hands out the oldest entry nobody else holds.
    pub fn lease_next(&self) -> Option<Lease> {
        let mut index = self.lock();
        let (seq, slot) = index.slots.iter_mut().find(|(_, slot)| !slot.busy)?;
        slot.busy = true;
        Some(Lease {
            seq: *seq,
            received_ms: slot.received_ms,
            path: slot.path.clone(),
        })
    }

    /// Reads and checks a leased entry. A corrupt entry is moved to `corrupt/` and counted; the lease ends.
    pub fn read(&self, lease: &Lease) -> Result<Job, SpoolReadError> {
        let data = match fs::read(&lease.path) {
            Ok(data) => data,
            Err(error) => {
                // The file vanished or cannot be read: nothing left to deliver from it; forget it so it is not retried
                // forever. Counted as corrupt because an acknowledged entry was lost.
                self.forget(lease.seq);
                self.metrics.corrupt.inc();
                return Err(SpoolReadError::Io(error));
            }
        };
        decode(&data).map_err(|corrupt| {
            let moved = move_aside(&self.config.dir, &lease.path);
            self.forget(lease.seq);
            self.metrics.corrupt.inc();
            tracing::warn!(
                file = %lease.path.file_name().unwrap_or_default().to_string_lossy(),
                reason = %corrupt,
                moved_aside = moved.is_ok(),
                "spool entry is corrupt; moved to the corrupt/ directory"
            );
            SpoolReadError::Corrupt(corrupt)
        })
    }

    /// Ends a lease without removing the entry: it is handed out again, in order.
    pub fn release(&self, seq: u64) {
        if let Some(slot) = self.lock().slots.get_mut(&seq) {
            slot.busy = false;
        }
    }

    /// Deletes a delivered (or given up) entry.
    pub fn remove(&self, seq: u64) -> io::Result<()> {
        let path = self.lock().slots.get(&seq).map(|slot| slot.path.clone());
        let result = match path {
            Some(path) => match fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            },
            None => Ok(()),
        };
        self.forget(seq);
        result
    }

    fn forget(&self, seq: u64) {
        let mut index = self.lock();
        if let Some(slot) = index.slots.remove(&seq) {
            index.bytes -= slot.bytes;
            index.refused_since_removal = false;
        }
        self.publish(&index);
    }

    fn publish(&self, index: &Index) {
        self.metrics
            .envelopes
            .set(i64::try_from(index.slots.len()).unwrap_or(i64::MAX));
        self.metrics.bytes.set(i64::try_from(index.bytes).unwrap_or(i64::MAX));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // Every update leaves the index consistent before the next one starts, so a poisoned lock is still usable.
        self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn entry_name(seq: u64, received_ms: u64) -> String {
    format!("{seq:020}-{received_ms:013}.{EXTENSION}")
}

/// `(seq, received_ms)` from an entry file name, or `None` for any other name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(&format!(".{EXTENSION}"))?;
    let (seq, received) = stem.split_once('-')?;
    if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) || !received.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq.parse().ok()?, received.parse().ok()?))
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp_path = path.as_os_str().to_owned();
    tmp_path.push(format!(".{TMP_EXTENSION}"));
    let tmp_path = PathBuf::from(tmp_path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp_path)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp_path, path)?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

fn move_aside(dir: &Path, path: &Path) -> io::Result<()> {
    let corrupt = dir.join(CORRUPT_DIR);
    fs::create_dir_all(&corrupt)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("spool path without a file name"))?;
    fs::rename(path, corrupt.join(name))
}

/// Serializes a job into the entry format above.
pub fn encode(job: &Job) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(&job.envelope);
    let forwarded_for = job.forwarded_for.map(|ip| ip.to_string());
    let strings = [
        Some(job.public_key.as_str()),
        job.sentry_client.as_deref(),
        job.user_agent.as_deref(),
        forwarded_for.as_deref(),
    ];
    let strings_len: usize = strings.iter().map(|s| 4 + s.map_or(0, str::len)).sum();
    let mut out = Vec::with_capacity(FIXED_HEADER + strings_len + compressed.len());
    out.extend_from_slice(MAGIC);
    if job.destination == Destination::Envelope {
        out.push(VERSION);
    } else {
        out.push(VERSION_DESTINATION);
    }
    out.extend_from_slice(&[job.destination.code(), 0, 0]);
    out.extend_from_slice(&[0; 4]); // checksum, filled in below
    out.extend_from_slice(&unix_ms(job.received_at).to_le_bytes());
    out.extend_from_slice(&job.project_id.to_le_bytes());
    // Envelopes are capped far below 4 GiB at ingest.
    out.extend_from_slice(&u32::try_from(job.envelope.len()).unwrap_or(u32::MAX).to_le_bytes());
    for string in strings {
        match string {
            Some(s) => {
                out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX - 1).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out.extend_from_slice(&compressed);
    let crc = checksum(&out);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The entry's crc32. Version 2 covers its destination byte too: a flipped bit there must not send a body to another
/// route.
fn checksum(entry: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if entry[4] == VERSION_DESTINATION {
        hasher.update(&entry[4..8]);
    }
    hasher.update(&entry[12..]);
    hasher.finalize()
}

/// Parses and checks an entry. Every length is checked against what is there before it is used.
pub fn decode(data: &[u8]) -> Result<Job, CorruptEntry> {
    if data.len() < FIXED_HEADER {
        return Err(CorruptEntry::Truncated);
    }
    if &data[0..4] != MAGIC {
        return Err(CorruptEntry::BadMagic);
    }
    let destination = match data[4] {
        VERSION => Destination::Envelope,
        VERSION_DESTINATION => Destination::from_code(data[5]).ok_or(CorruptEntry::BadField)?,
        version => return Err(CorruptEntry::UnsupportedVersion(version)),
    };
    let stored_crc = u32::from_le_bytes(data[8..12].try_into().map_err(|_| CorruptEntry::Truncated)?);
    if checksum(data) != stored_crc {
        return Err(CorruptEntry::Checksum);
    }
    let mut reader = Reader { data, pos: 12 };
    let received_ms = reader.u64()?;
    let project_id = reader.u64()?;
    let envelope_len = reader.u32()? as usize;
    if envelope_len > MAX_ENVELOPE_BYTES {
        return Err(CorruptEntry::TooLarge(envelope_len));
    }
    let public_key = reader.string()?.ok_or(CorruptEntry::BadField)?;
    let sentry_client = reader.string()?;
    let user_agent = reader.string()?;
    let forwarded_for = match reader.string()? {
        Some(ip) => Some(ip.parse().map_err(|_| CorruptEntry::BadField)?),
        None => None,
    };
    let compressed = &data[reader.pos..];
    let envelope = lz4_flex::block::decompress(compressed, envelope_len).map_err(|_| CorruptEntry::BadPayload)?;
    if envelope.len() != envelope_len {
        return Err(CorruptEntry::BadPayload);
    }
    Ok(Job {
        project_id,
        public_key,
        sentry_client,
        user_agent,
        forwarded_for,
        envelope: Bytes::from(envelope),
        encoded: None,
        received_at: UNIX_EPOCH + Duration::from_millis(received_ms),
        destination,
    })
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CorruptEntry> {
        let end = self.pos.checked_add(n).ok_or(CorruptEntry::BadField)?;
        let slice = self.data.get(self.pos..end).ok_or(CorruptEntry::BadField)?;
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, CorruptEntry> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| CorruptEntry::BadField)?,
        ))
    }

    fn u64(&mut self) -> Result<u64, CorruptEntry> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| CorruptEntry::BadField)?,
        ))
    }

    fn string(&mut self) -> Result<Option<String>, CorruptEntry> {
        let len = self.u32()?;
        if len == u32::MAX {
            return Ok(None);
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| CorruptEntry::BadField)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(body: &'static [u8]) -> Job {
        Job {
            project_id: 42,
            public_key: "e12d836b15bb49d7bbf99e64295d995b".into(),
            sentry_client: Some("sentry.python/2.40.0".into()),
            user_agent: None,
            forwarded_for: Some(std::net::IpAddr::from([10, 0, 0, 1])),
            envelope: Bytes::from_static(body),
            encoded: None,
            received_at: UNIX_EPOCH + Duration::from_millis(1_763_884_800_123),
            destination: Destination::Envelope,
        }
    }

    fn metrics() -> SpoolMetrics {
        let m = crate::metrics::Metrics::new();
        SpoolMetrics {
            envelopes: m.spool_envelopes.clone(),
            bytes: m.spool_bytes.clone(),
            corrupt: m.spool_corrupt.clone(),
        }
    }

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn entry_round_trips() {
        let original = job(b"{\"event_id\":\"abc\"}\n{\"type\":\"event\",\"length\":2}\n{}\n");
        let decoded = decode(&encode(&original)).expect("valid entry");
        assert_eq!(decoded, original);
    }

    #[test]
    fn other_destinations_round_trip_as_version_2() {
        use crate::otlp::Encoding;
        for destination in [
            Destination::OtlpTraces(Encoding::Protobuf),
            Destination::OtlpTraces(Encoding::Json),
            Destination::OtlpLogs(Encoding::Protobuf),
            Destination::OtlpLogs(Encoding::Json),
            Destination::Nel,
        ] {
            let original = Job {
                destination,
                ..job(b"\x0a\x02\x0a\x00")
            };
            let encoded = encode(&original);
            assert_eq!(encoded[4], VERSION_DESTINATION);
            assert_eq!(decode(&encoded).expect("valid entry"), original);
            let mut flipped = encoded.clone();
            flipped[5] ^= 0x02;
            assert!(decode(&flipped).is_err(), "the destination byte is checksummed");
        }
        let envelope = encode(&job(b"{}\n"));
        assert_eq!((envelope[4], envelope[5]), (VERSION, 0), "envelopes stay version 1");
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_detected() {
        let encoded = encode(&job(b"{}\n{\"type\":\"event\",\"length\":2}\n{}\n"));
        for len in 0..encoded.len() {
            assert!(
                decode(&encoded[..len]).is_err(),
                "truncated to {len} bytes must not decode"
            );
        }
        for pos in 0..encoded.len() {
            if (5..8).contains(&pos) {
                continue; // reserved bytes are not checked
            }
            let mut flipped = encoded.clone();
            flipped[pos] ^= 0x10;
            assert!(decode(&flipped).is_err(), "a flipped bit at byte {pos} must not decode");
        }
    }

    #[test]
    fn names_sort_in_arrival_order() {
        let a = entry_name(9, 1_763_884_800_000);
        let b = entry_name(10, 1_000);
        assert!(a < b, "sequence decides, not time");
        assert_eq!(parse_name(&a), Some((9, 1_763_884_800_000)));
        assert_eq!(parse_name("9-1.spool"), None);
        assert_eq!(parse_name(&format!("{a}.tmp")), None);
    }

    #[test]
    fn write_lease_remove_and_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = metrics();
        let (spool, report) = Spool::open(config(dir.path()), metrics.clone()).expect("open");
        assert_eq!(report, OpenReport::default());
        for seq in [3, 1, 2] {
            spool.write(seq, &job(b"{}\n")).expect("write");
        }
        assert_eq!(metrics.envelopes.get(), 3);
        let first = spool.lease_next().expect("an entry");
        assert_eq!(first.seq, 1, "oldest first");
        assert_eq!(
            spool.lease_next().map(|l| l.seq),
            Some(2),
            "a leased entry is not handed out twice"
        );
        spool.release(1);
        assert_eq!(
            spool.lease_next().map(|l| l.seq),
            Some(1),
            "a released entry comes back in order"
        );
        assert_eq!(spool.read(&first).expect("readable"), job(b"{}\n"));
        spool.remove(1).expect("remove");
        assert_eq!(metrics.envelopes.get(), 2);
        drop(spool);

        // A leftover temp file from an interrupted write is removed; entries survive a reopen.
        fs::write(dir.path().join(format!("{}.tmp", entry_name(7, 1))), b"half").expect("write tmp");
        let (spool, report) = Spool::open(config(dir.path()), metrics.clone()).expect("reopen");
        assert_eq!(report.entries, 2);
        assert_eq!(report.removed_tmp, 1);
        assert_eq!(spool.next_seq(), 4);
        assert_eq!(spool.lease_next().map(|l| l.seq), Some(2));
        assert_eq!(metrics.bytes.get() as u64, report.bytes);
    }

    #[test]
    fn corrupt_entries_are_moved_aside_and_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = metrics();
        let (spool, _) = Spool::open(config(dir.path()), metrics.clone()).expect("open");
        spool.write(1, &job(b"{}\n")).expect("write");
        spool.write(2, &job(b"{}\n")).expect("write");
        let path = dir.path().join(entry_name(1, unix_ms(job(b"").received_at)));
        let data = fs::read(&path).expect("read");
        fs::write(&path, &data[..data.len() - 3]).expect("truncate");

        let lease = spool.lease_next().expect("entry 1");
        assert!(matches!(
            spool.read(&lease),
            Err(SpoolReadError::Corrupt(CorruptEntry::Checksum))
        ));
        assert_eq!(metrics.corrupt.get(), 1);
        assert!(
            dir.path().join(CORRUPT_DIR).join(path.file_name().unwrap()).exists(),
            "kept for inspection"
        );
        assert_eq!(spool.len(), 1);
        let lease = spool.lease_next().expect("entry 2 still delivers");
        assert_eq!(lease.seq, 2);
        assert!(spool.read(&lease).is_ok());
    }

    #[test]
    fn size_cap_refuses_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let entry = encode(&job(b"{}\n")).len() as u64;
        let config = SpoolConfig {
            max_bytes: entry * 2,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(config, metrics()).expect("open");
        spool.write(1, &job(b"{}\n")).expect("fits");
        assert!(!spool.is_full());
        spool.write(2, &job(b"{}\n")).expect("fits exactly");
        assert!(spool.is_full());
        assert!(matches!(spool.write(3, &job(b"{}\n")), Err(SpoolWriteError::Full)));
        assert_eq!(spool.len(), 2, "a refused write leaves no trace");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        spool.remove(1).expect("remove");
        assert!(!spool.is_full(), "room again");
    }
}
