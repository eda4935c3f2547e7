#!/usr/bin/env python3
"""Builds the starting corpora in fuzz/corpus/<target>/ from the SDK captures (tests/fixtures/sdk/), the browser's
replay recording (tests/fixtures/replay/), rules.yaml, and for the formats without a committed capture (minidumps,
crashpad uploads, OTLP protobuf, browser reports) small samples built here in the shapes the tests send.

Idempotent: files are named by content hash, so running it again adds nothing new. The committed corpora are these
seeds plus what the fuzzers found, minimized with `cargo fuzz cmin`.
"""
import bz2, gzip, hashlib, json, lzma, pathlib, struct, zlib

ROOT = pathlib.Path(__file__).resolve().parent
FIXTURES = ROOT.parent / "tests" / "fixtures" / "sdk"


def put(target, data):
    directory = ROOT / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def envelopes():
    for body in sorted(FIXTURES.glob("*.body")):
        decompressed = body.with_suffix(".envelope")
        yield (decompressed if decompressed.exists() else body).read_bytes()


def main():
    for envelope in envelopes():
        put("envelope_parse", envelope)
        put("stream_vs_tree", envelope)
        # decode: encoding byte, cap bits (22: 4 MiB), budget steps (255: all), body.
        put("decode", bytes([0, 22, 255]) + envelope[:4096])
        put("decode", bytes([1, 22, 255]) + gzip.compress(envelope))
        put("decode", bytes([2, 22, 255]) + zlib.compress(envelope))
    for body in sorted(FIXTURES.glob("*.body")):
        if body.with_suffix(".envelope").exists():  # the capture's body is compressed as the SDK sent it
            headers = json.loads(body.with_suffix(".headers.json").read_text())
            encoding = next((v for k, v in headers.get("headers", []) if k.lower() == "content-encoding"), "")
            pick = {"gzip": 1, "deflate": 2, "br": 3, "zstd": 4}.get(encoding.lower())
            if pick is not None:
                put("decode", bytes([pick, 22, 255]) + body.read_bytes())
    # A bomb under a small cap and a stingy budget.
    put("decode", bytes([1, 12, 3]) + gzip.compress(b"\0" * (1 << 20)))
    rules = (ROOT.parent / "rules.yaml").read_text()
    put("rules_load", rules.encode())
    put("rules_load", b"version: 1\n")
    put("rules_load", b"detectors:\n  custom:\n    - id: x\n      pattern: '[a-z'\n")
    # Raw JSON payloads for stream_vs_tree's one-item form: byte 0 picks the type (0: event).
    for envelope in envelopes():
        lines = envelope.split(b"\n")
        if len(lines) > 2:
            put("stream_vs_tree", bytes([0]) + lines[2])
    payload_formats()


# --- replay recordings and videos -------------------------------------------------------------------------------

def msgpack(value):
    """The msgpack encoding of a value (dict, list, str, bytes, int, float, bool, None): enough for seeds."""
    if value is None:
        return b"\xc0"
    if value is True or value is False:
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        return b"\xd3" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode()
        if len(data) < 32:
            return bytes([0xA0 | len(data)]) + data
        return b"\xdb" + struct.pack(">I", len(data)) + data
    if isinstance(value, bytes):
        return b"\xc6" + struct.pack(">I", len(value)) + value
    if isinstance(value, list):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(msgpack(v) for v in value)
    if isinstance(value, dict):
        return b"\xdf" + struct.pack(">I", len(value)) + b"".join(msgpack(k) + msgpack(v) for k, v in value.items())
    raise TypeError(type(value))


def items(envelope):
    """(header, payload) of each item of an envelope (length-delimited or up to the next newline)."""
    rest = envelope.split(b"\n", 1)[1]
    while rest.strip():
        header_line, rest = rest.split(b"\n", 1)
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


