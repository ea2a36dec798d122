"""Incidents: the record, hints, fingerprints, folding and the bounded recent-incident store."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any

from ._frames import Frame

__all__ = ["KINDS", "Incident", "IncidentStore", "hint_for", "reentry_hint"]

KINDS = (
    "reentry",
    "cross_thread_run",
    "blocked_loop",
    "unretrieved_exception",
    "pending_task_destroyed",
    "never_awaited",
    "foreign_patch",
    "internal",
)

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
        return (
            f"{api}() was given a Task/Future of the running loop, which only that loop can "
            f"run; it {error} at once. Fix: {fix}."
        )
    return f"{api}() {where} and {error}. Fix: {fix}."


@dataclasses.dataclass(frozen=True)
class Incident:
    """One hazard loopwatch saw, with where it happened and what it did about it.

    ``count``, ``first_seen`` and ``last_seen`` aggregate the repeats of one fingerprint
    (kind, api, site). ``stack`` holds code locations only, never variable values.
    """

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
    detail: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def fingerprint(self) -> tuple[str, str, Frame | None]:
        """What makes two incidents "the same" for folding."""
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
        parts = [f"loopwatch: {self.kind.replace('_', ' ')}"]
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


@dataclasses.dataclass
class _Fold:
    incident: Incident
    logged_at: float  # monotonic time of the last log line for this fingerprint
    folded: int  # occurrences since that line, not logged


class IncidentStore:
    """The recent incidents, one per fingerprint (LRU-bounded), with the folding state.

    ``add`` returns how many earlier occurrences the caller should report as folded when
    it logs this one, or ``None`` when this occurrence is itself folded (not logged).
    """

    def __init__(self, capacity: int = 256, fold_window: float = 60.0) -> None:
        self._capacity = capacity
        self._window = fold_window
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple[Any, ...], _Fold] = collections.OrderedDict()

    def add(self, incident: Incident, now: float | None = None) -> tuple[Incident, int | None]:
        """Record one occurrence; return the aggregated incident and the fold decision."""
        mono = time.monotonic() if now is None else now
        key = incident.fingerprint
        with self._lock:
            fold = self._items.get(key)
            if fold is None:
                self._items[key] = _Fold(incident, mono, 0)
                if len(self._items) > self._capacity:
                    self._items.popitem(last=False)
                return incident, 0
            self._items.move_to_end(key)
            merged = dataclasses.replace(
                incident,
                count=fold.incident.count + incident.count,
                first_seen=fold.incident.first_seen,
            )
            fold.incident = merged
            if mono - fold.logged_at >= self._window:
                folded, fold.folded, fold.logged_at = fold.folded, 0, mono
                return merged, folded
            fold.folded += incident.count
            return merged, None

    def pending_folds(self) -> list[tuple[Incident, int]]:
        """Fingerprints with folded occurrences not yet logged; resets them."""
        out = []
        mono = time.monotonic()
        with self._lock:
            for fold in self._items.values():
                if fold.folded:
                    out.append((fold.incident, fold.folded))
                    fold.folded, fold.logged_at = 0, mono
        return out

    def snapshot(self) -> list[Incident]:
        """The recent incidents, least recently seen first."""
        with self._lock:
            return [fold.incident for fold in self._items.values()]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
