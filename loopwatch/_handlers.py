"""H7: which handlers are in flight, and which of them are stuck.

Adapters call :func:`begin` where a request, event, command or tasks-loop iteration starts
(the same place they set its labels) and :func:`end` when it finishes; the ASGI middleware
uses the inline fast path (:data:`FAST`): the request's labels object in a dict, by id.

Stuck means: still running, and every task of the handler (its own, and the tasks that
carry its labels, such as the one a streaming response sends from) has waited on the very
same future for ``stuck_after`` seconds. A task that moves on to a new wait (a stream's
next chunk, the next query) is making progress and restarts the clock; so does
:func:`touch`. Progress is read from the tasks, not counted per ``send``: counting would
put a wrapper call on every message of every request.

Everything but the per-handler list and dict entry happens off the hot path, on a thread
of loopwatch's own (``loopwatch-handlers``) that sleeps while nothing is in flight. While
something is, it looks once per period (a quarter of ``stuck_after``, at most a second):
it refreshes ``loopwatch_handlers_in_flight`` (the handlers it has seen before: older than
one period, their route known) and, for each loop with such a handler, posts one callback
to that loop (a request's loop is not known until a look finds it: its first look goes to
every watched loop). The callback runs on the loop's own thread (the loop is healthy; only
the tasks wait) and compares what each handler's tasks wait on with what they waited on at
the previous look; one unchanged for ``stuck_after`` is reported once (``stuck_handler``,
with the await chain of its task), then its age is updated in place until it ends, when
the incident keeps its final age.
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
    "FAST", "THREAD_NAME", "begin", "begin_labels", "end", "finished", "install", "labels_of",
    "own_tasks", "touch", "watched_loops",
]

THREAD_NAME = "loopwatch-handlers"
_MAX_PERIOD = 1.0

# What the checker knows of a handler in flight, a list. Handlers that began through
# begin() are this list from the start; a request (the fast path) is only its labels
# object until the checker first sees it and makes the list.
_LABELS = 0  # the labels object in the handler's context (a Labels or LazyLabels)
_LOOP = 1  # weakref to the loop it runs on (None: not known yet; every watched loop looks)
_STARTED = 2  # monotonic time it began (a request: when the checker first saw it)
_MARK = 3  # code object of the adapter frame on its task's chain, or None
_TASK = 4  # weakref to its task, or None (then found by _LABELS and _MARK)
_TOUCHED = 5  # progress count, bumped by touch()
_SEEN = 6  # the progress count at the last look
_STATE = 7  # _RUNNING or _REPORTED
_KEY = 8  # the incident's fingerprint once reported
_SNAP = 9  # what its tasks waited on at the last look: {id(task): (task ref, waiter ref)}
_CLOCK = 10  # when a look last saw a change (0.0: not looked at yet)
_ID = 11  # its key in _inflight
_FULL = 12

_RUNNING, _REPORTED = 0, 1

_now = time.monotonic
_running_loop = aio.get_running_loop

# Key -> a request's labels object (keyed by its id) or a begin() entry (by the entry's
# id). Loop threads add and remove (single dict operations, atomic under the GIL); the
# checker thread reads.
_inflight: dict[int, Any] = {}
# Key -> what the checker made of a request it has seen (begin() entries are their own).
_known: dict[int, list[Any]] = {}
# Key -> the handlers reported stuck and still running (written on loop threads; the checker
# only removes those of a loop that closed).
_reported: dict[int, list[Any]] = {}
# Code object of the frame each fast-path labels type has on its handler's task chain.
_marks: dict[type, types.CodeType] = {}


class _Fast:
    """What the ASGI middleware uses per request without a function call.

    ``on[0]``: tracking is on; ``inflight``: add ``inflight[id(labels)] = labels`` as the
    request begins and pop it as it ends; ``asleep[0]``: the checker sleeps until woken
    (then call ``wake()`` after adding); ``reported``: when not empty, call
    ``finished(key)`` after popping (the request may have been reported stuck).
    """

    __slots__ = ("asleep", "inflight", "on", "reported")

    def __init__(self) -> None:
        self.on = [False]
        self.asleep = [False]
        self.inflight = _inflight
        self.reported = _reported

    @staticmethod
    def wake() -> None:
        """Wake the checker thread (a handler began while nothing was in flight)."""
        _wake()

    @staticmethod
    def mark(labels_type: type, code: types.CodeType) -> None:
        """Requests labelled with ``labels_type`` run with ``code`` on their task's chain."""
        _marks[labels_type] = code


