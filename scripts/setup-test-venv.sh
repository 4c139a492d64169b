#!/usr/bin/env bash
# The Python side of the server compatibility test: tritonclient[http] and [grpc], pinned by version and
# sha256 (tests/requirements-tritonclient.txt), and kubernetes-validate for the deploy/ manifests
# (tests/requirements-deploy.txt), in venv-test/ (git-ignored). Idempotent: a stamp
# holding the requirements' sha256 makes a second run a no-op.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/venv-test"
req="$root/tests/requirements-tritonclient.txt"
req_deploy="$root/tests/requirements-deploy.txt"
py=${PYTHON:-python3}
stamp=$(cat "$req" "$req_deploy" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --require-hashes --only-binary=:all: -r "$req" -r "$req_deploy" >&2
echo "$stamp" > "$venv/.stamp"
echo "installed tritonclient[http,grpc] and kubernetes-validate into $venv" >&2
