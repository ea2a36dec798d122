"""H4/H5: task exceptions never retrieved, tasks destroyed while pending, coroutines never
awaited. The user's exception handler and warning filters keep working exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from helpers import LOOP_KINDS, marked_line, run_on, serve_uvicorn, uvloop
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _runtime, _tasks
from loopwatch._frames import Frame
from loopwatch.testing import capture_incidents

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
HERE = __file__
NEVER_AWAITED = "ignore:coroutine .* was never awaited:RuntimeWarning"


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# LINE: marker``."""
    return marked_line(HERE, marker)


def unretrieved(registry: CollectorRegistry, handler: str, exception: str, fw: str) -> float:
    value = registry.get_sample_value(
        "loopwatch_task_exceptions_unretrieved_total",
        {"framework": fw, "handler": handler, "exception": exception},
    )
    return value or 0.0


def never_awaited_total(registry: CollectorRegistry, handler: str, fw: str) -> float:
    value = registry.get_sample_value(
        "loopwatch_coroutines_never_awaited_total", {"framework": fw, "handler": handler}
    )
    return value or 0.0


def of_kind(seen: list[loopwatch.Incident], kind: str) -> list[loopwatch.Incident]:
    return [i for i in seen if i.kind == kind]


async def fail() -> None:
    await asyncio.sleep(0)
    raise ValueError("lost")  # LINE: raise


async def wait_forever() -> None:
    await asyncio.get_running_loop().create_future()


async def send_email() -> None:
    await asyncio.sleep(0)


def schedule_and_forget() -> None:
    send_email()  # LINE: forgot-await


# -- H4 ------------------------------------------------------------------------------------


async def lose_an_exception() -> None:
    with loopwatch.handler_context("fastapi", "POST /orders"):
        task = asyncio.create_task(fail())
    await asyncio.sleep(0.01)
    assert task.done()
    del task
    gc.collect()


