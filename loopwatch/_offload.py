"""Running a nested call on a loopwatch worker thread, with a loop of its own.

The ``offload`` policy hands the coroutine of an intercepted ``asyncio.run`` (or
``run_until_complete``) to a worker thread, carrying the caller's context variables, and
waits for it, bounded by ``offload_timeout``. The caller gets the coroutine's result or
its own exception, unchanged (``TimeoutError`` included). Each call gets a worker thread of
its own, joined before the call returns: no thread is left behind.

Offloading nests (an offloaded coroutine may itself re-enter): the depth is bounded, so a
coroutine that re-enters itself ends in the original ``RuntimeError``, never in an
unbounded number of threads.

The wait ends before ``offload_timeout`` only on proof that the coroutine needs the
stalled loop: asyncio's own foreign-loop error (a Future or Task of that loop awaited), or
a wait that only a task of that loop can end (:func:`_wait`). A future
that looks abandoned from the worker's side may be completed by any other thread (a
client library's I/O thread calling ``call_soon_threadsafe``): that is never cut short.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import _runtime, _stalls
from ._compat import asyncio as aio
from ._errors import LoopwatchError
from ._stalls import STALL_LINE_AFTER

__all__ = ["MAX_DEPTH", "depth", "offload", "worker_threads"]

T = TypeVar("T")

_DETECT_EVERY = 0.25  # how often the caller looks for proof that the call needs its loop

#: How many offloaded calls may nest inside each other before the original error is raised.
MAX_DEPTH = 8

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("loopwatch_offload_depth", default=0)


def depth() -> int:
    """How many offloaded calls the current context runs inside."""
    return _depth.get()


NEEDS_OUTER_LOOP = (
    "it needs objects bound to the running loop (a Future, Task, Event, Lock or client of that "
    "loop), which only that loop can complete; await it instead, from async code"
)


class _Workers:
    """One daemon thread per offloaded call, joined by the caller once the call is done.

    No worker outlives its call: a thread left idle for reuse would be seen by the
    program's own thread checks (test suites count threads after every test), and starting
    one costs ~0.1 ms against the several tenths of a millisecond of the fresh event loop
    the call runs on. Only a call that timed out leaves its (daemon) thread behind.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._counter = 0

    def submit(
        self, fn: Callable[[], T]
    ) -> tuple[concurrent.futures.Future[T], threading.Thread]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def work() -> None:
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the caller, whatever it is
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        with self._lock:
            self._counter += 1
            thread = threading.Thread(
                target=work, name=f"loopwatch-offload-{self._counter}", daemon=True
            )
            self._threads.add(thread)
        thread.start()
        return future, thread

    def shutdown(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) for calls still running on workers."""
        with self._lock:
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def after_fork_in_child(self) -> None:
        """Forget the parent's workers: only the forking thread exists in a child process."""
        self._lock = threading.Lock()
        self._threads = set()

    def thread_count(self) -> int:
        with self._lock:
            return len(self._threads)


workers = _Workers()
# A preloading server (gunicorn --preload) forks its workers after the install.
_runtime.after_fork_in_child("offload", workers.after_fork_in_child)


def worker_threads() -> int:
    """How many offload worker threads are alive (for tests and ``doctor``)."""
    return workers.thread_count()


class _Job:
    """Where an offloaded coroutine runs, so a timeout can cancel it."""

    __slots__ = ("loop", "task")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None


async def _tracked(awaitable: Awaitable[T], job: _Job) -> T:
    job.loop = asyncio.get_running_loop()
    job.task = asyncio.current_task()
    return await awaitable


def _awaitable(obj: Any) -> bool:
    return asyncio.iscoroutine(obj) or asyncio.isfuture(obj) or hasattr(obj, "__await__")


def _in_worker(fn: Callable[[Any], T], awaitable: Any) -> T:
    _depth.set(_depth.get() + 1)  # the copied context is the worker's own
    return fn(awaitable)


