#!/usr/bin/env bash
# Builds the binaries scripts/gpu-check.sh takes to a GPU machine (release, --features cuda,
# stripped) into gpu-bin/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
mkdir -p gpu-bin
cargo build --release --features cuda --bin xlaguard --example gpu_scan_bench
tests=$(cargo test --release --features cuda --no-run --test gpu --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
cp target/release/xlaguard gpu-bin/xlaguard
cp target/release/examples/gpu_scan_bench gpu-bin/gpu_scan_bench
cp "$tests" gpu-bin/gpu-tests
strip gpu-bin/*
ls -la gpu-bin
