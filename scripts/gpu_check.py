#!/usr/bin/env python3
"""The GPU proof for xlaguard, run by scripts/gpu-check.sh on a machine with an NVIDIA GPU.

1. Golden fixtures: every hlo/ model runs in JAX on the GPU and through our binary on the CUDA
   plugin, in the same run, on the same StableHLO; outputs are compared (tolerances below).
2. Timing: our execute vs jax.jit on the same module, for the tiny model and a large matmul MLP
   (x[256,4096] @ w1[4096,4096] -> relu -> @ w2[4096,1024]), inputs resident on the device.
3. The on-device validation tests (tests/gpu.rs) and the scan-vs-copy bandwidth bench.

`--platform cpu` runs the same script against the CPU plugin (a dry run of everything but the
GPU-only parts), which is how it is checked on machines without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["tiny", "digits", "conv", "attention", "embedding", "dict_io", "fori", "kept_var", "multi_platform", "dtypes"]
# Tolerances per output dtype (GPU kernels may differ between two compiles, e.g. autotuned GEMM
# algorithms): integers and bools exact; floats |a-b| <= atol + rtol*|b|.
TOL = {"float32": (1e-5, 1e-5), "float64": (1e-12, 1e-12), "float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}
REPORT: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    REPORT.append(line)


def load_inputs(d: Path, exp):
    import numpy as np
    args = []
    for i, aval in enumerate(exp.in_avals):
        a = np.load(d / f"in{i}.npy")
        want = np.dtype(aval.dtype)
        if a.dtype != want:
            a = a.view(want)
        args.append(a)
    return args


def for_platform(exp, platform: str):
    """The same module, tagged for `platform` if it was exported for others (as our
    --any-platform does on our side)."""
    plats = tuple("cuda" if p == "gpu" else p for p in exp.platforms)
    if platform in plats:
        return exp
    return dataclasses.replace(exp, platforms=(platform,))


def npy_load(p: Path, dtype):
    import numpy as np
    a = np.load(p)
    return a.view(dtype) if a.dtype != dtype else a


def compare(jax_out, ours_path: Path):
    import numpy as np
    b = npy_load(ours_path, jax_out.dtype)
    a = np.asarray(jax_out)
    if a.shape != b.shape:
        return False, f"shape {b.shape} vs JAX {a.shape}"
    if a.tobytes() == b.tobytes():
        return True, "bit-exact"
    name = a.dtype.name
    if name not in TOL:
        return False, f"{name} differs"
    rtol, atol = TOL[name]
    af, bf = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(af - bf)
    ok = bool(np.all((diff <= atol + rtol * np.abs(af)) | (np.isnan(af) & np.isnan(bf)) | (af == bf)))
    return ok, f"max |diff| {np.nanmax(diff):.3g} (rtol {rtol}, atol {atol})"


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def device_flags(platform: str) -> list[str]:
    # No preallocation on either side: JAX (XLA_PYTHON_CLIENT_PREALLOCATE=false) and ours share
    # one GPU in this run.
    return ["--device", platform] + (["--gpu-no-preallocate"] if platform == "cuda" else [])


def golden(args, out: Path) -> bool:
    import jax
    from jax import export
    say("## Golden fixtures: JAX on this device vs xlaguard on the same StableHLO")
    say("")
    say("| model | output | dtype | result |")
    say("|---|---|---|---|")
    all_ok = True
    for m in MODELS:
        d = ROOT / "hlo" / m
        exp = for_platform(export.deserialize(bytearray((d / "model.jaxexport").read_bytes())), args.platform)
        ins = load_inputs(d, exp)
        try:
            jouts = jax.tree.leaves(call_flat(jax, exp)(*ins))
        except Exception as e:  # noqa: BLE001 - report and go on with the other models
            say(f"| {m} | - | - | JAX FAILED: {type(e).__name__}: {str(e).splitlines()[0]} |")
            all_ok = False
            continue
        od = out / "golden" / m
        od.mkdir(parents=True, exist_ok=True)
        cmd = [args.bin, *device_flags(args.platform), "--any-platform", "run", str(d / "model.jaxexport"),
               *[str(d / f"in{i}.npy") for i in range(len(ins))], "--out", str(od)]
        r = run(cmd)
        if r.returncode != 0:
            say(f"| {m} | - | - | FAILED: {(r.stderr.strip().splitlines() or ['?'])[-1]} |")
            all_ok = False
            continue
        for i, jo in enumerate(jouts):
            ok, what = compare(jo, od / f"out{i}.npy")
            all_ok &= ok
            say(f"| {m} | out{i} | {jo.dtype} | {'ok' if ok else 'MISMATCH'}: {what} |")
    say("")
    return all_ok


def call_flat(jax, exp):
    """jit(exp.call) taking the flat inputs (in in_avals order), as our binary does."""
    def f(*flat):
        a, kw = jax.tree.unflatten(exp.in_tree, flat)
        return exp.call(*a, **kw)
    return jax.jit(f)


def time_jax(f, fargs, iters: int) -> float:
    for _ in range(max(10, iters // 10)):
        f(*fargs).block_until_ready()
    ts = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        f(*fargs).block_until_ready()
        ts.append((time.perf_counter_ns() - t) / 1e3)
    return statistics.median(ts)


def make_mlp(work: Path, platform: str) -> Path:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import export
    d = work / "mlp"
    d.mkdir(parents=True, exist_ok=True)

    def mlp(x, w1, w2):
        return jnp.maximum(x @ w1, 0.0) @ w2

    rng = np.random.default_rng(0)
    arrs = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in [(256, 4096), (4096, 4096), (4096, 1024)]]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrs]
    exp = export.export(jax.jit(mlp), platforms=(platform,))(*specs)
    (d / "model.jaxexport").write_bytes(bytes(exp.serialize()))
    for i, a in enumerate(arrs):
        np.save(d / f"in{i}.npy", a)
    return d


def timing(args, work: Path) -> None:
    import jax
    from jax import export
    say("## Per-call latency, inputs resident on the device (median µs)")
    say("")
    say("| model | JAX jit | xlaguard raw execute | xlaguard validated execute | raw / JAX |")
    say("|---|---|---|---|---|")
    cases = [("tiny", ROOT / "hlo" / "tiny", args.iters), ("mlp 256x4096x4096+4096x1024", make_mlp(work, args.platform), args.big_iters)]
    for name, d, iters in cases:
        exp = for_platform(export.deserialize(bytearray((d / "model.jaxexport").read_bytes())), args.platform)
        ins = [jax.device_put(a) for a in load_inputs(d, exp)]
        jax_us = time_jax(call_flat(jax, exp), ins, iters)
        r = run([args.bin, *device_flags(args.platform), "--any-platform", "bench", str(d / "model.jaxexport"),
                 "--iters", str(iters), "--json"], timeout=600)
        if r.returncode != 0:
            say(f"| {name} | {jax_us:.1f} | FAILED: {(r.stderr.strip().splitlines() or ['?'])[-1]} | | |")
            continue
        ours = json.loads(r.stdout.strip().splitlines()[-1])
        say(f"| {name} | {jax_us:.1f} | {ours['raw_us']:.1f} | {ours['validated_us']:.1f} | {ours['raw_us'] / jax_us:.3f} |")
    say("")
    say("(validated = signature checks + host-to-device copy of every input + execute; for the MLP that copies 84 MB per call.)")
    say("")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "gpu-bin" / "xlaguard"))
    ap.add_argument("--tests", default=None, help="the tests/gpu.rs executable (cuda builds)")
    ap.add_argument("--scan-bench", default=None, help="the gpu_scan_bench example (cuda builds)")
    ap.add_argument("--platform", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--big-iters", type=int, default=200)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/xlaguard-gpu-check"))
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: golden,timing,tests,scan")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["JAX_PLATFORMS"] = args.platform
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    jax.config.update("jax_enable_x64", True)  # the dtypes fixture has 64-bit inputs
    dev = jax.devices()[0]
    say(f"# xlaguard GPU check — {datetime.date.today().isoformat()}")
    say("")
    say(f"device: {dev.device_kind} ({dev.platform}); jax {jax.__version__}")
    r = run([args.bin, *device_flags(args.platform), "plugin"])
    say((r.stdout.strip().splitlines() or [f"plugin: {r.stderr.strip()}"])[0])
    say("")
    t0 = time.time()
    ok = True
    if "golden" not in skip:
        ok &= golden(args, out)
    if "timing" not in skip:
        timing(args, out)
    if args.tests and "tests" not in skip:
        r = run([args.tests, "--test-threads", "1"], timeout=300)
        say("## On-device validation tests (tests/gpu.rs)")
        say("")
        say("```")
        say("\n".join(l for l in (r.stdout + r.stderr).splitlines() if l.startswith(("test ", "test result", "thread", "  left", " right", "error", "called", "assertion"))))
        say("```")
        say("")
        ok &= r.returncode == 0
    if args.scan_bench and "scan" not in skip:
        r = run([args.scan_bench, "64", "256", "1024"], timeout=300)
        say("## On-device scan vs device-to-device copy (same bytes)")
        say("")
        say("```")
        say((r.stdout + (r.stderr if r.returncode else "")).strip())
        say("```")
        ok &= r.returncode == 0
    say("")
    say(f"total {time.time() - t0:.0f} s; {'ALL OK' if ok else 'SOME CHECKS FAILED'}")
    (out / "report.md").write_text("\n".join(REPORT) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
