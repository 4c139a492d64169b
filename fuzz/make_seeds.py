#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/TARGET/ (git-ignored), from the
committed hlo/ fixtures and generated KServe requests. `scripts/fuzz.sh --seed` then minimizes
them (`cargo fuzz cmin`) into fuzz/corpus/TARGET/, which is committed. Standard library only."""
import glob
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
MAX = 24 * 1024  # seeds above this are skipped: small inputs run fast


def files(pattern, limit=MAX):
    return [p for p in sorted(glob.glob(os.path.join(ROOT, pattern), recursive=True))
            if os.path.getsize(p) <= limit]


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(target, paths, prefix=b""):
    for p in paths:
        name = os.path.relpath(p, ROOT).replace("/", "_")
        with open(p, "rb") as f:
            put(target, name, prefix + f.read())


# Fixture signatures, in the order of fuzz/src/lib.rs FIXTURES: (name, datatype, shape).
SIGS = [
    [("pixels", "FP32", [1, 64])],
    [(f"xs_{i}_", t, [4]) for i, t in enumerate(
        ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
         "FP16", "BF16", "FP32", "FP64"])],
    [("a", "FP32", [3, 4]), ("b", "INT32", [3])],
    [("x", "FP64", [2, 16]), ("z", "FP64", [2, 8, 2])],
    [("x", "FP32", [2, 16])],
]
OUTS = [["label", "logits"], [f"out{i}" for i in range(13)], ["count", "scaled", "sum"],
        ["abs", "affine", "fft", "ifft", "irfft", "rfft"], ["out0"]]
SIZE = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2,
        "INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}


def count(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def value(t, i):
    if t == "BOOL":
        return i % 2 == 0
    if t.startswith(("INT", "UINT")):
        return i % 7
    return i * 0.25


def nested(shape, flat):
    if not shape:
        return flat[0]
    per = count(shape[1:])
    return [nested(shape[1:], flat[k * per:(k + 1) * per]) for k in range(shape[0])]


def json_request(sig, outs, nest, binary_out):
    inputs = []
    for name, t, shape in sig:
        flat = [value(t, i) for i in range(count(shape))]
        inputs.append({"name": name, "datatype": t, "shape": shape,
                       "data": nested(shape, flat) if nest else flat})
    req = {"id": "seed", "inputs": inputs, "outputs": [{"name": o} for o in outs[:2]]}
    if binary_out:
        req["parameters"] = {"binary_data_output": True}
    return json.dumps(req).encode()


def binary_request(sig):
    inputs, blob = [], b""
    for name, t, shape in sig:
        n = count(shape) * SIZE[t]
        inputs.append({"name": name, "datatype": t, "shape": shape,
                       "parameters": {"binary_data_size": n}})
        blob += bytes((i % 2 if t == "BOOL" else i % 251) for i in range(n))
    head = json.dumps({"inputs": inputs}).encode()
    return head, blob


def main():
    copy("jaxexport", files("hlo/**/*.jaxexport", 8 * 1024))
    copy("mlir_text", files("hlo/**/*.mlir", 16 * 1024) + files("tests/fixtures/**/*.mlir"))
    copy("hlo_proto", files("hlo/**/*.pb", 32 * 1024))
    copy("npy", files("hlo/**/*.npy", 2 * 1024)[:60])
    copy("policy_toml", files("hlo/**/*.toml") + files("tests/fixtures/**/*.toml"))
    copy("params", files("hlo/**/*.safetensors", 12 * 1024), b"\x00")
    copy("params", files("hlo/**/*.npz", 12 * 1024), b"\x01")
    configs = [
        b'version = 3\ndevice = "cpu"\nexecution = "process"\n[limits]\nworkers = 2\n'
        b'max_queue = 16\ntimeout_ms = 5000\nmax_module_bytes = 1000000\n',
        b'artifact = "model.jaxexport"\nparams_sha256 = "' + b"ab" * 32 + b'"\n'
        b'[params]\nprefix = "params."\nbake = true\n[params.rename]\nw = "kernel"\n',
        b'[shapes]\nb = [1, 8, 32]\n[batching]\nsizes = [1, 4]\nmax_queue_delay_us = 100\n'
        b'pad = "repeat_last"\nbatch_dim = 0\n',
        b'version = "v1.2"\n[limits]\nmax_execution_bytes = 4096\n',
    ]
    for i, c in enumerate(configs):
        for layout in range(3):
            put("config_toml", f"config{i}_{layout}", bytes([layout]) + c)
    with open(os.path.join(ROOT, "examples/digits_request.json"), "rb") as f:
        put("kserve_json", "digits_request", b"\x00" + f.read())
    for k, (sig, outs) in enumerate(zip(SIGS, OUTS)):
        for nest in (False, True):
            put("kserve_json", f"sig{k}_nest{int(nest)}", bytes([k]) + json_request(sig, outs, nest, nest))
        head, blob = binary_request(sig)
        put("kserve_binary", f"sig{k}", bytes([k]) + struct.pack("<H", len(head)) + head + blob)
    # gRPC ModelInferRequests: raw contents, and typed contents.
    def varint(n):
        n &= (1 << 64) - 1
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    def field(num, wire, payload):
        key = varint(num << 3 | wire)
        if wire == 2:
            return key + varint(len(payload)) + payload
        return key + payload

    def ld(num, b):
        return field(num, 2, b)

    typed_field = {"BOOL": (1, "?"), "INT8": (2, "i"), "INT16": (2, "i"), "INT32": (2, "i"),
                   "INT64": (3, "q"), "UINT8": (4, "I"), "UINT16": (4, "I"), "UINT32": (4, "I"),
                   "UINT64": (5, "Q"), "FP32": (6, "f"), "FP64": (7, "d")}
    for k, (sig, outs) in enumerate(zip(SIGS, OUTS)):
        for typed in (False, True):
            msg = ld(1, b"m") + ld(3, b"seed")
            raws = b""
            for name, t, shape in sig:
                n = count(shape)
                tensor = ld(1, name.encode()) + ld(2, t.encode())
                tensor += ld(3, b"".join(varint(d) for d in shape))
                if typed and t in typed_field:
                    num, fmt = typed_field[t]
                    vals = [value(t, i) for i in range(n)]
                    if fmt in "iqIQ?":
                        packed = b"".join(varint(int(v)) for v in vals)
                    else:
                        packed = b"".join(struct.pack("<" + fmt, v) for v in vals)
                    tensor += ld(5, ld(num, packed))
                else:
                    raws += ld(7, bytes((i % 2 if t == "BOOL" else i % 251)
                                        for i in range(n * SIZE[t])))
                msg += ld(5, tensor)
            for o in outs[:2]:
                msg += ld(6, ld(1, o.encode()))
            put("grpc_request", f"sig{k}_{'typed' if typed else 'raw'}", bytes([k]) + msg + raws)
    # worker replies: Compiled (stats + executable), Rejected, Fatal, Described.
    def frame(kind, payload):
        return b"XLGW\x01" + bytes([kind]) + b"\x00\x00" + struct.pack("<I", len(payload)) + payload
    stats = json.dumps({"client_ms": 1.5, "compile_ms": 20.0, "serialize_ms": 0.5}).encode()
    replies = {
        "compiled": frame(11, struct.pack("<I", len(stats)) + stats + b"\x7fELF-executable"),
        "rejected": frame(12, json.dumps({"function": "PJRT_Client_Compile", "code": 3,
                                          "message": "bad module"}).encode()),
        "refine": frame(12, json.dumps({"function": "StableHLO refinement: shape assertion",
                                        "code": None, "message": "b must be even"}).encode()),
        "fatal": frame(13, b"cannot load plugin"),
        "described": frame(15, json.dumps({"arg_names": ["x", None], "assertions": ["b > 0"]}).encode()),
    }
    for name, r in replies.items():
        put("worker_reply", name, b"\x03\x40\xff\x10\x00" + r)
    for mode in range(3):
        put("cache_entry", f"mode{mode}", bytes([mode, 2, 9, 1, 82, 4]) + b"executable bytes")
    for k in range(len(SIGS)):
        # arbitrary's bytes: a few shapes of structured requests.
        put("kserve_structured", f"sig{k}", bytes([k]) + bytes(range(64)))
    print(f"seeds in {OUT}")


if __name__ == "__main__":
    sys.exit(main())
