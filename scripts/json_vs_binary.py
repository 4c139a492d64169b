#!/usr/bin/env python3
"""JSON vs binary tensors for one model, from the server's own view (issue 19): sends N
requests of each kind with tritonclient (alternating, 3 rounds), reads the server's Triton
statistics (`GET /v2/models/{m}/stats`) before and after each batch of N, and prints the
server's time per request (compute_input = body decode and checks, compute_infer, compute_output)
and the throughput ratio binary/json those times give. The client's own JSON encoding (slow in
Python) is outside what is measured.

    venv312/bin/python hlo/export_batching.py --bench /tmp/bench-repo     # MobileNetV3Small 224
    mkdir -p /tmp/mn-repo/mobilenet && cp /tmp/bench-repo/mobilenet_plain/model.jaxexport /tmp/mn-repo/mobilenet/
    printf '[shapes]\\nb = [1]\\n' > /tmp/mn-repo/mobilenet/config.toml
    target/release/xlaguard serve --models /tmp/mn-repo --addr 127.0.0.1:8125 &
    venv-test/bin/python scripts/json_vs_binary.py 127.0.0.1:8125 mobilenet 20

Inputs are random float32 of the model's first input shape (symbolic dimensions as 1).
"""
import json, sys, time, urllib.request
import numpy as np
import tritonclient.http as http

url, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = http.InferenceServerClient(url)
meta = c.get_model_metadata(model)
inp = meta["inputs"][0]
shape = [1 if d == -1 else d for d in inp["shape"]]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

def stats():
    s = json.loads(urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats").read())
    st = s["model_stats"][0]["inference_stats"]
    return {k: (st[k]["count"], st[k]["ns"]) for k in ("compute_input", "compute_infer", "compute_output", "success")}

def run(binary):
    i = http.InferInput(inp["name"], list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    o = http.InferRequestedOutput(meta["outputs"][0]["name"], binary_data=binary)
    before = stats()
    t = time.perf_counter()
    for _ in range(n):
        c.infer(model, [i], outputs=[o])
    wall = (time.perf_counter() - t) / n
    after = stats()
    per = {k: (after[k][1] - before[k][1]) / max(1, after[k][0] - before[k][0]) / 1e6 for k in after}
    return per, wall * 1e3

res = {"json": [], "binary": []}
for r in range(3):
    for kind in ("binary", "json"):
        res[kind].append(run(kind == "binary"))
for kind, rows in res.items():
    for per, wall in rows:
        print(kind, {k: round(v, 3) for k, v in per.items()}, "client wall ms", round(wall, 2))
b = sorted(p["success"] for p, _ in res["binary"])[1]
j = sorted(p["success"] for p, _ in res["json"])[1]
print(f"server ms per request (median of 3): binary {b:.2f}, json {j:.2f}: binary/json throughput ratio {b/j:.3f}")
# The client takes ~80 ms to write a MobileNet JSON body, so JSON requests reach an idle worker
# whose execution runs slower (colder threads and caches) than back-to-back binary ones. The
# second ratio charges JSON only what it costs outside the execution (decode, body, encode).
def outside(kind):
    return sorted(p["success"] - p["compute_infer"] for p, _ in res[kind])[1]
extra = outside("json") - outside("binary")
print(f"outside the execution (median): binary {outside('binary'):.2f} ms, json "
      f"{outside('json'):.2f} ms: at binary's execution time, ratio {b / (b + extra):.3f}")
