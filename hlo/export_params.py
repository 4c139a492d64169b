"""Fixtures for models whose weights are arguments (issue 11): a Flax linen CNN exported as
`apply(variables, x)`, a Keras 3 conv net via `stateless_call(trainable, non_trainable, x)`,
and an Equinox model via `eqx.partition` as `f(params, x)`.

Each folder hlo/params_<lib>/ holds model.jaxexport, the weights as params.safetensors and
params.npz (keyed by the input names xlaguard shows: argument name + jax.tree_util.keystr
path), in0.npy (x only), out*.npy (JAX's outputs of exp.call with the real weights), baked_out*.npy
(JAX's outputs of an export with the same weights baked in as constants) and meta.json. Run: KERAS_BACKEND=jax venv312/bin/python hlo/export_params.py
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax import export  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

HLO = Path(__file__).resolve().parent
MAX_FOLDER_BYTES = 2 << 20


def lib(*names) -> str:
    return ", ".join(f"{n}=={version(n)}" for n in names)


def named_leaves(argname: str, tree) -> dict[str, np.ndarray]:
    """Leaves of `tree` keyed `argname + keystr(path)`, as xlaguard names module inputs."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {argname + jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def write(name: str, fn, params: list[tuple[str, object]], x: np.ndarray, notes: str,
          names: list[str] | None = None, npz: bool = True, **extra):
    """Exports fn(*params, x) and writes hlo/<name>/. `names`: the tensor names in leaf order,
    where xlaguard's differ from argument name + keystr."""
    d = HLO / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    args = [p for _, p in params] + [x]
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args)
    exp = export.export(jax.jit(fn), platforms=("cpu",))(*specs)
    (d / "model.jaxexport").write_bytes(bytes(exp.serialize()))
    tensors: dict[str, np.ndarray] = {}
    for argname, tree in params:
        for k, v in named_leaves(argname, tree).items():
            assert k not in tensors, k
            tensors[k] = np.ascontiguousarray(v)
    if names is not None:
        assert len(names) == len(tensors)
        tensors = dict(zip(names, tensors.values()))
    save_file(tensors, str(d / "params.safetensors"))
    if npz:  # (params_mobilenet writes safetensors only, to stay small)
        np.savez(d / "params.npz", **tensors)
    with open(d / "in0.npy", "wb") as f:
        np.save(f, x, allow_pickle=False)
    outs = exp.call(*args)
    outs = outs if isinstance(outs, (tuple, list)) else [outs]
    outs = jax.tree.leaves(outs)
    for i, o in enumerate(outs):
        with open(d / f"out{i}.npy", "wb") as f:
            np.save(f, np.asarray(o), allow_pickle=False)
    # The same weights baked in: closed over by the jitted function, they are constants of the
    # exported module (what a user who bakes weights gets, and what xlaguard's load_baked must
    # reproduce bit for bit).
    fixed = [p for _, p in params]
    baked = export.export(jax.jit(lambda x: fn(*fixed, x)), platforms=("cpu",))(specs[-1])
    assert "stablehlo.constant" in baked.mlir_module()
    for i, o in enumerate(jax.tree.leaves(baked.call(x))):
        with open(d / f"baked_out{i}.npy", "wb") as f:
            np.save(f, np.asarray(o), allow_pickle=False)
    # Sanity: the un-exported function gives the same outputs.
    ref = jax.tree.leaves(jax.jit(fn)(*args))
    for a, b in zip(outs, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    meta = {
        "name": name,
        "notes": notes,
        "params": [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)}
                   for k, v in tensors.items()],
        "data_inputs": [{"name": "x", "dtype": str(x.dtype), "shape": list(x.shape)}],
        "outputs": [{"dtype": str(np.asarray(o).dtype), "shape": list(np.shape(o))} for o in outs],
        "library": lib("jax", "jaxlib", "numpy", "safetensors", *extra.pop("libs", ())),
        **extra,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < MAX_FOLDER_BYTES, (name, size)
    print(f"{name}: {len(tensors)} params, {size} bytes")


