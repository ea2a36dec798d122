"""H3: the lag probe, the watchdog thread, blocked-loop incidents and their attribution.

Blocks are made on purpose (``time.sleep``, a spin loop, a lock, an import, a slow
finalizer during garbage collection); nothing relies on the machine being slow. The only
timing tolerance asserted is the issue's: a 0.25 s block is reported within ±20%.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import selectors
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import LOOP_KINDS, marked_line, run_on, serve_uvicorn, uvloop
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _blocks, _runtime, _watchdog
from loopwatch._compat import cpython
from loopwatch._frames import Frame
from loopwatch.testing import capture_incidents

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
HERE = __file__


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# LINE: marker``."""
    return marked_line(HERE, marker)


def blocks(registry: CollectorRegistry, handler: str, framework: str = "none") -> float:
    value = registry.get_sample_value(
        "loopwatch_event_loop_blocks_total", {"framework": framework, "handler": handler}
    )
    return value or 0.0


def lag(registry: CollectorRegistry, suffix: str, le: str | None = None) -> float:
    labels = {"le": le} if le is not None else {}
    return registry.get_sample_value(f"loopwatch_event_loop_lag_seconds_{suffix}", labels) or 0.0


def blocked(seen: list[loopwatch.Incident]) -> list[loopwatch.Incident]:
    return [i for i in seen if i.kind == "blocked_loop"]


async def settle() -> None:
    """Let the probe tick a few times and the watchdog report a block that just ended."""
    await asyncio.sleep(0.15)


def sleep_in_handler(seconds: float) -> None:
    with loopwatch.handler_context("fastapi", "GET /block"):
        time.sleep(seconds)  # LINE: sleep


