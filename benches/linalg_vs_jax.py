#!/usr/bin/env python3
"""Per-call time of jnp.linalg on 256x256 matrices: JAX against xlaguard, same exported modules,
same run.

    venv312/bin/python benches/linalg_vs_jax.py [--bin target/release/xlaguard] [--iters N]

Exports jnp.linalg.solve (with a [256,1] right-hand side), cholesky, eigh and svd of float32
[256,256] (and float64 with --f64) into target/linalg-bench/<name>/ (model.jaxexport +
in*.npy), then times them exactly as benches/vs_jax.py does: JAX with jax.jit(exp.call) on
device_put inputs, xlaguard with `xlaguard bench` (raw: inputs resident; validated: signature
and value checks + host-to-device copy). JAX and xlaguard alternate for --rounds rounds; each
number is the lowest of the rounds' medians (on a shared machine a round that another process
disturbed only ever makes a median larger). Prints them and the ratios to JAX (goal: <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import export  # noqa: E402

import vs_jax  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N = 256


def write(d: Path, fn, args) -> None:
    d.mkdir(parents=True, exist_ok=True)
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    exp = export.export(jax.jit(fn), platforms=("cpu",))(*specs)
    (d / "model.jaxexport").write_bytes(bytes(exp.serialize()))
    for i, a in enumerate(args):
        np.save(d / f"in{i}.npy", a, allow_pickle=False)


def export_all(out: Path, dt) -> list[Path]:
    r = np.random.default_rng(0)
    a = r.standard_normal((N, N)).astype(dt)
    b = r.standard_normal((N, 1)).astype(dt)
    spd = (a @ a.T + N * np.eye(N)).astype(dt)
    sym = ((a + a.T) / 2).astype(dt)
    tag = np.dtype(dt).name
    models = {
        f"solve_{tag}": (jnp.linalg.solve, (a, b)),
        f"cholesky_{tag}": (jnp.linalg.cholesky, (spd,)),
        f"eigh_{tag}": (lambda s: tuple(jnp.linalg.eigh(s)), (sym,)),
        f"svd_{tag}": (lambda a: tuple(jnp.linalg.svd(a)), (a,)),
    }
    dirs = []
    for name, (fn, args) in models.items():
        write(out / name, fn, args)
        dirs.append(out / name)
    return dirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target/release/xlaguard"))
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--f64", action="store_true", help="also float64")
    ap.add_argument("--rounds", type=int, default=5)
    ns = ap.parse_args()
    out = ROOT / "target" / "linalg-bench"
    dirs = export_all(out, np.float32)
    if ns.f64:
        with jax.enable_x64(True):
            dirs += export_all(out, np.float64)
    print(f"cpu: {vs_jax.cpu_model()} ({os.cpu_count()} logical CPUs); jax {jax.__version__}; "
          f"iters {ns.iters}, warmup {ns.warmup}, rounds {ns.rounds}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}; binary {ns.bin}\n")
    header = ["model", "jax_us", "ours_raw_us", "ours_validated_us", "raw/jax", "validated/jax"]
    rows, problems = [], []
    for d in dirs:
        jax_us, raws, vals = [], [], []
        for _ in range(ns.rounds):
            jax_us.append(vs_jax.time_jax(d, ns.iters, ns.warmup)["median_us"])
            ours, why = vs_jax.run_ours(ns.bin, d, ns.iters, 600.0)
            if why:
                problems.append(why)
            elif ours:
                raws.append(ours["raw_us"])
                vals.append(ours["validated_us"])
        j = min(jax_us)
        raw = min(raws) if raws else None
        val = min(vals) if vals else None
        ratio = lambda v: v / j if isinstance(v, (int, float)) else None  # noqa: E731
        rows.append([d.name, j, raw, val, ratio(raw), ratio(val)])
    table = [header] + [[r[0]] + [vs_jax.fmt(v) for v in r[1:]] for r in rows]
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