SMALL_EVENTS = [
    {"type": 4, "timestamp": 1795998222221, "data": {"href": "https://shop.example/reset?token=Zq81TokenValue", "width": 800, "height": 600}},
    {"type": 2, "timestamp": 1795998222230, "data": {"node": {"type": 0, "id": 1, "childNodes": [
        {"type": 2, "id": 2, "tagName": "input", "attributes": {"value": "jane.roe@example.org", "type": "email"}, "childNodes": []},
        {"type": 3, "id": 3, "textContent": "Card 4111 1111 1111 1111"}]}, "initialOffset": {"left": 0, "top": 0}}},
    {"type": 5, "timestamp": 1795998222300, "data": {"tag": "performanceSpan", "payload": {"op": "resource.fetch",
        "description": "https://api.example/v1/users?api_key=k3yV4lue", "startTimestamp": 1795998222.3, "endTimestamp": 1795998222.4,
        "data": {"method": "POST", "statusCode": 200,
                 "request": {"size": 20, "headers": {"authorization": "Bearer S3cr3tT0k3nValue1234", "content-type": "application/json"},
                             "body": {"password": "hunter22", "user": "jane"}},
                 "response": {"size": 2, "headers": {"set-cookie": "sid=abc"}, "body": {"ok": True}}}}}},
    {"type": 3, "timestamp": 1795998222400, "data": {"source": 5, "text": "secret@example.org", "isChecked": False, "id": 2}},
    {"type": 5, "timestamp": 1795998222500, "data": {"tag": "breadcrumb", "payload": {"category": "console", "message": "token=abc123abc123abc123"}}},
]


def recordings():
    """Recording payloads: the browser's real one (zlib) from the fixture, and small ones in every body form."""
    out = []
    fixture = ROOT.parent / "tests" / "fixtures" / "replay" / "chromium-zlib.envelope"
    if fixture.exists():
        for header, payload in items(fixture.read_bytes()):
            if header.get("type") == "replay_recording":
                out.append(payload)
    small = json.dumps(SMALL_EVENTS).encode()
    head = b'{"segment_id":0}\n'
    out.append(head + zlib.compress(small))
    out.append(head + small)
    out.append(b'{"segment_id":3}\n' + gzip.compress(small, mtime=0))
    out.append(head + zlib.compress(b"[]"))
    return out


def videos(recording, plain_recording):
    event = json.dumps({"type": "replay_event", "replay_id": "b1b215f59b664fe8bdcc53688ac310aa", "segment_id": 0,
                        "replay_type": "session", "user": {"email": "jane.roe@example.org"}, "urls": ["https://shop.example/a?token=x1y2z3w4v5u6"]}).encode()
    mp4 = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom" + b"\0\0\0\x08free" + b"\0\0\0\x10mdat" + bytes(range(8))
    yield msgpack({"replay_event": event, "replay_recording": recording, "replay_video": mp4})
    # Another order, an unknown key, and `str` values, which the relay reads too.
    yield msgpack({"replay_video": mp4, "extra": b"x", "replay_recording": plain_recording.decode(), "replay_event": event.decode()})


# --- minidumps -----------------------------------------------------------------------------------------------------

def utf16(text):
    return text.encode("utf-16-le")


