"""H9: ``loopwatch_tasks`` counts the pending tasks a handler left behind, by handler.

A real uvicorn + FastAPI server: each request to ``/spawn/{n}`` starts a task that never
ends and answers at once; the gauge, read as a scrape reads it, shows them under the route
that created them, until the test cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import LOOP_KINDS, run_on, serve_uvicorn, wait_for
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import loopwatch
from loopwatch.adapters.fastapi import instrument

SPAWN = {"framework": "fastapi", "handler": "GET /spawn/{n}"}


def tasks_of(registry: CollectorRegistry, **labels: str) -> float | None:
    return registry.get_sample_value("loopwatch_tasks", labels)


def scraped_tasks(client: httpx.Client) -> dict[tuple[str, str], float]:
    """``loopwatch_tasks`` by (framework, handler), as a scrape of ``/metrics`` shows it."""
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return {
        (s.labels["framework"], s.labels["handler"]): s.value
        for s in families["loopwatch_tasks"].samples
    }


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_three_requests_leave_three_tasks(loop: str, registry: CollectorRegistry) -> None:
    spawned: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()
        # A task of the server itself, outside any request: not any handler's.
        background = asyncio.create_task(asyncio.Event().wait())
        yield
        background.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/spawn/{n}")
    async def spawn(n: int) -> dict[str, int]:
        spawned.append(asyncio.create_task(asyncio.Event().wait(), name=f"left-{n}"))
        return {"n": n}

    @app.get("/healthy")
    async def healthy() -> dict[str, str]:
        return {"ok": "yes"}

    instrument(app, registry=registry)
    with serve_uvicorn(app, loop) as url, httpx.Client(base_url=url) as client:
        assert tasks_of(registry, **SPAWN) is None
        for n in range(3):
            assert client.get(f"/spawn/{n}").status_code == 200
        assert client.get("/healthy").status_code == 200
        assert tasks_of(registry, **SPAWN) == 3
        # The scrape over HTTP shows the same series.
        values = scraped_tasks(client)
        assert values[("fastapi", "GET /spawn/{n}")] == 3
        assert ("fastapi", "GET /healthy") not in values
        assert not any(handler == "__none__" for _, handler in values)

        server_loop: asyncio.AbstractEventLoop = app.state.loop
        for task in spawned:
            server_loop.call_soon_threadsafe(task.cancel)
        wait_for(lambda: all(task.done() for task in spawned))
        assert tasks_of(registry, **SPAWN) == 0


def test_handler_context_tasks_and_uninstall(
    loop_factory: Any, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        with loopwatch.handler_context("none", "job:nightly"):
            left = [asyncio.create_task(asyncio.sleep(30)) for _ in range(2)]
        outside = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0)
        assert tasks_of(registry, framework="none", handler="job:nightly") == 2
        left[0].cancel()
        await asyncio.sleep(0)
        assert tasks_of(registry, framework="none", handler="job:nightly") == 1
        for task in (*left, outside):
            task.cancel()
        await asyncio.gather(*left, outside, return_exceptions=True)
        assert tasks_of(registry, framework="none", handler="job:nightly") == 0

    run_on(loop_factory, main())
    loopwatch.uninstall()
    # Once uninstalled, a scrape counts nothing: the gauge keeps its last value.
    assert tasks_of(registry, framework="none", handler="job:nightly") == 0


def test_a_request_in_flight_is_not_a_task_left_behind(registry: CollectorRegistry) -> None:
    """The task serving a request is the handler itself, not something it left behind: only
    the task it started counts while it waits, and the scrape does not count itself."""
    import threading

    release = threading.Event()
    started = threading.Event()

    app = FastAPI()

    @app.get("/wait")
    async def wait() -> dict[str, str]:
        child = asyncio.create_task(asyncio.Event().wait(), name="left-by-wait")
        started.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        child.cancel()
        return {"ok": "yes"}

    instrument(app, registry=registry)
    wait_labels = {"framework": "fastapi", "handler": "GET /wait"}
    with serve_uvicorn(app, "asyncio") as url, httpx.Client(base_url=url) as client:
        answer: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answer.append(client.get("/wait")))
        request.start()
        try:
            assert started.wait(10)
            # In flight: its own task is not counted, the task it started is.
            assert tasks_of(registry, **wait_labels) == 1
            values = scraped_tasks(client)
            assert values.get(("fastapi", "GET /metrics"), 0) == 0
            assert values[("fastapi", "GET /wait")] == 1
        finally:
            release.set()
            request.join(10)
        assert answer and answer[0].status_code == 200
        wait_for(lambda: tasks_of(registry, **wait_labels) == 0)
