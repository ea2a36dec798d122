"""H8: sync work waiting for a free thread (threadpool saturation).

Two pools are watched, each under a ``pool`` label value:

* ``anyio``: anyio's default thread limiter (40 threads unless changed), which
  ``anyio.to_thread.run_sync`` uses and so Starlette's ``run_in_threadpool`` and FastAPI's
  plain ``def`` endpoints and dependencies. Calls given a limiter of their own are not
  counted: that limit is the caller's choice.
* ``asyncio-default``: the default executor of a loop (``loop.run_in_executor(None, ...)``
  and ``asyncio.to_thread``) when it is a ``ThreadPoolExecutor``.

How it is measured, without changing what runs: the entry points are wrapped at class
level (anyio's backend class ``run_sync_in_worker_thread``, the loops' ``run_in_executor``
and ``ThreadPoolExecutor.submit``), and the callable handed to the pool is the user's own
inside a small timer (:class:`_Call`) that notes when a thread starts it. The wait is that
moment minus the moment of asking; a call is *waiting* until then and *busy* until it
returns. The labels are those of the handler that asked, read when it asked (a thread
started by ``run_in_executor`` does not carry the caller's context).

The pools' gauges (busy, limit, waiting) are set from those counts when the metrics are
read, so a call pays for three lock-free counts and one histogram observation.

A call that waited longer than ``block_threshold`` is one ``threadpool_saturated``
incident, reported by the worker thread as it starts the call, with the pool, its size and
the queue it waited in (detail), attributed to the handler that asked; the site is the
function that was queued.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _context, _runtime
from ._compat import anyio as anyio_compat
from ._compat import asyncio as aio
from ._frames import Frame, is_user_file
from ._patching import ImportHook, Patches, uvloop_patcher

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["POOL_ANYIO", "POOL_DEFAULT_EXECUTOR", "install"]

#: The ``pool`` label of anyio's default thread limiter.
POOL_ANYIO = "anyio"
#: The ``pool`` label of event loops' default executors.
POOL_DEFAULT_EXECUTOR = "asyncio-default"

_API = {POOL_ANYIO: "anyio.to_thread.run_sync", POOL_DEFAULT_EXECUTOR: "loop.run_in_executor"}
_HOW_TO_RAISE = {
    POOL_ANYIO: (
        "raise the limiter at startup (`anyio.to_thread.current_default_thread_limiter()"
        ".total_tokens = N`)"
    ),
    POOL_DEFAULT_EXECUTOR: (
        "give the loop a bigger default executor "
        "(`loop.set_default_executor(ThreadPoolExecutor(max_workers=N))`)"
    ),
}

_monotonic = time.monotonic
# The one install's watch, or None: every wrapper's first look.
_watch: _Watch | None = None
# Set by a loop's run_in_executor(None, ...) for the submit it makes on this thread.
_asking = threading.local()


def _value(counter: itertools.count[int]) -> int:
    """How many times ``next`` was called on a fresh ``itertools.count()`` (it says so)."""
    return int(repr(counter)[6:-1])


class _Pool:
    """What one pool is doing, as event counts.

    ``next()`` on an ``itertools.count`` is one C call under the GIL, so loop and pool
    threads count without a lock: waiting = asked - started - abandoned, busy = started -
    finished. A read between two counts is off by one for that instant only.
    """

    __slots__ = ("abandoned", "asked", "finished", "name", "size", "started")

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked = itertools.count()
        self.started = itertools.count()
        self.finished = itertools.count()
        self.abandoned = itertools.count()
        self.size: float | None = None

    def state(self) -> tuple[int, int, int]:
        """(asked, busy, waiting) now."""
        started, finished = _value(self.started), _value(self.finished)
        asked = _value(self.asked)
        return asked, started - finished, asked - started - _value(self.abandoned)


class _Call:
    """The callable a pool thread runs: notes when it starts, then runs the user's function."""

    __slots__ = ("asked", "claim", "fn", "labels", "loop", "pool", "size", "watch")

    def __init__(
        self, watch: _Watch, pool: _Pool, fn: Callable[..., Any], loop: Any, size: float | None
    ) -> None:
        self.watch = watch
        self.pool = pool
        self.fn = fn
        self.loop = loop
        self.size = size
        self.labels = _context.current_labels()
        # Whoever pops it first (the pool thread starting the call, or the caller giving up
        # on it) counts the call; list.pop is atomic, so it is counted once.
        self.claim = [True]
        self.asked = _monotonic()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # On the pool thread.
        now = _monotonic()
        try:
            self.claim.pop()
        except IndexError:  # abandoned by its caller first: runs unobserved
            return self.fn(*args, **kwargs)
        pool = self.pool
        next(pool.started)
        try:
            self.watch.waited(self, now - self.asked)
            return self.fn(*args, **kwargs)
        finally:
            next(pool.finished)

    def abandon(self, future: object = None) -> None:
        """The call will never start (cancelled while it waited); also a done-callback."""
        if not self.claim:  # the common case: its thread started it
            return
        try:
            self.claim.pop()
        except IndexError:  # started (or abandoned) already
            return
        next(self.pool.abandoned)


