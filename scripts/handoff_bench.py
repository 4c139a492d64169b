#!/usr/bin/env python3
"""Per-request hand-off benchmark: `xlaguard serve` on digits with the request's synchronous
part run inline on the async worker (`--inline-execution-us N`) or always handed to the blocking
pool (`--inline-execution-us 0`), in both execution modes, in one run.

The server is pinned to one CPU and the load generator (`examples/loadgen.rs`, closed loop,
keep-alive) to another. For each cell it prints req/s, the server's CPU per request (user +
system of the server and of its execution workers, from /proc), context switches per request
(voluntary + involuntary, every thread of those processes) and the latency percentiles, then
the ratio of inline to pool for each pair. Configurations alternate round by round, so the
machine's noise falls on both sides.

    cargo build --release --bin xlaguard --example loadgen
    python3 scripts/handoff_bench.py --clients 1,16 --secs 5 --rounds 2

Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def tree(pid):
    """The pid and every descendant (execution workers are the server's children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def usage(pid):
    """(CPU seconds, context switches) of the process tree, all threads."""
    cpu, switches = 0.0, 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                            switches += int(line.split()[1])
        except OSError:
            pass
    return cpu, switches


def start(binary, execution, inline_us, cpu):
    cmd = ["taskset", "-c", cpu, binary, "--execution", execution, "serve",
           "--addr", "127.0.0.1:0", "--no-grpc", "--inline-execution-us", str(inline_us)]
    if execution == "in-process":
        cmd.append("--inline-in-process")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if "serving on http://" not in line:
        p.kill()
        sys.exit(f"server did not start: {line!r}")
    addr = line.split("http://", 1)[1].strip()
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/health/ready") as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    return p, addr


def check(addr, body):
    req = urllib.request.Request(f"http://{addr}/v2/models/digits/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        out = json.load(r)
    label = next(o for o in out["outputs"] if o["name"] == "label")["data"]
    if label != [2]:
        sys.exit(f"wrong answer from {addr}: {out}")


def cell(args, execution, inline_us, clients, body_path):
    p, addr = start(args.bin, execution, inline_us, args.server_cpu)
    try:
        body = open(body_path, "rb").read()
        check(addr, body)
        # Warm-up (also lets the model's cost estimate settle), then the measured interval.
        load = ["taskset", "-c", args.client_cpu, args.loadgen, "--addr", addr,
                "--body", body_path, "--clients", str(clients), "--secs", str(args.secs),
                "--warmup", str(args.warmup)]
        lg = subprocess.Popen(load, stdout=subprocess.PIPE, text=True)
        time.sleep(args.warmup)
        c0, s0 = usage(p.pid)
        out, _ = lg.communicate()
        c1, s1 = usage(p.pid)
        r = json.loads(out)
        n = r["requests"]
        if r["errors"]:
            sys.exit(f"{r['errors']} errors: {r}")
        return {
            "rps": r["rps"],
            "cpu_us": (c1 - c0) / max(n, 1) * 1e6,
            "switches": (s1 - s0) / max(n, 1),
            "p50_us": r["p50_us"],
            "p99_us": r["p99_us"],
        }
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/xlaguard"))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/examples/loadgen"))
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--execution", default="in-process,process")
    ap.add_argument("--inline-us", type=int, default=50)
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--client-cpu", default="1")
    a = ap.parse_args()
    body = os.path.join(ROOT, "examples/digits_request.json")
    clients = [int(c) for c in a.clients.split(",")]
    modes = a.execution.split(",")
    results = {}
    for rnd in range(a.rounds):
        for mode in modes:
            for c in clients:
                for inline in (0, a.inline_us):
                    r = cell(a, mode, inline, c, body)
                    results.setdefault((mode, c, inline), []).append(r)
                    print(f"round {rnd + 1} {mode:10} clients {c:2} inline-us {inline:3}: "
                          f"{r['rps']:8.0f} req/s  {r['cpu_us']:6.1f} µs CPU/req  "
                          f"{r['switches']:5.2f} switches/req  p50 {r['p50_us']:6.0f} µs  "
                          f"p99 {r['p99_us']:6.0f} µs", flush=True)
    print()
    print("| execution | clients | inline-us | req/s | CPU µs/req | switches/req | p50 µs | p99 µs "
          "| req/s inline/pool | CPU inline/pool |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for c in clients:
            med = {}
            for inline in (0, a.inline_us):
                rs = results[(mode, c, inline)]
                med[inline] = {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in rs[0]}
            for inline in (0, a.inline_us):
                m = med[inline]
                ratio = ""
                if inline:
                    ratio = (f"{m['rps'] / med[0]['rps']:.2f} | "
                             f"{m['cpu_us'] / med[0]['cpu_us']:.2f}")
                else:
                    ratio = "1 | 1"
                print(f"| {mode} | {c} | {inline} | {m['rps']:.0f} | {m['cpu_us']:.1f} | "
                      f"{m['switches']:.2f} | {m['p50_us']:.0f} | {m['p99_us']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
