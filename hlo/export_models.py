"""Golden fixtures of models built with the libraries users export from: Keras 3 (JAX backend),
keras-hub, Flax (nnx and linen) and Equinox; plus NaN-producing, complex and typed-PRNG-key
fixtures. Random init with fixed seeds, weights baked into the module as constants.

Called by hlo/export.py after everything else (so that no older fixture's source locations
move): `python hlo/export.py` runs all, `python hlo/export.py --only models` only these.
Each model is written by export.py's `write_model` (same layout, same checks).
"""

from __future__ import annotations

import os
import re
from importlib.metadata import version

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Library model folders embed their weights 4 times (model.mlir hex text = 2x, model.mlirbc,
# model.jaxexport); they may exceed export.py's 1 MiB limit, up to this.
MAX_MODEL_BYTES = 4 << 20

EX = None  # the hlo/export.py module, set by main()


def lib(*names) -> str:
    return ", ".join(f"{n}=={version(n)}" for n in names)


def write(name, fn, args, *, notes, big=False, **kw):
    return EX.write_model(name, fn, args, notes=notes,
                          max_bytes=MAX_MODEL_BYTES if big else EX.MAX_FOLDER_BYTES, **kw)


def add_meta(d, **extra) -> None:
    import json
    meta = json.loads((d / "meta.json").read_text())
    meta.update(extra)
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


# ---- Keras 3 / keras-hub ----------------------------------------------------------------------

def model_keras_mobilenet():
    import keras
    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    cfg = dict(input_shape=(32, 32, 3), alpha=0.25, minimalistic=True, include_top=True,
               weights=None, classes=10, include_preprocessing=True)
    model = keras.applications.MobileNetV3Small(**cfg)
    x = np.random.default_rng(10).uniform(0.0, 255.0, (2, 32, 32, 3)).astype(np.float32)

    def keras_mobilenet(x):
        return model(x, training=False)

    d, _ = write("keras_mobilenet", keras_mobilenet, (x,), big=True, notes=(
        f"{lib('keras')}, backend jax. keras.applications.MobileNetV3Small({cfg}) "
        f"({model.count_params()} params, random init after keras.utils.set_random_seed(0)); "
        "exported f(x) = model(x, training=False), weights baked. x: float32[2,32,32,3] "
        "uniform in [0, 255) (include_preprocessing rescales to [-1, 1]); out: softmax "
        "probabilities float32[2,10]. alpha=0.25 (smaller than the documented 0.75/1.0, which "
        "only constrain imagenet weights) keeps the folder under 4 MiB with the 1024-wide head."))
    add_meta(d, library=lib("keras"), config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
             params=int(model.count_params()))


def bert_inputs():
    rng = np.random.default_rng(11)
    lengths = (16, 11)
    token_ids = rng.integers(1, 100, (2, 16)).astype(np.int32)
    padding_mask = np.zeros((2, 16), np.int32)
    segment_ids = np.zeros((2, 16), np.int32)
    for r, n in enumerate(lengths):
        padding_mask[r, :n] = 1
        token_ids[r, n:] = 0
        segment_ids[r, n // 2:n] = 1
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def model_keras_hub_bert():
    import keras
    import keras_hub
    keras.utils.set_random_seed(1)
    cfg = dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
               intermediate_dim=64, max_sequence_length=16)
    backbone = keras_hub.models.BertBackbone(**cfg)
    inputs = bert_inputs()

    def keras_hub_bert(inputs):
        out = backbone(inputs, training=False)
        return {"sequence_output": out["sequence_output"], "pooled_output": out["pooled_output"]}

    d, _ = write("keras_hub_bert", keras_hub_bert, (inputs,), notes=(
        f"{lib('keras-hub', 'keras')}, backend jax. keras_hub.models.BertBackbone({cfg}) "
        f"({backbone.count_params()} params, random init after keras.utils.set_random_seed(1)), "
        "training=False. Dict input {padding_mask, segment_ids, token_ids}: int32[2,16], row 0 "
        "full length, row 1 length 11 (token 0 and mask 0 after); segment 1 on the second half "
        "of each sequence. Dict output {pooled_output: f32[2,32], sequence_output: f32[2,16,32]}."))
    add_meta(d, library=lib("keras-hub", "keras"), config=cfg, params=int(backbone.count_params()))


def model_keras_hub_gpt2():
    import keras
    import keras_hub
    keras.utils.set_random_seed(2)
    cfg = dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
               intermediate_dim=64, max_sequence_length=16)
    backbone = keras_hub.models.GPT2Backbone(**cfg)
    b = bert_inputs()
    inputs = {"token_ids": b["token_ids"], "padding_mask": b["padding_mask"]}

    def keras_hub_gpt2(inputs):
        return backbone(inputs, training=False)

    d, _ = write("keras_hub_gpt2", keras_hub_gpt2, (inputs,), notes=(
        f"{lib('keras-hub', 'keras')}, backend jax. keras_hub.models.GPT2Backbone({cfg}) "
        f"({backbone.count_params()} params, random init after keras.utils.set_random_seed(2)), "
        "training=False (causal self-attention). Dict input {padding_mask, token_ids} int32[2,16] "
        "(the keras_hub_bert inputs without segment_ids); output sequence float32[2,16,32]."))
    add_meta(d, library=lib("keras-hub", "keras"), config=cfg, params=int(backbone.count_params()))


