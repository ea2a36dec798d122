"""What starting a loop costs loopwatch: work done once per loop, not once per start.

``asyncio.run`` starts its loop three times (the coroutine, then the shutdown of async
generators and of the default executor); a reused loop may start thousands of times.
Counted, not timed: hook calls, finalizers, wake-ups of the watchdog thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _probe, _runtime, _watchdog
from loopwatch.testing import capture_incidents


async def noop() -> None:
    pass


def installed_watchdog(registry: CollectorRegistry) -> _watchdog.Watchdog:
    """Install loopwatch with its defaults and a private registry; its watchdog."""
    loopwatch.install(registry=registry)
    watchdog = _watchdog._active
    assert watchdog is not None
    return watchdog


@contextlib.contextmanager
def recorded_starts() -> Iterator[tuple[list[Any], list[Any]]]:
    """The loops a once-per-loop hook and an every-start hook see, while in the block."""
    once: list[Any] = []
    every: list[Any] = []
    remove_once = _runtime.on_loop_start(once.append, once=True)
    remove_every = _runtime.on_loop_start(every.append)
    try:
        yield once, every
    finally:
        remove_once()
        remove_every()


def test_once_hooks_run_once_per_loop_start_hooks_at_every_start(
    registry: CollectorRegistry,
) -> None:
    loopwatch.install(registry=registry)
    with recorded_starts() as (once, every):
        asyncio.run(noop())
        assert len(every) == 3 and len(set(map(id, every))) == 1
        assert len(once) == 1 and once[0] is every[0]
        loop = asyncio.new_event_loop()
        try:
            for _ in range(5):
                loop.run_until_complete(noop())
            # The same loop run from another thread is new there: the hooks see it again.
            thread = threading.Thread(target=loop.run_until_complete, args=(noop(),))
            thread.start()
            thread.join()
        finally:
            loop.close()
        assert [x for x in once if x is loop] == [loop, loop]
        assert len([x for x in every if x is loop]) == 6


def test_a_new_once_hook_sees_a_loop_already_started(registry: CollectorRegistry) -> None:
    loop = asyncio.new_event_loop()
    try:
        loopwatch.install(registry=registry)
        loop.run_until_complete(noop())
        seen: list[Any] = []
        remove = _runtime.on_loop_start(seen.append, once=True)
        try:
            loop.run_until_complete(noop())
        finally:
            remove()
        assert seen == [loop]
    finally:
        loop.close()


def test_no_finalizer_per_loop_and_the_probe_still_reads_its_selector(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    loopwatch.install(registry=registry)
    asyncio.run(noop())
    made: list[Any] = []

    class Counted(weakref.finalize):  # type: ignore[type-arg]
        def __init__(self, obj: Any, func: Any, /, *args: Any, **kwargs: Any) -> None:
            made.append(obj)
            super().__init__(obj, func, *args, **kwargs)

    monkeypatch.setattr(weakref, "finalize", Counted)
    for _ in range(50):
        asyncio.run(noop())
    assert len(made) < 5

    async def probed() -> bool:
        loop = asyncio.get_running_loop()
        return _probe.probe_for_selector(loop._selector) is not None  # type: ignore[attr-defined]

    assert asyncio.run(probed())


def test_the_watchdog_is_not_woken_per_start_while_it_polls(
    registry: CollectorRegistry,
) -> None:
    watchdog = installed_watchdog(registry)
    wakes: list[int] = []

    class Counted(_watchdog._Wake):
        def set(self) -> None:
            wakes.append(1)
            super().set()

    asyncio.run(noop())  # the thread polls from now on (a loop started a moment ago)
    watchdog._wake = Counted()
    asyncio.run(noop())
    time.sleep(0.3)  # the thread has looked since: it polls, not parked
    del wakes[:]
    for _ in range(200):
        asyncio.run(noop())
    # 200 runs start 600 times; only a start that found the thread parked wakes it.
    assert len(wakes) < 20


def test_no_hook_sees_the_loops_of_loopwatch_threads(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    with recorded_starts() as (once, every):
        def run_twice() -> None:
            asyncio.run(noop())
            asyncio.run(noop())

        thread = threading.Thread(target=run_twice, name="loopwatch-offload-test")
        thread.start()
        thread.join(5)
        assert once == [] and every == []
        asyncio.run(noop())  # the same hooks, in a thread of the program's: seen
        assert len(once) == 1 and len(every) == 3


def test_what_loops_leave_behind_stays_bounded(
    registry: CollectorRegistry, loop_factory: Any
) -> None:
    from loopwatch import _handlers

    watchdog = installed_watchdog(registry)
    kept = asyncio.new_event_loop()  # still open: stays watched and probed throughout
    try:
        kept.run_until_complete(noop())
        for _ in range(300):
            loop = loop_factory()
            try:
                loop.run_until_complete(noop())
            finally:
                loop.close()
        # Nothing per closed loop is kept for long: the probes are swept by new loops and
        # the watchdog's looks, the watched loops when their table doubles or is read.
        assert len(watchdog._probes) <= 16
        assert len(_handlers._loops) <= 2 * 64
        assert [loop for loop, _ in _handlers.watched_loops()] == [kept]
        assert _handlers.watched_loops()[0][1] == threading.current_thread().name
        assert watchdog.probe_of(kept) is not None
    finally:
        kept.close()


def test_a_uvloop_loop_gets_its_probe_on_the_watchdog_thread(
    registry: CollectorRegistry,
) -> None:
    uv = pytest.importorskip("uvloop")
    watchdog = installed_watchdog(registry)
    loop = uv.new_event_loop()
    ready = threading.Event()
    loop.call_soon(ready.set)
    before = time.monotonic()
    thread = threading.Thread(target=loop.run_forever, name="uv-service")
    thread.start()
    try:
        assert ready.wait(5)
        deadline = time.monotonic() + 5
        while watchdog.probe_of(loop) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        probe = watchdog.probe_of(loop)
        assert probe is not None and probe.c_loop
        # What the loop's thread noted at its start, not what the watchdog thread is.
        assert (probe.thread_id, probe.native_id, probe.thread_name) == (
            thread.ident, thread.native_id, "uv-service",
        )
        assert before <= probe.started_at <= time.monotonic()
        # The one handle posted at the first look has run: the frame that runs the loop.
        deadline = time.monotonic() + 5
        while probe.idle_code is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert probe.idle_code is not None
        # A restart of an adopted loop goes straight to its probe, in its thread.
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        started = probe.started_at
        loop.run_until_complete(noop())
        assert watchdog.probe_of(loop) is probe
        assert probe.started_at > started and probe.thread_id == threading.get_ident()
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
        loop.close()


def test_short_uvloop_runs_make_no_probe_and_their_notes_stay_few(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    uv = pytest.importorskip("uvloop")
    watchdog = installed_watchdog(registry)
    # The watchdog thread does not look meanwhile: the notes pile up as between two looks.
    monkeypatch.setattr(watchdog, "_adopt", lambda: None)
    noted: list[int] = []  # the number of notes after each loop
    with recorded_starts() as (_, every):
        for _ in range(300):
            loop = uv.new_event_loop()
            try:
                loop.run_until_complete(noop())
                loop.run_until_complete(noop())  # a restart adds no note
            finally:
                loop.close()
            noted.append(len(watchdog._starts))
        assert len(every) == 600  # every start was seen by the hooks
    # One note per new loop, none per restart, until a start finds many and drops those of
    # closed loops: they stay few however many loops come and go between two looks.
    assert noted[:10] == list(range(1, 11))
    assert max(noted) <= 64 and noted.index(max(noted)) < 100 and noted[-1] < max(noted)
    assert not any(p.c_loop for p in watchdog._active)
    monkeypatch.undo()
    watchdog._adopt()
    assert not watchdog._starts and not any(p.c_loop for p in watchdog._active)


def test_a_uvloop_loops_restarts_call_no_hook_until_the_watchdog_looks(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    uv = pytest.importorskip("uvloop")
    watchdog = installed_watchdog(registry)
    monkeypatch.setattr(watchdog, "_adopt", lambda: None)  # the watchdog does not look yet
    (hook,) = _runtime.loop_start_hooks  # the watchdog's, the only one
    calls: list[Any] = []

    def counted(loop: Any) -> Any:
        calls.append(loop)
        return hook(loop)

    _runtime.loop_start_hooks[0] = counted
    loop = uv.new_event_loop()
    try:
        for _ in range(5):
            loop.run_until_complete(noop())
        assert calls == [loop]  # the first start noted it; the restarts needed nothing
        # The watchdog looks: the probe is made, and the next restart reaches it.
        monkeypatch.undo()
        watchdog._adopt()
        probe = watchdog.probe_of(loop)
        assert probe is not None
        started = probe.started_at
        loop.run_until_complete(noop())
        assert calls == [loop, loop] and probe.started_at > started
        # A stdlib loop's probe restarts at each of asyncio.run's three starts.
        calls.clear()
        asyncio.run(noop())
        assert len(calls) == 3 and len(set(map(id, calls))) == 1
    finally:
        _runtime.loop_start_hooks[0] = hook
        loop.close()


def test_uninstall_leaves_no_watchdog_alive_in_the_loop_start_state(
    registry: CollectorRegistry,
) -> None:
    uv = pytest.importorskip("uvloop")
    watchdog = installed_watchdog(registry)
    loop = uv.new_event_loop()
    try:
        loop.run_until_complete(noop())  # noted: the hook runner keeps the note
        watchdog._adopt()  # the note now holds the probe, which holds the watchdog
        loop.run_until_complete(noop())  # runs the callback the look posted
        assert watchdog.probe_of(loop) is not None
        gone = weakref.ref(watchdog)
        del watchdog
        loopwatch.uninstall()
        gc.collect()
        assert gone() is None
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["stdlib", "uvloop"])
def test_many_loops_open_at_once_cost_each_new_loop_a_constant_share(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, kind: str,
) -> None:
    # A start that finds many probes (stdlib) or notes (uvloop) drops those of closed loops.
    # With every loop still open nothing can be dropped: the next sweep must wait until
    # they have doubled, not come again at the next start.
    if kind == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    else:
        factory = asyncio.new_event_loop
    watchdog = installed_watchdog(registry)
    monkeypatch.setattr(watchdog, "_adopt", lambda: None)  # no look meanwhile
    real_open = _watchdog._open
    checked = [0]

    def counted(loop: Any) -> bool:
        checked[0] += 1
        return real_open(loop)

    monkeypatch.setattr(_watchdog, "_open", counted)
    loops = []
    try:
        for _ in range(150):
            loop = factory()
            loops.append(loop)
            loop.run_until_complete(noop())
        # A sweep at every start past the first few would have checked about 10,000.
        assert 0 < checked[0] < 3 * 150
    finally:
        for loop in loops:
            loop.close()


def test_a_block_names_the_thread_its_loop_ran_in(loop_factory: Any) -> None:
    # The probe notes the thread's id at the start; the name is looked up for the report.
    async def block() -> None:
        time.sleep(0.3)

    with capture_incidents(block_threshold=0.1) as seen:
        def run() -> None:
            loop = loop_factory()
            try:
                loop.run_until_complete(block())
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="billing-loop")
        thread.start()
        thread.join(10)
    blocks = [i for i in seen if i.kind == "blocked_loop"]
    assert [i.thread for i in blocks] == ["billing-loop"]
    assert _runtime.thread_name(thread.ident or 0) == f"thread {thread.ident}"  # ended
