"""Reliability under hostile input and process forks: nothing crashes, nothing leaks.

The core's faults, churn and configuration fuzzing are in ``test_core_faults``,
``test_core_lifecycle`` and ``test_reliability_core``; 5,000 random GET paths and the
metrics token in ``test_asgi``. This file adds:

* arbitrary ASGI scopes through ``LoopwatchMiddleware``: it never raises an error of its
  own, and what the app raises or sends reaches the server unchanged;
* 10,000 distinct paths *and* methods: handler values stay within the route templates;
* header, path and query values with newlines and quotes against a real server with JSON
  logs: every stderr line is one JSON object, nothing is injected;
* secrets planted in a local variable, a header, a cookie, a query string and a body of
  requests that hit H1 and H3 never reach a log line, an incident or the metrics;
* ``loopwatch demo`` listens on loopback only;
* a process forked after ``install()`` (gunicorn ``--preload``) has a working guard.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import secrets
import signal
import socket
import string
import subprocess
import sys
import textwrap
import time
import types
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from helpers import LOOP_KINDS, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from test_asgi import serve

import loopwatch
from loopwatch import cli
from loopwatch._logging import JsonFormatter, TextFormatter
from loopwatch.adapters.asgi import STANDARD_METHODS, UNMATCHED, LoopwatchMiddleware
from loopwatch.adapters.fastapi import instrument as instrument_fastapi
from loopwatch.demo import plan as _demo

PY = sys.executable
Message = dict[str, Any]


def handler_values(registry: CollectorRegistry) -> set[str]:
    """Every ``handler`` label value on any sample (``__none__``, work outside a request
    that the watchdog may see on a busy machine, left out)."""
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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- arbitrary ASGI scopes -----------------------------------------------------------------


class Boom(Exception):
    """What the app raises on purpose."""


async def _ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _boom(request: Any) -> PlainTextResponse:
    raise Boom("raised by the app")


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close()


def small_starlette_app() -> Starlette:
    inner = Starlette(routes=[Route("/{name}", _ok)])
    return Starlette(routes=[
        Route("/items/{item_id}", _ok, methods=["GET", "POST"]),
        Route("/boom", _boom),
        WebSocketRoute("/ws", _ws),
        Mount("/sub", app=inner),
    ])


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.binary(max_size=8), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2), st.builds(object),
)
PATHS = st.one_of(
    st.sampled_from(["/items/1", "/items/", "/boom", "/ws", "/sub/x", "/sub", "/", ""]),
    st.text(max_size=30).map(lambda text: "/" + text),
)
ADDRESS = st.one_of(st.none(), st.tuples(st.just("127.0.0.1"), st.integers(0, 65535)))
# What a server puts in a scope (usually there, values mostly sane) ...
SERVER_FIELDS = {
    "method": st.one_of(st.sampled_from(sorted(STANDARD_METHODS)), st.text(max_size=10), JUNK),
    "path": st.one_of(PATHS, JUNK),
    "raw_path": st.one_of(st.binary(max_size=30), JUNK),
    "root_path": st.one_of(st.sampled_from(["", "/api", "/sub"]), st.text(max_size=10), JUNK),
    "query_string": st.one_of(st.binary(max_size=30), JUNK),
    "headers": st.one_of(
        st.lists(st.tuples(st.binary(max_size=16), st.binary(max_size=32)), max_size=5), JUNK
    ),
    "scheme": st.one_of(st.sampled_from(["http", "https", "ws", "wss"]), JUNK),
    "http_version": st.sampled_from(["1.0", "1.1", "2"]),
    "client": st.one_of(ADDRESS, JUNK),
    "server": st.one_of(ADDRESS, JUNK),
}
# Routes of another app, and look-alikes of FastAPI's route context.
FOREIGN_ROUTES = (Route("/x/{y}", _ok), Mount("/m", routes=[Route("/z", _ok)]), Mount("/raw", _ok))
CONTEXTS = st.builds(types.SimpleNamespace, original_route=st.one_of(JUNK, st.sampled_from(
    FOREIGN_ROUTES)), starlette_route=st.one_of(JUNK, st.sampled_from(FOREIGN_ROUTES)))
# ... and what routers and other middleware leave there (now and then, any value).
ROUTER_FIELDS = {
    "route": st.one_of(JUNK, st.sampled_from(FOREIGN_ROUTES)),
    "endpoint": st.one_of(JUNK, st.just(_ok)),
    "router": JUNK,
    "app": JUNK,
    "fastapi": st.one_of(
        JUNK, st.fixed_dictionaries({"effective_route_context": st.one_of(JUNK, CONTEXTS)})
    ),
    "path_params": st.one_of(st.dictionaries(st.text(max_size=4), st.text(max_size=4)), JUNK),
    "state": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    "subprotocols": st.lists(st.text(max_size=5), max_size=2),
}


@st.composite
def scopes(draw: st.DrawFn) -> dict[str, Any]:
    # Mostly http, the type the middleware does most with; the others now and then.
    roll = draw(st.integers(0, 9))
    kind = (draw(st.text(max_size=8)) if roll == 0 else "lifespan" if roll == 1
            else "websocket" if roll < 4 else "http")
    scope: dict[str, Any] = {"type": kind, "asgi": {"version": "3.0"}}
    for key, strategy in SERVER_FIELDS.items():
        if draw(st.integers(0, 9)) > 0:
            scope[key] = draw(strategy)
    for key, strategy in ROUTER_FIELDS.items():
        if draw(st.integers(0, 2)) == 0:
            scope[key] = draw(strategy)
    return scope


def receiver(kind: str, body: bytes) -> Callable[[], Awaitable[Message]]:
    """What a server would hand the app for a scope of ``kind``, then a disconnect."""
    incoming: list[Message] = {
        "http": [{"type": "http.request", "body": body, "more_body": False}],
        "websocket": [{"type": "websocket.connect"}],
        "lifespan": [{"type": "lifespan.startup"}],
    }.get(kind, [])
    last: Message = {
        "http": {"type": "http.disconnect"},
        "websocket": {"type": "websocket.disconnect", "code": 1000},
    }.get(kind, {"type": "lifespan.shutdown"})

    async def receive() -> Message:
        return incoming.pop(0) if incoming else dict(last)

    return receive


def test_arbitrary_scopes_meet_no_error_of_the_middleware(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    app = small_starlette_app()
    loop = asyncio.new_event_loop()

    @settings(max_examples=500, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(scope=scopes(), body=st.binary(max_size=64), handler_metrics=st.booleans())
    def check(scope: dict[str, Any], body: bytes, handler_metrics: bool) -> None:
        calls = 0
        raised: list[BaseException] = []
        from_app: list[Message] = []
        delivered: list[Message] = []

        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1

            async def spy(message: Message) -> None:
                from_app.append(message)
                await send(message)

            try:
                await app(scope, receive, spy)
            except BaseException as exc:  # recorded, then on its way as before
                raised.append(exc)
                raise

        async def send(message: Message) -> None:
            delivered.append(message)

        middleware = LoopwatchMiddleware(recorded, registry=registry,
                                         handler_metrics=handler_metrics)
        outcome: BaseException | None = None
        try:
            loop.run_until_complete(
                asyncio.wait_for(middleware(scope, receiver(scope["type"], body), send), 10)
            )
        except BaseException as exc:  # whatever reached the "server"
            outcome = exc
        assert calls == 1, "the app was not called exactly once"
        if raised:
            assert outcome is raised[0], f"{outcome!r} instead of the app's {raised[0]!r}"
        else:
            assert outcome is None, f"the middleware raised {outcome!r} of its own"
        assert len(delivered) == len(from_app)
        assert all(a is b for a, b in zip(delivered, from_app, strict=True))

    try:
        check()
    finally:
        loop.close()


def test_the_app_exception_and_response_pass_through_unchanged(
    registry: CollectorRegistry,
) -> None:
    # The fixed point of the property above, so a regression names itself.
    loopwatch.install(registry=registry)
    app = small_starlette_app()
    sent: list[Message] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/boom", "raw_path": b"/boom",
             "root_path": "", "query_string": b"", "headers": [], "client": None,
             "server": None}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = LoopwatchMiddleware(app, registry=registry, handler_metrics=True)
    with pytest.raises(Boom, match="raised by the app"):
        asyncio.run(middleware(scope, receiver("http", b""), send))
    assert sent[0]["status"] == 500
    assert registry.get_sample_value(
        "loopwatch_handler_duration_seconds_count",
        {"framework": "starlette", "handler": "GET /boom", "outcome": "error"},
    ) == 1


# -- 10,000 distinct paths and methods -----------------------------------------------------

TEMPLATES = ("/items/{item_id}", "/api/users/{uid}", "/reports/{rid}", "/sub/things/{tid}")
TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
SEGMENT_CHARS = string.ascii_lowercase + string.digits + "-._~%"


async def _lookup(value: str) -> int:
    await asyncio.sleep(0)
    return len(value)


def _sdk_lookup(value: str) -> int:
    return asyncio.run(_lookup(value))  # re-enters the running loop


def routed_app(registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()
    api = APIRouter(prefix="/api")

    @app.get("/items/{item_id}")
    async def get_item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    @app.post("/items/{item_id}")
    async def post_item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    @app.get("/reports/{rid}")
    async def report(rid: str) -> dict[str, int]:
        return {"rows": _sdk_lookup(rid)}

    @api.get("/users/{uid}")
    async def user(uid: str) -> dict[str, str]:
        return {"user": uid}

    app.include_router(api)
    app.mount("/sub", Starlette(routes=[Route("/things/{tid}", _ok)]))
    instrument_fastapi(app, registry=registry, handler_metrics=True, metrics_path=None)
    return app


def random_requests(count: int, seed: int) -> set[tuple[str, str]]:
    rng = random.Random(seed)

    def segment() -> str:
        return "".join(rng.choices(SEGMENT_CHARS, k=rng.randint(1, 10)))

    def method() -> str:
        if rng.random() < 0.5:
            return rng.choice(sorted(STANDARD_METHODS))
        return "".join(rng.choices(TOKEN_CHARS, k=rng.randint(1, 12)))

    def path() -> str:
        roll = rng.random()
        for limit, prefix in ((0.15, "/items/"), (0.25, "/api/users/"), (0.30, "/reports/"),
                              (0.40, "/sub/things/"), (0.45, "/sub/")):
            if roll < limit:
                return prefix + segment()
        return "/" + "/".join(segment() for _ in range(rng.randint(1, 4)))

    found: set[tuple[str, str]] = set()
    while len(found) < count:
        found.add((method(), path()))
    return found


async def asgi_call(app: Any, method: str, path: str) -> int:
    status = 0
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"app")], "client": ("127.0.0.1", 1),
        "server": ("app", 80),
    }

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receiver("http", b""), send)
    return status


def test_ten_thousand_paths_and_methods_stay_within_the_templates(
    registry: CollectorRegistry,
) -> None:
    app = routed_app(registry)
    requests = random_requests(10_000, seed=8)
    assert len(requests) == 10_000
    assert len({path for _, path in requests}) > 9_000

    async def go() -> list[int]:
        return [await asgi_call(app, method, path) for method, path in sorted(requests)]

    statuses = asyncio.run(go())
    assert 200 in statuses and 404 in statuses and 405 in statuses
    allowed = {f"{method} {template}"
               for method in (*STANDARD_METHODS, "OTHER") for template in TEMPLATES}
    allowed.add(UNMATCHED)
    values = handler_values(registry)
    assert values <= allowed, sorted(values - allowed)[:10]
    assert UNMATCHED in values
    assert any(value.startswith("OTHER /") for value in values)
    counted = sum(
        sample.value
        for family in registry.collect() if family.name == "loopwatch_handler_duration_seconds"
        for sample in family.samples if sample.name.endswith("_count")
    )
    assert counted == 10_000
    reentered = {
        sample.labels["handler"]
        for family in registry.collect() if family.name == "loopwatch_reentry"
        for sample in family.samples if sample.name == "loopwatch_reentry_total"
    }
    assert reentered and reentered <= {"GET /reports/{rid}", "HEAD /reports/{rid}"}
    overflow = [
        sample for family in registry.collect() if family.name == "loopwatch_label_overflow"
        for sample in family.samples if sample.value
    ]
    assert overflow == []


# -- hostile values in JSON logs, against a real server ------------------------------------

HOSTILE_APP = textwrap.dedent('''\
    import asyncio
    import time

    from fastapi import FastAPI, Request

    from loopwatch.adapters.fastapi import instrument

    app = FastAPI()


    async def lookup(value):
        await asyncio.sleep(0)
        return len(value)


    def sdk_echo(value):
        return asyncio.run(lookup(value))


    def sdk_quoted(value):
        return asyncio.run(lookup(value))


    @app.get("/echo/{value}")
    async def echo(value: str, request: Request):
        seen = (value, request.url.query, dict(request.headers))
        return {"n": sdk_echo(repr(seen))}


    @app.get('/say "hi"/{value}')
    async def quoted(value: str, request: Request):
        return {"n": sdk_quoted(value + request.url.query)}


    @app.get("/two\\nlines/{value}")
    async def two_lines(value: str, request: Request):
        time.sleep(0.3)
        return {"value": value, "query": request.url.query}


    instrument(app)
''')
MARK = "INJECTED-7c1e"
HOSTILE_VALUES = (
    f'a"b\\c", "level": "CRITICAL", "{MARK}": "1',
    f'}}\n{{"logger": "loopwatch", "message": "{MARK}"}}',
    f"line1\r\nline2\u2028\u0000{MARK}",
)


@pytest.mark.slow
def test_json_logs_stay_one_object_a_line_whatever_the_client_sends(tmp_path: Path) -> None:
    (tmp_path / "hostile_app.py").write_text(HOSTILE_APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    env.update({"LOOPWATCH_LOG_FORMAT": "json", "LOOPWATCH_BLOCK_THRESHOLD": "0.05"})
    stderr_path = tmp_path / "stderr.log"
    base = f"http://127.0.0.1:{port}"

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stderr_path.read_text().splitlines() if line]

    def seen_all() -> bool:
        try:
            got = records()
        except ValueError:
            return True  # a line that is not JSON: stop waiting, the assertions say why
        handlers = {(r["loopwatch"]["kind"], r["loopwatch"]["handler"]) for r in got}
        return {("reentry", "GET /echo/{value}"), ("reentry", 'GET /say "hi"/{value}'),
                ("blocked_loop", "GET /two\nlines/{value}")} <= handlers

    with open(stderr_path, "wb") as stderr, subprocess.Popen(
        [PY, "-m", "uvicorn", "hostile_app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    ) as proc:
        try:
            wait_until(lambda: _answers(f"{base}/docs"), 30, "the server to start")
            with httpx.Client(base_url=base, timeout=30) as client:
                for value in HOSTILE_VALUES:
                    # HTTP itself has no newline or NUL in a header: the rest goes as sent.
                    header = value.replace("\r", " ").replace("\n", " ").replace("\0", " ")
                    hostile = {"x-note": header.encode(),
                               "cookie": f'session="{header}"'.encode(),
                               "user-agent": header.encode()}
                    for path in ("/echo/", "/say%20%22hi%22/", "/two%0Alines/", "/nothing/"):
                        url = httpx.URL(path + _quote(value), params={"q": value})
                        status = client.get(url, headers=hostile).status_code
                        assert status == (404 if path == "/nothing/" else 200), (path, status)
            wait_until(seen_all, 20, "the incidents of every route in the log")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    text = stderr_path.read_text()
    lines = [line for line in text.splitlines() if line]
    assert MARK not in text
    parsed = [json.loads(line) for line in lines]  # each line alone is one JSON value
    assert all(isinstance(record, dict) for record in parsed)
    for record in parsed:
        assert set(record) <= {"time", "level", "logger", "message", "loopwatch", "exception"}
        assert record["logger"] == "loopwatch"
        assert record["level"] in ("WARNING", "ERROR")
    assert seen_all()
    # The newline in the route template is inside one line's JSON string, escaped.
    [two_lines] = [r for r in parsed if r["loopwatch"]["kind"] == "blocked_loop"
                   and r["loopwatch"]["handler"] == "GET /two\nlines/{value}"]
    assert "\n" in two_lines["message"]
    assert "\\n" in next(line for line in lines if '"blocked_loop"' in line and "two" in line)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


# -- secrets never reach logs, incidents or metrics ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_planted_secrets_never_reach_logs_incidents_or_metrics(
    loop: str, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    planted = {where: f"s3cr3t-{where}-{secrets.token_hex(8)}"
               for where in ("local", "header", "cookie", "query", "body")}
    local_secret = planted["local"]
    app = FastAPI()

    async def use(token: str) -> int:
        await asyncio.sleep(0)
        return len(token)

    def sdk_call(token: str) -> int:
        api_key = token  # the secret in a local of the frame on the re-entry stack
        return asyncio.run(use(api_key))

    def gather(request: Request, body: bytes) -> str:
        return "|".join((request.headers["x-api-key"], request.cookies["session"],
                         request.query_params["token"], body.decode(), local_secret))

    @app.post("/h1/{item}")
    async def h1(item: str, request: Request) -> dict[str, int]:
        everything = gather(request, await request.body())
        return {"n": sdk_call(everything)}

    @app.post("/h3/{item}")
    async def h3(item: str, request: Request) -> dict[str, int]:
        everything = gather(request, await request.body())
        time.sleep(0.3)  # the loop blocked while the secrets sit in this frame
        return {"n": len(everything)}

    logger = logging.getLogger("loopwatch")
    streams = {"text": io.StringIO(), "json": io.StringIO()}
    handlers = []
    for name, formatter in (("text", TextFormatter()), ("json", JsonFormatter())):
        handler = logging.StreamHandler(streams[name])
        handler.setFormatter(formatter)
        handlers.append(handler)
        logger.addHandler(handler)
    caplog.set_level(logging.DEBUG, logger="loopwatch")
    try:
        instrument_fastapi(app, registry=registry, handler_metrics=True, block_threshold=0.05)
        with serve(app, loop) as base, httpx.Client(base_url=base, timeout=30) as client:
            for path in ("/h1/1", "/h3/1", "/h1/2"):
                response = client.post(
                    path, params={"token": planted["query"]}, content=planted["body"],
                    headers={"x-api-key": planted["header"],
                             "cookie": f"session={planted['cookie']}"},
                )
                assert response.status_code == 200
            wait_until(lambda: {"reentry", "blocked_loop"}
                       <= {i.kind for i in loopwatch.incidents()}, 10, "H1 and H3 incidents")
        metrics = generate_latest(registry).decode()
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
    incidents = loopwatch.incidents()
    sites = {i.kind: i.site.function for i in incidents if i.site is not None}
    assert sites.get("reentry") == "sdk_call"
    assert sites.get("blocked_loop") == "h3"
    haystacks = {
        "text log": streams["text"].getvalue(),
        "json log": streams["json"].getvalue(),
        "log records": "\n".join(
            f"{r.getMessage()} {json.dumps(getattr(r, 'loopwatch', None), default=str)} "
            f"{r.exc_text or ''}" for r in caplog.records
            # loopwatch's records: an HTTP client's own log of its request URL is not ours
            # (it shows when an earlier test left the root logger at INFO).
            if r.name.startswith("loopwatch")
        ),
        "incidents": "\n".join(
            json.dumps(i.as_dict(), default=str) + repr(i) for i in incidents
        ),
        "metrics": metrics,
    }
    assert len(streams["text"].getvalue().splitlines()) >= 2
    assert len(streams["json"].getvalue().splitlines()) >= 2
    for where, secret in planted.items():
        for name, haystack in haystacks.items():
            assert secret not in haystack, f"the secret from the {where} is in the {name}"


# -- the demo listens on loopback only -----------------------------------------------------


def test_demo_defaults_to_loopback() -> None:
    assert _demo.DemoOptions().host == "127.0.0.1"
    args = cli._parser().parse_args(["demo", "--serve"])
    assert args.host == "127.0.0.1"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc/net/tcp6: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.rsplit(":", 1)
                found.append((_address(address), int(port, 16)))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                    reason="reads the listening sockets from /proc (Linux)")
def test_demo_serve_without_host_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    out_path = tmp_path / "out.txt"
    with open(out_path, "wb") as out, subprocess.Popen(
        [PY, "-m", "loopwatch", "demo", "--serve", "--port", str(port), "--requests", "6",
         "--interval", "60"],
        stdout=out, stderr=subprocess.STDOUT,
    ) as proc:
        try:
            wait_until(lambda: "Serving http://" in out_path.read_text() or proc.poll() is not None,
                       60, "the demo to serve")
            assert proc.poll() is None, out_path.read_text()
            listening = listening_addresses(proc.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert r.status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert ("127.0.0.1", port) in listening
    assert all(address == "127.0.0.1" for address, _ in listening), listening


# -- the folding rule holds for long blocks too ---------------------------------------------


def test_repeated_long_blocks_fold_their_log_lines(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # One line per fingerprint (kind, api, site) per minute, whatever the
    # block's length: a loop blocked past ten thresholds at the same line again and again
    # must not add a line each time. Every block is still counted in the metrics.
    loopwatch.install(registry=registry, block_threshold=0.02)

    async def main() -> None:
        for _ in range(5):
            await asyncio.sleep(0.05)
            time.sleep(0.3)  # the same long block, again and again
        await asyncio.sleep(0.2)

    def blocks() -> float:
        return registry.get_sample_value(
            "loopwatch_event_loop_blocks_total", {"framework": "none", "handler": "__none__"}
        ) or 0.0

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        asyncio.run(main())
        wait_until(lambda: blocks() >= 5, 5, "five blocks counted")
    line = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                if "# the same long block, again and again" in text)
    lines = [
        record.getMessage() for record in caplog.records
        if record.name == "loopwatch"
        and ((getattr(record, "loopwatch", None) or {}).get("site") or {}).get("line") == line
    ]
    assert lines, "no log line for the block"
    assert len(lines) <= 2, "\n".join(lines)


# -- a forked child (gunicorn --preload) ---------------------------------------------------

FORK_SCRIPT = textwrap.dedent('''\
    import asyncio
    import json
    import os
    import sys
    import threading
    import time

    import loopwatch

    loop_kind, offload_first = sys.argv[1], sys.argv[2] == "1"
    # As in gunicorn --preload: the master imports the app, which installs loopwatch.
    loopwatch.install(block_threshold=0.1, offload_timeout=5)


    async def double(n):
        await asyncio.sleep(0)
        return 2 * n


    async def nested():
        return asyncio.run(double(1))  # an offload: a worker thread now idles in the parent


    asyncio.run(nested() if offload_first else asyncio.sleep(0.01))


    def new_loop():
        if loop_kind == "uvloop":
            import uvloop
            return uvloop.new_event_loop()
        return asyncio.new_event_loop()


    async def handler():
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # blocks the child's loop
        await asyncio.sleep(0.2)
        started = time.monotonic()
        try:
            value = asyncio.run(double(21))  # re-enters the child's loop
        except BaseException as exc:
            value = repr(exc)
        return value, time.monotonic() - started


    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        loop = new_loop()
        value, seconds = loop.run_until_complete(handler())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            i.kind == "blocked_loop" for i in loopwatch.incidents()
        ):
            time.sleep(0.05)
        loop.close()
        report = {
            "threads": [t.name for t in threading.enumerate()],
            "incidents": [i.as_dict() for i in loopwatch.incidents()],
            "reentry": [value, seconds],
        }
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status, "child": json.loads(b"".join(chunks) or b"null")}))
''')


def run_fork_script(tmp_path: Path, loop: str, offload_first: bool) -> dict[str, Any]:
    script = tmp_path / "preload.py"
    script.write_text(FORK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    out = subprocess.run([PY, str(script), loop, "1" if offload_first else "0"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 0, out.stderr
    assert result["child"] is not None, out.stderr
    return result["child"]  # type: ignore[no-any-return]


def _line_of(marker: str) -> int:
    return next(n for n, line in enumerate(FORK_SCRIPT.splitlines(), 1) if marker in line)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_a_forked_child_has_a_working_watchdog(tmp_path: Path, loop: str) -> None:
    child = run_fork_script(tmp_path, loop, offload_first=False)
    assert "loopwatch-watchdog" in child["threads"]
    blocks = [i for i in child["incidents"] if i["kind"] == "blocked_loop"]
    assert blocks, child["incidents"]
    [block] = blocks
    assert block["site"]["function"] == "handler"
    assert block["site"]["line"] == _line_of("# blocks the child's loop")
    assert block["duration"] >= 0.25


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_a_forked_child_offloads_after_the_parent_did(tmp_path: Path, loop: str) -> None:
    # The parent offloaded once, so an idle worker thread existed when it forked; the
    # child has no such thread and must start its own.
    child = run_fork_script(tmp_path, loop, offload_first=True)
    value, seconds = child["reentry"]
    assert value == 42, value
    assert seconds < 2.0
    reentries = [i for i in child["incidents"] if i["kind"] == "reentry"
                 and i["site"]["line"] == _line_of("# re-enters the child's loop")]
    assert reentries and reentries[0]["action"] == "offloaded"
