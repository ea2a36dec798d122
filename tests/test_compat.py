"""Canaries: every private or version-specific touch in ``loopwatch._compat`` still works.

Each test exercises one function of the compat layer against the real runtime (asyncio,
uvloop, prometheus_client, nest_asyncio). When an upgrade removes or changes what a
function relies on, the canary of that function fails, with its name in the test id.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import selectors
import subprocess
import sys
import threading
from collections import deque
from typing import Any

import pytest
from helpers import uvloop
from prometheus_client import CollectorRegistry, Counter, Histogram

from loopwatch._compat import asyncio as aio
from loopwatch._compat import cpython, prometheus
from loopwatch._compat import uvloop as uvl

pytestmark = pytest.mark.core


def run(coro: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# -- asyncio -------------------------------------------------------------------------------


def test_running_loop_get_and_set() -> None:
    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        seen = aio.get_running_loop()
        aio.set_running_loop(None)
        gone = aio.get_running_loop()
        aio.set_running_loop(loop)
        return seen is loop, gone

    assert run(main()) == (True, None)
    assert aio.get_running_loop() is None


def test_enter_and_leave_task() -> None:
    async def main() -> tuple[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        aio.leave_task(loop, me)
        left = asyncio.current_task()
        other = loop.create_task(asyncio.sleep(0))
        aio.enter_task(loop, other)
        entered = asyncio.current_task()
        aio.leave_task(loop, other)
        aio.enter_task(loop, me)
        await other
        return left, entered is other, asyncio.current_task() is me

    assert run(main()) == (None, True, True)


def test_loop_iteration_internals() -> None:
    assert aio.BASE_RUN_ONCE is not None
    loop = asyncio.new_event_loop()
    try:
        assert aio.can_drive(loop)
        assert isinstance(aio.ready_queue(loop), deque)
        assert aio.is_stopping(loop) is False
        assert aio.current_handle(loop) is None
        assert isinstance(aio.loop_selector(loop), selectors.BaseSelector)
        assert aio.loop_thread_id(loop) is None

        ran: list[int] = []

        async def main() -> None:
            ran.append(aio.loop_thread_id(asyncio.get_running_loop()) or 0)
            aio.set_stopping(asyncio.get_running_loop(), False)
            handle = asyncio.get_running_loop().call_soon(ran.append, 2)
            assert handle in aio.ready_queue(asyncio.get_running_loop())
            aio.run_once(asyncio.get_running_loop())  # the nested iteration runs it

        loop.run_until_complete(main())
        assert ran == [threading.get_ident(), 2]
    finally:
        loop.close()


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
def test_uvloop_cannot_be_driven() -> None:
    loop = uvloop.new_event_loop()  # type: ignore[union-attr]
    try:
        assert not aio.can_drive(loop)
        assert aio.loop_selector(loop) is None
    finally:
        loop.close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_runner_loop() -> None:
    runner = asyncio.Runner()
    assert aio.runner_loop(runner) is None
    assert not aio.runner_has_open_loop(runner)
    runner.run(asyncio.sleep(0))
    assert isinstance(aio.runner_loop(runner), asyncio.AbstractEventLoop)
    assert aio.runner_has_open_loop(runner)
    runner.close()
    assert not aio.runner_has_open_loop(runner)


def test_task_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("canary", default="")

    async def main() -> str:
        var.set("mine")
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        context = aio.task_context(task)
        await task
        assert context is not None
        return context[var]

    assert run(main()) == "mine"


def test_await_flag_exists_and_clears() -> None:
    async def main() -> bool:
        fut = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        assert hasattr(task, "_asyncio_future_blocking")
        fut._asyncio_future_blocking = True
        aio.clear_await_flag(task)
        task.cancel()
        return True

    assert run(main())


def test_foreign_loop_errors_are_recognised() -> None:
    other = asyncio.new_event_loop()
    try:
        foreign = other.create_future()

        async def await_foreign() -> None:
            await foreign

        with pytest.raises(RuntimeError) as future_error:
            run(await_foreign())
        assert aio.is_foreign_loop_error(future_error.value)

        event = asyncio.Event()

        async def wait_briefly() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), 0.01)

        run(wait_briefly())  # binds the event to that loop
        with pytest.raises(RuntimeError) as bound_error:
            run(wait_briefly())
        assert aio.is_foreign_loop_error(bound_error.value)
    finally:
        other.close()
    assert not aio.is_foreign_loop_error(RuntimeError("something else"))
    assert not aio.is_foreign_loop_error(ValueError("attached to a different loop"))


def test_unawaited_hook_is_where_cpython_calls_it() -> None:
    hook = aio.unawaited_hook()
    assert callable(hook)
    called: list[Any] = []
    try:
        aio.set_unawaited_hook(called.append)

        async def dropped() -> None:
            pass

        dropped()  # dropped on purpose: CPython calls the hook
        assert len(called) == 1
    finally:
        aio.set_unawaited_hook(hook)  # type: ignore[arg-type]
    for coro in called:
        coro.close()


# -- CPython -------------------------------------------------------------------------------


def test_thread_stacks_and_frames() -> None:
    frames = cpython.current_frames()
    assert frames[threading.get_ident()].f_code.co_name == "test_thread_stacks_and_frames"
    assert cpython.getframe(0).f_code.co_name == "test_thread_stacks_and_frames"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="own-GIL subinterpreters are 3.12+")
def test_interpreters_are_listed() -> None:
    # frames_unreadable() counts the interpreters of the process with list_all().
    module = next(
        (m for m in ("_interpreters", "_xxsubinterpreters") if importlib.util.find_spec(m)), None
    )
    if module is None:
        pytest.skip("built without subinterpreters")
    listed = __import__(module).list_all()
    assert len(listed) == 1  # the main interpreter only
    assert cpython.FRAMES_UNSAFE_WITH_SUBINTERPRETERS


# -- uvloop --------------------------------------------------------------------------------


@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
def test_uvloop_recognised_and_its_errors() -> None:
    loop = uvloop.new_event_loop()  # type: ignore[union-attr]
    try:
        assert uvl.is_uvloop(loop)
        assert uvl.loop_class() is uvloop.Loop  # type: ignore[union-attr]

        async def inner() -> None:
            pass

        async def main() -> str:
            coro = inner()
            try:
                asyncio.get_running_loop().run_until_complete(coro)
            except RuntimeError as exc:
                return str(exc)
            finally:
                coro.close()
            return ""

        assert loop.run_until_complete(main()) == str(uvl.already_running_error(loop))
    finally:
        loop.close()
    assert not uvl.is_uvloop(object())


# -- prometheus_client ---------------------------------------------------------------------


def test_prometheus_internals() -> None:
    registry = CollectorRegistry()
    counter = Counter("canary_total", "c", ["a", "b"], registry=registry)
    assert prometheus.registered(registry, "canary_total") is counter
    assert prometheus.label_names(counter) == ("a", "b")
    assert prometheus.label_values(counter.labels("x", "y")) == ("x", "y")
    assert prometheus.exposed_name(counter) == "canary_total"
    histogram = Histogram("canary_seconds", "h", ["h"], buckets=(0.1, 1.0), registry=registry)
    fast = prometheus.fast_observe(histogram.labels("a"))
    assert fast is not histogram.labels("a").observe  # the shortcut applies
    fast(0.5)
    assert registry.get_sample_value("canary_seconds_bucket", {"h": "a", "le": "1.0"}) == 1
    assert prometheus.bucket_bounds(histogram) == (0.1, 1.0, float("inf"))


# -- nest_asyncio --------------------------------------------------------------------------


def test_nest_asyncio_marks_what_it_patched() -> None:
    pytest.importorskip("nest_asyncio")
    code = (
        "import asyncio, nest_asyncio\n"
        "from loopwatch._compat import nest\n"
        "assert not nest.patched(asyncio)\n"
        "loop = asyncio.new_event_loop()\n"
        "nest_asyncio.apply(loop)\n"
        "assert nest.patched(asyncio)\n"
        "assert nest.patched(type(loop))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
