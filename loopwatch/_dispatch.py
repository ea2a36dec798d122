"""What happens to an intercepted nested run: the H1 routes on this thread, H2 marshalling.

``_reentry`` patches the entry points (``asyncio.run``, ``Runner.run``,
``run_until_complete``, ``run_forever``) and hands each nested call here as a
:class:`_Call`: :func:`_same_thread` reports it and takes the route :mod:`._policy` picks
(offload, re-enter, a library's own loop nested, or the original error);
:func:`_other_thread` marshals a run aimed at a loop running in another thread to that
loop's own thread. Every route records the wait of the calling thread in :mod:`._stalls`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import (
    _context,
    _frames,
    _incidents,
    _nested,
    _offload,
    _ownloop,
    _policy,
    _runtime,
    _stalls,
)
from ._compat import asyncio as aio
from ._compat import cpython
from ._compat import uvloop as uvl
from ._errors import LoopwatchError

if TYPE_CHECKING:
    from ._monitor import Monitor

running_loop = aio.get_running_loop

API_RUN = "asyncio.run"
API_RUNNER = "asyncio.Runner.run"
API_RUC = "loop.run_until_complete"
API_FOREVER = "loop.run_forever"


class _Call:
    """One intercepted call: what was called, on what, and how to run it elsewhere."""

    __slots__ = ("api", "awaitable", "raise_original", "run_elsewhere", "target")

    def __init__(
        self,
        api: str,
        awaitable: Any,
        target: asyncio.AbstractEventLoop | None,
        run_elsewhere: Callable[[Any], Any],
        raise_original: Callable[[], Any],
    ) -> None:
        self.api = api
        self.awaitable = awaitable
        self.target = target  # the loop the caller wanted to run; None for a fresh loop
        self.run_elsewhere = run_elsewhere  # runs a (tracked) awaitable in a worker thread
        self.raise_original = raise_original  # produces the original RuntimeError


def _close(awaitable: Any) -> None:
    if isinstance(awaitable, types.CoroutineType) or asyncio.iscoroutine(awaitable):
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()


def _report(
    monitor: Monitor,
    kind: str,
    api: str,
    action: str,
    duration: float | None,
    loop: object | None,
    detail: dict[str, str] | None = None,
    stack: list[Any] | None = None,
    hint: str | None = None,
) -> None:
    monitor.report(
        kind, api=api, action=action, duration=duration, loop=loop, detail=detail,
        stack=stack, hint=hint,
    )


def _refuse(
    monitor: Monitor, call: _Call, running: asyncio.AbstractEventLoop, reason: str,
    stack: list[Any],
) -> Any:
    """A call no policy can run: report it, then fail exactly as asyncio does.

    Unlike the ``raise`` policy, the rejected coroutine is left as asyncio leaves it (its
    "never awaited" warning included): this is not a choice of the user's to be tidied.
    """
    try:
        return call.raise_original()
    except RuntimeError as exc:
        detail = {"reason": reason, "result": _policy.describe_outcome(exc)}
        hint = _incidents.reentry_hint(call.api, "raised", detail, stack, running)
        _report(monitor, "reentry", call.api, "raised", None, running, detail, stack, hint)
        raise


def _same_thread(call: _Call, running: asyncio.AbstractEventLoop) -> Any:
    """H1: a loop already runs in this thread; where the call runs is ``_policy.route``'s."""
    monitor = _runtime.active()
    if monitor is None:
        return call.raise_original()
    stack = _frames.capture_stack(2)
    policy = monitor.config.on_reentry
    if policy != "raise" and _offload.depth() >= _offload.MAX_DEPTH:
        return _refuse(
            monitor, call, running,
            f"nested more than {_offload.MAX_DEPTH} levels deep (a coroutine re-entering itself?)",
            stack,
        )
    route, fallback = _policy.route(
        policy,
        awaitable=call.awaitable,
        target=call.target,
        running=running,
        can_reenter=_nested.can_reenter(running),
        in_kernel=_policy.in_kernel(_context.current_labels().framework),
    )
    detail: dict[str, str] = {"fallback": fallback} if fallback else {}
    if route == _policy.Route.RAISE:
        try:
            return call.raise_original()
        except RuntimeError as exc:
            _close(call.awaitable)
            detail["result"] = _policy.describe_outcome(exc)
            hint = _incidents.reentry_hint(call.api, "raised", detail, stack, running)
            _report(monitor, "reentry", call.api, "raised", None, running, detail, stack, hint)
            raise
    if route == _policy.Route.REJECT:
        error = LoopwatchError(
            f"{call.api}() was given {call.awaitable!r}, a Task/Future of the loop that is already "
            f"running here; {_offload.NEEDS_OUTER_LOOP}."
        )
        detail["reason"] = "a Task/Future of the running loop"
        detail["result"] = _policy.describe_outcome(error)
        hint = _incidents.reentry_hint(call.api, "raised", detail, stack, running)
        _report(monitor, "reentry", call.api, "raised", None, running, detail, stack, hint)
        raise error
    if route == _policy.Route.OFFLOAD:
        return _offload_call(monitor, call, running, detail, stack)
    action = route
    if route == _policy.Route.NESTED:
        # A library's own loop: its later runs inside one call into the library (a server's
        # setup, serving and cleanup) are that one call, already counted.
        counted = not _stalls.continues(_library_caller())

        def run() -> Any:
            return _ownloop.run_on_this_thread(
                running, lambda: call.run_elsewhere(call.awaitable), stall
            )
    else:
        counted = True

        def run() -> Any:
            return _nested.run_reentrant(
                running, call.awaitable, cleanup=call.api in (API_RUN, API_RUNNER)
            )

    # The running loop waits for this call: a stall, not a block (the watchdog asks).
    stall = _stalls.enter(call.api, action, stack, running, _task_name(running))
    failure: BaseException | None = None
    try:
        return run()
    except BaseException as exc:
        failure = exc
        raise
    finally:
        duration = _stalls.leave(stall)
        if counted:
            detail["result"] = _policy.describe_outcome(failure)
            hint = _incidents.reentry_hint(call.api, action, detail, stack, running)
            _report(monitor, "reentry", call.api, action, duration, running, detail, stack, hint)
        del failure


