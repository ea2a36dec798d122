"""CPython interpreter internals: thread stacks and the caller's frame.

(Subinterpreters are recognised in ``loopwatch/_sitecustomize/sitecustomize.py``, before
anything of loopwatch is imported.)

Checked against CPython 3.10–3.13 (run in CI) and the 3.14 sources.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

__all__ = ["current_frames", "getframe"]

#: Every thread's innermost frame, by thread id (``sys._current_frames``): the watchdog's
#: only way to see what a blocked loop thread is doing from another thread.
current_frames: Callable[[], dict[int, types.FrameType]] = sys._current_frames
#: The caller's frame (``sys._getframe``); cheap stack capture without ``inspect``.
getframe: Callable[[int], types.FrameType] = sys._getframe
