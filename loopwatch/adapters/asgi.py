"""Pure-ASGI middleware that attributes the work of every request to its route template.

``LoopwatchMiddleware`` puts a per-request label holder in loopwatch's handler context
before it calls the app. The route is only known once the app's router has run, so the
holder resolves the template when the labels are read — by an incident raised inside the
endpoint (``async def``, a sync ``def`` in the threadpool, a background task) or, with
``handler_metrics=True``, once the response is done. Nothing is routed twice: the
resolution reads what the router left in the scope (Starlette's ``scope["route"]``,
FastAPI's effective route of an included router, the mount path in ``root_path``) and
caches per route object, so its cost does not grow with the number of routes.

Handler values: ``GET /items/{item_id}`` (mount prefixes included, the server's
``root_path`` not), ``WEBSOCKET /ws/{room}``, ``OTHER /x`` for methods outside the
standard set, ``__unmatched__`` when no route matched (404, a ``redirect_slashes``
redirect).
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial as _partial
from typing import Any

from prometheus_client import CollectorRegistry

from .._compat import prometheus as prom
from .._context import (
    FRAMEWORKS,
    Labels,
    LazyLabels,
    raw_labels,
    reset_labels,
    set_lazy_labels,
)
from .._errors import ConfigError, LoopwatchError
from .._runtime import internal_error
from ..metrics import Metrics, NullMetrics, get_metrics

try:
    from starlette.routing import Host, Mount, compile_path
except ImportError:  # a bare ASGI app: no Starlette routes can appear in the scope

    class Mount:  # type: ignore[no-redef]
        """Stands in for Starlette's Mount when Starlette is not installed."""

    class Host:  # type: ignore[no-redef]
        """Stands in for Starlette's Host when Starlette is not installed."""

    compile_path = None  # type: ignore[assignment]

