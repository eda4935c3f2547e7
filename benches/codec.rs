//! Per-envelope costs outside the scrub (issue #11): compression to the upstream, decompression of the SDK's body,
//! the reply to the SDK and the upstream request's URL. Each relay path is measured next to the alternative it was
//! chosen over, on the real SDK captures (`tests/fixtures/sdk/`, decompressed).
//!
//! - `gzip/*`, `zstd/*`: compressing one envelope for the upstream.
//! - `inflate/*`: decoding one gzip body as it came from an SDK.
//! - `reply/*`, `url/*`: the small allocations of every request.
//!
//! CPU time of the bench thread, as in `benches/scrub.rs` (`SCRUB_BENCH_WALL_TIME=1` for wall time). On a shared
//! machine the times move by 20-30 % from run to run; instruction counts do not: `CODEC_COUNT=<variant>:<n>` runs
//! one variant `n` times on the python event and exits, so the difference of two callgrind totals is the per-call
//! count (`rep stosb` memsets count one instruction per byte there, so a large memset looks dearer than it is).
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`, or
//! `CODEC_COUNT=gzip1_relay:101 valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/codec-<hash>`
//! minus the same with `:1`.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::PathBuf;

use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use scrub_relay::config::UpstreamEncoding;
use scrub_relay::decode::{self, ContentEncoding};

#[path = "support/thread_cpu_time.rs"]
mod thread_cpu_time;
use thread_cpu_time::ThreadCpuTime;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdk")
}

/// (label, body as sent, decompressed body) of every gzip capture, and the python error event alone.
fn captures() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".body").map(str::to_owned))
        .collect();
    names.sort();
    for name in names {
        let body = std::fs::read(fixtures().join(format!("{name}.body"))).unwrap();
        let encoding = ContentEncoding::sniff(&body);
        let decoded = decode::decode(encoding, &body, 64 << 20).unwrap();
        let gzip = if encoding == ContentEncoding::Gzip {
            body
        } else {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(&decoded).unwrap();
            e.finish().unwrap()
        };
        out.push((name, gzip, decoded));
    }
    out
}

fn python_event() -> (Vec<u8>, Vec<u8>) {
    let body = std::fs::read(fixtures().join("py-error-event-rawpii.body")).unwrap();
    let decoded = decode::decode(ContentEncoding::Gzip, &body, 1 << 20).unwrap();
    (body, decoded)
}

thread_local! {
    static GZ: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
    static GZ_NATIVE: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
    static ZSTD1: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static ZSTD3: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static INFLATE: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
    static RAW_INFLATE: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
}

/// A fresh flate2 `GzEncoder` per envelope.
fn gzip_new_state(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 3 + 64), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// zlib-rs' own gzip wrapper (header, CRC, trailer), reused state, given window bits.
fn gzip_native(data: &[u8], bits: u8) -> Vec<u8> {
    GZ_NATIVE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let z = slot.get_or_insert_with(|| flate2::Compress::new_gzip(flate2::Compression::new(1), bits));
        z.reset();
        let mut out = Vec::with_capacity(data.len() / 3 + 64);
        loop {
            let consumed = z.total_in() as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(4096));
            }
            if z.compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Finish)
                .unwrap()
                == flate2::Status::StreamEnd
            {
                break;
            }
        }
        out
    })
}

/// Only the reset of a reused level-1 state at flate2's memLevel 8 (what every envelope paid before its first byte
/// until `upstream::GZIP_MEM_LEVEL`; the 128 KiB hash table is still zeroed).
fn deflate_reset_only() {
    GZ.with(|cell| {
        let mut slot = cell.borrow_mut();
        let z = slot.get_or_insert_with(|| flate2::Compress::new(flate2::Compression::new(1), false));
        z.reset();
        black_box(z.total_in());
    })
}

fn zstd_bulk(data: &[u8], level: i32) -> Vec<u8> {
    let cell = if level == 1 { &ZSTD1 } else { &ZSTD3 };
    cell.with(|cell| {
        let mut slot = cell.borrow_mut();
        let z = slot.get_or_insert_with(|| zstd::bulk::Compressor::new(level).unwrap());
        z.compress(data).unwrap()
    })
}

/// The decoder before: flate2's `MultiGzDecoder`, a new inflate state per body, read through `read_to_end`.
fn inflate_multigz(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    flate2::bufread::MultiGzDecoder::new(body)
        .take(16 * 1024 + 1)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// zlib-rs' own gzip decoder, state reused per thread, output sized by the trailer's length.
fn inflate_reused(body: &[u8]) -> Vec<u8> {
    INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let z = slot.get_or_insert_with(|| flate2::Decompress::new_gzip(15));
        // flate2 builds a gzip-mode state anew on reset (`true` keeps the gzip mode).
        z.reset(true);
        let hint = u32::from_le_bytes(body[body.len() - 4..].try_into().unwrap()) as usize;
        let mut out = Vec::with_capacity(hint + 1);
        loop {
            let consumed = z.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let status = z
                .decompress_vec(&body[consumed..], &mut out, flate2::FlushDecompress::None)
                .unwrap();
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
        out
    })
}

/// Raw inflate state reused per thread (flate2 resets a default-window raw state in place), the 10-byte gzip header
/// skipped (the capture has no optional fields), CRC-32 checked with crc32fast, output sized by the trailer.
fn inflate_raw_reused(body: &[u8]) -> Vec<u8> {
    assert_eq!(body[3], 0, "no optional header fields");
    RAW_INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let z = slot.get_or_insert_with(|| flate2::Decompress::new(false));
        z.reset(false);
        let hint = u32::from_le_bytes(body[body.len() - 4..].try_into().unwrap()) as usize;
        let mut out = Vec::with_capacity(hint + 1);
        let deflate = &body[10..body.len() - 8];
        loop {
            let consumed = z.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            if z.decompress_vec(&deflate[consumed..], &mut out, flate2::FlushDecompress::None)
                .unwrap()
                == flate2::Status::StreamEnd
            {
                break;
            }
        }
        let crc = u32::from_le_bytes(body[body.len() - 8..body.len() - 4].try_into().unwrap());
        assert_eq!(crc32fast::hash(&out), crc);
        out
    })
}

fn bench_compress<M: Measurement>(c: &mut Criterion<M>) {
    let (_, event) = python_event();
    let all = captures();
    let total: u64 = all.iter().map(|(_, _, d)| d.len() as u64).sum();
    let mut group = c.benchmark_group("compress");
    type F = fn(&[u8]) -> Vec<u8>;
    let variants: [(&str, F); 10] = [
        ("gzip1_relay", |d| {
            scrub_relay::upstream::compress(UpstreamEncoding::Gzip, d).unwrap()
        }),
        ("gzip1_new_state", |d| gzip_new_state(d, 1)),
        ("gzip6_new_state", |d| gzip_new_state(d, 6)),
        ("gzip1_native_w15", |d| gzip_native(d, 15)),
        ("gzip1_native_w9", |d| gzip_native(d, 9)),
        ("zstd_relay", |d| {
            scrub_relay::upstream::compress(UpstreamEncoding::Zstd, d).unwrap()
        }),
        ("zstd3_encode_all", |d| zstd::encode_all(d, 3).unwrap()),
        ("zstd1_encode_all", |d| zstd::encode_all(d, 1).unwrap()),
        ("zstd1_bulk_reused", |d| zstd_bulk(d, 1)),
        ("zstd3_bulk_reused", |d| zstd_bulk(d, 3)),
    ];
    for (name, f) in variants {
        let size: usize = all.iter().map(|(_, _, d)| f(d).len()).sum();
        eprintln!(
            "{name}: python event {} -> {} B; all {} captures {total} -> {size} B ({:.1} %)",
            event.len(),
            f(&event).len(),
            all.len(),
            100.0 * size as f64 / total as f64
        );
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new(name, "python_event"), &event, |b, d| {
            b.iter(|| f(black_box(d)))
        });
        group.throughput(Throughput::Bytes(total));
        group.bench_with_input(BenchmarkId::new(name, "captures"), &all, |b, all| {
            b.iter(|| {
                for (_, _, d) in all {
                    black_box(f(black_box(d)));
                }
            })
        });
    }
    group.bench_function("deflate_reset_only", |b| b.iter(deflate_reset_only));
    group.finish();
}

fn bench_inflate<M: Measurement>(c: &mut Criterion<M>) {
    let (body, decoded) = python_event();
    assert_eq!(inflate_reused(&body), decoded);
    assert_eq!(inflate_multigz(&body), decoded);
    assert_eq!(inflate_raw_reused(&body), decoded);
    let mut group = c.benchmark_group("inflate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("relay_decode", |b| {
        b.iter(|| decode::decode(ContentEncoding::Gzip, black_box(&body), 16 * 1024).unwrap())
    });
    group.bench_function("multigz_read_to_end", |b| b.iter(|| inflate_multigz(black_box(&body))));
    group.bench_function("gzip_state_sized", |b| b.iter(|| inflate_reused(black_box(&body))));
    group.bench_function("raw_state_reused_sized", |b| {
        b.iter(|| inflate_raw_reused(black_box(&body)))
    });
    group.finish();
}

fn bench_small<M: Measurement>(c: &mut Criterion<M>) {
    let id = "9ec79c33ec9942ab8353589fcb2e04dc";
    let mut group = c.benchmark_group("reply");
    group.bench_function("json_value", |b| {
        b.iter(|| serde_json::json!({ "id": black_box(id) }).to_string())
    });
    group.bench_function("format", |b| b.iter(|| format!("{{\"id\":\"{}\"}}", black_box(id))));
    group.finish();
    let mut group = c.benchmark_group("url");
    let base = "http://127.0.0.1:43121";
    group.bench_function("format_parse", |b| {
        b.iter(|| url::Url::parse(&format!("{}/api/{}/envelope/", black_box(base), black_box(42u64))).unwrap())
    });
    let parsed = url::Url::parse("http://127.0.0.1:43121/api/42/envelope/").unwrap();
    group.bench_function("clone", |b| b.iter(|| black_box(&parsed).clone()));
    group.finish();
}

criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench_compress, bench_inflate, bench_small
}

criterion_group!(wall_time, bench_compress, bench_inflate, bench_small);

/// `CODEC_COUNT=<variant>:<n>`: run one variant `n` times on the python event and exit, for instruction counts
/// (`valgrind --tool=callgrind`; the difference between two `n` is the per-call cost, whatever the machine does).
fn count(spec: &str) {
    let (name, n) = spec.split_once(':').expect("variant:n");
    let n: usize = n.parse().unwrap();
    let (body, event) = python_event();
    let id = "9ec79c33ec9942ab8353589fcb2e04dc";
    let f: Box<dyn Fn()> = match name {
        "gzip1_relay" => Box::new(|| drop(scrub_relay::upstream::compress(UpstreamEncoding::Gzip, &event).unwrap())),
        "gzip1_new_state" => Box::new(|| drop(gzip_new_state(&event, 1))),
        "gzip1_native_w15" => Box::new(|| drop(gzip_native(&event, 15))),
        "deflate_reset_only" => Box::new(deflate_reset_only),
        "zstd_relay" => Box::new(|| drop(scrub_relay::upstream::compress(UpstreamEncoding::Zstd, &event).unwrap())),
        "zstd3_encode_all" => Box::new(|| drop(zstd::encode_all(&event[..], 3).unwrap())),
        "zstd1_bulk_reused" => Box::new(|| drop(zstd_bulk(&event, 1))),
        "zstd3_bulk_reused" => Box::new(|| drop(zstd_bulk(&event, 3))),
        "inflate_relay" => Box::new(|| drop(decode::decode(ContentEncoding::Gzip, &body, 16 * 1024).unwrap())),
        "inflate_multigz" => Box::new(|| drop(inflate_multigz(&body))),
        "inflate_gzip_state_sized" => Box::new(|| drop(inflate_reused(&body))),
        "inflate_raw_reused" => Box::new(|| drop(inflate_raw_reused(&body))),
        "reply_json_value" => Box::new(|| drop(serde_json::json!({ "id": id }).to_string())),
        "reply_format" => Box::new(|| drop(format!("{{\"id\":\"{id}\"}}"))),
        "url_parse" => Box::new(|| {
            drop(url::Url::parse(&format!(
                "{}/api/{}/envelope/",
                "http://127.0.0.1:43121", 42
            )))
        }),
        other => panic!("unknown variant {other}"),
    };
    // The first call builds the thread's reused states, as the first envelope on a thread does.
    if n > 0 {
        f();
    }
    for _ in 1..n {
        f();
    }
}

fn main() {
    if let Ok(spec) = std::env::var("CODEC_COUNT") {
        return count(&spec);
    }
    if std::env::var_os("SCRUB_BENCH_WALL_TIME").is_some() {
        wall_time();
    } else {
        cpu_time();
    }
    Criterion::default().configure_from_args().final_summary();
}
