"""uvloop: recognising its loops and the errors it raises. Checked against uvloop 0.19–0.21.

uvloop's ``Loop`` is a Python subclass of a Cython base class, so its methods can be
wrapped at class level; its iteration runs in C with no Python hook per iteration.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["already_running_error", "is_uvloop", "loop_class", "other_loop_error"]


def is_uvloop(loop: object) -> bool:
    """Whether ``loop`` is a uvloop loop (without importing uvloop)."""
    return type(loop).__module__.startswith("uvloop")


def loop_class(module: Any = None) -> type | None:
    """``uvloop.Loop`` if uvloop is imported (or ``module`` is uvloop), else ``None``."""
    module = module if module is not None else sys.modules.get("uvloop")
    cls = getattr(module, "Loop", None)
    return cls if isinstance(cls, type) else None


def already_running_error(loop: object) -> RuntimeError:
    """The error the loop's own ``run_*`` raises when it is already running."""
    if is_uvloop(loop):
        return RuntimeError("this event loop is already running.")
    return RuntimeError("This event loop is already running")


def other_loop_error() -> RuntimeError:
    """uvloop's error for running a loop while another one runs in this thread."""
    return RuntimeError("Cannot run the event loop while another loop is running")