@pytest.mark.parametrize("user_handler", ["before install", "after install", "none"])
def test_unretrieved_exception_is_one_incident_and_the_user_handler_runs(
    loop_factory: LoopFactory, registry: CollectorRegistry, user_handler: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        calls.append(context["message"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if user_handler == "before install":
            loop.set_exception_handler(handler)
        loopwatch.install(registry=registry)
        if user_handler == "after install":
            loop.set_exception_handler(handler)
        assert loop.get_exception_handler() is (None if user_handler == "none" else handler)
        await lose_an_exception()

    with caplog.at_level(logging.ERROR, logger="asyncio"), capture_incidents() as seen:
        run_on(loop_factory, main())
    (incident,) = of_kind(seen, "unretrieved_exception")
    assert (incident.framework, incident.handler) == ("fastapi", "POST /orders")
    assert incident.api == "fail"
    assert incident.site == Frame(HERE, line_of("raise"), "fail")
    assert incident.stack[0] == incident.site
    assert incident.detail["exception"] == "ValueError"
    assert incident.task is not None and incident.task.startswith("Task-")
    assert unretrieved(registry, "POST /orders", "ValueError", "fastapi") == 1
    if user_handler == "none":
        assert calls == []
        logged = [r.getMessage().splitlines()[0] for r in caplog.records if r.name == "asyncio"]
        assert logged == ["Task exception was never retrieved"]
    else:
        assert calls == ["Task exception was never retrieved"]
        assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_retrieved_exceptions_and_other_contexts_are_not_incidents(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)
    calls: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: calls.append(context["message"]))
        task = asyncio.create_task(fail())
        with pytest.raises(ValueError):
            await task
        loop.call_exception_handler({"message": "something else"})
        del task
        gc.collect()

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    # (gc.collect() on a big test process may take past the block threshold: not H4.)
    assert [i for i in seen if i.kind != "blocked_loop"] == []
    assert calls == ["something else"]


def test_pending_task_destroyed(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        with loopwatch.handler_context("discord", "event:on_message"):
            asyncio.create_task(wait_forever(), name="forgotten")  # noqa: RUF006 - on purpose
        await asyncio.sleep(0.01)

    with capture_incidents() as seen:
        loop = loop_factory()
        loop.set_exception_handler(lambda *_: None)  # keep the test output quiet
        loop.run_until_complete(main())
        loop.close()
        del loop
        gc.collect()
    (incident,) = of_kind(seen, "pending_task_destroyed")
    assert (incident.framework, incident.handler) == ("discord", "event:on_message")
    assert incident.api == "wait_forever"
    assert incident.task == "forgotten"
    assert incident.site is not None and incident.site.function == "wait_forever"
    assert "strong reference" in incident.hint


def test_recording_failure_never_reaches_the_host(
    loop_factory: LoopFactory, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(task: Any) -> Any:
        raise RuntimeError("labels broke")

    monkeypatch.setattr(_tasks, "task_labels", broken)
    loopwatch.install(registry=registry)
    calls: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: calls.append(context["message"])
        )
        await lose_an_exception()

    run_on(loop_factory, main())
    assert calls == ["Task exception was never retrieved"]
    assert registry.get_sample_value("loopwatch_internal_errors_total", {"component": "tasks"}) == 1


def test_task_labels_of_every_task_kind() -> None:
    async def main() -> list[Any]:
        with loopwatch.handler_context("starlette", "GET /x"):
            c_task = asyncio.create_task(asyncio.sleep(0))
            py_task = asyncio.tasks._PyTask(asyncio.sleep(0))  # type: ignore[attr-defined]
        plain = asyncio.create_task(asyncio.sleep(0))
        await asyncio.gather(c_task, py_task, plain)
        return [_tasks.task_labels(t) for t in (c_task, py_task, plain)]

    labels = asyncio.run(main())
    assert labels[:2] == [("starlette", "GET /x")] * 2
    assert labels[2] is None


# -- H5 ------------------------------------------------------------------------------------


def test_never_awaited_is_one_incident_and_the_warning_is_unchanged(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        with loopwatch.handler_context("fastapi", "POST /signup"):
            schedule_and_forget()

    with warnings.catch_warnings(record=True) as caught, capture_incidents() as seen:
        warnings.simplefilter("always")
        run_on(loop_factory, main())
    (incident,) = of_kind(seen, "never_awaited")
    assert (incident.framework, incident.handler) == ("fastapi", "POST /signup")
    assert incident.api == "send_email"
    assert incident.site == Frame(HERE, line_of("forgot-await"), "schedule_and_forget")
    assert incident.detail["origin"] == "dropped"
    assert incident.loop != "none"
    assert never_awaited_total(registry, "POST /signup", "fastapi") == 1
    # The user's warning machinery sees what it saw without loopwatch: same text, same
    # category, same location (the line that dropped the coroutine).
    (warning,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert str(warning.message) == "coroutine 'send_email' was never awaited"
    assert (warning.filename, warning.lineno) == (HERE, line_of("forgot-await"))


def test_never_awaited_with_origin_tracking(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    previous = sys.get_coroutine_origin_tracking_depth()
    sys.set_coroutine_origin_tracking_depth(8)
    try:
        holder = [send_email()]  # LINE: created
        with warnings.catch_warnings(record=True) as caught, capture_incidents() as seen:
            warnings.simplefilter("always")
            holder.clear()
    finally:
        sys.set_coroutine_origin_tracking_depth(previous)
    (incident,) = of_kind(seen, "never_awaited")
    assert incident.detail["origin"] == "created"
    assert incident.site is not None and incident.site.line == line_of("created")
    (warning,) = caught
    assert str(warning.message).startswith(
        "coroutine 'send_email' was never awaited\nCoroutine created at (most recent call last)"
    )
    assert "holder = [send_email()]" in str(warning.message)


def test_never_awaited_counts_even_when_the_warning_is_ignored(
    registry: CollectorRegistry,
) -> None:
    loopwatch.install(registry=registry)
    with warnings.catch_warnings(record=True) as caught, capture_incidents() as seen:
        warnings.simplefilter("ignore")
        for _ in range(3):
            schedule_and_forget()
    assert caught == []
    assert len(of_kind(seen, "never_awaited")) == 3
    assert never_awaited_total(registry, "__none__", "none") == 3


def test_never_awaited_error_filter_still_raises_into_unraisablehook(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    loopwatch.install(registry=registry)
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with warnings.catch_warnings(), capture_incidents() as seen:
        warnings.simplefilter("error")
        schedule_and_forget()
    assert [type(u.exc_value) for u in unraisable] == [RuntimeWarning]
    assert len(of_kind(seen, "never_awaited")) == 1


# -- lifecycle -----------------------------------------------------------------------------


def test_uninstall_restores_everything(loop_factory: LoopFactory) -> None:
    original = warnings._warn_unawaited_coroutine  # type: ignore[attr-defined]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        pass

    classes = [asyncio.BaseEventLoop] + ([uvloop.Loop] if uvloop is not None else [])
    before = [vars(cls).get("call_exception_handler") for cls in classes]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(handler)
        loopwatch.install(registry=CollectorRegistry())
        # Hooked at class level: nothing is set on the user's loop.
        assert "call_exception_handler" not in vars(loop)
        assert [vars(cls).get("call_exception_handler") for cls in classes] != before
        owners = {type(getattr(cb, "__self__", None)).__name__ for cb in _runtime.loop_start_hooks}
        assert "Watchdog" in owners  # the probe
        loopwatch.uninstall()
        assert "call_exception_handler" not in vars(loop)
        assert loop.get_exception_handler() is handler

    run_on(loop_factory, main())
    assert [vars(cls).get("call_exception_handler") for cls in classes] == before
    assert warnings._warn_unawaited_coroutine is original  # type: ignore[attr-defined]
    assert _runtime.loop_start_hooks == []


def test_an_instance_override_wins_as_it_would_without_loopwatch(
    loop_factory: LoopFactory,
) -> None:
    # A test or an app that replaces the method on its loop (a mock, say) gets every call,
    # exactly as without loopwatch: the hook is at class level, below the instance.
    calls: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        theirs = lambda context: calls.append(context["message"])  # noqa: E731
        loop.call_exception_handler = theirs  # type: ignore[method-assign]
        loopwatch.install(registry=CollectorRegistry())
        assert loop.call_exception_handler is theirs
        await lose_an_exception()
        loopwatch.uninstall()
        assert loop.call_exception_handler is theirs

    run_on(loop_factory, main())
    assert calls == ["Task exception was never retrieved"]


# -- FastAPI under real uvicorn ------------------------------------------------------------


def _serve(app: Any, loop: str) -> contextlib.AbstractContextManager[str]:
    return serve_uvicorn(app, loop)


@pytest.mark.slow
@pytest.mark.filterwarnings(NEVER_AWAITED)
@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_fastapi_route_leaks_are_attributed_to_it(loop: str, registry: CollectorRegistry) -> None:
    import contextlib

    import httpx
    from fastapi import FastAPI

    from loopwatch.adapters.fastapi import instrument

    user_calls: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: user_calls.append(context["message"])
        )
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders/{order_id}")
    async def create_order(order_id: int) -> dict[str, int]:
        asyncio.create_task(fail())  # noqa: RUF006 - the hazard under test
        schedule_and_forget()
        await asyncio.sleep(0.01)
        return {"order_id": order_id}

    instrument(app, registry=registry)
    with capture_incidents() as seen:
        with _serve(app, loop) as url, httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/orders/7").json() == {"order_id": 7}
            deadline = time.monotonic() + 5
            while not of_kind(seen, "unretrieved_exception") and time.monotonic() < deadline:
                gc.collect()
                time.sleep(0.02)
    handler = "POST /orders/{order_id}"
    (lost,) = of_kind(seen, "unretrieved_exception")
    (forgot,) = of_kind(seen, "never_awaited")
    for incident in (lost, forgot):
        assert (incident.framework, incident.handler) == ("fastapi", handler)
    assert lost.site == Frame(HERE, line_of("raise"), "fail")
    assert forgot.site == Frame(HERE, line_of("forgot-await"), "schedule_and_forget")
    assert unretrieved(registry, handler, "ValueError", "fastapi") == 1
    assert never_awaited_total(registry, handler, "fastapi") == 1
    assert user_calls == ["Task exception was never retrieved"]
