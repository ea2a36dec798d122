"""What the compat modules of discord.py and its forks share: their internals have one shape.

The forks kept discord.py's structure, so the same reading of it serves each; every library's
own module names its classes and attributes (and the versions they were checked against) and
hands them here. Nothing here imports a library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["defining_class", "task_loops"]


def defining_class(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO whose own namespace defines ``name``, if any."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    return None


def task_loops(loop_class: type, running: Iterable[asyncio.Task[Any]]) -> list[Any]:
    """The ``loop_class`` instances whose background task is among ``running``: the task's
    coroutine is ``loop_class._loop`` and its frame holds the loop as ``self``."""
    code = loop_class._loop.__code__  # type: ignore[attr-defined]
    found: list[Any] = []
    for task in running:
        coro = task.get_coro()
        if getattr(coro, "cr_code", None) is not code:
            continue
        frame = getattr(coro, "cr_frame", None)
        owner = frame.f_locals.get("self") if frame is not None else None
        if isinstance(owner, loop_class) and owner not in found:
            found.append(owner)
    return found
