"""Dynamic-batching fixtures (issue 16), written by JAX itself; run from the repository root:

    /work/venv312/bin/python hlo/export_batching.py            # the committed fixtures (~10 s)
    /work/venv312/bin/python hlo/export_batching.py --bench D  # benchmark model repository in D

Committed fixtures (each folder: the artifact(s), meta.json, rows/):

- batch_mlp: a Flax linen MLP x: float32[b,16] -> {logits: float32[b,4], probs: float32[b,4]},
  exported once with a symbolic batch `b`.
- batch_mlp_bundle: the same function and weights exported static at b = 1, 2, 4, 8
  (model.b1.jaxexport, ..., the bundle layout xlaguard serves with batching).
- batch_interact: rows interact: batch-norm in training mode (batch mean and variance), symbolic b.
- batch_interact_bundle: the same, static at b = 1, 2, 4.
- batch_params: mlp(params, x) exported static at b = 1, 2, 4, 8, with the weights in
  params.safetensors (bound at load, to every export), so only x is batched.

rows/in0.npy holds ROWS input rows; rows/out<k>.npy holds JAX's output k for each row run alone
(b = 1), stacked. For the MLP the script asserts that JAX gives these same bits for every row at
every batch size (1..16 and the bundle sizes) and wherever the row sits in the batch, so a test
may compare the rows of any batch the server forms against them bit for bit. For batch_interact
it asserts the opposite (the rows of a batch differ from the rows run alone).

--bench D writes a model repository for docs/serving.md's benchmark (not committed): bert
(keras_hub BertBackbone, int32[b,32] x3), mobilenet (Keras MobileNetV3Small 224x224, random
weights), digits (copied from hlo/digits as a bundle is not needed: digits is static b = 1, so
the bench exports a polymorphic digits-shaped MLP), each as <m>_plain (no batching), <m>_batched and <m>_batched1 ([batching], workers = 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import export  # noqa: E402

assert jax.__version__ == "0.11.2", f"fixtures are made with jax 0.11.2, this is {jax.__version__}"

ROOT = Path(__file__).resolve().parent.parent
HLO = ROOT / "hlo"
ROWS = 16
BUNDLE = (1, 2, 4, 8)
F32 = jnp.float32


def fresh(name: str) -> Path:
    d = HLO / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    return d


def save(path: Path, a) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(a), allow_pickle=False)


def leaves(x):
    return [np.asarray(v) for v in jax.tree.leaves(x)]


def write_meta(d: Path, meta: dict) -> None:
    meta["jax_version"] = jax.__version__
    meta["sha256"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted(d.glob("*.jaxexport"))}
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def mlp_fn():
    import flax.linen as nn

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(32)(x))
            logits = nn.Dense(4)(h)
            return {"logits": logits, "probs": jax.nn.softmax(logits)}

    m = Mlp()
    params = m.init(jax.random.key(16), jnp.zeros((1, 16), F32))
    # Weights on a grid of 1/8 (and inputs on 1/4, below): every product and partial sum is
    # exact in float32, so XLA's matmul kernels (a different one per batch size on CPU) agree
    # bit for bit and JAX's rows are the same at every batch size.
    params = jax.tree.map(lambda w: jnp.round(w * 8) / 8, params)
    return lambda x: m.apply(params, x)


def interact_fn():
    w = np.random.default_rng(17).standard_normal((8, 8)).astype(np.float32)

    def bn_train(x):
        # Batch-norm in training mode: normalised by the batch's own mean and variance.
        mean = x.mean(axis=0, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=0, keepdims=True)
        return ((x - mean) / jnp.sqrt(var + 1e-3)) @ w

    return bn_train


def export_poly(fn, tail, dtype=F32):
    (b,) = export.symbolic_shape("b")
    return export.export(jax.jit(fn), platforms=("cpu",))(jax.ShapeDtypeStruct((b, *tail), dtype))


def export_static(fn, shape, dtype=F32):
    return export.export(jax.jit(fn), platforms=("cpu",))(jax.ShapeDtypeStruct(shape, dtype))


def rows_alone(exp, x):
    """Each row run alone (b = 1), outputs stacked per output."""
    per_row = [leaves(exp.call(x[i:i + 1])) for i in range(x.shape[0])]
    return [np.concatenate([r[k] for r in per_row]) for k in range(len(per_row[0]))]


def fixture_mlp() -> None:
    fn = mlp_fn()
    x = np.round(np.random.default_rng(160).standard_normal((ROWS, 16)) * 4).astype(np.float32) / 4
    exp = export_poly(fn, (16,))
    d = fresh("batch_mlp")
    (d / "model.jaxexport").write_bytes(bytes(exp.serialize()))
    alone = rows_alone(exp, x)
    save(d / "rows" / "in0.npy", x)
    for k, a in enumerate(alone):
        save(d / "rows" / f"out{k}.npy", a)
    # Every batch size, every offset: the same bits as the row alone.
    for n in range(1, ROWS + 1):
        for off in (0, ROWS - n):
            got = leaves(exp.call(x[off:off + n]))
            for k, g in enumerate(got):
                assert g.tobytes() == alone[k][off:off + n].tobytes(), ("batch_mlp", n, off, k)
    bd = fresh("batch_mlp_bundle")
    for n in BUNDLE:
        e = export_static(fn, (n, 16))
        (bd / f"model.b{n}.jaxexport").write_bytes(bytes(e.serialize()))
        got = leaves(e.call(x[:n]))
        for k, g in enumerate(got):
            assert g.tobytes() == alone[k][:n].tobytes(), ("batch_mlp_bundle", n, k)
    save(bd / "rows" / "in0.npy", x)
    for k, a in enumerate(alone):
        save(bd / "rows" / f"out{k}.npy", a)
    notes = (f"flax=={version('flax')} linen MLP Dense(32)-relu-Dense(4), params from "
             "jax.random.key(16) rounded to multiples of 1/8; outputs {logits, probs (softmax)}; rows: "
             "np.random.default_rng(160) standard normal float32[16,16] rounded to multiples of 1/4 "
             "(so matmuls are exact: batch-size independent on XLA CPU). Asserted: JAX gives the "
             "rows-alone bits for every batch of 1..16 consecutive rows (at offset 0 and at the "
             "end) and for each static bundle size.")
    write_meta(d, {"name": "batch_mlp", "input": "float32[b,16]", "outputs": ["logits", "probs"],
                   "rows": ROWS, "notes": notes})
    write_meta(bd, {"name": "batch_mlp_bundle", "sizes": list(BUNDLE), "input": "float32[n,16]",
                    "outputs": ["logits", "probs"], "rows": ROWS, "notes": notes})


def fixture_interact() -> None:
    fn = interact_fn()
    x = np.random.default_rng(170).standard_normal((ROWS, 8)).astype(np.float32)
    exp = export_poly(fn, (8,))
    d = fresh("batch_interact")
    (d / "model.jaxexport").write_bytes(bytes(exp.serialize()))
    save(d / "rows" / "in0.npy", x)
    # The point of this fixture: a batch's rows are not the rows run alone.
    alone = rows_alone(exp, x)
    got = leaves(exp.call(x[:4]))
    assert got[0].tobytes() != alone[0][:4].tobytes()
    save(d / "rows" / "out0.npy", alone[0])
    bd = fresh("batch_interact_bundle")
    for n in (1, 2, 4):
        (bd / f"model.b{n}.jaxexport").write_bytes(bytes(export_static(fn, (n, 8)).serialize()))
    notes = ("f(x) = ((x - mean_b(x)) / sqrt(var_b(x) + 1e-3)) @ w, w: default_rng(17) normal "
             "float32[8,8]: batch-norm in training mode, so a row's output depends on its "
             "batch-mates. rows: default_rng(170) normal float32[16,8]; out0 = each row alone.")
    write_meta(d, {"name": "batch_interact", "input": "float32[b,8]", "rows": ROWS, "notes": notes})
    write_meta(bd, {"name": "batch_interact_bundle", "sizes": [1, 2, 4], "notes": notes})


def fixture_params() -> None:
    """Weights as an argument, bound from params.safetensors: only x is batched."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(180)
    params = {"b1": np.round(rng.standard_normal(32) * 8) / 8,
              "w1": np.round(rng.standard_normal((16, 32)) * 8) / 8,
              "w2": np.round(rng.standard_normal((32, 4)) * 8) / 8}
    params = {k: v.astype(np.float32) for k, v in params.items()}

    def mlp(params, x):
        return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"]

    # xlaguard binds params to static exports only: a bundle of b = 1, 2, 4, 8.
    pspec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()}
    d = fresh("batch_params")
    x = np.round(rng.standard_normal((ROWS, 16)) * 4).astype(np.float32) / 4
    exps = {}
    for n in BUNDLE:
        e = export.export(jax.jit(mlp), platforms=("cpu",))(pspec, jax.ShapeDtypeStruct((n, 16), F32))
        (d / f"model.b{n}.jaxexport").write_bytes(bytes(e.serialize()))
        exps[n] = e
    save_file({f"params['{k}']": v for k, v in params.items()}, str(d / "params.safetensors"))
    alone = np.concatenate([np.asarray(exps[1].call(params, x[i:i + 1])) for i in range(ROWS)])
    for n in BUNDLE:
        assert np.asarray(exps[n].call(params, x[:n])).tobytes() == alone[:n].tobytes(), n
    save(d / "rows" / "in0.npy", x)
    save(d / "rows" / "out0.npy", alone)
    write_meta(d, {"name": "batch_params", "sizes": list(BUNDLE),
                   "input": "params (bound), x: float32[n,16]",
                   "rows": ROWS, "notes": (
        "mlp(params, x) = relu(x @ w1 + b1) @ w2, params {b1, w1, w2} from default_rng(180) "
        "rounded to 1/8 and stored in params.safetensors as params['b1'], ...; rows: the same "
        "rng's next standard normal float32[16,16] rounded to 1/4; out0 = each row alone "
        "(asserted equal to the rows of each bundle export). Static exports at b = 1, 2, 4, 8.")})


