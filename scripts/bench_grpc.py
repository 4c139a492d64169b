#!/usr/bin/env python3
"""HTTP (binary tensors) vs gRPC, measured with Triton's perf_analyzer on one xlaguard server
(docs/serving.md).

    scripts/fetch-perf-analyzer.sh                          # once
    cargo build --release --bin xlaguard
    python3 scripts/bench_grpc.py [--model-dir hlo/digits] [--concurrency 1,4,16,64]
                                  [--interval-ms 3000] [--rounds 2]

Serves the model folder (the single-model layout, as KServe's runtime does) with
target/release/xlaguard, both frontends in one process, then for each concurrency runs
perf_analyzer against the HTTP frontend (`-i http`: binary tensor data, what perf_analyzer
sends) and the gRPC frontend (`-i grpc`: raw_input_contents), the two alternating and their
order swapped each round so that the machine's drift falls on both. Prints a Markdown table of
throughput and p50/p99 latency per cell (the median over rounds) with gRPC / HTTP ratios
measured in the same run, then the perf_analyzer commands. Needs only the Python standard
library.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, timeout: float = 600) -> None:
    start = time.time()
    while time.time() - start < timeout:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready in time")


def perf(pa: str, protocol: str, url: str, model: str, conc: int, interval_ms: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = [pa, "-m", model, "-u", url, "-i", protocol, "--concurrency-range", f"{conc}:{conc}",
               "--measurement-interval", str(interval_ms), "--input-data", "zero",
               "--stability-percentage", "50", "--max-trials", "10", "-f", f.name]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
        row = next(csv.DictReader(io.StringIO(Path(f.name).read_text())))
    return {
        "cmd": " ".join(cmd[:-2]),
        "tput": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]) / 1e3,
        "p99": float(row["p99 latency"]) / 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=str(ROOT / "hlo/digits"))
    ap.add_argument("--model-name", default="digits")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--interval-ms", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--perf-analyzer", default=str(ROOT / "third_party/perf-analyzer/perf_analyzer"))
    ap.add_argument("--xlaguard", default=str(ROOT / "target/release/xlaguard"))
    args = ap.parse_args()
    http = f"127.0.0.1:{free_port()}"
    grpc = f"127.0.0.1:{free_port()}"
    log = open(Path(tempfile.gettempdir()) / "bench-grpc-server.log", "w")
    server = subprocess.Popen(
        [args.xlaguard, "serve", "--models", args.model_dir, "--model-name", args.model_name,
         "--addr", http, "--grpc-addr", grpc, "--max-queue", "256"],
        stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_ready(f"http://{http}")
        cfg = json.loads(urllib.request.urlopen(
            f"http://{http}/v2/models/{args.model_name}/config", timeout=10).read())
        print(f"model {args.model_name}: {json.dumps(cfg['input'])} -> {json.dumps(cfg['output'])}")
        print(f"load average at start: {os.getloadavg()[0]:.1f}, CPUs: {os.cpu_count()}\n")
        results: dict = {}
        cmds = []
        concs = [int(x) for x in args.concurrency.split(",")]
        for r in range(args.rounds):
            for c in concs:
                order = [("http", http), ("grpc", grpc)]
                if (r + concs.index(c)) % 2:
                    order.reverse()
                for proto, url in order:
                    p = perf(args.perf_analyzer, proto, url, args.model_name, c, args.interval_ms)
                    cmds.append(p["cmd"])
                    results.setdefault((c, proto), []).append(p)
        print("| concurrency | frontend | inf/s | p50 ms | p99 ms | gRPC / HTTP inf/s | gRPC / HTTP p99 |")
        print("|---|---|---|---|---|---|---|")
        med = lambda c, p, k: statistics.median(x[k] for x in results[(c, p)])  # noqa: E731
        for c in concs:
            for proto in ("http", "grpc"):
                row = f"| {c} | {proto} | {med(c, proto, 'tput'):.1f} | {med(c, proto, 'p50'):.3f} | {med(c, proto, 'p99'):.3f} |"
                if proto == "grpc":
                    row += (f" {med(c, 'grpc', 'tput') / med(c, 'http', 'tput'):.2f} |"
                            f" {med(c, 'grpc', 'p99') / med(c, 'http', 'p99'):.2f} |")
                else:
                    row += " | |"
                print(row)
        print("\nper round (inf/s):")
        for (c, proto), v in sorted(results.items()):
            print(f"  {proto} c={c}: " + ", ".join(f"{x['tput']:.0f}" for x in v))
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
        print("\ncommands (one per cell):")
        for c in dict.fromkeys(cmds):
            print("  " + c)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
