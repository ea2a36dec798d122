"""Shared fixtures: every test leaves loopwatch uninstalled and gets a fresh registry.

Tests that drive an event loop take the ``loop_factory`` fixture, which runs them on the
stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator

import pytest
from helpers import LOOP_KINDS, free_port, run_on, serve_uvicorn, uvloop, wait_for
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _monitor, _runtime

# Re-exported for test modules not yet moved to ``helpers`` (they should import from there).
__all__ = ["LOOP_KINDS", "free_port", "run_on", "serve_uvicorn", "uvloop", "wait_for"]


@pytest.fixture(autouse=True)
def _clean_loopwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("LOOPWATCH_"):
            monkeypatch.delenv(name)
    yield
    loopwatch.uninstall()
    _runtime.errors_logged.clear()
    _monitor._disabled_said = False


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test, so every sample starts at zero."""
    return CollectorRegistry()


@pytest.fixture(params=LOOP_KINDS)
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for the stdlib loop or uvloop."""
    if request.param == "uvloop":
        return uvloop.new_event_loop  # type: ignore[no-any-return,union-attr]
    return asyncio.new_event_loop


def pytest_report_header() -> list[str]:
    python = sys.version.split()[0]
    return [f"loopwatch {loopwatch.__version__}; loops: {', '.join(LOOP_KINDS)}; python {python}"]
