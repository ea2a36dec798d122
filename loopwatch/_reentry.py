"""H1/H2: intercepting event-loop runs made from inside a running loop.

The patched entry points check, before delegating, whether a loop already runs in this
thread (H1) or whether the target loop runs in another thread (H2). Outside those cases
they call the original at once, so the fast path costs one C call and a comparison.

Policies for H1 (``on_reentry``):

* ``offload`` — run the coroutine on a reused loopwatch worker thread with a loop of its
  own, carrying the caller's context variables; return its result or raise its exception.
* ``raise`` — report, close the rejected coroutine, raise the original ``RuntimeError``.
* ``reenter`` — drive the running loop re-entrantly (``_reenter``); falls back to
  ``offload`` where the loop cannot be driven that way (uvloop).

H2 always marshals the coroutine to the loop's own thread.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import concurrent.futures
import contextvars
import functools
import importlib.abc
import importlib.machinery
import os
import queue
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import _context, _frames, _incidents, _policy
from ._errors import LoopwatchError

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["foreign_patch", "install", "offloading", "on_loop_start", "worker_threads"]

T = TypeVar("T")
_MISSING = object()
_get_running_loop = asyncio._get_running_loop

# Called with a loop just before it starts running in this thread (the lag probe and the
# exception-handler chain of ``_watchdog``/``_tasks`` attach there). Callbacks never raise.
on_loop_start: list[Callable[[Any], None]] = []
# Thread id -> api of the offloaded or marshalled call that thread is waiting for right
# now: the watchdog marks a block of that thread's loop as this stall, not a second one.
offloading: dict[int, str] = {}

API_RUN = "asyncio.run"
API_RUNNER = "asyncio.Runner.run"
API_RUC = "loop.run_until_complete"
API_FOREVER = "loop.run_forever"

NEEDS_OUTER_LOOP = (
    "it needs objects bound to the running loop (a Future, Task, Event, Lock or client of that "
    "loop), which only that loop can complete; await it instead, from async code"
)
_FOREIGN_LOOP_MESSAGES = (
    "attached to a different loop",
    "bound to a different event loop",
    "is bound to a different",
    "different event loop",
)


# -- worker threads ------------------------------------------------------------------------


class _Workers:
    """Daemon worker threads, reused; an idle one exits after ``idle`` seconds.

    A new thread starts whenever none is idle, so nested offloads (an offloaded coroutine
    that itself re-enters) can never deadlock on a full pool.
    """

    def __init__(self, idle: float = 30.0) -> None:
        self._idle_timeout = idle
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: set[threading.Thread] = set()
        self._counter = 0

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._idle == 0:
                self._counter += 1
                thread = threading.Thread(
                    target=self._work, name=f"loopwatch-offload-{self._counter}", daemon=True
                )
                self._threads.add(thread)
                thread.start()
            else:
                self._idle -= 1
            self._jobs.put((future, fn))
        return future

    def _work(self) -> None:
        try:
            while True:
                try:
                    item = self._jobs.get(timeout=self._idle_timeout)
                except queue.Empty:
                    with self._lock:
                        # Re-check under the lock: a submit may have counted on us.
                        if self._jobs.empty():
                            self._idle -= 1
                            return
                    continue
                if item is None:
                    return  # shutdown() already took this worker off the idle count
                future, fn = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the caller, whatever it is
                        future.set_exception(exc)
                    del future, fn, item
                with self._lock:
                    self._idle += 1
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self, timeout: float = 2.0) -> None:
        """Ask idle workers to exit; wait for them only when no worker is busy."""
        with self._lock:
            threads = list(self._threads)
            idle, self._idle = self._idle, 0
            for _ in range(idle):
                self._jobs.put(None)
        if idle < len(threads):
            return  # busy workers finish their call, then idle out on their own
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def after_fork_in_child(self) -> None:
        """Forget the parent's workers: only the forking thread exists in a child process."""
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = set()

    def thread_count(self) -> int:
        with self._lock:
            return len(self._threads)


_workers = _Workers()
if hasattr(os, "register_at_fork"):  # a preloading server (gunicorn --preload) forks workers
    os.register_at_fork(after_in_child=_workers.after_fork_in_child)


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


