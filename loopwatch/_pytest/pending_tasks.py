"""Tasks a test left pending: who created them, for the ``pending_task`` check.

The creating line is learnt by a class-level wrapper of ``asyncio.BaseEventLoop.create_task``
(through :class:`~loopwatch._patching.Patches`, active only while the plugin runs): it
records a weak reference to each new task with the frame that asked for it. No task factory
is set on any loop and no task is touched. ``asyncio.create_task``, ``TaskGroup`` and anyio
all end in ``loop.create_task``, so their tasks are seen; uvloop's ``Loop`` is a compiled
class that cannot be wrapped, so tasks created on uvloop are not checked.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Callable
from typing import Any

from .._compat import cpython
from .._patching import Patches

__all__ = ["install"]

# watcher(task, caller): told of every task created on a stdlib loop, on the loop's thread.
Watcher = Callable[["asyncio.Task[Any]", types.FrameType], None]


def install(watcher: Watcher) -> Callable[[], None]:
    """Wrap ``BaseEventLoop.create_task`` to tell ``watcher``; return the undo."""
    patches = Patches()
    active = [True]

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def create_task(self: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> Any:
            task = original(self, *args, **kwargs)
            if active[0]:
                try:
                    watcher(task, cpython.getframe(1))
                except Exception as exc:
                    from .._monitor import internal_error

                    internal_error("pending_task", exc)
            return task

        return create_task

    patches.patch(asyncio.BaseEventLoop, "create_task", make)

    def undo() -> None:
        active[0] = False
        patches.undo()

    return undo

