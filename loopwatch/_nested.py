"""The ``reenter`` policy: run a nested ``asyncio.run``/``run_until_complete`` on the loop
that is already running, from inside one of its own callbacks or task steps.

How it stays correct without replacing ``asyncio.Task`` or any loop method:

* The nested awaitable runs in an ordinary task of the loop (``loop.create_task``), so the
  C Task, task factories and eager tasks behave as usual.
* The task that made the call is *left* (asyncio's own leave-task function) for the duration
  and entered again afterwards, through the same C functions the Task uses itself. On
  3.14 these read and write the thread state's current task (``ts->asyncio_running_task``)
  rather than a dict, which is why mutating asyncio's per-loop current-task dict by hand (what
  nest_asyncio does) breaks there and this does not.
* The loop is driven by calling the stdlib ``BaseEventLoop._run_once`` until the future is
  done. The outer ``_run_once`` that is running the current callback has already counted
  how many ready handles it will pop; the nested iterations consume some of those, so the
  same number of cancelled no-op handles is put back at the front of the ready queue. The
  outer loop skips them and never sees a short queue.
* A ``loop.stop()`` made while nested is held back and re-applied when the nested run
  ends, so it stops the run it was meant for instead of making the nested one spin.
* The running loop, the current task and ``loop._current_handle`` are restored in
  ``finally``: an exception in the nested run, or a buggy stdlib path that clears the
  running loop (CPython gh-130145), cannot leave the outer run broken.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import sys
import threading
import weakref
from asyncio import events, tasks
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

from ._compat import asyncio as aio

__all__ = ["can_reenter", "run_reentrant"]

T = TypeVar("T")

class _Run:
    """One nested run that cleans up like ``asyncio.run``: what it created, to finish it."""

    __slots__ = ("__weakref__", "agens", "tasks")

    def __init__(self) -> None:
        # Only used before 3.12, where a task's context cannot be read back.
        self.tasks: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()
        self.agens: weakref.WeakSet[Any] = weakref.WeakSet()


# Which cleaning nested run the current context belongs to. Tasks copy it on creation, so
# every task spawned (directly or not) by the nested coroutine carries it; tasks of the
# outer program that happen to run meanwhile do not.
_current_run: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "loopwatch_reenter_run", default=None
)


def can_reenter(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether :func:`run_reentrant` can drive ``loop``: a stdlib loop, ``_run_once`` untouched.

    False for uvloop (not a ``BaseEventLoop``) and for loops whose iteration was replaced
    (a subclass override, or nest_asyncio's class patch): their internals are unknown here.
    """
    return aio.can_drive(loop)


def run_reentrant(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T], *, cleanup: bool) -> T:
    """Run ``awaitable`` to completion on ``loop``, which is running this very call.

    Must be called from the loop's thread while the loop runs (inside one of its callbacks
    or task steps). Returns the result or raises the exception, like
    ``loop.run_until_complete``. Context variables the coroutine sets are visible to the
    caller afterwards. With ``cleanup`` (``asyncio.run``/``Runner.run`` semantics) the
    tasks the nested coroutine started and did not finish are cancelled and awaited, and
    the async generators it started are closed, as ``asyncio.run`` does.
    """
    if not can_reenter(loop):
        raise RuntimeError(f"cannot drive {type(loop).__name__} re-entrantly")
    drivable = loop
    if not loop.is_running() or aio.loop_thread_id(loop) != threading.get_ident():
        raise RuntimeError("run_reentrant() must be called from the thread running the loop")

    saved_loop = aio.get_running_loop()
    # Before 3.14 the current task is looked up by loop; from 3.14 on, only for the running
    # loop of the thread: make sure it is ``loop`` before reading or changing it.
    aio.set_running_loop(loop)
    saved_task = tasks.current_task(loop)
    if saved_task is not None and awaitable is saved_task:
        aio.set_running_loop(saved_loop)
        raise RuntimeError(
            f"{saved_task!r} cannot wait for itself in a nested run: it would never finish"
        )
    saved_handle = aio.current_handle(loop)
    saved_stopping = aio.is_stopping(loop)
    entry = list(aio.ready_queue(loop))
    run = _Run() if cleanup else None
    restore_hooks: Callable[[], None] | None = None
    capture: _Capture | None = None
    stop_requested = False
    future: asyncio.Future[T] | None = None
    completed = False
    held = _Held()

    try:
        # The calling task is suspended in the middle of its step: step out of it, so the
        # loop can run other tasks' steps, and step back in when the nested run is over.
        if saved_task is not None:
            aio.leave_task(loop, saved_task)
        aio.set_stopping(loop, False)
        if run is not None:
            restore_hooks = _track(loop, run)
        if asyncio.isfuture(awaitable):
            future = asyncio.ensure_future(awaitable, loop=loop)
        else:
            capture = _Capture()
            context = contextvars.copy_context()
            if run is not None:
                context.run(_current_run.set, run)
            # Run in a copy of the caller's context, the way asyncio copies it into every
            # task; ``_nested_main`` hands the final values back for the caller.
            main = _nested_main(awaitable, capture)
            try:
                future = context.run(loop.create_task, main)
            except BaseException:
                main.close()
                _close(awaitable)
                raise
            # Mirrors run_until_complete: if we are interrupted, the pending task is not
            # worth a "Task was destroyed but it is pending" line of its own.
            future._log_destroy_pending = False  # type: ignore[attr-defined]
            # Cancelled before its first step, the wrapper never awaits the coroutine:
            # close it then, so no "never awaited" warning blames the user's code.
            future.add_done_callback(functools.partial(_close_when_done, awaitable))
        stop_requested = _drive(drivable, future, held)
        if run is not None:
            stop_requested = _finish(loop, drivable, run, held) or stop_requested
        completed = True
    finally:
        try:
            if not completed:
                _abandon(loop, future, run)
            if restore_hooks is not None:
                restore_hooks()
        finally:
            # The task must be entered while ``loop`` is the running loop (3.14 checks it),
            # whatever the nested code did to the running loop meanwhile.
            aio.set_running_loop(loop)
            _restore(loop, drivable, entry, saved_task, saved_handle)
            aio.ready_queue(loop).extend(held.handles)  # they run once the outer step is over
            aio.set_stopping(loop, saved_stopping or stop_requested or aio.is_stopping(loop))
            aio.set_running_loop(saved_loop)

    if capture is not None and capture.context is not None:
        _copy_back(capture.context)
    return future.result()


