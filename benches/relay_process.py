"""What benches/burst.py and benches/attack.py share: starting a release `scrub-relay` on a free loopback port
against a local sink, and reading its memory from /proc. Stdlib only."""
import os, socket, subprocess, time


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
