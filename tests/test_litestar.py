"""The Litestar plugin: route templates as written, nested runs in routes, metrics.

The app runs under a real uvicorn server on 127.0.0.1 (stdlib loop and uvloop).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets.sync.client
from helpers import LOOP_KINDS, serve_uvicorn
from litestar import Controller, Litestar, Request, Router, WebSocket, get, post, websocket
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send
from prometheus_client import CollectorRegistry

from loopwatch import _monitor
from loopwatch._context import current_labels
from loopwatch.adapters.litestar import LoopwatchPlugin


async def _double(n: int) -> int:
    await asyncio.sleep(0)
    return 2 * n


def nested(n: int) -> int:
    """A sync helper that starts its own loop: the nested run loopwatch answers."""
    return asyncio.run(_double(n))


def labels() -> dict[str, str]:
    return current_labels()._asdict()


@get("/orders/{order_id:int}")
async def order(request: Request[Any, Any, Any]) -> dict[str, Any]:
    # Path values through the request: the handler declares no parameter, so the same
    # code runs on every Litestar 2.x (2.25 deprecates the inferred style).
    return {"double": nested(request.path_params["order_id"]), **labels()}


@post("/orders/{order_id:int}")
async def edit_order() -> dict[str, Any]:
    return labels()


@get(["/plain", "/tags/{tag:str}"])
async def tagged() -> dict[str, Any]:
    return labels()


@get("/sync/{n:int}", sync_to_thread=True)
def sync_order(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"double": nested(request.path_params["n"]), **labels()}


class Users(Controller):
    path = "/users"

    @get("/{uid:uuid}")
    async def user(self) -> dict[str, Any]:
        return {"double": nested(1), **labels()}


@websocket("/ws/{room:str}")
async def room(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    await socket.send_json(labels())
    await socket.close()


@asgi("/static", is_mount=True, copy_scope=True)
async def static(scope: Scope, receive: Receive, send: Send) -> None:
    body = current_labels().handler.encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def make_app(plugin: LoopwatchPlugin) -> Litestar:
    api = Router(path="/api/{version:int}", route_handlers=[order, Users])
    return Litestar(
        route_handlers=[order, edit_order, tagged, sync_order, room, static, api],
        plugins=[plugin], openapi_config=None,
    )


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_routes_are_labelled_by_their_written_template_and_nested_runs_counted(
    loop: str, registry: CollectorRegistry
) -> None:
    plugin = LoopwatchPlugin(registry=registry, handler_metrics=True, metrics_token="tok")
    app = make_app(plugin)
    got: dict[str, Any] = {}
    with serve_uvicorn(app, loop, ws="websockets-sansio") as base:
        with httpx.Client(base_url=base, timeout=10) as client:
            for path in ("/orders/21", "/api/2/orders/4", "/plain", "/tags/blue",
                         "/sync/5", "/api/1/users/3fa85f64-5717-4562-b3fc-2c963f66afa6"):
                response = client.get(path)
                assert response.status_code == 200, response.text
                got[path] = response.json()
            got["POST"] = client.post("/orders/3").json()
            got["static"] = client.get("/static/css/site.css").text
            got["404"] = client.get("/nowhere").status_code
            got["401"] = client.get("/metrics").status_code
            body = client.get("/metrics", headers={"Authorization": "Bearer tok"}).text
        with websockets.sync.client.connect(base.replace("http", "ws") + "/ws/lobby") as ws:
            got["ws"] = json.loads(ws.recv())
    handlers = {k: v["handler"] for k, v in got.items() if isinstance(v, dict)}
    assert handlers == {
        "/orders/21": "GET /orders/{order_id:int}",
        "/api/2/orders/4": "GET /api/{version:int}/orders/{order_id:int}",
        "/plain": "GET /plain",
        "/tags/blue": "GET /tags/{tag:str}",
        "/sync/5": "GET /sync/{n:int}",
        "/api/1/users/3fa85f64-5717-4562-b3fc-2c963f66afa6":
            "GET /api/{version:int}/users/{uid:uuid}",
        "POST": "POST /orders/{order_id:int}",
        "ws": "WEBSOCKET /ws/{room:str}",
    }
    assert {v["framework"] for v in got.values() if isinstance(v, dict)} == {"litestar"}
    assert got["static"] == "GET /static/{path}"
    assert (got["404"], got["401"]) == (404, 401)
    assert got["/orders/21"]["double"] == 42 and got["/sync/5"]["double"] == 10

    def reentries(handler: str, api: str = "asyncio.run") -> float:
        return registry.get_sample_value(
            "loopwatch_reentry_total",
            {"framework": "litestar", "handler": handler, "api": api, "action": "offloaded"},
        ) or 0.0

    assert reentries("GET /orders/{order_id:int}") == 1
    assert reentries("GET /api/{version:int}/orders/{order_id:int}") == 1
    assert reentries("GET /api/{version:int}/users/{uid:uuid}") == 1
    assert 'handler="GET /orders/{order_id:int}"' in body
    assert registry.get_sample_value(
        "loopwatch_handler_duration_seconds_count",
        {"framework": "litestar", "handler": "GET /tags/{tag:str}", "outcome": "ok"},
    ) == 1  # /plain, the same handler, is a template of its own
    # The plugin installed loopwatch with the app and gave it back at shutdown.
    assert _monitor.current() is None


def test_disabled_leaves_the_app_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPWATCH_DISABLE", "1")
    plain = Litestar(route_handlers=[order], openapi_config=None)
    app = Litestar(route_handlers=[order], plugins=[LoopwatchPlugin()], openapi_config=None)
    assert len(app.middleware) == len(plain.middleware)
    assert [r.path for r in app.routes] == [r.path for r in plain.routes]
