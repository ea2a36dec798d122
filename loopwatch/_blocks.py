"""What a blocked loop's samples show: the cause, the site, the hint.

The watchdog (:mod:`._watchdog`) samples the loop thread's stack while a block goes on;
this module reads those samples. A sample is a raw walk of code locations (no inspect, no
linecache, no locals). The cause of a block (CPU work, a blocking call, a lock or join,
garbage collection, an import, a starved process) picks the hint.
"""

from __future__ import annotations

import os
import types
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import _context, _frames, _stalls
from ._compat import asyncio as aio
from ._compat import cpython
from ._frames import Frame

__all__ = [
    "HINTS", "Sample", "cause_of", "classify", "register_handler", "sample_thread", "site_of",
]

HINTS = {
    "cpu": (
        "CPU-bound work ran on the event loop. Move it to a worker: `await "
        "asyncio.to_thread(fn, ...)`, or a process pool for pure-Python number crunching."
    ),
    "blocking_call": (
        "A blocking call (time.sleep, sync I/O, a sync SDK) held the event loop. Use its async "
        "variant, or run it with `await asyncio.to_thread(...)`; in Starlette/FastAPI a plain "
        "`def` endpoint runs in the threadpool."
    ),
    "lock": (
        "The loop thread waited on a thread lock, Event, join, queue or concurrent Future. Await "
        "it instead: `asyncio.wrap_future(...)`, `await asyncio.to_thread(thread.join)`, or an "
        "asyncio.Lock/Event."
    ),
    "gc": (
        "Garbage collection held the loop for most of the block. Fewer long-lived container "
        "objects help; `gc.freeze()` after startup keeps them out of full collections."
    ),
    "import": (
        "A module was imported on the event loop (a first use inside a handler). Import it at "
        "startup instead."
    ),
    "starved": (
        "The loop was idle but could not run: another thread held the GIL (CPU-bound Python "
        "or a C extension) or the process was starved of CPU. Check other threads and the "
        "CPU limit of the container."
    ),
    "unsampled": (
        "The loop was late just past the threshold and the block ended before a stack could "
        "be sampled; see the lag histogram for how often this happens."
    ),
}

# -- attribution by code object ------------------------------------------------------------

_handler_codes: weakref.WeakKeyDictionary[types.CodeType, _context.Labels]
_handler_codes = weakref.WeakKeyDictionary()


def register_handler(func: Callable[..., Any], framework: str, handler: str) -> None:
    """Attribute blocks sampled inside ``func`` to ``handler`` when no task context says so.

    For adapters: a block in a plain callback (no task running) or in a task that carries
    no labels is still attributed when the handler's own code is on the sampled stack.
    """
    target: Any = func
    for _ in range(16):  # unwrap decorators (functools.wraps) and bound methods
        target = getattr(target, "__func__", target)
        inner = getattr(target, "__wrapped__", None)
        if inner is None:
            break
        target = inner
    code = getattr(target, "__code__", None)
    if isinstance(code, types.CodeType):
        _handler_codes[code] = _context.Labels(framework, handler)


# -- what a sample shows -------------------------------------------------------------------

_IDLE_FUNCTIONS = aio.IDLE_FUNCTIONS
_IDLE_FILES = frozenset(
    {"selectors.py", "base_events.py", "runners.py", "_reentry.py", "_dispatch.py", "events.py",
     "__init__.py"}
)
_LOCK_FILES = tuple(
    os.sep + os.path.join(*parts)
    for parts in (
        ("threading.py",), ("queue.py",), ("concurrent", "futures", "_base.py"),
        ("multiprocessing", "connection.py"), ("multiprocessing", "pool.py"),
    )
)
_IMPORT_PREFIX = "<frozen importlib._bootstrap"


def _basename(path: str) -> str:
    return path.rsplit(os.sep, 1)[-1]


