#!/usr/bin/env python3
"""Dumps the `xla.CompileOptionsProto` that JAX 0.11.2 sends to XLA when it compiles for CPU.

Run from the repository root (same venv as hlo/export.py, plus `protobuf`):

    venv312/bin/python hlo/compile_options.py

It jits a small model, captures the options at `jax._src.compiler.backend_compile_and_load`
(the last Python frame before XLA) and writes, for each case of `XLA_FLAGS` in CASES:

- `hlo/compile_options/<case>.binpb`: the options exactly as JAX serialized them;
- `hlo/compile_options/<case>.txtpb`: the same in protobuf text form, for people;
- `hlo/compile_options/cases.json`: each case's XLA_FLAGS and file names.

The `default` case (no XLA_FLAGS) is also copied to `src/pjrt/jax_cpu_compile_options.binpb`,
which xlaguard embeds and sends (see src/pjrt/options.rs). The text form and the field table
`hlo/compile_options/debug_options_fields.json` use the `xla/xla.proto` descriptor that
jaxlib's own `libjax_common.so` embeds (the CPU plugin embeds an identical one: checked below),
so names and field numbers are those of the XLA that jaxlib 0.11.2 was built from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HLO_DIR = Path(__file__).resolve().parent
REPO_ROOT = HLO_DIR.parent
OUT = HLO_DIR / "compile_options"

# Each case: a name and the XLA_FLAGS JAX runs under. Only flags xlaguard allows
# (src/compile/mod.rs ALLOWED_XLA_FLAGS) that are DebugOptions fields.
CASES = {
    "default": "",
    "flags": " ".join(
        [
            "--xla_cpu_enable_fast_math",
            "--xla_backend_optimization_level=2",
            "--xla_cpu_max_isa=AVX2",
            "--xla_disable_hlo_passes=foo,bar",
            "--xla_cpu_use_xnnpack=false",
            "--xla_cpu_prefer_vector_width=128",
            "--xla_llvm_disable_expensive_passes=1",
        ]
    ),
    # JAX's CompileOptions() sets xla_cpu_enable_fast_min_max = false *after* XLA parses its
    # flags, so under JAX this flag has no effect (this case's dump equals `default`). xlaguard
    # honours it (src/pjrt/options.rs): a user who sets a flag gets it.
    "fast_min_max": "--xla_cpu_enable_fast_min_max=true",
}


def capture() -> bytes:
    """The serialized options of one real jit compile in this process."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import jax.numpy as jnp
    from jax._src import compiler

    assert jax.__version__ == "0.11.2", jax.__version__
    seen: list[bytes] = []
    orig = compiler.backend_compile_and_load

    def spy(backend, module, devices, options, host_callbacks):
        seen.append(options.SerializeAsString())
        return orig(backend, module, devices, options, host_callbacks)

    compiler.backend_compile_and_load = spy

    # A small MLP: more than 10 ops, so JAX turns on xla_detailed_logging as it does for
    # every real model (jax/_src/compiler.py use_detailed_logging).
    def mlp(x, w1, w2):
        h = jax.nn.relu(x @ w1)
        return jnp.max(jax.nn.softmax(h @ w2), axis=-1), jnp.argmax(h, axis=-1)

    import numpy as np

    args = (np.ones((2, 8), np.float32), np.ones((8, 8), np.float32), np.ones((8, 4), np.float32))
    jax.jit(mlp)(*args)
    assert len(seen) == 1, len(seen)  # numpy inputs: the jit is the only compile
    return seen[0]


def descriptor_pool():
    """xla/xla.proto and its imports, from the serialized descriptors inside a binary."""
    from google.protobuf import descriptor_pb2, descriptor_pool as dp
    import importlib
    import jaxlib

    def varint(b, i):
        r = s = 0
        while True:
            c = b[i]
            i += 1
            r |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return r, i

    def embedded(data: bytes, name: str) -> bytes:
        start = data.find(b"\n" + bytes([len(name)]) + name.encode())
        assert start >= 0, f"{name} is not embedded"
        i = start
        while i < len(data):  # FileDescriptorProto fields 1..14; stop at anything else
            tag, j = varint(data, i)
            field, wire = tag >> 3, tag & 7
            if not 1 <= field <= 14 or wire not in (0, 2):
                break
            n, j = varint(data, j)
            i = j + n if wire == 2 else j
        return data[start:i]

    def load(so: Path):
        data = so.read_bytes()
        pool, done = dp.DescriptorPool(), set()

        def add(name: str):
            if name in done:
                return
            done.add(name)
            if name.startswith("google/protobuf/"):
                mod = importlib.import_module("google.protobuf." + Path(name).stem + "_pb2")
                fdp = descriptor_pb2.FileDescriptorProto()
                mod.DESCRIPTOR.CopyToProto(fdp)
            else:
                fdp = descriptor_pb2.FileDescriptorProto.FromString(embedded(data, name))
            for dep in fdp.dependency:
                add(dep)
            pool.Add(fdp)

        add("xla/pjrt/proto/compile_options.proto")
        return pool

    jax_pool = load(Path(jaxlib.__file__).parent / "libjax_common.so")
    plugin = REPO_ROOT / "third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"
    if plugin.exists():
        fields = lambda p: sorted(
            (f.name, f.number, f.type)
            for f in p.FindMessageTypeByName("xla.DebugOptions").fields
        )
        assert fields(jax_pool) == fields(load(plugin)), "plugin's DebugOptions differ from jaxlib's"
        print("the CPU plugin's DebugOptions descriptor equals jaxlib's")
    return jax_pool


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "--capture":
        sys.stdout.buffer.write(capture())
        return
    from google.protobuf import message_factory, text_format

    pool = descriptor_pool()
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("xla.CompileOptionsProto"))
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    index = {}
    for case, flags in CASES.items():
        env = dict(os.environ, XLA_FLAGS=flags)
        if not flags:
            env.pop("XLA_FLAGS")
        raw = subprocess.run(
            [sys.executable, __file__, "--capture"], env=env, check=True, capture_output=True
        ).stdout
        (OUT / f"{case}.binpb").write_bytes(raw)
        (OUT / f"{case}.txtpb").write_text(text_format.MessageToString(cls.FromString(raw)))
        index[case] = {"xla_flags": flags, "binpb": f"{case}.binpb", "txtpb": f"{case}.txtpb"}
        if case == "default":
            shutil.copyfile(OUT / "default.binpb", REPO_ROOT / "src/pjrt/jax_cpu_compile_options.binpb")
    (OUT / "cases.json").write_text(json.dumps(index, indent=1) + "\n")
    dbg = pool.FindMessageTypeByName("xla.DebugOptions")
    table = [
        {"name": f.name, "number": f.number, "type": f.type, "repeated": f.is_repeated}
        for f in sorted(dbg.fields, key=lambda f: f.number)
    ]
    rows = ",\n".join(json.dumps(r) for r in table)
    (OUT / "debug_options_fields.json").write_text("[\n" + rows + "\n]\n")
    print(f"wrote {OUT} ({len(table)} DebugOptions fields)")


if __name__ == "__main__":
    main()