def minidump():
    """A small Linux minidump: system info, a thread (stack with secrets, a context), an exception, a module with a
    home-directory path and a PDB70 CodeView record, a memory list, and the /proc streams (environ, cmdline, status).
    Streams are laid out after the header and directory, each 4-aligned."""
    streams = []  # (type, bytes) in order; references are fixed up once offsets are known
    blobs = []

    def layout(first_rva, parts):
        at, out = first_rva, []
        for part in parts:
            out.append(at)
            at += (len(part) + 3) & ~3
        return out

    environ = b"HOME=/home/jane\0API_TOKEN=abc123secret\0LANG=C.UTF-8\0PATH=/usr/bin\0"
    cmdline = b"/home/jane/app/server\0--api-key\0k3yV4lueS3cr3t\0--port\08080\0"
    status = b"Name:\tserver\nUid:\t1000\t1000\t1000\t1000\n"
    stack = b"\x01\x02password=hunter22\0\0\x07" + utf16("token=wideSecret1") + b"\0\0 mail jane.roe@example.org \xff"
    context = bytes(1232)
    name = utf16("/home/jane/app/libfoo.so")
    cv = b"RSDS" + bytes([0x11] * 16) + struct.pack("<I", 7) + b"/home/jane/build/libfoo.pdb\0"
    heap = b"\0LOGNAME=jane\0ome/jane/.cache\0Authorization: Bearer S3cr3tT0k3nValue1234\0"
    n_streams = 9
    directory_rva = 32
    data_start = directory_rva + 12 * n_streams
    # Blobs first (their offsets are needed by the structural streams), then the streams.
    blob_list = [environ, cmdline, status, stack, context, struct.pack("<I", len(name)) + name, cv, heap]
    blob_rvas = layout(data_start, blob_list)
    (environ_rva, cmdline_rva, status_rva, stack_rva, context_rva, name_rva, cv_rva, heap_rva) = blob_rvas
    end_of_blobs = blob_rvas[-1] + ((len(heap) + 3) & ~3)

    system_info = struct.pack("<HHHBBIIHH", 0, 6, 0, 1, 3, 0, 0, 0, 0) + bytes(56 - 20)  # amd64, 1 cpu, Linux-ish
    system_info = struct.pack("<HHHBB", 9, 6, 0, 1, 3) + struct.pack("<IIIII", 0, 0, 0, 0x8201, 0) + bytes(56 - 28)
    thread = struct.pack("<IIIIQ", 1234, 0, 0, 0, 0) + struct.pack("<QII", 0x7FFE0000, len(stack), stack_rva) + struct.pack("<II", len(context), context_rva)
    thread_list = struct.pack("<I", 1) + thread
    exception = struct.pack("<II", 1234, 0) + struct.pack("<IIQQII", 11, 0, 0, 0x401000, 0, 0) + bytes(15 * 8) + struct.pack("<II", len(context), context_rva)
    module = struct.pack("<QIII", 0x7F0000000000, 0x1000, 0, 0) + struct.pack("<I", name_rva) + bytes(52) + struct.pack("<II", len(cv), cv_rva) + bytes(24)
    assert len(module) == 108
    module_list = struct.pack("<I", 1) + module
    memory_list = struct.pack("<I", 2) + struct.pack("<QII", 0x7FFE0000, len(stack), stack_rva) + struct.pack("<QII", 0x5555_0000, len(heap), heap_rva)
    structural = [(7, system_info), (3, thread_list), (6, exception), (4, module_list), (5, memory_list)]
    stream_rvas = layout(end_of_blobs, [b for _, b in structural])
    directory = []
    for (ty, data), rva in zip(structural, stream_rvas):
        directory.append((ty, len(data), rva))
    directory += [(0x47670007, len(environ), environ_rva), (0x47670006, len(cmdline), cmdline_rva),
                  (0x47670003, len(status), status_rva), (0xFFFF0001, len(heap), heap_rva)]
    assert len(directory) == n_streams
    out = bytearray(b"MDMP" + struct.pack("<IIIIIQ", 0xA793, n_streams, directory_rva, 0, 0, 0))
    for ty, size, rva in directory:
        out += struct.pack("<III", ty, size, rva)
    for part, rva in zip(blob_list + [b for _, b in structural], blob_rvas + stream_rvas):
        out += bytes(rva - len(out))
        out += part
    return bytes(out)


# --- crashpad uploads ------------------------------------------------------------------------------------------------

CRASHPAD_BOUNDARY = b"fuzzBoundary7MA4YWxk"


