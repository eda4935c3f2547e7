//! Native crashes end to end: real minidumps, written by the `minidump-writer` crate (Breakpad's writer, as
//! sentry-native uses) of a live child process that holds planted secrets on its stack and heap (ASCII and UTF-16),
//! in its environment and on its command line, and runs from under a home directory. They go through a real relay
//! to a recording upstream, as an envelope attachment and on crashpad's `/api/<id>/minidump/` route, and must arrive
//! still parsing (same threads, modules, build ids) with no planted value left in ASCII or UTF-16.
//!
//! The child is this test binary itself, started again to run only [`crash_child`], which plants its secrets, prints
//! where the heap ones are, and waits on stdin while the parent dumps it (ptrace) and then lets it go.

#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use minidump::{Minidump, MinidumpModuleList, MinidumpThreadList, Module};
use serde_json::{Value, json};

use common::*;
use scrub_relay::envelope::{Envelope, Item};

const KEY: &str = "publickey123";
const PROJECT: u64 = 42;
const CHILD_ENV: &str = "SCRUB_RELAY_CRASH_CHILD";
/// The user whose home directory the child runs from.
const USER: &str = "marguerite";

/// Everything planted in the child that must not leave the relay. The first three are in the environment, the next
/// two on the command line; then the stack (ASCII, UTF-16) and the heap (ASCII, UTF-16).
const PLANTED: &[&str] = &[
    "EnvTok7f3k9q2m5x8w",
    "Pl4ntedDbPass",
    "Pl4ntedAwsSecretKeyValue0123456789",
    "Pl4ntedArgPass",
    "Pl4ntedArgKeyValue",
    "Pl4ntedStackTok",
    "Pl4ntedStackWide",
    "4111 1111 1111 1111",
    "Pl4ntedBearerTok123",
    "Pl4ntedHeapWide",
    USER,
];

/// The child: plants secrets, reports the heap ones, blocks until the parent closes stdin. Runs only when started by
/// [`dump_child`]; in a normal run it returns at once.
#[test]
fn crash_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let stack_ascii: [u8; 48] = *b"\0session_token=Pl4ntedStackTok\0 more stack text\0";
    let stack_wide: [u16; 24] = {
        let mut wide = [0u16; 24];
        for (slot, unit) in wide.iter_mut().zip("secret=Pl4ntedStackWide".encode_utf16()) {
            *slot = unit;
        }
        wide
    };
    let heap_ascii =
        String::from("order paid with card 4111 1111 1111 1111; Authorization: Bearer Pl4ntedBearerTok123\0")
            .into_bytes();
    let heap_wide: Vec<u16> = "api_key=Pl4ntedHeapWide\0".encode_utf16().collect();
    std::hint::black_box((&stack_ascii, &stack_wide));
    println!(
        "READY {} {} {} {}",
        heap_ascii.as_ptr() as usize,
        heap_ascii.len(),
        heap_wide.as_ptr() as usize,
        heap_wide.len() * 2
    );
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::hint::black_box((&stack_ascii, &stack_wide, &heap_ascii, &heap_wide));
}

/// Kills the child if the test fails before releasing it.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the child from `<tmp>/home/marguerite/crashy/`, dumps it with minidump-writer (heap secrets added as app
/// memory, as an SDK's crash handler may), releases it, and returns the dump.
fn dump_child() -> Vec<u8> {
    let root = tempfile::Builder::new()
        .prefix("minidump-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let home: PathBuf = root.path().join("home").join(USER);
    let bin_dir = home.join("crashy");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let exe = bin_dir.join("crashy-app");
    let me = std::env::current_exe().unwrap();
    if std::fs::hard_link(&me, &exe).is_err() {
        std::fs::copy(&me, &exe).unwrap();
    }
    let child = Command::new(&exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        // After `--` the test harness takes these as name filters that match nothing: the app's own arguments.
        .args(["--", "--password=Pl4ntedArgPass", "--api-key", "Pl4ntedArgKeyValue"])
        .current_dir(&bin_dir)
        .env_clear()
        .env(CHILD_ENV, "1")
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("SERVICE_API_TOKEN", "EnvTok7f3k9q2m5x8w")
        .env("DATABASE_URL", "postgres://admin:Pl4ntedDbPass@db.internal:5432/app")
        .env("AWS_SECRET_ACCESS_KEY", "Pl4ntedAwsSecretKeyValue0123456789")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // A reader thread, so a child that never gets ready fails the test after a timeout instead of hanging it.
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            // The harness may print `test crash_child ... ` on the same line first.
            if let Some(at) = line.find("READY ") {
                let _ = ready_tx.send(line[at + 6..].trim().to_string());
            }
        }
    });
    let ready = ready_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the child reports READY");
    let numbers: Vec<usize> = ready.split(' ').map(|n| n.parse().unwrap()).collect();
    let app_memory = vec![
        minidump_writer::app_memory::AppMemory {
            ptr: numbers[0],
            length: numbers[1],
        },
        minidump_writer::app_memory::AppMemory {
            ptr: numbers[2],
            length: numbers[3],
        },
    ];
    let pid = child.0.id() as i32;
    let mut file = tempfile::tempfile().unwrap();
    let mut writer = minidump_writer::minidump_writer::MinidumpWriterConfig::new(pid, pid);
    writer.set_app_memory(app_memory);
    let dump = writer
        .write(&mut file)
        .expect("minidump-writer dumps the child (needs ptrace)");
    drop(child.0.stdin.take());
    let _ = child.0.wait();
    dump
}

