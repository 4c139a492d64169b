#!/usr/bin/env bash
# Fetches the pinned CPU PJRT plugin (and the PJRT C header used by the ABI test, the StableHLO
# refiner that shape-polymorphic exports need, and the LAPACK the jnp.linalg handlers call) into
# third_party/. `--plugin-only` fetches only the plugin; `--refiner-only` only the refiner
# (215 MB); `--lapack-only` only the LAPACK (three libraries from scipy's wheel, 31 MB).
# Wheels are verified against the sha256 pinned in third_party/requirements-*.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
fetch() { # requirements-file "member[,member...]" dest [pip args...]
  # With several members, dest is a folder and each lands there under its own file name (the
  # last member is written last: its presence means all are there).
  local req=$1 members=$2 dest=$3
  shift 3
  local last=$dest
  if [[ $members == *,* ]]; then last=$dest/$(basename "${members##*,}"); fi
  if [ -s "$last" ]; then return 0; fi
  local tmp
  tmp=$(mktemp -d)
  "$py" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    "$@" -r "$req" -d "$tmp" >&2
  "$py" - "$tmp" "$members" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, members, dest = sys.argv[1:]
members = members.split(",")
(whl,) = glob.glob(f"{tmp}/*.whl")
with zipfile.ZipFile(whl) as z:
    for member in members:
        out_path = dest if len(members) == 1 else os.path.join(dest, os.path.basename(member))
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with z.open(member) as src, open(out_path + ".part", "wb") as out:
            shutil.copyfileobj(src, out)
        if len(members) > 1:
            os.chmod(out_path + ".part", 0o755)
        os.replace(out_path + ".part", out_path)
PY
  rm -rf "$tmp"
  echo "fetched $dest" >&2
}
refiner() {
  # The wheel is tagged cp311; the library inside does not use Python.
  fetch "$root/third_party/requirements-refiner.txt" \
    torch_mlir/_mlir_libs/libTorchMLIRAggregateCAPI.so \
    "$root/third_party/refiner/libTorchMLIRAggregateCAPI.so" --python-version 3.11
}
lapack() {
  # scipy's cp312 manylinux wheel, whatever the local Python: only its scipy.libs/ is used.
  fetch "$root/third_party/requirements-lapack.txt" \
    scipy.libs/libquadmath-96973f99-934c22de.so.0.0.0,scipy.libs/libgfortran-040039e1-0352e75f.so.5.0.0,scipy.libs/libscipy_openblas-5f890258.so \
    "$root/third_party/lapack" --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64
}
if [ "${1:-}" = "--refiner-only" ]; then refiner; exit 0; fi
if [ "${1:-}" = "--lapack-only" ]; then lapack; exit 0; fi
fetch "$root/third_party/requirements-cpu-plugin.txt" \
  lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so "$root/third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"
if [ "${1:-}" != "--plugin-only" ]; then
  fetch "$root/third_party/requirements-abi-header.txt" \
    xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h "$root/third_party/pjrt-header/pjrt_c_api.h"
  refiner
  lapack
fi
