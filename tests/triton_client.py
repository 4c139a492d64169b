#!/usr/bin/env python3
"""The official KServe v2 client, tritonclient[http], against a running `xlaguard serve`.

    venv-test/bin/python tests/triton_client.py --url 127.0.0.1:PORT --fixtures hlo

The server must serve `digits` and `dtypes` (hlo/<name>/model.jaxexport). Every answer is
compared with JAX's own outputs (hlo/<name>/out*.npy), bit for bit. Exits non-zero on the first
mismatch; prints one line per check and a final `OK <n> checks`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goldens import golden as golden_file  # noqa: E402

import ml_dtypes
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

checks = 0


def check(cond: bool, what: str) -> None:
    global checks
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal arrays of the same dtype and shape (NaN equals NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.tobytes() == b.tobytes()


def load(path: Path, dtype: str) -> np.ndarray:
    a = np.load(path, allow_pickle=False)
    if dtype == "BF16":
        a = a.view(ml_dtypes.bfloat16)  # numpy + ml_dtypes store bf16 as '<V2'
    return a


def infer_both_ways(client, model: str, meta: dict, d: Path, label: str) -> None:
    """The folder's in*.npy as the model's inputs, JSON then binary; every output == out*.npy."""
    ins = [np.load(d / f"in{i}.npy") for i in range(len(meta["inputs"]))]
    want = [np.load(golden_file(d, f"out{i}.npy")) for i in range(len(meta["outputs"]))]
    for binary in (False, True):
        inputs = []
        for m, a in zip(meta["inputs"], ins):
            i = httpclient.InferInput(m["name"], list(a.shape), m["datatype"])
            i.set_data_from_numpy(a, binary_data=binary)
            inputs.append(i)
        outs = [httpclient.InferRequestedOutput(m["name"], binary_data=binary) for m in meta["outputs"]]
        r = client.infer(model, inputs, outputs=outs)
        for m, w in zip(meta["outputs"], want):
            check(same(r.as_numpy(m["name"]), w),
                  f"{label} {m['name']} {'binary' if binary else 'JSON'} == JAX")


def poly(client, fixtures: Path, models: list[str]) -> None:
    """Shape-polymorphic models: every size of each fixture (hlo/<m>/sizes/<tag>/), JSON and
    binary, equal to JAX's outputs; -1 in the metadata; a violated constraint is a 400."""
    for model in models:
        meta = client.get_model_metadata(model)
        check(any(-1 in i["shape"] for i in meta["inputs"]), f"{model} metadata has -1")
        fmeta = json.loads((fixtures / model / "meta.json").read_text())
        for size in fmeta["sizes"]:
            d = fixtures / model / "sizes" / size["tag"]
            infer_both_ways(client, model, meta, d, f"{model} {size['tag']}")
        v = fmeta.get("violation")
        if v:
            d = fixtures / model / v["dir"]
            inputs = []
            for i, m in enumerate(meta["inputs"]):
                a = np.load(d / f"in{i}.npy")
                x = httpclient.InferInput(m["name"], list(a.shape), m["datatype"])
                x.set_data_from_numpy(a)
                inputs.append(x)
            try:
                client.infer(model, inputs)
                check(False, f"{model} constraint violation refused")
            except InferenceServerException as e:
                check(e.status() == "400" and v["error"] in e.message(),
                      f"{model} constraint violation refused with JAX's message")


def plain(client, fixtures: Path, models: list[str]) -> None:
    """Models whose folder has in*.npy and out*.npy for the inputs the server asks for (e.g.
    weights bound server-side: only `x`), JSON and binary, equal to JAX's outputs."""
    for model in models:
        meta = client.get_model_metadata(model)
        infer_both_ways(client, model, meta, fixtures / model, model)


