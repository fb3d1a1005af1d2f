#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Prints, per target, the executions, executions per second and coverage (cov/ft) from libFuzzer's
# final statistics. Fails if any target crashes; crashing inputs stay in fuzz/artifacts/<target>/.
# Each target starts from its committed seeds in fuzz/corpus/<target>/ (new inputs found on the way
# go to fuzz/target/corpus/<target>/, outside the committed seeds). Needs a nightly toolchain;
# installs cargo-fuzz if it is missing. Not part of CI: it takes minutes.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build

mkdir -p target/fuzz-logs
printf '%-12s %8s %12s %10s %8s %8s  %s\n' target seconds executions exec/s cov ft result
failed=0
for target in "${targets[@]}"; do
    work="target/corpus/$target"
    mkdir -p "$work" "artifacts/$target"
    log="target/fuzz-logs/$target.log"
    dict=()
    if [ -f "dict/$target.dict" ]; then
        dict=("-dict=dict/$target.dict")
    fi
    result=ok
    # The seeds are read-only input: new inputs go to the first (work) directory.
    if ! cargo +nightly fuzz run "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
        result="CRASH (see $log and fuzz/artifacts/$target/)"
        failed=1
    fi
    # A crashed run may lack some of these lines.
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    printf '%-12s %8s %12s %10s %8s %8s  %s\n' "$target" "$seconds" "${runs:--}" "${rate:--}" "${cov:--}" \
        "${ft:--}" "$result"
done
exit "$failed"
