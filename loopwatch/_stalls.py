"""Which thread waits for which nested call: the one owner of stall state.

A *stall* is a thread that waits for a nested call it made: an offloaded coroutine, a
library's own loop run on this thread, a re-entrant run of its own loop, a coroutine
marshalled to a loop of another thread. While it waits, the loop running on that thread
(if any) runs nothing else. Every route records its wait here, and everything that needs
to know asks here:

* :func:`enter` / :func:`leave` bracket one nested call; calls nest, so each thread has a
  stack of open stalls. :func:`leave` closes a record exactly once and returns how long it
  lasted: the caller reports one incident, one count and one stall observation with it.
* :func:`waiting` / :func:`current` tell the watchdog's samples and the cross-thread
  deadlock check whether a thread waits for a nested call right now.
* :func:`covering` tells the watchdog, when a block of a loop ends, whether a stall of that
  thread filled most of it: then the block *is* that stall, already reported, not a second
  incident.
* :func:`continues` says whether a run of a library's own loop belongs to the same user
  call as the previous one (a server's ``run()`` runs its loop for setup, serving and
  cleanup), so one user call is counted once, while five calls of a client that keeps one
  loop are five calls.
* :meth:`Stall.say` logs the "still running" line of a long stall through the monitor's
  folding, structured log sink, with the labels and the site of the call that stalls.

Records hold no loop, task or frame once closed but the one frame :func:`continues` needs,
the latest library frame per thread, dropped at the next nested run of that thread and at
uninstall.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import types
import weakref
from typing import Any

from . import _context, _runtime
from ._frames import Frame, user_frame

__all__ = [
    "REENTERED",
    "STALL_LINE_AFTER",
    "Stall",
    "continues",
    "covering",
    "current",
    "enter",
    "leave",
    "reset",
    "waiting",
]

#: Seconds a nested call may stall its caller before a line says so.
STALL_LINE_AFTER = 1.0
#: The route of a nested call run re-entrantly on the running loop, which keeps running.
REENTERED = "reentered"

_clock = time.monotonic
_lock = threading.Lock()
_open: dict[int, list[Stall]] = {}  # thread id -> open stalls, innermost last
# Recently closed stalls of every thread, for a block that is reported just after its stall
# ended (the loop thread goes back to its wait once the nested call has returned).
_closed: collections.deque[Stall] = collections.deque(maxlen=256)
# Thread id -> the library frame that made that thread's latest nested run of its own loop.
_last_caller: dict[int, types.FrameType] = {}


class Stall:
    """One nested call a thread waits for."""

    __slots__ = (
        "_line", "_loop", "api", "ended", "labels", "route", "site", "stack", "started",
        "task", "thread_id", "thread_name",
    )

    def __init__(
        self, api: str, route: str, stack: list[Frame], loop: object | None, task: str | None
    ) -> None:
        current = threading.current_thread()
        self.api = api
        self.route = route
        self.thread_id = threading.get_ident()
        self.thread_name = current.name
        self.stack = stack
        self.site = user_frame(stack)
        self.labels = _context.current_labels()
        self.task = task
        self._loop: weakref.ref[Any] | None = _weak(loop)
        self.started = _clock()
        self.ended: float | None = None
        self._line: threading.Timer | None = None

    @property
    def holds_loop(self) -> bool:
        """Whether the thread's loop runs nothing else meanwhile (every route but re-entry)."""
        return self.route != REENTERED

    @property
    def loop(self) -> object | None:
        """The loop this thread was running when the call was made (``None`` if gone)."""
        return self._loop() if self._loop is not None else None

    def duration(self) -> float:
        """Seconds from :func:`enter` to :func:`leave` (to now, while open)."""
        return (self.ended if self.ended is not None else _clock()) - self.started

    def say(self, what: str) -> None:
        """Log "``api()`` at <site> <what>" through the monitor's folding log sink.

        Not an incident (nothing is counted); the caller decides when (once, past a second).
        """
        monitor = _runtime.active()
        if monitor is None or self.ended is not None:
            return
        where = f" at {self.site.file}:{self.site.line}" if self.site is not None else ""
        monitor.progress(
            "reentry", api=self.api, message=f"{self.api}(){where} {what}",
            duration=self.duration(), stack=self.stack, site=self.site, labels=self.labels,
            task=self.task, loop=self.loop, thread=self.thread_name,
            detail={"route": self.route}, level=logging.WARNING,
        )

    def say_after(self, delay: float, what: str) -> None:
        """:meth:`say` from a timer thread after ``delay`` seconds, unless closed first.

        For a thread that cannot look at the clock itself while it waits (it runs a loop).
        ``what`` may use ``{waited}`` (seconds, at the moment of the line).
        """
        timer = threading.Timer(delay, lambda: self.say(what.format(waited=self.duration())))
        timer.daemon = True
        timer.name = "loopwatch-stall-line"
        self._line = timer
        timer.start()


