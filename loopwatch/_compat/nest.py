"""nest_asyncio and its forks (nest-asyncio2): recognising what they patched.

Checked against nest_asyncio 1.6 and nest-asyncio2 1.6/1.7: both mark what they patched
with a ``_nest_patched`` attribute (on the ``asyncio`` module and on loop classes).
"""

from __future__ import annotations

__all__ = ["patched"]


def patched(obj: object) -> bool:
    """Whether nest_asyncio (or a fork) has patched ``obj`` (a module or a loop class)."""
    return bool(getattr(obj, "_nest_patched", False))