def flax_cnn():
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(8, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=True)(x)
            x = nn.relu(x)
            x = nn.Conv(16, (3, 3), strides=2)(x)
            x = nn.BatchNorm(use_running_average=True)(x)
            x = nn.relu(x)
            x = x.mean(axis=(1, 2))
            return nn.Dense(10)(x)

    model = CNN()
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    # Non-trivial running statistics so batch_stats matter.
    rng = np.random.default_rng(2)
    stats = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.1, 0.5, a.shape).astype(a.dtype),
                         variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}

    def apply(variables, x):
        return model.apply(variables, x)

    write("params_flax", apply, [("variables", variables)], x, libs=("flax",),
          notes="Flax linen CNN (2 conv + BatchNorm eval + Dense), exported as "
                "jax.export(jax.jit(model.apply))(variables, x); variables = params + batch_stats.")


def keras_net():
    import keras
    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
    model(x)
    # Non-trivial moving statistics.
    bn = model.layers[1]
    bn.moving_mean.assign(np.random.default_rng(4).normal(size=(8,)).astype(np.float32) * 0.1)
    bn.moving_variance.assign(np.random.default_rng(5).uniform(0.5, 2.0, (8,)).astype(np.float32))
    trainable = [np.asarray(v.value) for v in model.trainable_variables]
    non_trainable = [np.asarray(v.value) for v in model.non_trainable_variables]

    def f(trainable, non_trainable, x):
        outs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return outs

    write("params_keras", f, [("trainable", trainable), ("non_trainable", non_trainable)], x,
          libs=("keras",),
          notes="Keras 3 Sequential conv net, exported as f(trainable, non_trainable, x) = "
                "model.stateless_call(trainable, non_trainable, x, training=False)[0].")


def eqx_mlp():
    import equinox as eqx

    model = eqx.nn.MLP(in_size=12, out_size=4, width_size=32, depth=2, key=jax.random.key(7))
    params, static = eqx.partition(model, eqx.is_array)
    # jax.export serializes the input pytree; Equinox modules need a registration. The
    # auxdata (static fields) is not needed to read the export back here: written empty.
    for cls in (eqx.nn.MLP, eqx.nn.Linear):
        export.register_pytree_node_serialization(
            cls, serialized_name=f"equinox.{cls.__name__}",
            serialize_auxdata=lambda aux: b"", deserialize_auxdata=lambda b: None)
    x = np.random.default_rng(8).normal(size=(12,)).astype(np.float32)

    def f(params, x):
        return eqx.combine(params, static)(x)

    # Named as JAX writes them in the module's loc("params.layers[0].weight"): xlaguard takes a
    # custom pytree node's child names from there (the serialized tree only numbers them).
    names = None
    write("params_eqx", f, [("params", params)], x, libs=("equinox",), names=names,
          notes="Equinox MLP (12 -> 32 -> 32 -> 4), params, static = eqx.partition(model, "
                "eqx.is_array), exported as f(params, x) = eqx.combine(params, static)(x).")


def keras_mobilenet():
    """The case people hit: a keras.applications model served via stateless_call."""
    import keras
    assert keras.backend.backend() == "jax"
    keras.backend.clear_session()
    keras.utils.set_random_seed(9)
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10, include_preprocessing=True,
        # Logits: at random init the softmax is 0.1 to within an ulp (two distinct values),
        # which would make a bit-for-bit comparison say little.
        classifier_activation=None)
    x = np.random.default_rng(10).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    trainable = [np.asarray(v.value) for v in model.trainable_variables]
    non_trainable = [np.asarray(v.value) for v in model.non_trainable_variables]

    def f(trainable, non_trainable, x):
        outs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return outs

    write("params_mobilenet", f, [("trainable", trainable), ("non_trainable", non_trainable)], x,
          libs=("keras",), npz=False,
          notes=f"keras.applications.MobileNetV3Small(alpha=0.25, weights=None, 32x32, 10 classes), "
                f"{len(trainable)} trainable + {len(non_trainable)} non-trainable tensors, exported as "
                "f(trainable, non_trainable, x) = model.stateless_call(..., training=False)[0], "
                "classifier_activation=None (logits).")


if __name__ == "__main__":
    flax_cnn()
    keras_net()
    eqx_mlp()
    keras_mobilenet()
