"""CPython interpreter internals: thread stacks, the caller's frame, subinterpreters.

Checked against CPython 3.10–3.13 (run in CI) and the 3.14 sources.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

__all__ = ["current_frames", "daemon_threads_allowed", "getframe", "in_main_interpreter"]

#: Every thread's innermost frame, by thread id (``sys._current_frames``): the watchdog's
#: only way to see what a blocked loop thread is doing from another thread.
current_frames: Callable[[], dict[int, types.FrameType]] = sys._current_frames
#: The caller's frame (``sys._getframe``); cheap stack capture without ``inspect``.
getframe: Callable[[int], types.FrameType] = sys._getframe


def in_main_interpreter() -> bool:
    """Whether this code runs in the main interpreter (not a subinterpreter).

    3.13+: ``_interpreters``; 3.12: ``_xxsubinterpreters``; older builds have no
    subinterpreters reachable from Python code, so the answer is yes.
    """
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        try:
            current, main = module.get_current(), module.get_main()
        except Exception:
            return True
        # 3.13 returns (id, whence) tuples; 3.12 returns interpreter-id objects.
        if isinstance(current, tuple):
            current = current[0]
        if isinstance(main, tuple):
            main = main[0]
        return bool(current == main)
    return True


def daemon_threads_allowed() -> bool:
    """Whether this interpreter may start daemon threads (subinterpreters may not, 3.12+)."""
    import _thread

    allowed = getattr(_thread, "daemon_threads_allowed", None)
    return True if allowed is None else bool(allowed())
