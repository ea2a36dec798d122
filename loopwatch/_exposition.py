"""Exposition: the standalone metrics server, the ASGI metrics app and the task view over HTTP.

Rendering always runs off the event loop (a thread of its own, or the loop's executor).
With ``PROMETHEUS_MULTIPROC_DIR`` set and no registry given, every process's values are
served (the multiprocess registry).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import start_http_server as _prom_start_http_server

from . import _runtime

__all__ = [
    "ASGIApp",
    "MetricsServer",
    "make_asgi_app",
    "multiprocess_registry",
    "render",
    "render_tasks",
    "start_http_server",
    "tasks_endpoint_enabled",
]


def multiprocess_registry() -> CollectorRegistry:
    """A fresh registry that collects every process's values from ``PROMETHEUS_MULTIPROC_DIR``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def _exposition_registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return multiprocess_registry()
    return REGISTRY


def render(registry: CollectorRegistry | None = None, accept: str = "") -> tuple[bytes, str]:
    """The exposition body and content type for an ``Accept`` header (blocking: call off-loop)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(_exposition_registry(registry)), content_type


class MetricsServer:
    """A standalone exposition server on its own thread; ``close()`` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.addr: str = server.server_address[0]
        self.port: int = server.server_address[1]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None,
    *, tasks: bool = False,
) -> MetricsServer:
    """Serve ``/metrics`` on ``addr:port`` from a thread (loopback unless told otherwise).

    Raises :class:`OSError` when the port is taken. With ``PROMETHEUS_MULTIPROC_DIR`` set
    and no registry given, it serves the values of every process. With ``tasks=True`` it
    also serves the live task view at ``/tasks`` while loopwatch is installed with
    ``tasks_endpoint=True`` (this server has no token: keep it on loopback).
    """
    reg = _exposition_registry(registry)
    if tasks:
        return _serve_with_tasks(port, addr, reg)
    server, thread = _prom_start_http_server(port, addr=addr, registry=reg)
    return MetricsServer(server, thread)


def _serve_with_tasks(port: int, addr: str, registry: CollectorRegistry) -> MetricsServer:
    """The standalone exposition plus ``/tasks``, on the standard library's WSGI server."""
    import socket
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if not environ.get("PATH_INFO", "").rstrip("/").endswith("/tasks"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if not tasks_endpoint_enabled():
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found\n"]
        body, content_type = render_tasks(
            environ.get("QUERY_STRING", ""), environ.get("HTTP_ACCEPT", "")
        )
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(body)))])
        return [body]

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Say nothing per request (the metrics are scraped every few seconds)."""

    server = make_server(addr, port, app, Server, handler_class=Quiet)
    thread = threading.Thread(
        target=server.serve_forever, name="loopwatch-metrics-server", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread)


ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def tasks_endpoint_enabled() -> bool:
    """Whether the installed monitor serves the task view (``tasks_endpoint``; off by default)."""
    monitor = _runtime.active()
    return bool(monitor is not None and monitor.config.tasks_endpoint)


def render_tasks(query: str, accept: str) -> tuple[bytes, str]:
    """The task view as JSON or text (``?format=json|text``, else by ``Accept``); blocking:
    call it off the loop (it waits for each loop to list its tasks)."""
    import json
    import time
    import urllib.parse

    from . import _taskview

    fmt = urllib.parse.parse_qs(query).get("format", [""])[0]
    items = [info.as_dict() for info in _taskview.tasks()]
    if fmt == "json" or (not fmt and "application/json" in accept):
        body = json.dumps({"time": time.time(), "pid": os.getpid(), "tasks": items})
        return body.encode(), "application/json"
    return _taskview.render_text(items).encode(), "text/plain; charset=utf-8"


def make_asgi_app(
    registry: CollectorRegistry | None = None, *, token: str | None = None
) -> ASGIApp:
    """An ASGI app serving the metrics; the rendering runs in the loop's executor.

    With ``token`` set, requests must carry ``Authorization: Bearer <token>``. A path
    ending in ``/tasks`` serves the live task view instead (JSON or text), only when
    loopwatch is installed with ``tasks_endpoint=True`` (404 otherwise), behind the
    same token.
    """
    expected = f"Bearer {token}".encode() if token else None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers = dict(scope.get("headers") or ())
        tasks_view = scope.get("path", "").rstrip("/").endswith("/tasks")
        if tasks_view and not tasks_endpoint_enabled():
            await _respond(send, 404, b"not found\n", "text/plain; charset=utf-8", [])
            return
        if expected is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), expected
        ):
            await _respond(
                send,
                401,
                b"unauthorized\n",
                "text/plain; charset=utf-8",
                [(b"www-authenticate", b'Bearer realm="metrics"')],
            )
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(
                send,
                405,
                b"method not allowed\n",
                "text/plain; charset=utf-8",
                [(b"allow", b"GET, HEAD")],
            )
            return
        accept = headers.get(b"accept", b"").decode("latin-1")
        loop = asyncio.get_running_loop()
        if tasks_view:
            query = scope.get("query_string", b"").decode("latin-1")
            body, content_type = await loop.run_in_executor(None, render_tasks, query, accept)
        else:
            body, content_type = await loop.run_in_executor(None, render, registry, accept)
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, content_type, [])

    return app


async def _respond(
    send: Any, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": body})
