#!/usr/bin/env bash
# Fetches Triton's perf_analyzer into third_party/perf-analyzer/ (git-ignored), for the batching
# benchmark (scripts/bench-batching.sh); CI does not need it. Everything is pinned by version and
# sha256: the two wheels in third_party/requirements-perf-analyzer.txt, Debian's libb64-0d below.
# Prints the path of a wrapper that sets LD_LIBRARY_PATH. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
dest="$root/third_party/perf-analyzer"
b64_version="1.2-5+b1"
b64_sha256="b0e1d6fde8bdccc18c3884144aede064dc82464dd4777275fa80e74c05583e82"
if [ -x "$dest/perf_analyzer" ] && [ -s "$dest/lib/libb64.so.0d" ] && [ -s "$dest/lib/libcudart.so.12" ]; then
  echo "$dest/perf_analyzer"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -r "$root/third_party/requirements-perf-analyzer.txt" -d "$tmp" >&2
mkdir -p "$dest/lib"
"$py" - "$tmp" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1:]
for pattern, member, out in [
    ("tritonclient-*.whl", "tritonclient-2.48.0.data/data/bin/perf_analyzer", "perf_analyzer.bin"),
    ("nvidia_cuda_runtime_cu12-*.whl", "nvidia/cuda_runtime/lib/libcudart.so.12", "lib/libcudart.so.12"),
]:
    (whl,) = glob.glob(f"{tmp}/{pattern}")
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(f"{dest}/{out}", "wb") as o:
        shutil.copyfileobj(src, o)
os.chmod(f"{dest}/perf_analyzer.bin", 0o755)
PY
(cd "$tmp" && apt-get download "libb64-0d=$b64_version" >&2)
echo "$b64_sha256  $(ls "$tmp"/libb64-0d_*.deb)" | sha256sum -c --quiet -
dpkg-deb -x "$tmp"/libb64-0d_*.deb "$tmp/b64"
cp "$tmp/b64/usr/lib/x86_64-linux-gnu/libb64.so.0d" "$dest/lib/"
cat > "$dest/perf_analyzer" <<'SH'
#!/bin/sh
here=$(cd "$(dirname "$0")" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer.bin" "$@"
SH
chmod +x "$dest/perf_analyzer"
echo "fetched perf_analyzer into $dest" >&2
echo "$dest/perf_analyzer"
