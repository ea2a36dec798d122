"""Canaries of ``loopwatch._compat.anyio`` and the executor size in ``_compat.asyncio``.

When an anyio upgrade moves the worker-thread entry point of its asyncio backend, or the
stdlib renames ``ThreadPoolExecutor._max_workers``, the canary named for it fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect

import anyio.to_thread
import pytest

from loopwatch._compat import anyio as anyio_compat
from loopwatch._compat import asyncio as aio

pytestmark = pytest.mark.core


def backend() -> type:
    module = importlib.import_module(anyio_compat.BACKEND_MODULE)
    cls = anyio_compat.backend_class(module)
    assert cls is not None
    return cls


def test_backend_class_and_its_worker_thread_entry() -> None:
    cls = backend()
    entry = vars(cls)[anyio_compat.worker_thread_entry]
    assert isinstance(entry, classmethod)
    assert inspect.iscoroutinefunction(entry.__func__)
    # loopwatch passes func and args on and reads limiter from the keywords.
    params = list(inspect.signature(entry.__func__).parameters)
    assert params[:3] == ["cls", "func", "args"]
    assert "limiter" in params


def test_backend_class_of_something_else_is_none() -> None:
    assert anyio_compat.backend_class(asyncio) is None


def test_to_thread_run_sync_goes_through_the_entry() -> None:
    cls = backend()
    name = anyio_compat.worker_thread_entry
    seen: list[object] = []
    original = vars(cls)[name]

    async def spy(klass: type, func: object, args: tuple[object, ...], **kwargs: object) -> object:
        seen.append(kwargs.get("limiter"))
        return await original.__func__(klass, func, args, **kwargs)

    setattr(cls, name, classmethod(spy))
    try:
        assert asyncio.run(anyio.to_thread.run_sync(pow, 2, 3)) == 8
    finally:
        setattr(cls, name, original)
    assert seen == [None]  # the default limiter is chosen inside the entry


def test_default_thread_limiter_and_size() -> None:
    async def main() -> tuple[object, float]:
        limiter = anyio_compat.default_thread_limiter(backend())
        return limiter, anyio_compat.limiter_size(limiter)

    limiter, size = asyncio.run(main())
    assert size == 40
    assert limiter is not None


def test_executor_size() -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as executor:
        assert aio.executor_size(executor) == 3
    assert aio.executor_size(object()) is None
