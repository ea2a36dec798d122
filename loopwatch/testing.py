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

from ._incidents import Incident
from ._monitor import current as _current
from ._monitor import install, uninstall

__all__ = ["capture_incidents", "fresh_registry"]


def fresh_registry() -> CollectorRegistry:
    """A new, empty registry, so a test's metric values start at zero."""
    return CollectorRegistry()


@contextlib.contextmanager
def capture_incidents(**options: Any) -> Iterator[list[Incident]]:
    """Collect every incident reported inside the block (each occurrence, unfolded).

    Installs loopwatch with ``options`` if it is not installed, and uninstalls it on exit
    in that case; an already-installed monitor is left as it was.
    """
    was_installed = _current() is not None
    monitor = install(**options)
    seen: list[Incident] = []
    monitor.add_listener(seen.append)
    try:
        yield seen
    finally:
        monitor.remove_listener(seen.append)
        if not was_installed:
            uninstall()