def _is_foreign_loop_error(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FOREIGN_LOOP_MESSAGES)


# -- the interception ----------------------------------------------------------------------


class _Call:
    """One intercepted call: what was called, on what, and how to run it elsewhere."""

    __slots__ = ("api", "awaitable", "kwargs", "raise_original", "run_elsewhere", "target")

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
    call_api: str,
    action: str,
    started: float | None,
    loop: object | None,
    detail: dict[str, str] | None = None,
    stack: list[Any] | None = None,
    hint: str | None = None,
) -> None:
    duration = None if started is None else time.perf_counter() - started
    labels = _context.current_labels()
    try:
        metrics = monitor.metrics
        if metrics is not None:
            metrics.child(
                metrics.reentry_total,
                api=call_api,
                action=action,
                framework=labels.framework,
                handler=labels.handler,
            ).inc()
            if duration is not None:
                metrics.child(
                    metrics.reentry_stall_seconds,
                    api=call_api,
                    framework=labels.framework,
                    handler=labels.handler,
                ).observe(duration)
    except Exception as exc:
        from ._monitor import internal_error

        internal_error("metrics", exc)
    monitor.report(
        kind,
        api=call_api,
        action=action,
        duration=duration,
        loop=loop,
        labels=labels,
        detail=detail,
        stack=stack,
        hint=hint,
    )


def _same_thread(call: _Call, running: asyncio.AbstractEventLoop) -> Any:
    """H1: a loop already runs in this thread; where the call runs is ``_policy.route``'s."""
    from ._monitor import current

    monitor = current()
    if monitor is None:
        return call.raise_original()
    stack = _frames.capture_stack(2)
    reenter = _reenter_module()
    can_reenter = reenter is not None and reenter.can_reenter(running)
    route, fallback = _policy.route(
        monitor.config.on_reentry,
        awaitable=call.awaitable,
        target=call.target,
        running=running,
        can_reenter=can_reenter,
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
            f"running here; {NEEDS_OUTER_LOOP}."
        )
        detail["reason"] = "a Task/Future of the running loop"
        detail["result"] = _policy.describe_outcome(error)
        hint = _incidents.reentry_hint(call.api, "raised", detail, stack, running)
        _report(monitor, "reentry", call.api, "raised", None, running, detail, stack, hint)
        raise error
    if route == _policy.Route.OFFLOAD:
        return _offload(monitor, call, running, detail, stack)
    action = route
    if route == _policy.Route.NESTED:
        target = call.target
        counted = target is None or _policy.first_time(target)

        def run() -> Any:
            return _policy.run_on_this_thread(
                running,
                lambda: call.run_elsewhere(call.awaitable),
                call.api,
                _frames.user_frame(stack),
                _log_stall if counted else None,
            )
    else:
        counted = True

        def run() -> Any:
            return reenter.run_reentrant(
                running, call.awaitable, cleanup=call.api in (API_RUN, API_RUNNER)
            )

    if not counted:
        return run()  # a later run of a library loop already reported for this user call
    started = time.perf_counter()
    failure: BaseException | None = None
    try:
        return run()
    except BaseException as exc:
        failure = exc
        raise
    finally:
        detail["result"] = _policy.describe_outcome(failure)
        hint = _incidents.reentry_hint(call.api, action, detail, stack, running)
        _report(monitor, "reentry", call.api, action, started, running, detail, stack, hint)
        del failure


def _reenter_module() -> Any:
    try:
        from . import _reenter
    except ImportError:  # a build without the re-entrant runner: offload instead
        return None
    return _reenter


def _unpoison(loop: asyncio.AbstractEventLoop) -> None:
    """Clear the await flag a foreign loop left set on tasks of ``loop``.

    When a worker loop's task awaits a Task of ``loop``, asyncio rejects it ("attached to a
    different loop") but leaves that Task's ``_asyncio_future_blocking`` set, so a later,
    correct ``await`` of it fails ("await wasn't used with future"). While this thread is
    inside a task step, no pending Task of ``loop`` can legitimately have the flag set.
    """
    try:
        for task in asyncio.all_tasks(loop):
            if not task.done() and getattr(task, "_asyncio_future_blocking", False):
                task._asyncio_future_blocking = False
    except Exception as exc:
        from ._monitor import internal_error

        internal_error("reentry", exc)


