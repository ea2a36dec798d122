"""Added cost of loopwatch's patched entry points on the fast path (no running loop).

Two measurements, each as a paired comparison in this process, repeated in rounds:

1. the wrapper alone: the patched ``run_until_complete`` / ``asyncio.run`` wrappers around
   a no-op original, against the no-op called directly (isolates what loopwatch adds);
2. end to end: ``asyncio.run(noop())`` and ``loop.run_until_complete(noop())`` with
   loopwatch installed against the same without it.

Prints medians and the spread (min-max over rounds). Run: ``python benchmarks/reentry_fastpath.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import timeit
from collections.abc import Callable

from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _reentry

ROUNDS = 15


def per_call(fn: Callable[[], object], number: int) -> float:
    return timeit.timeit(fn, number=number) / number


def paired(base: Callable[[], object], patched: Callable[[], object], number: int) -> list[float]:
    """Added seconds per call, one sample per round (baseline and patched interleaved)."""
    out = []
    for _ in range(ROUNDS):
        b = per_call(base, number)
        p = per_call(patched, number)
        out.append(p - b)
    return out


def describe(name: str, samples: list[float]) -> str:
    ns = [s * 1e9 for s in samples]
    return f"| {name} | {statistics.median(ns):8.1f} ns | {min(ns):8.1f} .. {max(ns):8.1f} ns |"


class IdleLoop:
    def is_running(self) -> bool:
        return False


def noop_ruc(self: object, future: object) -> object:
    return future


def noop_run(main: object, **kwargs: object) -> object:
    return main


async def noop() -> None:
    return None


def main() -> int:
    rows = []
    wrapped_ruc = _reentry._make_run_until_complete(noop_ruc)
    wrapped_run = _reentry._make_run(noop_run)
    loop = IdleLoop()
    rows.append(
        describe(
            "wrapper: run_until_complete",
            paired(lambda: noop_ruc(loop, 1), lambda: wrapped_ruc(loop, 1), 200_000),
        )
    )
    rows.append(
        describe(
            "wrapper: asyncio.run", paired(lambda: noop_run(1), lambda: wrapped_run(1), 200_000)
        )
    )

    def e2e_run() -> None:
        asyncio.run(noop())

    real_loop = asyncio.new_event_loop()

    def e2e_ruc() -> None:
        real_loop.run_until_complete(noop())

    base_run, base_ruc, with_run, with_ruc = [], [], [], []
    for _ in range(ROUNDS):
        base_run.append(per_call(e2e_run, 300))
        base_ruc.append(per_call(e2e_ruc, 3000))
        loopwatch.install(registry=CollectorRegistry(), watchdog=False)
        with_run.append(per_call(e2e_run, 300))
        with_ruc.append(per_call(e2e_ruc, 3000))
        loopwatch.uninstall()
    real_loop.close()
    rows.append(
        describe(
            "end to end: asyncio.run(noop())",
            [w - b for w, b in zip(with_run, base_run, strict=True)],
        )
    )
    rows.append(
        describe(
            "end to end: run_until_complete(noop())",
            [w - b for w, b in zip(with_ruc, base_ruc, strict=True)],
        )
    )

    print(f"Python {sys.version.split()[0]}, {ROUNDS} rounds; added time per call (patched - bare)")
    print("| path | median | spread (min .. max) |")
    print("|---|---|---|")
    for row in rows:
        print(row)
    print(
        f"baseline medians: asyncio.run {statistics.median(base_run) * 1e6:.1f} µs, "
        f"run_until_complete {statistics.median(base_ruc) * 1e6:.1f} µs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
