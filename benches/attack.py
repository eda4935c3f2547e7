#!/usr/bin/env python3
"""Issue #14's attack table: a release `scrub-relay` binary on loopback, a good client on 127.0.0.1 sending 50 small
envelopes per second while 127.0.0.2 attacks it. For each attack: the relay's peak RSS, the good client's success
rate and latency, whether every good envelope the relay accepted reached the upstream, and RSS once it is quiet.

    python3 benches/attack.py --binary target/release/scrub-relay [--only slowloris,bombs] [--seconds 20]
        [--quiet-seconds 5] [--env NAME=VALUE ...] [--relay-arg=--flag=value ...]

Attacks (each against a fresh relay with the default configuration, so VmHWM is that attack's peak):
  slowloris   1,200 connections sending their headers one byte a second, reopened when cut
  slowbody    1,200 connections declaring a 40 MiB body and sending 100 bytes a second, reopened when cut
  bigbodies   waves of 200 uncompressed 30 MiB envelopes sent at once
  bombs       gzip, deflate (zlib), br, zstd bodies of 256 MiB of zeros, and a zlib replay recording bomb inside an
              envelope, 20 at a time (br and zstd need the `brotli` and `zstd` commands; skipped with a note if absent)
  jsonbombs   an event holding an 8M-element array (16 MB), the same unterminated, one with an email-like key (which
              sends the scrubber to its tree walk), and a 60 MiB item of an unknown type; gzip on the wire, 20 at a
              time

Stdlib only (plus the two commands above). Every process is local and every loop stops after --seconds. The sink,
the good client and the attacker are separate processes, so the attacker's Python does not slow the good client's.
Open files: about 2,600 descriptors are needed (`ulimit -n`).
"""
import argparse, gzip, http.client, json, multiprocessing, queue, shutil, socket, subprocess
import threading, time, uuid, zlib

from relay_process import SentryLikeSink, start_relay, start_sink, status_kib

GOOD_PREFIX = "600d"
AUTH = "Sentry sentry_key=publickey123, sentry_version=7, sentry_client=attack/1.0"
MIB = 1024 * 1024


# ---------------------------------------------------------------- the upstream sink (its own process)

def run_sink(port_out, stop):
    seen = set()
    lock = threading.Lock()

    class Sink(SentryLikeSink):
        def do_GET(self):
            with lock:
                body = json.dumps(sorted(seen)).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def received(self, body):
            encoding = self.headers.get("content-encoding", "")
            try:
                if encoding == "gzip":
                    # Only the envelope header is needed: decompress its first bytes.
                    body = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, 4096)
                header = json.loads(body.split(b"\n", 1)[0])
                event_id = header.get("event_id", "")
                if event_id.startswith(GOOD_PREFIX):
                    with lock:
                        seen.add(event_id)
            except Exception:
                pass

    server = start_sink(Sink)
    port_out.put(server.server_address[1])
    stop.wait()
    server.shutdown()


def sink_seen(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/")
    return set(json.loads(connection.getresponse().read()))


# ---------------------------------------------------------------- the good client (its own process)

def good_envelope(event_id):
    event = json.dumps({"event_id": event_id, "message": "good client", "level": "info",
                        "platform": "python", "user": {"email": "someone@example.com"}}).encode()
    return (json.dumps({"event_id": event_id}).encode() + b"\n"
            + json.dumps({"type": "event", "length": len(event)}).encode() + b"\n" + event + b"\n")


def run_good_client(port, seconds, rate, results_out):
    schedule = queue.Queue()
    results = []
    lock = threading.Lock()

    def worker():
        connection = None
        while True:
            item = schedule.get()
            if item is None:
                return
            event_id, due = item
            body = good_envelope(event_id)
            status = 0
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                                            source_address=("127.0.0.1", 0))
                connection.request("POST", "/api/42/envelope/", body=body,
                                   headers={"X-Sentry-Auth": AUTH, "Content-Type": "application/x-sentry-envelope"})
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                if connection is not None:
                    connection.close()
                connection = None
            # Latency from when the request was due, so a stalled worker counts against the relay, not hidden.
            with lock:
                results.append((event_id, status, time.monotonic() - due))

    workers = [threading.Thread(target=worker) for _ in range(16)]
    for w in workers:
        w.start()
    start = time.monotonic()
    sent = 0
    while True:
        due = start + sent / rate
        if due - start >= seconds:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        schedule.put((GOOD_PREFIX + uuid.uuid4().hex[4:], due))
        sent += 1
    for _ in workers:
        schedule.put(None)
    for w in workers:
        w.join()
    results_out.put(results)


