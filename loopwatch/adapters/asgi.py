"""Pure-ASGI middleware that attributes the work of every request to its route template.

``LoopwatchMiddleware`` puts a per-request label holder in loopwatch's handler context
before it calls the app. The route is only known once the app's router has run, so the
holder resolves the template when the labels are read — by an incident raised inside the
endpoint (``async def``, a sync ``def`` in the threadpool, a background task) or, with
``handler_metrics=True``, once the response is done. Nothing is routed twice: the
resolution reads what the router left in the scope (the endpoint of the deepest match,
Starlette's ``scope["route"]``, FastAPI's effective route of an included router or its
``frontend()``, the mount path in ``root_path``), finds the route by identity in a tree of
the app's routes built once, and caches per route object, so its cost does not grow with
the number of routes.

Handler values: ``GET /items/{item_id}`` (mount and include prefixes as templates, the
server's ``root_path`` not), ``WEBSOCKET /ws/{room}``, ``GET /static/{path}`` for a mounted
app without routes and ``GET /app/{path}`` for a FastAPI front-end, ``OTHER /x`` for methods
outside the standard set, ``__unmatched__`` when no route matched (404, a
``redirect_slashes`` redirect). A concrete path never becomes a label: below a mount whose
routes loopwatch cannot see, the deepest mount it can see is the label.
"""

from __future__ import annotations

import asyncio
import re
import time
import types
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial as _partial
from typing import Any

from prometheus_client import CollectorRegistry

from .. import _handlers
from .._compat import prometheus as prom
from .._compat import starlette as _starlette
from .._context import (
    FRAMEWORKS,
    Labels,
    LazyLabels,
    raw_labels,
    reset_labels,
    set_lazy_labels,
)
from .._errors import ConfigError, LoopwatchError
from .._runtime import active, internal_error
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
_NEVER = re.compile(r"(?!)")  # matches nothing