# ---- benchmark repository ----------------------------------------------------------------------

def bench(dst: Path) -> None:
    import keras
    import keras_hub

    dst.mkdir(parents=True, exist_ok=True)
    sizes = [1, 2, 4, 8, 16, 32]

    def write(name, exp, batching: bool, extra=""):
        # plain: no batching; batched: [batching] with the default workers (one per CPU);
        # batched1: [batching] with workers = 1 (every request waits for the one execution).
        for variant in ("plain", "batched", "batched1"):
            d = dst / f"{name}_{variant}"
            d.mkdir(exist_ok=True)
            (d / "model.jaxexport").write_bytes(bytes(exp.serialize()))
            cfg = "[limits]\nmax_queue = 256\n" + ("workers = 1\n" if variant == "batched1" else "")
            cfg += extra
            if variant != "plain":
                cfg += f"[batching]\nsizes = {sizes}\n"
            else:
                cfg += f"[shapes]\nb = {sizes}\n"
            (d / "config.toml").write_text(cfg)

    keras.utils.set_random_seed(1)
    cfg = dict(vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=64,
               intermediate_dim=128, max_sequence_length=32)
    backbone = keras_hub.models.BertBackbone(**cfg)

    def bert(token_ids, segment_ids, padding_mask):
        out = backbone({"token_ids": token_ids, "segment_ids": segment_ids,
                        "padding_mask": padding_mask}, training=False)
        return out["pooled_output"]

    (b,) = export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((b, 32), jnp.int32)
    write("bert", export.export(jax.jit(bert), platforms=("cpu",))(spec, spec, spec), True)

    keras.utils.set_random_seed(0)
    mnet = keras.applications.MobileNetV3Small(input_shape=(224, 224, 3), weights=None,
                                               include_top=True, classes=1000)
    (b,) = export.symbolic_shape("b")
    exp = export.export(jax.jit(lambda x: mnet(x, training=False)), platforms=("cpu",))(
        jax.ShapeDtypeStruct((b, 224, 224, 3), F32))
    write("mobilenet", exp, True)

    # digits: hlo/digits' MLP shape (float32[b,64] -> 10 classes), polymorphic.
    w1 = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32) * 0.1
    w2 = np.random.default_rng(6).standard_normal((64, 10)).astype(np.float32) * 0.1
    exp = export_poly(lambda x: jax.nn.softmax(jax.nn.relu(x @ w1) @ w2), (64,))
    write("digits", exp, True)
    print(f"benchmark repository in {dst}")


def main() -> None:
    os.chdir(ROOT)
    # Source paths in MLIR locations relative to the repository (as hlo/export.py does).
    jax.config.update("jax_hlo_source_file_canonicalization_regex",
                      "^(" + re.escape(str(ROOT) + os.sep) + "|.*/site-packages/)")
    if sys.argv[1:2] == ["--bench"]:
        bench(Path(sys.argv[2]))
        return
    fixture_mlp()
    fixture_interact()
    fixture_params()
    print("batching fixtures written")


if __name__ == "__main__":
    main()
