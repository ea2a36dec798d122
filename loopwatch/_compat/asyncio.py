"""asyncio internals loopwatch relies on, each behind a function named for what it does.

Checked against CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0 (run in CI) and read against the
3.14 sources (not run: no 3.14 interpreter is available to CI). Every touch has a canary in
``tests/test_compat.py``.

3.14 notes, from its sources and "What's new":

* the current task lives in the thread state (``ts->asyncio_running_task``) and
  ``asyncio.tasks._current_tasks`` is gone for the C implementation; ``_enter_task`` and
  ``_leave_task`` still exist and write the thread state, and ``current_task(loop)`` answers
  only for the thread's running loop. :func:`enter_task`/:func:`leave_task` therefore make
  ``loop`` the running loop first (callers do, see ``_nested``).
* the event-loop policy system is deprecated; loopwatch never calls the policy API.
* ``asyncio.capture_call_graph`` exists; :func:`await_chain` uses it for a task's own
  coroutines when present (and still follows ``_fut_waiter`` into the task it awaits).
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.events
import asyncio.tasks
import contextvars
import gc
import sys
import types
from asyncio import events
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = [
    "BASE_RUN_ONCE",
    "IDLE_FUNCTIONS",
    "PY314",
    "all_tasks",
    "await_chain",
    "can_drive",
    "clear_await_flag",
    "current_handle",
    "enter_task",
    "executor_size",
    "get_running_loop",
    "is_foreign_loop_error",
    "is_stopping",
    "leave_task",
    "loop_selector",
    "loop_thread_id",
    "ready_queue",
    "run_once",
    "runner_has_open_loop",
    "runner_loop",
    "set_current_handle",
    "set_running_loop",
    "set_stopping",
    "set_unawaited_hook",
    "task_context",
    "task_waiter",
    "unawaited_hook",
]

PY314 = sys.version_info >= (3, 14)

# -- the running loop and the current task -------------------------------------------------

#: The loop running in this thread, or ``None`` (a C call; the fast path of every patch).
get_running_loop: Callable[[], asyncio.AbstractEventLoop | None] = asyncio.events._get_running_loop
#: Make ``loop`` (or ``None``) this thread's running loop, as ``run_forever`` does.
set_running_loop: Callable[[asyncio.AbstractEventLoop | None], None] = (
    asyncio.events._set_running_loop
)


def enter_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Make ``task`` the current task of ``loop`` (what a task does as its step begins).

    3.10–3.13 keep a per-loop dict; 3.14 keeps it in the thread state and requires
    ``loop`` to be the running loop (the caller sets it).
    """
    asyncio.tasks._enter_task(loop, task)


