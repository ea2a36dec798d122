"""Everyday pytest-asyncio tests: fixtures, tasks, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@pytest_asyncio.fixture
async def queue() -> AsyncIterator[asyncio.Queue[int]]:
    q: asyncio.Queue[int] = asyncio.Queue()
    yield q
    assert q.empty()


@pytest.mark.asyncio
async def test_producer_consumer(queue: asyncio.Queue[int]) -> None:
    async def produce() -> None:
        for i in range(100):
            await queue.put(i)

    async def consume() -> int:
        total = 0
        for _ in range(100):
            total += await queue.get()
        return total

    _, total = await asyncio.gather(produce(), consume())
    assert total == sum(range(100))


@pytest.mark.asyncio
async def test_wait_for_times_out() -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)


@pytest.mark.asyncio
async def test_cancellation_reaches_the_task() -> None:
    started = asyncio.Event()

    async def worker() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(worker())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


@pytest.mark.asyncio
async def test_context_is_copied_into_tasks() -> None:
    request_id.set("abc")

    async def read() -> str:
        return request_id.get()

    assert await asyncio.create_task(read()) == "abc"


@pytest.mark.asyncio
async def test_task_exception_is_delivered_to_awaiter() -> None:
    async def boom() -> None:
        raise KeyError("lost")

    with pytest.raises(KeyError):
        await asyncio.create_task(boom())


def test_sync_test_uses_asyncio_run() -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert asyncio.run(add(2, 3)) == 5
    assert asyncio.run(add(4, 5)) == 9
