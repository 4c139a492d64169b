#!/usr/bin/env python3
"""Dynamic batching on vs off, measured with Triton's perf_analyzer (docs/serving.md).

    scripts/fetch-perf-analyzer.sh                          # once
    venv312/bin/python hlo/export_batching.py --bench /tmp/bench-repo
    cargo build --release
    python3 scripts/bench_batching.py /tmp/bench-repo [--models bert,mobilenet,digits]
                                     [--concurrency 1,4,16,64] [--interval-ms 4000]

Serves the repository with target/release/xlaguard, then for each model runs perf_analyzer
against `<model>_plain` (the export, [shapes] precompiled, no batching), `<model>_batched`
([batching], default workers) and `<model>_batched1` ([batching], workers = 1) at each
concurrency, one after the other, and prints a Markdown table with throughput, p50/p99 latency
and the ratios to plain measured in the same run.
Needs only the Python standard library.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_ready(base: str, timeout: float = 900) -> None:
    start = time.time()
    while time.time() - start < timeout:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise SystemExit("server not ready in time")


def perf(pa: str, url: str, model: str, conc: int, interval_ms: int, shapes: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = [pa, "-m", model, "-u", url, "-i", "http", "--concurrency-range", f"{conc}:{conc}",
               "--measurement-interval", str(interval_ms), "--input-data", "zero",
               "--stability-percentage", "50", "--max-trials", "10",
               "-f", f.name] + [a for s in shapes for a in ("--shape", s)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
        rows = list(csv.DictReader(io.StringIO(Path(f.name).read_text())))
    row = rows[0]
    return {
        "cmd": " ".join(c for i, c in enumerate(cmd)
                        if c != "-f" and not (i > 0 and cmd[i - 1] == "-f")),
        "tput": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]) / 1e3,
        "p99": float(row["p99 latency"]) / 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("--models", default="bert,mobilenet,digits")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--interval-ms", type=int, default=4000)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--perf-analyzer", default=str(ROOT / "third_party/perf-analyzer/perf_analyzer"))
    ap.add_argument("--xlaguard", default=str(ROOT / "target/release/xlaguard"))
    args = ap.parse_args()
    addr = f"127.0.0.1:{args.port}"
    base = f"http://{addr}"
    log = open(Path(tempfile.gettempdir()) / "bench-batching-server.log", "w")
    server = subprocess.Popen([args.xlaguard, "serve", "--models", args.repo, "--addr", addr,
                               "--max-queue", "256"], stdout=log, stderr=log,
                              env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_ready(base)
        print("| model | concurrency | server | inf/s | × plain | p50 ms | p99 ms | p99 / plain |")
        print("|---|---|---|---|---|---|---|---|")
        cmds = []
        for m in args.models.split(","):
            variants = [v for v in ("batched", "batched1")
                        if (Path(args.repo) / f"{m}_{v}").is_dir()]
            for v in variants:
                cfg = get(f"{base}/v2/models/{m}_{v}/config")
                assert cfg["xlaguard"]["batching"]["state"] == "on", cfg
            meta = get(f"{base}/v2/models/{m}_plain")
            shapes = [f"{i['name']}:{','.join(str(1 if d == -1 else d) for d in i['shape'])}"
                      for i in meta["inputs"]]
            for c in (int(x) for x in args.concurrency.split(",")):
                p = perf(args.perf_analyzer, addr, f"{m}_plain", c, args.interval_ms, shapes)
                cmds.append(p["cmd"])
                print(f"| {m} | {c} | plain | {p['tput']:.1f} | 1 | {p['p50']:.2f} | {p['p99']:.2f} | 1 |",
                      flush=True)
                for v in variants:
                    b = perf(args.perf_analyzer, addr, f"{m}_{v}", c, args.interval_ms, [])
                    cmds.append(b["cmd"])
                    print(f"| {m} | {c} | {v} | {b['tput']:.1f} | {b['tput'] / p['tput']:.2f} "
                          f"| {b['p50']:.2f} | {b['p99']:.2f} | {b['p99'] / p['p99']:.2f} |", flush=True)
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        print("\nbatch metrics at the end:")
        for line in metrics.splitlines():
            if line.startswith(("xlaguard_batch_padding_ratio", "xlaguard_batch_size_count",
                                "xlaguard_batch_size_sum", "xlaguard_batch_rows_total")):
                print("  " + line)
        print("\ncommands (one per cell):")
        for c in dict.fromkeys(cmds):
            print("  " + c)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
