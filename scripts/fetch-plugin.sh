#!/usr/bin/env bash
# Fetches the pinned CPU PJRT plugin (and the PJRT C header used by the ABI test, and the StableHLO
# refiner that shape-polymorphic exports need) into third_party/. `--plugin-only` fetches only the
# plugin; `--refiner-only` only the refiner (215 MB).
# Wheels are verified against the sha256 pinned in third_party/requirements-*.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
fetch() { # requirements-file member dest [pip args...]
  local req=$1 member=$2 dest=$3
  shift 3
  if [ -s "$dest" ]; then return 0; fi
  local tmp
  tmp=$(mktemp -d)
  "$py" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    "$@" -r "$req" -d "$tmp" >&2
  mkdir -p "$(dirname "$dest")"
  "$py" - "$tmp" "$member" "$dest" <<'PY'
import glob, shutil, sys, zipfile
tmp, member, dest = sys.argv[1:]
(whl,) = glob.glob(f"{tmp}/*.whl")
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
PY
  mv "$dest.part" "$dest"
  rm -rf "$tmp"
  echo "fetched $dest" >&2
}
refiner() {
  # The wheel is tagged cp311; the library inside does not use Python.
  fetch "$root/third_party/requirements-refiner.txt" \
    torch_mlir/_mlir_libs/libTorchMLIRAggregateCAPI.so \
    "$root/third_party/refiner/libTorchMLIRAggregateCAPI.so" --python-version 3.11
}
if [ "${1:-}" = "--refiner-only" ]; then refiner; exit 0; fi
fetch "$root/third_party/requirements-cpu-plugin.txt" \
  lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so "$root/third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"
if [ "${1:-}" != "--plugin-only" ]; then
  fetch "$root/third_party/requirements-abi-header.txt" \
    xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h "$root/third_party/pjrt-header/pjrt_c_api.h"
  refiner
fi