def _offload(
    monitor: Monitor,
    call: _Call,
    running: asyncio.AbstractEventLoop,
    detail: dict[str, str],
    stack: list[Any],
) -> Any:
    job = _Job()
    awaitable = call.awaitable
    tracked = _tracked(awaitable, job) if _awaitable(awaitable) else awaitable
    context = contextvars.copy_context()
    started = time.perf_counter()
    future = _workers.submit(functools.partial(context.run, call.run_elsewhere, tracked))
    timeout = monitor.config.offload_timeout
    offloading[threading.get_ident()] = call.api
    failure: BaseException | None = None
    try:
        return _policy.wait_offloaded(
            future, timeout, call.api, _frames.user_frame(stack), job, _log_stall
        )
    except _policy.Stuck as stuck:
        detail["stalled"] = f"{stuck.after:.1f}s, stopped early: it waits for {stuck.waiting_for}"
        _cancel_job(job, future)
        failure = LoopwatchError(
            f"{call.api}() offloaded to a worker thread waits for {stuck.waiting_for}, which "
            f"nothing on that thread can complete (only this thread's stalled loop could); "
            f"{NEEDS_OUTER_LOOP}."
        )
        raise failure from None
    except concurrent.futures.TimeoutError:
        detail["timeout"] = f"{timeout:g}s"
        _cancel_job(job, future)
        failure = LoopwatchError(
            f"{call.api}() offloaded to a worker thread did not finish within {timeout:g}s "
            f"(offload_timeout); {NEEDS_OUTER_LOOP}. If it is just slow, raise "
            "LOOPWATCH_OFFLOAD_TIMEOUT."
        )
        raise failure from None
    except RuntimeError as exc:
        failure = exc
        if _is_foreign_loop_error(exc):
            detail["error"] = "needs the running loop"
            _unpoison(running)
            failure = LoopwatchError(
                f"{call.api}() failed on the worker thread: {NEEDS_OUTER_LOOP}."
            )
            raise failure from exc
        raise
    except BaseException as exc:
        failure = exc
        raise
    finally:
        offloading.pop(threading.get_ident(), None)
        detail["result"] = _policy.describe_outcome(failure)
        hint = _incidents.reentry_hint(call.api, "offloaded", detail, stack, running)
        _report(
            monitor, "reentry", call.api, "offloaded", started, running, detail, stack, hint
        )
        del failure


def _log_stall(line: str) -> None:
    from ._logging import logger

    logger.warning(line)


def _awaitable(obj: Any) -> bool:
    return asyncio.iscoroutine(obj) or asyncio.isfuture(obj) or hasattr(obj, "__await__")


