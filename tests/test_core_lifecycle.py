"""install/uninstall, configuration, logging, folding and internal failures."""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.runners
import json
import logging
import sys
import threading
from typing import Any

import pytest
from helpers import reentry_total
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import ConfigError, _monitor
from loopwatch._config import load_config
from loopwatch.testing import capture_incidents, fresh_registry

pytestmark = pytest.mark.core


def patched_attributes() -> dict[str, Any]:
    base = asyncio.base_events.BaseEventLoop
    attrs: dict[str, Any] = {
        "asyncio.run": asyncio.run,
        "runners.run": asyncio.runners.run,
        "BaseEventLoop.run_until_complete": base.__dict__["run_until_complete"],
        "BaseEventLoop.run_forever": base.__dict__["run_forever"],
    }
    if sys.version_info >= (3, 11):
        attrs["Runner.run"] = asyncio.runners.Runner.__dict__["run"]
        attrs["Runner.close"] = asyncio.runners.Runner.__dict__["close"]
    try:
        import uvloop
    except ImportError:
        return attrs
    attrs["uvloop.Loop.run_until_complete"] = uvloop.Loop.run_until_complete
    attrs["uvloop.Loop.run_forever"] = uvloop.Loop.run_forever
    attrs["uvloop.Loop.__dict__"] = sorted(uvloop.Loop.__dict__)
    return attrs


