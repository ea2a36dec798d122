"""H7: handlers stuck past ``stuck_after`` while the loop is healthy.

A real uvicorn + FastAPI server on 127.0.0.1 (stdlib loop and uvloop), discord.py's own
objects, and ``handler_context`` blocks. Each stuck handler waits on an ``asyncio.Event``
that never fires; the tests look for one incident with its await chain and user line,
the in-flight gauge and the stuck counter, and the final age once the handler ends.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.responses import StreamingResponse
from helpers import LOOP_KINDS, Gate, run_on, serve_uvicorn, wait_for
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import ConfigError
from loopwatch.adapters.fastapi import instrument

STUCK_AFTER = 0.3


def stuck_incidents() -> list[loopwatch.Incident]:
    return [i for i in loopwatch.incidents() if i.kind == "stuck_handler"]


def sample(registry: CollectorRegistry, name: str, framework: str, handler: str) -> float:
    value = registry.get_sample_value(name, {"framework": framework, "handler": handler})
    return 0.0 if value is None else value


async def wait_for_pool(never: asyncio.Event) -> None:
    await never.wait()  # the user line a stuck report must point at


def make_app(registry: CollectorRegistry, gate: Gate) -> FastAPI:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        never = asyncio.Event()
        gate.loop, gate.event = asyncio.get_running_loop(), never
        gate.started.set()
        await wait_for_pool(never)
        return {"order": order_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(10):
                await asyncio.sleep(0.1)
                yield f"{i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/stalls")
    async def stalls() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            never = asyncio.Event()
            gate.loop, gate.event = asyncio.get_running_loop(), never
            gate.started.set()
            await wait_for_pool(never)
            yield b"never\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/quick")
    async def quick() -> str:
        return "ok"

    instrument(app, registry=registry, stuck_after=STUCK_AFTER)
    return app


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_a_request_waiting_on_an_event_is_one_stuck_incident_with_its_chain(
    loop: str, registry: CollectorRegistry
) -> None:
    gate = Gate()
    app = make_app(registry, gate)
    handler = "GET /orders/{order_id}"
    statuses: list[int] = []
    with serve_uvicorn(app, loop) as base:
        with httpx.Client(base_url=base) as client:
            assert client.get("/quick").status_code == 200

        def call() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                statuses.append(client.get("/orders/7").status_code)

        caller = threading.Thread(target=call)
        caller.start()
        assert gate.started.wait(5)
        try:
            check_stuck_request(registry, gate, handler)
        finally:
            if gate.event is not None and not gate.event.is_set():
                gate.release()
            caller.join(10)
        assert statuses == [200]
        wait_for(lambda: sample(
            registry, "loopwatch_handlers_in_flight", "fastapi", handler) == 0, timeout=3)
    assert sample(registry, "loopwatch_stuck_handlers_total", "fastapi", handler) == 1


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_a_request_stuck_in_a_middleware_ahead_of_the_router_carries_its_route(
    loop: str, registry: CollectorRegistry
) -> None:
    """A rate limiter that never lets the request through: the request never reached the
    router, and its stuck report and in-flight gauge still name the route it asked for."""
    gate = Gate()
    app = FastAPI()

    @app.middleware("http")
    async def rate_limit(request: Any, call_next: Any) -> Any:
        if request.url.path.startswith("/orders/"):
            never = asyncio.Event()
            gate.loop, gate.event = asyncio.get_running_loop(), never
            gate.started.set()
            await wait_for_pool(never)
        return await call_next(request)

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    instrument(app, registry=registry, stuck_after=STUCK_AFTER)
    handler = "GET /orders/{order_id}"
    statuses: list[int] = []
    with serve_uvicorn(app, loop) as base:

        def call() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                statuses.append(client.get("/orders/7").status_code)

        caller = threading.Thread(target=call)
        caller.start()
        assert gate.started.wait(5)
        try:
            wait_for(lambda: stuck_incidents(), timeout=5)
            (incident,) = stuck_incidents()
            assert (incident.framework, incident.handler) == ("fastapi", handler)
            assert incident.site is not None and incident.site.function == "wait_for_pool"
            assert sample(registry, "loopwatch_handlers_in_flight", "fastapi", handler) == 1
            assert sample(registry, "loopwatch_stuck_handlers_total", "fastapi", handler) == 1
        finally:
            gate.release()
            caller.join(10)
    assert statuses == [200]


def check_stuck_request(registry: CollectorRegistry, gate: Gate, handler: str) -> None:
    began = time.monotonic()
    wait_for(lambda: stuck_incidents(), timeout=5)
    assert time.monotonic() - began >= STUCK_AFTER * 0.9
    wait_for(lambda: sample(
        registry, "loopwatch_handlers_in_flight", "fastapi", handler) == 1, timeout=3)
    (incident,) = stuck_incidents()
    assert (incident.framework, incident.handler) == ("fastapi", handler)
    assert incident.site is not None
    assert incident.site.function == "wait_for_pool"
    assert incident.site.file == __file__
    # The chain, innermost first: asyncio's Event.wait, then the user's helper, then
    # the route function.
    functions = [f.function.rpartition(".")[2] for f in incident.stack]
    assert functions[0] == "wait"
    assert functions.index("wait_for_pool") < functions.index("order")
    assert incident.detail["state"] == "running"
    assert incident.duration is not None and incident.duration >= STUCK_AFTER
    first_age = incident.duration
    # Several check periods later: still one incident, counted once, its age updated.
    time.sleep(4 * STUCK_AFTER)
    (later,) = stuck_incidents()
    assert later.count == 1
    assert later.duration is not None and later.duration > first_age
    assert sample(registry, "loopwatch_stuck_handlers_total", "fastapi", handler) == 1
    # What it waited for comes at last: the request ends and its final age is kept.
    gate.release()
    wait_for(lambda: stuck_incidents()[0].detail["state"] == "ended", timeout=5)
    (ended,) = stuck_incidents()
    assert ended.duration is not None and ended.duration >= later.duration
    assert ended.count == 1


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_a_response_that_keeps_streaming_is_not_stuck(
    loop: str, registry: CollectorRegistry
) -> None:
    app = make_app(registry, Gate())
    with serve_uvicorn(app, loop) as base, httpx.Client(base_url=base) as client:
        response = client.get("/stream")
        assert response.text.split() == [str(i) for i in range(10)]
    assert stuck_incidents() == []
    assert sample(registry, "loopwatch_stuck_handlers_total", "fastapi", "GET /stream") == 0


def test_a_stream_that_stops_sending_is_stuck_at_the_generators_line(
    registry: CollectorRegistry,
) -> None:
    gate = Gate()
    app = make_app(registry, gate)
    with serve_uvicorn(app, "asyncio") as base:
        caller = threading.Thread(target=lambda: httpx.get(f"{base}/stalls", timeout=30))
        caller.start()
        try:
            assert gate.started.wait(5)
            wait_for(lambda: stuck_incidents(), timeout=5)
        finally:
            gate.release()
            caller.join(10)
    (incident,) = stuck_incidents()
    assert incident.handler == "GET /stalls"
    # The response streams from a task of Starlette's task group: the report shows that
    # task's chain, with the generator's line, not the request task's framework frames.
    assert incident.site is not None and incident.site.function == "wait_for_pool"
    assert "chunks" in [f.function.rpartition(".")[2] for f in incident.stack]


@pytest.mark.parametrize("opted_in", [False, True])
def test_websocket_sessions_only_on_request(opted_in: bool, registry: CollectorRegistry) -> None:
    import websockets.sync.client

    from loopwatch.adapters.asgi import LoopwatchMiddleware

    app = FastAPI()

    @app.websocket("/ws")
    async def quiet(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()  # the client says nothing for a while

    app.add_middleware(LoopwatchMiddleware, stuck_websockets=opted_in)
    loopwatch.install(registry=registry, stuck_after=STUCK_AFTER)
    with serve_uvicorn(app, "asyncio", ws="websockets-sansio") as base:
        with websockets.sync.client.connect(base.replace("http", "ws") + "/ws") as ws:
            if opted_in:
                wait_for(lambda: stuck_incidents(), timeout=5)
            else:
                time.sleep(6 * STUCK_AFTER)  # many looks: a quiet socket is not reported
            ws.send("bye")
    if opted_in:
        (incident,) = stuck_incidents()
        assert incident.handler == "WEBSOCKET /ws"
        assert incident.site is not None and incident.site.function.endswith("quiet")
    else:
        assert stuck_incidents() == []


def test_handler_context_blocks_are_tracked(loop_factory: Any, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry, stuck_after=STUCK_AFTER)

    async def job() -> None:
        never = asyncio.Event()
        with loopwatch.handler_context("none", "job:nightly"):
            await wait_for_pool(never)

    async def main() -> None:
        task = asyncio.ensure_future(job())
        deadline = time.monotonic() + 5
        while not stuck_incidents() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sample(registry, "loopwatch_handlers_in_flight", "none", "job:nightly") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_on(loop_factory, main())
    (incident,) = stuck_incidents()
    assert incident.handler == "job:nightly"
    assert incident.site is not None and incident.site.function == "wait_for_pool"
    assert incident.detail["state"] == "ended"
    assert sample(registry, "loopwatch_stuck_handlers_total", "none", "job:nightly") == 1


def test_stuck_after_zero_turns_it_off(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry, stuck_after=0)

    async def main() -> None:
        with loopwatch.handler_context("none", "job:off"):
            await asyncio.sleep(0.5)

    asyncio.run(main())
    assert stuck_incidents() == []
    assert sample(registry, "loopwatch_handlers_in_flight", "none", "job:off") == 0


def test_uninstall_ends_the_handler_thread_without_waiting_out_its_period(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread sleeps until a handler begins; stop's wake-up must end it then and there,
    # not after one more period (uninstall joins it: every pytest session, every
    # capture_incidents block and notebook unload waited that period).
    from loopwatch import _handlers

    monkeypatch.setattr(_handlers, "_MAX_PERIOD", 0.05)
    loopwatch.install(registry=registry, stuck_after=600)
    # No thread until a handler begins: a program that runs none never gets it.
    assert not [t for t in threading.enumerate() if t.name == _handlers.THREAD_NAME]

    async def one_handler() -> None:
        with loopwatch.handler_context("none", "job:once"):
            await asyncio.sleep(0)

    asyncio.run(one_handler())
    thread = next(t for t in threading.enumerate() if t.name == _handlers.THREAD_NAME)
    wait_for(lambda: _handlers.FAST.asleep[0])  # idle: waiting for a handler to begin
    time.sleep(0.3)  # past the install's own wake-up and the short period it starts
    wait_for(lambda: _handlers.FAST.asleep[0])
    # Any period from now on would be a long one.
    monkeypatch.setattr(_handlers, "_MAX_PERIOD", 60.0)
    loopwatch.uninstall()  # joins for at most 2 s
    assert not thread.is_alive()


def test_stuck_after_option_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loopwatch.install(registry=CollectorRegistry()).config.stuck_after == 10.0
    loopwatch.uninstall()
    monkeypatch.setenv("LOOPWATCH_STUCK_AFTER", "2.5")
    assert loopwatch.install(registry=CollectorRegistry()).config.stuck_after == 2.5
    loopwatch.uninstall()
    monkeypatch.setenv("LOOPWATCH_STUCK_AFTER", "soon")
    with pytest.raises(ConfigError, match="LOOPWATCH_STUCK_AFTER='soon'"):
        loopwatch.install()
    with pytest.raises(ConfigError, match="stuck_after=-1"):
        loopwatch.install(stuck_after=-1)


# -- discord.py ------------------------------------------------------------------------------


def test_a_discord_listener_and_a_tasks_loop_iteration_that_hang(
    loop_factory: Any, registry: CollectorRegistry
) -> None:
    from discord.ext import tasks
    from discord_harness import BotHarness, discord, make_bot

    bot = make_bot()
    gates: list[asyncio.Event] = []

    @bot.listen("on_message")
    async def on_message(message: discord.Message) -> None:
        if message.content == "hang":
            gate = asyncio.Event()
            gates.append(gate)
            await wait_for_pool(gate)

    @tasks.loop(seconds=0.01, count=1)
    async def sync_orders() -> None:
        gate = asyncio.Event()
        gates.append(gate)
        await wait_for_pool(gate)

    @sync_orders.before_loop
    async def until_ready() -> None:
        await asyncio.sleep(3 * STUCK_AFTER)  # waiting for the bot: never "stuck"

    async def main() -> None:
        loopwatch.install(registry=registry, stuck_after=STUCK_AFTER)
        async with BotHarness(bot) as harness:
            await bot.load_extension("loopwatch.adapters.discord")
            bot.dispatch("message", harness.message("hang"))  # no drain: it never ends
            sync_orders.start()
            deadline = time.monotonic() + 5
            while len(stuck_incidents()) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            handlers = {i.handler for i in stuck_incidents()}
            assert handlers == {"event:on_message", "task:sync_orders"}
            for handler in handlers:
                assert sample(registry, "loopwatch_handlers_in_flight", "discord", handler) == 1
            await asyncio.sleep(4 * STUCK_AFTER)  # several looks: still one incident each
            for gate in gates:
                gate.set()
            await harness.drain()
            loop_task = sync_orders.get_task()
            assert loop_task is not None
            await loop_task
            await bot.unload_extension("loopwatch.adapters.discord")

    run_on(loop_factory, main())
    incidents = {i.handler: i for i in stuck_incidents()}
    for handler in ("event:on_message", "task:sync_orders"):
        incident = incidents[handler]
        assert incident.framework == "discord"
        assert incident.count == 1
        assert incident.site is not None and incident.site.function == "wait_for_pool"
        assert incident.detail["state"] == "ended"
        assert incident.duration is not None and incident.duration >= 5 * STUCK_AFTER
        assert sample(registry, "loopwatch_stuck_handlers_total", "discord", handler) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork is POSIX")
def test_a_forked_worker_reports_its_own_stuck_handlers(tmp_path: Path) -> None:
    """A pre-forking server (gunicorn --preload): the parent ran a handler (so its checker
    thread ran) before it forked; the worker's own stuck handler is still reported."""
    script = tmp_path / "fork_child.py"
    script.write_text(textwrap.dedent("""
        import asyncio, os, threading
        import loopwatch

        loopwatch.install(registry=None, stuck_after=0.2)

        async def handler(wait):
            with loopwatch.handler_context("none", "job:wait"):
                await asyncio.sleep(wait)

        asyncio.run(handler(0.01))  # the parent's checker thread starts
        pid = os.fork()
        if pid == 0:
            asyncio.run(handler(1.2))
            stuck = [i for i in loopwatch.incidents() if i.kind == "stuck_handler"]
            names = [t.name for t in threading.enumerate()]
            print("child", len(stuck), names.count("loopwatch-handlers"), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """))
    out = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(script)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "child 1 1" in out.stdout, (out.stdout, out.stderr)
