"""Installed with its defaults, loopwatch changes nothing the watched program can observe.

No timer or handle in a stdlib loop's schedule, nothing set on a loop instance, no
reference that keeps a closed loop alive, nested runs that cannot work failing at once
with asyncio's own error, bounded nesting, the coroutine's own exceptions unchanged, no
thread started for nothing, and subinterpreters left alone.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from helpers import uvloop
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _offload
from loopwatch.testing import capture_incidents

pytestmark = pytest.mark.core

SITE_DIR = Path(loopwatch.__file__).parent / "_sitecustomize"


def test_no_handle_of_loopwatch_in_a_stdlib_loop(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.2)
        handles = [*loop._ready, *loop._scheduled]  # type: ignore[attr-defined]
        return [getattr(h, "_callback", None) for h in handles]

    callbacks = asyncio.run(main())
    owners = {getattr(cb, "__module__", "") or "" for cb in callbacks}
    assert not any(owner.startswith("loopwatch") for owner in owners), callbacks
    assert not [cb for cb in callbacks if "loopwatch" in repr(cb)]


def test_nothing_is_set_on_the_loop_instance(registry: CollectorRegistry) -> None:
    loop = asyncio.new_event_loop()
    before = dict(vars(loop))
    loopwatch.install(registry=registry)
    try:
        loop.run_until_complete(asyncio.sleep(0.05))
        assert set(vars(loop)) == set(before)
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_thousand_closed_loops_are_not_kept_alive(kind: str, registry: CollectorRegistry) -> None:
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop  # type: ignore[union-attr]
    loopwatch.install(registry=registry)

    async def fail() -> None:
        raise ValueError("lost")

    async def work() -> None:
        asyncio.get_running_loop().create_task(fail())  # an H4 incident on each loop
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    refs = []
    with capture_incidents() as seen:
        for _ in range(1000):
            loop = factory()
            # asyncio's default handler would log each error, and pytest keeps log records
            # (with the failed task) for its report; loopwatch's hook runs before this one.
            loop.set_exception_handler(lambda loop, context: None)
            loop.run_until_complete(work())
            loop.close()
            refs.append(weakref.ref(loop))
            del loop
        gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert sum(i.kind == "unretrieved_exception" for i in seen) == 1000

    def through_asyncio_run() -> None:
        async def main() -> Any:
            return weakref.ref(asyncio.get_running_loop())

        kept.append(asyncio.run(main()))

    kept: list[weakref.ref[Any]] = []
    for _ in range(50):
        through_asyncio_run()
    gc.collect()
    assert [r for r in kept if r() is not None] == []


def test_recursive_asyncio_run_is_bounded(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    depth = [0]
    threads = [0]

    async def main() -> None:
        depth[0] += 1
        threads[0] = max(threads[0], threading.active_count())
        asyncio.run(main())

    # Threads an earlier test left finishing (an abandoned worker, a server shutting down)
    # are not this test's: count from here.
    before = threading.active_count()
    started = time.monotonic()
    # The innermost call fails as asyncio fails it, its coroutine left unawaited (warned).
    with pytest.warns(RuntimeWarning, match="was never awaited"):  # noqa: PT031 - warned at collection
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            asyncio.run(main())
        gc.collect()
    assert depth[0] == _offload.MAX_DEPTH + 1
    # The workers, and loopwatch's own threads that start on demand (watchdog, handlers).
    assert threads[0] - before <= _offload.MAX_DEPTH + 3
    assert time.monotonic() - started < 10  # not the offload timeout


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_the_same_runner_reentered_fails_at_once(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def inner() -> int:
        return 1

    async def outer(runner: asyncio.Runner) -> str:
        try:
            runner.run(inner())
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    started = time.monotonic()
    # As without loopwatch: the error at once, and the rejected coroutine left unawaited.
    with asyncio.Runner() as runner:
        with pytest.warns(RuntimeWarning, match="was never awaited"):  # noqa: PT031 - the warning comes at collection
            message = runner.run(outer(runner))
            gc.collect()
    assert message == "Runner.run() cannot be called from a running event loop"
    assert time.monotonic() - started < 5


def test_the_coroutines_own_timeout_error_reaches_the_caller(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)

    async def times_out() -> None:
        await asyncio.wait_for(asyncio.sleep(10), 0.01)

    async def main() -> BaseException:
        try:
            asyncio.run(times_out())
        except BaseException as exc:
            return exc
        raise AssertionError("no error")

    error = asyncio.run(main())
    assert type(error) is asyncio.TimeoutError
    assert not isinstance(error, loopwatch.LoopwatchError)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_closing_a_closed_runner_starts_no_thread(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    runner = asyncio.Runner()
    runner.close()  # never used

    async def main() -> int:
        before = _offload.worker_threads()
        runner.close()
        asyncio.Runner().close()
        return _offload.worker_threads() - before

    assert asyncio.run(main()) == 0


def test_running_a_closed_loop_is_asyncios_error_alone(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_forever()
    assert registry.get_sample_value(
        "loopwatch_internal_errors_total", {"component": "loop_start"}
    ) is None


@pytest.mark.skipif(sys.version_info < (3, 12), reason="isolated subinterpreters: 3.12+")
def test_subinterpreters_are_left_alone(tmp_path: Path) -> None:
    script = tmp_path / "subinterpreter.py"
    script.write_text(textwrap.dedent("""
        import asyncio  # loopwatch installs in the main interpreter once asyncio is imported
        import sys
        try:
            import _interpreters as interpreters
        except ImportError:
            import _xxsubinterpreters as interpreters
        interp = interpreters.create()
        code = "import sys, asyncio; assert 'loopwatch' not in sys.modules"
        result = interpreters.run_string(interp, code)
        interpreters.destroy(interp)
        assert result is None, result
        assert 'loopwatch' in sys.modules  # the main interpreter has it
        print("ok")
    """))
    env = {**os.environ, "PYTHONPATH": str(SITE_DIR)}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "internal error" not in out.stderr


def test_a_loop_with_a_selector_of_its_own_is_not_probed(registry: CollectorRegistry) -> None:
    # A test double (CPython's TestLoop, a mocked selector): loopwatch cannot see its waits,
    # so it reports nothing about it rather than guessing.
    import selectors

    class OwnSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def select(self, timeout: float | None = None) -> list[Any]:
            return super().select(timeout)

    loopwatch.install(registry=registry)
    loop = asyncio.SelectorEventLoop(OwnSelector())
    try:
        with capture_incidents() as seen:
            loop.run_until_complete(asyncio.sleep(0.4))
    finally:
        loop.close()
    assert [i for i in seen if i.kind == "blocked_loop"] == []
    assert registry.get_sample_value("loopwatch_event_loop_lag_seconds_count") in (None, 0.0)