def leave_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Undo :func:`enter_task` (what a task does as its step ends)."""
    asyncio.tasks._leave_task(loop, task)


# -- driving a stdlib loop by hand (the re-entrant runner) ---------------------------------

#: ``BaseEventLoop._run_once``: one iteration of a stdlib loop (3.10–3.14).
BASE_RUN_ONCE: Callable[..., Any] | None = getattr(
    asyncio.base_events.BaseEventLoop, "_run_once", None
)


#: Functions a loop thread sits in while it waits for I/O (the selector's and the loop's
#: own), as a sampled stack shows them: the innermost frame in one of these means idle.
IDLE_FUNCTIONS = frozenset(
    {"select", "poll", "_run_once", "run_forever", "run_until_complete", "run", "_poll"}
)


def can_drive(loop: object) -> bool:
    """Whether ``loop`` is a stdlib loop whose iteration loopwatch can run by hand.

    False for uvloop (not a ``BaseEventLoop``) and for loops whose iteration was replaced
    (a subclass override, or nest_asyncio's class patch): their internals are unknown.
    """
    if BASE_RUN_ONCE is None or not isinstance(loop, asyncio.base_events.BaseEventLoop):
        return False
    if getattr(type(loop), "_run_once", None) is not BASE_RUN_ONCE:
        return False
    if "_run_once" in getattr(loop, "__dict__", {}):
        return False
    return isinstance(getattr(loop, "_ready", None), deque) and hasattr(loop, "_stopping")


def run_once(loop: Any) -> None:
    """Run one iteration of a stdlib loop (``_run_once``)."""
    loop._run_once()


def ready_queue(loop: Any) -> deque[asyncio.Handle]:
    """The deque of handles ready to run (``_ready``)."""
    ready: deque[asyncio.Handle] = loop._ready
    return ready


def is_stopping(loop: Any) -> bool:
    """Whether ``loop.stop()`` was called and the current run will end (``_stopping``)."""
    return bool(loop._stopping)


def set_stopping(loop: Any, value: bool) -> None:
    """Set the ``_stopping`` flag (held back and re-applied around a nested run)."""
    loop._stopping = value


def current_handle(loop: Any) -> asyncio.Handle | None:
    """The handle the loop is running now (``_current_handle``, debug-mode bookkeeping)."""
    return getattr(loop, "_current_handle", None)


def set_current_handle(loop: Any, handle: asyncio.Handle | None) -> None:
    """Restore ``_current_handle`` after a nested run."""
    loop._current_handle = handle


def loop_selector(loop: Any) -> Any:
    """The selector a selector-based stdlib loop waits on (``_selector``), else ``None``."""
    return getattr(loop, "_selector", None)


def loop_thread_id(loop: Any) -> int | None:
    """The id of the thread running a stdlib loop (``_thread_id``), ``None`` when stopped."""
    thread_id: int | None = getattr(loop, "_thread_id", None)
    return thread_id


# -- runners (3.11+) -----------------------------------------------------------------------


def runner_loop(runner: Any) -> asyncio.AbstractEventLoop | None:
    """The loop an ``asyncio.Runner`` created, without creating one (``_loop``)."""
    loop: asyncio.AbstractEventLoop | None = getattr(runner, "_loop", None)
    return loop


def runner_has_open_loop(runner: Any) -> bool:
    """Whether ``Runner.close()`` would drive the runner's loop (initialized, not closed).

    A runner never used, or already closed, has nothing to close: ``close()`` returns at
    once, so it needs no worker thread.
    """
    loop = runner_loop(runner)
    return loop is not None and not loop.is_closed()


# -- tasks ---------------------------------------------------------------------------------


def task_context(task: Any) -> contextvars.Context | None:
    """The context a task runs its steps in, readable from any thread; ``None`` if unknown.

    3.12+: ``Task.get_context()``. 3.10/3.11: the pure-Python Task's ``_context``, or for
    the C Task the context found among its GC referents (it visits its context first).
    """
    get_context = getattr(task, "get_context", None)
    if get_context is not None:
        context = get_context()
        return context if isinstance(context, contextvars.Context) else None
    context = getattr(task, "_context", None)
    if isinstance(context, contextvars.Context):
        return context
    for referent in gc.get_referents(task):
        if isinstance(referent, contextvars.Context):
            return referent
    return None


def task_waiter(task: Any) -> Any:
    """What a suspended task waits for right now (``Task._fut_waiter``, 3.10–3.14), or ``None``.

    Read it only on the task's loop thread: the loop writes it on every step.
    """
    return getattr(task, "_fut_waiter", None)


def all_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """The unfinished tasks of ``loop``; call it on the loop's thread.

    ``asyncio.all_tasks`` copies a WeakSet that other threads may change while it iterates
    (tasks created by ``run_coroutine_threadsafe``): the standard library retries the copy
    itself, and a last failure leaves the list empty rather than raising.
    """
    try:
        return list(asyncio.all_tasks(loop))
    except RuntimeError:
        return []


# What ``agen.__anext__()`` / ``asend()`` / ``athrow()`` return (C types without a public
# link to their generator).
_ASYNC_GEN_AWAITABLES = frozenset({"async_generator_asend", "async_generator_athrow"})


def _frames_of(awaitable: Any, out: list[types.FrameType], limit: int) -> None:
    """Append the frames of a coroutine chain, outermost first, following what each awaits.

    Coroutines (``cr_frame``/``cr_await``), async generators (``ag_frame``/``ag_await``)
    and generator-based coroutines (``gi_frame``/``gi_yieldfrom``): public attributes of
    3.10–3.14. ``async for`` awaits the generator's ``asend`` object, which exposes no link
    to its generator: it is found among the object's GC referents (3.10–3.14 visit it).
    The chain ends at an object with none of these (a Future's iterator): what the
    innermost frame waits on.
    """
    node = awaitable
    while node is not None and len(out) < limit:
        if type(node).__name__ in _ASYNC_GEN_AWAITABLES:
            node = next((r for r in gc.get_referents(node) if hasattr(r, "ag_frame")), None)
            continue
        if hasattr(node, "cr_frame"):
            frame, node = node.cr_frame, node.cr_await
        elif hasattr(node, "ag_frame"):
            frame, node = node.ag_frame, node.ag_await
        elif hasattr(node, "gi_frame"):
            frame, node = node.gi_frame, node.gi_yieldfrom
        else:
            return
        if frame is None:  # finished (or a generator not started): nothing below it
            return
        out.append(frame)


def _own_frames(task: Any, limit: int) -> list[types.FrameType]:
    """A task's own coroutine chain, outermost first."""
    out: list[types.FrameType] = []
    capture = getattr(asyncio, "capture_call_graph", None)
    coro = task.get_coro() if hasattr(task, "get_coro") else None
    if PY314 and capture is not None:
        # 3.14: the standard library walks the chain itself (and knows of frames it adds
        # later). Its order is checked against the task's own coroutine, not assumed.
        graph = capture(task, limit=limit)
        if graph is not None:
            frames = [entry.frame for entry in graph.call_stack]
            if frames and coro is not None and frames[-1] is getattr(coro, "cr_frame", None):
                frames.reverse()
            return frames[:limit]
    _frames_of(coro, out, limit)
    return out


def await_chain(task: Any, limit: int = 64) -> list[types.FrameType]:
    """The frames ``task`` is suspended in, innermost first, through the tasks it awaits.

    A task that awaits another task (``await other``, ``asyncio.wait_for`` on 3.10/3.11)
    waits on it through ``_fut_waiter``; the chain continues into that task's coroutines,
    so the innermost frame is the line that is really waiting. Call it on the task's loop
    thread only: the frames change under a running loop.
    """
    frames: list[types.FrameType] = []
    seen: set[int] = set()
    current = task
    while current is not None and id(current) not in seen and len(frames) < limit:
        seen.add(id(current))
        frames += _own_frames(current, limit - len(frames))
        waiter = task_waiter(current)
        current = waiter if waiter is not None and hasattr(waiter, "get_coro") else None
    frames.reverse()
    return frames


def clear_await_flag(task: Any) -> None:
    """Clear ``_asyncio_future_blocking`` on a pending task of the running loop.

    When a task of a worker's loop awaits a Task of another loop, asyncio rejects it but
    leaves that Task's flag set, so a later, correct ``await`` of it fails. While the
    loop's thread is inside a task step, no pending task of that loop can legitimately
    have the flag set.
    """
    if not task.done() and getattr(task, "_asyncio_future_blocking", False):
        task._asyncio_future_blocking = False


# Messages asyncio uses when an object bound to one loop is used from another. asyncio has
# no exception type for it (a plain RuntimeError), so the text is all there is; the list is
# checked by a canary test on every supported version.
_FOREIGN_LOOP_MESSAGES = (
    "attached to a different loop",  # Task awaiting a Future of another loop
    "is bound to a different event loop",  # Lock/Event/Queue/Semaphore (mixins._LoopBoundMixin)
    "different event loop",
)


def is_foreign_loop_error(exc: BaseException) -> bool:
    """Whether ``exc`` is asyncio refusing an object that belongs to another loop."""
    if type(exc) is not RuntimeError:
        return False
    text = str(exc)
    return any(message in text for message in _FOREIGN_LOOP_MESSAGES)


# -- never-awaited coroutines --------------------------------------------------------------

_WARNINGS = sys.modules["warnings"]


def unawaited_hook() -> Callable[[Any], None] | None:
    """CPython's ``warnings._warn_unawaited_coroutine``, which it looks up on every call."""
    hook: Callable[[Any], None] | None = _WARNINGS.__dict__.get("_warn_unawaited_coroutine")
    return hook


def set_unawaited_hook(hook: Callable[[Any], None]) -> None:
    """Replace the never-awaited hook (module attribute; restored by the caller)."""
    _WARNINGS._warn_unawaited_coroutine = hook  # type: ignore[attr-defined]


# -- nested-run policies -------------------------------------------------------------------


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
    waiter = task_waiter(task)
    while waiter is not None and seen < 100:
        inner = task_waiter(waiter)
        if inner is None:
            return waiter  # type: ignore[no-any-return]
        waiter, seen = inner, seen + 1
    return None


def _refers_to(callback: Any, target: object) -> bool:
    """Whether a done-callback holds ``target`` (bound to it, a partial of it, a closure)."""
    seen = 0
    while callback is not None and seen < 8:
        seen += 1
        if getattr(callback, "__self__", None) is target:
            return True
        if any(arg is target for arg in getattr(callback, "args", None) or ()):
            return True
        for cell in getattr(callback, "__closure__", None) or ():
            try:
                if cell.cell_contents is target:
                    return True
            except ValueError:  # an empty cell
                continue
        callback = getattr(callback, "func", None)  # functools.partial
    return False


def waits_for_loop(
    loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any], stalled: asyncio.AbstractEventLoop
) -> str:
    """What of ``stalled`` the suspended ``task`` (running on ``loop``) waits for, or ``""``.

    Proof, never a guess: the future ``task`` waits for (``Task._fut_waiter``, followed
    through the tasks it awaits) is bound to ``stalled``, or is completed only by a
    done-callback of a pending task of ``stalled`` (``asyncio.wait`` of that loop's tasks),
    and no timer of ``loop`` could end the wait first (a timeout of the caller's own).
    Callbacks of a loop's tasks run on that loop only, so nothing else completes it. Read
    from another thread while ``stalled``'s own thread waits (it cannot change them), so
    a racy read of ``loop`` can only miss a proof; checked against 3.10-3.14
    (``_fut_waiter``, ``_callbacks`` as ``(callback, context)``, ``_scheduled``).
    """
    if task.done():
        return ""
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is None or any(not handle.cancelled() for handle in list(scheduled)):
        return ""
    waiter = waited_future(task)
    if waiter is None or waiter.done():
        return ""
    try:
        if waiter.get_loop() is stalled:
            return repr(waiter)
        pending = [t for t in asyncio.all_tasks(stalled) if not t.done()]
    except RuntimeError:  # the set changed while read: look again next time
        return ""
    for other in pending:
        for item in list(getattr(other, "_callbacks", None) or ()):
            callback = item[0] if isinstance(item, tuple) else item
            if _refers_to(callback, waiter):
                return repr(other)
    return ""


# -- executors -----------------------------------------------------------------------------


def executor_size(executor: Any) -> int | None:
    """How many threads a ``concurrent.futures.ThreadPoolExecutor`` may run at once.

    ``_max_workers`` (3.10-3.14; the constructor's ``max_workers`` after its default is
    applied). ``None`` for an executor without it.
    """
    size = getattr(executor, "_max_workers", None)
    return size if isinstance(size, int) else None