# ---- Flax ---------------------------------------------------------------------------------

def model_flax_nnx():
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, dim, heads, hidden, rngs):
            self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False,
                                               rngs=rngs)
            self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
            self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
            self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

        def __call__(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))

    cfg = dict(dim=32, heads=2, hidden=64)
    model = Block(**cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    state = jax.tree.map(np.asarray, state)  # concrete arrays: baked as constants
    x = np.random.default_rng(12).standard_normal((2, 8, 32)).astype(np.float32)

    def flax_nnx(x):
        return nnx.merge(graphdef, state)(x)

    write("flax_nnx", flax_nnx, (x,), notes=(
        f"{lib('flax')}: pre-LN transformer block, nnx.LayerNorm -> nnx.MultiHeadAttention("
        f"num_heads={cfg['heads']}, in_features={cfg['dim']}, decode=False) + residual -> "
        f"nnx.LayerNorm -> nnx.Linear {cfg['dim']}->{cfg['hidden']} gelu -> nnx.Linear -> {cfg['dim']} + "
        "residual; nnx.Rngs(0). Exported f(x) = nnx.merge(graphdef, state)(x) with (graphdef, "
        "state) = nnx.split(model) closed over. x: float32[2,8,32] -> float32[2,8,32]."))


def model_flax_linen():
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(8, (3, 3), padding="SAME")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            return nn.Dense(10)(x)

    model = CNN()
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    # One train-mode step so the BatchNorm running statistics are not the trivial 0/1.
    calib = (rng.standard_normal((16, 8, 8, 3)) * 2.0 + 0.5).astype(np.float32)
    _, upd = model.apply(variables, calib, train=True, mutable=["batch_stats"])
    variables = jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": upd["batch_stats"]})

    def flax_linen(x):
        return model.apply(variables, x)  # eval mode: running averages

    write("flax_linen", flax_linen, (x,), notes=(
        f"{lib('flax')}: linen CNN nn.Conv(8, 3x3, SAME) -> nn.BatchNorm(use_running_average=True) "
        "-> relu -> avg_pool 2x2 -> nn.Dense(10); init with jax.random.key(0); batch_stats from "
        "one train-mode apply (momentum 0.5) on a seeded float32[16,8,8,3] batch. Exported "
        "f(x) = model.apply(variables, x), variables closed over. float32[2,8,8,3] -> float32[2,10]."))


# ---- Equinox --------------------------------------------------------------------------------

def model_equinox_mlp():
    import equinox as eqx

    class Net(eqx.Module):
        ln: eqx.nn.LayerNorm
        mlp: eqx.nn.MLP

        def __init__(self, key):
            self.ln = eqx.nn.LayerNorm(16)
            self.mlp = eqx.nn.MLP(16, 4, width_size=32, depth=2, activation=jax.nn.gelu, key=key)

        def __call__(self, x):  # one example, float32[16]
            return jax.nn.log_softmax(self.mlp(self.ln(x)))

    net = Net(jax.random.key(3))
    x = np.random.default_rng(14).standard_normal((5, 16)).astype(np.float32)

    def equinox_mlp(x):
        return jax.vmap(net)(x)

    write("equinox_mlp", equinox_mlp, (x,), notes=(
        f"{lib('equinox')}: eqx.nn.LayerNorm(16) -> eqx.nn.MLP(16, 4, width_size=32, depth=2, "
        "activation=gelu) -> log_softmax, init key jax.random.key(3); jax.vmap over the batch, "
        "plain jax.jit of a function closing over the module. float32[5,16] -> float32[5,4]."))


def model_equinox_attention():
    import equinox as eqx
    k1, k2 = jax.random.split(jax.random.key(4))
    attn = eqx.nn.MultiheadAttention(num_heads=2, query_size=16, key=k1)
    ln = eqx.nn.LayerNorm(16)
    proj = eqx.nn.Linear(16, 16, key=k2)
    x = np.random.default_rng(15).standard_normal((2, 6, 16)).astype(np.float32)

    def one(x):  # float32[6,16]
        h = jax.vmap(ln)(x)
        return x + jax.vmap(proj)(attn(h, h, h))

    def equinox_attention(x):
        return jax.vmap(one)(x)

    write("equinox_attention", equinox_attention, (x,), notes=(
        f"{lib('equinox')}: x + Linear(MultiheadAttention(num_heads=2, query_size=16)(h, h, h)), "
        "h = LayerNorm(16)(x) per token; keys split from jax.random.key(4); vmapped over the batch. "
        "float32[2,6,16] -> float32[2,6,16]."))


# ---- NaN made by the model ------------------------------------------------------------------

def model_nan_max():
    rng = np.random.default_rng(16)
    x = rng.uniform(1.5, 4.0, (6, 8)).astype(np.float32)  # all finite
    x[1, 3] = 0.5  # log(0.5 - 1) = NaN
    x[3, 6] = 0.25  # NaN
    x[4, 0] = 0.75  # NaN first in its row
    x[5, 7] = 0.5  # NaN last in its row
    x[2, 0] = 1.0  # log(0) = -inf (not NaN)

    def nan_max(x):
        y = jnp.log(x - 1.0)
        return {"max": jnp.max(y, axis=-1), "argmax": jnp.argmax(y, axis=-1).astype(jnp.int32),
                "min": jnp.min(y, axis=-1), "softmax": jax.nn.softmax(y, axis=-1),
                "maximum": jnp.maximum(y, 0.5)}

    d, exp = write("nan_max", nan_max, (x,), notes=(
        "y = log(x - 1) of finite x float32[6,8] in [1.5, 4) except x[1,3] = 0.5, x[3,6] = 0.25, "
        "x[4,0] = 0.75, x[5,7] = 0.5 (y NaN there: in the middle, first and last of a row) and "
        "x[2,0] = 1 (y = -inf). Outputs {argmax: i32[6], max: f32[6], maximum: maximum(y, 0.5) "
        "f32[6,8], min: f32[6], softmax: f32[6,8]}. JAX propagates NaN through max/min/maximum "
        "(rows 1, 3, 4, 5 of max/min are NaN; argmax points at the NaN: 3, 6, 0, 7; those softmax "
        "rows are all NaN); XLA CPU with xla_cpu_enable_fast_min_max=true may drop it."))
    out = {k: np.asarray(v) for k, v in exp.call(x).items()}
    nan_rows = [False, True, False, True, True, True]
    assert np.isnan(out["max"]).tolist() == nan_rows, out["max"]
    assert np.isnan(out["min"]).tolist() == nan_rows, out["min"]
    assert [out["argmax"][r] for r in (1, 3, 4, 5)] == [3, 6, 0, 7], out["argmax"]
    assert np.isnan(out["maximum"]).sum() == 4 and np.isnan(out["maximum"][[1, 3, 4, 5], [3, 6, 0, 7]]).all()
    assert np.isnan(out["softmax"]).all(axis=1).tolist() == nan_rows
    assert np.isfinite(out["softmax"][[0, 2]]).all() and out["softmax"][2, 0] == 0.0
    add_meta(d, expected_nan={"max": [1, 3, 4, 5], "min": [1, 3, 4, 5],
                              "maximum": [[1, 3], [3, 6], [4, 0], [5, 7]],
                              "softmax_rows": [1, 3, 4, 5], "argmax": [int(v) for v in out["argmax"]]})


# ---- complex ----------------------------------------------------------------------------------

def complex_fns(x, z):
    return {
        "fft": jnp.fft.fft(x),
        "rfft": jnp.fft.rfft(x),
        "irfft": jnp.fft.irfft(jnp.fft.rfft(x), n=x.shape[-1]),
        "affine": z * (1 + 2j) + jnp.conj(z),
        "abs": jnp.abs(z),
        "ifft": jnp.fft.ifft(z),
    }


def complex_inputs(rdt, cdt):
    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 16)).astype(rdt)
    z = (rng.standard_normal((2, 8)) + 1j * rng.standard_normal((2, 8))).astype(cdt)
    return x, z


