"""Canaries for the nested-run policies' asyncio internals in ``loopwatch._compat.asyncio``.

Each fails loudly when a Python upgrade removes or changes what the nested-run policies
rely on, instead of letting them silently stop working.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import events, tasks
from collections.abc import AsyncIterator
from typing import Any

from loopwatch._compat import asyncio as compat


def test_running_loop_and_current_task_functions_exist() -> None:
    assert compat.get_running_loop is events._get_running_loop
    assert compat.set_running_loop is events._set_running_loop
    # enter_task/leave_task wrap these (their behaviour: tests/test_compat.py).
    assert callable(tasks._enter_task)
    assert callable(tasks._leave_task)


def test_handle_context_is_the_context_the_callback_runs_in() -> None:
    loop = asyncio.new_event_loop()
    try:
        context = contextvars.copy_context()
        handle = loop.call_soon(lambda: None, context=context)
        assert compat.handle_context(handle) is context
        handle.cancel()
    finally:
        loop.close()


def test_context_entered_tells_an_entered_context() -> None:
    context = contextvars.copy_context()
    assert compat.context_entered(context) is False
    assert context.run(compat.context_entered, context) is True


def test_policy_loop_reads_and_restores_the_thread_loop() -> None:
    known, before = compat.policy_loop()
    assert known, "the default policy no longer keeps the thread's loop in _local._loop"
    loop = asyncio.new_event_loop()
    try:
        compat.set_policy_loop(loop)
        assert compat.policy_loop() == (True, loop)
    finally:
        compat.set_policy_loop(before)
        loop.close()


def test_waited_future_and_proof_of_waiting_for_another_loop() -> None:
    stalled = asyncio.new_event_loop()
    loop = asyncio.new_event_loop()
    try:
        waiter = loop.create_future()

        async def waits() -> object:
            return await waiter

        task = loop.create_task(waits())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert compat.waited_future(task) is waiter
        # a future of its own loop: someone may complete it, nothing proves otherwise
        assert compat.waits_for_loop(loop, task, stalled) == ""
        waiter.set_result(1)
        loop.run_until_complete(task)

        if sys.version_info < (3, 11):
            return  # asyncio.wait() refuses a task of another loop by itself
        # asyncio.wait() of a task of the stalled loop: only that loop completes it
        other = stalled.create_task(asyncio.sleep(10))
        waiting = loop.create_task(asyncio.wait([other]))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert compat.waits_for_loop(loop, waiting, stalled) == repr(other)
        # ... unless a timer of its own loop ends the wait first
        timed = loop.create_task(asyncio.wait([other], timeout=5))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert compat.waits_for_loop(loop, waiting, stalled) == ""
        for pending in (waiting, timed):
            pending.cancel()
        loop.run_until_complete(asyncio.gather(waiting, timed, return_exceptions=True))
        other.cancel()
        stalled.run_until_complete(asyncio.gather(other, return_exceptions=True))
    finally:
        loop.close()
        stalled.close()


def test_task_waiter_reads_fut_waiter(loop_factory: Any) -> None:
    """Canary: ``Task._fut_waiter`` is what a suspended task waits on, on both loops."""
    loop = loop_factory()
    try:
        waiter = loop.create_future()

        async def waits() -> object:
            return await waiter

        task = loop.create_task(waits())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert compat.task_waiter(task) is waiter
        waiter.set_result(1)
        loop.run_until_complete(task)
        assert compat.task_waiter(task) is None
    finally:
        loop.close()


async def _innermost(event: asyncio.Event) -> None:
    await event.wait()


async def _agen(event: asyncio.Event) -> AsyncIterator[int]:
    await _innermost(event)
    yield 1


async def _through_generator(event: asyncio.Event) -> None:
    async for _ in _agen(event):
        pass


async def _outer(event: asyncio.Event) -> None:
    inner = asyncio.ensure_future(_through_generator(event))
    await inner  # the chain continues into the awaited task


def test_await_chain_is_innermost_first_through_tasks(loop_factory: Any) -> None:
    """Canary: ``cr_await``/``ag_await`` chains and an awaited task's waiter, 3.10-3.13."""
    loop = loop_factory()
    try:
        event = asyncio.Event()

        async def main() -> list[str]:
            task = asyncio.ensure_future(_outer(event))
            await asyncio.sleep(0.01)
            names = [f.f_code.co_name for f in compat.await_chain(task)]
            event.set()
            await task
            return names

        names = loop.run_until_complete(main())
        assert names == ["wait", "_innermost", "_agen", "_through_generator", "_outer"]
    finally:
        loop.close()
