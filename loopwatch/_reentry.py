"""H1/H2: intercepting event-loop runs made from inside a running loop.

The patched entry points check, before delegating, whether a loop already runs in this
thread (H1) or whether the target loop runs in another thread (H2). Outside those cases
they call the original at once, so the fast path costs one C call and a comparison.

Policies for H1 (``on_reentry``):

* ``offload`` — run the coroutine on a worker thread with a loop of its own
  (:mod:`._offload`); return its result or raise its exception.
* ``raise`` — report, close the rejected coroutine, raise the original ``RuntimeError``.
* ``reenter`` — drive the running loop re-entrantly (:mod:`._nested`); falls back to
  ``offload`` where the loop cannot be driven that way (uvloop).
* ``auto`` — re-enter in a notebook (stdlib loop), offload in a service.

Under ``auto`` and ``reenter`` a library's own, idle loop run from inside the running one
runs nested on this thread (:func:`._ownloop.run_on_this_thread`). :mod:`._policy` holds
the routing table and what the notes say.

H2 always marshals the coroutine to the loop's own thread. ``run_forever()`` of a loop
running in another thread has no coroutine to marshal: asyncio raises "This event loop is
already running" at once, and so does loopwatch, after reporting a ``cross_thread_run``
(action ``raised``). Waiting until that loop stops instead would turn an immediate,
explicit error into a thread that hangs without saying why; code that means "wait for the
loop to stop" says so with a ``threading.Event`` or ``Thread.join()``.

What cannot be offloaded fails at once with the original error: the same ``Runner`` or
the same loop re-entered from inside itself, a loop whose thread waits for this very call,
or nesting deeper than :data:`._offload.MAX_DEPTH`.

Every route records the wait of the calling thread in :mod:`._stalls` (entered before the
call runs, left exactly once after), and each user call is reported once with the
duration that record measured: one incident, one count, one stall observation.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import functools
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import (
    _frames,
    _nested,
    _offload,
    _runtime,
    _stalls,
)
from ._compat import asyncio as aio
from ._compat import nest
from ._compat import uvloop as uvl
from ._dispatch import (
    API_FOREVER,
    API_RUC,
    API_RUN,
    API_RUNNER,
    _Call,
    _other_thread,
    _reenters,
    _refuse,
    _report,
    _same_thread,
)
from ._patching import ImportHook, Patches

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["foreign_patch", "install", "worker_threads"]

running_loop = aio.get_running_loop
worker_threads = _offload.worker_threads

# -- the patched entry points --------------------------------------------------------------


def _make_run(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(main: Any, *args: Any, **kwargs: Any) -> Any:
        running = running_loop()
        if running is None or not asyncio.iscoroutine(main):
            # (and the original's error for bad input). Unpacking empty arguments into the
            # call costs more than testing for them: this runs at every asyncio.run.
            if args or kwargs:
                return original(main, *args, **kwargs)
            return original(main)
        call = _Call(
            API_RUN, main, None,
            lambda aw: original(aw, *args, **kwargs),
            lambda: original(main, *args, **kwargs),
        )
        return _same_thread(call, running)

    return run


def _make_runner_run(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(self: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:
        running = running_loop()
        if running is None or not asyncio.iscoroutine(coro):
            if args or kwargs:
                return original(self, coro, *args, **kwargs)
            return original(self, coro)
        call = _Call(
            API_RUNNER, coro, None,
            lambda aw: original(self, aw, *args, **kwargs),
            lambda: original(self, coro, *args, **kwargs),
        )
        monitor = _runtime.active()
        if (
            aio.runner_loop(self) is running
            and monitor is not None
            and not (_reenters(monitor.config.on_reentry) and _nested.can_reenter(running))
        ):
            # The runner's own loop runs this very call: a worker could only drive that
            # loop from another thread, which waits for this one. Fail as asyncio does.
            return _refuse(monitor, call, running, "the same Runner, re-entered", [])
        return _same_thread(call, running)

    return run


def _make_runner_close(original: Callable[..., Any]) -> Callable[..., Any]:
    # Closing a Runner drives its loop (shutdown_asyncgens, the default executor). Inside a
    # running loop that must happen on a worker, silently: the runs themselves were reported.
    @functools.wraps(original)
    def close(self: Any) -> Any:
        if running_loop() is None or not aio.runner_has_open_loop(self):
            return original(self)
        monitor = _runtime.active()
        timeout = monitor.config.offload_timeout if monitor is not None else 30.0
        return _offload.run_in_worker(functools.partial(original, self), timeout)

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


def _make_run_until_complete(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_until_complete(self: Any, future: Any) -> Any:
        running = running_loop()
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
            if uvl.is_uvloop(self):
                # uvloop schedules the coroutine before it raises: never let it.
                if running is self:
                    raise uvl.already_running_error(self)
                raise uvl.other_loop_error()
            return original(self, future)

        call = _Call(API_RUC, future, self, run_elsewhere, raise_original)
        return _same_thread(call, running)

    return run_until_complete


# The hook lists themselves (never rebound): the start path tests them without a call.
_start_hooks = _runtime.loop_start_hooks
_seen_hooks = _runtime.loop_seen_hooks
_run_start_hooks = _runtime.run_loop_start_hooks


def _starting(loop: Any) -> None:
    # A closed loop is refused by run_forever itself: no hook sees it.
    if (_start_hooks or _seen_hooks) and not loop.is_closed():
        _run_start_hooks(loop)


def _make_run_forever(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_forever(self: Any) -> Any:
        running = running_loop()
        if running is None and not self.is_running():
            # _starting, inline: this runs at every start of every loop.
            if (_start_hooks or _seen_hooks) and not self.is_closed():
                _run_start_hooks(self)
            return original(self)
        monitor = _runtime.active()
        if running is None:
            # H2: the loop already runs in another thread. There is no coroutine to hand to
            # it, and waiting until it stops would turn asyncio's immediate error into a
            # silent hang: report, then fail at once as asyncio does.
            if monitor is not None:
                _report(
                    monitor, "cross_thread_run", API_FOREVER, "raised", None, self,
                    {"reason": "run_forever has no coroutine to marshal; the loop already "
                     "runs in another thread"},
                    _frames.capture_stack(1),
                )
            raise uvl.already_running_error(self)
        # H1: there is no coroutine to offload; report and let the original error through.
        if monitor is not None:
            _report(
                monitor, "reentry", API_FOREVER, "raised", None, running,
                {"reason": "run_forever has nothing to offload"}, _frames.capture_stack(1),
            )
        if uvl.is_uvloop(self):
            if running is self:
                raise uvl.already_running_error(self)
            raise uvl.other_loop_error()
        return original(self)

    return run_forever


def _make_start_only(original: Callable[..., Any]) -> Callable[..., Any]:
    """A ``run_*`` that only tells the loop-start hooks (when nest_asyncio owns nesting)."""

    @functools.wraps(original)
    def run(self: Any, *args: Any) -> Any:
        if running_loop() is None and not self.is_running():
            _starting(self)
        return original(self, *args)

    return run


# -- install -------------------------------------------------------------------------------


def foreign_patch() -> str | None:
    """What nest_asyncio (or a fork) has patched, if anything."""
    if nest.patched(asyncio):
        return "asyncio (nest_asyncio.apply)"
    module = getattr(asyncio.run, "__module__", "") or ""
    if "nest_asyncio" in module:
        return f"asyncio.run ({module})"
    loop = running_loop()
    if loop is not None and nest.patched(type(loop)):
        return f"{type(loop).__name__} ({type(loop).__module__})"
    return None


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    todo: list[type] = list(cls.__subclasses__())
    while todo:
        sub = todo.pop()
        if sub not in found:
            found.append(sub)
            todo.extend(sub.__subclasses__())
    return found


def install(monitor: Monitor) -> Callable[[], None]:
    """Patch the entry points; return the function that restores them exactly."""
    patches = Patches()
    foreign = foreign_patch()
    base = asyncio.base_events.BaseEventLoop
    if foreign is not None:
        monitor.report("foreign_patch", api=foreign, action="", detail={"patched": foreign})
        # nest_asyncio owns nesting; loopwatch still sees loops start (loop health). It
        # patches the class of the loop it was given: wrap those classes' run_forever too.
        # (Its run_until_complete drives the loop without calling run_forever.)
        patches.patch(base, "run_forever", _make_start_only)
        for cls in _subclasses(base):
            for name in ("run_forever", "run_until_complete"):
                if nest.patched(cls) and name in vars(cls):
                    patches.patch(cls, name, _make_start_only)
    else:
        run = asyncio.run
        patches.patch(asyncio, "run", _make_run)
        if asyncio.runners.run is run:
            patches.patch(asyncio.runners, "run", lambda _: asyncio.run)
        if sys.version_info >= (3, 11):
            patches.patch(asyncio.runners.Runner, "run", _make_runner_run)
            patches.patch(asyncio.runners.Runner, "close", _make_runner_close)
        patches.patch(base, "run_until_complete", _make_run_until_complete)
        patches.patch(base, "run_forever", _make_run_forever)

    def patch_uvloop(module: types.ModuleType) -> None:
        cls = uvl.loop_class(module)
        if cls is None or patches.patched(cls, "run_forever"):
            return
        try:
            if nest.patched(cls) or foreign is not None:
                patches.patch(cls, "run_forever", _make_start_only)
                return
            patches.patch(cls, "run_until_complete", _make_run_until_complete)
            patches.patch(cls, "run_forever", _make_run_forever)
        except Exception as exc:
            _runtime.internal_error("uvloop", exc)

    hook = ImportHook("uvloop", patch_uvloop)
    hook.start()

    def undo() -> None:
        hook.stop()
        left = patches.undo()
        if left:
            from ._logging import logger

            logger.warning(
                "left %s as they are: something patched them after loopwatch did",
                ", ".join(left),
            )
        _offload.workers.shutdown()
        _stalls.reset()

    return undo
