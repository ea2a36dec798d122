"""The live task view: every task of every watched loop, its handler and its await chain.

A loop is watched once it starts while loopwatch is installed (or runs when it is
installed). :func:`tasks` reads each loop's tasks on that loop's own thread: called on
it, directly; from another thread, by one callback posted to the loop, waited for a
bounded time (a loop that is blocked meanwhile is listed without chains). Nothing is set
on a loop or task; loops and tasks are held weakly.

Ages: a task that runs a handler in flight is as old as its handler (``age_from =
"handler"``); asyncio keeps no creation time and loopwatch sets no task factory, so any
other task is as old as loopwatch has known it (``age_from = "first_seen"``: the first
:func:`tasks` call that listed it).

:func:`render_text` draws the view as a tree by loop and handler, the way ``pstree``
draws processes; the HTTP view and ``loopwatch tasks URL`` use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from . import _handlers, _runtime, _tasks
from ._compat import asyncio as aio
from ._frames import Frame, is_user_file, without_own_frames

__all__ = ["TaskInfo", "render_text", "tasks"]

_now = time.monotonic
# How long tasks() waits for a loop of another thread to answer.
_WAIT = 1.0


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One live task of a watched loop, as :func:`loopwatch.tasks` returns it.

    ``state`` is ``running`` (the task that asked), ``waiting`` (suspended at ``chain``),
    ``stuck`` (its handler was reported stuck) or ``unknown`` (its loop was busy and did
    not answer in time: no chain). ``chain`` holds the frames it is suspended in,
    innermost first. ``age`` is in seconds, counted from what ``age_from`` says
    (``handler``: its handler began; ``first_seen``: loopwatch first listed it).
    """

    name: str
    framework: str
    handler: str
    age: float
    age_from: str
    state: str
    loop: str
    thread: str
    coroutine: str
    chain: tuple[Frame, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (frames as ``{"file","line","function"}``)."""
        out = dataclasses.asdict(self)
        out["chain"] = [
            {"file": f.file, "line": f.line, "function": f.function,
             "user": is_user_file(f.file)}
            for f in self.chain
        ]
        return out


# When loopwatch first listed each task (asyncio keeps no creation time).
_first_seen: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def tasks(timeout: float = _WAIT) -> list[TaskInfo]:
    """Every task of every watched loop (see :func:`loopwatch.tasks`)."""
    running = aio.get_running_loop()
    loops = _handlers.watched_loops()
    # The caller's own loop, even if loopwatch did not see it start.
    if running is not None and all(running is not known for known, _ in loops):
        loops.append((running, threading.current_thread().name))
    out: list[TaskInfo] = []
    for loop, thread in loops:
        if loop.is_closed():
            continue
        if loop is running or not loop.is_running():
            # This thread's loop, or a stopped one (nothing moves its tasks now).
            out += _collect(loop, thread)
            continue
        answer: concurrent.futures.Future[list[TaskInfo]] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(_answer, answer, loop, thread)
            out += answer.result(timeout)
        except RuntimeError:  # closed meanwhile
            continue
        except concurrent.futures.TimeoutError:
            answer.cancel()
            out += _unknown(loop, thread)
    return out


def _answer(answer: concurrent.futures.Future[list[TaskInfo]], loop: Any, thread: str) -> None:
    if not answer.set_running_or_notify_cancel():
        return  # the asker gave up waiting
    try:
        answer.set_result(_collect(loop, thread))
    except BaseException as exc:
        answer.set_exception(exc)


def _collect(loop: Any, thread: str) -> list[TaskInfo]:
    """The tasks of ``loop`` with their chains (on the loop's thread, or a stopped loop)."""
    now = _now()
    found = aio.all_tasks(loop)
    entries = _handlers.entries()
    by_labels = _handlers.tasks_by_labels(found, {id(e[0]) for e in entries})
    by_task: dict[int, list[Any]] = {}
    for entry in entries:
        task = _handlers.find_task(entry, _handlers.handler_tasks(entry, by_labels))
        if task is not None:
            by_task[id(task)] = entry
    current = asyncio.current_task(loop) if aio.get_running_loop() is loop else None
    loop_name = _runtime.loop_name(loop)
    out = []
    for task in found:
        handler = by_task.get(id(task))
        if handler is not None:
            age, age_from = now - _handlers.started(handler), "handler"
        else:
            age, age_from = now - _seen(task, now), "first_seen"
        if task is current:
            state = "running"
        elif handler is not None and _handlers.is_stuck(handler):
            state = "stuck"
        else:
            state = "waiting"
        chain = without_own_frames(_handlers.chain_frames(task))  # the view's own request
        out.append(_info(task, age, age_from, state, loop_name, thread, tuple(chain)))
    return out


def _unknown(loop: Any, thread: str) -> list[TaskInfo]:
    """A busy loop's tasks without chains (they may not be read from this thread)."""
    now = _now()
    loop_name = _runtime.loop_name(loop)
    return [_info(task, now - _seen(task, now), "first_seen", "unknown", loop_name, thread, ())
            for task in aio.all_tasks(loop)]


def _seen(task: Any, now: float) -> float:
    with _lock:
        try:
            return _first_seen.setdefault(task, now)
        except TypeError:  # a task type that cannot be weakly referenced
            return now


def _info(
    task: Any, age: float, age_from: str, state: str, loop: str, thread: str,
    chain: tuple[Frame, ...],
) -> TaskInfo:
    labels = _tasks.task_labels(task) or _tasks.default_labels()
    coro = task.get_coro() if hasattr(task, "get_coro") else None
    return TaskInfo(
        name=task.get_name(), framework=labels.framework, handler=labels.handler,
        age=round(max(age, 0.0), 3), age_from=age_from, state=state, loop=loop, thread=thread,
        coroutine=_tasks.qualname(coro) if coro is not None else "", chain=chain,
    )


# -- rendering ------------------------------------------------------------------------------


def _short(path: str) -> str:
    """A library file by its path inside the library (``asyncio/locks.py``)."""
    for marker in ("site-packages", "dist-packages"):
        _, sep, tail = path.rpartition(os.sep + marker + os.sep)
        if sep:
            return tail
    parts = path.split(os.sep)
    for i, part in enumerate(parts[:-1]):
        if part.startswith("python3") and i > 0 and parts[i - 1] == "lib":
            return os.sep.join(parts[i + 1:])
    return path


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _shown(chain: list[dict[str, Any]], full: bool) -> tuple[list[dict[str, Any]], int]:
    """The frames to draw (innermost through the outermost frame of the user's code) and
    how many outer frames (the framework's) are left out."""
    if full:
        return chain, 0
    users = [i for i, frame in enumerate(chain) if frame.get("user")]
    keep = users[-1] + 1 if users else min(len(chain), 3)
    return chain[:keep], len(chain) - keep


def render_text(items: Iterable[dict[str, Any]], full: bool = False) -> str:
    """The view as text: a tree by loop, then handler, then task and its await chain
    (innermost first, down to the user's outermost frame; ``full``: every frame).
    ``items`` are :meth:`TaskInfo.as_dict` dicts."""
    by_loop: dict[tuple[str, str], dict[tuple[str, str], list[dict[str, Any]]]] = {}
    for item in items:
        handlers = by_loop.setdefault((item["loop"], item["thread"]), {})
        handlers.setdefault((item["framework"], item["handler"]), []).append(item)
    if not by_loop:
        return "no tasks in any watched loop\n"
    lines: list[str] = []
    for (loop, thread), handlers in by_loop.items():
        count = sum(len(group) for group in handlers.values())
        lines.append(f"{loop} on thread {thread}: {count} task{'s' * (count != 1)}")
        # Handlers first, the tasks outside any handler last.
        order = sorted(handlers, key=lambda key: (key[1].startswith("__"), key))
        for h, key in enumerate(order):
            group = sorted(handlers[key], key=lambda item: -item["age"])
            last_h = h == len(order) - 1
            lines.append(f"{'└─' if last_h else '├─'} {key[1]} ({key[0]}): "
                         f"{len(group)} task{'s' * (len(group) != 1)}")
            pad = "   " if last_h else "│  "
            for t, item in enumerate(group):
                last_t = t == len(group) - 1
                since = "since its handler began" if item["age_from"] == "handler" else "seen"
                lines.append(
                    f"{pad}{'└─' if last_t else '├─'} {item['name']} {item['state']} "
                    f"{_age(item['age'])} {since}  [{item['coroutine']}]"
                )
                inner = pad + ("   " if last_t else "│  ")
                chain, hidden = _shown(item["chain"], full)
                for f, frame in enumerate(chain):
                    branch = "└─" if f == len(chain) - 1 and not hidden else "├─"
                    lines.append(f"{inner}{branch} {frame['function']}  "
                                 f"{_short(frame['file'])}:{frame['line']}")
                if hidden:
                    lines.append(f"{inner}└─ … {hidden} outer frame{'s' * (hidden != 1)}")
    return "\n".join(lines) + "\n"
