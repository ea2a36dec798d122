"""One model of stalls: a thread that waits for a nested call is one incident, counted once.

Each test is a small real program (real threads, real loops, uvloop where it matters) that
checks one promise about a stall: a call that can still finish is not cut short, a stall
is not reported again as a blocked loop, every user call is counted (whatever the loop it
runs), the "still running" lines go through the folding, structured log sink, and
``run_forever`` aimed at a loop running in another thread fails at once, as asyncio does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import run_on
from prometheus_client import CollectorRegistry

from loopwatch.testing import capture_incidents

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

pytestmark = pytest.mark.core


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when none)."""
    found = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found += s.value
    return found


# -- 1. an offloaded call another thread completes is not cut short ------------------------


@pytest.mark.timeout(30)
def test_offload_waits_for_a_future_that_another_thread_completes(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    # A C client library's I/O thread completes the caller's future through
    # call_soon_threadsafe: the classic callback bridge. Nothing on the worker's loop is
    # busy meanwhile, yet the call is fine and must get its answer.
    def bridge(delay: float) -> Any:
        async def call() -> int:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[int] = loop.create_future()

            def io_thread() -> None:
                time.sleep(delay)
                # A call given up on has closed its loop: nothing left to complete.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(future.set_result, 42)

            threading.Thread(target=io_thread, name="client-io", daemon=True).start()
            return await future

        return asyncio.run(call())

    async def main() -> int:
        result: int = bridge(2.0)
        return result

    with capture_incidents(registry=registry, on_reentry="offload", offload_timeout=20) as seen:
        assert run_on(loop_factory, main()) == 42
    assert [(i.action, i.detail["result"]) for i in seen] == [("offloaded", "returned")]
    assert total(registry, "loopwatch_reentry_total", action="offloaded") == 1


# -- 2. a stall is not counted again as a blocked loop -------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("policy", ["reenter", "auto"])
def test_a_library_loop_run_nested_is_one_incident_not_also_a_block(
    loop_factory: LoopFactory, registry: CollectorRegistry, policy: str
) -> None:
    async def main() -> None:
        own = asyncio.new_event_loop()  # a library's own loop, run from sync code
        try:
            own.run_until_complete(asyncio.sleep(0.6))
        finally:
            own.close()
        # Let the outer loop go back to its wait (and the watchdog look) before checking.
        await asyncio.sleep(0.4)

    with capture_incidents(
        registry=registry, on_reentry=policy, block_threshold=0.1
    ) as seen:
        run_on(loop_factory, main())
    kinds = [(i.kind, i.action) for i in seen]
    assert kinds == [("reentry", "nested")], kinds
    assert total(registry, "loopwatch_event_loop_blocks_total") == 0
    assert total(registry, "loopwatch_reentry_stall_seconds_count") == 1


@pytest.mark.timeout(30)
def test_stalls_one_after_another_are_not_a_block(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    # A sync client called in a loop: five short offloaded calls hold the loop in a row.
    # Together they fill the block; each is reported on its own, the block not at all.
    async def main() -> None:
        for _ in range(5):
            asyncio.run(asyncio.sleep(0.15))
        await asyncio.sleep(0.3)

    with capture_incidents(registry=registry, on_reentry="offload", block_threshold=0.1) as seen:
        run_on(loop_factory, main())
    assert [(i.kind, i.action) for i in seen] == [("reentry", "offloaded")] * 5
    assert total(registry, "loopwatch_event_loop_blocks_total") == 0
    assert total(registry, "loopwatch_reentry_stall_seconds_count") == 5


@pytest.mark.timeout(30)
def test_a_block_inside_a_reentrant_run_is_still_a_block(registry: CollectorRegistry) -> None:
    # Re-entered, the loop keeps running: what blocks it inside the nested coroutine is a
    # block of that loop like any other, reported as one (the re-entry is reported too).
    async def blocks() -> None:
        time.sleep(0.5)

    async def main() -> None:
        asyncio.run(blocks())
        await asyncio.sleep(0.3)

    with capture_incidents(registry=registry, on_reentry="reenter", block_threshold=0.1) as seen:
        run_on(asyncio.new_event_loop, main())
    kinds = sorted((i.kind, i.action) for i in seen)
    assert kinds == [("blocked_loop", ""), ("reentry", "reentered")], kinds
    assert total(registry, "loopwatch_event_loop_blocks_total") == 1


# -- 3. every user call is counted, whatever the loop object -------------------------------


class SyncClient:
    """A sync client keeping one private loop for its life, as many SDKs do."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()

    async def _fetch(self, n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    def fetch(self, n: int) -> int:
        return self._loop.run_until_complete(self._fetch(n))

    def close(self) -> None:
        self._loop.close()


@pytest.mark.parametrize("policy", ["reenter", "auto"])
def test_each_call_of_a_client_keeping_its_loop_is_counted(
    loop_factory: LoopFactory, registry: CollectorRegistry, policy: str
) -> None:
    async def main() -> list[int]:
        client = SyncClient()
        try:
            return [client.fetch(n) for n in range(5)]
        finally:
            client.close()

    with capture_incidents(registry=registry, on_reentry=policy) as seen:
        assert run_on(loop_factory, main()) == [0, 2, 4, 6, 8]
    # Only the re-entries: on a loaded machine the process can be kept off the CPU long
    # enough for a blocked-loop incident of its own (seen once in CI, 279 ms between calls).
    assert [i.action for i in seen if i.kind == "reentry"] == ["nested"] * 5
    assert total(registry, "loopwatch_reentry_total", action="nested") == 5
    assert total(registry, "loopwatch_reentry_stall_seconds_count") == 5


LIBRARY = '''
import asyncio


def serve(work):
    """Like aiohttp's run_app: one call runs its own loop three times (setup, run, cleanup)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        result = loop.run_until_complete(work())
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result
    finally:
        loop.close()
'''


def test_one_library_call_that_runs_its_loop_three_times_is_counted_once(
    tmp_path: Path, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The library is installed like any other (under site-packages), so its frames are not
    # the user's: the user made one call, which ran the library's loop three times.
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "threeruns.py").write_text(LIBRARY)
    monkeypatch.syspath_prepend(str(site))
    import threeruns

    async def work() -> str:
        return "served"

    async def main() -> list[str]:
        return [threeruns.serve(work), threeruns.serve(work)]

    try:
        with capture_incidents(registry=registry, on_reentry="reenter") as seen:
            assert run_on(asyncio.new_event_loop, main()) == ["served", "served"]
    finally:
        sys.modules.pop("threeruns", None)
    assert [i.action for i in seen] == ["nested", "nested"]  # two user calls, two incidents
    assert total(registry, "loopwatch_reentry_total", action="nested") == 2
    assert total(registry, "loopwatch_reentry_stall_seconds_count") == 2


# -- 7. the "still running" lines go through the log sink ----------------------------------


def _stall_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "loopwatch" and text in r.getMessage()]


@pytest.mark.timeout(40)
def test_stall_lines_are_folded_per_site_and_structured(
    caplog: pytest.LogCaptureFixture, registry: CollectorRegistry
) -> None:
    def sync_helper() -> None:
        asyncio.run(asyncio.sleep(1.3))  # the same line, three times

    async def main() -> None:
        for _ in range(3):
            sync_helper()

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        with capture_incidents(registry=registry, on_reentry="offload"):
            run_on(asyncio.new_event_loop, main())
    lines = _stall_lines(caplog, "has run on a worker thread")
    # One line as it happened; at uninstall the sink's flush says the other two were folded.
    assert len(lines) == 2, [r.getMessage() for r in lines]
    assert lines[1].loopwatch["folded"] == 2  # type: ignore[attr-defined]
    assert "(+2 folded since the last line)" in lines[1].getMessage()
    data = lines[0].loopwatch  # type: ignore[attr-defined]
    assert data["api"] == "asyncio.run" and data["detail"]["in_progress"] == "true"
    assert data["site"]["function"] == "sync_helper"
    # Metrics count every occurrence: three calls, three stalls.
    assert total(registry, "loopwatch_reentry_stall_seconds_count") == 3


@pytest.mark.timeout(30)
def test_a_nested_library_loop_line_is_structured(
    caplog: pytest.LogCaptureFixture, registry: CollectorRegistry
) -> None:
    async def main() -> None:
        own = asyncio.new_event_loop()
        try:
            own.run_until_complete(asyncio.sleep(1.3))
        finally:
            own.close()

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        with capture_incidents(registry=registry, on_reentry="reenter"):
            run_on(asyncio.new_event_loop, main())
    (line,) = _stall_lines(caplog, "has run its own event loop on this thread")
    data = line.loopwatch  # type: ignore[attr-defined]
    assert data["api"] == "loop.run_until_complete" and data["site"]["function"] == "main"
    assert line.threadName != "MainThread" or data["thread"] == "MainThread"


SCRIPT = '''
import asyncio, loopwatch

loopwatch.install(on_reentry="offload")

async def main():
    asyncio.run(asyncio.sleep(1.3))

asyncio.run(main())
'''


@pytest.mark.timeout(40)
def test_stall_line_in_json_mode_carries_the_loopwatch_object(tmp_path: Path) -> None:
    script = tmp_path / "stall.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "LOOPWATCH_LOG_FORMAT": "json"}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    (stall,) = [r for r in records if "has run on a worker thread" in r["message"]]
    assert stall["loopwatch"]["api"] == "asyncio.run"
    assert stall["loopwatch"]["site"]["function"] == "main"
    assert stall["loopwatch"]["detail"]["in_progress"] == "true"


@pytest.mark.timeout(30)
def test_a_loop_marshalling_to_another_loop_is_one_stall_said_while_it_lasts(
    loop_factory: LoopFactory, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # H2 from a thread running a loop of its own: that loop waits for the marshalled call.
    # One cross_thread_run with the stall's duration, a line while it lasts, no block.
    owner = asyncio.new_event_loop()
    ready = threading.Event()
    owner.call_soon(ready.set)
    thread = threading.Thread(target=owner.run_forever, name="owner", daemon=True)

    async def on_owner() -> str:
        await asyncio.sleep(1.3)
        return "done there"

    async def main() -> str:
        result: str = owner.run_until_complete(on_owner())
        await asyncio.sleep(0.3)
        return result

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        with capture_incidents(registry=registry, block_threshold=0.1) as seen:
            thread.start()
            assert ready.wait(5)
            try:
                assert run_on(loop_factory, main()) == "done there"
            finally:
                owner.call_soon_threadsafe(owner.stop)
                thread.join(5)
                owner.close()
    assert [(i.kind, i.action) for i in seen] == [("cross_thread_run", "marshalled")]
    assert seen[0].duration is not None and seen[0].duration >= 1.2
    assert total(registry, "loopwatch_event_loop_blocks_total") == 0
    (line,) = _stall_lines(caplog, "for the loop of another thread")
    assert line.loopwatch["api"] == "loop.run_until_complete"  # type: ignore[attr-defined]


# -- H2: run_forever from a plain thread on a loop running elsewhere ----------------------


@pytest.mark.timeout(20)
def test_run_forever_on_a_loop_running_in_another_thread_raises_at_once(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loop = loop_factory()
    started = threading.Event()
    loop.call_soon(started.set)
    owner = threading.Thread(target=loop.run_forever, name="owner", daemon=True)
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            loop.run_forever()
            outcome.append(None)
        except BaseException as exc:  # what the caller gets, whatever it is
            outcome.append(exc)

    with capture_incidents(registry=registry) as seen:
        owner.start()
        assert started.wait(5)
        caller = threading.Thread(target=call, name="caller", daemon=True)
        began = time.monotonic()
        caller.start()
        caller.join(3)
        waited = time.monotonic() - began
        loop.call_soon_threadsafe(loop.stop)
        owner.join(5)
        caller.join(5)
    loop.close()
    assert waited < 2.0, "run_forever() waited for the loop of another thread to stop"
    (error,) = outcome
    assert isinstance(error, RuntimeError) and "already running" in str(error)
    assert [(i.kind, i.api, i.action) for i in seen] == [
        ("cross_thread_run", "loop.run_forever", "raised")
    ]
    assert seen[0].thread == "caller"
