"""What to do with one nested run, and the pieces that make each choice honest.

:func:`route` picks, for one intercepted call, where it runs:

==========================  ==============================  =================================
call                        loop                            ``auto`` does
==========================  ==============================  =================================
asyncio.run / Runner.run /  stdlib, in a kernel             re-enter the running loop
run_until_complete of the   stdlib, in a service            offload to a worker thread
running loop                uvloop (any)                    offload to a worker thread
a Task/Future of the        stdlib, in a kernel             re-enter (it is that loop's)
running loop                otherwise                       fail at once, naming the object
run_until_complete /        any (a library's own loop)      run it nested on this thread,
run_forever of another,                                     then restore the running loop
idle loop
==========================  ==============================  =================================

``offload`` always offloads (a library's own loop included), ``reenter`` re-enters where it
can and runs a library's own loop nested on this thread, ``raise`` lets the error through.

:func:`run_on_this_thread` runs a library's own loop nested on the calling thread, the
running loop, current task, the thread's event loop and the signal set-up restored exactly.
:func:`wait_offloaded` waits for an offloaded call, says so in a log line when it passes
one second, and stops waiting for a coroutine that can provably never finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ._compat import asyncio as _aio
from ._errors import LoopwatchError
from ._frames import Frame, is_user_file

__all__ = [
    "Route",
    "Stuck",
    "advice_for",
    "describe_outcome",
    "library_of",
    "route",
    "run_on_this_thread",
    "wait_offloaded",
]

STALL_LINE_AFTER = 1.0  # seconds an offloaded call may stall its caller before a log line
_DETECT_EVERY = 0.25
_DEAD_FOR = 0.5  # an idle worker loop seen twice this far apart cannot finish

# A library's own loop that already ran nested once: its later runs (aiohttp's run_app runs
# its loop three times) belong to the same user call and are not counted again.
_counted_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

# The async API to use instead of a library's sync wrapper, by top-level package.
_ADVICE = {
    "uvicorn": "`await server.serve()` (server = uvicorn.Server(uvicorn.Config(app, ...)))",
    "hypercorn": "`await hypercorn.asyncio.serve(app, config)`",
    "aiohttp": "`runner = web.AppRunner(app); await runner.setup(); "
    "await web.TCPSite(runner, host, port).start()`",
    "quart": "`await app.run_task(host, port)`",
    "pydantic_ai": "`await agent.run(...)` instead of `agent.run_sync(...)`",
    "pydantic_graph": "`await agent.run(...)` instead of `agent.run_sync(...)`",
    "asyncclick": "`await command.main(args, standalone_mode=False)`",
    "telegram": "`async with application: await application.start(); "
    "await application.updater.start_polling()`",
    "discord": "`await client.start(token)`",
    "nextcord": "`await client.start(token)`",
    "disnake": "`await client.start(token)`",
}


class Route:
    """Where one nested call runs."""

    REENTER = "reentered"  # on the running loop, re-entrantly
    NESTED = "nested"  # a library's own loop, run on this thread
    OFFLOAD = "offloaded"  # on a worker thread, with a loop of its own
    REJECT = "rejected"  # a Future of the running loop that cannot run here: fail at once
    RAISE = "raised"  # the original RuntimeError


def route(
    policy: str,
    *,
    awaitable: Any,
    target: asyncio.AbstractEventLoop | None,
    running: asyncio.AbstractEventLoop,
    can_reenter: bool,
    in_kernel: bool,
) -> tuple[str, str]:
    """The route for a call and, when it is a fallback, why (``""`` otherwise)."""
    if policy == "raise":
        return Route.RAISE, ""
    own_loop = target is not None and target is not running
    if own_loop and policy != "offload":
        return Route.NESTED, ""
    reenter_wanted = policy == "reenter" or (policy == "auto" and in_kernel)
    if asyncio.isfuture(awaitable) and awaitable.get_loop() is running:
        if reenter_wanted and can_reenter and not own_loop:
            return Route.REENTER, ""
        return Route.REJECT, ""
    if own_loop:
        return Route.OFFLOAD, ""
    if reenter_wanted:
        if can_reenter:
            return Route.REENTER, ""
        kind = f"{type(running).__module__}.{type(running).__name__}"
        return Route.OFFLOAD, f"reenter is not possible on {kind}; offloaded instead"
    return Route.OFFLOAD, ""


def first_time(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this library loop's nested run is the user call's first (to count it once)."""
    try:
        if loop in _counted_loops:
            return False
        _counted_loops.add(loop)
    except TypeError:  # a loop class without weak references: count every run
        pass
    return True


# -- a library's own loop, on this thread ---------------------------------------------------


