"""Garbage collections of a FastAPI service under load: bare, with any per-request
ContextVar, with loopwatch, and each with ``gc.freeze()`` after startup.

Found while chasing the gap in ``load.py``'s overhead part: under 64 concurrent
connections a FastAPI app that sets one ``contextvars.ContextVar`` per request (as
loopwatch's middleware does to attribute work to the route, and as request-id, tracing
and error-reporting middlewares do) runs CPython's cyclic garbage collector far more
often than the same app without it, including full (generation 2) collections that hold
the loop for tens of milliseconds each. A bare Starlette app and a raw ASGI app do not
show it. ``gc.freeze()`` after startup moves the app's long-lived objects out of the
collector's way, which makes those full collections cheap; a higher generation-0 threshold
(``gc.set_threshold(5000)``) stops the frequent collections altogether: the app's requests
in flight hold ~600-700 young container objects, right at the default threshold of 700.

Each variant is served by uvicorn (``--loop uvloop``) in a fresh interpreter pinned to CPU
0, loaded by ``wrk`` (Debian package ``wrk``) pinned to CPU 1, ``GET /health``, for
``--seconds`` after a warm-up; the server counts collections per generation and the time
they took with a ``gc.callbacks`` hook. Collection counts are the robust figure here:
throughput on a shared machine moves by ±15 % from run to run. Run::

    python benchmarks/gc_pressure.py [--seconds 8] [--connections 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# name: (app variant, what runs after start-up: "" | "freeze" | "threshold")
VARIANTS = {
    "bare FastAPI": ("bare", ""),
    "+ a middleware that sets one ContextVar": ("contextvar", ""),
    "+ loopwatch instrument()": ("loopwatch", ""),
    "bare FastAPI, gc.freeze()": ("bare", "freeze"),
    "+ loopwatch instrument(), gc.freeze()": ("loopwatch", "freeze"),
    "+ loopwatch instrument(), gc.set_threshold(5000)": ("loopwatch", "threshold"),
}

# The server side, run in a fresh interpreter: argv = variant, tuning, port, seconds,
# connections, wrk path. Prints one JSON line.
SERVER = r'''
import asyncio, contextvars, gc, json, os, subprocess, sys, threading, time
variant, tuning, port, seconds, connections, wrk = sys.argv[1:7]
os.sched_setaffinity(0, {0})
import uvicorn
from fastapi import FastAPI

app = FastAPI()

@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}

if variant == "contextvar":
    request_id = contextvars.ContextVar("request_id", default=None)

    class RequestId:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            token = request_id.set(id(scope))
            try:
                await self.app(scope, receive, send)
            finally:
                request_id.reset(token)

    app.add_middleware(RequestId)
elif variant == "loopwatch":
    from loopwatch.adapters.fastapi import instrument
    instrument(app)

server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=int(port), loop="uvloop",
                                       log_level="warning", access_log=False))
counts, spent, started = [0, 0, 0], [0.0, 0.0, 0.0], [0.0]

def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    elif started[0]:  # not the end of a collection that began before the hook was added
        counts[info["generation"]] += 1
        spent[info["generation"]] += time.perf_counter() - started[0]
        started[0] = 0.0

def load(duration):
    out = subprocess.run(["taskset", "-c", "1", wrk, "-t1", f"-c{connections}",
                          f"-d{duration}s", f"http://127.0.0.1:{port}/health"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split("Requests/sec:")[1].split()[0]), out

def drive():
    try:
        while not server.started:
            time.sleep(0.05)
        if tuning == "freeze":
            gc.collect()
            gc.freeze()
        elif tuning == "threshold":
            gc.set_threshold(5000, *gc.get_threshold()[1:])  # generation 0 only
        load(2)  # warm-up
        gc.callbacks.append(on_gc)
        rps, out = load(seconds)
        gc.callbacks.remove(on_gc)
        requests = int(out.split(" requests in ")[0].split()[-1])
        print(json.dumps({"rps": rps, "requests": requests, "counts": counts,
                          "spent": spent}), flush=True)
    finally:
        server.should_exit = True

threading.Thread(target=drive, daemon=True).start()
import uvloop
uvloop.run(server.serve())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def run_variant(variant: str, tuning: str, seconds: int, connections: int,
                wrk: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    result = subprocess.run(
        [sys.executable, "-c", SERVER, variant, tuning or "-", str(free_port()),
         str(seconds), str(connections), wrk],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{variant}: server failed\n{result.stderr[-2000:]}")
    data: dict[str, object] = json.loads(lines[-1])
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None or shutil.which("taskset") is None or os.cpu_count() in (None, 1):
        print("needs wrk (apt-get install wrk), taskset and 2 CPUs", file=sys.stderr)
        return 2
    print(f"Python {sys.version.split()[0]}, uvicorn --loop uvloop, wrk {args.connections} "
          f"connections, GET /health for {args.seconds} s per variant\n")
    print("| variant | req/s | gen0 / gen1 / gen2 collections per 10k requests "
          "| GC ms per 10k requests | ms per gen2 collection |")
    print("|---|---:|---:|---:|---:|")
    for name, (variant, tuning) in VARIANTS.items():
        data = run_variant(variant, tuning, args.seconds, args.connections, wrk)
        per = 10_000 / max(int(data["requests"]), 1)  # type: ignore[call-overload]
        counts = [c * per for c in data["counts"]]  # type: ignore[attr-defined]
        spent = data["spent"]
        total_ms = sum(spent) * 1000 * per  # type: ignore[arg-type]
        gen2 = data["counts"][2]  # type: ignore[index]
        gen2_each = f"{spent[2] / gen2 * 1000:.1f}" if gen2 else "—"  # type: ignore[index]
        print(f"| {name} | {data['rps']:.0f} | "
              f"{counts[0]:.1f} / {counts[1]:.1f} / {counts[2]:.2f} | {total_ms:.1f} "
              f"| {gen2_each} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
