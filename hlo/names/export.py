"""Writes hlo/names/: a jax.export of a function of several pytree arguments, for the naming rule.

Standalone (hlo/export.py writes the other fixtures); run from the repository root with the
pinned jax:  venv312/bin/python hlo/names/export.py

    f(params, state, x, *, scale) -> {"logits": ..., "aux": {"norm": ...}}

`params` is a nested dict (Flax-like `params['Dense_0']['kernel']`), `state` a list (like the
`trainable[0]` of a Keras `stateless_call`), `x` an array beside them and `scale` a keyword
argument. meta.json lists, per input, `jax_name` (the `loc("...")` JAX gives the `@main`
argument: the argument name followed by `jax.tree_util.keystr` of the path below it) and the
outputs' `jax.tree_util.keystr` paths.
"""

import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

assert jax.__version__ == "0.11.2", jax.__version__
ROOT = Path(__file__).resolve().parents[2]
jax.config.update(
    "jax_hlo_source_file_canonicalization_regex", "^" + re.escape(str(ROOT) + os.sep)
)
OUT = ROOT / "hlo" / "names"


def f(params, state, x, *, scale):
    h = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    h = jnp.tanh(h) * state[0] + state[1]
    logits = h @ params["Dense_1"]["kernel"] * scale
    return {"logits": logits, "aux": {"norm": jnp.sqrt(jnp.sum(h * h, axis=-1))}}


def main() -> None:
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    params = {"Dense_0": {"kernel": r(4, 3), "bias": r(3)}, "Dense_1": {"kernel": r(3, 2)}}
    state = [r(3), r(3)]
    x = r(2, 4)
    scale = np.float32(0.5)
    args = (params, state, x)
    exp = export.export(jax.jit(f))(*args, scale=scale)
    for p in OUT.glob("*"):
        if p.name != "export.py":
            p.unlink()
    (OUT / "model.jaxexport").write_bytes(bytes(exp.serialize()))
    text = exp.mlir_module()
    (OUT / "model.mlir").write_text(text)
    (OUT / "model.mlirbc").write_bytes(bytes(exp.mlir_module_serialized))

    leaves, _ = jax.tree_util.tree_flatten_with_path((args, {"scale": scale}))
    assert len(leaves) == len(exp.in_avals)
    sig = next(l for l in text.splitlines() if "func.func public @main(" in l)
    locs = re.findall(r'loc\("((?:[^"\\]|\\.)*)"\)', sig.split("->")[0])
    inputs = []
    for i, ((path, a), aval) in enumerate(zip(leaves, exp.in_avals)):
        np.save(OUT / f"in{i}.npy", np.asarray(a))
        inputs.append({"path": jax.tree_util.keystr(path), "jax_name": locs[i],
                       "dtype": str(aval.dtype), "shape": list(aval.shape)})
    res = exp.call(*args, scale=scale)
    direct = jax.jit(f)(*args, scale=scale)
    outputs = []
    for i, ((path, o), d) in enumerate(zip(jax.tree_util.tree_flatten_with_path(res)[0],
                                           jax.tree.leaves(direct))):
        o = np.asarray(o)
        assert o.tobytes() == np.asarray(d).tobytes()
        np.save(OUT / f"out{i}.npy", o)
        outputs.append({"path": jax.tree_util.keystr(path), "dtype": str(o.dtype),
                        "shape": list(o.shape)})
    meta = {"name": "names", "jax_version": jax.__version__, "inputs": inputs,
            "outputs": outputs, "in_tree": str(exp.in_tree), "main_signature": sig,
            "notes": "inputs are the leaves of ((params, state, x), {'scale': scale}); "
                     "path = keystr inside that tuple, jax_name = @main's loc"}
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