FAST = _Fast()
_checker: _Checker | None = None

# Loops seen starting (or running at install), by id: a weak reference to the loop and the
# id of the thread running it (its name is looked up when the loops are read). A plain
# dict, so a loop's first start makes no weak reference with a callback: entries of loops
# closed or gone are dropped when the loops are read, and by the start that finds the dict
# twice as long as after the last such sweep.
_loops: dict[int, tuple[Callable[[], Any], int]] = {}
_loops_lock = threading.Lock()
_sweep_at = [64]


def _watch(loop: Any) -> None:
    # A once-per-loop hook: never called for loopwatch's own offload loops (short-lived,
    # not the service's). The lock is taken directly: a with-block costs twice as much.
    entry = (weakref.ref(loop), threading.get_ident())
    _loops_lock.acquire()
    try:
        _loops[id(loop)] = entry
        if len(_loops) >= _sweep_at[0]:
            _sweep()
    finally:
        _loops_lock.release()


def _sweep() -> list[tuple[Any, int]]:
    # Under _loops_lock: drop the loops closed or gone; return the others.
    alive = []
    for key, (ref, ident) in list(_loops.items()):
        loop = ref()
        if loop is None or loop.is_closed():
            del _loops[key]
        else:
            alive.append((loop, ident))
    _sweep_at[0] = max(64, 2 * len(_loops))
    return alive


def watched_loops() -> list[tuple[Any, str]]:
    """The loops loopwatch has seen run, with their thread's name."""
    with _loops_lock:
        alive = _sweep()
    return [(loop, _runtime.thread_name(ident)) for loop, ident in alive]


def begin(framework: str, handler: str, task: Any = None, loop: Any = None) -> list[Any] | None:
    """A handler begins: ``framework``/``handler`` labels, on ``task`` of ``loop``.

    ``task`` and ``loop`` default to the current ones. Returns the token for :func:`touch`
    and :func:`end` (``None`` when tracking is off or no loop runs here).
    """
    if not FAST.on[0]:
        return None
    return begin_labels(_context.Labels(framework, handler), task, loop)


def begin_labels(labels: Any, task: Any = None, loop: Any = None) -> list[Any] | None:
    """:func:`begin` with the labels object the caller put in the handler's context (the
    tasks the handler starts carry that very object: they count as its tasks)."""
    if not FAST.on[0]:
        return None
    try:
        if loop is None:
            loop = _running_loop()
            if loop is None:
                return None
        if task is None:
            task = asyncio.current_task(loop)
        ref = weakref.ref(task) if task is not None else None
    except Exception as exc:
        _runtime.internal_error("handlers", exc)
        return None
    entry = [labels, weakref.ref(loop), _now(), None, ref, 0, 0, _RUNNING, None, None, 0.0, 0]
    entry[_ID] = id(entry)
    _inflight[id(entry)] = entry
    if FAST.asleep[0]:
        _wake()
    return entry


def touch(token: list[Any] | None) -> None:
    """The handler made progress (for handlers whose tasks wait on one future while they
    do make progress): its clock starts again at the next look."""
    if token is not None:
        token[_TOUCHED] += 1


def end(token: list[Any] | None) -> None:
    """The handler finished (returned, raised or was cancelled)."""
    if token is not None:
        _inflight.pop(id(token), None)
        if _reported:
            finished(id(token))


def finished(key: int) -> None:
    """A handler ended that may have been reported stuck: keep its final age."""
    entry = _reported.pop(key, None)
    if entry is None:
        return
    try:
        _known.pop(key, None)
        entry[_STATE] = _RUNNING
        _revise(entry, ended=True)
        labels = resolve(entry[_LABELS])
        logger.info(
            "stuck handler ended after %.1f s (framework=%s handler=%s)",
            _now() - entry[_STARTED], labels.framework, labels.handler,
        )
    except Exception as exc:
        _runtime.internal_error("handlers", exc)


# -- reading entries (for the task view) -----------------------------------------------------


def _entry(key: int, value: Any, now: float) -> list[Any]:
    """What the checker knows of the handler in flight under ``key`` (made on first sight)."""
    if type(value) is list:
        return value
    known = _known.get(key)
    if known is None or known[_LABELS] is not value:
        known = [value, None, now, _marks.get(type(value)), None, 0, 0, _RUNNING, None, None,
                 0.0, key]
        _known[key] = known
    return known


def entries() -> list[list[Any]]:
    """What is known of every handler in flight (requests not seen by the checker yet
    count from now)."""
    now = _now()
    return [_entry(key, value, now) for key, value in list(_inflight.items())]


