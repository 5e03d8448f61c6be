#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets under fuzz/ one after another, each for a
# bounded time, and prints one summary line per target. Not part of CI (.ci/run):
# run by hand, e.g. before a release or after touching a decoder.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]   (default: 600 s, every target)
#
# - Toolchain: cargo-fuzz needs nightly-only flags (-Z, sanitizers); the stable
#   toolchain accepts them with RUSTC_BOOTSTRAP=1, which this script sets.
#   AddressSanitizer works that way; FUZZ_SANITIZER=none turns it off.
# - Builds with debug assertions (so integer overflow panics) and optimizations,
#   into fuzz/target (its own target dir).
# - One fuzzer process at a time (plain libFuzzer, no -fork/-jobs/-workers): the
#   machine is shared.
# - Corpora live in fuzz/corpus/<target>/ (committed; grown by every run: shrink
#   with `cargo fuzz cmin -O -a <target>` before committing). Crashes go to
#   fuzz/artifacts/<target>/; logs to fuzz/logs/<target>.log (both ignored by git).
#   Reproduce one: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-600}"
shift || true
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-address}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

build=(-O -a --sanitizer "$sanitizer")
cargo fuzz build "${build[@]}"

mkdir -p logs
summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "=== $t: ${secs}s ($(date -u +%H:%M:%S))"
    status=0
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: an input growing
    # memory past 2 GiB is a bug (unbounded allocation).
    cargo fuzz run "${build[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"logs/$t.log" 2>&1 || status=$?
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$' | tail -1 || true)
    if [ -z "$execs" ]; then
        execs=$(grep -oE '^#[0-9]+' "logs/$t.log" | tail -1 | tr -d '#' || true)
    fi
    files=$(find "corpus/$t" -type f | wc -l)
    bytes=$(find "corpus/$t" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    crashes=$(find "artifacts/$t" -type f | wc -l)
    line="$t: ${secs}s, ${execs:-?} executions, corpus ${files} files / ${bytes} bytes, ${crashes} crash artifacts, exit ${status}"
    echo "$line"
    summary+=("$line")
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "logs/$t.log" | head -5 || true
    fi
done

echo "=== summary (sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
exit "$failed"