def multipart(parts):
    """A multipart/form-data body: parts are (name, file name or None, content type or None, bytes)."""
    out = b""
    for name, filename, content_type, data in parts:
        out += b"--" + CRASHPAD_BOUNDARY + b"\r\n"
        disposition = b'Content-Disposition: form-data; name="' + name.encode() + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename.encode() + b'"'
        out += disposition + b"\r\n"
        if content_type is not None:
            out += b"Content-Type: " + content_type.encode() + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + b"--" + CRASHPAD_BOUNDARY + b"--\r\n"


def crashpad_uploads(dump):
    event = msgpack({"event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "level": "fatal", "release": "app@1.0",
                     "user": {"email": "jane.roe@example.org", "ip_address": "203.0.113.9"},
                     "extra": {"password": "hunter22"}, "breadcrumbs": [{"timestamp": 1700000000.5, "message": "start"}]})
    crumbs1 = msgpack({"timestamp": "2026-11-30T03:00:01.250Z", "message": "login jane.roe@example.org"}) + msgpack({"timestamp": 1700000002.0, "category": "http", "data": {"url": "https://api.example/?token=abc123abc123"}})
    crumbs2 = msgpack({"timestamp": "2026-11-30T03:00:00Z", "message": "boot"})
    yield bytes([0]) + multipart([
        ("guid", None, None, b"0d6f3bd0-7a6c-4c5b-9f1a-2c3d4e5f6a7b"),
        ("prod", None, None, b"app"),
        ("ver", None, None, b"1.0"),
        ("sentry", None, None, b'{"environment":"prod","user":{"email":"jane.roe@example.org"}}'),
        ("sentry[tags][region]", None, None, b"eu"),
        ("upload_file_minidump", "upload.dmp", "application/octet-stream", dump),
        ("__sentry-event", "__sentry-event", None, event),
        ("__sentry-breadcrumb1", "__sentry-breadcrumb1", None, crumbs1),
        ("__sentry-breadcrumb2", "__sentry-breadcrumb2", None, crumbs2),
        ("log", "app.log", "text/plain", b"user=jane password=hunter22\n"),
    ])
    yield bytes([0]) + multipart([("upload_file_minidump", "upload.dmp.gz", None, gzip.compress(dump, mtime=0))])
    yield bytes([1]) + dump
    yield bytes([2]) + bz2.compress(dump)
    yield bytes([1]) + lzma.compress(dump)


# --- OTLP --------------------------------------------------------------------------------------------------------

EMAIL = "jane.roe@example.org"
TRACE_ID = "5b8efff798038103d269b633813fc60c"


def otlp_json_traces():
    def attr(key, value):
        return {"key": key, "value": value}
    return {"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", {"stringValue": "api"}), attr("client.address", {"stringValue": "203.0.113.9"})]},
        "scopeSpans": [{
            "scope": {"name": "my.library", "version": "1.0.0"},
            "spans": [
                {"traceId": TRACE_ID, "spanId": "eee19b7ec3c1b174", "name": f"GET /users/{EMAIL}", "kind": 2,
                 "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
                 "attributes": [
                     attr("http.request.header.cookie", {"arrayValue": {"values": [{"stringValue": "sid=abc"}]}}),
                     attr("user.id", {"intValue": "1234567890123"}),
                     attr("db.query.text", {"stringValue": "UPDATE users SET ssn='078-05-1120'"}),
                     attr("auth.token", {"intValue": "987654321"}),
                     attr("http.route", {"stringValue": "/users/:email"}),
                     attr("request.body", {"kvlistValue": {"values": [attr("password", {"stringValue": "hunter22"})]}}),
                 ],
                 "events": [{"timeUnixNano": "1544712660500000000", "name": "retry", "attributes": [attr("note", {"stringValue": f"mail {EMAIL}"})]}],
                 "status": {"code": 1}},
                {"traceId": TRACE_ID, "spanId": "aaa19b7ec3c1b174", "name": "GET /health", "kind": 2,
                 "startTimeUnixNano": "1", "endTimeUnixNano": "2", "attributes": [attr("http.route", {"stringValue": "/health"})]},
                {"traceId": TRACE_ID, "spanId": "bbb19b7ec3c1b174", "parentSpanId": "aaa19b7ec3c1b174", "name": "redis GET",
                 "kind": 3, "startTimeUnixNano": "1", "endTimeUnixNano": "2"},
            ]}]}]}


