#!/usr/bin/env python3
"""Memory after a burst: starts a release `scrub-relay` binary against a sink on loopback, sends bursts of large
gzip envelopes (and compression bombs) at once, and reports the relay's RSS at idle, its peak, and after it has been
quiet: the measurement behind the choice of allocator (issue #14). Results and the comparison of allocators are in
benches/LOAD.md ("Allocator"); `--kind` runs only the large bodies or only the bombs, so each gets its own peak.

    python3 benches/burst.py --binary target/release/scrub-relay [--bodies 200] [--size-mib 4] [--rounds 3]
        [--kind both|bodies|bombs] [--quiet-seconds 10] [--env NAME=VALUE ...] [--relay-arg=--flag=value ...]

Stdlib only. Everything runs on 127.0.0.1.
"""
import argparse, gzip, json, socket, threading, time

from relay_process import start_relay, start_sink, status_kib


def envelope(size):
    # An event and a text attachment of `size` bytes of log-like lines (compresses about 10:1, like real logs).
    line = b'2026-11-30T00:00:00Z INFO request handled path=/api/orders/1234 status=200 duration_ms=12\n'
    text = (line * (size // len(line) + 1))[:size]
    head = b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n'
    event = b'{"message":"burst","level":"info"}'
    return (head + b'{"type":"event","length":%d}\n' % len(event) + event + b"\n"
            + b'{"type":"attachment","length":%d,"filename":"log.txt","content_type":"text/plain"}\n' % len(text)
            + text + b"\n")


def post(port, body, encoding, results):
    request = (b"POST /api/42/envelope/ HTTP/1.1\r\nHost: relay\r\n"
               b"X-Sentry-Auth: Sentry sentry_key=publickey123, sentry_version=7\r\n"
               b"Content-Encoding: " + encoding.encode() + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(request + body)
            answer = b""
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
            results.append(int(answer.split(b" ")[1]) if answer else 0)
    except OSError:
        results.append(0)


def burst(port, bodies, body, encoding):
    results = []
    threads = [threading.Thread(target=post, args=(port, body, encoding, results)) for _ in range(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--bodies", type=int, default=200)
    parser.add_argument("--size-mib", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet-seconds", type=float, default=10)
    parser.add_argument("--kind", choices=["both", "bodies", "bombs"], default="both")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--relay-arg", action="append", default=[])
    args = parser.parse_args()

    sink = start_sink()
    relay, port = start_relay(args.binary, sink.server_address[1], args.env, args.relay_arg)
    try:
        idle = status_kib(relay.pid, "VmRSS")
        big = gzip.compress(envelope(int(args.size_mib * 1024 * 1024)), 6)
        bomb = gzip.compress(b"\0" * (150 * 1024 * 1024), 9)
        report = {"idle_mib": round(idle / 1024, 1), "rounds": []}
        for _ in range(args.rounds):
            started = time.monotonic()
            statuses = []
            if args.kind != "bombs":
                statuses += burst(port, args.bodies, big, "gzip")
            if args.kind != "bodies":
                statuses += burst(port, max(args.bodies // 10, 1), bomb, "gzip")
            elapsed = time.monotonic() - started
            time.sleep(1)
            after_1s = status_kib(relay.pid, "VmRSS")
            time.sleep(max(args.quiet_seconds - 1, 0))
            report["rounds"].append({
                "seconds": round(elapsed, 1),
                "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                "after_1s_mib": round(after_1s / 1024, 1),
                "after_quiet_mib": round(status_kib(relay.pid, "VmRSS") / 1024, 1),
            })
        report["kind"] = args.kind
        report["peak_mib"] = round(status_kib(relay.pid, "VmHWM") / 1024, 1)
        print(json.dumps(report))
    finally:
        relay.terminate()
        relay.wait()
        sink.shutdown()


if __name__ == "__main__":
    main()
