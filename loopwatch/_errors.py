"""Exceptions raised by loopwatch."""

from __future__ import annotations

__all__ = ["ConfigError", "LoopwatchError"]


class LoopwatchError(RuntimeError):
    """A call that loopwatch intercepted could not be completed safely.

    It subclasses :class:`RuntimeError` because the call it replaces (``asyncio.run``
    inside a running loop) raises ``RuntimeError`` too: code that already handles that
    keeps working.
    """


class ConfigError(LoopwatchError, ValueError):
    """An option or a ``LOOPWATCH_*`` environment variable has a value loopwatch rejects."""
