#!/usr/bin/env bash
# Whether two relay binaries scrub alike: stdout and `--explain` of `scrub-relay scrub` on every fixture body and
# envelope (168 inputs), with the shipped rules. Run it after every change that is meant to be faster, not different.
#
#   benches/callgrind/same-output.sh NEW_BINARY OLD_BINARY
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
new=$1 old=$2 inputs=0 differences=0
for input in tests/fixtures/sdk/*.body tests/fixtures/sdk/*.envelope tests/fixtures/*/*.envelope; do
    [ -f "$input" ] || continue
    inputs=$((inputs + 1))
    for mode in "" --explain; do
        if [ -z "$mode" ]; then
            a=$("$new" scrub --rules rules.yaml "$input" 2>/dev/null | sha1sum)
            b=$("$old" scrub --rules rules.yaml "$input" 2>/dev/null | sha1sum)
        else
            a=$("$new" scrub --rules rules.yaml --explain "$input" 2>&1 >/dev/null | sha1sum)
            b=$("$old" scrub --rules rules.yaml --explain "$input" 2>&1 >/dev/null | sha1sum)
        fi
        if [ "$a" != "$b" ]; then
            echo "differs${mode:+ ($mode)}: $input"
            differences=$((differences + 1))
        fi
    done
done
echo "$inputs inputs, $differences differences"
[ "$differences" -eq 0 ]