def classify(stack: list[Frame], idle_at: tuple[str, str] | None = None) -> str:
    """What a sampled loop-thread stack shows: idle, import, lock or code.

    ``idle_at`` is (file, function) of the frame that runs a loop written in C (uvloop):
    with no Python callback running, it is the innermost frame.
    """
    if not stack:
        return "idle"
    for frame in stack:
        if frame.file.startswith(_IMPORT_PREFIX):
            return "import"
    top = stack[0]
    if idle_at is not None and (top.file, top.function) == idle_at:
        return "idle"
    base = _basename(top.file)
    if top.function in _IDLE_FUNCTIONS and (
        (base in _IDLE_FILES and not _frames.is_user_file(top.file)) or "uvloop" in top.file
    ):
        return "idle"
    if top.file.endswith(_LOCK_FILES) and not _frames.is_user_file(top.file):
        return "lock"
    return "code"


class Sample:
    __slots__ = ("cause", "code_labels", "late", "reentry", "stack", "unread")

    def __init__(
        self, late: float, stack: list[Frame], code_labels: _context.Labels | None, reentry: str,
        idle_at: tuple[str, str] | None = None, unread: str = "",
    ) -> None:
        self.late = late
        self.stack = stack
        self.code_labels = code_labels
        self.reentry = reentry  # the nested call the loop thread was waiting for, if any
        # Why the stack could not be read (then the loop counts as busy with unknown code:
        # the watchdog samples only a loop it found late).
        self.unread = unread
        self.cause = "code" if unread else classify(stack, idle_at)


def sample_thread(thread_id: int, late: float, idle_at: tuple[str, str] | None = None) -> Sample:
    """A raw walk of the loop thread's current stack (no inspect, no linecache)."""
    try:
        frame = cpython.thread_frame(thread_id)
    except cpython.UnreadableFrames as exc:
        return Sample(late, [], None, _stalls.waiting(thread_id), unread=str(exc))
    try:
        stack = _frames.stack_from_frame(frame)
        code_labels = None
        if _handler_codes:
            walk = frame
            while walk is not None and code_labels is None:
                code_labels = _handler_codes.get(walk.f_code)
                walk = walk.f_back
        reentry = _stalls.waiting(thread_id)
        return Sample(late, stack, code_labels, reentry, idle_at)
    finally:
        del frame


def hint_of(cause: str, samples: list[Sample]) -> str | None:
    """The hint for ``cause``, saying why there is no stack when none could be read."""
    hint = HINTS.get(cause)
    unread = next((s.unread for s in samples if s.unread), "")
    if unread:
        return f"{hint} (The stack was {unread}.)" if hint else f"The stack was {unread}."
    return hint


def site_of(samples: list[Sample]) -> tuple[Frame | None, Sample | None]:
    """The user frame seen most often while blocked (the earliest on ties), and its sample."""
    counts: Counter[Frame] = Counter()
    first: dict[Frame, Sample] = {}
    for sample in samples:
        if sample.cause == "idle":
            continue
        site = _frames.user_frame(sample.stack)
        if site is None:
            continue
        counts[site] += 1
        first.setdefault(site, sample)
    if not counts:
        busy = [s for s in samples if s.cause != "idle"]
        return None, busy[0] if busy else None
    best = max(counts.values())
    for site, sample in first.items():  # insertion order: the earliest first
        if counts[site] == best:
            return site, sample
    return None, None


def cause_of(
    samples: list[Sample], site_sample: Sample | None, duration: float,
    cpu: float | None, gcs: float | None, threshold: float,
) -> str:
    if gcs is not None and duration > 0 and gcs >= duration / 2:
        return "gc"
    causes = {s.cause for s in samples}
    if "import" in causes:
        return "import"
    busy = site_sample or next((s for s in samples if s.cause != "idle"), None)
    if busy is not None:
        if busy.cause == "lock":
            return "lock"
        # A thread waiting in a call burns no CPU; one computing burns it, though only a
        # share of the wall time when the machine is contended.
        if cpu is not None and cpu >= duration / 10:
            return "cpu"
        return "blocking_call"
    if samples or duration >= 1.5 * threshold:
        # All samples show the loop idle in its selector while late, or the watchdog
        # itself could not run to sample a long block: the process was starved.
        return "starved"
    return "unsampled"


