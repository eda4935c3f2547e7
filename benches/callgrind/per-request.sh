#!/usr/bin/env bash
# Instructions per request of a relay binary under the load bench (the raw python event, 4 connections):
# callgrind on the running relay, counters zeroed after the warm-up and dumped 50 s later, divided by the calls of
# `ingest::prepare` (one per envelope). Instruction counts repeat to a few hundred per request whatever else the
# machine runs, so two builds compare on a shared machine where their wall times do not.
#
#   benches/callgrind/per-request.sh RELAY_BINARY TAG [scrub-relay run flags...]
#   e.g. benches/callgrind/per-request.sh target/release/scrub-relay main --upstream-encoding=zstd
#
# Writes /tmp/callgrind/TAG.out.1 (read it with callgrind.py rows/callers) and prints the per-request figure.
# Needs valgrind and the load bench built (`cargo bench --bench load --no-run`). Takes about 95 s.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=$(realpath "$1")
tag=$2
shift 2
out=/tmp/callgrind
mkdir -p "$out"
rm -f "$out/$tag.out" "$out/$tag.out".*
target=${CARGO_TARGET_DIR:-$repo/target}
load=$(ls -t "$target"/release/deps/load-* | grep -v '\.d$' | head -1)
wrapper="$out/$tag.relay.sh"
printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s %s "$@"\n' "$out/$tag.out" "$binary" >"$wrapper"
chmod +x "$wrapper"
relay_args=()
for flag in "$@"; do relay_args+=("--relay-arg=$flag"); done
"$load" --only single --connections 4 --warmup 25 --seconds 60 --relay-binary "$wrapper" "${relay_args[@]}" \
    >"$out/$tag.load.log" 2>&1 &
bench=$!
sleep 35
relay=$(pgrep -f -- "--callgrind-out-file=$out/$tag.out" | head -1)
callgrind_control -z "$relay" >/dev/null 2>&1
sleep 50
callgrind_control -d "$relay" >/dev/null 2>&1
wait "$bench"
python3 "$here/callgrind.py" calls "$out/$tag.out.1" scrub_relay::ingest::prepare
