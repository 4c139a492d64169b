#!/usr/bin/env python3
"""The official KServe v2 / Triton gRPC client, tritonclient[grpc], against a running
`xlaguard serve` (see tests/grpc.rs for the repository it serves).

    venv-test/bin/python tests/triton_grpc_client.py --url 127.0.0.1:PORT --fixtures hlo \
        --models digits dtypes ... [--errors] [--repository]

For every model named: its hlo/<name>/in*.npy as inputs, once as raw_input_contents (through
tritonclient.grpc unchanged) and once as typed `contents` (a hand-built ModelInferRequest on the
generated stub; FP16/BF16 inputs only raw, as the protocol says); every output compared with
JAX's hlo/<name>/out*.npy bit for bit. `--errors`: every error code. `--repository`: index,
unload/load, statistics, config. Prints one line per check and a final `OK <n> checks`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goldens import golden as golden_file  # noqa: E402

import grpc
import ml_dtypes
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

checks = 0


def check(cond: bool, what: str) -> None:
    global checks
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


NP = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16,
}


def wire(a: np.ndarray) -> np.ndarray:
    """A numpy array as the protocol carries it: complex as (real, imag) in a trailing 2;
    bfloat16 (stored by numpy as void '<V2') viewed as ml_dtypes.bfloat16."""
    a = a.copy(order="C")  # (np.ascontiguousarray would make a scalar 1-d)
    if a.dtype == np.complex64:
        return a.view(np.float32).reshape(a.shape + (2,))
    if a.dtype == np.complex128:
        return a.view(np.float64).reshape(a.shape + (2,))
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        return a.view(ml_dtypes.bfloat16)
    return a


def typed_contents(t, a: np.ndarray, datatype: str) -> None:
    """Fills an InferInputTensor's typed `contents` field for its datatype."""
    flat = a.reshape(-1)
    c = t.contents
    if datatype == "BOOL":
        c.bool_contents.extend(bool(v) for v in flat)
    elif datatype in ("INT8", "INT16", "INT32"):
        c.int_contents.extend(int(v) for v in flat)
    elif datatype == "INT64":
        c.int64_contents.extend(int(v) for v in flat)
    elif datatype in ("UINT8", "UINT16", "UINT32"):
        c.uint_contents.extend(int(v) for v in flat)
    elif datatype == "UINT64":
        c.uint64_contents.extend(int(v) for v in flat)
    elif datatype == "FP32":
        c.fp32_contents.extend(float(v) for v in flat)
    elif datatype == "FP64":
        c.fp64_contents.extend(float(v) for v in flat)
    else:
        raise ValueError(datatype)


def raw_outputs(resp) -> dict[str, np.ndarray]:
    """The response's outputs from raw_output_contents, by name."""
    out = {}
    for o, raw in zip(resp.outputs, resp.raw_output_contents):
        out[o.name] = np.frombuffer(raw, dtype=NP[o.datatype]).reshape(list(o.shape))
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal arrays of the same dtype and shape (NaN equals NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def golden(client, stub, model: str, d: Path) -> None:
    meta = client.get_model_metadata(model, as_json=True)
    ins = [wire(np.load(d / f"in{i}.npy")) for i in range(len(meta["inputs"]))]
    want = [wire(np.load(golden_file(d, f"out{i}.npy"))) for i in range(len(meta["outputs"]))]
    # Raw contents through the client, unchanged.
    inputs = []
    for m, a in zip(meta["inputs"], ins):
        i = grpcclient.InferInput(m["name"], list(a.shape), m["datatype"])
        i.set_data_from_numpy(a)
        inputs.append(i)
    r = client.infer(model, inputs, request_id=f"{model}-raw")
    check(r.get_response().id == f"{model}-raw", f"{model} request id echoed")
    got = raw_outputs(r.get_response())
    for m, w in zip(meta["outputs"], want):
        if m["datatype"] != "BF16":
            # as_numpy gives a scalar as shape (1,); the raw check below holds the shape.
            check(same(r.as_numpy(m["name"]).reshape(w.shape), w),
                  f"{model} {m['name']} {m['datatype']} raw (as_numpy) == JAX")
        check(same(got[m["name"]], w), f"{model} {m['name']} {m['datatype']} raw == JAX")
    # Typed contents on the stub.
    if any(m["datatype"] in ("FP16", "BF16") for m in meta["inputs"]):
        req = service_pb2.ModelInferRequest(model_name=model)
        for m, a in zip(meta["inputs"], ins):
            t = req.inputs.add(name=m["name"], datatype=m["datatype"], shape=list(a.shape))
            if m["datatype"] in ("FP16", "BF16"):
                t.contents.fp32_contents.extend(float(v) for v in a.reshape(-1).astype(np.float32))
            else:
                typed_contents(t, a, m["datatype"])
        try:
            stub.ModelInfer(req)
            check(False, f"{model}: typed FP16/BF16 contents refused")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in e.details(),
                  f"{model}: typed FP16/BF16 contents refused: {e.details()}")
        return
    req = service_pb2.ModelInferRequest(model_name=model, id="typed")
    for m, a in zip(meta["inputs"], ins):
        t = req.inputs.add(name=m["name"], datatype=m["datatype"], shape=list(a.shape))
        typed_contents(t, a, m["datatype"])
    got = raw_outputs(stub.ModelInfer(req))
    for m, w in zip(meta["outputs"], want):
        check(same(got[m["name"]], w), f"{model} {m['name']} {m['datatype']} typed == JAX")