class _Capture:
    __slots__ = ("context",)

    def __init__(self) -> None:
        self.context: contextvars.Context | None = None


async def _nested_main(awaitable: Awaitable[T], capture: _Capture) -> T:
    try:
        return await awaitable
    finally:
        capture.context = contextvars.copy_context()


class _Held:
    """Steps whose Context is already entered further up this thread's stack.

    Tasks may share one Context (``create_task(..., context=ctx)``; ipykernel 7 runs every
    cell in one): the outer task's step has it entered, so running another of its steps now
    fails with "cannot enter context" and leaves that task pending forever. Such handles
    wait, in order, until the nested run is over.
    """

    __slots__ = ("entered", "handles")

    def __init__(self) -> None:
        self.handles: list[asyncio.Handle] = []
        self.entered: dict[int, tuple[contextvars.Context, bool]] = {}  # id -> (ctx, entered)

    def take(self, ready: deque[asyncio.Handle]) -> None:
        found = False
        for handle in ready:
            if self._entered(handle):
                found = True
                break
        if not found:
            return
        keep = [h for h in ready if not self._entered(h)]
        self.handles.extend(h for h in ready if self._entered(h))
        ready.clear()
        ready.extend(keep)

    def _entered(self, handle: asyncio.Handle) -> bool:
        context = aio.handle_context(handle)
        if context is None or handle.cancelled():
            return False
        known = self.entered.get(id(context))
        if known is None:
            # Fixed for the whole nested run: only contexts up the stack are entered between
            # two iterations. The Context is kept in the value so its id stays unique.
            known = (context, aio.context_entered(context))
            self.entered[id(context)] = known
        return known[1]


def _drive(drivable: Any, future: asyncio.Future[Any], held: _Held | None = None) -> bool:
    """Iterate the loop until ``future`` is done; return whether ``stop()`` was called."""
    stop_requested = False
    while not future.done():
        if held is not None:
            held.take(aio.ready_queue(drivable))
        aio.run_once(drivable)
        if aio.is_stopping(drivable):
            stop_requested = True
            aio.set_stopping(drivable, False)
    return stop_requested


def _restore(
    loop: asyncio.AbstractEventLoop,
    drivable: Any,
    entry: list[asyncio.Handle],
    saved_task: asyncio.Task[Any] | None,
    saved_handle: asyncio.Handle | None,
) -> None:
    ready = aio.ready_queue(drivable)
    # Entry handles not consumed are still at the front, in order (the list keeps them
    # alive, so their ids are unique). Replace each consumed one with a skipped placeholder.
    alive = {id(handle) for handle in entry}
    left = 0
    for handle in ready:
        if id(handle) not in alive:
            break
        left += 1
    consumed = len(entry) - left
    if consumed:
        placeholder = events.Handle(_nothing, (), loop)
        placeholder.cancel()
        ready.extendleft(itertools.repeat(placeholder, consumed))
    aio.set_current_handle(drivable, saved_handle)
    current = tasks.current_task(loop)
    if current is not saved_task:
        if current is not None:
            aio.leave_task(loop, current)
        if saved_task is not None:
            aio.enter_task(loop, saved_task)


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if asyncio.iscoroutine(awaitable) and close is not None:
        close()


