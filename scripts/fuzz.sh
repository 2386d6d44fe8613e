#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 60) with libFuzzer's
# coverage instrumentation, on stable Rust without a sanitizer (Rust's own checks, debug
# assertions and overflow checks on). Starts from the committed seed corpus (fuzz/corpus),
# working on a copy so the repository is not changed. Fails on the first crash, leak or
# timeout, leaving the input in $FUZZ_OUT (printed). Prints, per target, the executions and
# the corpus size reached.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(proto bootstrap layer range_route)
fi
[[ "$SECONDS_EACH" =~ ^[1-9][0-9]*$ ]] || { echo "SECONDS must be a positive integer" >&2; exit 64; }
# shellcheck source=scripts/env.sh
source scripts/env.sh
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
HOST=$(rustc -vV | sed -n 's/^host: //p')
echo "==== building the fuzz targets (instrumented, $TARGET_DIR) ===="
cargo build --release --manifest-path fuzz/Cargo.toml --target-dir "$TARGET_DIR" --target "$HOST" \
    $(printf -- '--bin %s ' "${TARGETS[@]}")
FUZZ_OUT=${FUZZ_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/damselfly-fuzz.XXXXXX")}
echo "==== fuzzing ${#TARGETS[@]} targets, ${SECONDS_EACH}s each (work dir $FUZZ_OUT) ===="
summary=()
for t in "${TARGETS[@]}"; do
    corpus="$FUZZ_OUT/$t/corpus"
    mkdir -p "$corpus" "$FUZZ_OUT/$t/artifacts"
    cp fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
    log="$FUZZ_OUT/$t/log"
    # -rss_limit_mb: a decoder that allocates without bound is a finding too.
    if ! "$TARGET_DIR/$HOST/release/$t" "$corpus" -max_total_time="$SECONDS_EACH" \
        -print_final_stats=1 -rss_limit_mb=1024 -timeout=10 -max_len=65536 \
        -artifact_prefix="$FUZZ_OUT/$t/artifacts/" >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "FUZZ FAILURE in target $t: inputs kept in $FUZZ_OUT/$t/artifacts" >&2
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    summary+=("$(printf '| %-12s | %8ss | %12s | %6s |' "$t" "$SECONDS_EACH" "${execs:-?}" "$(ls "$corpus" | wc -l)")")
done
echo
echo "| target       |     time |   executions | corpus |"
echo "|--------------|---------:|-------------:|-------:|"
printf '%s\n' "${summary[@]}"
echo "0 crashes"
rm -rf "$FUZZ_OUT"