def model_complex_fft():
    x, z = complex_inputs(np.float32, np.complex64)

    def complex_fft(x, z):
        return complex_fns(x, z)

    _, exp = write("complex_fft", complex_fft, (x, z), notes=(
        "x: float32[2,16], z: complex64[2,8] -> {abs: |z| f32[2,8], affine: z*(1+2j) + conj(z) "
        "c64[2,8], fft: jnp.fft.fft(x) c64[2,16], ifft: jnp.fft.ifft(z) c64[2,8], irfft: "
        "irfft(rfft(x)) f32[2,16], rfft: c64[2,9]}. stablehlo.fft, no custom call."))
    assert "custom_call" not in exp.mlir_module()


def model_complex128():
    with jax.enable_x64(True):
        x, z = complex_inputs(np.float64, np.complex128)

        def complex128(x, z):
            return complex_fns(x, z)

        _, exp = write("complex128", complex128, (x, z), notes=(
            "complex_fft's function in double precision, exported under jax.enable_x64(True): "
            "x: float64[2,16], z: complex128[2,8] -> {abs f64, affine c128, fft c128[2,16], "
            "ifft c128, irfft f64[2,16], rfft c128[2,9]}."))
        assert "custom_call" not in exp.mlir_module()
    assert not jax.config.jax_enable_x64


