#!/usr/bin/env bash
# Instructions of the scrub stage per pass over benches/scrub.rs's 19 raw captures (`pipeline/mix/dense`):
# `pipeline::process` only (callgrind's --toggle-collect), marginal between a 2 s and a 6 s profile run, so the first
# calls (caches, lazily built state) are left out.
#
#   benches/callgrind/scrub-pass.sh SCRUB_BENCH_BINARY TAG
#
# SCRUB_BENCH_BINARY is target/release/deps/scrub-<hash> from `cargo bench --bench scrub --no-run` (it reads the
# fixtures of the checkout it was built in).
# SCRUB_BENCH_WALL_TIME=1: the bench's thread-CPU clock does not run under valgrind. Takes about a minute.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binary=$(realpath "$1")
tag=$2
out=/tmp/callgrind
mkdir -p "$out"
cd "$here/../.."
for seconds in 2 6; do
    SCRUB_BENCH_WALL_TIME=1 valgrind --tool=callgrind --callgrind-out-file="$out/scrub-$tag-$seconds.out" \
        --toggle-collect='scrub_relay::pipeline::process' "$binary" --bench 'pipeline/mix/dense$' \
        --profile-time "$seconds" >"$out/scrub-$tag-$seconds.log" 2>&1 || {
        echo "the bench failed; see $out/scrub-$tag-$seconds.log (it reads the fixtures of the tree it was built in)" >&2
        exit 1
    }
done
printf '%s: ' "$tag"
python3 "$here/callgrind.py" marginal "$out/scrub-$tag-2.out" "$out/scrub-$tag-6.out" scrub_relay::pipeline::process 19
