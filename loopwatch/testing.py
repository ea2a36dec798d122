"""Helpers for your own tests: capture incidents, get a fresh registry.

Example (a test of your own)::

    >>> from loopwatch.testing import capture_incidents, fresh_registry
    >>> with capture_incidents(registry=fresh_registry()) as seen:
    ...     run_my_service_once()
    >>> [i.kind for i in seen if i.kind == "reentry"]
    []
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from . import _monitor
from ._incidents import Incident

__all__ = ["capture_incidents", "fresh_registry"]


def fresh_registry() -> CollectorRegistry:
    """A new, empty registry, so a test's metric values start at zero."""
    return CollectorRegistry()


@contextlib.contextmanager
def capture_incidents(**options: Any) -> Iterator[list[Incident]]:
    """Collect every incident reported inside the block (each occurrence, unfolded).

    ``options`` are those of :func:`loopwatch.install`. Installs loopwatch with them if it
    is not installed, and uninstalls it on exit in that case (unless the block called
    :func:`loopwatch.install` itself); an installed monitor gets back, on exit, the value
    of each option the block changed.
    """
    installed = _monitor.current()
    changed: dict[str, tuple[Any, Any]] = {}
    if installed is None:
        monitor = _monitor.acquire(**options)
    else:
        monitor = _monitor.acquire()
        if monitor is not None:
            changed = monitor.override(options)
    seen: list[Incident] = []
    if monitor is None:  # LOOPWATCH_DISABLE: nothing is reported, nothing to undo
        yield seen
        return
    monitor.add_listener(seen.append)
    try:
        yield seen
    finally:
        monitor.remove_listener(seen.append)
        if changed and _monitor.current() is monitor:
            monitor.restore(changed)
        _monitor.release(monitor)
