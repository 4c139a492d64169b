#!/usr/bin/env python3
"""Good clients beside a slow-client swarm (issue 13): throughput of 8 keep-alive clients
posting the digits request, alone and then beside hundreds of drip connections, in one run.

The swarm comes from other loopback addresses (127.0.0.2 and up; Linux routes all of
127.0.0.0/8 to lo) so the per-client connection cap applies to it as to a real crowd: a third of
its sockets trickle headers, a third declare a body and trickle it at 1 byte/s, a third
reconnect every few seconds after sending half a header. The swarm runs in its own process
(one thread), and runs alternate with and without it. Prints requests per second of each
round, the median ratio, and every non-200 answer the good clients got.

  cargo build --release && python3 scripts/swarm_bench.py [--seconds 10] [--swarm 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_server(binary: Path) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen(
        [str(binary), "--plugin", str(ROOT / "third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"),
         "serve", "--addr", "127.0.0.1:0", "--header-timeout-ms", "10000",
         "--body-timeout-ms", "30000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    port = int(line.rsplit(":", 1)[1])
    threading.Thread(target=lambda: p.stdout.read(), daemon=True).start()
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return p, port
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready")


def good_clients(port: int, seconds: float, n: int = 8) -> tuple[int, dict[int, int]]:
    body = (ROOT / "examples/digits_request.json").read_bytes()
    done = [0] * n
    errors: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            try:
                c.request("POST", "/v2/models/digits/infer", body,
                          {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    done[i] += 1
                else:
                    with lock:
                        errors[r.status] = errors.get(r.status, 0) + 1
                if r.getheader("connection") == "close":
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            except OSError as e:
                with lock:
                    errors[-1] = errors.get(-1, 0) + 1
                print("good client error:", e, file=sys.stderr)
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done), errors


def swarm_loop(port: int, n: int) -> None:
    """n drip sockets from 127.0.0.2.. (kind by index: slow header, slow body, reconnecting),
    driven by one thread of a separate process, so the swarm neither takes the good clients'
    interpreter lock nor costs more than a few hundred system calls a second."""
    head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nX-Pad: "
    body_head = (b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    socks: list[socket.socket | None] = [None] * n
    sent = [0] * n
    born = [0.0] * n

    def connect(i: int) -> None:
        s = socket.socket()
        try:
            s.bind((f"127.0.0.{2 + i % 250}", 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            kind = i % 3
            if kind == 1:
                s.send(body_head)
            elif kind == 2:
                s.send(head[:20])
            socks[i], sent[i], born[i] = s, 0, time.monotonic()
        except OSError:
            s.close()
            socks[i] = None

    while True:
        tick = time.monotonic()
        for i in range(n):
            s = socks[i]
            if s is None:
                connect(i)
                continue
            kind = i % 3
            try:
                if kind == 2:
                    if tick - born[i] >= 3:
                        s.close()
                        connect(i)
                    continue
                j = sent[i]
                s.send(b"a" if kind == 1 else head[j % len(head):j % len(head) + 1])
                sent[i] += 1
            except OSError:
                s.close()
                socks[i] = None
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


def start_swarm(port: int, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--swarm-only", str(port), str(n)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--swarm", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alone/beside pairs, interleaved; the ratio is their median")
    ap.add_argument("--binary", default=str(ROOT / "target/release/xlaguard"))
    ap.add_argument("--swarm-only", nargs=2, type=int, metavar=("PORT", "N"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.swarm_only:
        swarm_loop(*a.swarm_only)
        return
    p, port = start_server(Path(a.binary))
    try:
        good_clients(port, 2)  # warm up
        rounds = []
        e_alone: dict[int, int] = {}
        e_beside: dict[int, int] = {}
        for _ in range(a.rounds):
            alone, e = good_clients(port, a.seconds)
            for k, v in e.items():
                e_alone[k] = e_alone.get(k, 0) + v
            sw = start_swarm(port, a.swarm)
            time.sleep(3)
            beside, e = good_clients(port, a.seconds)
            for k, v in e.items():
                e_beside[k] = e_beside.get(k, 0) + v
            sw.kill()
            sw.wait()
            time.sleep(1)
            rounds.append((alone / a.seconds, beside / a.seconds))
        ratios = sorted(b / max(al, 1e-9) for al, b in rounds)
        print(json.dumps({
            "good_clients": 8, "swarm": a.swarm, "seconds": a.seconds,
            "rounds": [{"alone_rps": round(al, 1), "beside_swarm_rps": round(b, 1),
                        "ratio": round(b / max(al, 1e-9), 3)} for al, b in rounds],
            "median_ratio": round(ratios[len(ratios) // 2], 3),
            "errors_alone": e_alone, "errors_beside_swarm": e_beside,
        }, indent=2))
    finally:
        p.terminate()
        p.wait(10)


if __name__ == "__main__":
    main()
