#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetch the pinned plugin (and the PJRT header for the
# ABI test), then build and run every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
scripts/fetch-plugin.sh
scripts/setup-test-venv.sh
# JAX's goldens for this CPU, if hlo/cpu-classes/ has none (hlo/README.md).
scripts/cpu-goldens.sh
cargo fmt --check
# Lints cover the CUDA code too (cudarc builds without a CUDA toolkit; nothing of it runs here).
cargo clippy --locked --all-targets --features cuda -- -D warnings
cargo test --locked --features test-hooks "$@"
# Every fuzz target, briefly, on its committed corpus (stable toolchain; docs/fuzzing.md).
scripts/fuzz-smoke.sh
