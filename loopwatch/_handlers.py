"""H7: which handlers are in flight, and which of them are stuck.

Adapters call :func:`begin` where a request, event, command or tasks-loop iteration starts
(the same place they set its labels), :func:`touch` when it makes progress (a streamed
body chunk) and :func:`end` when it finishes. A handler still running ``stuck_after``
seconds after it started or last made progress, on a loop that is otherwise healthy, is
stuck: one ``stuck_handler`` incident with its age and the await chain of its task.

The per-handler cost is a small list in a dict; everything else happens on a thread of
loopwatch's own (``loopwatch-handlers``) that sleeps while nothing is in flight and, while
something is, wakes when the oldest handler would cross ``stuck_after`` (and once a second
to refresh ``loopwatch_handlers_in_flight``). The await chain is read on the handler's
loop thread, by one callback posted to that loop, never from another thread: the loop is
healthy, only the task waits. A handler still stuck keeps its one incident, its age
updated in place; when it ends, the incident keeps its final age.

An HTTP request's task is not looked up per request (that costs more than the rest):
when one is found stuck, the callback finds it among its loop's tasks by the labels
object in its context and the adapter's frame on its chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _context, _frames, _runtime
from ._compat import asyncio as aio
from ._frames import Frame
from ._logging import logger

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = [
    "THREAD_NAME", "begin", "end", "enter", "handler_of", "install", "receiving", "sending",
    "touch",
]

THREAD_NAME = "loopwatch-handlers"
# How often the in-flight gauge is refreshed while something is in flight.
_GAUGE_PERIOD = 1.0

# One entry per handler in flight: a list, the cheapest mutable object to make per request.
_LABELS = 0  # a Labels, or a LazyLabels resolved when read
_LOOP = 1  # the loop it runs on (dropped with the entry, and checked for closing)
_STARTED = 2  # monotonic time it began
_SENDS = 3  # progress count, bumped by touch()
_TASK = 4  # weakref to its task, or None: found by _MARK when needed
_MARK = 5  # code object of the adapter frame on the task's chain (requests), or None
_CLOCK = 6  # when the checker last saw progress (0.0: none since it began)
_SEEN = 7  # the progress count the checker saw last
_STATE = 8  # _RUNNING, _INSPECTING, _REPORTED or _GONE
_KEY = 9  # the incident's fingerprint once reported

_RUNNING, _INSPECTING, _REPORTED, _GONE = 0, 1, 2, 3

_now = time.monotonic
_get_running_loop = aio.get_running_loop

# id(entry) -> entry. Written by loop threads (begin/end), read by the checker thread:
# single dict operations, atomic under the GIL.
_inflight: dict[int, list[Any]] = {}
# Whether tracking is on (installed with stuck_after > 0): the hot path's first test.
_on = False
# Set by the checker before it sleeps with nothing in flight: begin() then wakes it.
_asleep = False
_checker: _Checker | None = None
# Fingerprint -> entries of it reported stuck and still running.
_stuck: dict[Any, set[int]] = {}


def enter(labels: Any, mark: types.CodeType | None) -> list[Any] | None:
    """A request begins on the running loop (the ASGI fast path; no task looked up).

    ``labels`` is the labels object the adapter put in the request's context, ``mark``
    the code object of the adapter's frame that awaits the app (on the task's chain).
    """
    if not _on:
        return None
    loop = _get_running_loop()
    if loop is None:
        return None
    entry = [labels, loop, _now(), 0, None, mark, 0.0, 0, _RUNNING, None]
    _inflight[id(entry)] = entry
    if _asleep:
        _wake()
    return entry


def begin(framework: str, handler: str, task: Any = None, loop: Any = None) -> list[Any] | None:
    """A handler begins: ``framework``/``handler`` labels, on ``task`` of ``loop``.

    ``task`` and ``loop`` default to the current ones. Returns the token for :func:`touch`
    and :func:`end` (``None`` when tracking is off or no loop runs here).
    """
    return begin_labels(_context.Labels(framework, handler), task, loop)


def begin_labels(labels: Any, task: Any = None, loop: Any = None) -> list[Any] | None:
    """:func:`begin` with a labels object the caller already made (it is in the context)."""
    if not _on:
        return None
    try:
        if loop is None:
            loop = _get_running_loop()
            if loop is None:
                return None
        if task is None:
            task = asyncio.current_task(loop)
        ref = weakref.ref(task) if task is not None else None
    except Exception as exc:
        _runtime.internal_error("handlers", exc)
        return None
    entry = [labels, loop, _now(), 0, ref, None, 0.0, 0, _RUNNING, None]
    _inflight[id(entry)] = entry
    if _asleep:
        _wake()
    return entry


def touch(token: list[Any] | None) -> None:
    """The handler made progress (sent a chunk): its clock starts again."""
    if token is not None:
        token[_SENDS] += 1


def sending(send: Callable[[Any], Any], token: list[Any], message: Any) -> Any:
    """A ``send`` that counts as progress (bind with ``functools.partial(sending, send, t)``)."""
    token[_SENDS] += 1
    return send(message)


def receiving(receive: Callable[[], Any], token: list[Any]) -> Any:
    """A ``receive`` that counts as progress (a WebSocket session's)."""
    token[_SENDS] += 1
    return receive()


def end(token: list[Any] | None) -> None:
    """The handler finished (returned, raised or was cancelled)."""
    if token is None:
        return
    _inflight.pop(id(token), None)
    if token[_STATE]:
        _ended(token)


def handler_of(task: Any) -> tuple[list[Any] | None, float | None]:
    """The in-flight entry whose task is ``task`` (weakly known ones only), and its age."""
    for entry in list(_inflight.values()):
        ref = entry[_TASK]
        if ref is not None and ref() is task:
            return entry, _now() - entry[_STARTED]
    return None, None


def entries_of(loop: Any) -> list[list[Any]]:
    """The in-flight entries of ``loop``."""
    return [e for e in list(_inflight.values()) if e[_LOOP] is loop]


def resolve(labels: Any) -> _context.Labels:
    """The labels an entry carries, resolved now."""
    if isinstance(labels, _context.LazyLabels):
        return labels.resolve()
    if isinstance(labels, _context.Labels):
        return labels
    return _context.Labels(str(labels[0]), str(labels[1]))


def started(entry: list[Any]) -> float:
    """The monotonic time an entry's handler began."""
    return float(entry[_STARTED])


def is_stuck(entry: list[Any]) -> bool:
    """Whether an entry was reported stuck."""
    return bool(entry[_STATE] == _REPORTED)


def find_task(entry: list[Any], tasks: list[Any] | None = None) -> Any:
    """The task of an entry; call on its loop's thread."""
    ref = entry[_TASK]
    if ref is not None:
        return ref()
    labels, mark = entry[_LABELS], entry[_MARK]
    for task in tasks if tasks is not None else aio.all_tasks(entry[_LOOP]):
        context = aio.task_context(task)
        if context is None or context.get(_context._labels) is not labels:
            continue
        if mark is None or any(f.f_code is mark for f in aio.await_chain(task)):
            return task
    return None


def chain_frames(task: Any) -> list[Frame]:
    """A task's await chain as frames, innermost first; call on its loop's thread."""
    return [
        Frame(f.f_code.co_filename, f.f_lineno or 0, _function(f.f_code))
        for f in aio.await_chain(task)
    ]


def _function(code: types.CodeType) -> str:
    # The qualified name (``Event.wait``) where the interpreter keeps one (3.11+).
    return str(getattr(code, "co_qualname", code.co_name))


# -- the loop-thread side of a stuck handler ------------------------------------------------


def _inspect(entry: list[Any]) -> None:
    """Read a stuck handler's await chain and report it (runs on its loop's thread)."""
    try:
        if id(entry) not in _inflight or entry[_STATE] != _INSPECTING:
            return  # it ended meanwhile
        monitor = _runtime.active()
        task = find_task(entry)
        if monitor is None or task is None:
            entry[_STATE] = _GONE
            return
        stack = chain_frames(task)
        site = _frames.user_frame(stack)
        labels = resolve(entry[_LABELS])
        age = _now() - entry[_STARTED]
        api = stack[0].function if stack else ""
        incident = monitor.report(
            "stuck_handler", api=api, duration=age, stack=stack, site=site, labels=labels,
            task=task.get_name(), loop=entry[_LOOP],
            thread=threading.current_thread().name,
            detail={"state": "running", "stuck_after": f"{monitor.config.stuck_after:g}"},
            level=logging.WARNING,
        )
        if incident is None:
            entry[_STATE] = _GONE
            return
        entry[_KEY] = incident.fingerprint
        entry[_STATE] = _REPORTED
        _stuck.setdefault(incident.fingerprint, set()).add(id(entry))
    except Exception as exc:
        entry[_STATE] = _GONE
        _runtime.internal_error("handlers", exc)


def _revise(entry: list[Any], ended: bool) -> None:
    """Update a reported handler's incident in place: its age, whether it still runs."""
    monitor = _runtime.active()
    key = entry[_KEY]
    if monitor is None or key is None:
        return
    age = _now() - entry[_STARTED]
    waiting = _stuck.get(key, set())
    if ended:
        waiting.discard(id(entry))
        if not waiting:
            _stuck.pop(key, None)
    known = monitor.store.get(key)
    if known is None:
        return
    # Several handlers stuck at one line share the incident: it shows the oldest age.
    duration = age if known.duration is None else max(age, known.duration)
    detail = {**known.detail, "state": "running" if waiting else "ended",
              "stuck_now": str(len(waiting))}
    monitor.store.revise(key, duration=duration, last_seen=time.time(), detail=detail)


def _ended(entry: list[Any]) -> None:
    try:
        if entry[_STATE] == _REPORTED:
            _revise(entry, ended=True)
            labels = resolve(entry[_LABELS])
            logger.info(
                "stuck handler ended after %.1f s (framework=%s handler=%s)",
                _now() - entry[_STARTED], labels.framework, labels.handler,
            )
        entry[_STATE] = _GONE
    except Exception as exc:
        _runtime.internal_error("handlers", exc)


# -- the checker thread ---------------------------------------------------------------------


def _wake() -> None:
    global _asleep
    _asleep = False
    checker = _checker
    if checker is not None:
        checker.wake()


class _Checker:
    """The thread that finds handlers past ``stuck_after`` and refreshes the gauge."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._lock = threading.Lock()
        self._lock.acquire()  # held while nobody asked for a wake-up
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # a wake-up is pending already
            self._lock.release()

    def stop(self) -> None:
        self._stopping = True
        self.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _run(self) -> None:
        global _asleep
        while not self._stopping:
            try:
                timeout = self.check()
            except Exception as exc:
                _runtime.internal_error("handlers", exc)
                timeout = _GAUGE_PERIOD
            if timeout is None:
                _asleep = True
                if _inflight:  # one began between the look and now
                    _asleep = False
                    continue
                self._lock.acquire()
            else:
                self._lock.acquire(timeout=timeout)

    def check(self) -> float | None:
        """Look at every handler in flight once; return how long to sleep (``None``: until
        one begins)."""
        stuck_after = self.monitor.config.stuck_after
        metrics = self.monitor.metrics
        entries = list(_inflight.values())
        now = _now()
        counts: dict[tuple[str, str], int] = {}
        wait = _GAUGE_PERIOD
        for entry in entries:
            loop = entry[_LOOP]
            if loop.is_closed():
                # The loop closed with the handler never finished: nobody will end it.
                _inflight.pop(id(entry), None)
                if entry[_STATE] == _REPORTED:
                    _revise(entry, ended=True)
                continue
            labels = resolve(entry[_LABELS])
            counts[labels] = counts.get(labels, 0) + 1
            if entry[_SENDS] != entry[_SEEN]:
                entry[_SEEN] = entry[_SENDS]
                entry[_CLOCK] = now
            idle = now - (entry[_CLOCK] or entry[_STARTED])
            state = entry[_STATE]
            if state == _RUNNING:
                if stuck_after <= 0:
                    continue
                if idle < stuck_after:
                    wait = min(wait, stuck_after - idle)
                    continue
                entry[_STATE] = _INSPECTING
                try:
                    loop.call_soon_threadsafe(_inspect, entry)
                except RuntimeError:  # closed meanwhile
                    _inflight.pop(id(entry), None)
            elif state == _REPORTED:
                if idle < stuck_after:
                    # It moved again (a stream that resumed): a later stall is a new one.
                    _revise(entry, ended=True)
                    entry[_STATE], entry[_KEY] = _RUNNING, None
                else:
                    _revise(entry, ended=False)
        if metrics is not None:
            metrics.set_in_flight(counts)
        if not entries:
            return None
        return max(wait, 0.001)


def configure(stuck_after: float) -> None:
    """Turn tracking on (``stuck_after`` > 0) or off (0); the checker reads the rest."""
    global _on
    _on = stuck_after > 0 and _checker is not None
    # handler_context blocks: tracked only where a loop runs (begin_labels says so).
    _context.track = (begin_labels, end) if _on else None
    if not _on:
        _inflight.clear()
    if _checker is not None:
        _checker.wake()


def install(monitor: Monitor) -> Callable[[], None]:
    """Start tracking handlers for ``monitor``; return the undo."""
    global _checker, _on
    checker = _Checker(monitor)
    _checker = checker
    checker.start()
    configure(monitor.config.stuck_after)

    def undo() -> None:
        global _checker, _on
        _on = False
        _context.track = None
        if _checker is checker:
            _checker = None
        checker.stop()
        _inflight.clear()
        _stuck.clear()
        metrics = monitor.metrics
        if metrics is not None:
            try:
                metrics.set_in_flight({})
            except Exception as exc:
                _runtime.internal_error("handlers", exc)

    return undo