# ---------------------------------------------------------------- attackers (one process)

def attacker_socket(port, timeout=5):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", port))
    return s


def trickle(port, seconds, connections, head, step, count_out):
    """Keeps `connections` sockets open, sending `step` bytes of `head` then zeros on each every second."""
    deadline = time.monotonic() + seconds
    sockets = [None] * connections
    offsets = [0] * connections
    opened = 0
    while time.monotonic() < deadline:
        tick = time.monotonic()
        for i in range(connections):
            if sockets[i] is None:
                if time.monotonic() - tick > 0.5:
                    continue  # reopening cut connections gets half of each second, so every socket still ticks
                try:
                    sockets[i] = attacker_socket(port, timeout=0.05)
                    offsets[i] = 0
                    opened += 1
                except OSError:
                    continue
            chunk = head[offsets[i]:offsets[i] + step] if offsets[i] < len(head) else b"\0" * step
            try:
                sockets[i].sendall(chunk)
                offsets[i] += len(chunk)
            except OSError:
                sockets[i].close()
                sockets[i] = None
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    for s in sockets:
        if s is not None:
            s.close()
    count_out["connections opened"] = opened


def post_raw(port, body, encoding, statuses, lock):
    head = ("POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sentry-Auth: %s\r\n%sContent-Length: %d\r\n"
            "Connection: close\r\n\r\n" % (AUTH, "Content-Encoding: %s\r\n" % encoding if encoding else "", len(body)))
    status = 0
    try:
        with attacker_socket(port, timeout=60) as s:
            s.sendall(head.encode())
            try:
                s.sendall(body)
            except OSError:
                pass  # the relay may answer (413/503) and close before the body is all sent
            answer = b""
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
            if answer.startswith(b"HTTP/"):
                status = int(answer.split(b" ")[1])
    except OSError:
        pass
    with lock:
        statuses[status] = statuses.get(status, 0) + 1


def flood(port, seconds, parallel, bodies, statuses):
    """`parallel` senders, each posting the next of `bodies` ((body, encoding) pairs) until the time is up."""
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def sender(n):
        i = n
        while time.monotonic() < deadline:
            body, encoding = bodies[i % len(bodies)]
            post_raw(port, body, encoding, statuses, lock)
            i += 1

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def envelope(items, event_id="9ec79c33ec9942ab8353589fcb2e04dc"):
    out = json.dumps({"event_id": event_id}).encode() + b"\n"
    for header, payload in items:
        header = dict(header, length=len(payload))
        out += json.dumps(header).encode() + b"\n" + payload + b"\n"
    return out


def external(command, data):
    if shutil.which(command[0]) is None:
        return None
    return subprocess.run(command, input=data, stdout=subprocess.PIPE, check=True).stdout


def bomb_bodies(notes):
    raw = envelope([]) + b'{"type":"attachment","length":268435456}\n' + b"\0" * (256 * MIB)
    bodies = [(gzip.compress(raw, 9), "gzip"), (zlib.compress(raw, 9), "deflate")]
    for command, encoding in ((["brotli", "-c", "-q", "5"], "br"), (["zstd", "-c", "-3", "-q"], "zstd")):
        compressed = external(command, raw)
        if compressed is None:
            notes.append(f"{encoding} bomb skipped: no `{command[0]}` command")
        else:
            bodies.append((compressed, encoding))
    recording = b'{"segment_id":0}\n' + zlib.compress(b"[" + b" " * (256 * MIB) + b"]", 9)
    bodies.append((envelope([({"type": "replay_recording"}, recording)]), ""))
    return bodies


def json_bomb_bodies():
    array = b"[" + b"0," * (8 * MIB - 1) + b"0]"
    event = b'{"message":"bomb","extra":{"a":' + array + b"}}"
    unterminated = b'{"message":"bomb","extra":{"a":' + array[:-1]
    email_key = b'{"someone@example.com":1,"extra":{"a":' + array + b"}}"
    unknown = b"x" * (60 * MIB)
    bodies = []
    for items in ([({"type": "event"}, event)], [({"type": "event"}, unterminated)],
                  [({"type": "event"}, email_key)], [({"type": "unknown_kind"}, unknown)]):
        bodies.append((gzip.compress(envelope(items), 6), "gzip"))
    return bodies


