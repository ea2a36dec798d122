"""Options: parsed once, handed down, rebound on change; adapters and users share the monitor.

Each option reaches the monitor through one parser, whatever the door (``install()``
keywords, ``LOOPWATCH_*`` variables, ``loopwatch run`` flags, the pytest plugin, the
discord adapter). A reconfigure rebuilds what was built from a changed field; an install the
user made is never undone by an adapter that lets go; a bad value gets one clear line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port
from prometheus_client import CollectorRegistry, Counter

import loopwatch
from loopwatch import _config, _frames, _monitor
from loopwatch.adapters.asgi import LoopwatchMiddleware
from loopwatch.testing import capture_incidents

pytestmark = pytest.mark.core


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


async def _spin(iterations: int = 30) -> None:
    for _ in range(iterations):
        await asyncio.sleep(0.002)


async def _call_asgi(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays until the response is done
        return {"type": "http.disconnect"}  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _http_scope(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), **extra,
    }


# -- bug 4: a reconfigured registry moves everything bound to it ---------------------------


def test_a_new_registry_moves_the_lag_histogram_and_the_metrics_server() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Counter("only_on_second", "marks the second registry", registry=second).inc()
    port = free_port()
    monitor = loopwatch.install(registry=first, metrics_port=port, lag_tick=0.001)
    assert "only_on_second" not in _scrape(port)
    # What `loopwatch run` and then `instrument(app, registry=R)` do.
    loopwatch.install(registry=second)
    asyncio.run(_spin())
    assert (second.get_sample_value("loopwatch_event_loop_lag_seconds_count") or 0) > 0
    lag_on_first = first.get_sample_value("loopwatch_event_loop_lag_seconds_count") or 0
    asyncio.run(_spin())
    assert first.get_sample_value("loopwatch_event_loop_lag_seconds_count") == lag_on_first
    assert monitor.metrics_server is not None
    assert monitor.metrics_server.port == port
    assert "only_on_second" in _scrape(port)


def test_a_middleware_without_a_registry_follows_the_monitors() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    first, second = CollectorRegistry(), CollectorRegistry()

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    loopwatch.install(registry=first)
    app = LoopwatchMiddleware(Starlette(routes=[Route("/hi", hello)]), handler_metrics=True)
    asyncio.run(_call_asgi(app, _http_scope("/hi")))
    loopwatch.install(registry=second)
    asyncio.run(_call_asgi(app, _http_scope("/hi")))
    labels = {"framework": "starlette", "handler": "GET /hi", "outcome": "ok"}
    name = "loopwatch_handler_duration_seconds_count"
    assert first.get_sample_value(name, labels) == 1
    assert second.get_sample_value(name, labels) == 1


def test_the_info_gauge_moves_with_the_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    loopwatch.install(registry=first)
    loopwatch.install(registry=second, on_reentry="raise")
    infos = [s for m in second.collect() if m.name == "loopwatch_info" for s in m.samples]
    assert [s.labels["on_reentry"] for s in infos if s.value == 1] == ["raise"]
    left = [s for m in first.collect() if m.name == "loopwatch_info" for s in m.samples]
    assert [s for s in left if s.value == 1] == []


# -- bug 5: the info gauge in prometheus_client's multiprocess mode ------------------------


def test_the_info_gauge_is_right_in_multiprocess_mode(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import asyncio, loopwatch
        from loopwatch.metrics import multiprocess_registry

        monitor = loopwatch.install(on_reentry="offload")
        asyncio.run(asyncio.sleep(0))          # the loop label changes
        monitor.reconfigure(on_reentry="raise")
        monitor.reconfigure(on_reentry="reenter")
        live = [
            s.labels["on_reentry"] + "/" + s.labels["loop"]
            for m in multiprocess_registry().collect() if m.name == "loopwatch_info"
            for s in m.samples if s.value == 1
        ]
        print(",".join(live))
        print("errors", loopwatch.metrics.get_metrics().registry.get_sample_value(
            "loopwatch_internal_errors_total", {"component": "metrics"}))
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env.pop("LOOPWATCH_ON_REENTRY", None)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    live, errors = done.stdout.splitlines()
    assert live == "reenter/asyncio._UnixSelectorEventLoop"
    assert errors in ("errors None", "errors 0.0")
    assert "Removal of labels" not in done.stderr


# -- bug 6: http.response.pathsend ---------------------------------------------------------


def test_a_file_sent_with_pathsend_counts_as_ok(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    served = tmp_path / "report.txt"
    served.write_text("all good\n")

    async def report(request: Any) -> FileResponse:
        return FileResponse(served)

    app = LoopwatchMiddleware(
        Starlette(routes=[Route("/report", report)]), registry=registry, handler_metrics=True,
    )
    scope = _http_scope("/report", extensions={"http.response.pathsend": {}})
    sent = asyncio.run(_call_asgi(app, scope))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    name = "loopwatch_handler_duration_seconds_count"
    labels = {"framework": "starlette", "handler": "GET /report"}
    assert registry.get_sample_value(name, {**labels, "outcome": "ok"}) == 1
    assert registry.get_sample_value(name, {**labels, "outcome": "cancelled"}) is None


# -- bug 8: capture_incidents leaves an installed monitor as it was -------------------------


def test_capture_incidents_restores_the_options_it_changed(registry: CollectorRegistry) -> None:
    monitor = loopwatch.install(on_reentry="offload", block_threshold=0.2)
    other = CollectorRegistry()
    with capture_incidents(on_reentry="raise", registry=other) as seen:
        assert monitor.config.on_reentry == "raise"
        assert monitor.config.registry is other
    assert seen == []
    assert _monitor.current() is monitor
    assert monitor.config.on_reentry == "offload"
    assert monitor.config.registry is None
    assert monitor.config.block_threshold == 0.2


def test_capture_incidents_leaves_an_install_made_inside_it() -> None:
    with capture_incidents():
        monitor = loopwatch.install(on_reentry="raise")
    assert _monitor.current() is monitor
    assert monitor.config.on_reentry == "raise"


# -- bug 9: an adapter's release never undoes the user's install ---------------------------


def test_an_explicit_install_after_an_adapter_attached_survives_its_release() -> None:
    held = _monitor.acquire()
    assert held is not None
    mine = loopwatch.install(on_reentry="raise")
    assert mine is held
    _monitor.release(held)
    assert _monitor.current() is mine
    assert mine.config.on_reentry == "raise"


def test_an_explicit_install_survives_the_discord_extension_unloading() -> None:
    from discord_harness import BotHarness, make_bot

    async def main() -> None:
        bot = make_bot()
        async with BotHarness(bot):
            await bot.load_extension("loopwatch.adapters.discord")
            loopwatch.install()
            await bot.unload_extension("loopwatch.adapters.discord")
        assert _monitor.current() is not None

    asyncio.run(main())


def test_the_adapters_own_install_goes_with_its_release() -> None:
    held = _monitor.acquire()
    assert held is not None
    _monitor.release(held)
    assert _monitor.current() is None


# -- also seen -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["<string>", "<stdin>"])
def test_code_given_on_the_command_line_is_user_code(name: str) -> None:
    assert _frames.is_user_file(name)


def test_python_dash_c_code_gets_its_own_line_as_the_site() -> None:
    script = (
        "import asyncio, loopwatch\n"
        "from prometheus_client import CollectorRegistry\n"
        "loopwatch.install(registry=CollectorRegistry())\n"
        "async def main():\n"
        "    return asyncio.run(asyncio.sleep(0, result=1))\n"
        "asyncio.run(main())\n"
        "(i,) = [i for i in loopwatch.incidents() if i.kind == 'reentry']\n"
        "print(i.site.file, i.site.line)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["<string>", "5"]


def test_the_lag_metric_says_what_it_measures(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    (lag,) = [m for m in registry.collect() if m.name == "loopwatch_event_loop_lag_seconds"]
    assert "timer" not in lag.documentation
    assert "busy" in lag.documentation


@pytest.mark.slow
def test_an_explicit_install_survives_unload_ext_in_a_kernel() -> None:
    from kernel_harness import KernelHarness

    with KernelHarness() as kernel:
        for code in ("%load_ext loopwatch", "import loopwatch; loopwatch.install()",
                     "%unload_ext loopwatch"):
            cell = kernel.execute(code)
            assert cell.error is None, cell.describe()
        cell = kernel.execute("import loopwatch._monitor; print(loopwatch._monitor.current())")
        assert cell.stdout.startswith("<loopwatch._monitor.Monitor"), cell.describe()


# -- one table, one parser -----------------------------------------------------------------


def _keywords(func: Any) -> set[str]:
    import inspect

    return {
        p.name for p in inspect.signature(func).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_every_door_takes_the_options_of_the_table() -> None:

    names = set(_config.OPTIONS)
    assert _keywords(loopwatch.install) == names
    assert _keywords(_monitor.install) == names
    assert _keywords(_monitor.Monitor.reconfigure) == names - {"disable"}
    assert set(_config.Config.__slots__) == names
    config = _config.Config()
    for option in _config.OPTIONS.values():
        assert getattr(config, option.name) == option.default
        assert f"{option.name}:" in (loopwatch.install.__doc__ or "")


def test_a_config_is_read_only_and_replace_makes_a_changed_copy() -> None:
    config = _config.Config()
    with pytest.raises(AttributeError, match="read-only"):
        config.block_threshold = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError, match="read-only"):
        del config.otel
    changed = config.replace(block_threshold=0.5)
    assert changed.block_threshold == 0.5 and config.block_threshold == 0.1
    assert changed != config and changed == _config.Config(block_threshold=0.5)
    assert hash(changed) == hash(_config.Config(block_threshold=0.5))
    assert "block_threshold=0.5" in repr(changed)
    with pytest.raises(TypeError, match="no_such_option"):
        _config.Config(no_such_option=1)


def test_the_table_rows_describe_every_option() -> None:
    rows = _config.option_rows()
    assert [row["name"] for row in rows] == list(_config.OPTIONS)
    for row in rows:
        assert set(row) == {"name", "variable", "type", "default", "accepted", "doc"}
        assert row["doc"] and row["accepted"] and row["type"]
    variables = {row["name"]: row["variable"] for row in rows}
    assert variables["block_threshold"] == "LOOPWATCH_BLOCK_THRESHOLD"
    assert variables["registry"] == ""


@pytest.mark.parametrize("value", ["not an ip", "999.1.1.1", "", "example.com"])
def test_a_bad_metrics_addr_names_the_variable_and_what_is_accepted(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_METRICS_ADDR", value)
    with pytest.raises(loopwatch.ConfigError) as caught:
        loopwatch.install()
    message = str(caught.value)
    assert f"LOOPWATCH_METRICS_ADDR={value!r}" in message
    assert "IP address" in message
    assert _monitor.current() is None


@pytest.mark.parametrize("value", ["127.0.0.1", "::1", "localhost", " 0.0.0.0 "])
def test_good_metrics_addrs(value: str) -> None:
    assert _config.load_config({}, environ={"LOOPWATCH_METRICS_ADDR": value}).metrics_addr == (
        value.strip()
    )


def test_a_typo_in_a_variable_gets_one_warning_naming_the_closest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LOOPWATCH_BLOCK_TRESHOLD", "0.5")
    monkeypatch.setattr(_config, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        loopwatch.install()
        loopwatch.uninstall()
        loopwatch.install()
    said = [r.getMessage() for r in caplog.records if "LOOPWATCH_BLOCK_TRESHOLD" in r.getMessage()]
    assert len(said) == 1
    assert "did you mean LOOPWATCH_BLOCK_THRESHOLD?" in said[0]


def test_metrics_port_zero_binds_a_free_port_and_says_which(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="loopwatch"):
        monitor = loopwatch.install(registry=registry, metrics_port=0)
    server = monitor.metrics_server
    assert server is not None and server.port != 0
    assert "loopwatch_info{" in _scrape(server.port)
    said = [r for r in caplog.records if r.name == "loopwatch"]
    assert [r.getMessage() for r in said] == [
        f"serving metrics on http://127.0.0.1:{server.port}/metrics"
    ]
    assert said[0].levelno == logging.WARNING  # seen without any logging set up


def test_a_port_in_use_is_one_line_and_the_program_goes_on(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monitor = loopwatch.install(registry=registry, metrics_port=port)
        assert monitor.metrics_server is None
        assert asyncio.run(asyncio.sleep(0, result="goes on")) == "goes on"
    said = [r for r in caplog.records if r.name == "loopwatch"]
    assert len(said) == 1 and said[0].exc_info is None
    assert f"127.0.0.1:{port}" in said[0].getMessage() and "in use" in said[0].getMessage()
    assert loopwatch.incidents() == []


@pytest.mark.parametrize("command", [["run", "--", sys.executable, "-c", "pass"], ["doctor"],
                                     ["demo", "--requests", "6"]])
def test_the_command_line_says_a_bad_variable_in_one_line(command: list[str]) -> None:
    env = {**os.environ, "LOOPWATCH_METRICS_ADDR": "999.1.1.1"}
    done = subprocess.run(
        [sys.executable, "-m", "loopwatch", *command], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert "LOOPWATCH_METRICS_ADDR='999.1.1.1'" in line


def test_the_command_line_warns_about_a_typo(tmp_path: Path) -> None:
    env = {**os.environ, "LOOPWATCH_ON_REENTRANT": "raise"}
    done = subprocess.run(
        [sys.executable, "-m", "loopwatch", "run", "--", sys.executable, "-c", "pass"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "unknown variable LOOPWATCH_ON_REENTRANT" in done.stderr
    assert "did you mean LOOPWATCH_ON_REENTRY?" in done.stderr
    # Said once, by the command: the wrapped program and its children write nothing of it
    # (their stderr is theirs; CPython's own tests compare a child's stderr byte for byte).
    assert done.stderr.count("LOOPWATCH_ON_REENTRANT") == 1, done.stderr
    child = (
        "import subprocess, sys; "
        "code = 'import asyncio; asyncio.run(asyncio.sleep(0))'; "
        "r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True); "
        "print(repr(r.stderr))"
    )
    done = subprocess.run(
        [sys.executable, "-m", "loopwatch", "run", "--", sys.executable, "-c", child],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "''", done.stdout


def test_the_discord_adapter_checks_its_arguments_with_the_same_parser() -> None:
    from discord_harness import make_bot

    from loopwatch.adapters import discord as adapter

    with pytest.raises(loopwatch.ConfigError, match=r"metrics_addr='nowhere'.*IP address"):
        adapter.LoopwatchCog(make_bot(), metrics_addr="nowhere")
    with pytest.raises(loopwatch.ConfigError, match="latency_interval=0"):
        adapter.LoopwatchCog(make_bot(), latency_interval=0)


def test_the_state_gauges_move_with_the_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    loopwatch.install(registry=first)
    loopwatch.install(registry=second)

    async def leave_one_behind() -> None:
        with loopwatch.handler_context("none", "job:left"):
            task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        # The scrape runs the refresh: the pending task shows on the new registry only.
        labels = {"framework": "none", "handler": "job:left"}
        assert second.get_sample_value("loopwatch_tasks", labels) == 1
        assert first.get_sample_value("loopwatch_tasks", labels) is None
        task.cancel()

    asyncio.run(leave_one_behind())


def test_loopwatch_run_has_a_flag_for_every_option_with_a_variable() -> None:
    from loopwatch import _config, cli

    options = {o for _, o, _, _ in cli._RUN_FLAGS}
    wanted = {o.name for o in _config.OPTIONS.values() if o.variable and o.name != "disable"}
    assert options == wanted
    env = cli.run_environment({"on_reentry": "auto", "watchdog": "0", "stuck_after": "0"}, {})
    assert (env["LOOPWATCH_ON_REENTRY"], env["LOOPWATCH_WATCHDOG"]) == ("auto", "0")
    assert env["LOOPWATCH_STUCK_AFTER"] == "0"
    with pytest.raises(loopwatch.ConfigError, match="--stuck-after"):
        cli.run_environment({"stuck_after": "-1"}, {})
