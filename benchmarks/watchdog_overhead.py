"""What the loop health monitor (lag probe, watchdog thread, H4/H5 hooks) costs, and how
fast it sees a block.

1. idle: CPU time of an idle process running an event loop for ``--seconds`` (default 20),
   without loopwatch, with a bare 20 ms no-op timer (what a timer-based lag probe, such as
   loopwatch's before 0.2, costs in wake-ups on this machine) and with loopwatch at the
   defaults (100 ms threshold), on the stdlib loop and uvloop, ``--repeat`` times. The
   processes of one round run side by side; each measures its own CPU time (all threads)
   after a warm-up. Target: loopwatch adds at most 0.2% of one core.
2. throughput: a busy loop of small tasks (each awaits a few times), baseline and monitored
   rounds alternating in this process; CPU seconds per round (median and spread of the
   paired ratio). On a shared machine that ratio is noisy, so the work loopwatch does is
   also accounted directly: loop iterations seen by the probe and gc callbacks counted
   during monitored rounds, times their unit cost measured in isolation, plus the watchdog
   thread's own CPU time. Target: under 1%.
3. loop start: ``loop.run_until_complete(noop())`` on a reused loop, with the probe and the
   exception-handler chain attached at each start against ``watchdog=False``.
4. latency: a 250 ms ``time.sleep`` on the loop, several times; when the watchdog took its
   first stack sample, measured from the start of the block. Target: before the block ends.

Run: ``python benchmarks/watchdog_overhead.py [idle|throughput|start|latency|all]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import timeit
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _blocks, _probe, _watchdog

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - Windows
    uvloop = None


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop" and uvloop is not None:
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def spread(values: list[float], unit: str = "%", scale: float = 100.0) -> str:
    v = [x * scale for x in values]
    return f"median {statistics.median(v):.3f}{unit} (min {min(v):.3f}, max {max(v):.3f})"


# -- 1. idle ------------------------------------------------------------------------------


def idle_child(kind: str, setup: str, seconds: float, tick: float) -> None:
    """One idle process: prints the CPU and wall seconds it used over ``seconds``.

    ``setup``: ``bare`` (nothing), ``timer`` (a no-op timer chain at ``tick``: the floor any
    lag probe at that tick pays on this machine), ``loopwatch`` (installed, ``lag_tick``).
    """
    if setup == "loopwatch":
        loopwatch.install(registry=CollectorRegistry(), lag_tick=tick)

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        if setup == "timer":

            def again() -> None:
                loop.call_later(tick, again)

            again()
        await asyncio.sleep(1.0)  # warm-up: imports, first ticks
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        return {"cpu": cpu, "wall": wall}

    loop = new_loop(kind)
    try:
        result = loop.run_until_complete(main())
    finally:
        loop.close()
    print(json.dumps(result))


def idle(seconds: float, tick: float, repeat: int) -> None:
    setups = ("bare", "timer", "loopwatch")
    shares: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        procs = {}
        for kind in LOOPS:
            for setup in setups:
                cmd = [sys.executable, __file__, "idle-child", kind, setup, str(seconds),
                       str(tick)]
                procs[(kind, setup)] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for key, proc in procs.items():
            out, _ = proc.communicate(timeout=seconds + 60)
            data = json.loads(out.strip().splitlines()[-1])
            shares.setdefault(key, []).append(data["cpu"] / data["wall"])
    print(f"idle process over {seconds:g} s x {repeat}, CPU of all threads / wall (share of "
          "one core), median (min .. max):")
    print("| loop | without | a 20 ms timer (old probe) | with loopwatch | added by loopwatch |")
    print("|---|---|---|---|---|")

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.3%} ({min(values):.3%} .. {max(values):.3%})"

    for kind in LOOPS:
        bare, timer, with_ = (shares[(kind, setup)] for setup in setups)
        added = [w - b for w, b in zip(with_, bare, strict=True)]
        print(f"| {kind} | {cell(bare)} | {cell(timer)} | {cell(with_)} | {cell(added)} |")


# -- 2. throughput ------------------------------------------------------------------------


async def small_task() -> None:
    for _ in range(4):
        await asyncio.sleep(0)


async def busy(tasks: int) -> None:
    for _ in range(tasks // 500):
        await asyncio.gather(*(small_task() for _ in range(500)))


def watchdog_cpu() -> float:
    """CPU seconds of the watchdog thread so far (Linux/BSD; 0 where it cannot be read)."""
    clock = getattr(time, "pthread_getcpuclockid", None)
    for thread in threading.enumerate():
        if thread.name == _watchdog.THREAD_NAME and thread.ident is not None and clock:
            return time.clock_gettime(clock(thread.ident))
    return 0.0


def unit_costs() -> tuple[float, float]:
    """Seconds the probe adds per loop iteration (the wrapped ``select`` with nothing ready)
    and per garbage collection's pair of gc callbacks, measured in isolation (best of
    several runs, so scheduler noise does not inflate them)."""

    async def per_iteration() -> float:
        selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
        bare = min(timeit.repeat(functools.partial(selector.select, 0), number=5000, repeat=7))
        loopwatch.install(registry=CollectorRegistry())
        loopwatch._monitor.current()  # the running loop is probed at install
        hooked = min(timeit.repeat(functools.partial(selector.select, 0), number=5000, repeat=7))
        loopwatch.uninstall()
        return max(hooked - bare, 0.0) / 5000

    tick = asyncio.run(per_iteration())
    collect = functools.partial(gc.collect, 0)
    bare = min(timeit.repeat(collect, number=2000, repeat=7)) / 2000
    gc.callbacks.append(_watchdog._on_gc)
    try:
        hooked = min(timeit.repeat(collect, number=2000, repeat=7)) / 2000
    finally:
        gc.callbacks.remove(_watchdog._on_gc)
    return tick, max(hooked - bare, 0.0)


def throughput(rounds: int, tasks: int) -> None:
    tick_cost, gc_cost = unit_costs()
    print(f"busy loop, {tasks} small tasks per round, {rounds} rounds per setup, alternating;")
    print(f"unit costs: probe per loop iteration {tick_cost * 1e6:.2f} µs, gc callbacks "
          f"{gc_cost * 1e6:.2f} µs per collection")
    print("| loop | baseline CPU s/round | monitored | A/B cost per round | "
          "accounted: iterations + gc callbacks + watchdog thread |")
    print("|---|---|---|---|---|")
    for kind in LOOPS:
        loop = new_loop(kind)
        loop.run_until_complete(busy(tasks))  # warm-up
        base: list[float] = []
        with_: list[float] = []
        costs: list[float] = []
        for _ in range(rounds):
            t0 = time.process_time()
            loop.run_until_complete(busy(tasks))
            base.append(time.process_time() - t0)
            loopwatch.install(registry=CollectorRegistry())
            # The loop is probed when it starts: run_until_complete starts it.
            t0 = time.process_time()
            loop.run_until_complete(busy(tasks))
            with_.append(time.process_time() - t0)
            loopwatch.uninstall()
            costs.append(with_[-1] / base[-1] - 1)
        # Accounting: count what loopwatch does during monitored rounds, times its unit cost.
        collections = [0]

        def count(phase: str, info: dict[str, int], n: list[int] = collections) -> None:
            n[0] += phase == "start"

        iterations = [0]
        before_wait = _probe.Probe.before_wait

        def counted(
            probe: _probe.Probe, n: list[int] = iterations, original: Any = before_wait
        ) -> None:
            n[0] += 1
            original(probe)

        registry = CollectorRegistry()
        loopwatch.install(registry=registry)
        gc.callbacks.append(count)
        w0 = watchdog_cpu()
        spent = 0.0
        for _ in range(rounds):
            _probe.Probe.before_wait = counted  # type: ignore[method-assign]
            t0 = time.process_time()
            loop.run_until_complete(busy(tasks))
            spent += time.process_time() - t0
            _probe.Probe.before_wait = before_wait  # type: ignore[method-assign]
        own = watchdog_cpu() - w0
        gc.callbacks.remove(count)
        ticks = float(iterations[0]) if kind == "asyncio" else (
            registry.get_sample_value("loopwatch_event_loop_lag_seconds_count") or 0.0
        )
        loopwatch.uninstall()
        loop.close()
        accounted = (ticks * tick_cost + collections[0] * gc_cost + own) / spent
        print(
            f"| {kind} | {statistics.median(base):.3f} | {statistics.median(with_):.3f} | "
            f"{spread(costs)} | {accounted:.3%} ({ticks:.0f} iterations or pings, {collections[0]} "
            f"collections, watchdog {own * 1e3:.1f} ms over {spent:.2f} s) |"
        )


# -- 3. loop start ------------------------------------------------------------------------


async def noop() -> None:
    return None


def loop_start(rounds: int) -> None:
    number = 3000
    print(f"run_until_complete(noop()) on a reused loop, {rounds} rounds of {number}:")
    print("| loop | watchdog=False | watchdog on | added per start |")
    print("|---|---|---|---|")
    for kind in LOOPS:
        loop = new_loop(kind)

        def once(loop: asyncio.AbstractEventLoop = loop) -> None:
            loop.run_until_complete(noop())

        def per_call(fn: Callable[[], None]) -> float:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            return (time.perf_counter() - t0) / number

        off: list[float] = []
        on: list[float] = []
        for _ in range(rounds):
            loopwatch.install(registry=CollectorRegistry(), watchdog=False)
            off.append(per_call(once))
            loopwatch.uninstall()
            loopwatch.install(registry=CollectorRegistry())
            on.append(per_call(once))
            loopwatch.uninstall()
        loop.close()
        added = [b - a for a, b in zip(off, on, strict=True)]
        print(
            f"| {kind} | {statistics.median(off) * 1e6:.1f} µs | "
            f"{statistics.median(on) * 1e6:.1f} µs | {spread(added, ' µs', 1e6)} |"
        )


# -- 4. detection latency -----------------------------------------------------------------


def latency(blocks: int) -> None:
    print(f"a 250 ms block, {blocks} times per loop (threshold 100 ms):")
    print("| loop | first stack sample after the block started | reported duration |")
    print("|---|---|---|")
    original = _blocks.sample_thread
    sampled: list[float] = []

    def timed(*args: Any) -> Any:
        sampled.append(time.perf_counter())
        return original(*args)

    _blocks.sample_thread = timed
    try:
        for kind in LOOPS:
            monitor = loopwatch.install(registry=CollectorRegistry())
            seen: list[loopwatch.Incident] = []
            monitor.add_listener(seen.append)
            delays: list[float] = []

            async def main(delays: list[float]) -> None:
                await asyncio.sleep(0.2)
                for _ in range(blocks):
                    del sampled[:]
                    started = time.perf_counter()
                    time.sleep(0.25)
                    ended = time.perf_counter()
                    during = [t for t in sampled if started <= t <= ended]
                    delays.append(during[0] - started if during else float("inf"))
                    await asyncio.sleep(0.2)

            loop = new_loop(kind)
            loop.run_until_complete(main(delays))
            loop.close()
            loopwatch.uninstall()
            durations = [i.duration or 0.0 for i in seen if i.kind == "blocked_loop"]
            caught = sum(1 for d in delays if d < 0.25)
            print(
                f"| {kind} | {spread(delays, ' ms', 1e3)}; {caught}/{blocks} before the end | "
                f"{spread(durations, ' ms', 1e3)} ({len(durations)} incidents) |"
            )
    finally:
        _blocks.sample_thread = original


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "idle-child":
        idle_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all",
                        choices=["idle", "throughput", "start", "latency", "all"])
    parser.add_argument("--seconds", type=float, default=20.0, help="idle measurement window")
    parser.add_argument("--repeat", type=int, default=3, help="idle rounds")
    parser.add_argument("--tick", type=float, default=0.02, help="lag_tick for the idle run")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=10_000, help="small tasks per round")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]} on {os.cpu_count()} CPUs; loops: {', '.join(LOOPS)}")
    if args.what in ("idle", "all"):
        idle(args.seconds, args.tick, args.repeat)
    if args.what in ("throughput", "all"):
        throughput(args.rounds, args.tasks)
    if args.what in ("start", "all"):
        loop_start(args.rounds)
    if args.what in ("latency", "all"):
        latency(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
