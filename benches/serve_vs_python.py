#!/usr/bin/env python3
"""xlaguard serve against what a JAX user would otherwise write: a minimal Python HTTP server
around jax.jit of the same exported model. Same machine, same run, same load generator.

    cargo build --release --bin xlaguard --example loadgen
    /work/venv312/bin/python benches/serve_vs_python.py [--clients 1,8] [--secs 5]

The Python server (started by this script with `--python-server PORT`) is the standard library's
ThreadingHTTPServer on HTTP/1.1 keep-alive: it parses the same KServe v2 JSON request, runs
`jax.jit(exp.call)` on the deserialized hlo/digits/model.jaxexport, and answers the same JSON.
xlaguard runs `target/release/xlaguard serve` (the embedded digits model). The load generator is
`target/release/examples/loadgen`: N closed-loop keep-alive connections for a fixed time after a
warm-up. Both servers answer the same request (examples/digits_request.json) and the script checks
that both predict label 2 with the same logits before timing.

Prints one row per server and concurrency, then the throughput and p99 ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_server(port: int) -> None:
    """The baseline: what a JAX user writes to serve an exported model over HTTP."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jax
    import numpy as np
    from jax import export

    exp = export.deserialize(bytearray((ROOT / "hlo/digits/model.jaxexport").read_bytes()))
    f = jax.jit(exp.call)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Without this, headers and body go out in separate segments and Nagle + delayed ACK
        # add ~40 ms to every answer: give the baseline its best shot.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # noqa: N802
            try:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                inp = req["inputs"][0]
                x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
                out = f(x)
                outputs = []
                for name, dt in (("label", "INT32"), ("logits", "FP32")):
                    a = np.asarray(out[name])
                    outputs.append({"name": name, "datatype": dt, "shape": list(a.shape), "data": a.ravel().tolist()})
                body = json.dumps({"model_name": "digits", "model_version": "1", "outputs": outputs}).encode()
                self.send_response(200)
            except Exception as e:  # noqa: BLE001
                body = json.dumps({"error": str(e)}).encode()
                self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet
            pass

    ThreadingHTTPServer.daemon_threads = True
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    srv.serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, body: bytes, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while True:
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except Exception:  # noqa: BLE001
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bin", default=str(ROOT / "target/release/xlaguard"))
    ap.add_argument("--loadgen", default=str(ROOT / "target/release/examples/loadgen"))
    ap.add_argument("--plugin", default=str(ROOT / "third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"))
    ap.add_argument("--clients", default="1,8", help="comma-separated concurrency levels")
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    args = ap.parse_args()
    if args.python_server:
        python_server(args.python_server)
        return

    body_file = ROOT / "examples/digits_request.json"
    body = body_file.read_bytes()
    for p in (args.bin, args.loadgen):
        if not Path(p).is_file():
            sys.exit(f"missing {p}: cargo build --release --bin xlaguard --example loadgen")

    servers = {}
    procs = []
    try:
        port = free_port()
        procs.append(subprocess.Popen(
            [args.bin, "--plugin", args.plugin, "serve", "--addr", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"}))
        servers["xlaguard"] = (port, procs[-1])
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--python-server", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        servers["python+jax.jit"] = (port, procs[-1])

        answers = {}
        for name, (port, _) in servers.items():
            answers[name] = wait_for(f"http://127.0.0.1:{port}/v2/models/digits/infer", body)
        outs = {n: {o["name"]: o["data"] for o in a["outputs"]} for n, a in answers.items()}
        assert all(o["label"] == [2] for o in outs.values()), outs
        f32 = {n: struct.pack(f"<{len(o['logits'])}f", *o["logits"]) for n, o in outs.items()}
        assert f32["xlaguard"] == f32["python+jax.jit"], outs  # the same float32 logits

        print(f"# {cpu_model()}, {os.cpu_count()} CPUs; digits model, request {body_file.relative_to(ROOT)}; "
              f"{args.secs:g} s per run after {args.warmup:g} s warm-up; closed-loop keep-alive clients")
        print(f"{'server':<16} {'clients':>7} {'req/s':>9} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'errors':>6} {'RSS MiB':>8}")
        results = {}
        for clients in [int(c) for c in args.clients.split(",")]:
            for name, (port, proc) in servers.items():
                out = subprocess.run(
                    [args.loadgen, "--addr", f"127.0.0.1:{port}", "--path", "/v2/models/digits/infer",
                     "--body", str(body_file), "--clients", str(clients), "--secs", str(args.secs),
                     "--warmup", str(args.warmup)],
                    check=True, capture_output=True, text=True).stdout
                r = json.loads(out)
                results[(name, clients)] = r
                print(f"{name:<16} {clients:>7} {r['rps']:>9.0f} {r['p50_us']:>8} {r['p90_us']:>8} "
                      f"{r['p99_us']:>8} {r['errors']:>6} {rss_mib(proc.pid):>8.0f}", flush=True)
        print()
        for clients in [int(c) for c in args.clients.split(",")]:
            x, p = results[("xlaguard", clients)], results[("python+jax.jit", clients)]
            print(f"clients={clients}: throughput {x['rps'] / p['rps']:.1f}x, "
                  f"p99 {p['p99_us'] / max(x['p99_us'], 1):.1f}x lower "
                  f"(xlaguard {x['p99_us']} us vs {p['p99_us']} us)")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
