"""Litestar adapter: a plugin that installs loopwatch, labels every request, serves ``/metrics``.

::

    from litestar import Litestar
    from loopwatch.adapters.litestar import LoopwatchPlugin

    app = Litestar(route_handlers=[...], plugins=[LoopwatchPlugin()])

Incidents and metrics raised inside a request carry ``framework="litestar"`` and the
route's own path template, as written in the app, router and controller paths, types
included: ``GET /orders/{order_id:int}``, ``GET /api/{version:int}/users/{uid:uuid}``.
A mounted ASGI app (``@asgi("/static", is_mount=True)``) is ``GET /static/{path}``, a
websocket route ``WEBSOCKET /ws/{room:str}``, a method outside the standard set
``OTHER /x``.

Litestar routes a request before any app middleware runs: the plugin's middleware, put
first in the app's list, reads the route handler and template Litestar left in the scope
and looks the route up once per handler and template. A request no route takes (404,
405) never reaches an app middleware; it runs no handler of the user's, and goes
unlabelled.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import MutableMapping
from typing import Any, cast

try:
    from litestar.config.app import AppConfig
    from litestar.handlers import asgi
    from litestar.plugins import InitPluginProtocol
    from litestar.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "loopwatch.adapters.litestar needs Litestar: pip install 'loopwatch[litestar]'"
    ) from exc

from prometheus_client import CollectorRegistry

from .. import _monitor
from .._context import Labels, reset_labels, set_labels
from .._errors import LoopwatchError
from .._runtime import internal_error
from ..metrics import Metrics, NullMetrics, get_metrics, make_asgi_app
from .asgi import STANDARD_METHODS, UNMATCHED

__all__ = ["FRAMEWORK", "LoopwatchPlugin"]

FRAMEWORK = "litestar"
_MOUNT_TAIL = "/{path}"
_CACHE_LIMIT = 4096  # resolved labels kept per plugin; past it the cache starts over


class LoopwatchPlugin(InitPluginProtocol):
    """Install loopwatch with the app, label every request, serve the exposition.

    ``metrics_path`` (``None``: add no route; use ``loopwatch.metrics.start_http_server``
    on 127.0.0.1 instead) serves the metrics off the event loop, from every worker's
    values under ``PROMETHEUS_MULTIPROC_DIR``; with ``metrics_token`` it requires
    ``Authorization: Bearer <token>``. With ``handler_metrics=True`` every request is timed
    in ``loopwatch_handler_duration_seconds{framework="litestar",handler,outcome}``.
    Other keywords go to :func:`loopwatch.install`. The app holds loopwatch from its
    creation until its shutdown (and again from its next startup).
    """

    def __init__(
        self,
        *,
        metrics_path: str | None = "/metrics",
        metrics_token: str | None = None,
        registry: CollectorRegistry | None = None,
        handler_metrics: bool = False,
        **install_options: Any,
    ) -> None:
        if metrics_path is not None and not metrics_path.startswith("/"):
            raise ValueError(f"LoopwatchPlugin: metrics_path={metrics_path!r} must start with '/'")
        self.metrics_path = metrics_path
        self.metrics_token = metrics_token
        self.registry = registry
        self.handler_metrics = handler_metrics
        if registry is not None:
            install_options["registry"] = registry
        self._options = install_options
        self.monitor: _monitor.Monitor | None = None
        self._held = False
        self._metrics: Metrics | NullMetrics | None = None
        self._labels: dict[tuple[int, str, str, str], tuple[object, Labels]] = {}
        self._routes: dict[int, tuple[object, dict[int, list[Any]]]] = {}

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the middleware (first), the metrics route and the lifecycle hooks."""
        self._hold()
        if self.monitor is None:  # LOOPWATCH_DISABLE: leave the app exactly as it is
            return app_config
        if self.handler_metrics:
            try:
                # Created now, so a clash with another metric of that name fails at startup.
                self._metrics = get_metrics(self.registry)
            except LoopwatchError:
                self._release()
                raise
            except Exception as exc:  # e.g. an unwritable PROMETHEUS_MULTIPROC_DIR
                internal_error("litestar", exc)
                self._metrics = NullMetrics()
        app_config.middleware.insert(0, self._middleware)
        if self.metrics_path is not None:
            exposition = make_asgi_app(self.registry, token=self.metrics_token)

            async def loopwatch_metrics(scope: Scope, receive: Receive, send: Send) -> None:
                await exposition(scope, receive, send)  # type: ignore[arg-type]

            options: dict[str, Any] = {"name": "loopwatch_metrics"}
            if "copy_scope" in inspect.signature(asgi).parameters:
                # The exposition changes nothing in the scope (Litestar 2.11+ asks).
                options["copy_scope"] = False
            app_config.route_handlers.append(asgi(self.metrics_path, **options)(loopwatch_metrics))
        app_config.on_startup.append(self._hold)
        app_config.on_shutdown.append(self._release)
        return app_config

    def _hold(self) -> None:
        if not self._held:
            self.monitor = _monitor.acquire(**self._options)
            self._held = self.monitor is not None

    def _release(self) -> None:
        if self._held and self.monitor is not None:
            self._held = False
            _monitor.release(self.monitor)

    def _middleware(self, app: Any) -> Any:
        plugin = self

        async def loopwatch_middleware(scope: Scope, receive: Receive, send: Send) -> None:
            kind: str = scope["type"]
            if kind not in ("http", "websocket"):
                await app(scope, receive, send)
                return
            try:
                labels = plugin.labels_for(cast("MutableMapping[str, Any]", scope))
                token = set_labels(FRAMEWORK, labels.handler)
            except Exception as exc:
                internal_error("litestar", exc)
                await app(scope, receive, send)
                return
            try:
                metrics = plugin._metrics
                if metrics is None:
                    await app(scope, receive, send)
                    return
                status = [0]

                async def tracked(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                started = time.perf_counter()
                outcome = "error"
                try:
                    await app(scope, receive, tracked)
                    ok = kind == "websocket" or 0 < status[0] < 500
                    outcome = "ok" if ok else "error"
                except asyncio.CancelledError:
                    outcome = "cancelled"
                    raise
                finally:
                    plugin._observe(metrics, labels, outcome, time.perf_counter() - started)
            finally:
                reset_labels(token)

        return loopwatch_middleware

    def _observe(
        self, metrics: Metrics | NullMetrics, labels: Labels, outcome: str, seconds: float
    ) -> None:
        try:
            metrics.child(
                metrics.handler_duration_seconds, framework=labels.framework,
                handler=labels.handler, outcome=outcome,
            ).observe(seconds)
        except Exception as exc:
            internal_error("litestar", exc)

    def labels_for(self, scope: MutableMapping[str, Any]) -> Labels:
        """The labels of a routed request's scope (``__unmatched__`` when unknown)."""
        handler = scope.get("route_handler")
        if handler is None:
            return Labels(FRAMEWORK, UNMATCHED)
        template = scope.get("path_template") or ""
        method = scope.get("method") or ""
        key = (id(handler), template, method, scope["type"])
        found = self._labels.get(key)
        if found is not None and found[0] is handler:
            return found[1]
        path = self._route_path(scope.get("litestar_app") or scope.get("app"), handler, template)
        if path is None:
            return Labels(FRAMEWORK, UNMATCHED)
        if scope["type"] == "websocket":
            verb = "WEBSOCKET"
        else:
            verb = method if method in STANDARD_METHODS else "OTHER"
        labels = Labels(FRAMEWORK, f"{verb} {path}")
        if len(self._labels) >= _CACHE_LIMIT:
            self._labels.clear()
        self._labels[key] = (handler, labels)
        return labels

    def _route_path(self, app: Any, handler: Any, template: str) -> str | None:
        """The path, as written (types included), of the route of ``handler`` whose
        template Litestar reported; a mount's path plus ``/{path}``."""
        for attempt in range(2):
            routes = self._index(app, rebuild=attempt > 0).get(id(handler), [])
            for route in routes:
                if getattr(handler, "is_mount", False):
                    base = "" if route.path == "/" else route.path
                    return base + _MOUNT_TAIL
                if route.path_format == template:
                    return str(route.path)
        return None

    def _index(self, app: Any, *, rebuild: bool) -> dict[int, list[Any]]:
        """The app's routes by route handler, built once (again when a handler is new)."""
        found = self._routes.get(id(app))
        if found is not None and found[0] is app and not rebuild:
            return found[1]
        index: dict[int, list[Any]] = {}
        for route in getattr(app, "routes", ()):
            handlers = getattr(route, "route_handlers", None)
            if handlers is None:
                handlers = [getattr(route, "route_handler", None)]
            for handler in handlers:
                if handler is not None:
                    index.setdefault(id(handler), []).append(route)
        if len(self._routes) >= 16:
            self._routes.clear()
        self._routes[id(app)] = (app, index)
        return index
