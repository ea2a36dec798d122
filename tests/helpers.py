"""Helpers shared by the test modules (import them from here, not from conftest).

``wait_for`` replaces fixed sleeps: it polls a condition until it holds or a deadline
passes, so a test waits exactly as long as the machine needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, or a build without the extra
    uvloop = None

__all__ = [
    "LOOP_KINDS", "Gate", "free_port", "marked_line", "reentry_total", "run_on", "serve_uvicorn",
    "uvloop", "wait_for",
]

LOOP_KINDS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is true; fail the test when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s: {predicate!r}")
        time.sleep(interval)


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


def marked_line(path: str, marker: str) -> int:
    """The line of the file ``path`` that ends with ``# LINE: marker``."""
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            if line.rstrip().endswith(f"# LINE: {marker}"):
                return number
    raise LookupError(marker)


def reentry_total(
    registry: Any, *, api: str = "asyncio.run", action: str = "offloaded",
    framework: str = "none", handler: str = "__none__",
) -> float | None:
    """``loopwatch_reentry_total`` for one series (default: an offloaded ``asyncio.run``
    outside any handler)."""
    return registry.get_sample_value(  # type: ignore[no-any-return]
        "loopwatch_reentry_total",
        {"api": api, "action": action, "framework": framework, "handler": handler},
    )


class Gate:
    """The Event a route waits on (set by the route: its loop and event), and how the test
    releases it from its own thread (nothing to release before the route started)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event: asyncio.Event | None = None

    def release(self) -> None:
        if self.loop is not None and self.event is not None:
            self.loop.call_soon_threadsafe(self.event.set)