def assert_identical(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for name, value in before.items():
        if name.endswith("__dict__"):
            assert value == after[name], name
        else:
            assert value is after[name], name


def test_install_is_idempotent_and_uninstall_exact() -> None:
    before = patched_attributes()
    first = loopwatch.install(registry=CollectorRegistry())
    assert loopwatch.install() is first
    assert asyncio.run is not before["asyncio.run"]
    loopwatch.uninstall()
    loopwatch.uninstall()
    assert_identical(before, patched_attributes())


def test_concurrent_install_uninstall() -> None:
    before = patched_attributes()
    registry = CollectorRegistry()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            barrier.wait()
            for _ in range(50):
                loopwatch.install(registry=registry)
                loopwatch.uninstall()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_identical(before, patched_attributes())


def test_reconfigure_changes_policy() -> None:
    monitor = loopwatch.install(registry=CollectorRegistry())
    assert monitor.config.on_reentry == "offload"
    assert loopwatch.install(on_reentry="raise") is monitor
    assert monitor.config.on_reentry == "raise"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOOPWATCH_ON_REENTRY", "sometimes"),
        ("LOOPWATCH_BLOCK_THRESHOLD", "-1"),
        ("LOOPWATCH_BLOCK_THRESHOLD", "abc"),
        ("LOOPWATCH_BLOCK_THRESHOLD", "nan"),
        ("LOOPWATCH_LOG_FORMAT", "xml"),
        ("LOOPWATCH_METRICS_PORT", "70000"),
        ("LOOPWATCH_METRICS_PORT", "http"),
        ("LOOPWATCH_DISABLE", "maybe"),
        ("LOOPWATCH_OFFLOAD_TIMEOUT", "0"),
    ],
)
def test_bad_environment_values(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        loopwatch.install()
    message = str(info.value)
    assert variable in message
    assert repr(value) in message
    assert isinstance(info.value, ValueError)
    assert _monitor.current() is None


def test_bad_keyword_values() -> None:
    with pytest.raises(ConfigError, match=r"on_reentry='never'.*offload, raise, reenter"):
        loopwatch.install(on_reentry="never")
    with pytest.raises(TypeError, match="on_reentry_policy"):
        loopwatch.install(on_reentry_policy="raise")  # type: ignore[call-arg]


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPWATCH_ON_REENTRY", "RAISE")
    monkeypatch.setenv("LOOPWATCH_BLOCK_THRESHOLD", "0.25")
    config = load_config({})
    assert (config.on_reentry, config.block_threshold) == ("raise", 0.25)
    assert load_config({"on_reentry": "reenter"}).on_reentry == "reenter"  # keyword wins


def test_disable(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("LOOPWATCH_DISABLE", "1")
    run = asyncio.run
    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        monitor = loopwatch.install()
        loopwatch.install()
    assert not monitor.enabled
    assert asyncio.run is run
    assert [r.getMessage() for r in caplog.records].count(
        "disabled by LOOPWATCH_DISABLE; install() did nothing"
    ) == 1


def helper() -> None:
    asyncio.run(asyncio.sleep(0))


def test_repeats_fold_into_one_line(caplog: pytest.LogCaptureFixture) -> None:
    registry = fresh_registry()
    loopwatch.install(registry=registry)

    async def main() -> None:
        for _ in range(500):
            helper()

    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        asyncio.run(main())
        during = [r for r in caplog.records if r.name == "loopwatch"]
        loopwatch.uninstall()  # flushes the folded count
    lines = [r for r in caplog.records if r.name == "loopwatch"]
    assert reentry_total(registry) == 500
    assert len(during) == 1
    assert len(lines) == 2
    assert "+499 folded" in lines[1].getMessage()
    assert lines[1].loopwatch["folded"] == 499  # type: ignore[attr-defined]


def test_incidents_are_aggregated_per_fingerprint() -> None:
    loopwatch.install(registry=CollectorRegistry())

    async def main() -> None:
        for _ in range(7):
            helper()

    asyncio.run(main())
    found = loopwatch.incidents()
    assert len(found) == 1
    assert found[0].count == 7
    assert found[0].first_seen <= found[0].last_seen


def test_json_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    loopwatch.install(registry=CollectorRegistry(), log_format="json")

    async def main() -> None:
        with loopwatch.handler_context("fastapi", 'GET /a"b\nc'):
            helper()

    asyncio.run(main())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    record = json.loads(err[0])
    assert record["level"] == "WARNING"
    assert record["loopwatch"]["kind"] == "reentry"
    assert record["loopwatch"]["handler"] == 'GET /a"b\nc'
    assert record["loopwatch"]["site"]["function"] == "helper"


def test_text_format_when_nothing_else_logs(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        loopwatch.install(registry=CollectorRegistry())
        asyncio.run(_call_helper())
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert "reentry asyncio.run [offloaded]" in err
    assert "hint:" in err
    assert "in helper" in err
    assert "library frames" in err  # folded away in text; all there in JSON
    assert "asyncio/runners.py" not in err


async def _call_helper() -> None:
    helper()


class Exploding(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise OSError("disk full")

    def handle(self, record: logging.LogRecord) -> bool:  # bypass handleError on purpose
        self.emit(record)
        return True


def test_raising_log_handler_never_reaches_host(capsys: pytest.CaptureFixture[str]) -> None:
    registry = CollectorRegistry()
    bad = Exploding()
    logger = logging.getLogger("loopwatch")
    logger.addHandler(bad)
    try:
        loopwatch.install(registry=registry)

        async def main() -> int:
            for _ in range(3):
                helper()
            asyncio.run(asyncio.sleep(0))  # another fingerprint: logs again, fails again
            return 1

        assert asyncio.run(main()) == 1
    finally:
        logger.removeHandler(bad)
    assert (
        registry.get_sample_value("loopwatch_internal_errors_total", {"component": "logging"}) == 2
    )
    assert capsys.readouterr().err.count("internal error in logging") == 1


def test_raising_listener_is_counted() -> None:
    registry = CollectorRegistry()
    monitor = loopwatch.install(registry=registry)

    def bad(_: object) -> None:
        raise ValueError("listener bug")

    monitor.add_listener(bad)
    asyncio.run(_call_helper())
    assert (
        registry.get_sample_value("loopwatch_internal_errors_total", {"component": "listener"}) == 1
    )


def test_metrics_created_once_per_registry() -> None:
    from loopwatch.metrics import get_metrics

    registry = CollectorRegistry()
    assert get_metrics(registry) is get_metrics(registry)
    loopwatch.install(registry=registry)
    loopwatch.uninstall()
    loopwatch.install(registry=registry)
    info = [s for m in registry.collect() if m.name == "loopwatch_info" for s in m.samples]
    assert info and info[0].labels["on_reentry"] == "offload"


def test_registry_clash_is_a_clear_error() -> None:
    from prometheus_client import Gauge

    registry = CollectorRegistry()
    Gauge("loopwatch_reentry_total", "not ours", registry=registry)
    with pytest.raises(loopwatch.LoopwatchError, match="already registered"):
        loopwatch.install(registry=registry)
    assert _monitor.current() is None


def test_handler_cap_folds_into_other() -> None:
    from loopwatch.metrics import get_metrics

    registry = CollectorRegistry()
    metrics = get_metrics(registry, label_cap=3)
    for i in range(10):
        metrics.child(metrics.event_loop_blocks_total, framework="none", handler=f"h{i}").inc()
    values = {
        s.labels["handler"]
        for m in registry.collect()
        if m.name == "loopwatch_event_loop_blocks"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert values == {"h0", "h1", "h2", "__other__"}
    assert (
        registry.get_sample_value(
            "loopwatch_label_overflow_total", {"metric": "loopwatch_event_loop_blocks_total"}
        )
        == 7
    )


def test_handler_context_validates() -> None:
    with pytest.raises(ConfigError, match="framework='flask'"):
        with loopwatch.handler_context("flask", "GET /"):
            pass
    with loopwatch.handler_context("discord", "command:ping") as labels:
        assert labels.handler == "command:ping"


def test_capture_incidents_installs_and_removes() -> None:
    run = asyncio.run
    with capture_incidents(registry=CollectorRegistry()) as seen:
        asyncio.run(_call_helper())
    assert [i.kind for i in seen] == ["reentry"]
    assert asyncio.run is run


def test_public_names() -> None:
    for name in loopwatch.__all__:
        assert getattr(loopwatch, name) is not None
        assert name == "__version__" or getattr(loopwatch, name).__doc__
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, loopwatch.LoopwatchError)


def test_info_names_the_loop_started_after_install(loop_factory: Any) -> None:
    registry = CollectorRegistry()
    loopwatch.install(registry=registry)

    async def main() -> None:
        asyncio.run(asyncio.sleep(0))  # offloaded: its worker loop must not be the one named

    loop = loop_factory()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    info = [
        s.labels for m in registry.collect() if m.name == "loopwatch_info" for s in m.samples
    ]
    assert len(info) == 1
    assert info[0]["loop"] == _monitor.loop_name(loop)