def spin(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:  # LINE: spin
        n += 1
    return n


# -- the lag probe -------------------------------------------------------------------------


def test_lag_samples_a_busy_loop_at_most_once_per_tick(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)
    tick = 0.02
    stdlib = loop_factory is asyncio.new_event_loop
    # Python work in short slices: the loop is busy, never blocked. A stdlib loop is sampled
    # in its own thread, so slices of 2 ms do. uvloop is sampled from the watchdog thread,
    # which needs the GIL: callbacks shorter than the switch interval (5 ms), run back to
    # back, hand the GIL straight back to the loop thread at each of its waits and starve
    # every other thread (a plain thread in a sleep loop wakes 0 times a second there, with
    # or without loopwatch: docs/loop-health.md). Slices of 8 ms leave it room.
    piece = 0.002 if stdlib else 0.008

    async def busy() -> tuple[float, float]:
        await asyncio.sleep(0.1)
        before, started = lag(registry, "count"), time.monotonic()
        while time.monotonic() - started < 1.0:
            spin(piece)
            await asyncio.sleep(0)
        return lag(registry, "count") - before, time.monotonic() - started

    samples, elapsed = run_on(loop_factory, busy())
    # Never more than one sample per tick; a busy loop is sampled all along (on a loaded
    # machine the watchdog gets fewer looks at uvloop: 17-18 a second here when quiet).
    assert samples <= elapsed / tick + 1
    assert samples >= (5 if stdlib else 3)


def test_an_idle_loop_is_left_alone(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    # Waiting for I/O (or a timer) the loop runs no iteration: nothing wakes it to sample.
    loopwatch.install(registry=registry)

    async def idle() -> float:
        await asyncio.sleep(0.1)
        before = lag(registry, "count")
        await asyncio.sleep(1.0)
        return lag(registry, "count") - before

    assert run_on(loop_factory, idle()) <= 2


def test_half_second_block_lands_in_its_bucket(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)
    bounds = ("0.25", "0.5", "1.0", "2.5", "+Inf")

    def above_quarter() -> dict[str, float]:
        # Observations per bucket above 0.25 s (prometheus buckets are cumulative).
        cumulative = [lag(registry, "bucket", le) for le in bounds]
        return {le: cumulative[i] - cumulative[i - 1] for i, le in enumerate(bounds) if i}

    async def main() -> tuple[dict[str, float], dict[str, float]]:
        await asyncio.sleep(0.1)
        before = above_quarter()
        time.sleep(0.5)
        await settle()
        return before, above_quarter()

    with capture_incidents() as seen:
        before, after = run_on(loop_factory, main())
    (incident,) = blocked(seen)
    assert incident.duration is not None
    assert incident.duration == pytest.approx(0.5, rel=0.2)
    # The histogram saw the lateness the incident reports, once, in the bucket it belongs to.
    home = next(le for le in bounds[1:] if incident.duration <= float(le))
    grew = {le: after[le] - before[le] for le in after}
    assert grew == {le: (1.0 if le == home else 0.0) for le in after}


def test_probe_starts_on_the_loop_running_at_install(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    async def main() -> float:
        loopwatch.install(registry=registry)
        for _ in range(10):
            spin(0.02)
            await asyncio.sleep(0)
        return lag(registry, "count")

    # Samples prove the probe runs; uvloop's come from the watchdog thread, which needs the
    # GIL of the spinning loop (one at least, in 200 ms, on a loaded machine). The loop runs
    # 20 ms callbacks: callbacks as long as the GIL's switch interval (5 ms), each followed
    # by the loop's wait, hand the GIL straight back to the loop thread at every wait, and a
    # thread asking for it is never given it (the waiter asks for a hand-over only after a
    # whole interval with no release).
    assert run_on(loop_factory, main()) >= (2 if loop_factory is asyncio.new_event_loop else 1)


def test_probe_restarts_with_each_run_of_a_loop(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)
    loop = loop_factory()
    try:
        with capture_incidents() as seen:
            loop.run_until_complete(asyncio.sleep(0.1))
            time.sleep(0.3)  # the loop is stopped, not blocked: nothing to report
            loop.run_until_complete(asyncio.sleep(0.2))
    finally:
        loop.close()
    assert blocked(seen) == []
    assert lag(registry, "bucket", "0.25") == lag(registry, "count")


# -- blocked-loop incidents ----------------------------------------------------------------


def test_blocking_call_is_one_incident_with_site_and_handler(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        await asyncio.sleep(0.05)
        sleep_in_handler(0.25)
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    (incident,) = blocked(seen)
    assert incident.site == Frame(HERE, line_of("sleep"), "sleep_in_handler")
    assert (incident.framework, incident.handler) == ("fastapi", "GET /block")
    assert incident.duration is not None and 0.2 <= incident.duration <= 0.3
    assert incident.detail["cause"] == "blocking_call"
    assert incident.task is not None
    assert incident.thread == threading.current_thread().name
    assert incident.stack[0] == incident.site  # sampled while it blocked, innermost first
    assert float(incident.detail["detected_after"]) < incident.duration
    assert blocks(registry, "GET /block", "fastapi") == 1
    seconds = registry.get_sample_value(
        "loopwatch_event_loop_blocked_seconds_total",
        {"framework": "fastapi", "handler": "GET /block"},
    )
    assert seconds == pytest.approx(incident.duration)


def test_cpu_bound_block_is_caught(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        await asyncio.sleep(0.05)
        with loopwatch.handler_context("starlette", "GET /cpu"):
            spin(0.3)
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    (incident,) = blocked(seen)
    assert incident.site == Frame(HERE, line_of("spin"), "spin")
    assert incident.handler == "GET /cpu"
    assert incident.detail["cause"] == "cpu"
    assert "CPU-bound" in incident.hint
    assert blocks(registry, "GET /cpu", "starlette") == 1


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
def test_a_block_after_callbacks_that_starve_the_watchdog_is_still_caught(
    registry: CollectorRegistry,
) -> None:
    # 2 ms callbacks back to back keep the GIL from the watchdog thread (see the lag test
    # above); the one callback that then spins past the threshold lets it in.
    assert uvloop is not None
    loopwatch.install(registry=registry)

    async def main() -> None:
        await asyncio.sleep(0.05)
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            spin(0.002)
            await asyncio.sleep(0)
        with loopwatch.handler_context("starlette", "GET /cpu"):
            spin(0.3)
        await settle()

    with capture_incidents() as seen:
        run_on(uvloop.new_event_loop, main())
    (incident,) = blocked(seen)
    assert incident.site == Frame(HERE, line_of("spin"), "spin")
    assert incident.handler == "GET /cpu"
    assert 0.24 <= incident.duration <= 0.45


def counting_stack_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every read of other threads' stacks (``sys._current_frames``) from now on."""
    reads: list[int] = []
    original = cpython.current_frames

    def counted() -> dict[int, Any]:
        reads.append(threading.get_ident())
        return original()

    monkeypatch.setattr(cpython, "current_frames", counted)
    return reads


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
@pytest.mark.skipif(
    not hasattr(time, "pthread_getcpuclockid"), reason="no per-thread CPU clocks here"
)
def test_an_idle_uvloop_is_watched_without_reading_stacks(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading stacks is what crashed CPython 3.12+ beside subinterpreters, and it was done on
    # every poll of a C loop: an idle uvloop is now told idle by its thread's CPU clock.
    reads = counting_stack_reads(monkeypatch)
    loopwatch.install(registry=registry)

    async def idle() -> tuple[int, float]:
        await asyncio.sleep(0.3)  # the ping at start and its answer
        before = len(reads)
        await asyncio.sleep(1.0)
        return len(reads) - before, lag(registry, "count")

    read_while_idle, samples = run_on(uvloop.new_event_loop, idle())  # type: ignore[union-attr]
    assert read_while_idle == 0
    assert samples >= 1  # it was watched: the ping at start was answered


def test_block_is_reported_without_a_stack_where_stacks_cannot_be_read(
    loop_factory: LoopFactory, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where reading another thread's stack is unsafe (subinterpreters on CPython 3.12+), a
    # block is still caught, timed and attributed; its incident says why it has no stack.
    reason = "not read: a test says so"
    monkeypatch.setattr(cpython, "frames_unreadable", lambda: reason)
    reads = counting_stack_reads(monkeypatch)
    loopwatch.install(registry=registry)

    async def main() -> None:
        await asyncio.sleep(0.05)
        with loopwatch.handler_context("starlette", "GET /blind"):
            time.sleep(0.3)
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    (incident,) = blocked(seen)
    assert not incident.stack and incident.site is None
    assert incident.detail["stack"] == reason
    assert incident.hint.endswith(f"(The stack was {reason}.)")  # the text log shows hints
    assert incident.detail["cause"] == "blocking_call"
    assert incident.handler == "GET /blind"  # from the task's context, not the stack
    assert incident.duration is not None and 0.25 <= incident.duration <= 0.4
    assert blocks(registry, "GET /blind", "starlette") == 1
    assert reads == []


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
@pytest.mark.skipif(
    not Path(f"/proc/self/task/{threading.get_native_id()}/wchan").exists(),
    reason="no wait channels of threads here (Linux /proc)",
)
def test_blocking_call_right_after_the_ping_is_caught_without_a_stack(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hardest case for a C loop's CPU clock: the loop answers the watchdog's ping and goes
    # straight into a blocking call, spending less CPU than the ping's own tail. Where the
    # thread sleeps (not in epoll) says it is busy; no stack is read.
    from loopwatch import _probe

    monkeypatch.setattr(cpython, "frames_unreadable", lambda: "not read: a test says so")
    reads = counting_stack_reads(monkeypatch)
    original = _probe.Probe.pong
    blocked_once: list[bool] = []

    def pong_then_block(self: _probe.Probe, sent: float) -> None:
        original(self, sent)
        if not blocked_once:
            blocked_once.append(True)
            time.sleep(0.3)

    monkeypatch.setattr(_probe.Probe, "pong", pong_then_block)
    loopwatch.install(registry=registry)

    with capture_incidents() as seen:
        run_on(uvloop.new_event_loop, asyncio.sleep(0.6))  # type: ignore[union-attr]
    assert blocked_once
    (incident,) = blocked(seen)
    assert incident.duration is not None and 0.2 <= incident.duration <= 0.45
    assert incident.detail["cause"] == "blocking_call"
    assert reads == []


def test_work_under_the_threshold_is_no_incident(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def request() -> None:
        with loopwatch.handler_context("fastapi", "GET /fast"):
            for _ in range(5):
                time.sleep(0.005)
                await asyncio.sleep(0)

    async def main() -> None:
        for _ in range(20):
            await asyncio.gather(*(request() for _ in range(3)))
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    assert [i for i in seen if i.handler == "GET /fast"] == []
    assert blocks(registry, "GET /fast", "fastapi") == 0
    assert lag(registry, "count") > 0


def test_still_blocked_line_while_a_long_block_lasts(
    loop_factory: LoopFactory, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    loopwatch.install(registry=registry, block_threshold=0.05)
    ended: list[float] = []

    async def main() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.7)
        ended.append(time.time())
        await settle()

    with caplog.at_level(logging.WARNING, logger="loopwatch"), capture_incidents() as seen:
        run_on(loop_factory, main())
    still = [r for r in caplog.records if "still blocked" in r.getMessage()]
    assert len(still) == 1
    assert still[0].levelno == logging.ERROR
    assert still[0].created < ended[0]  # said while the loop was still blocked
    assert still[0].loopwatch["kind"] == "blocked_loop"  # type: ignore[attr-defined]
    (incident,) = blocked(seen)
    final = [r for r in caplog.records if r.getMessage().startswith("blocked loop")]
    assert [r.levelno for r in final] == [logging.ERROR]  # >= 10x the threshold
    assert incident.duration is not None and incident.duration >= 0.5


def test_block_in_a_plain_callback_is_attributed_by_handler_code(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    def on_message() -> None:
        time.sleep(0.2)

    _watchdog.register_handler(on_message, "discord", "event:on_message")

    async def main() -> None:
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(on_message)
        await asyncio.sleep(0.01)
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    (incident,) = blocked(seen)
    assert (incident.framework, incident.handler) == ("discord", "event:on_message")
    assert incident.task is None
    assert incident.site is not None and incident.site.function == "on_message"


def test_lock_wait_on_the_loop(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    event = threading.Event()

    async def main() -> None:
        await asyncio.sleep(0.05)
        threading.Timer(0.3, event.set).start()
        event.wait()
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    (incident,) = blocked(seen)
    assert incident.detail["cause"] == "lock"
    assert incident.site is not None and incident.site.function == "main"
    assert "asyncio.Lock" in incident.hint


def test_import_on_the_loop(
    loop_factory: LoopFactory, registry: CollectorRegistry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"slow_module_{loop_factory.__module__.replace('.', '_')}"
    (tmp_path / f"{name}.py").write_text("import time\ntime.sleep(0.3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loopwatch.install(registry=registry)

    async def main() -> None:
        await asyncio.sleep(0.05)
        __import__(name)
        await settle()

    try:
        with capture_incidents() as seen:
            run_on(loop_factory, main())
    finally:
        sys.modules.pop(name, None)
    (incident,) = blocked(seen)
    assert incident.detail["cause"] == "import"
    assert "Import it at startup" in incident.hint


class _SlowFinalizer:
    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        time.sleep(0.3)


def test_garbage_collection_on_the_loop(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        await asyncio.sleep(0.05)
        _SlowFinalizer()
        gc.collect()
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    (incident,) = blocked(seen)
    assert incident.detail["cause"] == "gc"
    assert float(incident.detail["gc_seconds"]) >= 0.25


def test_collections_before_the_first_look_count_toward_the_cause(
    registry: CollectorRegistry,
) -> None:
    # A collection of a big heap is C code holding the GIL: the watchdog cannot look during
    # it, so its first look at this block comes after the collection has ended. (stdlib
    # loop only: uvloop's block is timed from the ping, which cannot go out during it.)
    heap = [[] for _ in range(3_000_000)]
    started = time.perf_counter()
    gc.collect()
    collection = time.perf_counter() - started
    loopwatch.install(registry=registry, block_threshold=0.1)

    async def main() -> None:
        await asyncio.sleep(0.05)
        gc.collect()  # the larger part of the block
        spin(collection / 2)
        await settle()

    try:
        with capture_incidents() as seen:
            run_on(asyncio.new_event_loop, main())
    finally:
        del heap
    (incident,) = blocked(seen)
    assert incident.detail["cause"] == "gc", (collection, incident.detail)
    assert float(incident.detail["gc_seconds"]) >= collection * 0.6


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
def test_on_uvloop_a_collection_before_the_ping_is_not_part_of_the_block(
    registry: CollectorRegistry,
) -> None:
    # What docs/loop-health.md says of uvloop: its block is timed from the watchdog's ping,
    # which cannot go out while a collection holds the GIL.
    assert uvloop is not None
    heap = [[] for _ in range(3_000_000)]
    started = time.perf_counter()
    gc.collect()
    collection = time.perf_counter() - started
    loopwatch.install(registry=registry, block_threshold=0.1)

    async def main() -> None:
        await asyncio.sleep(0.05)
        gc.collect()
        spin(max(collection, 0.2))
        await settle()

    try:
        with capture_incidents() as seen:
            run_on(uvloop.new_event_loop, main())
    finally:
        del heap
    (incident,) = blocked(seen)
    assert incident.detail["cause"] == "cpu", (collection, incident.detail)
    assert float(incident.detail.get("gc_seconds", 0)) < collection / 2


@pytest.mark.parametrize("installed", ["before", "while running"])
def test_idle_loop_samples_as_idle(
    loop_factory: LoopFactory, registry: CollectorRegistry, installed: str
) -> None:
    if installed == "before":
        loopwatch.install(registry=registry)
    loop = loop_factory()
    ready = threading.Event()
    loop.call_soon(ready.set)
    thread = threading.Thread(target=loop.run_forever, name="idle-loop")
    thread.start()
    try:
        ready.wait(5)
        if installed == "while running":
            done = threading.Event()
            loop.call_soon_threadsafe(lambda: (loopwatch.install(registry=registry), done.set()))
            done.wait(5)
        time.sleep(0.1)  # a few ticks
        watchdog = _watchdog._active
        assert watchdog is not None and thread.ident is not None
        probe = watchdog.probe_of(loop)
        assert probe is not None
        sample = _blocks.sample_thread(thread.ident, 0.0, watchdog._idle_at(probe))
        assert sample.cause == "idle", sample.stack[:3]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_cause_starved_when_every_sample_shows_the_loop_idle() -> None:
    idle = _blocks.Sample(0.1, [Frame(selectors.__file__, 1, "select")], None, "")
    assert idle.cause == "idle"
    cause = _blocks.cause_of([idle, idle], None, 0.3, 0.0, 0.0, 0.1)
    assert cause == "starved"
    # A long block that no sample saw: the watchdog could not run either.
    assert _blocks.cause_of([], None, 0.3, None, 0.0, 0.1) == "starved"
    assert _blocks.cause_of([], None, 0.11, None, 0.0, 0.1) == "unsampled"


def test_offloaded_reentry_stall_is_not_counted_twice(
    loop_factory: LoopFactory, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    loopwatch.install(registry=registry)

    async def slow() -> int:
        await asyncio.sleep(0.3)
        return 1

    async def main() -> int:
        await asyncio.sleep(0.05)
        result = asyncio.run(slow())  # offloaded; this loop stalls meanwhile
        await settle()
        return result

    with caplog.at_level(logging.DEBUG, logger="loopwatch"), capture_incidents() as seen:
        assert run_on(loop_factory, main()) == 1
    assert [i.kind for i in seen] == ["reentry"]
    assert seen[0].duration is not None and seen[0].duration >= 0.25
    assert blocks(registry, "__none__") == 0
    # The stall is real lag all the same, and the samples are kept at DEBUG, marked.
    assert lag(registry, "count") - lag(registry, "bucket", "0.25") >= 1
    details = [getattr(r, "loopwatch", {}).get("detail", {}) for r in caplog.records]
    assert [d["reentry"] for d in details if "reentry" in d] == ["asyncio.run"]


def test_threshold_and_tick_follow_reconfigure(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    monitor = loopwatch.install(registry=registry, block_threshold=1.0)

    async def main() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.25)  # under 1 s: nothing
        await settle()
        monitor.reconfigure(block_threshold=0.1)
        await asyncio.sleep(0.6)  # the watchdog picks up the new threshold on waking
        time.sleep(0.25)
        await settle()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    assert len(blocked(seen)) == 1


# -- lifecycle -----------------------------------------------------------------------------


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == _watchdog.THREAD_NAME]


def test_uninstall_stops_the_thread_and_the_probes(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    callbacks = list(gc.callbacks)

    async def main() -> tuple[float, float]:
        loopwatch.install(registry=registry)
        assert len(watchdog_threads()) == 1
        owners = {type(getattr(cb, "__self__", None)).__name__ for cb in _runtime.loop_start_hooks}
        assert "Watchdog" in owners  # the probe
        for _ in range(20):  # busy, so the probe samples
            spin(0.005)
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        loopwatch.uninstall()
        count = lag(registry, "count")
        await asyncio.sleep(0.1)
        return count, lag(registry, "count")

    at_uninstall, later = run_on(loop_factory, main())
    assert at_uninstall > 0
    assert later == at_uninstall
    assert watchdog_threads() == []
    assert _runtime.loop_start_hooks == []
    assert gc.callbacks == callbacks


def test_watchdog_false_starts_nothing(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry, watchdog=False)

    async def main() -> None:
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert watchdog_threads() == []
    assert lag(registry, "count") == 0


def test_loopwatch_worker_loops_are_not_probed(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    watchdog = _watchdog._active
    assert watchdog is not None

    def in_worker() -> None:
        asyncio.run(asyncio.sleep(0.01))

    thread = threading.Thread(target=in_worker, name="loopwatch-offload-test")
    thread.start()
    thread.join(5)
    assert [p for p in watchdog._active if p.thread_name == thread.name] == []


def test_sampling_failure_is_counted_never_raised(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(thread_id: int, late: float) -> Any:
        raise RuntimeError("sampling broke")

    monkeypatch.setattr(_blocks, "sample_thread", broken)
    loopwatch.install(registry=registry)

    async def main() -> str:
        await asyncio.sleep(0.05)
        time.sleep(0.2)
        await settle()
        return "still running"

    assert asyncio.run(main()) == "still running"
    assert registry.get_sample_value(
        "loopwatch_internal_errors_total", {"component": "watchdog"}
    ) >= 1  # type: ignore[operator]
    assert len(watchdog_threads()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork is POSIX")
def test_watchdog_restarts_in_a_forked_child(tmp_path: Path) -> None:
    script = tmp_path / "fork_child.py"
    script.write_text(textwrap.dedent("""
        import asyncio, os, threading, time
        from prometheus_client import CollectorRegistry
        import loopwatch

        loopwatch.install(registry=CollectorRegistry())
        seen = []
        loopwatch._monitor.current().add_listener(seen.append)

        async def main():
            await asyncio.sleep(0.05)
            time.sleep(0.3)
            await asyncio.sleep(0.2)

        asyncio.run(main())  # the parent has run a loop (and a block) before it forks
        pid = os.fork()
        if pid == 0:  # a pre-fork server's worker: it starts its own loop
            names = [t.name for t in threading.enumerate()]
            del seen[:]
            asyncio.run(main())
            kinds = [i.kind for i in seen]
            print("child", names.count("loopwatch-watchdog"), kinds, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent", [i.kind for i in seen])
    """))
    out = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(script)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["child 1 ['blocked_loop']", "parent ['blocked_loop']"], (
        out.stdout, out.stderr,
    )


# -- FastAPI under real uvicorn ------------------------------------------------------------


def serve(app: Any, loop: str) -> contextlib.AbstractContextManager[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1; yield its base URL."""
    return serve_uvicorn(app, loop)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def make_app(registry: CollectorRegistry) -> Any:
    from fastapi import FastAPI

    from loopwatch.adapters.fastapi import instrument

    app = FastAPI()

    @app.get("/block/{item_id}")
    async def block(item_id: int) -> dict[str, int]:
        time.sleep(0.25)  # LINE: route-sleep
        return {"item_id": item_id}

    @app.get("/cpu")
    async def cpu() -> dict[str, int]:
        return {"n": spin(0.25)}

    @app.get("/fast")
    async def fast() -> dict[str, bool]:
        await asyncio.sleep(0.001)
        return {"ok": True}

    instrument(app, registry=registry)
    return app


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_fastapi_route_blocking_under_uvicorn(loop: str, registry: CollectorRegistry) -> None:
    import httpx

    app = make_app(registry)
    with serve(app, loop) as url, httpx.Client(base_url=url, timeout=10) as client:
        with capture_incidents() as seen:
            for _ in range(10):
                assert client.get("/fast").status_code == 200
            time.sleep(0.2)
            quiet = list(seen)
            for item in (1, 2):
                assert client.get(f"/block/{item}").json() == {"item_id": item}
                wait_for(lambda n=item: len(  # type: ignore[misc]
                    [i for i in blocked(seen) if i.handler == "GET /block/{item_id}"]) >= n)
            assert client.get("/cpu").status_code == 200
            wait_for(lambda: any(i.handler == "GET /cpu" for i in blocked(seen)))
    assert [i for i in quiet if i.handler == "GET /fast"] == []
    assert blocks(registry, "GET /fast", "fastapi") == 0
    route = [i for i in blocked(seen) if i.handler == "GET /block/{item_id}"]
    assert len(route) == 2
    assert blocks(registry, "GET /block/{item_id}", "fastapi") == 2  # one per request
    for incident in route:
        assert incident.framework == "fastapi"
        assert incident.site == Frame(HERE, line_of("route-sleep"), "block")
        assert incident.duration == pytest.approx(0.25, rel=0.2)
        assert incident.loop.startswith("uvloop" if loop == "uvloop" else "asyncio")
    (cpu,) = [i for i in blocked(seen) if i.handler == "GET /cpu"]
    assert cpu.site == Frame(HERE, line_of("spin"), "spin")
    assert blocks(registry, "GET /cpu", "fastapi") == 1