def _cancel_job(job: _Job, future: concurrent.futures.Future[Any]) -> None:
    loop, task = job.loop, job.task
    if loop is not None and task is not None:
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:
            return  # the worker's loop already closed: nothing left to cancel
        try:
            future.exception(timeout=1.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return  # it ignores cancellation; the daemon worker is left to finish on its own


def _other_thread(api: str, loop: asyncio.AbstractEventLoop, awaitable: Any) -> Any:
    """H2: ``loop`` runs in another thread; run the awaitable there and wait."""
    from ._monitor import current, internal_error

    monitor = current()
    running_here = _get_running_loop()
    started = time.perf_counter()
    stack = _frames.capture_stack(2)
    if asyncio.isfuture(awaitable) and awaitable.get_loop() is not loop:
        raise LoopwatchError(f"{api}() was given a Future of another loop than the one it runs")

    async def await_there() -> Any:
        return await awaitable

    coro = awaitable if asyncio.iscoroutine(awaitable) else await_there()
    try:
        handle = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:
        _close(coro)
        raise
    timeout = monitor.config.offload_timeout if monitor is not None else None
    if running_here is not None:
        offloading[threading.get_ident()] = api
    try:
        return handle.result(timeout)
    except concurrent.futures.TimeoutError:
        handle.cancel()
        raise LoopwatchError(
            f"{api}() from thread {threading.current_thread().name!r} was marshalled to the loop's "
            f"own thread and did not finish within {timeout:g}s (offload_timeout); is that loop "
            "blocked waiting for this thread?"
        ) from None
    finally:
        offloading.pop(threading.get_ident(), None)
        if monitor is not None:
            try:
                _report(
                    monitor,
                    "cross_thread_run",
                    api,
                    "marshalled",
                    started if running_here is not None else None,
                    loop,
                    stack=stack,
                )
            except Exception as exc:
                internal_error("reentry", exc)


def _already_running_error(loop: Any) -> RuntimeError:
    if type(loop).__module__.startswith("uvloop"):
        return RuntimeError("this event loop is already running.")
    return RuntimeError("This event loop is already running")


# -- the patched entry points --------------------------------------------------------------


def _make_run(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(main: Any, *args: Any, **kwargs: Any) -> Any:
        running = _get_running_loop()
        if running is None:
            return original(main, *args, **kwargs)
        if not asyncio.iscoroutine(main):
            return original(main, *args, **kwargs)  # the original's own error for bad input
        call = _Call(
            API_RUN,
            main,
            None,
            lambda aw: original(aw, *args, **kwargs),
            lambda: original(main, *args, **kwargs),
        )
        return _same_thread(call, running)

    return run


def _make_runner_run(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(self: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:
        running = _get_running_loop()
        if running is None or not asyncio.iscoroutine(coro):
            return original(self, coro, *args, **kwargs)
        call = _Call(
            API_RUNNER,
            coro,
            None,
            lambda aw: original(self, aw, *args, **kwargs),
            lambda: original(self, coro, *args, **kwargs),
        )
        return _same_thread(call, running)

    return run


def _make_runner_close(original: Callable[..., Any]) -> Callable[..., Any]:
    # Closing a Runner that an offloaded Runner.run initialised drives its loop again: do
    # that on a worker too, silently (the run itself was already reported).
    @functools.wraps(original)
    def close(self: Any) -> Any:
        if _get_running_loop() is None:
            return original(self)
        return _workers.submit(functools.partial(original, self)).result()

    return close


def _run_fresh(loop_cls: type, awaitable: Any) -> Any:
    """Run ``awaitable`` to completion on a new loop of ``loop_cls``, as ``asyncio.run`` would."""
    known = loop_cls.__module__.startswith(("asyncio", "uvloop"))
    loop = loop_cls() if known else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(awaitable)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _uvloop(loop: Any) -> bool:
    return type(loop).__module__.startswith("uvloop")


def _make_run_until_complete(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_until_complete(self: Any, future: Any) -> Any:
        running = _get_running_loop()
        if running is None:
            if not self.is_running():
                return original(self, future)
            return _other_thread(API_RUC, self, future)
        if running is not self:
            if self.is_running():
                return _other_thread(API_RUC, self, future)
            # This loop is idle but another one runs here: this loop can run in a worker.
            run_elsewhere: Callable[[Any], Any] = functools.partial(original, self)
        else:
            run_elsewhere = functools.partial(_run_fresh, type(self))

        def raise_original() -> Any:
            if _uvloop(self):
                # uvloop schedules the coroutine before it raises: never let it.
                if running is self:
                    raise _already_running_error(self)
                raise RuntimeError("Cannot run the event loop while another loop is running")
            return original(self, future)

        call = _Call(API_RUC, future, self, run_elsewhere, raise_original)
        return _same_thread(call, running)

    return run_until_complete


def _loop_starting(loop: Any) -> None:
    for callback in on_loop_start:
        try:
            callback(loop)
        except Exception as exc:
            from ._monitor import internal_error

            internal_error("loop_start", exc)


def _make_run_forever(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_forever(self: Any) -> Any:
        running = _get_running_loop()
        if running is None and not self.is_running():
            if on_loop_start:
                _loop_starting(self)
            return original(self)
        from ._monitor import current

        monitor = current()
        if running is None:
            # H2: the loop already runs forever in its own thread; waiting for it to stop is
            # what this call means.
            if monitor is not None:
                _report(
                    monitor,
                    "cross_thread_run",
                    API_FOREVER,
                    "marshalled",
                    None,
                    self,
                    stack=_frames.capture_stack(1),
                )
            while self.is_running():
                time.sleep(0.05)
            return None
        # H1: there is no coroutine to offload; report and let the original error through.
        if monitor is not None:
            _report(
                monitor,
                "reentry",
                API_FOREVER,
                "raised",
                None,
                running,
                {"reason": "run_forever has nothing to offload"},
                _frames.capture_stack(1),
            )
        if _uvloop(self):
            if running is self:
                raise _already_running_error(self)
            raise RuntimeError("Cannot run the event loop while another loop is running")
        return original(self)

    return run_forever


# -- patching ------------------------------------------------------------------------------


class _Patches:
    """The attributes we replaced, to restore the identical originals."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, str, Any, Any]] = []  # owner, name, original, wrapper

    def patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__.get(name, _MISSING)
        wrapper = make(getattr(owner, name))
        setattr(owner, name, wrapper)
        self._items.append((owner, name, original, wrapper))

    def undo(self) -> list[str]:
        """Restore what is still ours; return what someone else replaced meanwhile."""
        left: list[str] = []
        while self._items:
            owner, name, original, wrapper = self._items.pop()
            if owner.__dict__.get(name) is not wrapper:
                left.append(f"{getattr(owner, '__name__', owner)}.{name}")
                continue
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        return left


def _loop_methods(patches: _Patches, cls: type) -> None:
    patches.patch(cls, "run_until_complete", _make_run_until_complete)
    patches.patch(cls, "run_forever", _make_run_forever)


def foreign_patch() -> str | None:
    """What nest_asyncio (or a fork) has patched, if anything."""
    if getattr(asyncio, "_nest_patched", False):
        return "asyncio (nest_asyncio.apply)"
    module = getattr(asyncio.run, "__module__", "") or ""
    if "nest_asyncio" in module:
        return f"asyncio.run ({module})"
    loop = _get_running_loop()
    if loop is not None and getattr(type(loop), "_nest_patched", False):
        return f"{type(loop).__name__} ({type(loop).__module__})"
    return None


class _UvloopLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, on_load: Callable[[types.ModuleType], None]) -> None:
        self._loader = loader
        self._on_load = on_load

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._on_load(module)


class _UvloopFinder(importlib.abc.MetaPathFinder):
    """Patches ``uvloop.Loop`` when uvloop is imported after :func:`install`."""

    def __init__(self, on_load: Callable[[types.ModuleType], None]) -> None:
        self._on_load = on_load

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "uvloop":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _UvloopLoader(spec.loader, self._on_load)
        return spec


def install(monitor: Monitor) -> Callable[[], None]:
    """Patch the entry points; return the function that restores them exactly."""
    patches = _Patches()
    foreign = foreign_patch()
    if foreign is not None:
        monitor.report("foreign_patch", api=foreign, action="", detail={"patched": foreign})
    else:
        run = asyncio.run
        patches.patch(asyncio, "run", _make_run)
        if asyncio.runners.run is run:
            patches.patch(asyncio.runners, "run", lambda _: asyncio.run)
        if sys.version_info >= (3, 11):
            patches.patch(asyncio.runners.Runner, "run", _make_runner_run)
            patches.patch(asyncio.runners.Runner, "close", _make_runner_close)
        _loop_methods(patches, asyncio.base_events.BaseEventLoop)

    uvloop_patched = threading.Event()

    def patch_uvloop(module: types.ModuleType) -> None:
        if uvloop_patched.is_set():
            return
        try:
            cls = module.Loop
            if getattr(cls, "_nest_patched", False):
                return
            _loop_methods(patches, cls)
            uvloop_patched.set()
        except Exception as exc:
            from ._monitor import internal_error

            internal_error("uvloop", exc)

    finder: _UvloopFinder | None = None
    if "uvloop" in sys.modules:
        patch_uvloop(sys.modules["uvloop"])
    else:
        finder = _UvloopFinder(patch_uvloop)
        sys.meta_path.insert(0, finder)

    def undo() -> None:
        if finder is not None and finder in sys.meta_path:
            sys.meta_path.remove(finder)
        left = patches.undo()
        if left:
            from ._logging import logger

            logger.warning(
                "loopwatch: left %s as they are: something patched them after loopwatch did",
                ", ".join(left),
            )
        _workers.shutdown()

    return undo


def worker_threads() -> int:
    """How many offload worker threads are alive (for tests and ``doctor``)."""
    return _workers.thread_count()
