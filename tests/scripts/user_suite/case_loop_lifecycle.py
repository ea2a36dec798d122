"""Loops, tasks and threads a test creates are gone when the test is done with them."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref

import pytest


def test_closed_loop_is_freed() -> None:
    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None


def test_loop_of_asyncio_run_is_freed() -> None:
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        refs.append(weakref.ref(asyncio.get_running_loop()))

    for _ in range(20):
        asyncio.run(main())
    gc.collect()
    assert [r for r in refs if r() is not None] == []


def test_finished_task_and_coroutine_are_freed() -> None:
    refs: list[weakref.ref[object]] = []

    async def work() -> int:
        return 1

    async def main() -> None:
        task = asyncio.create_task(work())
        refs.append(weakref.ref(task))
        assert await task == 1

    asyncio.run(main())
    gc.collect()
    assert refs[0]() is None


@pytest.mark.asyncio
async def test_no_thread_left_behind() -> None:
    before = set(threading.enumerate())
    if sys.version_info >= (3, 11):
        # Cleanup code that closes a runner it never used, while the test's loop runs.
        asyncio.Runner().close()
    loop = asyncio.new_event_loop()
    loop.close()
    await asyncio.sleep(0)
    assert set(threading.enumerate()) == before


def test_running_a_closed_loop_raises_and_logs_nothing(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_forever()
    assert caplog.records == []
    assert capfd.readouterr().err == ""