fn utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Where a planted value sits in a dump: ASCII and/or UTF-16.
fn found(dump: &[u8], value: &str) -> bool {
    contains(dump, value.as_bytes()) || contains(dump, &utf16(value))
}

/// What Sentry needs from a dump: thread ids, and per module its base, size, basename, debug id and code id.
/// A module as Sentry sees it: base, size, basename, debug id, code id.
type ModuleIdentity = (u64, u64, String, String, String);

fn identity(dump: &[u8]) -> (Vec<u32>, Vec<ModuleIdentity>) {
    let dump = Minidump::read(dump).expect("still a minidump");
    let threads = dump.get_stream::<MinidumpThreadList<'_>>().expect("thread list");
    let thread_ids = threads.threads.iter().map(|t| t.raw.thread_id).collect();
    let modules = dump.get_stream::<MinidumpModuleList>().expect("module list");
    let modules = modules
        .iter()
        .map(|m| {
            let basename = m.code_file().rsplit('/').next().unwrap_or_default().to_string();
            (
                m.base_address(),
                m.size(),
                basename,
                m.debug_identifier().map(|id| id.to_string()).unwrap_or_default(),
                m.code_identifier().map(|id| id.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    (thread_ids, modules)
}

/// The checks every forwarded dump must pass against the original.
fn assert_scrubbed(original: &[u8], forwarded: &[u8]) {
    assert_eq!(forwarded.len(), original.len(), "scrubbed in place");
    let (threads, modules) = identity(original);
    assert!(!threads.is_empty() && !modules.is_empty());
    assert!(
        modules.iter().any(|m| !m.4.is_empty()),
        "the original has build ids to keep"
    );
    assert_eq!(
        identity(forwarded),
        (threads, modules),
        "same threads, modules, basenames and ids"
    );
    for value in PLANTED {
        assert!(!found(forwarded, value), "{value} left the relay");
    }
    let exe = Minidump::read(forwarded).unwrap();
    let modules = exe.get_stream::<MinidumpModuleList>().unwrap();
    let main = modules.main_module().expect("main module");
    assert!(
        main.code_file().ends_with("/home/**********/crashy/crashy-app"),
        "the user name is masked, the rest of the path stays: {}",
        main.code_file()
    );
}

#[tokio::test]
async fn real_minidumps_arrive_scrubbed_and_still_symbolicate() {
    let original = tokio::task::spawn_blocking(dump_child).await.unwrap();
    for value in PLANTED {
        assert!(
            found(&original, value),
            "the child's dump holds {value} (or the test proves nothing)"
        );
    }
    assert!(
        contains(&original, &utf16(USER)),
        "module names are UTF-16 and hold the user name"
    );

    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;

    // 1. As an envelope attachment next to its event, the way sentry-native's breakpad backend sends it.
    let event_id = "4a0b6a1c9e8f4d2b8c7d6e5f4a3b2c1d";
    let mut body = format!(
        "{{\"event_id\":\"{event_id}\"}}\n{{\"type\":\"event\"}}\n{{\"event_id\":\"{event_id}\",\"level\":\"fatal\",\"platform\":\"native\"}}\n"
    )
    .into_bytes();
    body.extend_from_slice(
        format!(
            "{{\"type\":\"attachment\",\"length\":{},\"attachment_type\":\"event.minidump\",\"filename\":\"crash.dmp\"}}\n",
            original.len()
        )
        .as_bytes(),
    );
    body.extend_from_slice(&original);
    body.push(b'\n');
    let response = post_envelope(&relay, PROJECT, KEY, &body).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let recorded = mini.next().await;
    let item = forwarded_minidump(recorded.envelope());
    assert_eq!(item.filename(), Some("crash.dmp"));
    assert_scrubbed(&original, item.payload());
    assert_eq!(relay.metrics().minidumps.with_label_values(&["scrubbed"]).get(), 1);
    assert!(relay.metrics().redactions.with_label_values(&["user_path"]).get() > 0);

    // 2. On crashpad's route: multipart, gzip-compressed dump, msgpack event and breadcrumbs, query auth.
    let event = json!({
        "event_id": "0123456789abcdef0123456789abcdef",
        "level": "fatal",
        "user": {"email": "marguerite.jones@example.com"},
        "message": "crashed while paying with 4111 1111 1111 1111",
    });
    let crumbs = |items: &[(f64, &str)]| {
        let mut out = Vec::new();
        for (timestamp, message) in items {
            out.extend(rmp_serde::to_vec_named(&json!({"timestamp": timestamp, "message": message})).unwrap());
        }
        out
    };
    let breadcrumb1 = crumbs(&[(1700000001.0, "first"), (1700000003.0, "third, token=Pl4ntedCrumbTok")]);
    let breadcrumb2 = crumbs(&[(1700000002.0, "second")]);
    let parts: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("upload_file_minidump", Some("upload.dmp.gz"), gzip(&original)),
        (
            "__sentry-event",
            Some("__sentry-event"),
            rmp_serde::to_vec_named(&event).unwrap(),
        ),
        ("__sentry-breadcrumb1", Some("__sentry-breadcrumb1"), breadcrumb1),
        ("__sentry-breadcrumb2", Some("__sentry-breadcrumb2"), breadcrumb2),
        (
            "notes.txt",
            Some("notes.txt"),
            b"call marguerite.jones@example.com".to_vec(),
        ),
        ("guid", None, b"c0ffee".to_vec()),
    ];
    let (content_type, body) = multipart(&parts);
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/minidump/?sentry_key={KEY}&sentry_client=sentry.native/0.9.0"),
        &headers(&[("Content-Type", &content_type)]),
        &body,
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(
        response.body, b"01234567-89ab-cdef-0123-456789abcdef",
        "the hyphenated event id"
    );

    let recorded = mini.next().await;
    assert_eq!(recorded.path, format!("/api/{PROJECT}/envelope/"));
    let envelope = recorded.envelope();
    let event_item = envelope.items.iter().find(|i| i.type_name() == "event").expect("event");
    let event: Value = serde_json::from_slice(event_item.payload()).unwrap();
    let messages: Vec<&str> = event["breadcrumbs"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[..2], ["first", "second"], "merged by timestamp");
    assert!(messages[2].starts_with("third, token=") && !messages[2].contains("Pl4ntedCrumbTok"));
    assert_eq!(event["extra"]["guid"], "c0ffee", "form fields arrive in extra");
    let event_text = event_item.payload();
    for value in ["marguerite.jones", "4111 1111 1111 1111"] {
        assert!(!contains(event_text, value.as_bytes()), "{value} left in the event");
    }
    let dump = forwarded_minidump(envelope);
    assert_eq!(dump.filename(), Some("upload.dmp"), "decompressed, suffix removed");
    assert_scrubbed(&original, dump.payload());
    let notes = envelope
        .items
        .iter()
        .find(|i| i.filename() == Some("notes.txt"))
        .expect("other files");
    assert!(!contains(notes.payload(), b"marguerite.jones"));

    // 3. The raw form: the body is the dump.
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/minidump?sentry_key={KEY}"),
        &headers(&[("Content-Type", "application/x-dmp"), ("Content-Encoding", "gzip")]),
        &gzip(&original),
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.body.len(), 36, "a fresh hyphenated event id");
    let recorded = mini.next().await;
    let dump = forwarded_minidump(recorded.envelope());
    assert_eq!(dump.filename(), Some("Minidump"));
    assert_scrubbed(&original, dump.payload());
    assert_eq!(relay.metrics().minidumps.with_label_values(&["scrubbed"]).get(), 3);

    // 4. A compressed dump small on the wire that inflates past the small lane's 1 MiB (a bomb would, up to 100 MiB)
    // moves to the large lane and is scrubbed there.
    let mut padded = original.clone();
    padded.resize(original.len().max(2 << 20), 0);
    let lane_changes = relay.metrics().lane_changes.get();
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/minidump?sentry_key={KEY}"),
        &headers(&[("Content-Type", "application/x-dmp")]),
        &gzip(&padded),
        false,
    )
    .await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(relay.metrics().lane_changes.get(), lane_changes + 1);
    let recorded = mini.next().await;
    let dump = forwarded_minidump(recorded.envelope());
    assert_scrubbed(&padded, dump.payload());
    assert_eq!(relay.metrics().minidumps.with_label_values(&["scrubbed"]).get(), 4);
}

/// The minidump attachment of a forwarded envelope; the test fails if it was dropped.
fn forwarded_minidump(envelope: &Envelope) -> &Item {
    envelope
        .items
        .iter()
        .find(|i| i.headers().get("attachment_type") == Some(&json!("event.minidump")))
        .expect("the minidump is forwarded, not dropped")
}

/// A `multipart/form-data` body: `(field, file name, bytes)` parts.
fn multipart(parts: &[(&str, Option<&str>, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "----crashpad-boundary-7d3c";
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(filename) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn malformed_uploads_get_a_clear_answer_and_a_metric() {
    let mini = MiniSentry::start().await;
    let relay = start_relay(relay_config(&mini)).await;
    let dump = tokio::task::spawn_blocking(dump_child).await.unwrap();
    let route = format!("/api/{PROJECT}/minidump/?sentry_key={KEY}");
    let post = |content_type: String, body: Vec<u8>| {
        let route = route.clone();
        let addr = relay.addr;
        async move {
            send_raw(
                addr,
                "POST",
                &route,
                &headers(&[("Content-Type", &content_type)]),
                &body,
                false,
            )
            .await
        }
    };

    // A truncated dump in an envelope: counted, and the binary policy (drop) keeps it from leaving raw.
    let truncated = &dump[..dump.len() / 2];
    let mut body = b"{}\n{\"type\":\"event\"}\n{\"message\":\"x\"}\n".to_vec();
    body.extend_from_slice(
        format!(
            "{{\"type\":\"attachment\",\"length\":{},\"attachment_type\":\"event.minidump\",\"filename\":\"c.dmp\"}}\n",
            truncated.len()
        )
        .as_bytes(),
    );
    body.extend_from_slice(truncated);
    let response = post_envelope(&relay, PROJECT, KEY, &body).await;
    assert_eq!(response.status, 200);
    let recorded = mini.next().await;
    assert_eq!(recorded.envelope().items.len(), 1, "only the event is forwarded");
    assert_eq!(relay.metrics().minidumps.with_label_values(&["malformed"]).get(), 1);
    assert_eq!(
        relay
            .metrics()
            .items_dropped
            .with_label_values(&["attachment", "binary_attachment"])
            .get(),
        1
    );

    // On the crashpad route: each malformed variant is a 400 with its own reason.
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            "application/octet-stream".into(),
            b"PK\x03\x04 not a dump".to_vec(),
            "minidump_invalid",
        ),
        (
            "application/octet-stream".into(),
            b"\x1f\x8b\x08\0 broken gzip".to_vec(),
            "minidump_invalid",
        ),
        ("text/plain".into(), dump.clone(), "minidump_content_type"),
        (
            "multipart/form-data; boundary=xyz".into(),
            b"--xyz\r\nContent-Disposition: form-data; name=\"upload_file_minidump\"; filename=\"a\"\r\n\r\nMDMP"
                .to_vec(),
            "minidump_multipart",
        ),
        multipart_case(&[("guid", None, b"1".to_vec())], "minidump_missing"),
        multipart_case(
            &[
                ("upload_file_minidump", Some("a.dmp"), dump.clone()),
                ("__sentry-event", Some("e"), b"\xc1\xc1 not msgpack".to_vec()),
            ],
            "minidump_msgpack",
        ),
        multipart_case(
            &[
                ("upload_file_minidump", Some("a.dmp"), dump.clone()),
                ("__sentry-event", Some("e"), rmp_serde::to_vec(&json!([1, 2])).unwrap()),
            ],
            "minidump_msgpack",
        ),
        multipart_case(
            &[
                ("upload_file_minidump", Some("a.dmp"), dump.clone()),
                ("__sentry-breadcrumb1", Some("b"), vec![0x92, 0x01]),
            ],
            "minidump_msgpack",
        ),
    ];
    for (content_type, body, reason) in cases {
        let before = relay.metrics().request_errors.with_label_values(&[reason]).get();
        let response = post(content_type, body).await;
        assert_eq!(
            response.status,
            400,
            "{reason}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert!(!response.detail().is_empty());
        assert_eq!(
            relay.metrics().request_errors.with_label_values(&[reason]).get(),
            before + 1,
            "{reason} is counted"
        );
    }

    // Unreal crash containers cannot be scrubbed here: refused, never forwarded raw.
    let response = send_raw(
        relay.addr,
        "POST",
        &format!("/api/{PROJECT}/unreal/{KEY}/"),
        &headers(&[("Content-Type", "application/octet-stream")]),
        b"CR1\0 an unreal crash container",
        false,
    )
    .await;
    assert_eq!(response.status, 501);
    assert_eq!(
        relay
            .metrics()
            .request_errors
            .with_label_values(&["unreal_unsupported"])
            .get(),
        1
    );
    assert!(mini.try_next().await.is_none(), "nothing else reached the upstream");
}

fn multipart_case(parts: &[(&str, Option<&str>, Vec<u8>)], reason: &'static str) -> (String, Vec<u8>, &'static str) {
    let (content_type, body) = multipart(parts);
    (content_type, body, reason)
}
