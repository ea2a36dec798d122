"""FastAPI adapter: one call installs loopwatch, labels every request, serves ``/metrics``.

::

    from fastapi import FastAPI
    from loopwatch.adapters.fastapi import instrument

    app = FastAPI()
    instrument(app)

Incidents and metrics raised inside a request carry ``framework="fastapi"`` and the
route template as ``handler``, with the prefixes of nested ``include_router`` calls and
mounts (``GET /api/v1/users/{uid}``), never the server's ``root_path``.
"""

from __future__ import annotations

from typing import Any

try:
    from fastapi import FastAPI
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "loopwatch.adapters.fastapi needs FastAPI: pip install 'loopwatch[fastapi]'"
    ) from exc

from prometheus_client import CollectorRegistry

from .._monitor import Monitor
from .starlette import instrument_app

__all__ = ["instrument"]


def instrument(
    app: FastAPI,
    *,
    metrics_path: str | None = "/metrics",
    metrics_token: str | None = None,
    registry: CollectorRegistry | None = None,
    handler_metrics: bool = False,
    **install_options: Any,
) -> Monitor:
    """Install loopwatch, add :class:`~loopwatch.adapters.asgi.LoopwatchMiddleware` and
    mount the exposition at ``metrics_path`` (not in the OpenAPI schema).

    ``metrics_path=None`` mounts nothing (use ``loopwatch.metrics.start_http_server`` on
    127.0.0.1); ``metrics_token`` requires ``Authorization: Bearer <token>``. The
    exposition runs off the event loop and, under ``PROMETHEUS_MULTIPROC_DIR``, adds up
    every worker. Other keywords go to :func:`loopwatch.install`.
    """
    return instrument_app(
        app, "fastapi", metrics_path=metrics_path, metrics_token=metrics_token,
        registry=registry, handler_metrics=handler_metrics, **install_options,
    )
