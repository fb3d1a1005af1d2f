#!/usr/bin/env bash
# Runs the SIGKILL crash test N times in a row (default 20) and stops at the first failure.
# Each run kills a real node process in the middle of a QoS 1 / QoS 2 load and checks that every
# acknowledged message reaches the persistent subscriber after the restart.
#
#   scripts/crash-loop.sh [runs]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
cargo build --locked -q -p m2m --tests --bins || exit 1
for i in $(seq 1 "$runs"); do
    out=$(cargo test --locked -q -p m2m --test crash -- --nocapture 2>&1)
    status=$?
    if [ "$status" -ne 0 ]; then
        echo "$out"
        echo "run $i/$runs FAILED"
        exit 1
    fi
    echo "run $i/$runs: $(grep -E '^acknowledged' <<<"$out")"
done
echo "$runs of $runs runs passed"
