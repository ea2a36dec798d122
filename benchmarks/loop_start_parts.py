"""Where loopwatch's cost of starting and closing a loop goes, in CPU time of the caller.

``loop_start_breakdown.py`` counts each part in instructions; instructions weigh a loop's
C work (uvloop clears a large new object with ``memset``) the same as loopwatch's
interpreted Python, which takes several times longer per instruction. This times the same
parts. One process, loopwatch installed once; before each round one part is switched off
in place (hooks cleared, wrappers put back) or everything is (``bare``), and ``--calls``
no-op ``asyncio.run`` calls are timed on the calling thread's CPU clock. Rounds go through
the variants in turn, in the reverse order every other round, so a drift in the machine's
load favours none. Printed: median µs per call and the difference from ``bare``, with
p25-p75.

Variants: ``bare``, ``full``, ``no-start-hooks``, ``no-seen-hooks``, ``no-hooks``,
``no-select`` (the stdlib probe's ``select`` wrapper), ``no-entry-wrappers``
(``asyncio.run``, ``Runner.run``/``close``, ``run_until_complete``), ``no-run-forever``
(which runs the start hooks).

Run: ``python benchmarks/loop_start_parts.py [--loop asyncio|uvloop] [--rounds 25]
[--calls 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.base_events
import gc
import selectors
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _runtime

VARIANTS = (
    "bare", "full", "no-start-hooks", "no-seen-hooks", "no-hooks", "no-select",
    "no-entry-wrappers", "no-run-forever",
)


async def noop() -> None:
    pass


class Switch:
    """Turns the parts of an installed loopwatch off and on again, in place."""

    def __init__(self, loop_classes: list[type]) -> None:
        self.start_hooks = list(_runtime.loop_start_hooks)
        self.seen_hooks = list(_runtime.loop_seen_hooks)
        # (owner, name, the wrapper loopwatch installed, the part it belongs to)
        self.wrappers: list[tuple[Any, str, Any, str]] = [
            (selectors.DefaultSelector, "select", selectors.DefaultSelector.select, "select"),
            (asyncio, "run", asyncio.run, "entry"),
        ]
        if sys.version_info >= (3, 11):
            for name in ("run", "close"):
                runner = asyncio.Runner  # type: ignore[attr-defined]
                self.wrappers.append((runner, name, getattr(runner, name), "entry"))
        for cls in loop_classes:
            self.wrappers.append(
                (cls, "run_until_complete", cls.__dict__["run_until_complete"], "entry")
            )
            self.wrappers.append((cls, "run_forever", cls.__dict__["run_forever"], "forever"))
        for _, name, wrapper, _ in self.wrappers:
            if not hasattr(wrapper, "__wrapped__"):
                raise SystemExit(f"{name} is not wrapped by loopwatch: nothing to switch")

    def set(self, variant: str) -> None:
        off = {
            "bare": {"start", "seen", "select", "entry", "forever"},
            "full": set(),
            "no-start-hooks": {"start"},
            "no-seen-hooks": {"seen"},
            "no-hooks": {"start", "seen"},
            "no-select": {"select"},
            "no-entry-wrappers": {"entry"},
            "no-run-forever": {"forever"},
        }[variant]
        _runtime.loop_start_hooks[:] = [] if "start" in off else self.start_hooks
        _runtime.loop_seen_hooks[:] = [] if "seen" in off else self.seen_hooks
        _runtime._last_started = _runtime._NOT_STARTED  # every hook sees the next loop
        for owner, name, wrapper, part in self.wrappers:
            setattr(owner, name, wrapper.__wrapped__ if part in off else wrapper)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    loop_classes: list[type] = [asyncio.base_events.BaseEventLoop]
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        loop_classes.append(uvloop.Loop)

    def call() -> None:
        asyncio.run(noop())

    loopwatch.install(registry=CollectorRegistry())
    call()  # uvloop's classes are wrapped when first seen
    switch = Switch(loop_classes)
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    try:
        for variant in VARIANTS:  # warm up every path
            switch.set(variant)
            for _ in range(20):
                call()
        clock: Callable[[], float] = time.thread_time
        for i in range(args.rounds):
            for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                switch.set(variant)
                gc.collect()
                started = clock()
                for _ in range(args.calls):
                    call()
                times[variant].append((clock() - started) / args.calls * 1e6)
    finally:
        switch.set("full")
        loopwatch.uninstall()
    print(f"Python {sys.version.split()[0]}, {args.loop} loop, {args.rounds} rounds of "
          f"{args.calls} asyncio.run calls per variant, CPU time of the calling thread")
    bare = statistics.median(times["bare"])
    print(f"{'variant':<20} {'µs/call':>8} {'added':>7}  p25-p75")
    for variant in VARIANTS:
        quartiles = statistics.quantiles(times[variant], n=4)
        median = statistics.median(times[variant])
        print(f"{variant:<20} {median:>8.1f} {median - bare:>+7.1f}  "
              f"{quartiles[0]:.1f}-{quartiles[2]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