def prepare(name, notes):
    """The attack's bodies, built before the relay starts (compressing the bombs takes a while)."""
    if name == "bigbodies":
        line = b"2026-11-30T00:00:00Z INFO request handled path=/api/orders/1234 status=200\n"
        text = (line * (30 * MIB // len(line) + 1))[:30 * MIB - 200]
        return [(envelope([({"type": "attachment", "filename": "log.txt", "content_type": "text/plain"}, text)]), "")]
    if name == "bombs":
        return bomb_bodies(notes)
    if name == "jsonbombs":
        return json_bomb_bodies()
    return []


def run_attack(name, port, seconds, bodies, notes, report_out):
    report = {}
    statuses = {}
    if name == "slowloris":
        head = ("POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sentry-Auth: %s\r\n" % AUTH).encode() * 10
        trickle(port, seconds, 1200, head, 1, report)
    elif name == "slowbody":
        head = ("POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\nX-Sentry-Auth: %s\r\nContent-Length: %d\r\n\r\n"
                % (AUTH, 40 * MIB)).encode()
        trickle(port, seconds, 1200, head, 100, report)
    elif name == "bigbodies":
        flood(port, seconds, 200, bodies, statuses)
    else:
        flood(port, seconds, 20, bodies, statuses)
    if statuses:
        report["attacker statuses"] = {str(k): v for k, v in sorted(statuses.items())}
    if notes:
        report["notes"] = notes
    report_out.put(report)


# ---------------------------------------------------------------- the measurement

def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def measure(name, args):
    notes = []
    bodies = prepare(name, notes)
    context = multiprocessing.get_context("fork")
    port_out, stop = context.Queue(), context.Event()
    sink = context.Process(target=run_sink, args=(port_out, stop))
    sink.start()
    sink_port = port_out.get()
    relay, port = start_relay(args.binary, sink_port, args.env, args.relay_arg)
    try:
        time.sleep(1)
        idle = status_kib(relay.pid, "VmRSS")
        results_out, report_out = context.Queue(), context.Queue()
        # The good client runs two seconds longer on each side of the attack.
        good = context.Process(target=run_good_client, args=(port, args.seconds + 4, 50, results_out))
        good.start()
        time.sleep(2)
        attacker = context.Process(target=run_attack, args=(name, port, args.seconds, bodies, notes, report_out))
        attacker.start()
        report = report_out.get()
        attacker.join()
        results = results_out.get()
        good.join()
        peak = status_kib(relay.pid, "VmHWM")
        time.sleep(args.quiet_seconds)
        after = status_kib(relay.pid, "VmRSS")
        time.sleep(2)  # delivery of the last accepted envelopes
        seen = sink_seen(sink_port)
        accepted = [event_id for event_id, status, _ in results if status == 200]
        latencies = [latency for _, _, latency in results]
        alive = relay.poll() is None
        row = {
            "attack": name,
            "relay alive": alive,
            "idle MiB": round(idle / 1024, 1),
            "peak MiB": round(peak / 1024, 1),
            "after quiet MiB": round(after / 1024, 1),
            "good sent": len(results),
            "good success %": round(100 * len(accepted) / max(len(results), 1), 2),
            "good statuses": {str(s): sum(1 for _, st, _ in results if st == s) for s in sorted({r[1] for r in results})},
            "good p50 ms": round(1000 * percentile(latencies, 0.50), 1),
            "good p99 ms": round(1000 * percentile(latencies, 0.99), 1),
            "good max ms": round(1000 * max(latencies), 1),
            "accepted good envelopes delivered": f"{len(set(accepted) & seen)}/{len(accepted)}",
        }
        row.update(report)
        return row
    finally:
        relay.terminate()
        relay.wait()
        stop.set()
        sink.join()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--only", default="slowloris,slowbody,bigbodies,bombs,jsonbombs")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--quiet-seconds", type=float, default=5)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--relay-arg", action="append", default=[])
    args = parser.parse_args()
    for name in args.only.split(","):
        print(json.dumps(measure(name, args)), flush=True)


if __name__ == "__main__":
    main()
