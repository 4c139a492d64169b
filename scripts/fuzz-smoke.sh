#!/usr/bin/env bash
# CI's fuzz smoke run: builds every fuzz target with the stable toolchain (libFuzzer from the
# libfuzzer-sys crate, coverage instrumentation by rustc flags: no cargo-fuzz, no nightly) and
# runs each for FUZZ_SMOKE_SECONDS (default 8) on a copy of its committed corpus (fuzz/corpus/),
# with its dictionary. A crash, leak-free timeout or failed assertion fails the run; the input is
# left in fuzz/artifacts/TARGET/. Commit it under tests/fuzz_regressions/ and fix the library.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
source ../scripts/fuzz-targets.sh
seconds=${FUZZ_SMOKE_SECONDS:-8}
# libfuzzer-sys compiles libFuzzer (C++) from its sources.
if ! command -v c++ >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y --no-install-recommends g++ >&2
    else
        echo "fuzz smoke needs a C++ compiler (apt-get install g++)" >&2
        exit 1
    fi
fi
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_FUZZ:-target/smoke}
export RUSTFLAGS="$FUZZ_RUSTFLAGS"
# --target: instrument the targets, not build scripts and proc macros (as cargo-fuzz does).
cargo build --locked --profile smoke --target "$host" --bins
bin="$CARGO_TARGET_DIR/$host/smoke"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${FUZZ_TARGETS[@]}"; do
    mkdir -p "$work/$t" "artifacts/$t"
    cp corpus/"$t"/* "$work/$t/"
    # shellcheck disable=SC2046
    if ! "$bin/$t" "$work/$t" $(fuzz_dict "$t") -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"$work/$t.log" 2>&1; then
        tail -40 "$work/$t.log"
        failed+=("$t")
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$t.log" | tail -1)
    echo "fuzz smoke $t: ${runs:-?} executions in ${seconds}s, $cov"
done
if ((${#failed[@]})); then
    echo "fuzz smoke FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