__all__ = ["UNMATCHED", "LoopwatchMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED = "__unmatched__"
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
_MOUNT_TAIL = "/{path}"
_now = time.perf_counter
# Starlette's and uvicorn's exceptions for a client that went away, by name (no imports).
_DISCONNECTS = frozenset({"ClientDisconnect", "ClientDisconnected", "WebSocketDisconnect"})
_CACHE_LIMIT = 4096  # resolved labels kept per middleware; past it the cache starts over
_MAX_DEPTH = 16  # mounts nested deeper than this are not indexed (and cycles end)


class LoopwatchMiddleware:
    """Attribute everything a request does to ``framework`` and its route template.

    Add it to any ASGI app (``app.add_middleware(LoopwatchMiddleware)``). ``lifespan`` and
    other scope types pass straight through. With ``handler_metrics=True`` it also records
    ``loopwatch_handler_duration_seconds{framework,handler,outcome}`` with ``outcome`` one
    of ``ok``, ``error`` (an exception escaped, or a 5xx status) and ``cancelled`` (the
    client went away first). ``framework`` (``starlette`` or ``fastapi``) is detected from
    the app when not given. The middleware never raises an error of its own into the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        handler_metrics: bool = False,
        framework: str | None = None,
    ) -> None:
        if framework is not None and framework not in FRAMEWORKS:
            raise ConfigError(
                f"LoopwatchMiddleware: framework={framework!r} is not accepted; "
                f"use one of {', '.join(sorted(FRAMEWORKS))}"
            )
        self.app = app
        self.handler_metrics = handler_metrics
        self.framework = framework
        self._metrics: Metrics | NullMetrics | None = None
        if handler_metrics:
            try:
                # Created now, so a clash with another metric of that name fails at startup.
                self._metrics = get_metrics(registry)
            except LoopwatchError:
                raise
            except Exception as exc:  # e.g. an unwritable PROMETHEUS_MULTIPROC_DIR
                internal_error("asgi", exc)
                self._metrics = NullMetrics()
        self._resolver = _Resolver(self)
        self._children: dict[tuple[Labels, str], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = None
        root_path = ""
        try:
            outer = raw_labels()  # an outer LoopwatchMiddleware's request, maybe
            # A mounted app instrumented too: the outermost middleware labels (and times)
            # the request, with the mount prefix only it can see.
            if type(outer) is not _RequestLabels or outer[1] is not scope:
                if self.framework is None:
                    self._detect_framework(scope)
                root_path = scope.get("root_path", "")
                token = set_lazy_labels(_RequestLabels((self._resolver, scope, root_path)))
        except Exception as exc:
            internal_error("asgi", exc)
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            metrics = self._metrics
            if metrics is None:
                await self.app(scope, receive, send)
                return
            # handler_metrics, inline: one coroutine frame less per request.
            sent: list[Any] = [0, False]  # status, body complete
            started = _now()
            try:
                await self.app(scope, receive, _partial(_track, send, sent))
            except BaseException as exc:
                cancelled = (
                    isinstance(exc, asyncio.CancelledError)
                    # Starlette's and uvicorn's errors for a client that went away.
                    or type(exc).__name__ in _DISCONNECTS
                    or _failed_sending(send, exc)
                )
                outcome = "cancelled" if cancelled else "error"
                self._observe(metrics, scope, root_path, outcome, started)
                raise
            status = sent[0]
            if scope["type"] == "websocket":
                outcome = "ok"
            elif status == 0 or status >= 500:
                outcome = "error"  # no response at all: the server answers 500
            elif not sent[1]:
                # Starlette stops a streaming response when the client goes away.
                outcome = "cancelled"
            else:
                outcome = "ok"
            self._observe(metrics, scope, root_path, outcome, started)
        finally:
            try:
                reset_labels(token)
            except Exception as exc:
                internal_error("asgi", exc)

    def _detect_framework(self, scope: Scope) -> None:
        app = scope.get("app", self.app)
        modules = {cls.__module__.partition(".")[0] for cls in type(app).__mro__}
        self.framework = "fastapi" if "fastapi" in modules else "starlette"

    def labels_for(self, scope: Scope, root_path: str = "") -> Labels:
        """The labels of a request, from what its router has left in ``scope`` so far.

        ``root_path`` is the scope's ``root_path`` as the request entered the middleware
        (the server's, which the template leaves out). Never raises.
        """
        return self._resolver.labels(scope, root_path)

    def _observe(
        self, metrics: Metrics | NullMetrics, scope: Scope, root_path: str, outcome: str,
        started: float,
    ) -> None:
        elapsed = _now() - started
        try:
            labels = self._resolver.labels(scope, root_path)
            observe = self._children.get((labels, outcome))
            if observe is None:
                observe = self._new_child(metrics, labels, outcome)
            observe(elapsed)
        except Exception as exc:
            internal_error("asgi", exc)

    def _new_child(
        self, metrics: Metrics | NullMetrics, labels: Labels, outcome: str
    ) -> Callable[[float], None]:
        child = metrics.child(
            metrics.handler_duration_seconds, framework=labels.framework,
            handler=labels.handler, outcome=outcome,
        )
        observe = prom.fast_observe(child)
        # Kept only when the value was admitted under the label cap: a value folded into
        # "__other__" must count as an overflow on every request.
        if labels.handler in prom.label_values(child):
            if len(self._children) >= _CACHE_LIMIT:
                self._children.clear()
            self._children[(labels, outcome)] = observe
        return observe


class _RequestLabels(LazyLabels, tuple[Any, Scope, str]):
    """The labels of one request, resolved from its scope on each read.

    ``(resolver, scope, root_path at entry)``: a tuple, because one is made per request
    and a tuple is the cheapest object Python builds. Work that outlives the request (a
    task it started) reads the final scope, which nothing changes any more.
    """

    __slots__ = ()

    def resolve(self) -> Labels:
        resolver: _Resolver = self[0]
        return resolver.labels(self[1], self[2])


def _track(send: Send, sent: list[Any], message: Message) -> Awaitable[None]:
    """The ``send`` the app gets with ``handler_metrics`` (bound with ``functools.partial``).

    It notes the status and whether the body is complete in ``sent`` (``[status,
    complete]``) and hands back the server's own awaitable: no coroutine and no object of
    ours per message. A send that fails (ASGI 2.4: an ``OSError`` once the client has
    gone) is found afterwards, off the fast path, by :func:`_failed_sending`.
    """
    kind = message["type"]
    if kind == "http.response.start":
        sent[0] = message.get("status", 200)
    elif kind == "http.response.body" and not message.get("more_body", False):
        sent[1] = True
    return send(message)


def _failed_sending(send: Send, exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` raised by the server's ``send``."""
    if not isinstance(exc, OSError):
        return False
    try:
        code = _code_of(send)
        tb = exc.__traceback__
        while code is not None and tb is not None:
            if tb.tb_frame.f_code is code:
                return True
            tb = tb.tb_next
    except Exception as error:  # never let the outcome replace the app's exception
        internal_error("asgi", error)
    return False


def _code_of(func: object) -> types.CodeType | None:
    """The code object a Python callable runs (function, bound method, ``__call__``)."""
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if code is None:
        call = getattr(type(func), "__call__", None)  # noqa: B004 - its code, not a test
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    return code if isinstance(code, types.CodeType) else None


class _Resolver:
    """Route templates from what the router left in the scope, cached per route object."""

    def __init__(self, middleware: LoopwatchMiddleware) -> None:
        self._middleware = middleware
        # Keyed by id(): routes define __eq__, so they are unhashable; the object is kept
        # in the value and compared, so a recycled id never returns another route's label.
        self._labels: dict[tuple[int, str, Any], tuple[object, Labels]] = {}
        self._trees: dict[int, tuple[object, _Tree]] = {}
        self._unmatched: Labels | None = None

    def labels(self, scope: Scope, root_path: str) -> Labels:
        """The labels for ``scope`` now (``__unmatched__`` before or without a match)."""
        try:
            leaf, prefix = self._leaf(scope, root_path)
            if leaf is None:
                return self._unmatched_labels()
            key = (id(leaf), prefix, scope.get("method"))
            found = self._labels.get(key)
            if found is not None and found[0] is leaf:
                return found[1]
            labels = self._make(scope, leaf, prefix)
            if labels.handler != UNMATCHED:
                if len(self._labels) >= _CACHE_LIMIT:
                    self._labels.clear()
                self._labels[key] = (leaf, labels)
            return labels
        except Exception as exc:
            internal_error("asgi", exc)
            return self._unmatched_labels()

    def _unmatched_labels(self) -> Labels:
        labels = self._unmatched
        if labels is None:
            labels = Labels(self._middleware.framework or "starlette", UNMATCHED)
            if self._middleware.framework is not None:
                self._unmatched = labels
        return labels

    def _leaf(self, scope: Scope, root_path: str) -> tuple[object | None, str]:
        """The matched route (or FastAPI route context) and the concrete mount prefix."""
        prefix = scope.get("root_path", "")
        if prefix == root_path:
            prefix = ""
        elif prefix.startswith(root_path):
            prefix = prefix[len(root_path):]
        route = scope.get("route")
        fastapi_scope = scope.get("fastapi")
        if type(fastapi_scope) is dict:
            # FastAPI routes of an included router: scope["route"] is the router's own
            # route (without the include prefixes); the effective one has the full path.
            effective = fastapi_scope.get("effective_route_context")
            if effective is not None and (route is None or effective.original_route is route):
                starlette_route = getattr(effective, "starlette_route", None)
                return (effective if starlette_route is None else starlette_route), prefix
        if route is not None:
            return route, prefix
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return None, prefix
        # A router that does not record scope["route"] (FastAPI's own routes other than
        # APIRoute, Starlette before 1.7): find the route by its endpoint.
        return self._tree(scope).route_for(endpoint, scope), prefix

    def _make(self, scope: Scope, leaf: object, prefix: str) -> Labels:
        framework = self._middleware.framework or "starlette"
        if isinstance(leaf, (Mount, Host)):
            if getattr(leaf, "routes", None):
                # The mount's own router has not matched (yet): a 404 inside the mount.
                return self._unmatched_labels()
            template = _MOUNT_TAIL
        else:
            found = getattr(leaf, "path_format", None) or getattr(leaf, "path", None)
            if not isinstance(found, str):
                return self._unmatched_labels()
            template = found
        if scope["type"] == "websocket":
            method = "WEBSOCKET"
        else:
            method = scope.get("method", "")
            if method not in STANDARD_METHODS:
                method = "OTHER"
        if prefix:
            prefix = self._tree(scope).prefix_template(prefix)
        return Labels(framework, f"{method} {prefix}{template}")

    def _tree(self, scope: Scope) -> _Tree:
        router = scope.get("router") or scope.get("app")
        found = self._trees.get(id(router))
        if found is not None and found[0] is router:
            return found[1]
        tree = _Tree(router)
        if len(self._trees) >= 64:
            self._trees.clear()
        self._trees[id(router)] = (router, tree)
        return tree


class _Tree:
    """What one top-level router contains: routes by endpoint and the mount templates.

    Built once per router (rebuilt when a lookup misses and the routes have changed), so a
    request never walks the routes.
    """

    def __init__(self, router: object) -> None:
        self._router = router
        self._size = -1
        self._by_endpoint: dict[int, list[object]] = {}
        self._static: set[str] = set()
        self._patterns: list[tuple[Any, str]] = []
        self._build()

    def _build(self) -> None:
        self._by_endpoint.clear()
        self._static.clear()
        self._patterns.clear()
        routes = getattr(self._router, "routes", None) or []
        self._size = len(routes)
        self._walk(routes, "", 0)

    def _walk(self, routes: list[Any], prefix: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        for route in routes:
            if isinstance(route, (Mount, Host)):
                inner = prefix
                if isinstance(route, Mount):
                    inner = prefix + route.path_format[: -len(_MOUNT_TAIL)]
                    self._add_prefix(inner)
                self._by_endpoint.setdefault(id(route.app), []).append(route)
                self._walk(list(getattr(route, "routes", None) or []), inner, depth + 1)
                continue
            endpoint = getattr(route, "endpoint", None)
            if endpoint is not None:
                self._by_endpoint.setdefault(id(endpoint), []).append(route)

    def _add_prefix(self, template: str) -> None:
        if "{" not in template:
            self._static.add(template)
        elif compile_path is not None:
            regex = compile_path(template)[0]
            self._patterns.append((regex, template))

    def route_for(self, endpoint: object, scope: Scope) -> object | None:
        candidates = self._by_endpoint.get(id(endpoint))
        if candidates is None:
            routes = getattr(self._router, "routes", None) or []
            if len(routes) == self._size:
                return None
            self._build()
            candidates = self._by_endpoint.get(id(endpoint))
            if candidates is None:
                return None
        if len(candidates) == 1:
            return candidates[0]
        # One endpoint behind several routes: only those few are tried.
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        for route in candidates:
            regex = getattr(route, "path_regex", None)
            if regex is not None and not isinstance(route, (Mount, Host)) and regex.match(path):
                return route
        return candidates[0]

    def prefix_template(self, prefix: str) -> str:
        """The template of a concrete mount prefix (``/orgs/acme`` → ``/orgs/{org}``)."""
        if prefix in self._static:
            return prefix
        for regex, template in self._patterns:
            if regex.match(prefix):
                return template
        # A mount this router does not show (dispatch by a custom app): keep the path; the
        # per-metric cap on handler values bounds what that can cost.
        return prefix
