"""Shared fixtures: every test leaves loopwatch uninstalled and gets a fresh registry.

Tests that drive an event loop take the ``loop_factory`` fixture, which runs them on the
stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _monitor, _runtime

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, or a build without the extra
    uvloop = None

LOOP_KINDS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


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


def run_on(factory: Callable[[], asyncio.AbstractEventLoop], coro: Any) -> Any:
    """Run ``coro`` to completion on a new loop from ``factory`` (closing it after)."""
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@contextlib.contextmanager
def serve_uvicorn(app: Any, loop: str, **config: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1 in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop=loop,
            lifespan="on",
            log_level="warning",
            **config,
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_report_header() -> list[str]:
    python = sys.version.split()[0]
    return [f"loopwatch {loopwatch.__version__}; loops: {', '.join(LOOP_KINDS)}; python {python}"]
