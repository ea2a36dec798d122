"""The apps the ASGI adapter tests serve: FastAPI and Starlette, with hazards on purpose.

Every endpoint answers with the labels loopwatch sees while it runs, so a test can check
the attribution inside the endpoint itself, not only in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, BackgroundTasks, FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket

from loopwatch._context import current_labels
from loopwatch.adapters import fastapi as lw_fastapi
from loopwatch.adapters import starlette as lw_starlette

# What lifespan did, for the test that checks it still runs (one app per test).
LIFESPAN_EVENTS: list[str] = []


async def double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


def fetch_sync(value: int) -> int:
    """A sync helper as SDKs have: it drives an event loop of its own."""
    return asyncio.run(double(value))  # the re-entry site the tests look for


def helper_line() -> int:
    """The line of the ``asyncio.run`` call in :func:`fetch_sync`."""
    with open(__file__, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            if "the re-entry site the tests look for" in line and "asyncio.run" in line:
                return number
    raise LookupError("fetch_sync's asyncio.run line is gone")


def labels() -> dict[str, str]:
    """The labels loopwatch attributes the running work to."""
    return dict(current_labels()._asdict())


@contextlib.asynccontextmanager
async def fastapi_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Libraries that keep a module-level loop capture it at startup like this.
    app.state.loop = asyncio.get_running_loop()
    LIFESPAN_EVENTS.append("startup")
    yield
    LIFESPAN_EVENTS.append("shutdown")


def make_fastapi_app(
    registry: CollectorRegistry, *, handler_metrics: bool = True, **options: Any
) -> FastAPI:
    """A FastAPI app with nested routers, mounts, a websocket and the hazards."""
    app = FastAPI(lifespan=fastapi_lifespan)
    app.state.background = []

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        return {"item_id": item_id, "double": fetch_sync(item_id), "labels": labels()}

    @app.get("/sync/{key}")
    def sync_route(key: int, request: Request) -> dict[str, Any]:
        loop: asyncio.AbstractEventLoop = request.app.state.loop
        value = loop.run_until_complete(double(key))  # from the threadpool: marshalled
        return {"double": value, "labels": labels()}

    @app.get("/labels")
    async def async_labels() -> dict[str, str]:
        return labels()

    @app.get("/labels-sync")
    def sync_labels() -> dict[str, str]:
        return labels()

    @app.get("/labels-background")
    async def background_labels(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(lambda: app.state.background.append(("sync", labels())))

        async def later() -> None:
            await asyncio.sleep(0)
            app.state.background.append(("async", labels()))

        tasks.add_task(later)
        return labels()

    @app.get("/background")
    async def background_seen() -> list[Any]:
        return list(app.state.background)

    @app.api_route("/purge", methods=["PURGE"])
    async def purge() -> dict[str, str]:
        return labels()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom on purpose")

    @app.get("/block")
    async def block() -> dict[str, str]:
        time.sleep(0.25)  # a blocked loop, on purpose
        return labels()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(200):
                yield b"x" * 1024
                await asyncio.sleep(0.02)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/pid")
    async def pid() -> dict[str, Any]:
        import os

        return {"pid": os.getpid(), "double": fetch_sync(1)}

    @app.websocket("/ws/{room}")
    async def websocket(ws: WebSocket, room: str) -> None:
        await ws.accept()
        await ws.send_json({"room": room, "labels": labels()})
        await ws.close()

    v1 = APIRouter(prefix="/v1")

    @v1.get("/users/{uid}")
    async def user(uid: int) -> dict[str, Any]:
        return {"uid": uid, "labels": labels()}

    @v1.get("/users/{uid}/sync")
    def user_sync(uid: int) -> dict[str, Any]:
        return {"uid": uid, "labels": labels()}

    api = APIRouter(prefix="/api")
    api.include_router(v1)
    app.include_router(api)

    app.mount("/sub", make_sub_app())
    app.mount("/orgs/{org}", Starlette(routes=[Route("/repos/{rid}", starlette_labels)]))
    lw_fastapi.instrument(app, registry=registry, handler_metrics=handler_metrics, **options)
    return app


async def starlette_labels(request: Any) -> JSONResponse:
    return JSONResponse(labels())


def starlette_labels_sync(request: Any) -> JSONResponse:
    return JSONResponse(labels())


async def starlette_item(request: Any) -> JSONResponse:
    item_id = request.path_params["item_id"]
    return JSONResponse({"double": fetch_sync(item_id), "labels": labels()})


async def starlette_websocket(ws: StarletteWebSocket) -> None:
    await ws.accept()
    await ws.send_json({"labels": labels()})
    await ws.close()


async def starlette_background(request: Any) -> JSONResponse:
    seen = request.app.state.background
    return JSONResponse(labels(), background=BackgroundTask(lambda: seen.append(labels())))


async def plain_asgi(scope: Any, receive: Any, send: Any) -> None:
    """A mounted ASGI app without routes of its own (a leaf mount)."""
    response = JSONResponse(labels())
    await response(scope, receive, send)


def make_sub_app() -> Starlette:
    return Starlette(routes=[
        Route("/things/{tid}", starlette_labels),
        WebSocketRoute("/ws", starlette_websocket),
    ])


@contextlib.asynccontextmanager
async def starlette_lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.loop = asyncio.get_running_loop()
    LIFESPAN_EVENTS.append("startup")
    yield
    LIFESPAN_EVENTS.append("shutdown")


def make_starlette_app(
    registry: CollectorRegistry, *, handler_metrics: bool = True, **options: Any
) -> Starlette:
    """A Starlette app with a router mount, a leaf mount, a websocket and the hazards."""
    app = Starlette(
        lifespan=starlette_lifespan,
        routes=[
            Route("/items/{item_id:int}", starlette_item),
            Route("/labels", starlette_labels),
            Route("/labels-sync", starlette_labels_sync),
            Route("/labels-background", starlette_background),
            WebSocketRoute("/ws/{room}", starlette_websocket),
            Mount("/sub", routes=[
                Route("/things/{tid}", starlette_labels),
                Mount("/deeper", routes=[Route("/{leaf}", starlette_labels)]),
            ]),
            Mount("/raw", app=plain_asgi),
            Mount("/app", app=make_sub_app()),
        ],
    )
    app.state.background = []
    lw_starlette.instrument(app, registry=registry, handler_metrics=handler_metrics, **options)
    return app


@contextlib.contextmanager
def lifespan_events() -> Iterator[list[str]]:
    LIFESPAN_EVENTS.clear()
    try:
        yield LIFESPAN_EVENTS
    finally:
        LIFESPAN_EVENTS.clear()
