#!/usr/bin/env bash
# The GPU proof (issue 6), on a machine with an NVIDIA GPU, JAX + the CUDA plugin from pip, and
# no Rust toolchain. Build here first (glibc 2.36; the binaries run on newer glibc):
#
#   scripts/build-gpu-bin.sh        # -> gpu-bin/{xlaguard,gpu-tests,gpu_scan_bench}
#
# then, on the GPU machine, from the repository root:
#
#   scripts/gpu-check.sh            # prints a markdown report, also written to $OUT/report.md
#
# Finishes in a few minutes on an H100. Nothing here sets LD_LIBRARY_PATH: the binary finds the
# CUDA plugin and the NVIDIA libraries beside it by itself.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-/tmp/xlaguard-gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
if ! gpu-bin/xlaguard --device cuda plugin >/dev/null 2>&1; then
  # Discovery looks in the usual site-packages; name the plugin explicitly if it is elsewhere.
  p=$("$py" -c 'import os, jax_plugins.xla_cuda13 as p; print(os.path.join(os.path.dirname(p.__file__), "xla_cuda_plugin.so"))' 2>/dev/null)
  echo "discovery did not find the CUDA plugin; using XLAGUARD_PLUGIN=$p"
  export XLAGUARD_PLUGIN=$p
fi
exec "$py" scripts/gpu_check.py --bin gpu-bin/xlaguard --tests gpu-bin/gpu-tests --scan-bench gpu-bin/gpu_scan_bench --out "$out" "$@"