# ---- typed PRNG keys ------------------------------------------------------------------------

def model_prng_key():
    key = jax.random.key(0)
    x = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(2, 4)

    def prng_key(key, x):
        return x + jax.random.normal(key, x.shape, jnp.float32)

    key_spec = jax.ShapeDtypeStruct(key.shape, key.dtype)
    d, exp = write("prng_key", prng_key, (key, x), arg_specs=(key_spec, EX.sds(x.shape, np.float32)),
                   notes=("x + jax.random.normal(key, x.shape) with key = jax.random.key(0) (typed, "
                          "aval key<fry>[], default threefry2x32 impl) and x float32[2,4]. in0.npy is "
                          "jax.random.key_data(key): uint32[2]; the module's @main takes "
                          "tensor<2xui32> for it."))
    sig = EX.main_signature(exp.mlir_module())
    assert "tensor<2xui32>" in sig, sig
    add_meta(d, key_inputs=[{"index": 0, "aval": str(exp.in_avals[0]), "impl": "fry",
                             "npy": "in0.npy: jax.random.key_data(key), uint32[2]",
                             "main_arg": "tensor<2xui32>"}])


def model_prng_keys():
    keys = jax.random.split(jax.random.key(1), 3)
    x = np.zeros((3, 4), np.float32)

    def prng_keys(keys, x):
        return x + jax.vmap(lambda k: jax.random.uniform(k, (4,), jnp.float32))(keys)

    spec = jax.ShapeDtypeStruct(keys.shape, keys.dtype)
    d, exp = write("prng_keys", prng_keys, (keys, x), arg_specs=(spec, EX.sds(x.shape, np.float32)),
                   notes=("x + vmap(uniform(k, (4,)))(keys), keys = jax.random.split(jax.random.key(1), 3): "
                          "aval key<fry>[3]; in0.npy = key_data(keys) uint32[3,2]; @main takes "
                          "tensor<3x2xui32>. x float32[3,4] zeros."))
    sig = EX.main_signature(exp.mlir_module())
    assert "tensor<3x2xui32>" in sig, sig
    add_meta(d, key_inputs=[{"index": 0, "aval": str(exp.in_avals[0]), "impl": "fry",
                             "npy": "in0.npy: jax.random.key_data(keys), uint32[3,2]",
                             "main_arg": "tensor<3x2xui32>"}])


def main(ex) -> None:
    global EX
    EX = ex
    os.chdir(ex.REPO_ROOT)
    # Locations of library frames name files in site-packages: strip everything up to it too
    # ("keras/src/...", "flax/nnx/..."), so the bytes do not depend on where the venv lives.
    old = jax.config.jax_hlo_source_file_canonicalization_regex
    jax.config.update("jax_hlo_source_file_canonicalization_regex",
                      "^(" + re.escape(str(ex.REPO_ROOT) + os.sep) + "|.*/site-packages/)")
    start = len(ex.SUMMARY)
    try:
        model_keras_mobilenet()
        model_keras_hub_bert()
        model_keras_hub_gpt2()
        model_flax_nnx()
        model_flax_linen()
        model_equinox_mlp()
        model_equinox_attention()
        model_nan_max()
        model_complex_fft()
        model_prng_key()
        model_prng_keys()
        model_complex128()  # last: x64
    finally:
        jax.config.update("jax_hlo_source_file_canonicalization_regex", old)
    print("\n".join(ex.SUMMARY[start:]))