class LoopwatchMiddleware:
    """Attribute everything a request does to ``framework`` and its route template.

    Add it to any ASGI app (``app.add_middleware(LoopwatchMiddleware)``). ``lifespan`` and
    other scope types pass straight through. With ``handler_metrics=True`` it also records
    ``loopwatch_handler_duration_seconds{framework,handler,outcome}`` with ``outcome`` one
    of ``ok``, ``error`` (an exception escaped, or a 5xx status) and ``cancelled`` (the
    client went away first). ``framework`` (``starlette`` or ``fastapi``) is detected from
    the app when not given. Without a ``registry`` of its own the durations go where the
    installed monitor's metrics go, following it when ``install(registry=...)`` changes it.
    The middleware never raises an error of its own into the app.

    Each HTTP request is tracked while in flight (``loopwatch_handlers_in_flight``) and
    reported once as ``stuck_handler`` when its tasks wait on the same thing for
    ``stuck_after`` seconds; a response that keeps streaming moves on to a new wait with
    every chunk, so it is never stuck. WebSocket sessions are tracked only with
    ``stuck_websockets=True`` (a quiet socket is normal).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        handler_metrics: bool = False,
        framework: str | None = None,
        stuck_websockets: bool = False,
    ) -> None:
        if framework is not None and framework not in FRAMEWORKS:
            raise ConfigError(
                f"LoopwatchMiddleware: framework={framework!r} is not accepted; "
                f"use one of {', '.join(sorted(FRAMEWORKS))}"
            )
        self.app = app
        self.stuck_websockets = stuck_websockets
        self.handler_metrics = handler_metrics
        self.framework = framework
        self._metrics: Metrics | NullMetrics | None = None
        # No registry given: follow the installed monitor's (see _followed).
        self._follow = handler_metrics and registry is None
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
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        token = None
        root_path = ""
        key = 0
        try:
            outer = raw_labels()  # an outer LoopwatchMiddleware's request, maybe
            # A mounted app instrumented too: the outermost middleware labels (and times)
            # the request, with the mount prefix only it can see.
            if type(outer) is not _RequestLabels or outer[1] is not scope:
                if self.framework is None:
                    self._detect_framework(scope)
                root_path = scope.get("root_path", "")
                labels = _RequestLabels((self._resolver, scope, root_path))
                token = set_lazy_labels(labels)
                # In flight (for stuck requests): inline, a call costs more than the rest.
                if _TRACKING[0] and (kind == "http" or self.stuck_websockets):
                    key = id(labels)
                    _INFLIGHT[key] = labels
                    if _CHECKER_ASLEEP[0]:
                        _FAST.wake()
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
            if self._follow:
                metrics = self._followed(metrics)
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
                if key:
                    # A with-block (contextlib.suppress) costs more per request than try.
                    try:  # noqa: SIM105
                        del _INFLIGHT[key]
                    except KeyError:  # tracking was turned off (and emptied) meanwhile
                        pass
                    if _REPORTED:  # some handler is stuck now: was it this one?
                        _finished(key)
            except Exception as exc:
                internal_error("asgi", exc)

    def _followed(self, metrics: Metrics | NullMetrics) -> Metrics | NullMetrics:
        # The installed monitor's metrics, else those bound at construction (the default
        # registry's). A change drops the children cached for the previous ones.
        monitor = active()
        current = monitor.metrics if monitor is not None else None
        if current is None or current is metrics:
            return metrics
        self._metrics = current
        self._children.clear()
        return current  # type: ignore[no-any-return]

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


# The request's task is found by this frame on its await chain, only once it is stuck.
_CALL = LoopwatchMiddleware.__call__.__code__
_FAST = _handlers.FAST
_TRACKING, _CHECKER_ASLEEP = _FAST.on, _FAST.asleep
_INFLIGHT, _REPORTED = _FAST.inflight, _FAST.reported
_finished = _handlers.finished


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
    elif (
        # pathsend and zerocopysend (ASGI extensions) send a whole file or a part of one.
        kind in ("http.response.body", "http.response.zerocopysend")
        and not message.get("more_body", False)
    ) or kind == "http.response.pathsend":
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


class _Frontend:
    """A FastAPI ``frontend()`` path, as a resolver key (one object per path)."""

    __slots__ = ("template",)

    def __init__(self, path: str) -> None:
        # The stable template of everything a front-end serves: its path plus the file,
        # as for a mount (FastAPI reports the same ``http.route`` for it).
        self.template = ("" if path == "/" else path) + _MOUNT_TAIL


class _Resolver:
    """Route templates from what the router left in the scope, cached per route object."""

    def __init__(self, middleware: LoopwatchMiddleware) -> None:
        self._middleware = middleware
        # Keyed by id(): routes define __eq__, so they are unhashable; the object is kept
        # in the value and compared, so a recycled id never returns another route's label.
        self._labels: dict[tuple[int, str, Any], tuple[object, Labels]] = {}
        self._trees: dict[int, tuple[object, _Tree]] = {}
        self._frontends: dict[str, _Frontend] = {}
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
        """What the deepest match was, and the concrete mount prefix above the server's.

        Every route, mount and host that matches writes ``scope["endpoint"]`` (its endpoint
        or its app), deeper matches over shallower ones; a route or FastAPI context that the
        router recorded is the leaf only if that endpoint is still its own (or none was
        written: an app that records only the route). Otherwise the endpoint is looked up
        in the router's tree.
        """
        prefix = scope.get("root_path", "")
        if prefix == root_path:
            prefix = ""
        elif prefix.startswith(root_path):
            prefix = prefix[len(root_path):]
        endpoint = scope.get("endpoint")
        if scope.get("fastapi") is not None:
            path = _starlette.frontend_path(scope)
            if path is not None:
                return self._frontend(path), prefix
            effective = _starlette.effective_route(scope)
            if effective is not None and (endpoint is None or _endpoint_of(effective) is endpoint):
                return effective, prefix
        route = scope.get("route")
        if route is not None:
            # Inline for the common case (a route's own endpoint); mounts and hosts by app.
            own = getattr(route, "endpoint", None)
            if own is endpoint or endpoint is None or (
                own is None and getattr(route, "app", None) is endpoint
            ):
                return route, prefix
        if endpoint is None:
            return None, prefix
        return self._tree(scope).leaf_for(endpoint, scope, prefix), prefix

    def _frontend(self, path: str) -> _Frontend:
        found = self._frontends.get(path)
        if found is None:
            if len(self._frontends) >= 64:
                self._frontends.clear()
            found = self._frontends[path] = _Frontend(path)
        return found

    def _make(self, scope: Scope, leaf: object, prefix: str) -> Labels:
        template = self._template(scope, leaf, prefix)
        if template is None or not template.startswith("/"):
            return self._unmatched_labels()
        if scope["type"] == "websocket":
            method = "WEBSOCKET"
        else:
            method = scope.get("method", "")
            if method not in STANDARD_METHODS:
                method = "OTHER"
        return Labels(self._middleware.framework or "starlette", f"{method} {template}")

    def _template(self, scope: Scope, leaf: object, prefix: str) -> str | None:
        """The full template of ``leaf`` reached under the concrete ``prefix``, if known."""
        if type(leaf) is _Placement:
            return leaf.label_template()
        tree = self._tree(scope)
        if type(leaf) is _Frontend:
            own: object = leaf.template
        else:
            placement = tree.placement_of(leaf, prefix)
            if placement is not None:
                return placement.label_template()
            # A route the tree does not hold (a router it cannot see into). A mount's or
            # host's own part is already in the concrete prefix: only the prefix counts.
            own = None if isinstance(leaf, (Mount, Host)) else getattr(leaf, "path_format", None)
        if isinstance(own, str) and own.startswith("/"):
            above = tree.prefix_template(prefix)
            if above is not None:
                return above + own
        # The deepest mount the prefix runs through: the most loopwatch can tell; never
        # the concrete prefix itself.
        deepest = tree.deepest_mount(prefix)
        return None if deepest is None else deepest.label_template()

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


def _endpoint_of(route: object) -> object:
    """What a route, mount or host writes as ``scope["endpoint"]`` when it matches."""
    endpoint = getattr(route, "endpoint", None)
    return getattr(route, "app", None) if endpoint is None else endpoint


class _Prefix:
    """A mount prefix template and how to tell whether a concrete prefix is one of its."""

    __slots__ = ("leading", "pattern", "template")

    def __init__(self, template: str) -> None:
        self.template = template
        self.pattern: Any = None
        self.leading: Any = None
        if compile_path is None:
            return
        try:
            if "{" in template:
                self.pattern = compile_path(template)[0]
            self.leading = compile_path(template + "/{loopwatch_rest:path}")[0]
        except Exception as exc:  # a template Starlette itself would not compile
            internal_error("asgi", exc)
            self.pattern = _NEVER

    def matches(self, prefix: str) -> bool:
        """Whether ``prefix`` is this template filled in."""
        if self.pattern is None:
            return prefix == self.template
        return self.pattern.match(prefix) is not None

    def leads(self, prefix: str) -> bool:
        """Whether ``prefix`` is this template filled in, followed by more path."""
        return self.leading is not None and self.leading.match(prefix) is not None


class _Placement:
    """One place of a route, mount or host in a router's tree.

    ``template`` is the full label template (mount and include prefixes in, the mount's
    ``/{path}`` tail for a mount); ``prefix`` the mount prefix a request reaching it has
    in its ``root_path``; ``container`` whether routes lie below it (then the request is
    not done routing, or nothing below matched: no template of its own).
    """

    __slots__ = ("container", "depth", "obj", "prefix", "regex", "template")

    def __init__(
        self, obj: object, template: str, prefix: _Prefix, container: bool, depth: int
    ) -> None:
        self.obj = obj
        self.template = template
        self.prefix = prefix
        self.container = container
        self.depth = depth
        self.regex = None if container else getattr(obj, "path_regex", None)

    def label_template(self) -> str | None:
        return None if self.container else self.template


class _Tree:
    """Where every route, mount and host of one top-level router sits, with its template.

    Built once per router and again when its routes change, so a request never walks the
    routes: lookups are by the identity of the route or endpoint the router left behind.
    """

    def __init__(self, router: object) -> None:
        self._router = router
        self._version = -1
        self._by_obj: dict[int, list[_Placement]] = {}
        self._by_endpoint: dict[int, list[_Placement]] = {}
        self._mounts: list[_Placement] = []
        self._prefixes: dict[str, _Prefix] = {}
        self._build()

    def _build(self) -> None:
        # Into new containers, swapped in at the end: the watchdog thread may be reading
        # the current ones while a request rebuilds.
        self._next: tuple[dict[int, list[_Placement]], dict[int, list[_Placement]],
                          list[_Placement]] = ({}, {}, [])
        version = _starlette.routes_version(self._router)
        routes = getattr(self._router, "routes", None) or []
        self._walk(list(routes), self._prefix(""), 0)
        self._by_obj, self._by_endpoint, self._mounts = self._next
        self._version = version

    def _prefix(self, template: str) -> _Prefix:
        found = self._prefixes.get(template)
        if found is None:
            found = self._prefixes[template] = _Prefix(template)
        return found

    def _walk(self, routes: list[Any], prefix: _Prefix, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        for route in routes:
            included = _starlette.included_routes(route)
            if included is not None:
                # A FastAPI included router: its routes carry the include prefixes.
                self._walk(included, prefix, depth + 1)
                continue
            if isinstance(route, Mount):
                path = route.path_format
                inner = self._prefix(prefix.template + path[: -len(_MOUNT_TAIL)])
                children = _starlette.mount_children(route)
                placement = _Placement(
                    route, prefix.template + path, inner, bool(children), depth
                )
                self._add(placement, route.app)
                self._next[2].append(placement)
                self._walk(children, inner, depth + 1)
            elif isinstance(route, Host):
                # The host is not part of the template: requests to any host share it.
                children = _starlette.mount_children(route)
                placement = _Placement(
                    route, prefix.template + _MOUNT_TAIL, prefix, bool(children), depth
                )
                self._add(placement, route.app)
                self._walk(children, prefix, depth + 1)
            else:
                template = getattr(route, "path_format", None)
                if isinstance(template, str) and template.startswith("/"):
                    placement = _Placement(route, prefix.template + template, prefix, False, depth)
                    self._add(placement, getattr(route, "endpoint", None))

    def _add(self, placement: _Placement, endpoint: object) -> None:
        by_obj, by_endpoint, _ = self._next
        by_obj.setdefault(id(placement.obj), []).append(placement)
        if endpoint is not None:
            by_endpoint.setdefault(id(endpoint), []).append(placement)

    def _found(self, key: object, by_endpoint: bool) -> list[_Placement]:
        """The placements of a route object (or of an endpoint), rebuilding once if the
        router's routes changed since the tree was built."""
        for attempt in range(2):
            index = self._by_endpoint if by_endpoint else self._by_obj
            candidates = [
                p for p in index.get(id(key), ())
                if (_endpoint_of(p.obj) if by_endpoint else p.obj) is key
            ]
            if candidates or attempt:
                return candidates
            if _starlette.routes_version(self._router) == self._version:
                return candidates
            self._build()  # routes were added since: look again
        return []

    def placement_of(self, route: object, prefix: str) -> _Placement | None:
        """Where ``route`` sits under the concrete mount ``prefix``, if the tree holds it."""
        for placement in self._found(route, by_endpoint=False):
            if placement.prefix.matches(prefix):
                return placement
        return None

    def leaf_for(self, endpoint: object, scope: Scope, prefix: str) -> _Placement | None:
        """The route (or mount, host) that wrote ``endpoint`` under the mount ``prefix``."""
        candidates = [
            p for p in self._found(endpoint, by_endpoint=True)
            if p.prefix.matches(prefix)
        ]
        if not candidates:
            # An endpoint below a mount the tree cannot see into (an app that dispatches
            # by hand): the deepest mount it went through.
            return self.deepest_mount(prefix) if prefix else None
        if len(candidates) == 1:
            return candidates[0]
        # One endpoint behind several routes: only those few are tried.
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        for placement in candidates:
            if placement.regex is not None and placement.regex.match(path):
                return placement
        return candidates[0]

    def prefix_template(self, prefix: str) -> str | None:
        """The template of a concrete mount prefix (``/orgs/acme`` → ``/orgs/{org}``)."""
        if not prefix:
            return ""
        for placement in self._mounts:
            if placement.prefix.matches(prefix):
                return placement.prefix.template
        return None

    def deepest_mount(self, prefix: str) -> _Placement | None:
        """The deepest mount whose template the concrete ``prefix`` fills or runs through."""
        best: _Placement | None = None
        for placement in self._mounts:
            mount = placement.prefix
            if (mount.matches(prefix) or mount.leads(prefix)) and (
                best is None or placement.depth > best.depth
            ):
                best = placement
        return best


_FAST.mark(_RequestLabels, _CALL)