class _Watch:
    """The H8 bookkeeping of one install."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.pools = {name: _Pool(name) for name in (POOL_ANYIO, POOL_DEFAULT_EXECUTOR)}

    def ask(self, pool_name: str, fn: Callable[..., Any], size: float | None, loop: Any) -> _Call:
        """A call asks ``pool`` for a thread (on the asking thread)."""
        pool = self.pools[pool_name]
        if size is not None:
            pool.size = size
        call = _Call(self, pool, fn, loop, pool.size)
        next(pool.asked)
        return call

    def waited(self, call: _Call, waited: float) -> None:
        """A pool thread starts ``call`` after ``waited`` seconds (on that thread)."""
        try:
            labels = call.labels
            metrics = self.monitor.metrics
            if metrics is not None:
                metrics.observe_threadpool_wait(labels.framework, labels.handler, waited)
            if waited > self.monitor.config.block_threshold:
                self._report(call, waited)
        except Exception as exc:
            _runtime.internal_error("threadpool", exc)

    def refresh(self) -> None:
        """Set the pool gauges to the state now (when the metrics are read). Never raises."""
        try:
            metrics = self.monitor.metrics
            if metrics is None:
                return
            for pool in self.pools.values():
                asked, busy, waiting = pool.state()
                if asked:  # a pool never used has no series
                    metrics.set_threadpool(pool.name, busy, waiting, pool.size)
        except Exception as exc:
            _runtime.internal_error("threadpool", exc)

    def _report(self, call: _Call, waited: float) -> None:
        _, busy, waiting = call.pool.state()
        queue = waiting + 1  # the calls waiting when it got its thread, itself included
        pool = call.pool.name
        site = _queued_function(call.fn)
        size = "?" if call.size is None else f"{call.size:g}"
        hint = (
            f"This call waited {waited * 1000:.0f} ms for a thread of the {pool} pool: "
            f"all {size} were busy, {queue} call(s) in the queue. "
            f"Make the route async, find the slow sync call that holds the threads, or "
            f"{_HOW_TO_RAISE[pool]}."
        )
        self.monitor.report(
            "threadpool_saturated",
            api=_API[pool],
            duration=waited,
            stack=[site] if site is not None else [],
            site=site if site is not None and is_user_file(site.file) else None,
            hint=hint,
            labels=call.labels,
            loop=call.loop,
            detail={"pool": pool, "size": size, "queue": str(queue), "busy": str(busy)},
        )


def _queued_function(fn: Any) -> Frame | None:
    """Where the queued function is defined: the user's own where a wrapper queued it.

    Looks through ``functools.partial`` (its function and the callables among its
    arguments: FastAPI queues ``partial(_run_sync_endpoint, function=endpoint, ...)``,
    ``asyncio.to_thread`` queues ``partial(context.run, func, ...)``) and bound methods.
    """
    candidates = [fn]
    first: Frame | None = None
    for _ in range(16):
        if not candidates:
            break
        item = candidates.pop(0)
        if isinstance(item, functools.partial):
            candidates.append(item.func)
            candidates.extend(a for a in item.args if callable(a))
            candidates.extend(v for v in item.keywords.values() if callable(v))
            continue
        if isinstance(item, types.MethodType):
            if isinstance(item.__self__, contextvars.Context):
                continue  # Context.run: the function is among the partial's arguments
            item = item.__func__
        code = getattr(item, "__code__", None)
        if not isinstance(code, types.CodeType):
            continue
        frame = Frame(code.co_filename, code.co_firstlineno, code.co_name)
        if is_user_file(code.co_filename):
            return frame
        first = first or frame
    return first


# -- the wrappers ----------------------------------------------------------------------------


def _make_anyio_entry(original: Callable[..., Any]) -> Callable[..., Any]:
    # ``original`` is the plain function under anyio's classmethod.
    @functools.wraps(original)
    async def run_sync_in_worker_thread(
        cls: Any, func: Callable[..., Any], args: tuple[Any, ...], *rest: Any, **kwargs: Any
    ) -> Any:
        watch = _watch
        if watch is None or kwargs.get("limiter") is not None or len(rest) > 1:
            return await original(cls, func, args, *rest, **kwargs)
        try:
            limiter = anyio_compat.default_thread_limiter(cls)
            call = watch.ask(
                POOL_ANYIO, func, anyio_compat.limiter_size(limiter), aio.get_running_loop()
            )
        except Exception as exc:
            _runtime.internal_error("threadpool", exc)
            return await original(cls, func, args, *rest, **kwargs)
        try:
            return await original(cls, call, args, *rest, **kwargs)
        finally:
            call.abandon()  # counts only a call no thread started

    return run_sync_in_worker_thread


def _make_run_in_executor(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_in_executor(self: Any, executor: Any, func: Any, *args: Any) -> Any:
        if executor is not None or _watch is None:
            return original(self, executor, func, *args)
        # The loop submits to its default executor right away, on this thread.
        _asking.loop = self
        try:
            return original(self, executor, func, *args)
        finally:
            _asking.loop = None

    return run_in_executor


def _make_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        loop = getattr(_asking, "loop", None)
        watch = _watch
        if loop is None or watch is None:
            return original(self, fn, *args, **kwargs)
        _asking.loop = None  # one call per run_in_executor, even if a subclass submits again
        try:
            call = watch.ask(POOL_DEFAULT_EXECUTOR, fn, aio.executor_size(self), loop)
        except Exception as exc:
            _runtime.internal_error("threadpool", exc)
            return original(self, fn, *args, **kwargs)
        try:
            future = original(self, call, *args, **kwargs)
        except BaseException:
            call.abandon()
            raise
        future.add_done_callback(call.abandon)
        return future

    return submit


def install(monitor: Monitor) -> Callable[[], None]:
    """Wrap the thread pools' entry points at class level; return the undo."""
    global _watch
    import asyncio.base_events

    watch = _Watch(monitor)
    patches = Patches()
    patches.patch(
        asyncio.base_events.BaseEventLoop, "run_in_executor", _make_run_in_executor
    )

    def patch_pool(module: types.ModuleType) -> None:
        cls = getattr(module, "ThreadPoolExecutor", None)
        if cls is not None and not patches.patched(cls, "submit"):
            patches.patch(cls, "submit", _make_submit)


    def patch_anyio(module: types.ModuleType) -> None:
        cls = anyio_compat.backend_class(module)
        name = anyio_compat.worker_thread_entry
        if cls is None or patches.patched(cls, name):
            return
        try:
            entry = vars(cls)[name]
            wrapper = _make_anyio_entry(entry.__func__)
            patches.set(cls, name, classmethod(wrapper))
        except Exception as exc:
            _runtime.internal_error("anyio", exc)

    hooks = [
        # concurrent.futures imports its thread pool only when it is first asked for (the
        # first run_in_executor): the install does not import it for them.
        ImportHook("concurrent.futures.thread", patch_pool),
        ImportHook("uvloop", uvloop_patcher(patches, "run_in_executor", _make_run_in_executor)),
        ImportHook(anyio_compat.BACKEND_MODULE, patch_anyio),
    ]
    for hook in hooks:
        hook.start()
    _watch = watch
    metrics = monitor.metrics
    if metrics is not None:
        metrics.before_collect("threadpool", watch.refresh)

    def undo() -> None:
        global _watch
        if _watch is watch:
            _watch = None
        if metrics is not None:
            metrics.before_collect("threadpool", None)
        for hook in hooks:
            hook.stop()
        patches.undo()

    return undo
