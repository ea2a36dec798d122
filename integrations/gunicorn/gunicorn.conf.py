"""gunicorn configuration for an ASGI app watched by loopwatch, with multiprocess metrics.

    gunicorn -c integrations/gunicorn/gunicorn.conf.py myservice:app

What it sets up:

- uvicorn workers (``WEB_CONCURRENCY`` of them, 2 by default) on 127.0.0.1:8080; pass
  ``-b`` to listen elsewhere.
- prometheus-client multiprocess mode. Each worker writes its metric values to files in
  ``PROMETHEUS_MULTIPROC_DIR``; ``/metrics`` answered by any worker adds up all of them.
  The directory (a temporary one when the variable is unset) is emptied when gunicorn
  starts, so counts of a previous run do not leak in, and the files of a worker that
  exited are marked dead so its live gauges stop counting.
- ``loopwatch.install()`` in every worker after the app is loaded and before its event
  loop starts. ``LOOPWATCH_*`` variables configure it as usual.

The app serves the metrics itself: ``loopwatch.adapters.fastapi.instrument(app)`` (or
the Starlette one) mounts ``/metrics``; with a bare ASGI app, mount
``loopwatch.metrics.make_asgi_app()``. Scrape the gunicorn address once (see
integrations/prometheus/scrape.yml). Keep ``preload_app`` off: loopwatch must start in
each worker, not in the arbiter before it forks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# prometheus_client chooses where values live when it is first imported, from this
# variable. The config is read by the arbiter before it imports anything else, and
# workers inherit its environment: setting the variable here covers every process.
# A reload (SIGHUP) reads this file again: the marker remembers that the directory is ours.
_OWNED_MARKER = "GUNICORN_LOOPWATCH_OWNED_MULTIPROC_DIR"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="loopwatch-metrics-")
    os.environ[_OWNED_MARKER] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
MULTIPROC_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

bind = ["127.0.0.1:8080"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# uvicorn-worker is where uvicorn's gunicorn worker lives now; uvicorn.workers is the
# deprecated copy that uvicorn still ships.
worker_class = (
    "uvicorn_worker.UvicornWorker"
    if importlib.util.find_spec("uvicorn_worker") is not None
    else "uvicorn.workers.UvicornWorker"
)
preload_app = False
graceful_timeout = 20


def on_starting(server: Any) -> None:
    """In the arbiter, before any worker exists: start from an empty metrics directory."""
    MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's own files: the variable may point at a shared directory.
    for stale in MULTIPROC_DIR.glob("*.db"):
        stale.unlink(missing_ok=True)
    if os.environ.pop("LOOPWATCH_METRICS_PORT", None) is not None:
        # Every worker would try to bind the same port; the app's /metrics already
        # serves the values of all workers.
        server.log.warning(
            "LOOPWATCH_METRICS_PORT is ignored under gunicorn: scrape the app's /metrics"
        )
    server.log.info("prometheus multiprocess directory: %s", MULTIPROC_DIR)


def post_worker_init(worker: Any) -> None:
    """In each worker, after the app is loaded and before its event loop runs."""
    import loopwatch

    loopwatch.install()


def child_exit(server: Any, worker: Any) -> None:
    """In the arbiter, once a worker has exited (crash, timeout, restart or shutdown)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """In the arbiter, at shutdown: remove the directory if this config created it."""
    if os.environ.get(_OWNED_MARKER) == str(MULTIPROC_DIR):
        shutil.rmtree(MULTIPROC_DIR, ignore_errors=True)
