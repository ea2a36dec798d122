"""Canaries for what loopwatch reads of Starlette's and FastAPI's internals.

One test per touch in ``loopwatch/_compat/starlette.py``. Each reads the private name
directly, the way the compat function does, on a real app; on the versions the touch was
written for (FastAPI >= 0.165 for the included-router and ``frontend()`` internals) a
missing name fails the test instead of skipping it, so an upgrade that drops it is loud.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import fastapi
import pytest
import starlette
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route

from loopwatch._compat import starlette as compat


def version(module: Any) -> tuple[int, ...]:
    return tuple(int(part) for part in module.__version__.split(".")[:2])


# The FastAPI that keeps included routers behind an include and has frontend().
NEW_FASTAPI = version(fastapi) >= (0, 165)


async def get(app: Any, path: str) -> dict[str, Any]:
    """Send one GET; the scope as the app left it (routers update it in place)."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"app"), (b"accept", b"text/html")],
        "client": ("127.0.0.1", 1), "server": ("app", 80),
    }

    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await asyncio.Event().wait()  # the client stays connected until the response ends
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            scope["status"] = message["status"]

    await app(scope, receive, send)
    return scope


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def included_app() -> FastAPI:
    router = APIRouter(prefix="/v1")

    @router.get("/users/{uid}")
    async def user(uid: str) -> str:
        return uid

    router.add_route("/plain/{x}", ok)
    app = FastAPI()
    app.include_router(router, prefix="/api")
    return app


def test_fastapi_effective_route_context_in_the_scope() -> None:
    """``scope["fastapi"]["effective_route_context"]`` and its ``starlette_route``."""
    app = included_app()
    api = asyncio.run(get(app, "/api/v1/users/1"))
    plain = asyncio.run(get(app, "/api/plain/2"))
    assert api["status"] == plain["status"] == 200
    if not NEW_FASTAPI and "effective_route_context" not in api.get("fastapi", {}):
        # FastAPI 0.100 copies included routes into the app with their full paths.
        assert {getattr(r, "path", None) for r in app.routes} >= {
            "/api/v1/users/{uid}", "/api/plain/{x}"}
        assert compat.effective_route(api) is None
        return
    context = api["fastapi"]["effective_route_context"]
    assert context.starlette_route is None and context.path_format == "/api/v1/users/{uid}"
    assert compat.effective_route(api) is context
    context = plain["fastapi"]["effective_route_context"]
    assert isinstance(context.starlette_route, Route)
    assert context.starlette_route.path_format == "/api/plain/{x}"
    assert compat.effective_route(plain) is context.starlette_route


def test_fastapi_included_router_and_its_effective_routes() -> None:
    """``fastapi.routing._IncludedRouter.effective_route_contexts()``."""
    app = included_app()
    try:
        from fastapi.routing import _IncludedRouter
    except ImportError:
        assert not NEW_FASTAPI, "FastAPI no longer has _IncludedRouter"
        assert all(compat.included_routes(route) is None for route in app.routes)
        return
    [included] = [r for r in app.routes if isinstance(r, _IncludedRouter)]
    contexts = list(included.effective_route_contexts())
    assert {c.original_route.path for c in contexts} == {"/v1/users/{uid}", "/plain/{x}"}
    assert all(hasattr(c, "starlette_route") for c in contexts)
    found = compat.included_routes(included)
    assert found is not None
    assert {r.path_format for r in found} == {"/api/v1/users/{uid}", "/api/plain/{x}"}


def test_fastapi_routes_version_counts_changes_in_included_routers() -> None:
    """``APIRouter._get_routes_version()``."""
    router = APIRouter()
    app = FastAPI()
    app.include_router(router)
    before = compat.routes_version(app.router)
    router.add_route("/late", ok)
    if not hasattr(app.router, "_get_routes_version"):
        assert not NEW_FASTAPI, "FastAPI no longer has APIRouter._get_routes_version"
        return
    version_before = app.router._get_routes_version()
    router.add_route("/later", ok)
    assert app.router._get_routes_version() > version_before
    assert compat.routes_version(app.router) > before


def test_fastapi_frontend_specificity_in_the_scope(tmp_path: Path) -> None:
    """``scope["fastapi"]["frontend_specificity"]`` for a ``frontend()`` request."""
    if not hasattr(APIRouter, "frontend"):
        assert not NEW_FASTAPI, "FastAPI no longer has APIRouter.frontend"
        pytest.skip("this FastAPI has no frontend()")
    (tmp_path / "app.js").write_text("1")
    app = FastAPI()
    app.frontend("/ui", directory=tmp_path)  # type: ignore[attr-defined]
    scope = asyncio.run(get(app, "/ui/app.js"))
    assert scope["status"] == 200
    assert scope["fastapi"]["frontend_specificity"] == len("/ui")
    assert scope["fastapi"]["frontend_path"] == "app.js"
    assert "route" not in scope and "endpoint" not in scope  # why the touch is needed
    assert compat.frontend_path(scope) == "/ui"


def test_starlette_mount_base_app_behind_middleware() -> None:
    """``Mount._base_app``: the app a mount routes to before its ``middleware=``."""

    class PassThrough:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    inner = Route("/items/{iid}", ok)
    mount = Mount("/mr", app=inner, middleware=[Middleware(PassThrough)])
    assert mount._base_app is inner, f"Starlette {starlette.__version__} moved Mount._base_app"
    assert isinstance(mount.app, PassThrough) and mount.routes == []
    assert compat.mount_children(mount) == [inner]
    sub = Starlette(routes=[inner])
    assert compat.mount_children(Mount("/s", app=sub, middleware=[Middleware(PassThrough)])) \
        == [inner]
    assert isinstance(inner, BaseRoute)


def test_neutral_values_when_nothing_is_there() -> None:
    assert compat.effective_route({"fastapi": "not a dict"}) is None
    assert compat.frontend_path({"fastapi": {"frontend_specificity": "3"}}) is None
    # A length that does not end on a segment: never a slice of a raw path.
    assert compat.frontend_path(
        {"fastapi": {"frontend_specificity": 3}, "path": "/uix/a", "root_path": ""}) is None
    assert compat.included_routes(Route("/x", ok)) is None
    assert compat.mount_children(Mount("/raw", app=ok)) == []
    assert compat.routes_version(object()) == 0
