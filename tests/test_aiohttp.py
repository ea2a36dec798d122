"""The aiohttp.web adapter: labels, nested runs in routes, handler metrics, the exposition.

Every test serves a real ``web.AppRunner`` + ``TCPSite`` on 127.0.0.1 and talks to it with
``aiohttp.ClientSession``, on the stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import run_on
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _monitor
from loopwatch._context import current_labels
from loopwatch.adapters.aiohttp import instrument

Factory = Callable[[], asyncio.AbstractEventLoop]


async def _compute(n: int) -> int:
    await asyncio.sleep(0)
    return n * 2


def fetch_sync(n: int) -> int:
    """A sync helper that starts its own loop: the nested run loopwatch answers."""
    return asyncio.run(_compute(n))


async def labels_handler(request: web.Request) -> web.Response:
    return web.json_response(current_labels()._asdict())


async def nested_handler(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    return web.json_response({"double": fetch_sync(n), **current_labels()._asdict()})


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(json.dumps(current_labels()._asdict()))
    await ws.close()
    return ws


async def failing(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


def make_app(static_dir: Path) -> web.Application:
    """An app with plain, dynamic, regex, static, websocket and sub-application routes."""
    api = web.Application()
    api.router.add_get("/items/{name}", labels_handler)
    api.router.add_get("/nested/{n}", nested_handler)
    inner = web.Application()
    inner.router.add_get("/deep/{x}", labels_handler)
    api.add_subapp("/v1/", inner)

    app = web.Application()
    app.router.add_get("/plain", labels_handler)
    app.router.add_get(r"/users/{uid:\d+}", labels_handler)
    app.router.add_post("/users/{uid}/edit", labels_handler)
    app.router.add_route("PURGE", "/cache", labels_handler)
    app.router.add_get("/nested/{n}", nested_handler)
    app.router.add_get("/ws/{room}", ws_handler)
    app.router.add_get("/fail", failing)
    app.router.add_static("/static", static_dir)
    app.add_subapp("/api/", api)
    tenant = web.Application()
    tenant.router.add_get("/home/{page}", labels_handler)
    app.add_domain("tenant.example", tenant)
    return app


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_text("hello")
    return tmp_path


def test_routes_are_labelled_by_template(
    loop_factory: Factory, registry: CollectorRegistry, static_dir: Path
) -> None:
    app = make_app(static_dir)
    instrument(app, registry=registry, handler_metrics=True)

    async def go() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with served(app) as base, aiohttp.ClientSession() as session:
            for path in ("/plain", "/users/42", "/api/items/pen", "/api/v1/deep/7"):
                async with session.get(base + path) as response:
                    seen[path] = (await response.json())["handler"]
            async with session.request("PURGE", base + "/cache") as response:
                seen["PURGE /cache"] = (await response.json())["handler"]
            async with session.post(base + "/users/9/edit") as response:
                seen["POST edit"] = (await response.json())["handler"]
            headers = {"Host": "tenant.example"}
            async with session.get(base + "/home/about", headers=headers) as response:
                seen["domain"] = (await response.json())["handler"]
            async with session.ws_connect(base + "/ws/lobby") as ws:
                seen["ws"] = json.loads(await ws.receive_str())["handler"]
            for path in ("/static/a.txt", "/nowhere", "/users/x", "/static/missing"):
                async with session.get(base + path) as response:
                    seen[path] = response.status
            async with session.delete(base + "/plain") as response:
                seen["DELETE /plain"] = response.status
            async with session.get(base + "/fail") as response:
                seen["/fail"] = response.status
        return seen

    seen = run_on(loop_factory, go())
    assert seen == {
        "/plain": "GET /plain",
        "/users/42": "GET /users/{uid}",
        "/api/items/pen": "GET /api/items/{name}",
        "/api/v1/deep/7": "GET /api/v1/deep/{x}",
        "PURGE /cache": "OTHER /cache",
        "POST edit": "POST /users/{uid}/edit",
        "ws": "WEBSOCKET /ws/{room}",
        "domain": "GET /home/{page}",  # the host is not part of the template
        "/static/a.txt": 200, "/nowhere": 404, "/users/x": 404, "/static/missing": 404,
        "DELETE /plain": 405, "/fail": 500,
    }

    def count(handler: str, outcome: str) -> float | None:
        return registry.get_sample_value(
            "loopwatch_handler_duration_seconds_count",
            {"framework": "aiohttp", "handler": handler, "outcome": outcome},
        )

    assert count("GET /static/{filename}", "ok") == 2  # a 404 of a file is still that route
    assert count("__unmatched__", "ok") == 2
    assert count("DELETE /plain", "ok") == 1  # 405: the method and the resource
    assert count("GET /fail", "error") == 1
    assert count("GET /api/v1/deep/{x}", "ok") == 1
    assert count("WEBSOCKET /ws/{room}", "ok") == 1
    handlers = {
        s.labels["handler"]
        for m in registry.collect() if m.name == "loopwatch_handler_duration_seconds"
        for s in m.samples
    }
    # No concrete value ever became a label.
    assert not any(v in h for h in handlers for v in ("42", "pen", "lobby", "a.txt", "nowhere"))


def test_nested_run_in_a_route_and_a_sub_app_route_is_answered_and_counted(
    loop_factory: Factory, registry: CollectorRegistry, static_dir: Path
) -> None:
    app = make_app(static_dir)
    instrument(app, registry=registry)

    async def go() -> tuple[list[dict[str, Any]], list[loopwatch.Incident]]:
        out = []
        async with served(app) as base, aiohttp.ClientSession() as session:
            for path in ("/nested/3", "/nested/4", "/api/nested/5"):
                async with session.get(base + path) as response:
                    assert response.status == 200, await response.text()
                    out.append(await response.json())
            # Read before the app's cleanup gives loopwatch back (and it uninstalls).
            return out, loopwatch.incidents()

    answers, incidents = run_on(loop_factory, go())
    assert [a["double"] for a in answers] == [6, 8, 10]
    assert [a["handler"] for a in answers] == [
        "GET /nested/{n}", "GET /nested/{n}", "GET /api/nested/{n}"
    ]

    def reentries(handler: str) -> float | None:
        return registry.get_sample_value(
            "loopwatch_reentry_total",
            {"framework": "aiohttp", "handler": handler, "api": "asyncio.run",
             "action": "offloaded"},
        )

    assert reentries("GET /nested/{n}") == 2
    assert reentries("GET /api/nested/{n}") == 1
    # The store keeps one incident per call site, of one of the requests.
    [incident] = [i for i in incidents if i.kind == "reentry"]
    assert incident.framework == "aiohttp"
    assert incident.handler in ("GET /nested/{n}", "GET /api/nested/{n}")


def test_metrics_route_with_token_and_the_monitor_held_until_cleanup(
    loop_factory: Factory, registry: CollectorRegistry, static_dir: Path
) -> None:
    app = make_app(static_dir)
    monitor = instrument(app, registry=registry, metrics_token="s3cret")
    assert instrument(app, registry=registry) is monitor  # a second call adds nothing
    assert sum(1 for r in app.router.routes() if r.resource.canonical == "/metrics") == 2
    assert _monitor.current() is monitor

    async def go() -> tuple[int, int, str]:
        async with served(app) as base, aiohttp.ClientSession() as session:
            async with session.get(base + "/nested/1") as response:
                assert response.status == 200
            async with session.get(base + "/metrics") as response:
                denied = response.status
            headers = {"Authorization": "Bearer s3cret"}
            async with session.get(base + "/metrics", headers=headers) as response:
                return denied, response.status, await response.text()

    denied, ok, body = run_on(loop_factory, go())
    assert (denied, ok) == (401, 200)
    assert 'loopwatch_reentry_total{action="offloaded",api="asyncio.run",framework="aiohttp"' \
        ',handler="GET /nested/{n}"} 1.0' in body
    # instrument() installed loopwatch; the app's cleanup gave it back.
    assert _monitor.current() is None


def test_disabled_leaves_the_app_alone(
    monkeypatch: pytest.MonkeyPatch, static_dir: Path
) -> None:
    monkeypatch.setenv("LOOPWATCH_DISABLE", "1")
    app = make_app(static_dir)
    before = (list(app.middlewares), len(list(app.router.routes())))
    monitor = instrument(app)
    assert not monitor.enabled
    assert (list(app.middlewares), len(list(app.router.routes()))) == before


def test_a_static_directory_at_the_root_is_labelled(
    loop_factory: Factory, registry: CollectorRegistry, static_dir: Path
) -> None:
    """aiohttp keeps the prefix of ``add_static("/", ...)`` as "": still a template."""
    app = web.Application()
    app.router.add_get("/plain", labels_handler)
    app.router.add_static("/", static_dir)
    instrument(app, registry=registry, handler_metrics=True, metrics_path=None)

    async def go() -> list[int]:
        async with served(app) as base, aiohttp.ClientSession() as session:
            statuses = []
            for method, path in (("GET", "/a.txt"), ("GET", "/zz"), ("DELETE", "/a.txt")):
                async with session.request(method, base + path) as response:
                    statuses.append(response.status)
            return statuses

    assert run_on(loop_factory, go()) == [200, 404, 405]

    def count(handler: str) -> float | None:
        return registry.get_sample_value(
            "loopwatch_handler_duration_seconds_count",
            {"framework": "aiohttp", "handler": handler, "outcome": "ok"},
        )

    assert count("GET /{filename}") == 2
    assert count("DELETE /{filename}") == 1


@pytest.mark.parametrize("framework", ["aiohttp", "litestar", "nextcord", "disnake", "pycord"])
def test_the_new_framework_values_are_accepted_labels(framework: str) -> None:
    from loopwatch import handler_context

    with handler_context(framework, "event:on_x") as labels:
        assert tuple(current_labels()) == tuple(labels) == (framework, "event:on_x")


def test_an_app_started_again_holds_loopwatch_again(
    loop_factory: Factory, registry: CollectorRegistry, static_dir: Path
) -> None:
    app = make_app(static_dir)
    instrument(app, registry=registry)

    async def once() -> tuple[bool, str]:
        async with served(app) as base, aiohttp.ClientSession() as session:
            async with session.get(base + "/nested/2") as response:
                answer = await response.json()
            return _monitor.current() is not None, answer["handler"]

    async def twice() -> list[tuple[bool, str]]:
        return [await once(), await once()]

    assert run_on(loop_factory, twice()) == [(True, "GET /nested/{n}")] * 2
    assert _monitor.current() is None
    assert registry.get_sample_value(
        "loopwatch_reentry_total",
        {"framework": "aiohttp", "handler": "GET /nested/{n}", "api": "asyncio.run",
         "action": "offloaded"},
    ) == 2
