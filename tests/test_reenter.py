"""The ``reenter`` policy in plain Python: the re-entrant runner and the public path.

Each test starts a loop with ``asyncio.run`` and makes the nested call from synchronous
code inside it, as a notebook cell or a sync SDK does. Every outer run checks that no task
is left pending and that the loop's exception handler saw nothing; the suite runs with
``-W error``, so a warning fails the test too.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest

import loopwatch
from loopwatch import _nested as _reenter
from loopwatch._nested import can_reenter, run_reentrant
from loopwatch.testing import capture_incidents, fresh_registry

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, or a build without the extra
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")

pytestmark = pytest.mark.core  # run on every supported Python

needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
var: contextvars.ContextVar[str] = contextvars.ContextVar("test_reenter_var", default="unset")


def run_outer(main: Callable[[], Coroutine[Any, Any, T]], *, debug: bool = False) -> T:
    """Run ``main()`` as the outer program; fail if it leaves a task or an error behind."""
    errors: list[dict[str, Any]] = []

    async def outer() -> T:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        result = await main()
        # Let cancellations scheduled by the nested runs settle before looking.
        for _ in range(3):
            await asyncio.sleep(0)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert left == set(), f"tasks left pending: {left}"
        return result

    result = asyncio.run(outer(), debug=debug)
    assert errors == [], f"the loop's exception handler was called: {errors}"
    return result


def nested(awaitable: Any, *, cleanup: bool = False) -> Any:
    """What the core does for a re-entrant call under ``reenter``."""
    return run_reentrant(asyncio.get_running_loop(), awaitable, cleanup=cleanup)


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


# -- the runner, called directly -----------------------------------------------------------


def test_result_current_task_and_running_loop_before_inside_after() -> None:
    async def inner() -> tuple[asyncio.Task[Any] | None, asyncio.AbstractEventLoop]:
        await asyncio.sleep(0)
        return asyncio.current_task(), asyncio.get_running_loop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        inside_task, inside_loop = nested(inner())
        assert inside_loop is loop
        assert inside_task is not None and inside_task is not me
        assert inside_task.done()
        assert asyncio.current_task() is me
        assert asyncio._get_running_loop() is loop
        assert await double(4) == 8  # the outer task keeps running ordinary code

    run_outer(main)


def test_keeps_the_c_task() -> None:
    async def inner() -> type:
        return type(asyncio.current_task())

    async def main() -> None:
        assert nested(inner()) is asyncio.Task
        assert asyncio.Task is type(asyncio.current_task())

    run_outer(main)
    if hasattr(asyncio.tasks, "_CTask"):
        assert asyncio.Task is asyncio.tasks._CTask


def test_two_levels_deep() -> None:
    async def level2() -> str:
        await asyncio.sleep(0.001)
        return "deep"

    async def level1() -> tuple[str, bool]:
        me = asyncio.current_task()
        value = nested(level2())
        return value, asyncio.current_task() is me

    async def main() -> None:
        me = asyncio.current_task()
        assert nested(level1()) == ("deep", True)
        assert asyncio.current_task() is me

    run_outer(main)


def test_future_of_the_outer_loop_passed_to_a_nested_run() -> None:
    async def main() -> None:
        future = asyncio.ensure_future(double(21))
        assert nested(future) == 42
        assert future.done()

    run_outer(main)


def test_task_from_earlier_awaited_by_a_nested_coroutine() -> None:
    async def main() -> None:
        earlier = asyncio.ensure_future(double(5))  # like a task from a previous cell

        async def uses_it() -> int:
            return await earlier + 1

        assert nested(uses_it(), cleanup=True) == 11

    run_outer(main)


def test_asyncio_wait_of_outer_tasks_inside_a_nested_run() -> None:
    async def main() -> None:
        outer_tasks = {asyncio.ensure_future(double(i)) for i in range(3)}

        async def waits() -> set[int]:
            done, pending = await asyncio.wait(outer_tasks)
            assert pending == set()
            return {t.result() for t in done}

        assert nested(waits()) == {0, 2, 4}

    run_outer(main)


def test_lock_of_the_outer_loop_released_by_an_outer_task() -> None:
    async def main() -> None:
        lock = asyncio.Lock()
        await lock.acquire()

        async def release_soon() -> None:
            await asyncio.sleep(0.001)
            lock.release()

        releaser = asyncio.ensure_future(release_soon())

        async def take() -> bool:
            async with lock:
                return True

        assert nested(take(), cleanup=True) is True
        await releaser

    run_outer(main)


def test_wait_for_timeout_raises_and_cancels_the_slow_coroutine() -> None:
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        me = asyncio.current_task()
        with pytest.raises(asyncio.TimeoutError):
            nested(asyncio.wait_for(slow(), 0.01), cleanup=True)
        assert cancelled == [True]
        assert asyncio.current_task() is me

    run_outer(main)


def test_two_nested_runs_inside_one_gather() -> None:
    async def step(n: int) -> tuple[int, bool]:
        me = asyncio.current_task()
        value = nested(double(n), cleanup=True)
        await asyncio.sleep(0)
        return value, asyncio.current_task() is me

    async def main() -> None:
        assert list(await asyncio.gather(step(1), step(2))) == [(2, True), (4, True)]

    run_outer(main)


def test_context_variables_set_in_the_nested_run_are_visible_after() -> None:
    async def sets() -> None:
        await asyncio.sleep(0)
        var.set("from nested")

    async def main() -> None:
        var.set("before")
        nested(sets(), cleanup=True)
        assert var.get() == "from nested"
        # the runner's own bookkeeping does not leak into the caller's context
        assert _reenter._current_run.get() is None

    run_outer(main)


def test_context_is_a_copy_inside_like_any_task() -> None:
    async def reads() -> str:
        return var.get()

    async def main() -> None:
        var.set("outer value")
        assert nested(reads()) == "outer value"

    run_outer(main)


def test_exception_inside_leaves_running_loop_and_current_task_exactly() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        with pytest.raises(ValueError, match="boom"):
            nested(fails(), cleanup=True)
        assert asyncio._get_running_loop() is loop
        assert asyncio.current_task() is me
        assert await double(1) == 2

    run_outer(main)


def test_interrupt_escaping_the_nested_iteration_restores_state() -> None:
    """A KeyboardInterrupt from a callback leaves the loop's own iteration, not a task."""
    reached = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    async def never() -> None:
        asyncio.get_running_loop().call_soon(interrupt)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reached.append("cancelled")
            raise

    async def main() -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        with pytest.raises(KeyboardInterrupt):
            nested(never(), cleanup=True)
        assert asyncio._get_running_loop() is loop
        assert asyncio.current_task() is me
        await asyncio.sleep(0)  # the abandoned nested task finishes its cancellation
        assert reached == ["cancelled"]

    run_outer(main)


