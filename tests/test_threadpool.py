"""H8: sync work waiting for a free thread, on a real uvicorn + FastAPI server.

Each test holds the pool's threads on a gate it opens itself, so the queue is made on
purpose (never by relying on slowness): eight calls behind two threads leave six waiting,
the test checks the gauges while they wait, then opens the gate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from helpers import LOOP_KINDS, run_on, serve_uvicorn, wait_for
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _threadpool
from loopwatch.adapters.fastapi import instrument

THRESHOLD = 0.05
HOLD = "GET /hold/{n}"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def waits_over(registry: CollectorRegistry, le: str, **labels: str) -> float:
    """How many wait observations of these labels were longer than ``le`` seconds."""
    count = sample(registry, "loopwatch_threadpool_wait_seconds_count", **labels)
    below = sample(registry, "loopwatch_threadpool_wait_seconds_bucket", le=le, **labels)
    return count - below


@contextlib.contextmanager
def eight_requests(url: str, path: str) -> Iterator[list[concurrent.futures.Future[int]]]:
    """Send eight concurrent GETs from threads; yield their futures (status codes)."""
    with httpx.Client(base_url=url, timeout=30) as client, concurrent.futures.ThreadPoolExecutor(
        8, thread_name_prefix="test-client"
    ) as senders:
        yield [
            senders.submit(lambda n=n: client.get(path.format(n=n)).status_code)
            for n in range(8)
        ]


def saturated(handler: str) -> list[loopwatch.Incident]:
    return [
        i for i in loopwatch.incidents()
        if i.kind == "threadpool_saturated" and i.handler == handler
    ]


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_sync_route_behind_a_limiter_of_two(loop: str, registry: CollectorRegistry) -> None:
    gate = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        yield

    app = FastAPI(lifespan=lifespan)

    # No response model: FastAPI would validate a sync route's answer in the pool as well.
    @app.get("/hold/{n}", response_model=None)
    def hold(n: int) -> dict[str, int]:
        gate.wait(30)
        return {"n": n}

    instrument(app, registry=registry, block_threshold=THRESHOLD, metrics_path=None)
    with serve_uvicorn(app, loop) as url, eight_requests(url, "/hold/{n}") as answers:
        wait_for(lambda: sample(registry, "loopwatch_threadpool_waiting", pool="anyio") == 6)
        assert sample(registry, "loopwatch_threadpool_threads", pool="anyio") == 2
        assert sample(registry, "loopwatch_threadpool_limit", pool="anyio") == 2
        time.sleep(4 * THRESHOLD)  # the six queued calls now wait past the threshold
        gate.set()
        assert [f.result() for f in answers] == [200] * 8

    route = {"framework": "fastapi", "handler": HOLD}
    assert sample(registry, "loopwatch_threadpool_wait_seconds_count", **route) == 8
    assert waits_over(registry, "0.1", **route) >= 6
    assert sample(registry, "loopwatch_threadpool_waiting", pool="anyio") == 0
    assert sample(registry, "loopwatch_threadpool_threads", pool="anyio") == 0

    [incident] = saturated(HOLD)  # one record, folded: every slow wait counted in it
    assert incident.count >= 6
    assert incident.framework == "fastapi"
    assert incident.api == "anyio.to_thread.run_sync"
    assert incident.detail["pool"] == "anyio"
    assert incident.detail["size"] == "2"
    assert int(incident.detail["queue"]) in range(1, 9)
    assert incident.duration is not None and incident.duration > 4 * THRESHOLD * 0.9
    assert incident.site is not None and incident.site.function == "hold"
    assert incident.site.file == __file__
    assert "limiter" in incident.hint and "async" in incident.hint


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_default_executor_of_two(loop: str, registry: CollectorRegistry) -> None:
    gate = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The test's own loop setup: a small default executor (loopwatch never sets one).
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="small")
        )
        yield

    app = FastAPI(lifespan=lifespan)

    def wait_at_gate(n: int) -> int:
        gate.wait(30)
        return n * 2

    @app.get("/report/{n}")
    async def report(n: int) -> dict[str, int]:
        if n % 2:
            return {"double": await asyncio.to_thread(wait_at_gate, n)}
        loop = asyncio.get_running_loop()
        return {"double": await loop.run_in_executor(None, wait_at_gate, n)}

    instrument(app, registry=registry, block_threshold=THRESHOLD, metrics_path=None)
    pool = "asyncio-default"
    with serve_uvicorn(app, loop) as url, eight_requests(url, "/report/{n}") as answers:
        wait_for(lambda: sample(registry, "loopwatch_threadpool_waiting", pool=pool) == 6)
        assert sample(registry, "loopwatch_threadpool_threads", pool=pool) == 2
        assert sample(registry, "loopwatch_threadpool_limit", pool=pool) == 2
        time.sleep(4 * THRESHOLD)
        gate.set()
        assert [f.result() for f in answers] == [200] * 8

    route = {"framework": "fastapi", "handler": "GET /report/{n}"}
    assert sample(registry, "loopwatch_threadpool_wait_seconds_count", **route) == 8
    assert waits_over(registry, "0.1", **route) >= 6
    assert sample(registry, "loopwatch_threadpool_waiting", pool=pool) == 0
    assert sample(registry, "loopwatch_threadpool_threads", pool=pool) == 0
    [incident] = saturated("GET /report/{n}")
    assert incident.count >= 6
    assert incident.api == "loop.run_in_executor"
    assert (incident.detail["pool"], incident.detail["size"]) == (pool, "2")
    assert incident.site is not None and incident.site.function == "wait_at_gate"
    assert "set_default_executor" in incident.hint


def test_results_exceptions_and_cancellation_pass_through(
    loop_factory: Any, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry, block_threshold=THRESHOLD)

    def fail() -> None:
        raise KeyError("mine")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, pow, 2, 10) == 1024
        assert await asyncio.to_thread(divmod, 7, 2) == (3, 1)
        assert await anyio.to_thread.run_sync(sum, [1, 2]) == 3
        with pytest.raises(KeyError, match="mine"):
            await loop.run_in_executor(None, fail)
        with pytest.raises(KeyError, match="mine"):
            await anyio.to_thread.run_sync(fail)
        # A call cancelled while it waits for the (full) executor leaves the queue.
        executor = concurrent.futures.ThreadPoolExecutor(1)
        loop.set_default_executor(executor)
        gate = threading.Event()
        busy = loop.run_in_executor(None, gate.wait, 10)
        queued = loop.run_in_executor(None, gate.wait, 10)
        await asyncio.sleep(0.05)
        assert sample(registry, "loopwatch_threadpool_waiting", pool="asyncio-default") == 1
        queued.cancel()
        gate.set()
        await busy
        with contextlib.suppress(asyncio.CancelledError):
            await queued

    run_on(loop_factory, main())
    for pool in ("anyio", "asyncio-default"):
        assert sample(registry, "loopwatch_threadpool_waiting", pool=pool) == 0
        assert sample(registry, "loopwatch_threadpool_threads", pool=pool) == 0


def test_own_limiters_and_executors_are_not_counted(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        limiter = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(sum, [1], limiter=limiter)
        with concurrent.futures.ThreadPoolExecutor(1) as own:
            await asyncio.get_running_loop().run_in_executor(own, sum, [1])
            own.submit(sum, [1]).result()

    asyncio.run(main())
    assert registry.get_sample_value(
        "loopwatch_threadpool_wait_seconds_count", {"framework": "none", "handler": "__none__"}
    ) is None


def test_uninstall_restores_the_entry_points(registry: CollectorRegistry) -> None:
    import anyio._backends._asyncio as backend

    before = (
        vars(concurrent.futures.ThreadPoolExecutor)["submit"],
        vars(asyncio.BaseEventLoop)["run_in_executor"],
        vars(backend.AsyncIOBackend)["run_sync_in_worker_thread"],
    )
    loopwatch.install(registry=registry)
    during = (
        vars(concurrent.futures.ThreadPoolExecutor)["submit"],
        vars(asyncio.BaseEventLoop)["run_in_executor"],
        vars(backend.AsyncIOBackend)["run_sync_in_worker_thread"],
    )
    assert all(a is not b for a, b in zip(before, during, strict=True))
    assert _threadpool._watch is not None
    loopwatch.uninstall()
    after = (
        vars(concurrent.futures.ThreadPoolExecutor)["submit"],
        vars(asyncio.BaseEventLoop)["run_in_executor"],
        vars(backend.AsyncIOBackend)["run_sync_in_worker_thread"],
    )
    assert after == before
    assert _threadpool._watch is None


def test_pool_counts_without_locks() -> None:
    # The gauges are read from itertools.count objects; their repr says how far they got.
    counter = itertools.count()
    assert _threadpool._value(counter) == 0
    for _ in range(1234):
        next(counter)
    assert _threadpool._value(counter) == 1234
    pool = _threadpool._Pool("anyio")
    for name in ("asked", "asked", "asked", "started", "started", "finished", "abandoned"):
        next(getattr(pool, name))
    assert pool.state() == (3, 1, 0)  # asked, busy, waiting