def _wait(
    future: concurrent.futures.Future[Any],
    timeout: float,
    stall: _stalls.Stall,
    job: _Job,
    stalled: asyncio.AbstractEventLoop,
) -> bool:
    """Wait for an offloaded call; True when it finished, False when ``timeout`` passed.

    Says so in a log line (through ``stall``) once the caller has stalled past one second,
    and raises :class:`_Stuck` when the worker's coroutine provably waits for the
    ``stalled`` loop (:func:`._compat.asyncio.waits_for_loop`). Whatever the call itself
    raised stays in ``future`` for the caller (a ``TimeoutError`` of its own included).
    """
    started = time.perf_counter()
    deadline = started + timeout
    said = False
    while True:
        now = time.perf_counter()
        done, _ = concurrent.futures.wait((future,), min(_DETECT_EVERY, max(0.0, deadline - now)))
        if done:
            return True
        now = time.perf_counter()
        if now >= deadline:
            return False
        waited = now - started
        if not said and waited >= STALL_LINE_AFTER:
            said = True
            stall.say(
                f"has run on a worker thread for {waited:.1f}s; this thread's event loop is "
                f"stalled until it ends (at most {timeout:g}s)"
            )
        loop, task = job.loop, job.task
        if loop is None or task is None:
            continue
        why = aio.waits_for_loop(loop, task, stalled)
        if why:
            raise _Stuck(why, waited)


class _Stuck(LoopwatchError):
    """An offloaded coroutine that waits for something only the stalled loop could do."""

    def __init__(self, waiting_for: str, after: float) -> None:
        super().__init__(waiting_for)
        self.waiting_for = waiting_for
        self.after = after


def offload(
    awaitable: Any,
    run_elsewhere: Callable[[Any], T],
    running: asyncio.AbstractEventLoop,
    timeout: float,
    detail: dict[str, str],
    stall: _stalls.Stall,
) -> T:
    """Run ``awaitable`` through ``run_elsewhere`` on a worker thread and wait for it.

    ``stall`` is the caller's open record of this wait (:mod:`._stalls`). While it waits, a
    line is logged once the caller has stalled a second, and the wait ends early only on
    proof that the coroutine waits for the stalled loop (:func:`_wait`).
    ``detail`` receives what went wrong (``timeout``, ``stalled``, ``error``) for the
    caller's report. Raises the coroutine's own exception unchanged, or
    :class:`LoopwatchError` when the call timed out, was stopped early, or needed the
    running loop.
    """
    api = stall.api
    job = _Job()
    tracked = _tracked(awaitable, job) if _awaitable(awaitable) else awaitable
    context = contextvars.copy_context()
    future, worker = workers.submit(
        functools.partial(context.run, _in_worker, run_elsewhere, tracked)
    )
    try:
        done = _wait(future, timeout, stall, job, running)
    except _Stuck as stuck:
        detail["stalled"] = f"{stuck.after:.1f}s, stopped early: it waits for {stuck.waiting_for}"
        _cancel(job, future)
        raise LoopwatchError(
            f"{api}() offloaded to a worker thread waits for {stuck.waiting_for}, which only "
            f"this thread's stalled loop could complete; {NEEDS_OUTER_LOOP}."
        ) from None
    if not done:
        detail["timeout"] = f"{timeout:g}s"
        _cancel(job, future)
        raise LoopwatchError(
            f"{api}() offloaded to a worker thread did not finish within {timeout:g}s "
            f"(offload_timeout); {NEEDS_OUTER_LOOP}. If it is just slow, raise "
            "LOOPWATCH_OFFLOAD_TIMEOUT."
        )
    # Finished: whatever it raised is the coroutine's own, TimeoutError included. The
    # worker is about to exit; wait for it, so no thread outlives the call.
    worker.join(1.0)
    try:
        return future.result()
    except RuntimeError as exc:
        if aio.is_foreign_loop_error(exc):
            detail["error"] = "needs the running loop"
            _unpoison(running)
            raise LoopwatchError(
                f"{api}() failed on the worker thread: {NEEDS_OUTER_LOOP}."
            ) from exc
        raise


def run_in_worker(fn: Callable[[], T], timeout: float) -> T:
    """Run a plain call on a worker thread and wait for it (bounded by ``timeout``)."""
    future, worker = workers.submit(fn)
    done, _ = concurrent.futures.wait((future,), timeout)
    if not done:
        raise LoopwatchError(f"a worker thread did not finish within {timeout:g}s")
    worker.join(1.0)
    return future.result()


def _unpoison(loop: asyncio.AbstractEventLoop) -> None:
    try:
        for task in asyncio.all_tasks(loop):
            aio.clear_await_flag(task)
    except Exception as exc:
        _runtime.internal_error("reentry", exc)


def _cancel(job: _Job, future: concurrent.futures.Future[Any]) -> None:
    loop, task = job.loop, job.task
    if loop is None or task is None:
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:
        return  # the worker's loop already closed: nothing left to cancel
    concurrent.futures.wait((future,), 1.0)  # ignores cancellation: left to finish alone