@pytest.mark.parametrize("cleanup", [True, False])
def test_interrupt_before_the_nested_coroutine_started(cleanup: bool) -> None:
    """With cleanup it is cancelled and its coroutine closed, not left to warn that it was
    never awaited (-W error); without, it stays scheduled, as run_until_complete leaves it.
    """
    started = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    async def never() -> None:
        started.append(True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        loop.call_soon(interrupt)  # runs before the nested task's first step
        with pytest.raises(KeyboardInterrupt):
            nested(never(), cleanup=cleanup)
        assert asyncio._get_running_loop() is loop
        assert asyncio.current_task() is me

    run_outer(main)
    assert started == ([] if cleanup else [True])


def test_running_loop_restored_when_nested_code_clears_it() -> None:
    """The stdlib can clear the running loop by mistake (CPython gh-130145)."""

    async def clears() -> None:
        await asyncio.sleep(0)
        asyncio.events._set_running_loop(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        nested(clears())
        assert asyncio._get_running_loop() is loop
        assert await double(3) == 6

    run_outer(main)


def test_running_loop_state_restored_exactly_even_when_it_was_wrong() -> None:
    """Whatever the running loop was on entry is what it is on exit (here: cleared)."""
    states: list[Any] = []

    async def inner() -> Any:
        return asyncio.get_running_loop()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def callback() -> None:
            asyncio.events._set_running_loop(None)
            try:
                states.append(run_reentrant(loop, inner(), cleanup=False) is loop)
                states.append(asyncio._get_running_loop())
            finally:
                asyncio.events._set_running_loop(loop)

        loop.call_soon(callback)
        await asyncio.sleep(0.01)

    run_outer(main)
    assert states == [True, None]


def test_cleanup_cancels_tasks_the_nested_run_left_but_not_outer_ones() -> None:
    started: list[asyncio.Task[Any]] = []
    outer_made: list[asyncio.Task[Any]] = []

    async def forever() -> None:
        await asyncio.sleep(30)

    async def spawns() -> None:
        started.append(asyncio.ensure_future(forever()))
        await asyncio.sleep(0.001)

    async def main() -> None:
        gate = asyncio.Event()

        async def outer_spawner() -> None:
            # runs while the nested run drives the loop; its task is not the nested run's
            await asyncio.sleep(0)
            outer_made.append(asyncio.ensure_future(gate.wait()))

        spawner = asyncio.ensure_future(outer_spawner())
        nested(spawns(), cleanup=True)
        assert started[0].cancelled()
        assert len(outer_made) == 1 and not outer_made[0].done()
        gate.set()
        await spawner
        await outer_made[0]

    run_outer(main)


def test_without_cleanup_tasks_started_inside_keep_running() -> None:
    started: list[asyncio.Task[Any]] = []

    async def spawns() -> None:
        started.append(asyncio.ensure_future(double(7)))

    async def main() -> None:
        nested(spawns(), cleanup=False)
        assert not started[0].done()
        assert await started[0] == 14

    run_outer(main)


def test_cleanup_closes_async_generators_started_inside() -> None:
    closed = []

    async def numbers() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def takes_one() -> int:
        agen = numbers()
        value = await agen.__anext__()
        leaked.append(agen)  # still referenced: only the cleanup can close it
        return value

    leaked: list[Any] = []

    async def main() -> None:
        assert nested(takes_one(), cleanup=True) == 1
        assert closed == [True]

    run_outer(main)


def test_stop_during_the_nested_run_stops_the_outer_run_after_it() -> None:
    loop = asyncio.new_event_loop()
    seen: list[Any] = []

    async def stops_then_finishes() -> str:
        loop.stop()  # meant for the run_forever below
        await asyncio.sleep(0)
        # held back while nested: a set flag would make every nested iteration poll
        # without waiting (a busy loop) until the nested run ends
        seen.append(loop._stopping)  # type: ignore[attr-defined]
        await asyncio.sleep(0.001)
        return "finished"

    def callback() -> None:
        seen.append(run_reentrant(loop, stops_then_finishes(), cleanup=True))

    try:
        loop.call_soon(callback)
        loop.run_forever()
        assert seen == [False, "finished"]
        assert not loop.is_running()
        assert loop.run_until_complete(double(2)) == 4
    finally:
        loop.close()


def test_from_a_plain_callback_with_many_ready_handles() -> None:
    """The outer iteration still runs every handle it had queued, once, in order."""
    order: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()

        def callback() -> None:
            assert asyncio.current_task() is None
            order.append(run_reentrant(loop, double(50), cleanup=True))
            assert asyncio.current_task() is None

        loop.call_soon(callback)
        for i in range(10):
            loop.call_soon(order.append, i)
        await asyncio.sleep(0.01)
        assert asyncio.current_task() is me

    run_outer(main)
    # queued before the nested run, so run by it, first; each exactly once
    assert order == [*range(10), 100]


def test_debug_mode_keeps_the_current_handle() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        handle = loop._current_handle  # type: ignore[attr-defined]
        assert handle is not None
        nested(double(1))
        assert loop._current_handle is handle  # type: ignore[attr-defined]

    run_outer(main, debug=True)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in 3.12")
def test_eager_task_factory() -> None:
    async def inner() -> bool:
        task = asyncio.current_task()
        await asyncio.sleep(0)
        return asyncio.current_task() is task

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        me = asyncio.current_task()
        assert nested(inner(), cleanup=True) is True
        assert nested(double(3)) == 6
        assert asyncio.current_task() is me

    run_outer(main)


def test_waiting_for_the_calling_task_itself_is_refused() -> None:
    async def main() -> None:
        me = asyncio.current_task()
        with pytest.raises(RuntimeError, match="cannot wait for itself"):
            nested(me)
        assert asyncio.current_task() is me

    run_outer(main)


def test_refuses_other_threads() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []
        coro = double(1)

        def other() -> None:
            try:
                run_reentrant(loop, coro, cleanup=False)
            except RuntimeError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        coro.close()
        assert len(errors) == 1

    run_outer(main)


def test_can_reenter_only_stdlib_loops_it_can_drive() -> None:
    class OwnIteration(asyncio.SelectorEventLoop):
        def _run_once(self) -> None:
            super()._run_once()  # type: ignore[misc]

    loops = [asyncio.new_event_loop(), OwnIteration()]
    try:
        assert can_reenter(loops[0]) is True
        assert can_reenter(loops[1]) is False
        if uvloop is not None:
            uv = uvloop.new_event_loop()
            loops.append(uv)
            assert can_reenter(uv) is False
    finally:
        for loop in loops:
            loop.close()


# -- through the public path ---------------------------------------------------------------


def _patched_attributes() -> dict[str, Any]:
    found = {
        "asyncio.run": asyncio.run,
        "asyncio.runners.run": asyncio.runners.run,
        "BaseEventLoop.run_until_complete": asyncio.BaseEventLoop.__dict__["run_until_complete"],
        "BaseEventLoop.run_forever": asyncio.BaseEventLoop.__dict__["run_forever"],
    }
    if sys.version_info >= (3, 11):
        found["Runner.run"] = asyncio.Runner.__dict__["run"]
        found["Runner.close"] = asyncio.Runner.__dict__["close"]
    if uvloop is not None:
        for name in ("run_until_complete", "run_forever"):
            found[f"uvloop.Loop.{name}"] = uvloop.Loop.__dict__.get(name)
    return found


def test_public_asyncio_run_and_run_until_complete_reenter() -> None:
    async def inner() -> str:
        await asyncio.sleep(0)
        var.set("visible")
        return "inner result"

    async def main() -> None:
        me = asyncio.current_task()
        earlier = asyncio.ensure_future(double(10))

        async def needs_earlier() -> int:
            return await earlier

        assert asyncio.run(inner()) == "inner result"
        assert var.get() == "visible"
        assert asyncio.get_event_loop().run_until_complete(needs_earlier()) == 20
        assert asyncio.current_task() is me

    with capture_incidents(on_reentry="reenter", registry=fresh_registry()) as seen:
        run_outer(main)
    reentries = [i for i in seen if i.kind == "reentry"]
    assert [(i.api, i.action) for i in reentries] == [
        ("asyncio.run", "reentered"),
        ("loop.run_until_complete", "reentered"),
    ]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_public_runner_run_reenters() -> None:
    async def main() -> None:
        with asyncio.Runner() as runner:
            assert runner.run(double(8)) == 16

    with capture_incidents(on_reentry="reenter", registry=fresh_registry()) as seen:
        run_outer(main)
    assert [(i.api, i.action) for i in seen if i.kind == "reentry"] == [
        ("asyncio.Runner.run", "reentered")
    ]


def test_public_timeout_inside_reentered_asyncio_run() -> None:
    async def slow() -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(asyncio.wait_for(slow(), 0.01))

    loopwatch.install(on_reentry="reenter", registry=fresh_registry())
    run_outer(main)


@needs_uvloop
def test_public_uvloop_falls_back_to_offload_and_says_so() -> None:
    async def self_contained() -> str:
        await asyncio.sleep(0)
        return "done"

    async def main() -> str:
        return asyncio.run(self_contained())

    with capture_incidents(on_reentry="reenter", registry=fresh_registry()) as seen:
        loop = uvloop.new_event_loop()
        try:
            assert loop.run_until_complete(main()) == "done"
        finally:
            loop.close()
    reentries = [i for i in seen if i.kind == "reentry"]
    assert len(reentries) == 1
    incident = reentries[0]
    assert incident.action == "offloaded"
    assert "offloaded instead" in incident.detail["fallback"]
    assert "uvloop" in incident.detail["fallback"]


def test_offload_failure_says_what_failed_and_the_fix_for_a_service() -> None:
    async def main() -> None:
        earlier = asyncio.ensure_future(double(1))

        async def needs_earlier() -> int:
            return await earlier

        with capture_incidents() as seen:
            with pytest.raises(loopwatch.LoopwatchError, match="await it instead"):
                asyncio.run(needs_earlier())
        assert seen[0].detail["result"].startswith("failed with LoopwatchError")
        assert "ran on a worker thread" in seen[0].hint
        assert "Fix: make the caller async" in seen[0].hint
        assert "policy" not in seen[0].hint  # outside a notebook no magic is advised
        # The failed foreign await left the task flagged as awaited (CPython does not reset
        # it); loopwatch clears the flag, so the correct ``await`` works afterwards.
        assert await earlier == 2

    loopwatch.install(on_reentry="offload", registry=fresh_registry())
    run_outer(main)


def test_uninstall_after_reentrant_use_restores_the_identical_attributes() -> None:
    before = _patched_attributes()

    async def main() -> None:
        assert asyncio.run(double(2)) == 4

    loopwatch.install(on_reentry="reenter", registry=fresh_registry())
    assert _patched_attributes()["asyncio.run"] is not before["asyncio.run"]
    run_outer(main)
    loopwatch.uninstall()
    after = _patched_attributes()
    for name, original in before.items():
        assert after[name] is original, name

    # The loop still runs ordinary code, and a nested run fails as it does in plain asyncio.
    async def ordinary() -> None:
        assert await double(3) == 6
        coro = double(1)
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            asyncio.run(coro)
        coro.close()

    run_outer(ordinary)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(double(5)) == 10
    finally:
        loop.close()


# -- issue: tasks sharing the outer task's Context, and the ``auto`` policy -----------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="create_task(context=) is new in 3.11")
def test_a_task_sharing_the_outer_context_runs_after_the_nested_run() -> None:
    # ipykernel 7 runs every cell in one Context: a step of another task in that Context
    # cannot run while the outer step has it entered. It waits, and runs afterwards.
    async def main() -> int:
        context = contextvars.copy_context()

        async def inner() -> int:
            return 42

        async def outer() -> asyncio.Task[int]:
            task = asyncio.get_running_loop().create_task(inner(), context=context)
            assert nested(double(1)) == 2
            return task

        task = await asyncio.get_running_loop().create_task(outer(), context=context)
        assert nested(double(2)) == 4
        return await task

    assert run_outer(main) == 42


def kernel_labels() -> Any:
    """Label the work as a notebook cell's, as the IPython extension does."""
    return loopwatch.handler_context("jupyter", "cell")


def test_auto_in_a_kernel_reenters_and_runs_a_library_loop_on_this_thread() -> None:
    import signal

    async def main() -> None:
        outer = asyncio.current_task()
        running = asyncio.get_running_loop()
        earlier = asyncio.ensure_future(double(5))
        handler = signal.getsignal(signal.SIGUSR1)
        with kernel_labels():
            # a Task of the running loop (pydantic-ai's run_sync does this)
            assert running.run_until_complete(earlier) == 10
            # a library's own loop, with a signal handler as servers install
            own = asyncio.new_event_loop()
            try:
                own.add_signal_handler(signal.SIGUSR1, lambda: None)
                thread = own.run_until_complete(asyncio.to_thread(threading.get_ident))
                assert own.run_until_complete(double(3)) == 6
            finally:
                own.close()
        assert thread != threading.get_ident()
        assert asyncio.current_task() is outer and asyncio.get_running_loop() is running
        assert signal.getsignal(signal.SIGUSR1) is handler

    with capture_incidents(on_reentry="auto", registry=fresh_registry()) as seen:
        run_outer(main)
    # A loaded runner may add what the machine causes (a blocked loop, a wait for a pool
    # thread); anything else is a finding. The re-entries are the subject.
    others = [i.summary() for i in seen if i.kind != "reentry"]
    assert all(i.kind in ("blocked_loop", "threadpool_saturated") for i in seen
               if i.kind != "reentry"), others
    actions = [(i.api, i.action, i.detail["result"]) for i in seen if i.kind == "reentry"]
    # The user's code ran the library's loop twice: two calls, each reported and counted.
    assert actions == [
        ("loop.run_until_complete", "reentered", "returned"),
        ("loop.run_until_complete", "nested", "returned"),
        ("loop.run_until_complete", "nested", "returned"),
    ], actions


def test_auto_in_a_service_fails_at_once_naming_a_task_of_the_running_loop() -> None:
    async def main() -> None:
        earlier = asyncio.ensure_future(double(1), loop=asyncio.get_running_loop())
        earlier.set_name("the-earlier-task")
        with pytest.raises(loopwatch.LoopwatchError, match="the-earlier-task"):
            asyncio.get_running_loop().run_until_complete(earlier)
        assert await earlier == 2

    with capture_incidents(on_reentry="auto", registry=fresh_registry()) as seen:
        run_outer(main)
    assert [i.action for i in seen] == ["raised"]
    assert seen[0].detail["result"].startswith("failed with LoopwatchError")
    assert seen[0].duration is None  # no stall: it failed before running anything


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="3.10's asyncio.wait refuses another loop's task itself"
)
def test_offload_stops_early_when_the_coroutine_waits_for_a_task_of_the_stalled_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # asyncio.wait() of a task of the running loop: only that loop, stalled by this very
    # call, could ever complete the wait. That is proof; the call stops well short of the
    # timeout, naming the task.
    async def main() -> None:
        async def producer() -> int:
            await asyncio.sleep(0.05)
            return 7

        task = asyncio.ensure_future(producer())
        task.set_name("the-producer")
        with pytest.raises(loopwatch.LoopwatchError, match="the-producer"):
            asyncio.run(asyncio.wait([task]))
        assert await task == 7

    with capture_incidents(on_reentry="auto", registry=fresh_registry(), offload_timeout=60):
        run_outer(main)
    stalls = [r for r in caplog.records if getattr(r, "loopwatch", {}).get("action") == "offloaded"]
    assert stalls and stalls[0].loopwatch["duration"] < 10  # well short of the timeout
    assert "stopped early" in stalls[0].loopwatch["detail"]["stalled"]


def test_offload_without_proof_waits_for_the_timeout() -> None:
    # An asyncio.Queue the stalled loop would fill: nothing on the worker's loop says who
    # completes its future (another thread might), so only offload_timeout ends the wait.
    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def producer() -> None:
            await asyncio.sleep(0.05)
            queue.put_nowait(7)

        task = asyncio.ensure_future(producer())
        with pytest.raises(loopwatch.LoopwatchError, match=r"did not finish within 1\.5s"):
            asyncio.run(queue.get())
        await task

    with capture_incidents(
        on_reentry="auto", registry=fresh_registry(), offload_timeout=1.5
    ) as seen:
        run_outer(main)
    assert seen[0].detail["timeout"] == "1.5s" and "stalled" not in seen[0].detail


def test_offload_of_a_slow_thread_call_is_not_cut_short() -> None:
    import time

    async def slow() -> str:
        return await asyncio.to_thread(lambda: time.sleep(1.5) or "slow")

    async def main() -> None:
        assert asyncio.run(slow()) == "slow"

    with capture_incidents(on_reentry="auto", registry=fresh_registry()) as seen:
        run_outer(main)
    assert seen[0].detail["result"] == "returned"


def test_uvloop_hint_never_advises_reenter() -> None:
    if uvloop is None:
        pytest.skip("uvloop is not installed")
    earlier: list[asyncio.Task[int]] = []

    async def needs_earlier() -> int:
        return await earlier[0]

    async def main() -> None:
        earlier.append(asyncio.ensure_future(double(1)))
        with kernel_labels(), pytest.raises(loopwatch.LoopwatchError):
            asyncio.run(needs_earlier())
        await earlier[0]

    with capture_incidents(on_reentry="auto", registry=fresh_registry()) as seen:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    assert seen[0].action == "offloaded" and "reenter" in seen[0].detail["fallback"]
    assert "policy" not in seen[0].hint and "Fix: make the caller async" in seen[0].hint


def test_a_long_nested_library_loop_says_so_while_it_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen_during: list[bool] = []

    async def serve_a_while() -> None:
        await asyncio.sleep(1.4)
        seen_during.append(any("has run its own event loop" in r.message for r in caplog.records))

    async def main() -> None:
        own = asyncio.new_event_loop()
        try:
            own.run_until_complete(serve_a_while())
        finally:
            own.close()

    with capture_incidents(on_reentry="auto", registry=fresh_registry()):
        run_outer(main)
    assert seen_during == [True]  # the line came while the loop was still running
