"""Route templates for every routing construct of Starlette and FastAPI.

Each case builds a small instrumented app, sends real ASGI requests through it (straight
through the ASGI interface, so websockets need no client) and checks the handler label
twice: inside the endpoint, as an incident would see it, and on the handler-duration
metric. The same tests run on the oldest supported pins (Starlette 0.27, FastAPI 0.100)
and the newest; constructs a version lacks are skipped by feature, never by version.
Concrete path values all contain ``zq`` so a raw path in a label is easy to spot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi import APIRouter, FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from prometheus_client import CollectorRegistry
from starlette import _utils as starlette_utils
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.websockets import WebSocket

from loopwatch._context import current_labels
from loopwatch.adapters.asgi import UNMATCHED
from loopwatch.adapters.fastapi import instrument as instrument_fastapi
from loopwatch.adapters.starlette import instrument as instrument_starlette

# FastAPI >= 0.16x: routes of included routers stay behind the include (mounts and hosts
# included); older FastAPI copies the routes and drops included mounts and hosts.
INCLUDES_MOUNTS = hasattr(APIRouter, "_get_routes_version")
# Starlette >= 0.33 keeps root_path inside path (the ASGI reading); older ones route on a
# path without it.
PATH_HAS_ROOT = hasattr(starlette_utils, "get_route_path")
HAS_FRONTEND = hasattr(APIRouter, "frontend")


# -- the request driver ---------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: str


async def call(
    app: Any, path: str, *, method: str = "GET", kind: str = "http", host: str = "app",
    root_path: str = "", headers: list[tuple[bytes, bytes]] | None = None,
) -> Answer:
    """One request through the ASGI interface; ``root_path`` as a proxy-aware server sets it."""
    full = root_path + path if PATH_HAS_ROOT else path
    scope: dict[str, Any] = {
        "type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1",
        "scheme": "ws" if kind == "websocket" else "http",
        "path": full, "raw_path": (root_path + path).encode(),
        "query_string": b"", "root_path": root_path,
        "headers": [(b"host", host.encode()), *(headers or [])],
        "client": ("127.0.0.1", 1), "server": (host, 80),
    }
    if kind == "http":
        scope["method"] = method
    incoming: list[dict[str, Any]] = (
        [{"type": "websocket.connect"}] if kind == "websocket"
        else [{"type": "http.request", "body": b"", "more_body": False}]
    )
    answer = Answer(0, "")

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        if kind == "websocket":
            return {"type": "websocket.disconnect", "code": 1000}
        await asyncio.Event().wait()  # the client stays connected until the response ends
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"").decode(errors="replace")
        elif message["type"] == "websocket.accept":
            answer.status = 101
        elif message["type"] == "websocket.send":
            answer.body += message.get("text") or ""
        elif message["type"] == "websocket.close" and not answer.status:
            answer.status = 403

    await app(scope, receive, send)
    return answer


def handler() -> str:
    return current_labels().handler


async def echo(request: Any) -> PlainTextResponse:
    return PlainTextResponse(handler())


async def ws_echo(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(handler())
    await ws.close()


class PassThrough:
    """A pure-ASGI middleware, as ``Mount(..., middleware=[...])`` wraps the mount's app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def plain_asgi(scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse(handler())(scope, receive, send)


# -- the cases ------------------------------------------------------------------------------


@dataclass
class Probe:
    path: str
    label: str  # what the endpoint and the metric must both see
    method: str = "GET"
    kind: str = "http"
    host: str = "app"
    status: int = 200
    echoes: bool = True  # the endpoint answers with its label
    root_path: str = ""


Case = Callable[[Path], tuple[Any, list[Probe]]]
CASES: dict[str, Case] = {}


def case(func: Case) -> Case:
    CASES[func.__name__] = func
    return func


def starlette_app(*routes: Any) -> Starlette:
    return Starlette(routes=list(routes))


