"""The Starlette/FastAPI adapter: route attribution, handler metrics, exposition, workers.

Real-server tests run uvicorn on 127.0.0.1 in a thread, on the stdlib loop and on uvloop,
and talk to it over HTTP; the 5,000-path test also runs in-process (no network) so it
stays fast, with a smaller real-server check beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import string
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asgi_apps
import httpx
import pytest
import websockets.sync.client
from fastapi import FastAPI
from helpers import LOOP_KINDS, free_port, serve_uvicorn
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import loopwatch
from loopwatch import ConfigError, LoopwatchError
from loopwatch._compat import prometheus as prom
from loopwatch._context import current_labels
from loopwatch.adapters import _routes as lw_routes
from loopwatch.adapters.asgi import LoopwatchMiddleware
from loopwatch.adapters.fastapi import instrument as instrument_fastapi
from loopwatch.adapters.starlette import instrument as instrument_starlette

ROOT = Path(__file__).resolve().parent.parent
APP_MAKERS = {"fastapi": asgi_apps.make_fastapi_app, "starlette": asgi_apps.make_starlette_app}


# -- helpers -------------------------------------------------------------------------------


def serve(app: Any, loop: str, **config: Any) -> contextlib.AbstractContextManager[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1; yield its base URL."""
    return serve_uvicorn(app, loop, ws="websockets-sansio", **config)


def in_process(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def asgi_get(app: Any, path: str) -> int:
    """One GET straight through the ASGI interface (no client library); the status."""
    status = 0
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"app")], "client": ("127.0.0.1", 1), "server": ("app", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def duration_count(registry: CollectorRegistry, framework: str, handler: str,
                   outcome: str = "ok") -> float:
    value = registry.get_sample_value(
        "loopwatch_handler_duration_seconds_count",
        {"framework": framework, "handler": handler, "outcome": outcome},
    )
    return value or 0.0


def handler_values(registry: CollectorRegistry) -> set[str]:
    """Every ``handler`` label value that requests put on any loopwatch sample.

    ``__none__`` is left out: on a busy machine the watchdog may see the server's loop
    stall between requests, which is work outside any handler, not a request's value.
    """
    return {
        sample.labels["handler"]
        for family in registry.collect()
        if not family.name.startswith(_BLOCK_SERIES)
        for sample in family.samples
        if "handler" in sample.labels and sample.labels["handler"] != "__none__"
    }


# A loaded machine can block the loop anywhere, also inside a request before its route is
# matched (a framework's first call builds its middleware stack): those series carry what
# the request's labels were at that moment. They are the watchdog's, checked in its tests.
_BLOCK_SERIES = ("loopwatch_event_loop_blocks", "loopwatch_event_loop_blocked_seconds")


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def random_path(rng: random.Random) -> str:
    parts = ["".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 12)))
             for _ in range(rng.randint(1, 4))]
    return "/zz-" + "/".join(parts)


