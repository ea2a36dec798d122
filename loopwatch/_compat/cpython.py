"""CPython interpreter internals: thread stacks and the caller's frame.

(Whether *this* interpreter is a subinterpreter is answered in
``loopwatch/_sitecustomize/sitecustomize.py``, before anything of loopwatch is imported;
whether subinterpreters exist beside the main one is answered here.)

Checked against CPython 3.10–3.13 (run in CI) and the 3.14 sources.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = [
    "FRAMES_UNSAFE_WITH_SUBINTERPRETERS", "UnreadableFrames", "current_frames", "frames_unreadable",
    "getframe", "thread_frame",
]

#: Every thread's innermost frame, by thread id (``sys._current_frames``). Library code reads
#: another thread's frame only through :func:`thread_frame`, which refuses where the call is
#: unsafe.
current_frames: Callable[[], dict[int, types.FrameType]] = sys._current_frames
#: The caller's frame (``sys._getframe``); cheap stack capture without ``inspect``.
getframe: Callable[[int], types.FrameType] = sys._getframe

#: Whether ``sys._current_frames()`` may corrupt memory while subinterpreters run.
#:
#: It walks the thread states of *every* interpreter of the process and makes a frame
#: object for each thread's innermost frame, allocated by the calling interpreter. Since
#: 3.12 (PEP 684) an interpreter may have its own GIL and its own object allocator: the walk
#: then reads frames another interpreter is changing at that moment, and that interpreter
#: later frees a frame object its allocator never made. The process aborts ("free(): invalid
#: pointer", "double free or corruption"): seen here on 3.12.1 and 3.13.0 with a plain
#: thread calling it every millisecond beside interpreters running code (anyio's
#: ``to_interpreter``, ``_interpreters``), and reported on 3.14.x. CPython's main branch
#: still walks every interpreter, so no release is known to be safe: every CPython from
#: 3.12 on is treated as affected. 3.10 and 3.11 have one GIL and one allocator for all
#: interpreters: unaffected. Other implementations have no such subinterpreters.
FRAMES_UNSAFE_WITH_SUBINTERPRETERS = (
    sys.implementation.name == "cpython" and sys.version_info >= (3, 12)
)

# The module that lists the interpreters of the process: 3.13+, then 3.12's private one.
_INTERPRETER_MODULES = ("_interpreters", "_xxsubinterpreters")
_lister: list[Any] = []  # [list_all] once found, [None] when this Python has none
# Once subinterpreters have existed they usually come back (pools of interpreters come and
# go): the answer stays "unsafe" for the life of the process, so a pool refilling at the
# moment of a walk cannot be missed.
_seen: list[bool] = [False]

_REASON = (
    "not read: subinterpreters run in this process, and reading another thread's stack "
    "then corrupts memory on CPython 3.12+"
)


class UnreadableFrames(RuntimeError):
    """Another thread's stack cannot be read safely now (the message says why)."""


def _list_all() -> Any:
    if not _lister:
        found = None
        for name in _INTERPRETER_MODULES:
            module = sys.modules.get(name)
            if module is None:
                try:
                    module = __import__(name)
                except ImportError:
                    continue
            found = getattr(module, "list_all", None)
            if found is not None:
                break
        _lister.append(found)
    return _lister[0]


def frames_unreadable() -> str:
    """Why another thread's stack must not be read now; ``""`` when it may.

    Cheap enough to ask before every read (one C call listing the interpreters, a few
    microseconds), never on a path that runs per loop iteration.
    """
    if not FRAMES_UNSAFE_WITH_SUBINTERPRETERS:
        return ""
    if not _seen[0]:
        list_all = _list_all()
        if list_all is None:
            return ""  # built without subinterpreter support
        try:
            others = len(list_all()) > 1
        except Exception:
            others = True  # cannot tell: the safe answer
        if not others:
            return ""
        _seen[0] = True
    return _REASON


def thread_frame(thread_id: int) -> types.FrameType | None:
    """The innermost frame of thread ``thread_id`` (``None``: no Python frame there).

    ``sys._current_frames()`` is the only way to another thread's frame; it makes a frame
    object for every thread, so callers ask only once something is worth a look. Raises
    :class:`UnreadableFrames` where the read could corrupt memory (see
    :data:`FRAMES_UNSAFE_WITH_SUBINTERPRETERS`).
    """
    reason = frames_unreadable()
    if reason:
        raise UnreadableFrames(reason)
    return current_frames().get(thread_id)