def _weak(obj: object | None) -> weakref.ref[Any] | None:
    if obj is None:
        return None
    try:
        return weakref.ref(obj)
    except TypeError:  # a loop class without weak references: not kept at all
        return None


def enter(
    api: str, route: str, stack: list[Frame], loop: object | None = None,
    task: str | None = None,
) -> Stall:
    """This thread starts waiting for the nested call ``api`` (taking ``route``)."""
    stall = Stall(api, route, stack, loop, task)
    with _lock:
        _open.setdefault(stall.thread_id, []).append(stall)
    return stall


def leave(stall: Stall) -> float:
    """The thread stopped waiting for ``stall``: close it (once) and return its duration."""
    with _lock:
        if stall.ended is not None:
            return stall.ended - stall.started
        stall.ended = _clock()
        stack = _open.get(stall.thread_id)
        if stack is not None:
            if stall in stack:
                stack.remove(stall)
            if not stack:
                del _open[stall.thread_id]
        _closed.append(stall)
    timer, stall._line = stall._line, None
    if timer is not None:
        timer.cancel()
    stall._loop = None  # a closed record outlives nothing it watched
    return stall.ended - stall.started


def current(thread_id: int) -> Stall | None:
    """The innermost nested call ``thread_id`` is inside right now, if any."""
    stack = _open.get(thread_id)
    try:
        return stack[-1] if stack else None
    except IndexError:  # emptied by its thread meanwhile
        return None


def waiting(thread_id: int) -> str:
    """The api of the nested call that holds ``thread_id``'s loop now, ``""`` when none.

    A re-entrant run keeps the loop going (its callbacks, a marshalled coroutine, the
    watchdog's view of blocks): only the innermost call counts, and only when it holds
    the loop.
    """
    stall = current(thread_id)
    return stall.api if stall is not None and stall.holds_loop else ""


def covering(thread_id: int, start: float, end: float) -> Stall | None:
    """The stall of ``thread_id`` that filled most of ``[start, end]`` (monotonic), if any.

    Stalls one after another (a sync client called in a loop) add up: the block is theirs
    when, together, they cover more than half of it. The longest of them is returned.
    """
    if end <= start:
        return None
    now = _clock()
    with _lock:
        records = [s for s in _closed if s.thread_id == thread_id and s.holds_loop]
        records.extend(s for s in _open.get(thread_id, ()) if s.holds_loop)
    spans = sorted(
        (max(s.started, start), min(s.ended if s.ended is not None else now, end), s)
        for s in records
    )
    covered = 0.0
    reach = start
    best: Stall | None = None
    longest = 0.0
    for lo, hi, stall in spans:
        if hi <= lo:
            continue
        if hi - lo > longest:
            best, longest = stall, hi - lo
        lo = max(lo, reach)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return best if 2 * covered > end - start else None


def continues(caller: types.FrameType | None) -> bool:
    """Whether a nested run made by library frame ``caller`` is part of an earlier user call.

    True when the library frame that made this thread's previous nested run is still on
    this thread's stack, ``caller`` or outside it: the same call into the library, running
    its loop again. ``caller`` is remembered for the next run; ``None`` (the user's own code
    made the run) is always a new call.
    """
    me = threading.get_ident()
    with _lock:
        previous = _last_caller.pop(me, None)
        if caller is not None:
            if len(_last_caller) >= 16:  # forget threads that have ended
                alive = {t.ident for t in threading.enumerate()}
                for ident in [i for i in _last_caller if i not in alive]:
                    del _last_caller[ident]
            _last_caller[me] = caller
    if previous is None or caller is None:
        return False
    frame: types.FrameType | None = caller
    while frame is not None:
        if frame is previous:
            return True
        frame = frame.f_back
    return False


def reset() -> None:
    """Forget the remembered library frames (at uninstall)."""
    with _lock:
        _last_caller.clear()