def _close_when_done(awaitable: object, _future: asyncio.Future[Any]) -> None:
    _close(awaitable)  # a no-op for a coroutine that ran to its end


def _nothing() -> None:
    """The callback of the placeholders (never called: they are cancelled)."""


def _copy_back(context: contextvars.Context) -> None:
    for var, value in context.items():
        if var is _current_run:
            continue
        if var.get(_UNSET) is not value:
            var.set(value)


_UNSET: Any = object()


# -- asyncio.run-like cleanup -------------------------------------------------------------


def _track(loop: asyncio.AbstractEventLoop, run: _Run) -> Callable[[], None]:
    """Record what the nested run starts; return the function that stops recording."""
    restores: list[Callable[[], None]] = []

    hooks = sys.get_asyncgen_hooks()
    previous_firstiter = hooks.firstiter

    def firstiter(agen: Any) -> None:
        if _current_run.get() is run:
            run.agens.add(agen)
        if previous_firstiter is not None:
            previous_firstiter(agen)

    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=hooks.finalizer)

    def restore_agen_hooks() -> None:
        # Nested runs end in reverse order of start; leave hooks someone else set alone.
        if sys.get_asyncgen_hooks().firstiter is firstiter:
            sys.set_asyncgen_hooks(firstiter=previous_firstiter, finalizer=hooks.finalizer)

    restores.append(restore_agen_hooks)

    if sys.version_info < (3, 12):
        # A task's context cannot be read before 3.12 (``Task.get_context``); record the
        # tasks created from inside the nested run with a chained task factory instead.
        previous_factory = loop.get_task_factory()

        def factory(
            factory_loop: asyncio.AbstractEventLoop,
            coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
            **kwargs: Any,
        ) -> asyncio.Future[Any]:
            task: asyncio.Future[Any]
            if previous_factory is None:
                task = asyncio.Task(coro, loop=factory_loop, **kwargs)
            else:
                task = previous_factory(factory_loop, coro, **kwargs)
            if _current_run.get() is run:
                run.tasks.add(task)
            return task

        loop.set_task_factory(factory)

        def restore_factory() -> None:
            if loop.get_task_factory() is factory:
                loop.set_task_factory(previous_factory)

        restores.append(restore_factory)

    def restore() -> None:
        for undo in reversed(restores):
            undo()

    return restore


def _pending_tasks(loop: asyncio.AbstractEventLoop, run: _Run) -> list[asyncio.Future[Any]]:
    if sys.version_info < (3, 12):
        return [task for task in run.tasks if not task.done()]
    found: list[asyncio.Future[Any]] = []
    for task in tasks.all_tasks(loop):
        get_context = getattr(task, "get_context", None)
        if get_context is not None and get_context().get(_current_run) is run:
            found.append(task)
    return found


def _finish(
    loop: asyncio.AbstractEventLoop, drivable: Any, run: _Run, held: _Held
) -> bool:
    """Cancel and await the run's leftover tasks, then close its async generators."""
    stop_requested = False
    pending = _pending_tasks(loop, run)
    if pending:
        for task in pending:
            task.cancel()
        stop_requested = _drive(drivable, tasks.gather(*pending, return_exceptions=True), held)
        for task in pending:
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception during asyncio.run() shutdown",
                        "exception": exc,
                        "task": task,
                    }
                )
    agens = [agen for agen in run.agens if agen.ag_frame is not None]
    if agens:
        closing = tasks.gather(*(agen.aclose() for agen in agens), return_exceptions=True)
        stop_requested = _drive(drivable, closing, held) or stop_requested
        for agen, result in zip(agens, closing.result(), strict=True):
            if isinstance(result, Exception):
                loop.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of asynchronous generator"
                        f" {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )
    return stop_requested


def _abandon(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any] | None, run: _Run | None
) -> None:
    """The nested run was interrupted (KeyboardInterrupt, SystemExit): let go without waiting.

    What it started is cancelled and finishes later on the outer run; driving the loop
    again here could block the interrupt the user just sent.
    """
    if future is not None and future.done() and not future.cancelled():
        future.exception()  # retrieved: the caller gets the interrupt, not this one
    if run is None:
        return
    if future is not None and not future.done():
        future.cancel()
    for task in _pending_tasks(loop, run):
        task.cancel()
