"""asyncio internals read or written by the nested-run policies, each behind a small function.

Checked against CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0 (and the 3.14 changes noted
where they matter). ``tests/test_compat_asyncio.py`` fails loudly when one goes away.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import events, tasks
from typing import Any

__all__ = [
    "context_entered",
    "enter_task",
    "handle_context",
    "leave_task",
    "loop_waits_for_nothing",
    "policy_loop",
    "set_policy_loop",
    "set_running_loop",
    "waited_future",
]

# events._get_running_loop / _set_running_loop: the running loop of this thread (all versions).
get_running_loop = events._get_running_loop
set_running_loop = events._set_running_loop

# tasks._enter_task / _leave_task: which task is current for a loop (a dict before 3.14, the
# thread state from 3.14 on; the functions are the same on every version).
enter_task = tasks._enter_task
leave_task = tasks._leave_task


def handle_context(handle: asyncio.Handle) -> contextvars.Context | None:
    """The Context a handle runs its callback in (``Handle._context``, 3.7+)."""
    context = getattr(handle, "_context", None)
    return context if isinstance(context, contextvars.Context) else None


def context_entered(context: contextvars.Context) -> bool:
    """Whether ``context`` is entered further up this thread's stack (so it cannot be run).

    A Context has no public "entered" flag; running a no-op in it raises ``RuntimeError``
    exactly when it is. Used for tasks that share one Context (ipykernel 7 runs every cell
    in one), whose steps a nested run must not try to enter a second time.
    """
    try:
        context.run(int)
    except RuntimeError:
        return True
    return False


def _policy() -> Any:
    # 3.14 deprecates the public getter; the private one exists from 3.12.
    getter = getattr(events, "_get_event_loop_policy", None) or events.get_event_loop_policy
    return getter()


def policy_loop() -> tuple[bool, Any]:
    """The loop set for this thread by ``set_event_loop`` (``_local._loop`` of the default
    policy, 3.10-3.14), without creating one; ``(False, None)`` for a policy of another kind."""
    local = getattr(_policy(), "_local", None)
    if local is None or not hasattr(local, "_loop"):
        return False, None
    return True, local._loop


def set_policy_loop(loop: Any) -> None:
    """Put back what :func:`policy_loop` read (a library's ``set_event_loop(None)`` undone)."""
    local = getattr(_policy(), "_local", None)
    if local is not None and hasattr(local, "_loop"):
        local._loop = loop


def waited_future(task: asyncio.Future[Any]) -> asyncio.Future[Any] | None:
    """What a suspended task waits for, following tasks it awaits (``Task._fut_waiter``)."""
    seen = 0
    waiter = getattr(task, "_fut_waiter", None)
    while waiter is not None and seen < 100:
        inner = getattr(waiter, "_fut_waiter", None)
        if inner is None:
            return waiter  # type: ignore[no-any-return]
        waiter, seen = inner, seen + 1
    return None


def _chained_to_thread(future: asyncio.Future[Any]) -> bool:
    # asyncio.wrap_future (run_in_executor, to_thread) adds a done-callback named
    # ``_call_check_cancel`` (futures._chain_future, 3.10-3.14): another thread completes it.
    callbacks = getattr(future, "_callbacks", None) or ()
    for item in callbacks:
        callback = item[0] if isinstance(item, tuple) else item
        if getattr(callback, "__name__", "") == "_call_check_cancel":
            return True
    return False


def loop_waits_for_nothing(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> str:
    """Why ``task`` on ``loop`` (a stdlib loop of another thread) cannot progress, or ``""``.

    True when the loop has no ready callback, no live timer, no file descriptor but its own
    wake-up pipe, and ``task`` waits for a future no thread is working on: then only
    something outside this loop (the stalled outer loop) could ever wake it. Read from another
    thread without locks: a racy read can only say "" (keep waiting) or be confirmed by the
    caller's second look.
    """
    if not isinstance(loop, asyncio.BaseEventLoop) or task.done():
        return ""
    ready = getattr(loop, "_ready", None)
    scheduled = getattr(loop, "_scheduled", None)
    selector = getattr(loop, "_selector", None)
    if ready is None or scheduled is None or selector is None or ready:
        return ""
    if any(not handle.cancelled() for handle in list(scheduled)):
        return ""
    try:
        if len(selector.get_map()) > 1:  # the self-pipe is always there
            return ""
    except RuntimeError:  # closed meanwhile
        return ""
    executor = getattr(loop, "_default_executor", None)
    if executor is not None and getattr(executor, "_work_queue", None) is not None:
        threads = len(getattr(executor, "_threads", ()))
        idle = getattr(getattr(executor, "_idle_semaphore", None), "_value", threads)
        if idle < threads or not executor._work_queue.empty():
            return ""
    waiter = waited_future(task)
    if waiter is None or waiter.done() or _chained_to_thread(waiter):
        return ""
    return repr(waiter)


PY314 = sys.version_info >= (3, 14)