@case
def starlette_routes(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(
        Route("/items/{item_id:int}", echo),
        Route("/plain", echo, methods=["POST"]),
    )
    return app, [
        Probe("/items/42", "GET /items/{item_id}"),
        Probe("/plain", "POST /plain", method="POST"),
        Probe("/plain", "GET /plain", status=405, echoes=False),  # the route, not a 404
        Probe("/plain", "OTHER /plain", method="PURGE", status=405, echoes=False),
        Probe("/zq-nothing", UNMATCHED, status=404, echoes=False),
    ]


@case
def starlette_websocket_route(tmp: Path) -> tuple[Any, list[Probe]]:
    return starlette_app(WebSocketRoute("/ws/{room}", ws_echo)), [
        Probe("/ws/zqroom", "WEBSOCKET /ws/{room}", kind="websocket", status=101),
    ]


@case
def mount_of_routes(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(Mount("/sub", routes=[
        Route("/things/{tid}", echo),
        WebSocketRoute("/ws/{room}", ws_echo),
    ]))
    return app, [
        Probe("/sub/things/zq1", "GET /sub/things/{tid}"),
        Probe("/sub/ws/zqroom", "WEBSOCKET /sub/ws/{room}", kind="websocket", status=101),
        Probe("/sub/zq-nothing", UNMATCHED, status=404, echoes=False),
    ]


@case
def routing_order(tmp: Path) -> tuple[Any, list[Probe]]:
    """The first route that matches wins; a mount that matches ends routing there (its 404
    shadows a later route); a method no route allows is the 405 of the first route."""
    app = starlette_app(
        Route("/o/{x}", echo, methods=["POST"]),
        Mount("/o/m", routes=[Route("/in", echo)]),
        Route("/o/m/shadowed", echo),
        Route("/o/{x}", echo, methods=["GET"]),
        Route("/o/{x}/{y}", echo),
    )
    return app, [
        Probe("/o/zq1", "GET /o/{x}"),  # the second route of that path: its method
        Probe("/o/zq1", "POST /o/{x}", method="POST"),
        Probe("/o/zq1", "PUT /o/{x}", method="PUT", status=405, echoes=False),
        Probe("/o/m/in", "GET /o/m/in"),
        Probe("/o/m/shadowed", UNMATCHED, status=404, echoes=False),
        Probe("/o/zq1/zq2", "GET /o/{x}/{y}"),
    ]


@case
def mount_of_an_app(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(Mount("/app", app=starlette_app(Route("/things/{tid}", echo))))
    return app, [
        Probe("/app/things/zq1", "GET /app/things/{tid}"),
        Probe("/app/zq-nothing", UNMATCHED, status=404, echoes=False),
    ]


@case
def mount_of_a_plain_asgi_app(tmp: Path) -> tuple[Any, list[Probe]]:
    return starlette_app(Mount("/raw", app=plain_asgi)), [
        Probe("/raw/zqa/zqb", "GET /raw/{path}"),
        Probe("/raw/zqc", "POST /raw/{path}", method="POST"),
    ]


@case
def mount_with_parameters(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(
        Mount("/static-org", routes=[Route("/repos/{rid}", echo)]),
        Mount("/orgs/{org}", routes=[Route("/repos/{rid}", echo)]),
    )
    return app, [
        Probe("/orgs/zqacme/repos/zq1", "GET /orgs/{org}/repos/{rid}"),
        Probe("/orgs/zqother/repos/zq2", "GET /orgs/{org}/repos/{rid}"),
        Probe("/static-org/repos/zq3", "GET /static-org/repos/{rid}"),
    ]


@case
def nested_mounts(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(Mount("/a", routes=[
        Mount("/{b}", routes=[
            Mount("/c", app=starlette_app(Route("/{d}", echo))),
        ]),
    ]))
    return app, [Probe("/a/zqb/c/zqd", "GET /a/{b}/c/{d}")]


@case
def mount_with_middleware(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(
        Mount("/mw", routes=[Route("/x/{xid}", echo)], middleware=[Middleware(PassThrough)]),
        Mount("/mwapp", app=plain_asgi, middleware=[Middleware(PassThrough)]),
    )
    return app, [
        Probe("/mw/x/zq1", "GET /mw/x/{xid}"),
        Probe("/mwapp/zq2", "GET /mwapp/{path}"),
        Probe("/mw/zq-nothing", UNMATCHED, status=404, echoes=False),
    ]


@case
def mount_of_a_single_route(tmp: Path) -> tuple[Any, list[Probe]]:
    """``Mount("/x", app=Route(...))``, bare and behind the mount's middleware."""
    app = starlette_app(
        Mount("/ra", app=Route("/items/{iid}", echo)),
        Mount("/mr", app=Route("/items/{iid}", echo), middleware=[Middleware(PassThrough)]),
    )
    return app, [
        Probe("/ra/items/zq1", "GET /ra/items/{iid}"),
        Probe("/mr/items/zq2", "GET /mr/items/{iid}"),
        Probe("/mr/zq-other", UNMATCHED, status=404, echoes=False),
    ]


@case
def hosts(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(
        Host("{sub}.example.org", app=Router(routes=[Route("/h/{hid}", echo)])),
        Host("api.example.com", app=Router(routes=[
            Mount("/v1", routes=[Route("/u/{uid}", echo)]),
        ])),
        Host("leaf.example.net", app=plain_asgi),
    )
    return app, [
        Probe("/h/zq1", "GET /h/{hid}", host="zqtenant.example.org"),
        Probe("/v1/u/zq2", "GET /v1/u/{uid}", host="api.example.com"),
        Probe("/zq/any", "GET /{path}", host="leaf.example.net"),
        Probe("/zq-nothing", UNMATCHED, host="api.example.com", status=404, echoes=False),
    ]


@case
def one_app_mounted_twice(tmp: Path) -> tuple[Any, list[Probe]]:
    inner = starlette_app(Route("/t/{tid}", echo))
    app = starlette_app(
        Mount("/one", app=inner),
        Mount("/two/{n}", app=inner),
        Route("/a/{x}", echo),
        Route("/b/{y}", echo),  # one endpoint behind several routes
    )
    return app, [
        Probe("/one/t/zq1", "GET /one/t/{tid}"),
        Probe("/two/zq9/t/zq2", "GET /two/{n}/t/{tid}"),
        Probe("/a/zq3", "GET /a/{x}"),
        Probe("/b/zq4", "GET /b/{y}"),
    ]


@case
def a_mount_that_dispatches_by_hand(tmp: Path) -> tuple[Any, list[Probe]]:
    """A tenant segment consumed by a hand-written app: loopwatch cannot see its routes,
    so the deepest mount it can see is the label — never the concrete prefix."""
    inner = starlette_app(Route("/things/{tid}", echo))

    async def dispatcher(scope: Any, receive: Any, send: Any) -> None:
        # In place, as Starlette's own routers update the scope.
        path = scope["path"][len(scope["root_path"]):] if PATH_HAS_ROOT else scope["path"]
        tenant = "/" + path.split("/")[1]
        scope["root_path"] += tenant
        if not PATH_HAS_ROOT:
            scope["path"] = path[len(tenant):]
        await inner(scope, receive, send)

    return starlette_app(Mount("/t", app=dispatcher)), [
        Probe("/t/zqtenant/things/zq1", "GET /t/{path}"),
    ]


@case
def server_root_path(tmp: Path) -> tuple[Any, list[Probe]]:
    app = starlette_app(
        Route("/items/{iid}", echo),
        Mount("/sub", routes=[Route("/things/{tid}", echo)]),
    )
    return app, [
        Probe("/items/zq1", "GET /items/{iid}", root_path="/zqproxy"),
        Probe("/sub/things/zq2", "GET /sub/things/{tid}", root_path="/zqproxy"),
    ]


# -- FastAPI --------------------------------------------------------------------------------


def fastapi_echo(app: Any, path: str, **kwargs: Any) -> None:
    @app.api_route(path, response_class=PlainTextResponse, **kwargs)
    async def endpoint() -> str:
        return handler()


def fastapi_ws(app: Any, path: str) -> None:
    @app.websocket(path)
    async def endpoint(ws: FastAPIWebSocket) -> None:
        await ws_echo(ws)


@case
def fastapi_routes(tmp: Path) -> tuple[Any, list[Probe]]:
    app = FastAPI()
    fastapi_echo(app, "/items/{item_id}", methods=["GET"])
    fastapi_echo(app, "/purge/{pid}", methods=["PURGE"])
    fastapi_ws(app, "/ws/{room}")
    app.add_route("/plain/{x}", echo)
    app.router.add_websocket_route("/pws/{x}", ws_echo)
    return app, [
        Probe("/items/zq1", "GET /items/{item_id}"),
        Probe("/items/zq1", "POST /items/{item_id}", method="POST", status=405, echoes=False),
        Probe("/purge/zq2", "OTHER /purge/{pid}", method="PURGE"),
        Probe("/ws/zqroom", "WEBSOCKET /ws/{room}", kind="websocket", status=101),
        Probe("/plain/zq3", "GET /plain/{x}"),
        Probe("/pws/zq4", "WEBSOCKET /pws/{x}", kind="websocket", status=101),
        Probe("/openapi.json", "GET /openapi.json", echoes=False),
        Probe("/items/zq1/", UNMATCHED, status=307, echoes=False),  # redirect_slashes
        Probe("/zq-nothing", UNMATCHED, status=404, echoes=False),
    ]


def nested_routers() -> APIRouter:
    v1 = APIRouter(prefix="/v1")
    fastapi_echo(v1, "/users/{uid}", methods=["GET"])
    fastapi_ws(v1, "/ws/{room}")
    # Starlette's own registrations take no router prefix: "/plain/{x}" in the router.
    v1.add_route("/plain/{x}", echo)
    v1.add_websocket_route("/pws/{x}", ws_echo)
    api = APIRouter()
    api.include_router(v1)
    return api


@case
def included_and_nested_routers(tmp: Path) -> tuple[Any, list[Probe]]:
    app = FastAPI()
    app.include_router(nested_routers(), prefix="/api")
    return app, [
        Probe("/api/v1/users/zq1", "GET /api/v1/users/{uid}"),
        Probe("/api/v1/ws/zqroom", "WEBSOCKET /api/v1/ws/{room}", kind="websocket", status=101),
        Probe("/api/plain/zq2", "GET /api/plain/{x}"),
        Probe("/api/pws/zq3", "WEBSOCKET /api/pws/{x}", kind="websocket", status=101),
        Probe("/api/v1/zq-nothing", UNMATCHED, status=404, echoes=False),
    ]


@case
def mounts_and_hosts_in_an_included_router(tmp: Path) -> tuple[Any, list[Probe]]:
    router = APIRouter()
    router.mount("/m", starlette_app(Route("/r/{rid}", echo)))
    router.mount("/mr", Router(routes=[Mount("/deep/{d}", routes=[Route("/r/{rid}", echo)])]))
    router.host("zq.example.org", starlette_app(Route("/h/{hid}", echo)))
    app = FastAPI()
    app.include_router(router, prefix="/api")
    if not INCLUDES_MOUNTS:  # FastAPI copies included routes, and leaves these out: 404
        return app, [Probe("/api/m/r/zq1", UNMATCHED, status=404, echoes=False)]
    return app, [
        Probe("/api/m/r/zq1", "GET /api/m/r/{rid}"),
        Probe("/api/mr/deep/zqd/r/zq2", "GET /api/mr/deep/{d}/r/{rid}"),
        Probe("/api/h/zq3", "GET /api/h/{hid}", host="zq.example.org"),
        Probe("/api/m/zq-nothing", UNMATCHED, status=404, echoes=False),
    ]


@case
def fastapi_and_starlette_mounted_in_each_other(tmp: Path) -> tuple[Any, list[Probe]]:
    sub = FastAPI()
    fastapi_echo(sub, "/items/{iid}", methods=["GET"])
    sub.include_router(nested_routers(), prefix="/api")
    sub.mount("/st", starlette_app(Route("/things/{tid}", echo)))
    app = starlette_app(Mount("/fa/{tenant}", app=sub), Mount("/fa2", app=sub))
    return app, [
        Probe("/fa/zqt/items/zq1", "GET /fa/{tenant}/items/{iid}"),
        Probe("/fa/zqt/api/v1/users/zq2", "GET /fa/{tenant}/api/v1/users/{uid}"),
        Probe("/fa/zqt/api/plain/zq3", "GET /fa/{tenant}/api/plain/{x}"),
        Probe("/fa2/api/plain/zq4", "GET /fa2/api/plain/{x}"),
        Probe("/fa/zqt/st/things/zq5", "GET /fa/{tenant}/st/things/{tid}"),
        Probe("/fa/zqt/api/v1/ws/zqroom", "WEBSOCKET /fa/{tenant}/api/v1/ws/{room}",
              kind="websocket", status=101),
    ]


@case
def fastapi_mounted_in_fastapi(tmp: Path) -> tuple[Any, list[Probe]]:
    sub = FastAPI()
    sub.include_router(nested_routers(), prefix="/api")
    app = FastAPI()
    app.mount("/v2", sub)
    app.include_router(nested_routers(), prefix="/api")
    return app, [
        Probe("/v2/api/v1/users/zq1", "GET /v2/api/v1/users/{uid}"),
        Probe("/v2/api/plain/zq2", "GET /v2/api/plain/{x}"),
        Probe("/api/v1/users/zq3", "GET /api/v1/users/{uid}", root_path="/zqproxy"),
        Probe("/v2/api/v1/users/zq4", "GET /v2/api/v1/users/{uid}", root_path="/zqproxy"),
    ]


def frontend_build(tmp: Path) -> Path:
    build = tmp / "dist"
    (build / "assets").mkdir(parents=True, exist_ok=True)
    (build / "index.html").write_text("<html>zq</html>")
    (build / "assets" / "zqapp.js").write_text("console.log('zq')")
    return build


HTML = [(b"accept", b"text/html")]


@case
def frontends(tmp: Path) -> tuple[Any, list[Probe]]:
    if not HAS_FRONTEND:
        pytest.skip("this FastAPI has no frontend()")
    build = frontend_build(tmp)
    app = FastAPI()
    fastapi_echo(app, "/api/{x}", methods=["GET"])
    app.frontend("/", directory=build)  # type: ignore[attr-defined]
    app.frontend("/ui", directory=build)  # type: ignore[attr-defined]
    router = APIRouter(prefix="/r")
    router.frontend("/site", directory=build)  # type: ignore[attr-defined]
    fastapi_echo(router, "/after/{y}", methods=["GET"])  # registered after the front-end
    app.include_router(router, prefix="/inc")
    return app, [
        Probe("/", "GET /{path}", echoes=False),
        Probe("/assets/zqapp.js", "GET /{path}", echoes=False),
        Probe("/zq/client/route", "GET /{path}", echoes=False),  # index.html fallback
        Probe("/ui/assets/zqapp.js", "GET /ui/{path}", echoes=False),
        Probe("/ui", "GET /ui/{path}", status=307, echoes=False),  # to /ui/
        Probe("/inc/r/site/assets/zqapp.js", "GET /inc/r/site/{path}", echoes=False),
        Probe("/inc/r/site/assets/zqapp.js", "POST /inc/r/site/{path}", method="POST", status=405,
              echoes=False),
        Probe("/inc/r/after/zq1", "GET /inc/r/after/{y}"),
        Probe("/api/zq2", "GET /api/{x}"),
    ]


@case
def frontend_behind_a_mount(tmp: Path) -> tuple[Any, list[Probe]]:
    if not HAS_FRONTEND:
        pytest.skip("this FastAPI has no frontend()")
    sub = FastAPI()
    router = APIRouter()
    router.frontend("/", directory=frontend_build(tmp))  # type: ignore[attr-defined]
    sub.include_router(router)
    app = starlette_app(Mount("/shop/{tenant}", app=sub))
    return app, [
        Probe("/shop/zqt/assets/zqapp.js", "GET /shop/{tenant}/{path}", echoes=False),
        Probe("/shop/zqt/zq/deep/link", "GET /shop/{tenant}/{path}", echoes=False),
    ]


# -- the tests ------------------------------------------------------------------------------


def is_template(label: str) -> bool:
    """A label loopwatch may produce: a sentinel, or a method and a non-empty template."""
    if label.startswith("__") and label.endswith("__"):
        return True
    method, _, template = label.partition(" ")
    return (
        method.isupper() and template.startswith("/") and not label.endswith(" ")
        and "zq" not in label  # no concrete value of any test request
    )


def instrument(app: Any, registry: CollectorRegistry) -> Any:
    if isinstance(app, FastAPI):
        instrument_fastapi(app, registry=registry, handler_metrics=True, metrics_path=None)
    else:
        instrument_starlette(app, registry=registry, handler_metrics=True, metrics_path=None)
    return app


def duration_counts(registry: CollectorRegistry) -> dict[str, float]:
    """Requests timed per handler value, whatever their outcome."""
    counts: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "loopwatch_handler_duration_seconds_count":
                handler = sample.labels["handler"]
                counts[handler] = counts.get(handler, 0) + sample.value
    return counts


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_construct_gets_its_template(
    name: str, registry: CollectorRegistry, tmp_path: Path
) -> None:
    app, probes = CASES[name](tmp_path)
    instrument(app, registry)
    expected: dict[str, float] = {}

    async def go() -> None:
        for probe in probes:
            answer = await call(
                app, probe.path, method=probe.method, kind=probe.kind, host=probe.host,
                root_path=probe.root_path, headers=HTML,
            )
            where = f"{probe.method} {probe.path}"
            assert answer.status == probe.status, (where, answer)
            if probe.echoes:
                assert answer.body == probe.label, where
            expected[probe.label] = expected.get(probe.label, 0) + 1
            assert duration_counts(registry) == expected, where

    asyncio.run(go())
    assert all(is_template(label) for label in duration_counts(registry))


def test_the_label_check_rejects_raw_and_empty_values() -> None:
    """The helper the tests lean on: it would catch the failures it is there for."""
    assert is_template("GET /items/{item_id}") and is_template(UNMATCHED)
    assert not is_template("GET ") and not is_template("POST ")
    assert not is_template("GET /t/zqtenant/things/{tid}")
    assert not is_template("GET")


def test_routes_added_after_the_first_request_are_found(registry: CollectorRegistry) -> None:
    """The route tree is rebuilt when the app's routes change, not only at the first use."""

    async def other(request: Any) -> PlainTextResponse:  # an endpoint the tree has not seen
        return PlainTextResponse(handler())

    app = instrument(starlette_app(Route("/a/{x}", echo)), registry)
    router = FastAPI()
    late = APIRouter()
    fast = instrument(router, CollectorRegistry())

    async def go() -> list[str]:
        first = (await call(app, "/a/zq1")).body
        app.router.routes.append(Mount("/late/{x}", routes=[Route("/r/{y}", other)]))
        second = (await call(app, "/late/zq2/r/zq3")).body
        fastapi_echo(late, "/l/{z}", methods=["GET"])
        assert (await call(fast, "/zq-before")).status == 404
        fast.include_router(late, prefix="/inc")
        third = (await call(fast, "/inc/l/zq4")).body
        return [first, second, third]

    assert asyncio.run(go()) == ["GET /a/{x}", "GET /late/{x}/r/{y}", "GET /inc/l/{z}"]


class LabelsAhead:
    """A middleware between loopwatch's and the router: reads the labels before routing,
    as a block in an authentication middleware would."""

    seen: ClassVar[list[str]] = []

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            LabelsAhead.seen.append(handler())
        await self.app(scope, receive, send)


@pytest.mark.parametrize("name", sorted(CASES))
def test_work_ahead_of_the_router_gets_the_routes_template(
    name: str, registry: CollectorRegistry, tmp_path: Path
) -> None:
    """Labels read in a middleware ahead of the router name the route the router then
    picks: the same template the endpoint sees (``__unmatched__`` where routing finds none,
    or a 405's method and route)."""
    app, probes = CASES[name](tmp_path)
    instrument(app, registry)
    app.user_middleware.append(Middleware(LabelsAhead))  # innermost: just ahead of routing
    LabelsAhead.seen = []

    async def go() -> None:
        for probe in probes:
            await call(
                app, probe.path, method=probe.method, kind=probe.kind, host=probe.host,
                root_path=probe.root_path, headers=HTML,
            )

    asyncio.run(go())
    # FastAPI's front-ends are routed last, by rules of their own that loopwatch does not
    # replay: ahead of routing, a request a front-end serves is not matched yet.
    frontend = name in ("frontends", "frontend_behind_a_mount")
    assert LabelsAhead.seen == [
        UNMATCHED if frontend and not probe.echoes else probe.label for probe in probes
    ]