def otlp_json_logs():
    return {"resourceLogs": [{"resource": {}, "scopeLogs": [{"scope": {}, "logRecords": [{
        "timeUnixNano": "1544712660300000000", "severityNumber": 17, "severityText": "ERROR",
        "traceId": TRACE_ID, "spanId": "eee19b7ec3c1b174",
        "body": {"stringValue": f"payment failed for {EMAIL} with Bearer S3cr3tT0k3nValue1234"},
        "attributes": [{"key": "http.response.header.set-cookie", "value": {"stringValue": "session=xyz"}},
                       {"key": "retry_count", "value": {"intValue": 3}}]}]}]}]}


def varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def pb_field(number, wire, data):
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(data)
    if wire == 1:
        return key + struct.pack("<Q", data)
    if wire == 5:
        return key + struct.pack("<I", data)
    return key + varint(len(data)) + data


def pb(number, data):
    return pb_field(number, 2, data.encode() if isinstance(data, str) else data)


def pb_any(value):
    """An OTLP/JSON AnyValue as protobuf."""
    (kind, inner), = value.items()
    if kind == "stringValue":
        return pb(1, inner)
    if kind == "boolValue":
        return pb_field(2, 0, int(inner))
    if kind == "intValue":
        return pb_field(3, 0, int(inner) & (2**64 - 1))
    if kind == "doubleValue":
        return varint(4 << 3 | 1) + struct.pack("<d", inner)
    if kind == "arrayValue":
        return pb(5, b"".join(pb(1, pb_any(v)) for v in inner["values"]))
    if kind == "kvlistValue":
        return pb(6, b"".join(pb(1, pb_kv(kv)) for kv in inner["values"]))
    return pb(7, inner.encode())


def pb_kv(kv):
    return pb(1, kv["key"]) + pb(2, pb_any(kv["value"]))


def pb_attrs(number, attributes):
    return b"".join(pb(number, pb_kv(kv)) for kv in attributes)


def otlp_protobuf_traces(request):
    out = b""
    for resource in request["resourceSpans"]:
        body = pb(1, pb_attrs(1, resource["resource"]["attributes"]))
        for scope in resource["scopeSpans"]:
            scope_body = pb(1, pb(1, scope["scope"]["name"]) + pb(2, scope["scope"]["version"]))
            for span in scope["spans"]:
                s = pb(1, bytes.fromhex(span["traceId"])) + pb(2, bytes.fromhex(span["spanId"]))
                if "parentSpanId" in span:
                    s += pb(4, bytes.fromhex(span["parentSpanId"]))
                s += pb(5, span["name"]) + pb_field(6, 0, span["kind"])
                s += pb_field(7, 1, int(span["startTimeUnixNano"])) + pb_field(8, 1, int(span["endTimeUnixNano"]))
                s += pb_attrs(9, span.get("attributes", []))
                for event in span.get("events", []):
                    s += pb(11, pb_field(1, 1, int(event["timeUnixNano"])) + pb(2, event["name"]) + pb_attrs(3, event["attributes"]))
                if "status" in span:
                    s += pb(15, pb(2, "deadline exceeded for " + EMAIL) + pb_field(3, 0, span["status"]["code"]))
                scope_body += pb(2, s)
            body += pb(2, scope_body)
        out += pb(1, body)
    return out