class _Signals:
    """The main thread's signal handlers and wake-up fd, to put back after a nested loop."""

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}
        self.wakeup = -1
        self.saved = False

    def save(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can change them
        for sig in signal.valid_signals():
            try:
                self.handlers[sig] = signal.getsignal(sig)
            except (OSError, ValueError):
                continue
        self.wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(self.wakeup)
        self.saved = True

    def restore(self) -> None:
        if not self.saved:
            return
        for sig, handler in self.handlers.items():
            if handler is None or signal.getsignal(sig) is handler:
                continue
            try:
                signal.signal(sig, handler)
            except (OSError, ValueError, TypeError):
                continue
        try:  # whatever the nested loop left points at its own, closed, self-pipe
            signal.set_wakeup_fd(self.wakeup)
        except (OSError, ValueError):
            signal.set_wakeup_fd(-1)


class _StallLine:
    """One log line, from a timer thread, once a nested run has held this thread's loop
    for :data:`STALL_LINE_AFTER` seconds (a server's ``run()`` in a cell, say)."""

    def __init__(self, text: str, log: Callable[[str], None]) -> None:
        self._started = time.perf_counter()
        self._text = text
        self._log = log
        self._timer = threading.Timer(STALL_LINE_AFTER, self._say)
        self._timer.daemon = True
        self._timer.start()

    def _say(self) -> None:
        waited = time.perf_counter() - self._started
        self._log(self._text.format(waited=waited))

    def cancel(self) -> None:
        self._timer.cancel()


def run_on_this_thread(
    running: asyncio.AbstractEventLoop,
    run: Callable[[], Any],
    api: str = "",
    site: Frame | None = None,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Run ``run`` (which runs another loop) here, as if no loop were running, then restore.

    What a library's own loop may change and a script would never notice is put back: the
    running loop and its current task, the loop ``set_event_loop`` set for this thread, the
    signal handlers and the wake-up fd (servers install their own).
    """
    task = asyncio.current_task(running)
    known, thread_loop = _aio.policy_loop()
    signals = _Signals()
    signals.save()
    if task is not None:
        _aio.leave_task(running, task)  # 3.14 keeps one current task per thread
    line = None
    if log is not None:
        where = f" at {site.file}:{site.line}" if site is not None else ""
        line = _StallLine(
            f"{api}(){where} has run its own event loop on this thread for "
            "{waited:.1f}s; the running loop waits until it returns",
            log,
        )
    _aio.set_running_loop(None)
    try:
        return run()
    finally:
        if line is not None:
            line.cancel()
        _aio.set_running_loop(running)
        if task is not None and asyncio.current_task(running) is not task:
            _aio.enter_task(running, task)
        if known:
            _aio.set_policy_loop(thread_loop)
        signals.restore()


# -- an offloaded call ----------------------------------------------------------------------


def wait_offloaded(
    future: concurrent.futures.Future[Any],
    timeout: float,
    api: str,
    site: Frame | None,
    job: Any,
    log: Callable[[str], None] | None,
) -> bool:
    """Wait for an offloaded call; True when it finished, False when ``timeout`` passed.

    Says so in a log line once the caller has stalled past one second, and raises
    :class:`Stuck` when the worker's loop provably waits for nothing it could ever get
    (something only the stalled caller's loop would do). Whatever the call itself raised
    stays in ``future`` for the caller (a ``TimeoutError`` of its own included).
    """
    started = time.perf_counter()
    deadline = started + timeout
    said = False
    dead_since: float | None = None
    while True:
        now = time.perf_counter()
        done, _ = concurrent.futures.wait((future,), min(_DETECT_EVERY, max(0.0, deadline - now)))
        if done:
            return True
        now = time.perf_counter()
        if now >= deadline:
            return False
        waited = now - started
        if not said and waited >= STALL_LINE_AFTER and log is not None:
            said = True
            where = f" at {site.file}:{site.line}" if site is not None else ""
            log(
                f"{api}(){where} has run on a worker thread for {waited:.1f}s; this "
                f"thread's event loop is stalled until it ends (at most {timeout:g}s)"
            )
        loop, task = getattr(job, "loop", None), getattr(job, "task", None)
        if loop is None or task is None or waited < STALL_LINE_AFTER / 2:
            continue
        why = _aio.loop_waits_for_nothing(loop, task)
        if not why:
            dead_since = None
        elif dead_since is None:
            dead_since = now
        elif now - dead_since >= _DEAD_FOR:
            raise Stuck(why, waited)


class Stuck(LoopwatchError):
    """An offloaded coroutine that waits for something only the stalled loop could do."""

    def __init__(self, waiting_for: str, after: float) -> None:
        super().__init__(waiting_for)
        self.waiting_for = waiting_for
        self.after = after


# -- what the notes say ---------------------------------------------------------------------


def library_of(stack: list[Frame] | tuple[Frame, ...]) -> str | None:
    """The top-level package of the library the user called (the frame just inside theirs)."""
    previous: Frame | None = None
    for frame in stack:  # innermost first
        if is_user_file(frame.file):
            break
        previous = frame
    else:
        return None
    if previous is None:
        return None
    path = os.path.normcase(previous.file)
    for marker in ("site-packages", "dist-packages"):
        _, sep, tail = path.partition(os.sep + marker + os.sep)
        if sep:
            return tail.split(os.sep, 1)[0].removesuffix(".py") or None
    return None


def advice_for(api: str, library: str | None) -> str:
    """The one change that removes this nested run from the user's code."""
    if library is not None:
        known = _ADVICE.get(library)
        if known is not None:
            return f"use {library}'s async API: {known}"
        return f"use {library}'s async API from async code, or call it from a plain script"
    coroutine = "the coroutine" if api != "loop.run_forever" else "the work"
    return f"make the caller async and `await` {coroutine} instead of calling {api}()"


def describe_outcome(exc: BaseException | None) -> str:
    """``returned`` or ``failed with <type>: <message>`` (shortened), for notes and logs."""
    if exc is None:
        return "returned"
    if not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt: how servers stop their own loop (aiohttp's
        # GracefulExit); the library usually handles it, so it is not called a failure here.
        return f"stopped by {type(exc).__name__}"
    text = " ".join(str(exc).split())
    if len(text) > 100:
        text = text[:99] + "…"
    name = type(exc).__name__
    return f"failed with {name}: {text}" if text else f"failed with {name}"


def in_kernel(framework: str) -> bool:
    """Whether the call comes from a notebook cell (the IPython extension labels them)."""
    return framework == "jupyter"