# -- re-entry inside routes, against a real server ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_fifty_concurrent_asyncio_run_in_a_route(
    loop: str, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    app = asgi_apps.make_fastapi_app(registry)
    caplog.set_level(logging.WARNING, logger="loopwatch")

    async def fifty(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await asyncio.gather(*(client.get(f"/items/{i}") for i in range(50)))

    with serve(app, loop) as base:
        responses = asyncio.run(fifty(base))

    route = {"framework": "fastapi", "handler": "GET /items/{item_id}"}
    for i, response in enumerate(responses):
        assert response.status_code == 200
        assert response.json() == {"item_id": i, "double": 2 * i, "labels": route}
    assert registry.get_sample_value(
        "loopwatch_reentry_total", {**route, "api": "asyncio.run", "action": "offloaded"}
    ) == 50
    site = (asgi_apps.__file__, asgi_apps.helper_line())
    [incident] = [i for i in loopwatch.incidents() if i.kind == "reentry"]
    assert (incident.framework, incident.handler) == ("fastapi", "GET /items/{item_id}")
    assert incident.site is not None and (incident.site.file, incident.site.line) == site
    logged = [
        r.loopwatch for r in caplog.records  # type: ignore[attr-defined]
        if getattr(r, "loopwatch", {}).get("kind") == "reentry"
    ]
    assert logged, "no incident was logged"
    assert (logged[0]["site"]["file"], logged[0]["site"]["line"]) == site
    assert logged[0]["handler"] == "GET /items/{item_id}"


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_sync_endpoint_runs_the_server_loop_from_the_threadpool(
    loop: str, registry: CollectorRegistry
) -> None:
    app = asgi_apps.make_fastapi_app(registry)
    with serve(app, loop) as base:
        response = httpx.get(f"{base}/sync/21", timeout=30)
    route = {"framework": "fastapi", "handler": "GET /sync/{key}"}
    assert response.status_code == 200
    assert response.json() == {"double": 42, "labels": route}
    assert registry.get_sample_value(
        "loopwatch_reentry_total",
        {**route, "api": "loop.run_until_complete", "action": "marshalled"},
    ) == 1
    [incident] = [i for i in loopwatch.incidents() if i.kind == "cross_thread_run"]
    assert (incident.handler, incident.action) == ("GET /sync/{key}", "marshalled")


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_a_blocked_loop_is_attributed_to_its_route(loop: str, registry: CollectorRegistry) -> None:
    """The watchdog reads the request's labels from another thread, while it blocks."""
    app = asgi_apps.make_fastapi_app(registry, block_threshold=0.1)
    with serve(app, loop) as base:
        assert httpx.get(f"{base}/block", timeout=30).status_code == 200
        route = {"framework": "fastapi", "handler": "GET /block"}
        wait_for(lambda: (registry.get_sample_value(
            "loopwatch_event_loop_blocks_total", route) or 0) >= 1)
    blocked = [i for i in loopwatch.incidents() if i.kind == "blocked_loop"
               and i.handler == "GET /block"]
    assert blocked and blocked[0].framework == "fastapi"


# -- route templates ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_nested_routers_mounts_and_root_path(loop: str, registry: CollectorRegistry) -> None:
    app = asgi_apps.make_fastapi_app(registry)
    expected = {
        "/api/v1/users/7": "GET /api/v1/users/{uid}",
        "/api/v1/users/7/sync": "GET /api/v1/users/{uid}/sync",
        "/sub/things/2": "GET /sub/things/{tid}",
        "/orgs/acme/repos/1": "GET /orgs/{org}/repos/{rid}",
        "/orgs/other/repos/2": "GET /orgs/{org}/repos/{rid}",
    }
    with serve(app, loop, root_path="/proxy") as base, httpx.Client(base_url=base) as client:
        for path, handler in expected.items():
            response = client.get(path)
            assert response.status_code == 200, path
            body = response.json()
            assert body.get("labels", body) == {"framework": "fastapi", "handler": handler}
    for handler in expected.values():
        assert duration_count(registry, "fastapi", handler) >= 1
    assert not any("proxy" in value or "acme" in value for value in handler_values(registry))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_fastapi_templates_in_process(registry: CollectorRegistry) -> None:
    app = asgi_apps.make_fastapi_app(registry)

    async def go() -> None:
        async with in_process(app) as client:
            for path, handler in {
                "/labels": "GET /labels",
                "/labels-sync": "GET /labels-sync",
                "/api/v1/users/3": "GET /api/v1/users/{uid}",
                "/sub/things/x": "GET /sub/things/{tid}",
                "/orgs/o/repos/r": "GET /orgs/{org}/repos/{rid}",
            }.items():
                response = await client.get(path)
                body = response.json()
                assert body.get("labels", body)["handler"] == handler, path
            response = await client.request("PURGE", "/purge")
            assert response.json()["handler"] == "OTHER /purge"
            assert (await client.post("/items/1")).status_code == 405
            assert (await client.get("/labels/")).status_code == 307  # redirect_slashes
            assert (await client.get("/openapi.json")).status_code == 200
            assert (await client.get("/sub/nothing-here")).status_code == 404

    run(go())
    assert duration_count(registry, "fastapi", "POST /items/{item_id}") == 1  # 405 keeps it
    assert duration_count(registry, "fastapi", "GET /openapi.json") == 1
    assert duration_count(registry, "fastapi", "__unmatched__") == 2
    assert "GET /labels/" not in handler_values(registry)


def test_starlette_templates_in_process(registry: CollectorRegistry) -> None:
    app = asgi_apps.make_starlette_app(registry)

    async def go() -> None:
        async with in_process(app) as client:
            for path, handler in {
                "/labels": "GET /labels",
                "/labels-sync": "GET /labels-sync",
                "/sub/things/1": "GET /sub/things/{tid}",
                "/sub/deeper/leafy": "GET /sub/deeper/{leaf}",
                "/raw/any/thing": "GET /raw/{path}",
                "/app/things/2": "GET /app/things/{tid}",
            }.items():
                response = await client.get(path)
                assert response.json()["handler"] == handler, path
            assert (await client.post("/labels")).status_code == 405
            assert (await client.get("/labels/")).status_code == 307
            assert (await client.get("/sub/unknown")).status_code == 404
            assert (await client.get("/app/unknown")).status_code == 404

    run(go())
    assert duration_count(registry, "starlette", "POST /labels") == 1
    assert duration_count(registry, "starlette", "__unmatched__") == 3
    assert duration_count(registry, "starlette", "GET /raw/{path}") == 1


@pytest.mark.parametrize("kind", ["fastapi", "starlette"])
def test_threadpool_and_background_tasks_carry_the_route(
    kind: str, registry: CollectorRegistry
) -> None:
    app = APP_MAKERS[kind](registry)

    async def go() -> list[Any]:
        async with in_process(app) as client:
            assert (await client.get("/labels-sync")).json()["handler"] == "GET /labels-sync"
            assert (await client.get("/labels-background")).status_code == 200
        return list(app.state.background)

    seen = run(go())
    assert seen, "the background task did not run"
    for entry in seen:
        got = entry[1] if isinstance(entry, tuple) else entry
        assert got == {"framework": kind, "handler": "GET /labels-background"}
    if kind == "fastapi":
        assert sorted(entry[0] for entry in seen) == ["async", "sync"]


@pytest.mark.parametrize("kind", ["fastapi", "starlette"])
def test_five_thousand_random_paths_add_one_handler_value(
    kind: str, registry: CollectorRegistry
) -> None:
    app = APP_MAKERS[kind](registry)
    rng = random.Random(1234)
    paths = {random_path(rng) for _ in range(6000)}
    paths = set(sorted(paths)[:5000])
    assert len(paths) == 5000

    async def go() -> None:
        assert await asgi_get(app, "/labels") == 200
        before = handler_values(registry)
        for path in paths:
            assert await asgi_get(app, path) == 404
        assert handler_values(registry) - before == {"__unmatched__"}

    run(go())
    assert duration_count(registry, kind, "__unmatched__") == 5000


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_random_paths_on_a_real_server(loop: str, registry: CollectorRegistry) -> None:
    app = asgi_apps.make_fastapi_app(registry)
    rng = random.Random(99)
    with serve(app, loop) as base, httpx.Client(base_url=base) as client:
        client.get("/labels")
        # The duration is recorded after the response is sent: wait for it to land.
        for _ in range(200):
            if "GET /labels" in handler_values(registry):
                break
            time.sleep(0.01)
        before = handler_values(registry)
        for _ in range(300):
            assert client.get(random_path(rng)).status_code == 404
    assert handler_values(registry) - before == {"__unmatched__"}
    assert duration_count(registry, "fastapi", "__unmatched__") == 300


def test_resolution_never_routes_again(registry: CollectorRegistry,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The label is read from what routing left behind: no route is matched twice."""
    calls = 0
    original = Route.matches

    def counting(self: Route, scope: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, scope)

    monkeypatch.setattr(Route, "matches", counting)

    async def endpoint(request: Any) -> PlainTextResponse:
        for _ in range(3):  # as incidents would
            current_labels()
        return PlainTextResponse(current_labels().handler)

    def make(instrumented: bool) -> Starlette:
        app = Starlette(routes=[Route(f"/r{i}/{{x}}", endpoint) for i in range(300)])
        if instrumented:
            instrument_starlette(app, registry=registry, handler_metrics=True,
                                 metrics_path=None)
        return app

    async def count(app: Starlette) -> tuple[int, str]:
        nonlocal calls
        async with in_process(app) as client:
            await client.get("/r299/warm")
            calls = 0
            response = await client.get("/r299/a")
        return calls, response.text

    bare_calls, _ = run(count(make(False)))
    watched_calls, handler = run(count(make(True)))
    assert handler == "GET /r299/{x}"
    assert watched_calls == bare_calls == 300


def test_a_router_that_does_not_record_the_route_is_resolved_by_endpoint(
    registry: CollectorRegistry
) -> None:
    """Starlette before 1.7 sets no ``scope["route"]``: the endpoint finds the route."""

    async def forget_route(request: Any) -> PlainTextResponse:
        request.scope.pop("route", None)
        return PlainTextResponse(current_labels().handler)

    app = Starlette(routes=[
        Route("/a/{x}", forget_route),
        Route("/b/{y}", forget_route),  # the same endpoint behind two routes
    ])
    instrument_starlette(app, registry=registry, metrics_path=None)

    async def go() -> list[str]:
        async with in_process(app) as client:
            return [(await client.get(p)).text for p in ("/a/1", "/b/2")]

    assert run(go()) == ["GET /a/{x}", "GET /b/{y}"]


# -- websockets, lifespan -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_websockets_are_attributed(loop: str, registry: CollectorRegistry) -> None:
    fastapi_app = asgi_apps.make_fastapi_app(registry)
    starlette_app = asgi_apps.make_starlette_app(CollectorRegistry())
    with serve(fastapi_app, loop) as base:
        with websockets.sync.client.connect(base.replace("http", "ws") + "/ws/lobby") as ws:
            got = json.loads(ws.recv(timeout=10))
    assert got == {"room": "lobby",
                   "labels": {"framework": "fastapi", "handler": "WEBSOCKET /ws/{room}"}}
    wait_for(lambda: duration_count(registry, "fastapi", "WEBSOCKET /ws/{room}") == 1)
    with serve(starlette_app, loop) as base:
        with websockets.sync.client.connect(base.replace("http", "ws") + "/app/ws") as ws:
            got = json.loads(ws.recv(timeout=10))
    assert got == {"labels": {"framework": "starlette", "handler": "WEBSOCKET /app/ws"}}


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_lifespan_runs_unchanged(loop: str, registry: CollectorRegistry) -> None:
    app = asgi_apps.make_fastapi_app(registry)
    with asgi_apps.lifespan_events() as events:
        with serve(app, loop) as base:
            assert events == ["startup"]
            assert httpx.get(f"{base}/labels").status_code == 200
        assert events == ["startup", "shutdown"]


def test_other_scopes_pass_straight_through() -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))
        seen.append(current_labels())  # type: ignore[arg-type]

    middleware = LoopwatchMiddleware(app)
    scope = {"type": "lifespan"}

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        return None

    run(middleware(scope, receive, send))
    assert seen[0][0] is scope and seen[0][1] is receive and seen[0][2] is send
    assert seen[1] == ("none", "__none__")


# -- handler metrics ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_handler_outcomes(loop: str, registry: CollectorRegistry) -> None:
    app = asgi_apps.make_fastapi_app(registry)
    with serve(app, loop) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/labels").status_code == 200
        # uvicorn closes the connection after an escaped exception: use one of its own.
        assert httpx.get(f"{base}/boom").status_code == 500
        with client.stream("GET", "/stream") as response:
            next(response.iter_bytes())
        # closing the stream mid-way drops the connection: the client went away
        wait_for(lambda: duration_count(registry, "fastapi", "GET /stream", "cancelled") == 1)
    assert duration_count(registry, "fastapi", "GET /labels", "ok") == 1
    assert duration_count(registry, "fastapi", "GET /boom", "error") == 1
    assert duration_count(registry, "fastapi", "GET /stream", "ok") == 0


class ClientGone(OSError):
    """What an ASGI 2.4 server raises from ``send`` once the client has gone."""


def test_outcome_of_a_send_that_fails_is_cancelled_and_an_apps_oserror_is_error(
    registry: CollectorRegistry,
) -> None:
    route = Route("/x", endpoint=lambda request: None)
    sent: list[str] = []

    async def server_send(message: Any) -> None:
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            raise ClientGone("client went away")

    async def receive() -> Any:
        return {"type": "http.request"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = route
        if scope["path"] == "/db":
            raise ConnectionRefusedError("the app's own database is down")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = LoopwatchMiddleware(app, registry=registry, handler_metrics=True,
                                     framework="starlette")

    async def call(path: str) -> None:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
                 "headers": [], "query_string": b""}
        await middleware(scope, receive, server_send)

    with pytest.raises(ClientGone):
        run(call("/x"))
    with pytest.raises(ConnectionRefusedError):
        run(call("/db"))
    assert sent == ["http.response.start", "http.response.body"]
    assert duration_count(registry, "starlette", "GET /x", "cancelled") == 1
    assert duration_count(registry, "starlette", "GET /x", "error") == 1
    assert duration_count(registry, "starlette", "GET /x", "ok") == 0


def test_default_middleware_records_no_durations(registry: CollectorRegistry) -> None:
    app = asgi_apps.make_fastapi_app(registry, handler_metrics=False)

    async def go() -> Any:
        async with in_process(app) as client:
            return (await client.get("/items/4")).json()

    assert run(go())["labels"]["handler"] == "GET /items/{item_id}"
    assert registry.get_sample_value(
        "loopwatch_reentry_total",
        {"framework": "fastapi", "handler": "GET /items/{item_id}", "api": "asyncio.run",
         "action": "offloaded"},
    ) == 1
    assert handler_values(registry) == {"GET /items/{item_id}"}


@pytest.mark.parametrize("multiprocess", [False, True], ids=["mutex", "mmap"])
def test_fast_observe_matches_prometheus_client(
    multiprocess: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The middleware's histogram shortcut writes exactly what ``Histogram.observe`` does."""
    from prometheus_client import Histogram, values
    from prometheus_client.multiprocess import MultiProcessCollector

    if multiprocess:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        monkeypatch.setattr(values, "ValueClass", values.get_value_class())
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0, 10.0)
    fast = prom.fast_observe(
        Histogram("fast", "d", ["h"], buckets=buckets, registry=ours).labels("a"))
    # In-process values get the inlined additions; multiprocess files their own inc().
    assert fast.__name__ == ("fast" if multiprocess else "fast_mutex")
    reference = Histogram("ref", "d", ["h"], buckets=buckets, registry=theirs).labels("a")
    rng = random.Random(7)
    # Bucket bounds themselves, values between them, zero, negatives and huge values.
    amounts = [*buckets, 0.0, -1.0, 1e9, *(rng.uniform(-0.01, 20) for _ in range(500))]
    for amount in amounts:
        fast(amount)
        reference.observe(amount)
    if multiprocess:
        ours = theirs = CollectorRegistry()
        MultiProcessCollector(ours)
    got = {(s.name.replace("fast", "x"), tuple(sorted(s.labels.items()))): s.value
           for m in ours.collect() for s in m.samples
           if s.name.startswith("fast") and not s.name.endswith("_created")}
    want = {(s.name.replace("ref", "x"), tuple(sorted(s.labels.items()))): s.value
            for m in theirs.collect() for s in m.samples
            if s.name.startswith("ref") and not s.name.endswith("_created")}
    assert got and got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got[("x_count", (("h", "a"),))] == len(amounts)


def test_fast_observe_falls_back_to_the_childs_own() -> None:
    seen: list[float] = []

    class Other:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    prom.fast_observe(Other())(0.5)
    assert seen == [0.5]


def test_a_failure_inside_the_middleware_never_reaches_the_app(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = asgi_apps.make_fastapi_app(registry)

    def broken(*args: Any) -> Any:
        raise KeyError("resolver bug on purpose")

    monkeypatch.setattr(lw_routes._Resolver, "leaf", broken)

    async def go() -> httpx.Response:
        async with in_process(app) as client:
            return await client.get("/labels")

    response = run(go())
    assert response.status_code == 200
    assert response.json() == {"framework": "fastapi", "handler": "__unmatched__"}
    assert registry.get_sample_value(
        "loopwatch_internal_errors_total", {"component": "asgi"}
    ) >= 1  # type: ignore[operator]
    # The request is still timed, under the label the failing resolver falls back to.
    assert registry.get_sample_value(
        "loopwatch_handler_duration_seconds_count",
        {"framework": "fastapi", "handler": "__unmatched__", "outcome": "ok"},
    ) == 1


# -- instrument() ---------------------------------------------------------------------------


def test_metrics_endpoint_token_and_idempotence(registry: CollectorRegistry) -> None:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> str:
        return "hi"

    instrument_fastapi(app, registry=registry, metrics_token="s3cret", handler_metrics=True)
    instrument_fastapi(app, registry=registry, metrics_token="s3cret", handler_metrics=True)
    assert sum(m.cls is LoopwatchMiddleware for m in app.user_middleware) == 1
    assert sum(getattr(r, "path", "") == "/metrics" for r in app.routes) == 1
    assert "/metrics" not in app.openapi()["paths"]

    async def go() -> tuple[int, int, str]:
        async with in_process(app) as client:
            await client.get("/hello")
            denied = await client.get("/metrics")
            allowed = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            return denied.status_code, allowed.status_code, allowed.text

    denied, allowed, body = run(go())
    assert (denied, allowed) == (401, 200)
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert "loopwatch_handler_duration_seconds" in families
    assert 'handler="GET /hello"' in body


def test_metrics_path_none_mounts_nothing(registry: CollectorRegistry) -> None:
    app = Starlette()
    instrument_starlette(app, registry=registry, metrics_path=None)

    async def go() -> int:
        async with in_process(app) as client:
            return (await client.get("/metrics")).status_code

    assert run(go()) == 404


def test_two_apps_share_the_metrics_and_a_clash_is_an_error(registry: CollectorRegistry) -> None:
    first = asgi_apps.make_starlette_app(registry)
    second = asgi_apps.make_starlette_app(registry)

    async def go() -> None:
        for app in (first, second):
            async with in_process(app) as client:
                assert (await client.get("/labels")).status_code == 200

    run(go())
    assert duration_count(registry, "starlette", "GET /labels") == 2

    loopwatch.uninstall()
    clash = CollectorRegistry()
    Counter("loopwatch_handler_duration_seconds", "someone else's", registry=clash)
    with pytest.raises(LoopwatchError, match="loopwatch_handler_duration_seconds"):
        instrument_starlette(Starlette(), registry=clash, handler_metrics=True)
    with pytest.raises(LoopwatchError, match="already registered"):
        LoopwatchMiddleware(Starlette(), registry=clash, handler_metrics=True)


def test_bad_framework_and_disabled_install(monkeypatch: pytest.MonkeyPatch,
                                             registry: CollectorRegistry) -> None:
    with pytest.raises(ConfigError, match="django"):
        LoopwatchMiddleware(Starlette(), framework="django")
    monkeypatch.setenv("LOOPWATCH_DISABLE", "1")
    app = Starlette()
    monitor = instrument_starlette(app, registry=registry)
    assert not monitor.enabled
    assert app.user_middleware == [] and app.routes == []


def test_framework_is_detected_for_a_bare_middleware() -> None:
    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse(current_labels().framework)

    fast = FastAPI()
    fast.add_route("/x", endpoint)
    fast.add_middleware(LoopwatchMiddleware)
    plain = Starlette(routes=[Route("/x", endpoint)])
    plain.add_middleware(LoopwatchMiddleware)

    async def go(app: Any) -> str:
        async with in_process(app) as client:
            return (await client.get("/x")).text

    assert (run(go(fast)), run(go(plain))) == ("fastapi", "starlette")


# -- gunicorn, several workers --------------------------------------------------------------

MP_APP = '''
import asyncio
import os

from fastapi import FastAPI

from loopwatch.adapters.fastapi import instrument

app = FastAPI()


async def double(value):
    await asyncio.sleep(0.01)
    return value * 2


def helper(value):
    return asyncio.run(double(value))


@app.get("/jobs/{n}")
async def jobs(n: int):
    return {"pid": os.getpid(), "double": helper(n)}


instrument(app)
'''


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_gunicorn_workers_add_up(tmp_path: Path) -> None:
    (tmp_path / "mpapp.py").write_text(textwrap.dedent(MP_APP))
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    config = ROOT / "integrations" / "gunicorn" / "gunicorn.conf.py"
    if not config.exists():
        config = tmp_path / "gunicorn.conf.py"
        config.write_text(textwrap.dedent('''
            worker_class = "uvicorn.workers.UvicornWorker"
            workers = 2

            def child_exit(server, worker):
                from prometheus_client import multiprocess
                multiprocess.mark_process_dead(worker.pid)
        '''))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(multiproc), WEB_CONCURRENCY="2",
               PYTHONWARNINGS="ignore::DeprecationWarning")
    log = (tmp_path / "gunicorn.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(config), "-b", f"127.0.0.1:{port}",
         "-w", "2", "--chdir", str(tmp_path), "mpapp:app"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                if httpx.get(f"{base}/metrics", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)

        async def batch(n: int) -> list[httpx.Response]:
            # A new connection per request, so the kernel spreads them over both workers.
            async with httpx.AsyncClient(base_url=base, timeout=30,
                                         headers={"Connection": "close"}) as client:
                return await asyncio.gather(*(client.get(f"/jobs/{i}") for i in range(n)))

        pids: set[int] = set()
        sent = 0
        for _ in range(30):
            for response in asyncio.run(batch(20)):
                assert response.status_code == 200
                pids.add(response.json()["pid"])
                sent += 1
            if len(pids) == 2 and sent >= 60:
                break
        assert len(pids) == 2, "one worker answered everything"

        for _ in range(4):  # any worker answers the scrape, with the sum of both
            body = httpx.get(f"{base}/metrics", timeout=10).text
            values = [
                s.value for f in text_string_to_metric_families(body) for s in f.samples
                if s.name == "loopwatch_reentry_total"
                and s.labels.get("handler") == "GET /jobs/{n}"
                and s.labels.get("api") == "asyncio.run"
            ]
            assert sum(values) == sent, body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_values_past_the_label_cap_fold_and_count_every_time(registry: CollectorRegistry) -> None:
    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/a", endpoint), Route("/b", endpoint)])
    instrument_starlette(app, registry=registry, handler_metrics=True, metrics_path=None,
                         label_cap=1)

    async def go() -> None:
        for path in ("/a", "/b", "/b", "/b", "/a"):
            assert await asgi_get(app, path) == 200

    run(go())
    assert duration_count(registry, "starlette", "GET /a") == 2
    assert duration_count(registry, "starlette", "__other__") == 3
    assert registry.get_sample_value(
        "loopwatch_label_overflow_total", {"metric": "loopwatch_handler_duration_seconds"}
    ) == 3


def test_an_instrumented_app_mounted_in_an_instrumented_app(registry: CollectorRegistry) -> None:
    """The outer middleware labels the request (it sees the mount prefix); the inner one
    stands aside, so nothing is counted twice."""
    inner = Starlette(routes=[Route("/things/{tid}", asgi_apps.starlette_labels)])
    instrument_starlette(inner, registry=registry, handler_metrics=True, metrics_path=None)
    outer = FastAPI()
    outer.mount("/sub", inner)
    instrument_fastapi(outer, registry=registry, handler_metrics=True, metrics_path=None)

    async def go() -> Any:
        async with in_process(outer) as client:
            return (await client.get("/sub/things/1")).json()

    assert run(go()) == {"framework": "fastapi", "handler": "GET /sub/things/{tid}"}
    assert handler_values(registry) == {"GET /sub/things/{tid}"}
    assert duration_count(registry, "fastapi", "GET /sub/things/{tid}") == 1


def test_a_block_in_a_middleware_ahead_of_the_router_is_counted_under_the_route(
    registry: CollectorRegistry,
) -> None:
    """A blocking authentication check ahead of the router: the block carries the route
    the request asked for, as its duration does; a 404's block stays ``__unmatched__``."""
    app = FastAPI()

    @app.middleware("http")
    async def slow_auth(request: Any, call_next: Any) -> Any:
        time.sleep(0.3)  # a blocking check ahead of the router
        return await call_next(request)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    loopwatch.install(registry=registry, block_threshold=0.1)
    instrument_fastapi(app, registry=registry, handler_metrics=True, metrics_path=None)

    async def go() -> list[int]:
        async with in_process(app) as client:
            return [(await client.get(path)).status_code for path in ("/items/7", "/nowhere")]

    assert run(go()) == [200, 404]
    for handler in ("GET /items/{item_id}", "__unmatched__"):
        blocks = registry.get_sample_value(
            "loopwatch_event_loop_blocks_total", {"framework": "fastapi", "handler": handler}
        )
        assert blocks == 1, handler
        duration = registry.get_sample_value(
            "loopwatch_handler_duration_seconds_count",
            {"framework": "fastapi", "handler": handler, "outcome": "ok"},
        )
        assert duration == 1, handler


def test_a_middleware_that_answers_first_counts_the_route_asked_for(
    registry: CollectorRegistry,
) -> None:
    """A 401 from a middleware never reaches the router: its duration is counted under the
    route the request asked for, not with the 404s."""
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Any, call_next: Any) -> Any:
        if request.headers.get("authorization") != "Bearer ok":
            return PlainTextResponse("no", status_code=401)
        return await call_next(request)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    instrument_fastapi(app, registry=registry, handler_metrics=True, metrics_path=None)

    async def go() -> list[int]:
        async with in_process(app) as client:
            return [
                (await client.get("/items/1")).status_code,
                (await client.get("/items/2", headers={"authorization": "Bearer ok"})).status_code,
                (await client.get("/nowhere")).status_code,
            ]

    assert run(go()) == [401, 200, 401]
    assert duration_count(registry, "fastapi", "GET /items/{item_id}") == 2
    assert duration_count(registry, "fastapi", "__unmatched__") == 1
