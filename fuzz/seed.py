#!/usr/bin/env python3
"""Builds the starting corpora in fuzz/corpus/<target>/ from the SDK captures (tests/fixtures/sdk/) and rules.yaml.

Idempotent: files are named by content hash, so running it again adds nothing new. The committed corpora are these
seeds plus what the fuzzers found, minimized with `cargo fuzz cmin`.
"""
import gzip, hashlib, json, pathlib, zlib

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


if __name__ == "__main__":
    main()
