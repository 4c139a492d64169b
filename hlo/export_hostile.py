"""Hostile-but-valid modules for the execution-isolation tests (issue 12): each compiles fine and
is harmless to load; running it hangs, runs for hours, or would allocate more than the host has.

hlo/hostile_while/      a lax.while_loop whose condition never becomes false (i flips 0/1, the
                        loop waits for -1); in0 = i (int32 scalar), in1 = x (f32[16]). No golden
                        output: it never returns.
hlo/hostile_fori/       lax.fori_loop(0, n, x = tanh(x @ w + b)) with the trip count n a client
                        input (int32 scalar) and w f32[64,64] baked; in0 = n = 10, in1 = x,
                        out0 = JAX's output for n = 10. n = 2**31 - 1 runs for hours.
hlo/hostile_alloc/      broadcasts an f32 scalar to f32[4 Gi] (a 16 GiB output); in0 = x. Must be
                        refused at load by memory admission, never run.
hlo/hostile_temp/       sorts x + iota(4 Gi) and returns its first 4 elements: a 16 GiB
                        temporary behind a 16-byte output; in0 = x. Refused by admission; with
                        admission off, the allocation must fail inside the execution worker.

Run: venv312/bin/python hlo/export_hostile.py [NAME...] (jax 0.11.2, ~10 s; all without names).
Deterministic: fixed seeds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import export, lax

assert jax.__version__ == "0.11.2", f"jax {jax.__version__}: the fixtures are pinned to 0.11.2"

HLO = Path(__file__).resolve().parent


def write(name: str, fn, args: tuple, notes: str, run: bool) -> None:
    d = HLO / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    exp = export.export(jax.jit(fn), platforms=("cpu",))(*args)
    (d / "model.jaxexport").write_bytes(exp.serialize())
    for i, a in enumerate(args):
        np.save(d / f"in{i}.npy", np.asarray(a), allow_pickle=False)
    if run:
        outs = exp.call(*args)
        direct = jax.jit(fn)(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        direct = direct if isinstance(direct, (tuple, list)) else (direct,)
        for i, (o, e) in enumerate(zip(outs, direct)):
            assert np.array_equal(np.asarray(o), np.asarray(e)), f"{name}: out{i} differs from jit"
            np.save(d / f"out{i}.npy", np.asarray(o), allow_pickle=False)
    meta = {
        "name": name,
        "jax": jax.__version__,
        "notes": notes,
        "inputs": [{"dtype": str(np.asarray(a).dtype), "shape": list(np.shape(a))} for a in args],
        "outputs": [{"dtype": str(o.dtype), "shape": list(o.shape)} for o in exp.out_avals],
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: {d / 'model.jaxexport'} ({(d / 'model.jaxexport').stat().st_size} bytes)")


def hostile_while():
    def never_ends(i, x):
        def cond(c):
            return c[0] != -1

        def body(c):
            i, x = c
            return (1 - i, jnp.tanh(x * 1.0001 + 0.5))

        return lax.while_loop(cond, body, (i, x))[1]

    i = np.int32(0)
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    write("hostile_while", never_ends, (i, x), "while i != -1: i = 1 - i; x = tanh(x * 1.0001 + 0.5). Never ends.", run=False)


def hostile_fori():
    rng = np.random.default_rng(12)
    w = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    b = (rng.standard_normal((64,)) * 0.1).astype(np.float32)

    def client_trip_count(n, x):
        return lax.fori_loop(0, n, lambda _, x: jnp.tanh(x @ w + b), x)

    n = np.int32(10)
    x = rng.standard_normal((64,)).astype(np.float32)
    write("hostile_fori", client_trip_count, (n, x), "fori_loop(0, n, x = tanh(x @ w + b)), n a client input; out0 for n = 10.", run=True)


def hostile_alloc():
    def sixteen_gib(x):
        return jnp.broadcast_to(x, (4 << 30,))

    write("hostile_alloc", sixteen_gib, (np.float32(1.5),), "broadcast of a scalar to f32[4 Gi]: a 16 GiB output.", run=False)


def hostile_temp():
    def sixteen_gib_temporary(x):
        y = x + lax.iota(jnp.float32, 4 << 30)
        return jnp.sort(-y)[:4]

    write("hostile_temp", sixteen_gib_temporary, (np.float32(1.5),), "sort of x + iota(4 Gi), first 4: a 16 GiB temporary, 16-byte output.", run=False)


if __name__ == "__main__":
    import sys

    every = {f.__name__: f for f in (hostile_while, hostile_fori, hostile_alloc, hostile_temp)}
    for name in sys.argv[1:] or list(every):
        every[name]()