def _task_name(loop: asyncio.AbstractEventLoop) -> str | None:
    task = asyncio.current_task(loop)
    return task.get_name() if task is not None else None


def _library_caller() -> types.FrameType | None:
    """The library frame the user's code called that made this nested run, if any.

    ``None`` when the user's own code made it (each such run is a call of its own) or when
    no user frame is on the stack (nothing tells one call from the next).
    """
    frame: types.FrameType | None = cpython.getframe(1)
    while frame is not None and _frames.is_own_file(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None or _frames.is_user_file(frame.f_code.co_filename):
        return None
    for _ in range(256):
        outer = frame.f_back
        if outer is None:
            return None
        if _frames.is_user_file(outer.f_code.co_filename):
            return frame
        frame = outer
    return None


def _reenters(policy: str) -> bool:
    """Whether ``policy`` re-enters the running loop for a call made here and now."""
    return policy == "reenter" or (
        policy == "auto" and _policy.in_kernel(_context.current_labels().framework)
    )


def _offload_call(
    monitor: Monitor,
    call: _Call,
    running: asyncio.AbstractEventLoop,
    detail: dict[str, str],
    stack: list[Any],
) -> Any:
    # From the worker's start to its join, all of it is the stall.
    stall = _stalls.enter(call.api, "offloaded", stack, running, _task_name(running))
    failure: BaseException | None = None
    try:
        return _offload.offload(
            call.awaitable, call.run_elsewhere, running, monitor.config.offload_timeout,
            detail, stall,
        )
    except BaseException as exc:
        failure = exc
        raise
    finally:
        duration = _stalls.leave(stall)
        detail["result"] = _policy.describe_outcome(failure)
        hint = _incidents.reentry_hint(call.api, "offloaded", detail, stack, running)
        _report(monitor, "reentry", call.api, "offloaded", duration, running, detail, stack, hint)
        del failure


def _other_thread(api: str, loop: asyncio.AbstractEventLoop, awaitable: Any) -> Any:
    """H2: ``loop`` runs in another thread; run the awaitable there and wait."""
    monitor = _runtime.active()
    running_here = running_loop()
    stack = _frames.capture_stack(2)
    if asyncio.isfuture(awaitable) and awaitable.get_loop() is not loop:
        raise LoopwatchError(f"{api}() was given a Future of another loop than the one it runs")
    owner = aio.loop_thread_id(loop)
    if owner is not None and _stalls.waiting(owner):
        # That loop's thread is waiting for a nested call, very likely this one: the
        # marshalled call could never run. Fail at once, as the loop itself would.
        _close(awaitable)
        if monitor is not None:
            _report(
                monitor, "reentry", api, "raised", None, loop,
                {"reason": "the loop's thread is waiting for this call"}, stack,
            )
        raise uvl.already_running_error(loop)

    async def await_there() -> Any:
        return await awaitable

    coro = awaitable if asyncio.iscoroutine(awaitable) else await_there()
    try:
        handle = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:
        _close(coro)
        raise
    timeout = monitor.config.offload_timeout if monitor is not None else None
    # A loop running on this thread waits meanwhile: a stall. A plain thread just waits.
    stall = None
    if running_here is not None:
        stall = _stalls.enter(api, "marshalled", stack, running_here, _task_name(running_here))
    try:
        if not _wait_marshalled(handle, timeout, stall):
            handle.cancel()
            raise LoopwatchError(
                f"{api}() from thread {threading.current_thread().name!r} was marshalled to the "
                f"loop's own thread and did not finish within {timeout:g}s (offload_timeout); "
                "is that loop blocked waiting for this thread?"
            )
        return handle.result()
    finally:
        duration = _stalls.leave(stall) if stall is not None else None
        if monitor is not None:
            _report(monitor, "cross_thread_run", api, "marshalled", duration, loop, stack=stack)


def _wait_marshalled(
    handle: concurrent.futures.Future[Any], timeout: float | None, stall: _stalls.Stall | None
) -> bool:
    """Wait for a marshalled call; a stalled loop of this thread is told of past a second."""
    if stall is not None and (timeout is None or timeout > _stalls.STALL_LINE_AFTER):
        done, _ = concurrent.futures.wait((handle,), _stalls.STALL_LINE_AFTER)
        if done:
            return True
        stall.say(
            f"has waited {stall.duration():.1f}s for the loop of another thread; this "
            "thread's event loop is stalled until it ends"
        )
        if timeout is not None:
            timeout = max(0.0, timeout - stall.duration())
    done, _ = concurrent.futures.wait((handle,), timeout)
    return bool(done)