def batched(url: str, fixtures: Path, models: list[str]) -> None:
    """Batching models (MODEL=FIXTURE, config.toml [batching]): the model configuration as
    Triton's client reads it, then 16 clients at once, each sending one row (binary and JSON
    alternately) of hlo/<FIXTURE>/rows/in0.npy: each gets JAX's row of every output."""
    import threading

    for pair in models:
        model, fixture = pair.split("=")
        client = httpclient.InferenceServerClient(url=url)
        cfg = client.get_model_config(model)
        check(cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [16]
              and cfg["input"][0]["data_type"] == "TYPE_FP32"
              and cfg["dynamic_batching"]["preferred_batch_size"] == [1, 2, 4, 8],
              f"{model} model config: max_batch_size 8, dims [16]")
        meta = client.get_model_metadata(model)
        check(meta["inputs"][0]["shape"] == [-1, 16], f"{model} metadata: batch dimension -1")
        client.close()
        d = fixtures / fixture / "rows"
        x = np.load(d / "in0.npy")
        want = [np.load(golden_file(d, f"out{k}.npy")) for k in range(len(meta["outputs"]))]
        results: dict[int, list] = {}
        barrier = threading.Barrier(len(x))

        def one(i: int) -> None:
            c = httpclient.InferenceServerClient(url=url)
            binary = i % 2 == 0
            inp = httpclient.InferInput(meta["inputs"][0]["name"], [1, 16], "FP32")
            inp.set_data_from_numpy(x[i:i + 1], binary_data=binary)
            outs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]]
            barrier.wait()
            r = c.infer(model, [inp], outputs=outs)
            results[i] = [r.as_numpy(o["name"]) for o in meta["outputs"]]
            c.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(x))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(len(results) == len(x), f"{model}: {len(x)} concurrent answers")
        check(all(same(results[i][k], w[i:i + 1]) for i in range(len(x)) for k, w in enumerate(want)),
              f"{model}: {len(x)} concurrent one-row requests == JAX's rows")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--fixtures", required=True, type=Path)
    ap.add_argument("--poly", nargs="*", help="only check these shape-polymorphic models")
    ap.add_argument("--plain", nargs="*", help="only check these models (in*.npy -> out*.npy)")
    ap.add_argument("--batched", nargs="*", help="only check these batching models (MODEL=FIXTURE)")
    args = ap.parse_args()
    if args.batched:
        batched(args.url, args.fixtures, args.batched)
        print(f"OK {checks} checks")
        return
    client = httpclient.InferenceServerClient(url=args.url)
    if args.poly or args.plain:
        poly(client, args.fixtures, args.poly or [])
        plain(client, args.fixtures, args.plain or [])
        client.close()
        print(f"OK {checks} checks")
        return

    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.is_model_ready("digits"), "digits ready")
    check(not client.is_model_ready("nope"), "unknown model not ready")
    meta = client.get_server_metadata()
    check(meta["name"] == "xlaguard" and "binary_tensor_data" in meta["extensions"], "server metadata")
    meta = client.get_model_metadata("digits")
    check(
        meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [1, 64]}]
        and [o["name"] for o in meta["outputs"]] == ["label", "logits"]
        and meta["versions"] == ["1"],
        "digits metadata",
    )

    d = args.fixtures / "digits"
    x = np.load(d / "in0.npy")
    label, logits = np.load(golden_file(d, "out0.npy")), np.load(golden_file(d, "out1.npy"))

    # JSON in, JSON out.
    inp = httpclient.InferInput("pixels", [1, 64], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [
        httpclient.InferRequestedOutput("label", binary_data=False),
        httpclient.InferRequestedOutput("logits", binary_data=False),
    ]
    r = client.infer("digits", [inp], outputs=outs, request_id="json-1")
    check(r.get_response()["id"] == "json-1", "request id echoed")
    check(same(r.as_numpy("label"), label), "digits JSON label == JAX")
    check(same(r.as_numpy("logits"), logits), "digits JSON logits == JAX")

    # Binary in, binary out (the client's defaults), by version.
    inp = httpclient.InferInput("pixels", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("digits", [inp], model_version="1")
    check(same(r.as_numpy("label"), label), "digits binary label == JAX")
    check(same(r.as_numpy("logits"), logits), "digits binary logits == JAX")

    # Only one output.
    r = client.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput("logits")])
    check(r.as_numpy("label") is None and same(r.as_numpy("logits"), logits), "outputs subset")

    # A batch of the first 32 test images, one request each: the labels JAX's model predicts.
    batch = np.load(d / "batch.npy")
    want = np.load(d / "batch_labels.npy")
    got = []
    for row in batch:
        inp = httpclient.InferInput("pixels", [1, 64], "FP32")
        inp.set_data_from_numpy(row.reshape(1, 64))
        got.append(int(client.infer("digits", [inp]).as_numpy("label")[0]))
    check(np.mean(np.array(got) == want) >= 0.9, f"batch accuracy {np.mean(np.array(got) == want):.3f}")

    # Every datatype: dtypes model, JSON where the client allows it (not BF16), then binary.
    d = args.fixtures / "dtypes"
    meta = client.get_model_metadata("dtypes")
    ins = [load(d / f"in{i}.npy", m["datatype"]) for i, m in enumerate(meta["inputs"])]
    want = [load(golden_file(d, f"out{i}.npy"), m["datatype"]) for i, m in enumerate(meta["outputs"])]
    for binary in (False, True):
        inputs = []
        for m, a in zip(meta["inputs"], ins):
            i = httpclient.InferInput(m["name"], list(a.shape), m["datatype"])
            i.set_data_from_numpy(a, binary_data=binary or m["datatype"] == "BF16")
            inputs.append(i)
        outs = [httpclient.InferRequestedOutput(m["name"], binary_data=binary) for m in meta["outputs"]]
        r = client.infer("dtypes", inputs, outputs=outs)
        for m, w in zip(meta["outputs"], want):
            check(same(r.as_numpy(m["name"]), w), f"dtypes {m['datatype']} {'binary' if binary else 'JSON'} == JAX")

    # Errors come back as InferenceServerException with the status and the server's message.
    inp = httpclient.InferInput("pixels", [1, 63], "FP32")
    inp.set_data_from_numpy(x[:, :63])
    try:
        client.infer("digits", [inp])
        check(False, "wrong shape refused")
    except InferenceServerException as e:
        check(
            e.status() == "400" and "expected float32[1,64], got float32[1,63]" in e.message(),
            f"wrong shape refused: {e.status()} {e.message()}",
        )
    inp = httpclient.InferInput("pixels", [1, 64], "FP64")
    inp.set_data_from_numpy(x.astype(np.float64))
    try:
        client.infer("digits", [inp])
        check(False, "wrong datatype refused")
    except InferenceServerException as e:
        check(e.status() == "400" and "got float64[1,64]" in e.message(), f"wrong datatype refused: {e.message()}")
    try:
        client.infer("nope", [inp])
        check(False, "unknown model refused")
    except InferenceServerException as e:
        check(e.status() == "404", f"unknown model refused: {e.status()} {e.message()}")
    # And the next request still works.
    inp = httpclient.InferInput("pixels", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    check(same(client.infer("digits", [inp]).as_numpy("logits"), logits), "good request after errors")

    client.close()
    print(json.dumps({"checks": checks}))
    print(f"OK {checks} checks")


if __name__ == "__main__":
    main()
