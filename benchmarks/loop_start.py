"""What loopwatch adds to starting and closing an event loop.

``asyncio.run(noop())`` and ``asyncio.Runner().run(noop())`` (a fresh loop each call, so
every per-loop cost lands in it), on the stdlib loop and on uvloop (through
``loop_factory`` on 3.12+, through the event loop policy before that). Rounds alternate in
this one process: bare (loopwatch not installed), then installed with its defaults (a
private registry, the watchdog thread running), then bare again... Each round times
``--calls`` calls; the result per case is the median of the per-round ratios
installed/bare, with their spread, and the median µs per call of each side. The clock is
the process's CPU time by default (every thread: the watchdog's work counts), which other
processes on a shared machine disturb far less than wall time; ``--clock wall`` for wall
time.

Target: at most 1.05x bare.

Run: ``python benchmarks/loop_start.py [--rounds 15] [--calls 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

import loopwatch

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows
    uvloop = None


async def noop() -> None:
    pass


def cases() -> dict[str, Callable[[], None]]:
    def run_stdlib() -> None:
        asyncio.run(noop())

    def runner_stdlib() -> None:
        with asyncio.Runner() as runner:  # type: ignore[attr-defined]
            runner.run(noop())

    found: dict[str, Callable[[], None]] = {"asyncio.run, stdlib": run_stdlib}
    if sys.version_info >= (3, 11):
        found["Runner.run, stdlib"] = runner_stdlib
    if uvloop is not None:
        if sys.version_info >= (3, 12):
            def run_uvloop() -> None:
                asyncio.run(noop(), loop_factory=uvloop.new_event_loop)  # type: ignore[call-arg]

            def runner_uvloop() -> None:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # type: ignore[attr-defined]
                    runner.run(noop())
        else:
            policy = uvloop.EventLoopPolicy()

            def with_uvloop(fn: Callable[[], None]) -> Callable[[], None]:
                def call() -> None:
                    old = asyncio.get_event_loop_policy()
                    asyncio.set_event_loop_policy(policy)
                    try:
                        fn()
                    finally:
                        asyncio.set_event_loop_policy(old)

                return call

            run_uvloop = with_uvloop(run_stdlib)
            runner_uvloop = with_uvloop(runner_stdlib)
        found["asyncio.run, uvloop"] = run_uvloop
        if sys.version_info >= (3, 11):
            found["Runner.run, uvloop"] = runner_uvloop
    return found


def per_call(fn: Callable[[], None], calls: int, clock: Callable[[], float]) -> float:
    gc.collect()
    started = clock()
    for _ in range(calls):
        fn()
    return (clock() - started) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds of {args.calls} calls, "
          f"bare and installed alternating, {args.clock} time")
    print(f"{'case':<22} {'bare µs':>9} {'watched µs':>11}  ratio watched/bare")
    for name, fn in cases().items():
        for _ in range(20):  # warm up both paths
            fn()
        loopwatch.install(registry=CollectorRegistry())
        for _ in range(20):
            fn()
        loopwatch.uninstall()
        bare: list[float] = []
        watched: list[float] = []
        ratios: list[float] = []
        for i in range(args.rounds):
            # Which side goes first alternates too: a drift in the machine's load
            # favours neither.
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {}
            for installed in order:
                if installed:
                    loopwatch.install(registry=CollectorRegistry())
                try:
                    got[installed] = per_call(fn, args.calls, clock)
                finally:
                    if installed:
                        loopwatch.uninstall()
            bare.append(got[False])
            watched.append(got[True])
            ratios.append(got[True] / got[False])
        print(f"{name:<22} {statistics.median(bare) * 1e6:>9.1f} "
              f"{statistics.median(watched) * 1e6:>11.1f}  "
              f"median {statistics.median(ratios):.3f}x "
              f"(p25 {statistics.quantiles(ratios, n=4)[0]:.3f}, "
              f"p75 {statistics.quantiles(ratios, n=4)[2]:.3f}; "
              f"min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