def expect(code, fn, what: str, text: str | None = None) -> None:
    try:
        fn()
        check(False, f"{what}: refused with {code}")
    except InferenceServerException as e:
        ok = e.status() == f"StatusCode.{code.name}" and (text is None or text in e.message())
        check(ok, f"{what}: {e.status()} {e.message()}")
    except grpc.RpcError as e:
        ok = e.code() == code and (text is None or text in e.details())
        check(ok, f"{what}: {e.code()} {e.details()}")


def spin(n: int) -> list:
    a = grpcclient.InferInput("n", [], "INT32")
    a.set_data_from_numpy(np.array(n, dtype=np.int32))
    b = grpcclient.InferInput("x", [], "FP32")
    b.set_data_from_numpy(np.array(0.5, dtype=np.float32))
    return [a, b]


def health(channel, service: str):
    """grpc.health.v1.Health/Check by hand (HealthCheckRequest {string service = 1})."""
    data = service.encode()
    check_rpc = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda s: (b"\x0a" + bytes([len(s)]) + s) if s else b"",
        response_deserializer=lambda b: b,
    )
    resp = check_rpc(data, timeout=5)
    # HealthCheckResponse {ServingStatus status = 1}: SERVING = 1, NOT_SERVING = 2.
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(resp, resp)


def errors(client, stub, channel, fixtures: Path) -> None:
    d = fixtures / "digits"
    x = np.load(d / "in0.npy")
    inp = grpcclient.InferInput("pixels", [1, 63], "FP32")
    inp.set_data_from_numpy(x[:, :63])
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer("digits", [inp]),
           "wrong shape", "input 'pixels' (0): expected float32[1,64], got float32[1,63]")
    inp = grpcclient.InferInput("pixels", [1, 64], "FP64")
    inp.set_data_from_numpy(x.astype(np.float64))
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer("digits", [inp]),
           "wrong datatype", "got float64[1,64] (datatype FP64, expected FP32)")
    req = service_pb2.ModelInferRequest(model_name="digits")
    t = req.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    t.contents.fp32_contents.extend([0.0] * 63)
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.ModelInfer(req), "typed element count",
           "input 'pixels': FP32 [1,64] needs 64 elements in contents.fp32_contents, got 63")
    req = service_pb2.ModelInferRequest(model_name="digits", raw_input_contents=[b"\0" * 255])
    req.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.ModelInfer(req), "raw byte length",
           "needs 256 bytes, got 255 bytes of raw_input_contents")
    inp = grpcclient.InferInput("pixels", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    expect(grpc.StatusCode.NOT_FOUND, lambda: client.infer("nope", [inp]), "unknown model",
           "unknown model 'nope'")
    expect(grpc.StatusCode.NOT_FOUND, lambda: client.infer("digits", [inp], model_version="7"),
           "unknown version", "unknown model 'digits' version '7'")
    expect(grpc.StatusCode.NOT_FOUND, lambda: client.get_model_metadata("nope"), "metadata of an unknown model")
    expect(grpc.StatusCode.UNAVAILABLE, lambda: client.infer("broken", [inp]), "model that failed to load",
           "model 'broken' is unavailable")
    check(not client.is_model_ready("broken"), "broken model not ready")
    # More than tonic's 4 MiB default is read (and refused by validation, not by size); more
    # than --max-body-bytes (8 MiB here) is RESOURCE_EXHAUSTED.
    big = np.zeros((1, 5 << 18), dtype=np.float32)  # 5 MiB
    inp = grpcclient.InferInput("pixels", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer("digits", [inp]), "5 MiB message read",
           "expected float32[1,64], got float32[1,1310720]")
    huge = np.zeros((1, 9 << 18), dtype=np.float32)  # 9 MiB
    inp = grpcclient.InferInput("pixels", list(huge.shape), "FP32")
    inp.set_data_from_numpy(huge)
    expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: client.infer("digits", [inp]), "9 MiB message refused")
    # Deadlines. The client's own, shorter than the run: DEADLINE_EXCEEDED, and the server is
    # fine after it (the execution worker was stopped at the deadline).
    started = time.monotonic()
    expect(grpc.StatusCode.DEADLINE_EXCEEDED, lambda: client.infer("spin", spin(300_000_000), client_timeout=0.3),
           "client deadline shorter than the run")
    check(time.monotonic() - started < 2.0, "client deadline answered at the deadline")
    r = client.infer("spin", spin(10))
    check(len(r.get_response().outputs) == 1, "spin answers after a deadline")
    # The model's own timeout (config.toml timeout_ms = 400): the server's DEADLINE_EXCEEDED.
    expect(grpc.StatusCode.DEADLINE_EXCEEDED, lambda: client.infer("spin_short", spin(300_000_000)),
           "model timeout", "deadline of 400 ms passed while model 'spin_short' was running")
    # Queue full: spin_one has one worker and no queue.
    errs = []

    def hold():
        c = grpcclient.InferenceServerClient(url=URL)
        try:
            c.infer("spin_one", spin(100_000_000))
        except InferenceServerException as e:
            errs.append(e)

    th = threading.Thread(target=hold)
    th.start()
    time.sleep(0.3)
    expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: client.infer("spin_one", spin(10)),
           "queue full", "model 'spin_one' is busy")
    th.join()
    check(not errs, f"the request holding the worker succeeded {errs}")
    # Unsupported RPCs.
    expect(grpc.StatusCode.UNIMPLEMENTED, lambda: client.get_system_shared_memory_status(), "system shared memory")
    expect(grpc.StatusCode.UNIMPLEMENTED, lambda: client.get_cuda_shared_memory_status(), "CUDA shared memory")
    expect(grpc.StatusCode.UNIMPLEMENTED, lambda: client.get_trace_settings(), "trace settings")
    # Health.
    check(health(channel, "") == "SERVING", "health: server SERVING")
    check(health(channel, "inference.GRPCInferenceService") == "SERVING", "health: service SERVING")
    try:
        health(channel, "nope")
        check(False, "health of an unknown service")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"health of an unknown service: {e.code()}")


