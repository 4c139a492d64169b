#!/usr/bin/env python3
"""Time JAX and xlaguard on the same exported models, in the same run.

    python benches/vs_jax.py [--bin target/release/xlaguard] [--iters N] hlo/tiny hlo/digits

For each model folder: deserialize model.jaxexport, load in*.npy, jax.device_put them,
f = jax.jit(exp.call), warm up, then time N calls of f(*args).block_until_ready() with
time.perf_counter_ns per call. Then run `<bin> bench <dir>/model.jaxexport --iters N --json`,
which prints one JSON object ({"raw_us": ..., "validated_us": ..., ...}), and print a table.
A missing or failing binary is reported and the JAX numbers are still printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from jax import export  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_inputs(model_dir: Path, exp: export.Exported) -> list[np.ndarray]:
    args = []
    for i, aval in enumerate(exp.in_avals):
        a = np.load(model_dir / f"in{i}.npy", allow_pickle=False)
        want = np.dtype(aval.dtype)
        if a.dtype != want:
            if a.dtype.kind == "V" and a.dtype.itemsize == want.itemsize:
                a = a.view(want)  # bf16 etc. are stored as '<V2' by numpy + ml_dtypes
            else:
                raise SystemExit(f"{model_dir}/in{i}.npy: dtype {a.dtype}, module wants {want}")
        if tuple(a.shape) != tuple(aval.shape):
            raise SystemExit(f"{model_dir}/in{i}.npy: shape {a.shape}, module wants {aval.shape}")
        args.append(a)
    return args


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def time_jax(model_dir: Path, iters: int, warmup: int) -> dict:
    exp = export.deserialize(bytearray((model_dir / "model.jaxexport").read_bytes()))
    # 64-bit inputs (hlo/dtypes) need x64 on, or JAX would canonicalise them to 32 bits.
    x64 = any(np.dtype(a.dtype).itemsize == 8 for a in (*exp.in_avals, *exp.out_avals))
    with jax.enable_x64(x64):
        return _time_jax(model_dir, exp, iters, warmup)


def _time_jax(model_dir: Path, exp: export.Exported, iters: int, warmup: int) -> dict:
    flat = [jax.device_put(a) for a in load_inputs(model_dir, exp)]
    args, kwargs = jax.tree.unflatten(exp.in_tree, flat)
    f = jax.jit(exp.call)
    t0 = time.perf_counter_ns()
    jax.block_until_ready(f(*args, **kwargs))
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    for _ in range(warmup):
        jax.block_until_ready(f(*args, **kwargs))
    samples = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        jax.block_until_ready(f(*args, **kwargs))  # works for pytree outputs too
        samples.append((time.perf_counter_ns() - t) / 1e3)
    samples.sort()
    return {"median_us": statistics.median(samples), "p90_us": percentile(samples, 0.9),
            "first_call_ms": first_ms}


def run_ours(binary: str, model_dir: Path, iters: int, timeout: float) -> tuple[dict | None, str]:
    path = Path(binary)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None, f"binary {binary} not found or not executable (build it: cargo build --release)"
    cmd = [str(path), "bench", str(model_dir / "model.jaxexport"), "--iters", str(iters), "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(cmd)}: timed out after {timeout:.0f} s"
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return None, f"{' '.join(cmd)}: exit {p.returncode}: {err[0]}"
    # The binary prints one JSON object; take the last line that parses.
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj, ""
    return None, f"{' '.join(cmd)}: no JSON object in output: {p.stdout[-200:]!r}"


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.2f}" if v == v else "nan"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="model folders (hlo/<name>)")
    ap.add_argument("--bin", default="target/release/xlaguard", help="xlaguard binary")
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per binary run")
    ns = ap.parse_args()

    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__ if hasattr(jax.lib, '__version__') else '?'}, "
          f"ml_dtypes {ml_dtypes.__version__}, python {platform.python_version()}, "
          f"backend {jax.default_backend()} ({jax.devices()[0].device_kind})")
    print(f"iters {ns.iters}, warmup {ns.warmup}, binary {ns.bin}\n")

    rows, problems = [], []
    for d in ns.models:
        if not (d / "model.jaxexport").is_file():
            problems.append(f"{d}: no model.jaxexport")
            continue
        j = time_jax(d, ns.iters, ns.warmup)
        ours, why = run_ours(ns.bin, d, ns.iters, ns.timeout)
        if why:
            problems.append(why)
        raw = ours.get("raw_us") if ours else None
        val = ours.get("validated_us") if ours else None
        ratio = (val / j["median_us"]) if isinstance(val, (int, float)) and j["median_us"] > 0 else None
        rows.append([d.name, j["median_us"], j["p90_us"], raw, val, ratio])

    header = ["model", "jax_us", "jax_p90_us", "ours_raw_us", "ours_validated_us", "validated/jax"]
    table = [header] + [[r[0]] + [fmt(v) for v in r[1:]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for p in dict.fromkeys(problems):
        print(f"note: {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
