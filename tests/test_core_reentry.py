"""H1/H2: the re-entry guard on the stdlib loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from helpers import marked_line, run_on
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import LoopwatchError
from loopwatch.testing import capture_incidents

pytestmark = pytest.mark.core

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
HERE = __file__


async def double(x: int) -> int:
    await asyncio.sleep(0.001)
    return x * 2


class Boom(Exception):
    pass


async def explode() -> None:
    await asyncio.sleep(0)
    raise Boom("inside")


def sync_helper_run(x: int) -> int:
    return asyncio.run(double(x))  # LINE: helper-run


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# LINE: marker``."""
    return marked_line(HERE, marker)


def sample(
    registry: CollectorRegistry,
    api: str,
    action: str,
    handler: str = "__none__",
    framework: str = "none",
) -> float:
    value = registry.get_sample_value(
        "loopwatch_reentry_total",
        {"api": api, "action": action, "framework": framework, "handler": handler},
    )
    return value or 0.0


def test_asyncio_run_offloaded(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def main() -> list[int]:
        return [sync_helper_run(i) for i in range(3)]

    with capture_incidents() as seen:
        assert run_on(loop_factory, main()) == [0, 2, 4]
    assert sample(registry, "asyncio.run", "offloaded") == 3
    incident = seen[0]
    assert incident.kind == "reentry"
    assert incident.api == "asyncio.run"
    assert incident.action == "offloaded"
    assert incident.site is not None
    assert (incident.site.file, incident.site.line) == (HERE, line_of("helper-run"))
    assert incident.site.function == "sync_helper_run"
    assert incident.thread == threading.current_thread().name
    expected_loop = "uvloop.Loop" if "uvloop" in loop_factory.__module__ else "asyncio."
    assert incident.loop.startswith(expected_loop)
    assert incident.duration is not None and incident.duration > 0
    assert (
        registry.get_sample_value(
            "loopwatch_reentry_stall_seconds_count",
            {"api": "asyncio.run", "framework": "none", "handler": "__none__"},
        )
        == 3
    )


def test_run_until_complete_offloaded(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> int:
        loop = asyncio.get_event_loop()
        return loop.run_until_complete(double(21))  # LINE: ruc

    with capture_incidents() as seen:
        assert run_on(loop_factory, main()) == 42
    assert sample(registry, "loop.run_until_complete", "offloaded") == 1
    assert seen[0].site is not None and seen[0].site.line == line_of("ruc")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_runner_run_offloaded(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def main() -> int:
        with asyncio.Runner() as runner:
            first = runner.run(double(1))
            second = runner.run(double(2))
        return first + second

    assert run_on(loop_factory, main()) == 6
    assert sample(registry, "asyncio.Runner.run", "offloaded") == 2


def test_new_loop_inside_running_loop(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    # SDKs often do new_event_loop().run_until_complete(...): "another loop is running".
    loopwatch.install(registry=registry)

    async def main() -> int:
        other = asyncio.new_event_loop()
        try:
            return other.run_until_complete(double(4))
        finally:
            other.close()

    assert run_on(loop_factory, main()) == 8
    assert sample(registry, "loop.run_until_complete", "offloaded") == 1


def test_exception_keeps_its_type(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        with pytest.raises(Boom, match="inside"):
            asyncio.run(explode())
        with pytest.raises(Boom):
            asyncio.get_event_loop().run_until_complete(explode())

    run_on(loop_factory, main())
    assert sample(registry, "asyncio.run", "offloaded") == 1
    assert sample(registry, "loop.run_until_complete", "offloaded") == 1


def test_contextvars_are_carried(loop_factory: LoopFactory) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    loopwatch.install(registry=CollectorRegistry())

    async def read() -> str:
        return var.get()

    async def main() -> str:
        var.set("request-42")
        with loopwatch.handler_context("fastapi", "GET /x"):
            return asyncio.run(read())

    assert run_on(loop_factory, main()) == "request-42"


def test_labels_from_handler_context(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        with loopwatch.handler_context("fastapi", "GET /items/{item_id}"):
            sync_helper_run(1)

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    assert sample(registry, "asyncio.run", "offloaded", "GET /items/{item_id}", "fastapi") == 1
    assert (seen[0].framework, seen[0].handler) == ("fastapi", "GET /items/{item_id}")


def test_raise_policy(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry, on_reentry="raise")
    messages: list[str] = []

    async def main() -> None:
        with pytest.raises(RuntimeError) as info:
            asyncio.run(double(1))
        messages.append(str(info.value))
        with pytest.raises(RuntimeError) as info:
            asyncio.get_event_loop().run_until_complete(double(1))
        messages.append(str(info.value))
        assert type(info.value) is RuntimeError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_on(loop_factory, main())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert "cannot be called from a running event loop" in messages[0]
    assert "already running" in messages[1].lower()
    assert sample(registry, "asyncio.run", "raised") == 1
    assert sample(registry, "loop.run_until_complete", "raised") == 1
    # Nothing ran the rejected coroutine behind the caller's back (uvloop schedules it).
    assert sample(registry, "loop.run_until_complete", "offloaded") == 0


def test_raise_policy_does_not_schedule_on_uvloop(registry: CollectorRegistry) -> None:
    uvloop = pytest.importorskip("uvloop")
    loopwatch.install(registry=registry, on_reentry="raise")
    ran: list[str] = []

    async def side_effect() -> None:
        ran.append("ran")

    async def main() -> None:
        with pytest.raises(RuntimeError):
            asyncio.get_event_loop().run_until_complete(side_effect())
        await asyncio.sleep(0.05)

    run_on(uvloop.new_event_loop, main())
    assert ran == []


def test_cross_thread_is_marshalled(loop_factory: LoopFactory, registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry, on_reentry="raise")  # H2 marshals whatever the policy
    owner_threads: list[str] = []

    async def where() -> str:
        owner_threads.append(threading.current_thread().name)
        await asyncio.sleep(0.001)
        return "done"

    async def main() -> str:
        loop = asyncio.get_running_loop()
        with loopwatch.handler_context("fastapi", "GET /sync"):
            # to_thread carries the context, as Starlette's threadpool does
            return await asyncio.to_thread(lambda: loop.run_until_complete(where()))

    with capture_incidents() as seen:
        assert run_on(loop_factory, main()) == "done"
    assert owner_threads == [threading.current_thread().name]
    assert [i.kind for i in seen] == ["cross_thread_run"]
    assert seen[0].action == "marshalled"
    assert sample(registry, "loop.run_until_complete", "marshalled", "GET /sync", "fastapi") == 1


def test_future_of_running_loop_fails_at_once(loop_factory: LoopFactory) -> None:
    loopwatch.install(registry=CollectorRegistry())

    async def main() -> str:
        fut = asyncio.get_running_loop().create_future()
        with pytest.raises(LoopwatchError, match="needs objects bound to the running loop"):
            asyncio.get_event_loop().run_until_complete(fut)
        fut.cancel()
        return "ok"

    assert run_on(loop_factory, main()) == "ok"


@pytest.mark.timeout(20)
def test_outer_future_fails_fast_not_hang(loop_factory: LoopFactory) -> None:
    loopwatch.install(registry=CollectorRegistry(), offload_timeout=5)

    async def main() -> None:
        fut = asyncio.get_running_loop().create_future()

        async def wait_outer() -> object:
            return await fut

        with pytest.raises(LoopwatchError, match="await it instead"):
            asyncio.run(wait_outer())
        fut.cancel()

    run_on(loop_factory, main())


@pytest.mark.timeout(20)
def test_offload_timeout_bounds_a_hang(loop_factory: LoopFactory) -> None:
    import concurrent.futures

    loopwatch.install(registry=CollectorRegistry(), offload_timeout=0.3)
    cfut: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def main() -> None:
        async def wait_forever() -> int:
            # Only the outer loop would ever complete this; it is stalled meanwhile.
            return await asyncio.wrap_future(cfut)

        with capture_incidents() as seen, pytest.raises(LoopwatchError, match="did not finish"):
            asyncio.run(wait_forever())
        assert seen[0].detail.get("timeout") == "0.3s"

    run_on(loop_factory, main())


def test_nested_offload_inside_offload(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def inner() -> int:
        return sync_helper_run(5)

    async def main() -> int:
        return asyncio.run(inner())

    assert run_on(loop_factory, main()) == 10
    assert sample(registry, "asyncio.run", "offloaded") == 2


def test_no_worker_outlives_its_call(loop_factory: LoopFactory) -> None:
    # Each offloaded call has a thread of its own, joined before the call returns: a
    # program (or a test suite) that counts its threads after the call sees none of ours.
    from loopwatch import _reentry

    loopwatch.install(registry=CollectorRegistry())
    before = {t.name for t in threading.enumerate()}

    async def main() -> set[str]:
        for i in range(20):
            sync_helper_run(i)
        return {t.name for t in threading.enumerate()}

    after = run_on(loop_factory, main())
    assert _reentry.worker_threads() == 0
    assert {name for name in after - before if name.startswith("loopwatch-offload")} == set()


def test_reenter_without_runner_falls_back(registry: CollectorRegistry) -> None:
    # uvloop cannot be driven re-entrantly: the policy falls back to offload and says so.
    uvloop = pytest.importorskip("uvloop")
    loopwatch.install(registry=registry, on_reentry="reenter")

    async def main() -> int:
        return sync_helper_run(3)

    with capture_incidents() as seen:
        assert run_on(uvloop.new_event_loop, main()) == 6
    assert seen[0].action == "offloaded"
    assert "reenter" in seen[0].detail["fallback"]


def test_run_forever_reentry_is_reported(
    loop_factory: LoopFactory, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"(?i)already running"):
            asyncio.get_event_loop().run_forever()

    run_on(loop_factory, main())
    assert sample(registry, "loop.run_forever", "raised") == 1


def test_uninstalled_guard_is_gone(loop_factory: LoopFactory) -> None:
    loopwatch.install(registry=CollectorRegistry())
    loopwatch.uninstall()

    async def main() -> None:
        coro = double(1)
        with pytest.raises(RuntimeError, match="running event loop"):
            asyncio.run(coro)
        coro.close()

    run_on(loop_factory, main())


def test_runs_outside_a_loop_like_the_originals(loop_factory: LoopFactory) -> None:
    loopwatch.install(registry=CollectorRegistry())
    assert asyncio.run(double(2)) == 4
    assert asyncio.run(double(3), debug=True) == 6
    with pytest.raises(Boom):
        asyncio.run(explode())
    with pytest.raises(ValueError, match="coroutine was expected"):
        asyncio.run(42)  # type: ignore[arg-type]
    loop = loop_factory()
    try:
        assert loop.run_until_complete(double(5)) == 10
        fut = loop.create_future()
        loop.call_soon(fut.set_result, "f")
        assert loop.run_until_complete(fut) == "f"
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    if sys.version_info >= (3, 12):
        assert asyncio.run(double(6), loop_factory=loop_factory) == 12
    assert loopwatch.incidents() == []


def test_uvloop_imported_after_install() -> None:
    import subprocess

    code = (
        "import asyncio, loopwatch\n"
        "from prometheus_client import CollectorRegistry\n"
        "r = CollectorRegistry(); loopwatch.install(registry=r)\n"
        "import uvloop\n"
        "assert 'run_until_complete' in uvloop.Loop.__dict__\n"
        "async def one(): return 1\n"
        "async def main(): return asyncio.get_event_loop().run_until_complete(one())\n"
        "loop = uvloop.new_event_loop()\n"
        "print(loop.run_until_complete(main()))\n"
        "print(r.get_sample_value('loopwatch_reentry_total', {'api': 'loop.run_until_complete',"
        " 'action': 'offloaded', 'framework': 'none', 'handler': '__none__'}))\n"
        "loopwatch.uninstall()\n"
        "assert 'run_until_complete' not in uvloop.Loop.__dict__\n"
    )
    pytest.importorskip("uvloop")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1.0"]


def test_nest_asyncio_is_detected_not_fought() -> None:
    import subprocess

    pytest.importorskip("nest_asyncio")
    code = (
        "import asyncio, nest_asyncio, loopwatch\n"
        "nest_asyncio.apply(asyncio.new_event_loop())\n"
        "run = asyncio.run\n"
        "loopwatch.install()\n"
        "assert asyncio.run is run, 'loopwatch replaced nest_asyncio.run'\n"
        "kinds = [i.kind for i in loopwatch.incidents()]\n"
        "print(kinds)\n"
        "loopwatch.uninstall()\n"
        "assert asyncio.run is run\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['foreign_patch']"


def test_incident_has_no_local_values(loop_factory: LoopFactory) -> None:
    loopwatch.install(registry=CollectorRegistry())
    secret = "hunter2-token-value"

    async def main() -> None:
        local_secret = secret  # noqa: F841 - a local the stack must never show
        sync_helper_run(1)

    with capture_incidents() as seen:
        run_on(loop_factory, main())
    dumped = repr([i.as_dict() for i in seen])
    assert secret not in dumped
    assert "sync_helper_run" in dumped


def _reentry_in(loop_factory: LoopFactory, n: int) -> Any:
    async def main() -> None:
        for _ in range(n):
            sync_helper_run(1)

    return run_on(loop_factory, main())
