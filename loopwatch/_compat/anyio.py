"""anyio: the asyncio backend's worker-thread entry point. Checked against anyio 4.0–4.16.

anyio runs sync work in threads (``anyio.to_thread.run_sync``, which Starlette's
``run_in_threadpool`` and FastAPI's ``def`` endpoints use) through the classmethod
``run_sync_in_worker_thread`` of its asyncio backend class, in the private module
``anyio._backends._asyncio``. That module is imported the first time anyio runs on asyncio,
not with ``import anyio``. The capacity limiter it uses is public API (``total_tokens``,
``statistics()``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BACKEND_MODULE",
    "backend_class",
    "default_thread_limiter",
    "limiter_size",
    "worker_thread_entry",
]

#: Where the asyncio backend lives (imported lazily by anyio itself).
BACKEND_MODULE = "anyio._backends._asyncio"
#: The classmethod of the backend class that runs one call in a worker thread.
worker_thread_entry = "run_sync_in_worker_thread"


def backend_class(module: Any) -> type | None:
    """The asyncio backend class of ``module`` (``AsyncIOBackend``), or ``None``."""
    cls = getattr(module, "AsyncIOBackend", None)
    if isinstance(cls, type) and worker_thread_entry in vars(cls):
        return cls
    return None


def default_thread_limiter(backend: Any) -> Any:
    """The running loop's default thread limiter (anyio keeps one per loop)."""
    return backend.current_default_thread_limiter()


def limiter_size(limiter: Any) -> float:
    """How many threads ``limiter`` lets run at once."""
    return float(limiter.total_tokens)
