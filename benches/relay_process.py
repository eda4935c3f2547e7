"""What benches/burst.py and benches/attack.py share: a sink that answers like Sentry, starting a release
`scrub-relay` on a free loopback port against it, and reading the relay's memory from /proc. Stdlib only."""
import http.server, os, socket, subprocess, threading, time


class SentryLikeSink(http.server.BaseHTTPRequestHandler):
    """Reads each POST completely, hands the body to `received` (a no-op here; override it to look inside) and
    answers 200 with an event id, as Sentry does."""
    protocol_version = "HTTP/1.1"

    def received(self, body):
        pass

    def do_POST(self):
        self.received(self.rfile.read(int(self.headers.get("content-length", 0))))
        answer = b'{"id":"00000000000000000000000000000000"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def start_sink(handler=SentryLikeSink):
    """A threading HTTP server on a free loopback port, serving in a daemon thread; `.shutdown()` stops it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    """A `/proc/<pid>/status` figure in KiB: `VmRSS` (now) or `VmHWM` (the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def start_relay(binary, sink_port, env_pairs, relay_args):
    """The relay forwarding to the sink on `sink_port`, once it accepts connections: `(process, port)`."""
    port = free_port()
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in env_pairs)
    relay = subprocess.Popen([binary, "run", "--listen", f"127.0.0.1:{port}", "--upstream",
                              f"http://127.0.0.1:{sink_port}", *relay_args],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return relay, port
