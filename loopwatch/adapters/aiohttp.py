"""aiohttp.web adapter: one call installs loopwatch, labels every request, serves ``/metrics``.

::

    from aiohttp import web
    from loopwatch.adapters.aiohttp import instrument

    app = web.Application()
    app.router.add_get("/items/{name}", item)
    instrument(app)
    web.run_app(app)

Incidents and metrics raised inside a request carry ``framework="aiohttp"`` and a handler
label built from the matched resource's canonical template, never from the concrete path:

====================================================  ==========================================
a route (``add_get("/items/{name:\\w+}", ...)``)      ``GET /items/{name}`` (the regex dropped)
a route of a sub-application (``add_subapp``)         ``GET /api/items/{name}`` (prefix included)
a route of a domain sub-application (``add_domain``)  ``GET /items/{name}`` (the host left out)
a static directory (``add_static("/static", ...)``)   ``GET /static/{filename}``
a websocket upgrade request to a route                ``WEBSOCKET /ws/{room}``
a method the resource does not allow (405)            that method and the resource's template
a method outside the standard set                     ``OTHER /purge``
nothing matched (404)                                 ``__unmatched__``
====================================================  ==========================================

aiohttp routes a request before the middlewares run, so the label is known when the
middleware starts and stays fixed for the request. It is computed once per resource
object and method, then read from a cache.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

try:
    from aiohttp import hdrs, web
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "loopwatch.adapters.aiohttp needs aiohttp: pip install 'loopwatch[aiohttp]'"
    ) from exc

from prometheus_client import CollectorRegistry

from .. import _monitor
from .._context import Labels, reset_labels, set_labels
from .._errors import LoopwatchError
from .._runtime import internal_error
from ..metrics import Metrics, NullMetrics, get_metrics, render
from .asgi import STANDARD_METHODS, UNMATCHED

__all__ = ["FRAMEWORK", "instrument", "labels_for"]

FRAMEWORK = "aiohttp"
_CACHE_LIMIT = 4096  # resolved labels kept per app; past it the cache starts over
_MAX_DEPTH = 16  # sub-applications nested deeper than this are not searched (405 only)
_STATIC_TAIL = "/{filename}"  # the name aiohttp itself gives the file part of a static URL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _State:
    """What ``instrument`` attached to one application."""

    def __init__(
        self, monitor: _monitor.Monitor, metrics: Metrics | NullMetrics | None,
        options: dict[str, Any],
    ) -> None:
        self.monitor: _monitor.Monitor | None = monitor
        self.options = options  # the install options, for holding loopwatch again
        self.held = True  # whether this app holds the monitor (given back at cleanup)
        self.metrics = metrics
        self.labels: dict[tuple[int, str, bool], tuple[object, Labels]] = {}
        self.unmatched = Labels(FRAMEWORK, UNMATCHED)
        self.children: dict[tuple[Labels, str], Any] = {}


_STATE_KEY: web.AppKey[_State] = web.AppKey("loopwatch_state", _State)


def instrument(
    app: web.Application,
    *,
    metrics_path: str | None = "/metrics",
    metrics_token: str | None = None,
    registry: CollectorRegistry | None = None,
    handler_metrics: bool = False,
    **install_options: Any,
) -> _monitor.Monitor:
    """Install loopwatch, add its middleware to ``app`` and serve the exposition.

    ``metrics_path`` (``None``: add no route; use ``loopwatch.metrics.start_http_server``
    on 127.0.0.1 instead) serves the metrics, rendered off the event loop, from every
    worker's values under ``PROMETHEUS_MULTIPROC_DIR``; with ``metrics_token`` it requires
    ``Authorization: Bearer <token>``. With ``handler_metrics=True`` every request is timed
    in ``loopwatch_handler_duration_seconds{framework="aiohttp",handler,outcome}``. Other
    keywords go to :func:`loopwatch.install`. Call it before the app starts (aiohttp
    freezes an application's middlewares and routes then); calling it again adds nothing.
    The app holds loopwatch from here until its cleanup (and again from its next start).
    """
    if metrics_path is not None and not metrics_path.startswith("/"):
        raise ValueError(f"instrument: metrics_path={metrics_path!r} must start with '/'")
    existing = app.get(_STATE_KEY)
    if existing is not None and existing.monitor is not None:
        return existing.monitor
    if registry is not None:
        install_options["registry"] = registry
    monitor = _monitor.acquire(**install_options)
    if monitor is None:
        # LOOPWATCH_DISABLE: leave the app exactly as it is.
        return _monitor.install(**install_options)
    metrics: Metrics | NullMetrics | None = None
    if handler_metrics:
        try:
            # Created now, so a clash with another metric of that name fails at startup.
            metrics = get_metrics(registry)
        except LoopwatchError:
            _monitor.release(monitor)
            raise
        except Exception as exc:  # e.g. an unwritable PROMETHEUS_MULTIPROC_DIR
            internal_error("aiohttp", exc)
            metrics = NullMetrics()
    state = _State(monitor, metrics, install_options)
    app[_STATE_KEY] = state
    # Outermost: the work of every other middleware of the app is attributed too.
    app.middlewares.insert(0, _middleware(state))
    if metrics_path is not None:
        app.router.add_get(metrics_path, _exposition(registry, metrics_token))
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return monitor


async def _on_startup(app: web.Application) -> None:
    state = app[_STATE_KEY]
    if not state.held:  # started again after a cleanup: hold loopwatch again
        state.monitor = _monitor.acquire(**state.options) or state.monitor
        state.held = state.monitor is not None and _monitor.current() is state.monitor


async def _on_cleanup(app: web.Application) -> None:
    state = app[_STATE_KEY]
    if state.held and state.monitor is not None:
        state.held = False
        _monitor.release(state.monitor)


def _middleware(state: _State) -> Any:
    @web.middleware
    async def loopwatch_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            labels = _labels(state, request)
            token = set_labels(FRAMEWORK, labels.handler)
        except Exception as exc:
            internal_error("aiohttp", exc)
            return await handler(request)
        try:
            metrics = state.metrics
            if metrics is None:
                return await handler(request)
            started = time.perf_counter()
            outcome = "error"
            try:
                response = await handler(request)
                outcome = "error" if response.status >= 500 else "ok"
                return response
            except web.HTTPException as exc:  # aiohttp's way of answering 3xx/4xx
                outcome = "error" if exc.status >= 500 else "ok"
                raise
            except asyncio.CancelledError:  # the client went away
                outcome = "cancelled"
                raise
            finally:
                _observe(state, metrics, labels, outcome, time.perf_counter() - started)
        finally:
            reset_labels(token)

    return loopwatch_middleware


def _observe(
    state: _State, metrics: Metrics | NullMetrics, labels: Labels, outcome: str, seconds: float
) -> None:
    try:
        child = state.children.get((labels, outcome))
        if child is None:
            child = metrics.child(
                metrics.handler_duration_seconds, framework=labels.framework,
                handler=labels.handler, outcome=outcome,
            )
            if len(state.children) >= _CACHE_LIMIT:
                state.children.clear()
            state.children[(labels, outcome)] = child
        child.observe(seconds)
    except Exception as exc:
        internal_error("aiohttp", exc)


def labels_for(request: web.Request) -> Labels:
    """The labels loopwatch gives ``request`` (of an instrumented app; never raises)."""
    state = request.app.get(_STATE_KEY)
    if state is None:
        for app in request.match_info.apps:
            state = app.get(_STATE_KEY)
            if state is not None:
                break
    if state is None:
        return Labels(FRAMEWORK, UNMATCHED)
    try:
        return _labels(state, request)
    except Exception as exc:
        internal_error("aiohttp", exc)
        return state.unmatched


def _labels(state: _State, request: web.Request) -> Labels:
    match_info = request.match_info
    method = request.method
    websocket = _is_websocket(request)
    if match_info.http_exception is not None:
        if match_info.http_exception.status != 405:
            return state.unmatched
        resource = _resource_allowing_not(request)
    else:
        resource = getattr(match_info.route, "resource", None)
    if resource is None:
        return state.unmatched
    key = (id(resource), method, websocket)
    found = state.labels.get(key)
    if found is not None and found[0] is resource:
        return found[1]
    labels = _make(resource, method, websocket)
    if len(state.labels) >= _CACHE_LIMIT:
        state.labels.clear()
    state.labels[key] = (resource, labels)
    return labels


def _make(resource: web.AbstractResource, method: str, websocket: bool) -> Labels:
    template = template_of(resource)
    if template is None:
        return Labels(FRAMEWORK, UNMATCHED)
    verb = method if method in STANDARD_METHODS else "OTHER"
    if websocket:
        verb = "WEBSOCKET"
    return Labels(FRAMEWORK, f"{verb} {template}")


def template_of(resource: web.AbstractResource) -> str | None:
    """The label template of a resource: its canonical path, with sub-application prefixes
    (aiohttp adds them to the resources when the sub-application is added), plus
    ``/{filename}`` for a static directory. ``None`` for a resource without one."""
    canonical = resource.canonical
    if not isinstance(canonical, str):
        return None
    if isinstance(resource, web.StaticResource):
        # A directory served at the root has the prefix "" (aiohttp drops the slash).
        return canonical.rstrip("/") + _STATIC_TAIL
    return canonical if canonical.startswith("/") else None


def _is_websocket(request: web.Request) -> bool:
    # An aiohttp websocket handler is a GET route that upgrades: what the client asked for
    # tells it apart from a plain GET to the same route before the handler runs.
    upgrade = request.headers.get(hdrs.UPGRADE)
    return upgrade is not None and upgrade.lower() == "websocket"


def _resource_allowing_not(request: web.Request) -> web.AbstractResource | None:
    """For a 405: the resource whose path matched (aiohttp's error keeps only the allowed
    methods). Found by asking each resource whether it matches the path, on this rare
    path only; ``None`` when it cannot tell."""
    target = request.rel_url.path
    for resource in _leaf_resources(request.app.router, 0):
        info = resource.get_info()
        if isinstance(resource, web.StaticResource):
            # A static directory answers GET/HEAD for every path below its prefix.
            if target.startswith(str(info.get("prefix", "")).rstrip("/") + "/"):
                return resource
            continue
        pattern = info.get("pattern")
        path = info.get("path")
        if (pattern is not None and pattern.fullmatch(target)) or (
            path is not None and path == target
        ):
            return resource
    return None


def _leaf_resources(router: web.UrlDispatcher, depth: int) -> Iterator[web.AbstractResource]:
    if depth > _MAX_DEPTH:
        return
    for resource in router.resources():
        sub = resource.get_info().get("app")
        if isinstance(sub, web.Application):
            yield from _leaf_resources(sub.router, depth + 1)
        else:
            yield resource


def _exposition(registry: CollectorRegistry | None, token: str | None) -> Handler:
    expected = f"Bearer {token}" if token else None

    async def loopwatch_metrics(request: web.Request) -> web.StreamResponse:
        if expected is not None and not hmac.compare_digest(
            request.headers.get(hdrs.AUTHORIZATION, "").encode(), expected.encode()
        ):
            return web.Response(
                status=401, text="unauthorized\n",
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="metrics"'},
            )
        accept = request.headers.get(hdrs.ACCEPT, "")
        loop = asyncio.get_running_loop()
        # Rendering walks every metric (and the multiprocess files): not on the loop.
        body, content_type = await loop.run_in_executor(None, render, registry, accept)
        response = web.Response(body=body)
        response.headers[hdrs.CONTENT_TYPE] = content_type
        return response

    return loopwatch_metrics