def repository(client, fixtures: Path) -> None:
    idx = client.get_model_repository_index(as_json=True)["models"]
    by = {m["name"]: m for m in idx}
    check(by["digits"]["state"] == "READY" and by["digits"]["version"] == "1", "index: digits READY")
    d = fixtures / "digits"
    x = np.load(d / "in0.npy")
    logits = np.load(golden_file(d, "out1.npy"))
    inp = grpcclient.InferInput("pixels", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    before = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    n = 3
    for _ in range(n):
        client.infer("digits", [inp])
    st = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    s, b = st["inference_stats"], before["inference_stats"]
    got = int(s["success"].get("count", 0)) - int(b["success"].get("count", 0))
    check(got == n, f"stats: {n} more successes (got {got})")
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        check(int(s[phase].get("count", 0)) >= n and int(s[phase].get("ns", 0)) > 0, f"stats: {phase} counted with time")
    check(int(st["last_inference"]) > 0, "stats: last_inference set")
    cfg = client.get_model_config("batch_mlp", as_json=True)["config"]
    check(cfg["name"] == "batch_mlp" and int(cfg["max_batch_size"]) == 8
          and cfg["input"][0]["data_type"] == "TYPE_FP32" and [int(v) for v in cfg["input"][0]["dims"]] == [16]
          and [int(v) for v in cfg["dynamic_batching"]["preferred_batch_size"]] == [1, 2, 4, 8],
          f"config: batch_mlp max_batch_size 8, dims [16], dynamic batching {cfg}")
    cfg = client.get_model_config("digits", as_json=True)["config"]
    check(int(cfg.get("max_batch_size", 0)) == 0 and [int(v) for v in cfg["input"][0]["dims"]] == [1, 64]
          and cfg["platform"] == "jax_export", "config: digits whole shape, no batching")
    client.unload_model("digits")
    check(not client.is_model_ready("digits"), "unloaded: digits not ready")
    idx = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    check(idx["digits"]["state"] == "UNAVAILABLE" and idx["digits"]["reason"] == "unloaded", "index: digits UNAVAILABLE, unloaded")
    expect(grpc.StatusCode.UNAVAILABLE, lambda: client.infer("digits", [inp]), "infer on an unloaded model", "is unloaded")
    client.load_model("digits")
    check(client.is_model_ready("digits"), "loaded again: digits ready")
    r = client.infer("digits", [inp])
    check(same(r.as_numpy("logits"), logits), "loaded again: digits logits == JAX")
    expect(grpc.StatusCode.NOT_FOUND, lambda: client.load_model("nope"), "load of an unknown model")


URL = ""


def main() -> None:
    global URL
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--fixtures", required=True, type=Path)
    ap.add_argument("--models", nargs="*", default=[], help="models with in*.npy/out*.npy to check")
    ap.add_argument("--errors", action="store_true")
    ap.add_argument("--repository", action="store_true")
    args = ap.parse_args()
    URL = args.url
    client = grpcclient.InferenceServerClient(url=args.url)
    channel = grpc.insecure_channel(args.url, options=[("grpc.max_send_message_length", 64 << 20),
                                                       ("grpc.max_receive_message_length", 64 << 20)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    meta = client.get_server_metadata(as_json=True)
    check(meta["name"] == "xlaguard" and "model_repository" in meta["extensions"], "server metadata")
    for model in args.models:
        check(client.is_model_ready(model), f"{model} ready")
        golden(client, stub, model, args.fixtures / model)
    if args.errors:
        errors(client, stub, channel, args.fixtures)
    if args.repository:
        repository(client, args.fixtures)
    client.close()
    print(f"OK {checks} checks")


if __name__ == "__main__":
    main()
