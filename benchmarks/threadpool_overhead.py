"""What loopwatch adds to one call into a thread pool (H8's bookkeeping).

Three ways sync work reaches a thread, each timed on one event loop with a function that
returns at once (so the pool's own hand-off is all there is to measure):

* ``run_in_threadpool`` — Starlette's, over anyio's default thread limiter (what a FastAPI
  ``def`` endpoint costs);
* ``run_in_executor`` — ``loop.run_in_executor(None, f)``, the loop's default executor;
* ``to_thread`` — ``asyncio.to_thread(f)``, the same executor with the context copied.

Batches of calls with loopwatch installed are paired with batches without it, back to back
and alternating which goes first, so changes in machine load cancel out of each difference.
Two clocks: the process's CPU time per call (all threads: what the bookkeeping costs, and
steady on a loaded machine) and the wall time per call (what a caller waits, which on a
busy machine is mostly the scheduler's hand-off between threads). "added" is the median of
the per-call differences with the 25th–75th percentiles; "bare" the median without
loopwatch. Run it with::

    python benchmarks/threadpool_overhead.py        # --pairs 200 --batch 100 --loop asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

import loopwatch


def noop() -> None:
    return None


def paths(loop: asyncio.AbstractEventLoop) -> dict[str, Callable[[], Awaitable[None]]]:
    return {
        "run_in_threadpool": lambda: run_in_threadpool(noop),
        "run_in_executor": lambda: loop.run_in_executor(None, noop),
        "to_thread": lambda: asyncio.to_thread(noop),
    }


async def batch(call: Callable[[], Awaitable[None]], size: int) -> tuple[float, float]:
    """CPU seconds and wall seconds per call over ``size`` sequential calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(size):
        await call()
    return (time.process_time() - cpu) / size, (time.perf_counter() - wall) / size


async def measure(
    pairs: int, size: int, registry: CollectorRegistry
) -> dict[str, list[tuple[float, float]]]:
    loop = asyncio.get_running_loop()
    results: dict[str, list[tuple[float, float]]] = {}
    for name, call in paths(loop).items():
        for _ in range(20):  # warm the pools' threads and the metric children
            await call()
        loopwatch.install(registry=registry, watchdog=False)
        for _ in range(20):
            await call()
        loopwatch.uninstall()
        bare_times: list[tuple[float, float]] = []
        added: list[tuple[float, float]] = []
        for i in range(pairs):
            order = (False, True) if i % 2 else (True, False)
            timed: dict[bool, tuple[float, float]] = {}
            for installed in order:
                if installed:
                    loopwatch.install(registry=registry, watchdog=False)
                try:
                    timed[installed] = await batch(call, size)
                finally:
                    if installed:
                        loopwatch.uninstall()
            bare_times.append(timed[False])
            added.append((timed[True][0] - timed[False][0], timed[True][1] - timed[False][1]))
        results[name] = added
        results[name + ":bare"] = bare_times
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="paired batches per path")
    parser.add_argument("--batch", type=int, default=100, help="calls per batch")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    registry = CollectorRegistry()
    coro = measure(args.pairs, args.batch, registry)
    if args.loop == "uvloop":
        import uvloop

        results = uvloop.run(coro)
    else:
        results = asyncio.run(coro)
    print(f"Python {sys.version.split()[0]}, {args.loop}, {args.pairs} pairs of "
          f"{args.batch} calls; µs per call")
    print(f"{'path':<20} {'clock':<5} {'bare':>8} {'added':>8} {'p25 .. p75':>18}")
    for name in ("run_in_threadpool", "run_in_executor", "to_thread"):
        for index, clock in ((0, "cpu"), (1, "wall")):
            added = sorted(pair[index] for pair in results[name])
            bare = statistics.median(pair[index] for pair in results[name + ":bare"]) * 1e6
            q1, q3 = (statistics.quantiles(added, n=4)[i] * 1e6 for i in (0, 2))
            med = statistics.median(added) * 1e6
            print(f"{name:<20} {clock:<5} {bare:8.1f} {med:8.2f} {q1:8.2f} .. {q3:7.2f}")


if __name__ == "__main__":
    main()
