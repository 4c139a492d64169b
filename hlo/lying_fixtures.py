#!/usr/bin/env python3
"""Artifacts whose signature lies about the module they carry (hlo/lying/), for the tests that
xlaguard refuses them at load. Run after hlo/export.py, from the repository root:

    venv312/bin/python hlo/lying_fixtures.py

- `in_avals_int32.jaxexport`: `tiny` (x + y on float32[8,16]) re-serialized by JAX with
  `in_avals` claiming int32[8,16]; the module still takes float32. A value check against the
  claimed signature would let NaNs through "reject NaN" (integers have none).
- `out_avals_bf16.jaxexport`: the same with `out_avals` claiming bfloat16.
- `main_in_comment.mlir`: `tiny`'s StableHLO text with a fake `func.func public @main` taking
  int32 in a comment and in a string attribute before the real one.
"""

import dataclasses
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402
from jax import export  # noqa: E402
from jax._src import core  # noqa: E402

HLO = Path(__file__).resolve().parent
OUT = HLO / "lying"
OUT.mkdir(exist_ok=True)

exp = export.deserialize(bytearray((HLO / "tiny/model.jaxexport").read_bytes()))
lie = dataclasses.replace(exp, in_avals=tuple(core.ShapedArray(a.shape, jnp.int32) for a in exp.in_avals))
(OUT / "in_avals_int32.jaxexport").write_bytes(bytes(lie.serialize()))
lie = dataclasses.replace(exp, out_avals=tuple(core.ShapedArray(a.shape, jnp.bfloat16) for a in exp.out_avals))
(OUT / "out_avals_bf16.jaxexport").write_bytes(bytes(lie.serialize()))

text = (HLO / "tiny/model.mlir").read_text()
fake = "func.func public @main(%arg0: tensor<8x16xi32>, %arg1: tensor<8x16xi32>) -> tensor<8x16xi32>"
at = text.index("module ")
text = text[:at] + f"// {fake}\n" + text[at:]
text = text.replace(" attributes {", f' attributes {{xlaguard.note = "{fake}", ', 1)
(OUT / "main_in_comment.mlir").write_text(text)
print("wrote", sorted(p.name for p in OUT.iterdir()))
