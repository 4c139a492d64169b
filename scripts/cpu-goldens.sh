#!/usr/bin/env bash
# JAX's goldens for this machine's CPU, when hlo/cpu-classes/ has no record of it (XLA tunes
# its CPU code for the host, so JAX's own low bits differ between CPUs; hlo/README.md, "Goldens
# on another CPU"). Finds CPython 3.12 (PYTHON312, python3.12 on PATH, or pyenv's), installs
# hlo/requirements-goldens.txt (pinned by sha256) into venv-goldens/ (git-ignored; a stamp of
# the requirements' sha256 makes a second install a no-op) and runs hlo/cpu_goldens.py, which
# writes <folder>/cpu-<cpu>/ where JAX's outputs here differ and hlo/cpu-classes/<cpu>.txt.
# Every golden still comes from JAX; none from xlaguard. Without CPython 3.12 it says so and
# leaves the committed goldens (the tests then name the CPU if they differ).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cpu=$(python3 -c 'import sys; sys.path.insert(0, "tests"); import goldens; print(goldens.cpu_name())')
if [ -f "hlo/cpu-classes/$cpu.txt" ]; then
    echo "goldens of this CPU ($cpu) are recorded: hlo/cpu-classes/$cpu.txt" >&2
    exit 0
fi
py=${PYTHON312:-}
if [ -z "$py" ]; then
    # (pyenv's shim for python3.12 is on PATH even where it refuses to run: try each.)
    for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
            py=$c
            break
        fi
    done
fi
if [ -z "$py" ]; then
    echo "no record of this CPU's goldens ($cpu) and no CPython 3.12 to run JAX: the tests" \
         "compare with the committed ones (set PYTHON312 to a python3.12)" >&2
    exit 0
fi
venv="$root/venv-goldens"
req="$root/hlo/requirements-goldens.txt"
stamp=$(sha256sum "$req" | cut -d' ' -f1)
if ! [ -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --require-hashes --only-binary=:all: -r "$req" >&2
    echo "$stamp" > "$venv/.stamp"
fi
echo "no record of this CPU's goldens ($cpu): JAX writes them (hlo/cpu_goldens.py)" >&2
# JAX's and XLA's log lines go to stderr; the script's own report to stdout.
"$venv/bin/python" hlo/cpu_goldens.py 2>/dev/null
