"""Regression tests for bugs found in the core, one per bug, each failing before its fix."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

import loopwatch
from loopwatch import _frames, _watchdog
from loopwatch._frames import Frame
from loopwatch._incidents import Incident
from loopwatch._logging import LogSink
from loopwatch.metrics import Metrics

pytestmark = pytest.mark.core


def watchdog_threads() -> int:
    return sum(t.name == _watchdog.THREAD_NAME for t in threading.enumerate())


def test_install_again_applies_watchdog_and_disable(registry: CollectorRegistry) -> None:
    run = asyncio.run
    monitor = loopwatch.install(registry=registry)
    assert watchdog_threads() == 1
    assert loopwatch.install(watchdog=False) is monitor
    assert watchdog_threads() == 0
    assert loopwatch.install(watchdog=True) is monitor
    assert watchdog_threads() == 1
    disabled = loopwatch.install(disable=True)
    assert not disabled.enabled
    assert asyncio.run is run  # everything restored
    assert watchdog_threads() == 0


def run_script(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=60, env={**os.environ, **env},
    )


def test_loops_started_after_install_under_nest_asyncio_are_watched() -> None:
    pytest.importorskip("nest_asyncio")
    out = run_script("""
        import asyncio, time, nest_asyncio
        from prometheus_client import CollectorRegistry
        import loopwatch
        nest_asyncio.apply(asyncio.new_event_loop())
        loopwatch.install(registry=CollectorRegistry())

        async def fail():
            raise ValueError("lost")

        async def main():
            await asyncio.sleep(0.05)
            time.sleep(0.3)           # a block
            asyncio.get_running_loop().create_task(fail())
            await asyncio.sleep(0.2)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
        import gc; gc.collect()
        print(sorted({i.kind for i in loopwatch.incidents()}))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['blocked_loop', 'foreign_patch', 'unretrieved_exception']"


def test_incident_printed_once_when_logging_is_configured_after_install() -> None:
    out = run_script("""
        import asyncio, logging
        from prometheus_client import CollectorRegistry
        import loopwatch
        loopwatch.install(registry=CollectorRegistry())
        logging.basicConfig()   # as an app does after `loopwatch run`'s sitecustomize

        async def one():
            return 1

        async def main():
            return asyncio.run(one())

        print(asyncio.run(main()))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    lines = [line for line in out.stderr.splitlines() if "reentry asyncio.run" in line]
    assert len(lines) == 1, out.stderr
    # The logger's name is said once: "WARNING:loopwatch:reentry ...", not "loopwatch: loopwatch:".
    assert lines[0].startswith("WARNING:loopwatch:reentry asyncio.run [offloaded]")


def test_own_handler_prints_when_nothing_else_would() -> None:
    out = run_script("""
        import asyncio
        from prometheus_client import CollectorRegistry
        import loopwatch
        loopwatch.install(registry=CollectorRegistry())

        async def one():
            return 1

        async def main():
            return asyncio.run(one())

        asyncio.run(main())
    """)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "reentry asyncio.run" in line]
    assert len(lines) == 1 and " WARNING loopwatch: reentry" in lines[0], out.stderr


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_runner_close_inside_a_loop_is_bounded_by_the_timeout(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry, offload_timeout=0.5)

    async def stubborn():  # type: ignore[no-untyped-def]
        try:
            yield 1
        finally:
            await asyncio.sleep(30)  # closing it never ends

    async def start(agen):  # type: ignore[no-untyped-def]
        await agen.__anext__()

    async def main() -> float:
        runner = asyncio.Runner()
        agen = stubborn()
        runner.run(start(agen))  # offloaded: the runner's loop now holds the generator
        started = time.monotonic()
        with pytest.raises(loopwatch.LoopwatchError, match=r"did not finish within 0\.5s"):
            runner.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < 5


def test_metric_children_keyed_by_label_names_too() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    counter = Counter("swap_total", "d", ["a", "b"], registry=registry)
    metrics.child(counter, a="x", b="y").inc()
    metrics.child(counter, b="x", a="y").inc(5)
    assert registry.get_sample_value("swap_total", {"a": "x", "b": "y"}) == 1
    assert registry.get_sample_value("swap_total", {"a": "y", "b": "x"}) == 5


def incident(api: str) -> Incident:
    now = time.time()
    return Incident(
        kind="reentry", api=api, action="offloaded", framework="none", handler="__none__",
        site=None, stack=(), thread="t", task=None, loop="none", duration=None, count=1,
        first_seen=now, last_seen=now, hint="",
    )


def test_folded_count_survives_eviction_from_the_fold_table(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LogSink(window=60.0, capacity=2)
    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        sink.emit(incident("a"), logging.WARNING, now=0.0)
        sink.emit(incident("a"), logging.WARNING, now=1.0)  # folded
        sink.emit(incident("a"), logging.WARNING, now=2.0)  # folded
        sink.emit(incident("b"), logging.WARNING, now=3.0)
        sink.emit(incident("c"), logging.WARNING, now=4.0)  # evicts "a", which had 2 folded
    messages = [r.getMessage() for r in caplog.records]
    assert sum("reentry a [" in m for m in messages) == 2
    assert any("reentry a [" in m and "(+2 folded" in m for m in messages)


def test_own_frames_and_user_frames_agree_on_relative_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    package = Path(loopwatch.__file__).resolve().parent
    monkeypatch.chdir(package.parent)
    relative = Frame(os.path.join("loopwatch", "_monitor.py"), 1, "report")
    absolute = Frame(str(package / "_monitor.py"), 1, "report")
    for frame in (relative, absolute):
        assert not _frames.is_user_file(frame.file)
        assert _frames.without_own_frames([frame]) == []


def test_log_message_does_not_repeat_the_logger_name(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    loopwatch.install(registry=registry)

    async def one() -> int:
        return 1

    async def main() -> int:
        return asyncio.run(one())

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        assert asyncio.run(main()) == 1
    (record,) = [r for r in caplog.records if r.name == "loopwatch"]
    assert record.getMessage().startswith("reentry asyncio.run [offloaded]")


def test_an_incident_is_a_read_only_record_equal_by_its_fields() -> None:
    first = incident("a")
    with pytest.raises(AttributeError, match="read-only"):
        first.count = 2  # type: ignore[misc]
    same = Incident(**{name: getattr(first, name) for name in Incident.__match_args__})
    assert same == first and same is not first
    assert first.detail == {} and first.detail is not incident("a").detail
    assert "kind='reentry'" in repr(first)
    match first:
        case Incident("reentry", api):
            assert api == "a"
        case _:
            raise AssertionError("positional match")