def _live(entry: list[Any]) -> bool:
    value = _inflight.get(entry[_ID])
    return value is entry or (value is not None and value is entry[_LABELS])


def resolve(labels: Any) -> _context.Labels:
    """The labels an entry carries, resolved now."""
    if isinstance(labels, _context.LazyLabels):
        return labels.resolve()
    if isinstance(labels, _context.Labels):
        return labels
    return _context.Labels(str(labels[0]), str(labels[1]))


def started(entry: list[Any]) -> float:
    """The monotonic time an entry's handler began (or was first seen)."""
    return float(entry[_STARTED])


def is_stuck(entry: list[Any]) -> bool:
    """Whether an entry is reported stuck now."""
    return bool(entry[_STATE] == _REPORTED)


def labels_of(task: Any) -> Any:
    """The labels object in a task's context (unresolved), or ``None``."""
    context = aio.task_context(task)
    return None if context is None else context.get(_context._labels)


def own_tasks() -> dict[int, Any]:
    """The handlers in flight, to tell a handler's own task from the tasks it started: the
    ``id`` of each one's labels object -> its own task, or ``None`` for a request (its task
    is not recorded; it is one of the tasks carrying that labels object)."""
    owners: dict[int, Any] = {}
    for value in list(_inflight.values()):
        if type(value) is list:
            ref = value[_TASK]
            owners[id(value[_LABELS])] = ref() if ref is not None else None
        else:
            owners[id(value)] = None
    return owners


def tasks_by_labels(tasks: list[Any], wanted: set[int]) -> dict[int, list[Any]]:
    """The tasks whose context holds one of the labels objects in ``wanted`` (by ``id``)."""
    out: dict[int, list[Any]] = {}
    for task in tasks:
        labels = labels_of(task)
        if labels is not None and id(labels) in wanted:
            out.setdefault(id(labels), []).append(task)
    return out


def handler_tasks(entry: list[Any], by_labels: dict[int, list[Any]]) -> list[Any]:
    """The tasks of a handler: its own and those carrying its labels object."""
    tasks = list(by_labels.get(id(entry[_LABELS]), ()))
    ref = entry[_TASK]
    own = ref() if ref is not None else None
    if own is not None and all(own is not t for t in tasks):
        tasks.append(own)
    return tasks


def find_task(entry: list[Any], candidates: list[Any]) -> Any:
    """The handler's own task among ``candidates`` (its tasks); call on its loop's thread."""
    ref = entry[_TASK]
    if ref is not None:
        return ref()
    mark = entry[_MARK]
    for task in candidates:
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


# -- the looks, on the loop's thread ----------------------------------------------------------


def _never() -> None:
    return None