def otlp_protobuf_logs(request):
    out = b""
    for resource in request["resourceLogs"]:
        body = pb(1, b"")
        for scope in resource["scopeLogs"]:
            scope_body = pb(1, b"")
            for record in scope["logRecords"]:
                r = pb_field(1, 1, int(record["timeUnixNano"])) + pb_field(2, 0, record["severityNumber"]) + pb(3, record["severityText"])
                r += pb(5, pb_any(record["body"])) + pb_attrs(6, record["attributes"])
                r += pb(9, bytes.fromhex(record["traceId"])) + pb(10, bytes.fromhex(record["spanId"]))
                scope_body += pb(2, r)
            body += pb(2, scope_body)
        out += pb(1, body)
    return out


# --- browser reports -----------------------------------------------------------------------------------------------

def csp_bodies():
    yield {"csp-report": {"document-uri": "https://shop.example/reset?token=Zq81TokenValue", "violated-directive": "style-src",
                          "effective-directive": "style-src", "blocked-uri": "inline", "original-policy": "style-src 'self' 'nonce-r4nd0mN0nc3Value'",
                          "disposition": "enforce", "referrer": f"https://shop.example/users/{EMAIL}/reset/9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c",
                          "script-sample": "fetch('/api?password=hunter22')", "status-code": 200, "line-number": 3, "source-file": "https://shop.example/app.js"}}

    def report(directive, blocked):
        return {"type": "csp-violation", "age": 12, "url": "https://shop.example/checkout?cart=42&session=S3ss10nId9988776655aa",
                "user_agent": "Mozilla/5.0", "body": {
                    "documentURL": f"https://shop.example/checkout?cart=42&email={EMAIL}", "referrer": "", "blockedURL": blocked,
                    "effectiveDirective": directive, "originalPolicy": "script-src 'self' 'nonce-r4nd0mN0nc3Value'; report-to csp",
                    "sourceFile": "https://shop.example/app.3f2a1b.js", "sample": "fetch('/api?password=hunter22')",
                    "disposition": "report", "statusCode": 200, "lineNumber": 10, "columnNumber": 3}}
    yield [report("script-src-elem", "https://cdn.evil.example/x.js?uid=9f8a7b6c5d4e3f2a1b0c9d8e"),
           {"type": "deprecation", "age": 1, "url": "https://shop.example/", "user_agent": "Mozilla/5.0", "body": {"id": "x"}},
           report("img-src", "data")]


def nel_bodies():
    yield [{"age": 500, "type": "network-error",
            "url": "https://api.example/v1/reset/3f1cd9e2-4b5a-4c6d-8e7f-a1b2c3d4e5f6?email=x&api_key=k3yV4lue",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "body": {"elapsed_time": 45, "method": "POST", "phase": "connection", "protocol": "http/1.1",
                     "referrer": f"https://app.example/profile/{EMAIL}", "sampling_fraction": 1.0, "server_ip": "198.51.100.7",
                     "status_code": 0, "type": "tcp.timed_out"}},
           {"age": 1, "type": "csp-violation", "url": "https://app.example/", "user_agent": "x", "body": {}}]


def payload_formats():
    recording_list = recordings()
    for recording in recording_list:
        put("replay", bytes([0]) + recording)
    for video in videos(recording_list[-4], recording_list[-3]):
        put("replay", bytes([1]) + video)
    dump = minidump()
    put("minidump", dump)
    put("minidump", gzip.compress(dump, mtime=0))
    put("minidump", lzma.compress(dump, format=lzma.FORMAT_XZ))
    for upload in crashpad_uploads(dump):
        put("crashpad", upload)
    traces, logs = otlp_json_traces(), otlp_json_logs()
    put("otlp", bytes([0]) + otlp_protobuf_traces(traces))
    put("otlp", bytes([1]) + json.dumps(traces).encode())
    put("otlp", bytes([2]) + otlp_protobuf_logs(logs))
    put("otlp", bytes([3]) + json.dumps(logs).encode())
    for body in csp_bodies():
        put("security_report", bytes([0]) + json.dumps(body).encode())
    for body in nel_bodies():
        put("security_report", bytes([1]) + json.dumps(body).encode())


if __name__ == "__main__":
    main()
