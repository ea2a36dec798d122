"""Incidents: the record, its kinds and actions, hints, and the bounded recent-incident store."""

from __future__ import annotations

import collections
import threading
from typing import Any, Literal, get_args

from ._frames import Frame

__all__ = [
    "ACTIONS", "KINDS", "Action", "Incident", "IncidentStore", "Kind", "hint_for", "reentry_hint",
]

#: What happened.
Kind = Literal[
    "reentry",
    "cross_thread_run",
    "blocked_loop",
    "unretrieved_exception",
    "pending_task_destroyed",
    "never_awaited",
    "foreign_patch",
    "stuck_handler",
    "blocking_call",
    "threadpool_saturated",
    "internal",
]
#: What loopwatch did about it ("" for hazards it only observes).
Action = Literal["offloaded", "marshalled", "reentered", "nested", "raised", ""]
KINDS: tuple[str, ...] = get_args(Kind)
ACTIONS: tuple[str, ...] = get_args(Action)

_HINTS = {
    "reentry": (
        "{api} was called while this thread's event loop was running; loopwatch {done}. Make "
        "the caller async and `await` the coroutine (or use the library's async API)."
    ),
    "cross_thread_run": (
        "A worker thread drove a loop that runs in another thread. Use "
        "`asyncio.run_coroutine_threadsafe(coro, loop).result()` (or `anyio.from_thread.run`) "
        "instead; loopwatch marshalled the call to the owning loop."
    ),
    "blocked_loop": (
        "Synchronous work held the event loop. Make it async, or move it off the loop with "
        "`await asyncio.to_thread(...)` / `run_in_executor`; in Starlette/FastAPI a plain "
        "`def` endpoint runs in the threadpool."
    ),
    "unretrieved_exception": (
        "A task failed and nobody awaited it. Keep a reference to background tasks and await "
        "them (or add a done-callback that calls `task.result()`), e.g. with a TaskGroup."
    ),
    "pending_task_destroyed": (
        "A task was garbage-collected while still pending. Keep a strong reference to every "
        "task you create (a set, or a TaskGroup) until it finishes."
    ),
    "never_awaited": (
        "A coroutine was created but never awaited: add `await`, or schedule it with "
        "`asyncio.create_task(...)` and keep the task."
    ),
    "foreign_patch": (
        "nest_asyncio (or a fork) has patched the event loop; loopwatch leaves those entry "
        "points alone. Remove `nest_asyncio.apply()` and use loopwatch's policies instead."
    ),
    "stuck_handler": (
        "A handler has been waiting far longer than it should, while the loop itself is "
        "healthy. Look at the line it awaits: give that wait a timeout "
        "(`async with asyncio.timeout(...)`), or find what should have woken it."
    ),
    "blocking_call": (
        "A blocking call ran on the event loop's thread. Use its async variant, or move it off "
        "the loop with `await asyncio.to_thread(...)`."
    ),
    "threadpool_saturated": (
        "Sync work waited for a free thread: every thread of the pool was busy. Raise the "
        "pool's size, make the route async, or find the slow sync call that holds the threads."
    ),
    "internal": "loopwatch hit an internal problem; the host program kept running.",
}

_ACTION_WORDS = {
    "offloaded": "ran the coroutine on a worker thread with its own loop",
    "reentered": "ran it re-entrantly on the same loop",
    "nested": "ran the library's own loop on this thread",
    "raised": "reported it and let the original RuntimeError through",
    "marshalled": "marshalled it to the owning loop",
}


def hint_for(kind: str, api: str = "", action: str = "") -> str:
    """The one- or two-sentence fix for an incident kind."""
    template = _HINTS.get(kind, _HINTS["internal"])
    return template.format(api=api or "The call", done=_ACTION_WORDS.get(action, "handled it"))


_WHERE = {
    "reentered": "ran re-entrantly on the running loop",
    "nested": "ran its own event loop on this thread while the running loop waited",
    "offloaded": "ran on a worker thread with a loop of its own while this thread's loop waited",
    "raised": "was not run",
}


def reentry_hint(
    api: str, action: str, detail: dict[str, str], stack: list[Frame], loop: object
) -> str:
    """The hint of one nested run: what ran where, how it ended, the one fix for this call.

    A library's sync wrapper gets that library's async API; advice that cannot work on this
    loop (re-entering uvloop) is never given.
    """
    from ._context import current_labels
    from ._policy import advice_for, library_of

    advice = advice_for(api, library_of(stack))
    result = detail.get("result", "returned")
    where = _WHERE.get(action, action)
    if result == "returned":
        text = f"{api}() {where} and returned. To avoid the nested run: {advice}."
        if action == "offloaded":
            text += " What it created stays bound to the worker's loop, now closed."
        return text
    error = result.split(":", 1)[0]  # "failed with X"; the message is in the detail
    if action == "raised" and "reason" not in detail:
        return f"{api}() {where}: the policy is raise. Fix: {advice}."
    if action not in ("offloaded", "raised"):
        return f"{api}() {where}; the coroutine itself {error}, passed on unchanged."
    stdlib = not type(loop).__module__.startswith("uvloop")
    if stdlib and current_labels().framework == "jupyter":
        fix = "`%loopwatch policy auto` runs it on the kernel's own thread and loop"
    else:
        fix = advice
    if action == "raised":
        reason = detail.get("reason", "")
        if "Task/Future" not in reason:
            # Nothing could run it (the same Runner or loop re-entered, nesting too deep):
            # asyncio's own error went through.
            return f"{api}() could not run here ({reason}); it {error}. Fix: {advice}."
        return (
            f"{api}() was given a Task/Future of the running loop, which only that loop can "
            f"run; it {error} at once. Fix: {fix}."
        )
    return f"{api}() {where} and {error}. Fix: {fix}."


