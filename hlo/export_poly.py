"""Shape-polymorphic golden fixtures: exported once with `jax.export.symbolic_shape(...)` (so
`@main` takes `tensor<?x...>`), plus JAX's outputs at several concrete sizes.

Called by hlo/export.py at its very end, after export_models (so that no older fixture's source
locations move): `python hlo/export.py` runs all, `python hlo/export.py --only poly` only these.

Layout of hlo/<name>/: model.jaxexport, model.mlir, model.mlirbc, meta.json as for the static
fixtures (symbolic dims as strings: "b", "2*b", "b + 1"), and per concrete size
sizes/<tag>/in0.npy, ... (flattened in exp.in_avals order) and out0.npy, ... (`exp.call(*args)`,
asserted bit-identical to the jitted Python function on the same inputs and to the deserialized
artifact's call). meta.json `sizes` lists tag, dims, input and output shapes per size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib.metadata import version

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import export, lax  # noqa: E402

MAX_POLY_BYTES = 4 << 20
EX = None  # the hlo/export.py module, set by main()
F32 = jnp.float32


def lib(*names) -> str:
    return ", ".join(f"{n}=={version(n)}" for n in names)


def concrete_shape(aval_shape, dims: dict) -> list[int]:
    """Evaluate symbolic dims ("b", "2*b", "b + 1") at `dims`."""
    return [d if isinstance(d, int) else int(eval(str(d), {"__builtins__": {}}, dict(dims)))
            for d in aval_shape]


def shape_str(shape) -> list:
    return [d if isinstance(d, int) else str(d) for d in shape]


def write_poly(name, fn, specs: tuple, sizes: list, *, dim_vars, constraints=(), notes="",
               violation=None, extra=None):
    """Export `fn` at the symbolic `specs` and write hlo/<name>/ plus sizes/<tag>/.

    sizes: [(tag, {"b": 3, ...}, args)], args concrete inputs (same pytree as specs).
    violation: None or (tag, dims, args): inputs JAX must refuse; only the inputs are stored
    (under violation/<tag>/) and the exact error message of `exp.call` goes to meta.json.
    """
    d = EX.fresh_dir(name)
    jitted = jax.jit(fn)
    exp = export.export(jitted, platforms=("cpu",))(*specs)

    ser = bytes(exp.serialize())
    (d / "model.jaxexport").write_bytes(ser)
    mlir_text = exp.mlir_module()
    (d / "model.mlir").write_text(mlir_text)
    (d / "model.mlirbc").write_bytes(bytes(exp.mlir_module_serialized))

    exp2 = export.deserialize(bytearray(ser))
    assert str(exp2.in_avals) == str(exp.in_avals) and str(exp2.out_avals) == str(exp.out_avals)
    assert exp2.module_kept_var_idx == exp.module_kept_var_idx
    assert exp2.mlir_module_serialized == exp.mlir_module_serialized
    assert exp.uses_global_constants, name  # symbolic shapes: the module needs refinement
    assert any(not isinstance(dim, int) for a in exp.in_avals for dim in a.shape), name

    size_meta = []
    for tag, dims, args in sizes:
        sd = d / "sizes" / tag
        sd.mkdir(parents=True)
        flat_args = jax.tree.leaves(args)
        assert len(flat_args) == len(exp.in_avals)
        in_shapes = []
        for i, (a, aval) in enumerate(zip(flat_args, exp.in_avals)):
            a = np.asarray(a)
            want = concrete_shape(aval.shape, dims)
            assert a.dtype == aval.dtype and list(a.shape) == want, (name, tag, i, a.dtype, a.shape, aval)
            EX.save_npy(sd / f"in{i}.npy", a)
            in_shapes.append(list(a.shape))
        res = exp.call(*args)
        direct = jitted(*args)
        assert jax.tree.structure(res) == jax.tree.structure(direct) == exp.out_tree
        flat_res, flat_direct = jax.tree.leaves(res), jax.tree.leaves(direct)
        assert len(flat_res) == len(exp.out_avals)
        out_shapes = []
        for i, (r, dr, aval) in enumerate(zip(flat_res, flat_direct, exp.out_avals)):
            r, dr = np.asarray(r), np.asarray(dr)
            assert r.dtype == aval.dtype and list(r.shape) == concrete_shape(aval.shape, dims), (name, tag, i, r.shape, aval)
            assert r.dtype == dr.dtype and r.shape == dr.shape and r.tobytes() == dr.tobytes(), \
                f"{name} {tag} out{i}: exp.call differs from jit (max abs diff {np.max(np.abs(r.astype(np.float64) - dr.astype(np.float64)))})"
            EX.save_npy(sd / f"out{i}.npy", r)
            out_shapes.append(list(r.shape))
        for r, r2 in zip(flat_res, jax.tree.leaves(exp2.call(*args))):
            assert np.asarray(r).tobytes() == np.asarray(r2).tobytes()
        size_meta.append({"tag": tag, "dims": dict(dims), "inputs": in_shapes, "outputs": out_shapes})

    in_tree_args, _kwargs = jax.tree.unflatten(exp.in_tree, list(exp.in_avals))
    sig = EX.main_signature(mlir_text)
    meta = {
        "name": name,
        "function_name": exp.fun_name,
        "inputs": EX.leaf_specs(in_tree_args, exp.in_avals),
        "outputs": EX.leaf_specs(jax.tree.unflatten(exp.out_tree, list(exp.out_avals)), exp.out_avals),
        "dim_vars": list(dim_vars),
        "constraints": list(constraints),
        "sizes": size_meta,
        "platforms": list(exp.platforms),
        "module_kept_var_idx": list(exp.module_kept_var_idx),
        "calling_convention_version": exp.calling_convention_version,
        "uses_shape_polymorphism": "jax.uses_shape_polymorphism = true" in mlir_text,
        "has_symbolic_shapes": True,
        "ordered_effects": [str(e) for e in exp.ordered_effects],
        "unordered_effects": [str(e) for e in exp.unordered_effects],
        "disabled_safety_checks": [str(c) for c in exp.disabled_safety_checks],
        "nr_devices": exp.nr_devices,
        "uses_global_constants": exp.uses_global_constants,
        "jax_version": jax.__version__,
        "main_signature": sig,
        "main_arg_locs": EX.main_arg_locs(sig),
        "negative": None,
        "outputs_bit_identical_to_jit": True,  # asserted above for every size
        "sha256": {f: hashlib.sha256((d / f).read_bytes()).hexdigest()
                   for f in ("model.jaxexport", "model.mlirbc")},
        "notes": notes,
    }
    if violation is not None:
        tag, dims, args = violation
        vd = d / "violation" / tag
        vd.mkdir(parents=True)
        flat_args = [np.asarray(a) for a in jax.tree.leaves(args)]
        for i, a in enumerate(flat_args):
            EX.save_npy(vd / f"in{i}.npy", a)
        try:
            exp.call(*args)
        except Exception as e:  # noqa: BLE001
            err_type, err = f"{type(e).__module__}.{type(e).__qualname__}", str(e)
        else:
            raise AssertionError(f"{name}: exp.call accepted the violating size {tag}")
        meta["violation"] = {"tag": tag, "dims": dict(dims), "dir": f"violation/{tag}",
                             "inputs": [list(a.shape) for a in flat_args],
                             "error_type": err_type, "error": err}
    meta.update(extra or {})
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size < MAX_POLY_BYTES, (name, size)
    EX.SUMMARY.append(f"{name:15s} {size:8d} B  in={[(m['dtype'], m['shape']) for m in meta['inputs']]} "
                      f"sizes={[s['tag'] for s in size_meta]}")
    return d, exp


# ---- fixtures ----------------------------------------------------------------------------------

def model_poly_keras_cnn():
    import keras
    assert keras.backend.backend() == "jax"
    keras.backend.clear_session()  # layer names (in locations) must not depend on earlier models
    keras.utils.set_random_seed(0)
    cfg = dict(input_shape=(32, 32, 3), alpha=0.25, minimalistic=True, include_top=True,
               weights=None, classes=10, include_preprocessing=True)
    model = keras.applications.MobileNetV3Small(**cfg)
    rng = np.random.default_rng(30)
    sizes = [(f"b{b}", {"b": b}, (rng.uniform(0.0, 255.0, (b, 32, 32, 3)).astype(np.float32),))
             for b in (1, 3, 8)]

    def poly_keras_cnn(x):
        return model(x, training=False)

    spec = export.symbolic_shape("b, 32, 32, 3")
    write_poly("poly_keras_cnn", poly_keras_cnn, (EX.sds(spec, F32),), sizes, dim_vars=["b"], notes=(
        f"{lib('keras')}, backend jax: keras_mobilenet's model (MobileNetV3Small({cfg}), "
        "keras.utils.set_random_seed(0)) exported with x: float32[b,32,32,3] "
        "(jax.export.symbolic_shape('b, 32, 32, 3')); out softmax float32[b,10]. Inputs uniform "
        "in [0, 255), np.random.default_rng(30), drawn for b = 1, 3, 8 in that order."),
        extra={"library": lib("keras"), "params": int(model.count_params())})


def bert_size_inputs(rng, b, s):
    token_ids = rng.integers(1, 100, (b, s)).astype(np.int32)
    padding_mask = np.zeros((b, s), np.int32)
    segment_ids = np.zeros((b, s), np.int32)
    for r in range(b):
        n = max(1, s - 3 * r)  # row 0 full, later rows padded
        padding_mask[r, :n] = 1
        token_ids[r, n:] = 0
        segment_ids[r, n // 2:n] = 1
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def model_poly_bert():
    import keras
    import keras_hub
    keras.backend.clear_session()  # else a full run names it bert_backbone_1 (export_models' first)
    keras.utils.set_random_seed(1)
    cfg = dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
               intermediate_dim=64, max_sequence_length=16)
    backbone = keras_hub.models.BertBackbone(**cfg)

    def poly_bert(inputs):
        out = backbone(inputs, training=False)
        return {"sequence_output": out["sequence_output"], "pooled_output": out["pooled_output"]}

    constraints = ["s <= 16"]
    bs = export.symbolic_shape("b, s", constraints=constraints)  # one scope: shared b, s
    spec = {k: EX.sds(bs, np.int32) for k in ("token_ids", "segment_ids", "padding_mask")}
    rng = np.random.default_rng(31)
    sizes = [(f"b{b}_s{s}", {"b": b, "s": s}, (bert_size_inputs(rng, b, s),))
             for b, s in ((1, 8), (2, 16), (5, 12))]
    violation = ("b2_s17", {"b": 2, "s": 17}, (bert_size_inputs(rng, 2, 17),))
    write_poly("poly_bert", poly_bert, (spec,), sizes, dim_vars=["b", "s"], constraints=constraints,
               violation=violation, notes=(
        f"{lib('keras-hub', 'keras')}, backend jax: keras_hub_bert's backbone (BertBackbone({cfg}), "
        "keras.utils.set_random_seed(1)), training=False, exported with dict input "
        "{padding_mask, segment_ids, token_ids} int32[b,s] (one symbolic_shape('b, s', "
        "constraints=['s <= 16']) tuple for all three) -> {pooled_output: f32[b,32], "
        "sequence_output: f32[b,s,32]}. Row r has length max(1, s - 3r) (token 0 / mask 0 after), "
        "segment 1 on its second half; np.random.default_rng(31), sizes in order then the "
        "violation. violation/b2_s17: s = 17 > 16, inputs only; meta.json violation.error is "
        "str() of what exp.call raises."),
        extra={"library": lib("keras-hub", "keras"), "config": cfg, "params": int(backbone.count_params())})


def model_poly_twice():
    (b,) = export.symbolic_shape("b")
    rng = np.random.default_rng(32)
    sizes = [(f"b{n}", {"b": n}, (rng.standard_normal((n, 4)).astype(np.float32),
                                  rng.standard_normal((2 * n, 4)).astype(np.float32)))
             for n in (1, 2, 5)]

    def poly_twice(x, y):
        return jnp.concatenate([x, x]) + y, x.sum()

    write_poly("poly_twice", poly_twice, (EX.sds((b, 4), F32), EX.sds((2 * b, 4), F32)), sizes,
               dim_vars=["b"], notes=(
        "x: float32[b,4], y: float32[2*b,4] (symbolic_shape('b'), then (2*b, 4)) -> "
        "(concatenate([x, x]) + y: float32[2*b,4], x.sum(): float32[]). "
        "np.random.default_rng(32), b = 1, 2, 5."))


def model_poly_affine():
    (b,) = export.symbolic_shape("b")
    rng = np.random.default_rng(33)
    sizes = [(f"b{n}", {"b": n}, (rng.standard_normal((n, 3)).astype(np.float32),
                                  rng.standard_normal((n + 1,)).astype(np.float32)))
             for n in (1, 2, 5)]

    def poly_affine(x, z):
        s = x.sum(axis=1)
        return {"diff": z[1:] - z[:-1] * s, "cat": jnp.concatenate([s, z])}

    write_poly("poly_affine", poly_affine, (EX.sds((b, 3), F32), EX.sds((b + 1,), F32)), sizes,
               dim_vars=["b"], notes=(
        "x: float32[b,3], z: float32[b+1] (symbolic_shape('b'), then (b + 1,)) -> "
        "{cat: concatenate([x.sum(1), z]) float32[2*b+1], diff: z[1:] - z[:-1] * x.sum(1) "
        "float32[b]}. np.random.default_rng(33), b = 1, 2, 5."))


def model_poly_dict():
    rng = np.random.default_rng(34)
    w = (rng.standard_normal((3, 3, 1, 4)) * 0.5).astype(np.float32)  # HWIO
    bias = (rng.standard_normal((4,)) * 0.1).astype(np.float32)
    wd = (rng.standard_normal((4, 3)) * 0.5).astype(np.float32)
    bd = (rng.standard_normal((3,)) * 0.1).astype(np.float32)

    def poly_dict(inputs):
        x, scale = inputs["image"], inputs["scale"]
        y = lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.nn.relu(y + bias)
        pooled = jnp.mean(y, axis=(1, 2)) * scale[:, None]  # [b,4]
        return {"logits": pooled @ wd + bd, "pooled": pooled,
                "count": jnp.sum(scale > 0).astype(jnp.int32)}

    (b,) = export.symbolic_shape("b")
    spec = {"image": EX.sds((b, 8, 8, 1), F32), "scale": EX.sds((b,), F32)}
    sizes = [(f"b{n}", {"b": n}, ({"image": rng.standard_normal((n, 8, 8, 1)).astype(np.float32),
                                   "scale": rng.standard_normal((n,)).astype(np.float32)},))
             for n in (1, 4, 7)]
    write_poly("poly_dict", poly_dict, (spec,), sizes, dim_vars=["b"], notes=(
        "dict in {image: f32[b,8,8,1], scale: f32[b]} -> dict out {count: i32[] = #(scale > 0), "
        "logits: f32[b,3], pooled: f32[b,4]}: conv 3x3 SAME 4 features (NHWC/HWIO, baked) + relu "
        "+ global mean pool, times scale, dense 4->3. np.random.default_rng(34) (weights, then "
        "inputs for b = 1, 4, 7); leaves in sorted-key order."))


def model_poly_seq_flax():
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
    model = Block(**cfg, rngs=nnx.Rngs(5))
    graphdef, state = nnx.split(model)
    state = jax.tree.map(np.asarray, state)  # concrete arrays: baked as constants

    def poly_seq_flax(x):
        return nnx.merge(graphdef, state)(x)

    constraints = ["s <= 32"]
    spec = export.symbolic_shape("b, s, 32", constraints=constraints)
    rng = np.random.default_rng(35)
    sizes = [(f"b{b}_s{s}", {"b": b, "s": s}, (rng.standard_normal((b, s, 32)).astype(np.float32),))
             for b, s in ((1, 4), (3, 17), (2, 32))]
    write_poly("poly_seq_flax", poly_seq_flax, (EX.sds(spec, F32),), sizes, dim_vars=["b", "s"],
               constraints=constraints, notes=(
        f"{lib('flax')}: flax_nnx's pre-LN transformer block (LayerNorm -> MultiHeadAttention("
        f"num_heads={cfg['heads']}, in_features={cfg['dim']}) + residual -> LayerNorm -> Linear "
        f"{cfg['dim']}->{cfg['hidden']} gelu -> Linear + residual) with nnx.Rngs(5), exported "
        "with x: float32[b,s,32], constraint s <= 32 -> float32[b,s,32]. "
        "np.random.default_rng(35), (b, s) = (1, 4), (3, 17), (2, 32)."),
        extra={"library": lib("flax"), "config": cfg})


def main(ex) -> None:
    global EX
    EX = ex
    os.chdir(ex.REPO_ROOT)
    old = jax.config.jax_hlo_source_file_canonicalization_regex
    jax.config.update("jax_hlo_source_file_canonicalization_regex",
                      "^(" + re.escape(str(ex.REPO_ROOT) + os.sep) + "|.*/site-packages/)")
    start = len(ex.SUMMARY)
    try:
        model_poly_keras_cnn()
        model_poly_bert()
        model_poly_twice()
        model_poly_affine()
        model_poly_dict()
        model_poly_seq_flax()
    finally:
        jax.config.update("jax_hlo_source_file_canonicalization_regex", old)
    print("\n".join(ex.SUMMARY[start:]))
