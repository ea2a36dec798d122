"""Starlette adapter: one call installs loopwatch, labels every request, serves ``/metrics``.

::

    from starlette.applications import Starlette
    from loopwatch.adapters.starlette import instrument

    app = Starlette(routes=[...])
    instrument(app)

Incidents and metrics raised inside a request carry ``framework="starlette"`` and the
route template as ``handler`` (see :mod:`loopwatch.adapters.asgi`).
"""

from __future__ import annotations

from typing import Any

try:
    from starlette.applications import Starlette
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "loopwatch.adapters.starlette needs Starlette: pip install 'loopwatch[starlette]'"
    ) from exc

from prometheus_client import CollectorRegistry

from .. import _monitor
from ..metrics import make_asgi_app
from .asgi import LoopwatchMiddleware, Receive, Scope, Send

__all__ = ["instrument"]


def instrument(
    app: Starlette,
    *,
    metrics_path: str | None = "/metrics",
    metrics_token: str | None = None,
    registry: CollectorRegistry | None = None,
    handler_metrics: bool = False,
    **install_options: Any,
) -> _monitor.Monitor:
    """Install loopwatch, add :class:`LoopwatchMiddleware` and mount the exposition.

    ``metrics_path`` (``None``: do not mount; use ``loopwatch.metrics.start_http_server``
    on 127.0.0.1 instead) serves the metrics off the event loop, from every worker's
    values under ``PROMETHEUS_MULTIPROC_DIR``; with ``metrics_token`` it requires
    ``Authorization: Bearer <token>``. ``<metrics_path>/tasks`` serves the live task view
    when loopwatch is installed with ``tasks_endpoint=True``, behind the same token.
    Other keywords go to :func:`loopwatch.install`.
    Call it before the app starts serving; calling it again on the same app adds nothing.
    """
    return instrument_app(
        app, _framework_of(app), metrics_path=metrics_path, metrics_token=metrics_token,
        registry=registry, handler_metrics=handler_metrics, **install_options,
    )


def instrument_app(
    app: Starlette,
    framework: str,
    *,
    metrics_path: str | None,
    metrics_token: str | None,
    registry: CollectorRegistry | None,
    handler_metrics: bool,
    **install_options: Any,
) -> _monitor.Monitor:
    """What both ``instrument`` functions do, for ``framework``."""
    if metrics_path is not None and not metrics_path.startswith("/"):
        raise ValueError(f"instrument: metrics_path={metrics_path!r} must start with '/'")
    if registry is not None:
        install_options["registry"] = registry
    monitor = _monitor.install(**install_options)
    if not monitor.enabled:
        return monitor  # LOOPWATCH_DISABLE: leave the app exactly as it is
    if not any(getattr(m, "cls", None) is LoopwatchMiddleware for m in app.user_middleware):
        app.add_middleware(
            LoopwatchMiddleware, registry=registry, handler_metrics=handler_metrics,
            framework=framework,
        )
    if metrics_path is not None and not any(
        isinstance(getattr(route, "endpoint", None), _Exposition) for route in app.routes
    ):
        # An ASGI endpoint: Starlette hands a class instance the raw scope/receive/send.
        endpoint: Any = _Exposition(make_asgi_app(registry, token=metrics_token))
        app.add_route(metrics_path, endpoint, name="loopwatch_metrics", include_in_schema=False)
        # The task view: answers only with tasks_endpoint=True (404 otherwise).
        app.add_route(
            metrics_path.rstrip("/") + "/tasks", endpoint, name="loopwatch_tasks",
            include_in_schema=False,
        )
    return monitor


class _Exposition:
    """The metrics app as a route endpoint (a class instance, so Starlette passes ASGI)."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _framework_of(app: object) -> str:
    modules = {cls.__module__.partition(".")[0] for cls in type(app).__mro__}
    return "fastapi" if "fastapi" in modules else "starlette"