class Incident:
    """One hazard loopwatch saw, with where it happened and what it did about it.

    ``count``, ``first_seen`` and ``last_seen`` aggregate the repeats of one fingerprint
    (kind, api, site). ``stack`` holds code locations only, never variable values. A
    read-only record: equal when every field is.
    """

    # Written out rather than a dataclass: every install imports this module, and making a
    # dataclass costs milliseconds of start-up.
    __match_args__ = (
        "kind", "api", "action", "framework", "handler", "site", "stack", "thread", "task",
        "loop", "duration", "count", "first_seen", "last_seen", "hint", "detail",
    )
    __slots__ = __match_args__

    kind: str
    api: str
    action: str
    framework: str
    handler: str
    site: Frame | None
    stack: tuple[Frame, ...]
    thread: str
    task: str | None
    loop: str
    duration: float | None
    count: int
    first_seen: float
    last_seen: float
    hint: str
    detail: dict[str, str]

    def __init__(
        self,
        kind: str,
        api: str,
        action: str,
        framework: str,
        handler: str,
        site: Frame | None,
        stack: tuple[Frame, ...],
        thread: str,
        task: str | None,
        loop: str,
        duration: float | None,
        count: int,
        first_seen: float,
        last_seen: float,
        hint: str,
        detail: dict[str, str] | None = None,
    ) -> None:
        put = object.__setattr__
        put(self, "kind", kind)
        put(self, "api", api)
        put(self, "action", action)
        put(self, "framework", framework)
        put(self, "handler", handler)
        put(self, "site", site)
        put(self, "stack", stack)
        put(self, "thread", thread)
        put(self, "task", task)
        put(self, "loop", loop)
        put(self, "duration", duration)
        put(self, "count", count)
        put(self, "first_seen", first_seen)
        put(self, "last_seen", last_seen)
        put(self, "hint", hint)
        put(self, "detail", {} if detail is None else detail)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"an Incident is read-only: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"an Incident is read-only: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Incident:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # its detail is a dict

    def __repr__(self) -> str:
        return "Incident(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    def _replace(self, **changes: Any) -> Incident:
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return Incident(**values)

    @property
    def fingerprint(self) -> tuple[str, str, Frame | None]:
        """What makes two incidents "the same" for folding."""
        if self.kind == "stuck_handler":
            # Two handlers stuck at one shared line (a pool both await) are two hazards.
            return (self.kind, f"{self.api} in {self.framework} {self.handler}", self.site)
        return (self.kind, self.api, self.site)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (frames as ``{"file","line","function"}``)."""

        def frame(f: Frame | None) -> dict[str, Any] | None:
            return None if f is None else {"file": f.file, "line": f.line, "function": f.function}

        return {
            "kind": self.kind,
            "api": self.api,
            "action": self.action,
            "framework": self.framework,
            "handler": self.handler,
            "site": frame(self.site),
            "stack": [frame(f) for f in self.stack],
            "thread": self.thread,
            "task": self.task,
            "loop": self.loop,
            "duration": self.duration,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "hint": self.hint,
            "detail": dict(self.detail),
        }

    def summary(self) -> str:
        """One human line: what, where, what was done."""
        parts = [self.kind.replace("_", " ")]
        if self.api:
            parts.append(self.api)
        if self.action:
            parts.append(f"[{self.action}]")
        if self.site is not None:
            parts.append(f"at {self.site.file}:{self.site.line} in {self.site.function}")
        parts.append(f"(framework={self.framework} handler={self.handler})")
        if self.duration is not None:
            parts.append(f"{self.duration * 1000:.1f} ms")
        return " ".join(parts)


class IncidentStore:
    """The recent incidents, one per fingerprint (LRU-bounded), with their running counts."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple[Any, ...], Incident] = collections.OrderedDict()

    def add(self, incident: Incident) -> Incident:
        """Record one occurrence; return the incident aggregated with its earlier ones."""
        key = incident.fingerprint
        with self._lock:
            known = self._items.get(key)
            if known is not None:
                incident = incident._replace(
                    count=known.count + incident.count, first_seen=known.first_seen
                )
                self._items.move_to_end(key)
            self._items[key] = incident
            if len(self._items) > self._capacity:
                self._items.popitem(last=False)
            return incident

    def get(self, fingerprint: tuple[Any, ...]) -> Incident | None:
        """The kept incident of ``fingerprint``, if any."""
        with self._lock:
            return self._items.get(fingerprint)

    def revise(self, fingerprint: tuple[Any, ...], **changes: Any) -> Incident | None:
        """Change fields of a kept incident without counting an occurrence (a hazard still
        going on, such as a stuck handler's age); ``None`` when it is no longer kept."""
        with self._lock:
            known = self._items.get(fingerprint)
            if known is None:
                return None
            revised = known._replace(**changes)
            self._items[fingerprint] = revised
            return revised

    def snapshot(self) -> list[Incident]:
        """The recent incidents, least recently seen first."""
        with self._lock:
            return list(self._items.values())

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