def _ref(obj: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(obj)
    except TypeError:  # an awaitable without weak references: never "the same" again
        return _never


def _snapshot(tasks: list[Any]) -> dict[int, tuple[Callable[[], Any], Callable[[], Any]]]:
    snap = {}
    for task in tasks:
        waiter = aio.task_waiter(task)
        snap[id(task)] = (_ref(task), _ref(waiter) if waiter is not None else _never)
    return snap


def _unchanged(old: dict[int, Any] | None, tasks: list[Any]) -> bool:
    """Whether ``tasks`` are the tasks of the last look, each waiting on the same future."""
    if old is None or len(old) != len(tasks) or not tasks:
        return False
    for task in tasks:
        refs = old.get(id(task))
        if refs is None or refs[0]() is not task:
            return False
        waiter = aio.task_waiter(task)
        if waiter is None or refs[1]() is not waiter:
            return False  # ready to run, or waiting on something new: it moved
    return True


def _look(loop: Any, group: list[list[Any]]) -> None:
    """Compare each handler's tasks on this loop with the last look; report the stuck."""
    _pending.discard(id(loop))
    try:
        monitor = _runtime.active()
        if monitor is None:
            return
        stuck_after = monitor.config.stuck_after
        live = [e for e in group if _live(e)]
        if not live or stuck_after <= 0:
            return
        by_labels = tasks_by_labels(aio.all_tasks(loop), {id(e[_LABELS]) for e in live})
        now = _now()
        for entry in live:
            tasks = handler_tasks(entry, by_labels)
            if not tasks:
                continue  # not a handler of this loop (or it has no task left)
            if entry[_LOOP] is None:
                entry[_LOOP] = weakref.ref(loop)
            touched = entry[_TOUCHED] != entry[_SEEN]
            if touched or not _unchanged(entry[_SNAP], tasks):
                entry[_SNAP], entry[_SEEN] = _snapshot(tasks), entry[_TOUCHED]
                if entry[_STATE] == _REPORTED:
                    finished(entry[_ID])  # it moved again (a stream that resumed)
                # The first look counts from the start: no progress was seen since.
                # Only an unchanged look can report.
                entry[_CLOCK] = now if entry[_CLOCK] or touched else entry[_STARTED]
                continue
            if now - entry[_CLOCK] < stuck_after:
                continue
            if entry[_STATE] == _REPORTED:
                _revise(entry, ended=False)
            else:
                _report(monitor, entry, tasks, loop)
    except Exception as exc:
        _runtime.internal_error("handlers", exc)


def _report(monitor: Monitor, entry: list[Any], tasks: list[Any], loop: Any) -> None:
    task = find_task(entry, tasks)
    if task is None:
        return
    stack = chain_frames(task)
    if _frames.user_frame(stack) is None:
        # The handler's task waits for tasks of its own (a streaming response sends from
        # a task group): the user's line is in one of those.
        for other in tasks:
            chain = chain_frames(other) if other is not task else []
            if _frames.user_frame(chain) is not None:
                task, stack = other, chain
                break
    age = _now() - entry[_STARTED]
    incident = monitor.report(
        "stuck_handler", api=stack[0].function if stack else "", duration=age, stack=stack,
        site=_frames.user_frame(stack), labels=resolve(entry[_LABELS]), task=task.get_name(),
        loop=loop, thread=threading.current_thread().name,
        detail={"state": "running", "stuck_after": f"{monitor.config.stuck_after:g}"},
        level=logging.WARNING,
    )
    if incident is not None:
        entry[_KEY], entry[_STATE] = incident.fingerprint, _REPORTED
        _reported[entry[_ID]] = entry
        if not _live(entry):  # it ended while the report was written
            finished(entry[_ID])


def _revise(entry: list[Any], ended: bool) -> None:
    """Update a reported handler's incident in place: its age, whether it still runs."""
    monitor = _runtime.active()
    key = entry[_KEY]
    if monitor is None or key is None:
        return
    age = _now() - entry[_STARTED]
    waiting = sum(1 for e in list(_reported.values()) if e[_KEY] == key)
    known = monitor.store.get(key)
    if known is None:
        return
    # Several handlers stuck at one line share the incident: it shows the oldest age.
    duration = age if known.duration is None else max(age, known.duration)
    detail = {**known.detail, "state": "running" if waiting else "ended",
              "stuck_now": str(waiting)}
    monitor.store.revise(key, duration=duration, last_seen=time.time(), detail=detail)


# -- the checker thread -----------------------------------------------------------------------

# Loops with a look posted and not run yet (a blocked loop gets no second one).
_pending: set[int] = set()


def _wake() -> None:
    checker = _checker
    if checker is not None:
        checker.wake()
    else:
        FAST.asleep[0] = False


class _Checker:
    """The thread that refreshes the gauge and asks loops to look at old handlers."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._lock = threading.Lock()
        self._lock.acquire()  # held while nobody asked for a wake-up
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def wake(self) -> None:
        """Wake the thread; the first handler to begin starts it.

        A program that never runs a handler (a script, a worker, a test suite) never gets
        the thread: the install starts none.
        """
        if self._thread is None:
            if self._stopping or not _inflight:
                return  # nothing to look at yet (FAST.asleep stays set: the next begin asks)
            with self._starting:
                if self._thread is None and not self._stopping:
                    thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                    self._thread = thread
                    FAST.asleep[0] = False
                    try:
                        thread.start()
                    except RuntimeError as exc:  # no thread to be had now: the next begin tries
                        self._thread = None
                        FAST.asleep[0] = True
                        _runtime.internal_error("handlers", exc)
            return
        FAST.asleep[0] = False
        with contextlib.suppress(RuntimeError):  # a wake-up is pending already
            self._lock.release()

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child (a pre-forking server's worker): the parent's
        thread does not exist here, and its handlers do not run here."""
        self._thread = None
        self._lock = threading.Lock()
        self._lock.acquire()
        self._starting = threading.Lock()
        _inflight.clear()
        _reported.clear()
        _pending.clear()
        FAST.asleep[0] = True  # the child's first handler starts the thread

    def stop(self) -> None:
        self._stopping = True
        with self._starting:  # no start after this
            pass
        self.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def period(self) -> float:
        stuck_after = self.monitor.config.stuck_after
        return min(stuck_after / 4, _MAX_PERIOD) if stuck_after > 0 else _MAX_PERIOD

    def _run(self) -> None:
        while not self._stopping:
            try:
                busy = self.check()
            except Exception as exc:
                _runtime.internal_error("handlers", exc)
                busy = True
            if not busy:
                FAST.asleep[0] = True
                if not _inflight:  # else one began between the look and now
                    self._lock.acquire()  # until a handler begins (or stop)
                FAST.asleep[0] = False
                if self._stopping:
                    break  # the wake-up was stop's: waiting a period would hold up its join
            # Nothing that began meanwhile is older than a period sooner: a stream of
            # short requests wakes this thread once per period, not once per request.
            self._lock.acquire(timeout=self.period())

    def check(self) -> bool:
        """Look at every handler in flight once; return whether any is."""
        config = self.monitor.config
        metrics = self.monitor.metrics
        period = self.period()
        now = _now()
        counts: dict[tuple[str, str], int] = {}
        old: list[list[Any]] = []
        items = list(_inflight.items())
        for key, value in items:
            entry = _entry(key, value, now)
            ref = entry[_LOOP]
            loop = ref() if ref is not None else None
            if ref is not None and (loop is None or loop.is_closed()):
                # The loop closed with the handler unfinished: nobody will end it.
                _inflight.pop(key, None)
                if key in _reported:
                    finished(key)
                continue
            if now - entry[_STARTED] < period:
                # Seen for the first time: a request may still be routing, its labels not
                # final. Counted (and looked at) from the next look on.
                continue
            labels = resolve(entry[_LABELS])
            counts[labels] = counts.get(labels, 0) + 1
            if config.stuck_after > 0:
                old.append(entry)
        for key in [k for k in list(_known) if k not in _inflight]:
            _known.pop(key, None)  # ended: forget what was seen of it
        self._post(old)
        if metrics is not None:
            metrics.set_in_flight(counts)
        return bool(items)

    def _post(self, old: list[list[Any]]) -> None:
        """One look per loop for its old handlers; those of no known loop, to every
        watched loop (each finds its own by the labels in its tasks' contexts)."""
        if not old:
            return
        groups: dict[int, tuple[Any, list[list[Any]]]] = {}
        unknown = [e for e in old if e[_LOOP] is None]
        for entry in old:
            loop = entry[_LOOP]() if entry[_LOOP] is not None else None
            if loop is not None:
                groups.setdefault(id(loop), (loop, []))[1].append(entry)
        if unknown:
            for loop, _ in watched_loops():
                groups.setdefault(id(loop), (loop, []))[1].extend(unknown)
        for key, (loop, group) in groups.items():
            if key in _pending or not loop.is_running():
                continue  # the last look has not run yet: the loop is busy (the watchdog's)
            _pending.add(key)
            try:
                loop.call_soon_threadsafe(_look, loop, group)
            except RuntimeError:  # closed meanwhile
                _pending.discard(key)


def configure(stuck_after: float) -> None:
    """Turn tracking on (``stuck_after`` > 0) or off (0)."""
    on = stuck_after > 0 and _checker is not None
    FAST.on[0] = on
    # handler_context blocks report through this hook (that module cannot import this one).
    _context.track = (begin_labels, end) if on else None
    if not on:
        _inflight.clear()
    if _checker is not None:
        _checker.wake()


def _after_fork_in_child() -> None:
    checker = _checker
    if checker is not None:
        checker.after_fork_in_child()


def install(monitor: Monitor) -> Callable[[], None]:
    """Start tracking handlers for ``monitor``; return the undo."""
    global _checker
    checker = _Checker(monitor)
    _checker = checker
    _runtime.after_fork_in_child("handlers", _after_fork_in_child)
    remove_hook = _runtime.on_loop_start(_watch, once=True)
    running = _running_loop()
    if running is not None and not _runtime.current_thread_is_ours():
        _watch(running)
    FAST.asleep[0] = True  # the thread starts when a handler begins (it wakes it)
    configure(monitor.config.stuck_after)

    def undo() -> None:
        global _checker
        FAST.on[0] = False
        _context.track = None
        remove_hook()
        if _checker is checker:
            _checker = None
        checker.stop()
        for store in (_inflight, _known, _reported):
            store.clear()
        _pending.clear()
        with _loops_lock:
            _loops.clear()
        metrics = monitor.metrics
        if metrics is not None:
            try:
                metrics.set_in_flight({})
            except Exception as exc:
                _runtime.internal_error("handlers", exc)

    return undo
