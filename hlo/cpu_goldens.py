"""JAX's outputs on this machine's CPU, for the goldens that depend on it.

XLA's CPU code generation and the kernels it calls (Eigen, oneDNN, XNNPACK, the LAPACK that
jaxlib brings) choose their instructions from the host CPU, so a model's outputs can differ in
the low bits between, say, an AVX-512 machine and one with AVX but no AVX2. JAX itself gives
those other bits there. The committed `out*.npy` are JAX's outputs on the machine that ran
`hlo/export.py`. This script runs JAX (`jax.export.deserialize(...).call`) on every committed
artifact and its committed inputs on *this* machine, and wherever JAX's outputs here differ
from the committed ones, writes them to `<folder>/cpu-<key>/out*.npy` (and `baked_out*.npy`
for the params fixtures), and records the machine in `hlo/cpu-classes/<key>.txt`. The key is
LLVM's name for the host CPU (`rustc --print target-cpus`: `native`, e.g. `znver4`), which is
what XLA tunes its code for. The tests read a folder's goldens from `cpu-<key>/` when that
key's record exists (tests/goldens.py, tests/common/mod.rs `golden_key`), so they stay bit
for bit with JAX on each machine. No golden comes from xlaguard.

    venv312/bin/python hlo/cpu_goldens.py            # writes the folders that differ
    venv312/bin/python hlo/cpu_goldens.py --check    # only reports
    scripts/cpu-goldens.sh                           # both, in a pinned venv, when no record

It needs hlo/requirements-goldens.txt (jax, jaxlib, numpy, ml_dtypes, safetensors, and for the
params fixtures flax, keras and equinox). Folders whose outputs JAX gives identically here get
no `cpu-<key>/` (and a stale one is removed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from jax import export

HLO = Path(__file__).resolve().parent
# The class rule is the tests' own (tests/goldens.py), so both name the same folder.
sys.path.insert(0, str(HLO.parent / "tests"))
from goldens import cpu_class, cpu_name  # noqa: E402
jax.config.update("jax_enable_x64", True)


def numbered(d: Path, prefix: str) -> list[Path]:
    files = [p for p in d.iterdir() if re.fullmatch(rf"{prefix}\d+\.npy", p.name)]
    return sorted(files, key=lambda p: int(re.findall(r"\d+", p.name)[-1]))


def as_aval(a: np.ndarray, aval):
    """A committed input as the module takes it: bf16 and friends are stored as raw `|V2`,
    PRNG keys as their uint32 data."""
    if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(a, impl=jax.random.key_impl(jax.random.key(0)))
    if a.dtype != aval.dtype and a.dtype.itemsize == np.dtype(aval.dtype).itemsize:
        return a.view(aval.dtype)
    return a


def model_of(folder: Path) -> Path | None:
    """The artifact a golden folder's inputs go to: its own, or the one above it
    (`sizes/<n>/`; `rows/`, whose rows each run alone at b = 1: a bundle's `model.b1`)."""
    for d in (folder, folder.parent, folder.parent.parent):
        for name in ("model.jaxexport", "model.b1.jaxexport"):
            if (d / name).is_file():
                return d / name
    return None


def params_of(model_dir: Path) -> list[np.ndarray]:
    """The weights of a params fixture, in the module's leaf order (meta.json's)."""
    f = model_dir / "params.safetensors"
    if not f.is_file():
        return []
    from safetensors.numpy import load_file

    tensors = load_file(str(f))
    meta = json.loads((model_dir / "meta.json").read_text())
    if "params" not in meta:  # one dict of arrays: JAX flattens it in key order
        return [tensors[k] for k in sorted(tensors)]
    return [tensors[p["name"]] for p in meta["params"]]


def leaves(out) -> list[np.ndarray]:
    return [np.asarray(o) for o in jax.tree.leaves(out)]


def jax_outputs(folder: Path) -> dict[str, list[np.ndarray]] | str:
    """JAX's outputs here for the folder's inputs, by golden prefix, or why there are none."""
    model = model_of(folder)
    if model is None:
        return "no model.jaxexport"
    mdir = model.parent
    if (folder / "baked_out0.npy").is_file():
        # The params fixtures: hlo/export_params.py itself gives both (its baked export is a
        # trace of the model, and Equinox's input tree cannot be rebuilt without it).
        return {p: from_export_params(folder, p) for p in ("out", "baked_out")}
    exp = export.deserialize(bytearray(model.read_bytes()))
    if "cpu" not in exp.platforms:
        return f"platforms {exp.platforms}"
    params = params_of(mdir)
    ins = [np.load(p) for p in numbered(folder, "in")]
    flat = params + ins
    avals = exp.in_avals
    if len(flat) != len(avals) and folder.name != "rows":
        return f"{len(flat)} inputs for {len(avals)} arguments"
    flat = [as_aval(a, v) for a, v in zip(flat, avals)]
    # Called on the flat leaves (the module's own arguments): the input tree is only how a
    # Python caller groups them, and Equinox's cannot be rebuilt without the model.
    exp = dataclasses.replace(exp, in_tree=jax.tree_util.tree_structure((tuple(flat), {})))
    if folder.name == "rows":
        # hlo/export_batching.py's rows_alone: each row run alone, outputs stacked.
        wts, (x,) = flat[: len(params)], flat[len(params):]
        per_row = [leaves(exp.call(*wts, x[i:i + 1])) for i in range(x.shape[0])]
        return {"out": [np.concatenate([r[k] for r in per_row]) for k in range(len(per_row[0]))]}
    return {"out": leaves(exp.call(*flat))}


_EXPORTED_PARAMS: Path | None = None


def from_export_params(folder: Path, prefix: str) -> list[np.ndarray]:
    """JAX's outputs from hlo/export_params.py itself, run in a scratch copy: for the baked
    export (weights closed over as constants, a trace of the model that only the model
    library can give). Its weights and input must equal the committed ones byte for byte."""
    global _EXPORTED_PARAMS
    if _EXPORTED_PARAMS is None:
        tmp = Path(tempfile.mkdtemp(prefix="cpu_goldens-"))
        shutil.copy(HLO / "export_params.py", tmp)
        subprocess.run([sys.executable, str(tmp / "export_params.py")], check=True,
                       env={**os.environ, "KERAS_BACKEND": "jax"}, stdout=subprocess.DEVNULL)
        _EXPORTED_PARAMS = tmp
    here = _EXPORTED_PARAMS / folder.name
    # (model.jaxexport differs: its locations name the scratch copy's path.)
    for f in ("params.safetensors", "in0.npy"):
        if (here / f).read_bytes() != (folder / f).read_bytes():
            raise RuntimeError(f"hlo/export_params.py gives another {f} here")
    return [np.load(p) for p in numbered(here, prefix)]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report only, write nothing")
    args = ap.parse_args()
    if jax.__version__ != "0.11.2":
        sys.exit(f"jax {jax.__version__}: the fixtures were exported with 0.11.2")
    cls = cpu_name()
    if cls == "unknown":
        sys.exit("rustc --print target-cpus does not name this CPU: no key for its goldens")
    folders = sorted({p.parent for p in HLO.rglob("out0.npy") if "cpu-" not in str(p)})
    differ = 0
    for folder in folders:
        name = folder.relative_to(HLO)
        if name.parts[0].startswith("hostile_"):
            continue
        try:
            got = jax_outputs(folder)
        except Exception as e:  # noqa: BLE001 - reported, the rest go on
            print(f"{name}: JAX failed here: {type(e).__name__}: {str(e)[:160]}")
            continue
        if isinstance(got, str):
            print(f"{name}: skipped ({got})")
            continue
        target = folder / f"cpu-{cls}"
        diffs = []
        for prefix, outs in got.items():
            want = [np.load(p) for p in numbered(folder, prefix)]
            if len(want) != len(outs):
                print(f"{name}: {prefix}: JAX gives {len(outs)} outputs, {len(want)} committed")
                continue
            diffs += [f"{prefix}{i}" for i, (o, w) in enumerate(zip(outs, want))
                      if not same(o.view(w.dtype) if o.dtype.itemsize == w.dtype.itemsize
                                  else o, w)]
        if not diffs:
            if target.exists() and not args.check:
                shutil.rmtree(target)
            continue
        differ += 1
        print(f"{name}: {', '.join(diffs)} differ on {cls}")
        if args.check:
            continue
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        for prefix, outs in got.items():
            for i, o in enumerate(outs):
                np.save(target / f"{prefix}{i}.npy", o, allow_pickle=False)
        (target / "README.md").write_text(
            f"JAX 0.11.2's outputs of `{model_of(folder).relative_to(HLO)}` on "
            f"this folder's inputs, on a `{cls}` CPU (hlo/cpu-classes/{cls}.txt; "
            f"hlo/cpu_goldens.py). They differ in low bits from the committed ones, which JAX "
            f"gave on the export machine.\n")
    print(f"{len(folders)} golden folders, {differ} differ on {cls}")
    if not args.check:
        record = HLO / "cpu-classes" / f"{cls}.txt"
        record.parent.mkdir(exist_ok=True)
        record.write_text(
            f"{cls}: {machine_line()}\n"
            f"{differ} of {len(folders)} golden folders differ from the export machine's "
            f"(written {time.strftime('%Y-%m-%d')} by hlo/cpu_goldens.py with jax "
            f"{jax.__version__}; ISA class "
            f"{cpu_class()}).\n")
    return 0


def machine_line() -> str:
    """The CPU's model name and core count, from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    models = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    return f"{models[0] if models else platform.processor() or platform.machine()}, " \
           f"{len(models) or os.cpu_count()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
