"""The pytest plugin, run for real: inner pytest sessions (pytester) with and without it.

The inner suite (``HAZARDS``) holds one test per hazard, its twin with the allow marker,
and clean tests that exercise what must not count (the loop's own sockets, blocking work
in threads, stdlib file reads, sync code). Bare, every test passes; under ``--loopwatch``
exactly the hazard tests fail, each with its incident and call site. It runs on
pytest-asyncio (strict and auto modes) and on anyio's plugin, on the stdlib loop and uvloop.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import logging
import pathlib
import re
import socket
import ssl
import time
from typing import Any

import pytest

from loopwatch import _monitor

pytest_plugins = ["pytester"]

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])

HAZARDS = '''
import asyncio
import gc
import http.server
import logging
import mimetypes
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import service

{header}


@pytest.fixture
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{{server.server_address[1]}}/"
    server.shutdown()
    server.server_close()


async def test_loop_kind():
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == "{loop}"


# -- hazards planted in the application module, each with a twin that allows it ---------

async def test_sleep():
    service.pause()


@pytest.mark.loopwatch(allow=["blocking_call"])
async def test_sleep_allowed():
    service.pause()


async def test_socket():
    assert service.ping_pair() == b"x"


@pytest.mark.loopwatch(allow=["blocking_call"])
async def test_socket_allowed():
    assert service.ping_pair() == b"x"


async def test_http_client(http_url):
    assert service.fetch(http_url) == 200


@pytest.mark.loopwatch(allow=["blocking_call"])
async def test_http_client_allowed(http_url):
    assert service.fetch(http_url) == 200


async def test_file_read():
    assert service.load_settings(__file__)


@pytest.mark.loopwatch(allow="blocking_call")
async def test_file_read_allowed():
    assert service.load_settings_text(__file__)


async def test_reentry():
    with pytest.raises(RuntimeError):
        service.total_sync()


@pytest.mark.loopwatch(allow=["reentry"])
async def test_reentry_allowed():
    with pytest.raises(RuntimeError):
        service.total_sync()


async def test_blocked_loop():
    service.crunch()
    await asyncio.sleep(0.05)


@pytest.mark.loopwatch(allow=["blocked_loop"])
async def test_blocked_loop_allowed():
    service.crunch()
    await asyncio.sleep(0.05)


async def test_unretrieved():
    service.spawn_failing()
    await asyncio.sleep(0.01)
    gc.collect()


@pytest.mark.loopwatch(allow=["unretrieved_exception"])
async def test_unretrieved_allowed():
    service.spawn_failing()
    await asyncio.sleep(0.01)
    gc.collect()


async def test_never_awaited():
    service.forget()
    gc.collect()


@pytest.mark.loopwatch(allow=["never_awaited"])
async def test_never_awaited_allowed():
    service.forget()
    gc.collect()


# -- clean: none of this may count -----------------------------------------------------

async def test_clean_tasks_and_threads():
    await asyncio.sleep(0.001)
    await asyncio.create_task(asyncio.sleep(0))
    await asyncio.to_thread(time.sleep, 0.001)
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.001)
    assert await asyncio.to_thread(Path(__file__).read_bytes)


async def test_clean_loop_sockets():
    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"ping\\n")
        assert await reader.readline() == b"ping\\n"
        writer.close()
        await writer.wait_closed()


async def test_clean_blocking_socket_in_a_thread(http_url):
    def fetch():
        with urllib.request.urlopen(http_url) as response:
            return response.status

    assert await asyncio.to_thread(fetch) == 200


async def test_clean_stdlib_reads_and_writes(tmp_path):
    assert mimetypes.guess_type("a.json")[0] == "application/json"
    handler = logging.FileHandler(tmp_path / "app.log")
    log = logging.getLogger("clean-test")
    log.addHandler(handler)
    try:
        log.warning("written on the loop thread")
    finally:
        log.removeHandler(handler)
        handler.close()
    (tmp_path / "out.txt").write_text("hi")


async def test_clean_scaffolding_blocks_on_purpose():
    # The test's own set-up: its peer sockets, a sleep, a block of the loop. Not the app's.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.socket()
    with listener, client:
        client.connect(listener.getsockname())
        peer, _ = listener.accept()
        with peer:
            client.sendall(b"ping")
            assert peer.recv(4) == b"ping"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("127.0.0.1", 9))
    time.sleep(0.001)
    threading.Event().wait(0.4)
    await asyncio.sleep(0.05)


async def test_clean_test_reads_its_expected_data():
    with open(__file__, "rb") as f:  # a test module's own read: scaffolding, not the service
        assert f.read()


def test_clean_sync_code():
    time.sleep(0.001)
    with open(__file__, "rb") as f:
        assert f.read()

    async def main():
        await asyncio.sleep(0)
        return 2

    assert asyncio.run(main()) == 2
'''

SERVICE = """
import asyncio
import socket
import threading
import time
import urllib.request
from pathlib import Path


def pause():
    time.sleep(0.001)  # site:sleep


def ping_pair():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"x")  # site:socket
        return b.recv(1)


def fetch(url):
    with urllib.request.urlopen(url) as response:  # site:http
        return response.status


async def total():
    return 1


def total_sync():
    coro = total()
    try:
        return asyncio.run(coro)  # site:reentry
    finally:
        coro.close()


def crunch():
    threading.Event().wait(0.8)  # site:block


async def boom():
    raise ValueError("lost")


def spawn_failing():
    asyncio.get_running_loop().create_task(boom())


async def forgotten():
    pass


def forget():
    forgotten()  # site:never


def load_settings(path):
    with open(path, "rb") as f:  # site:file
        return f.read()


def load_settings_text(path):
    return Path(path).read_text()
"""

HEADERS = {
    "strict": "pytestmark = pytest.mark.asyncio",
    "auto": "",
    "anyio": "pytestmark = pytest.mark.anyio",
}

UVLOOP_CONFTEST = {
    "strict": """
import uvloop

def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
""",
    "anyio": """
import pytest
import uvloop

@pytest.fixture
def anyio_backend():
    return ("asyncio", {"loop_factory": uvloop.new_event_loop})
""",
}
UVLOOP_CONFTEST["auto"] = UVLOOP_CONFTEST["strict"]
ANYIO_CONFTEST = """
import pytest

@pytest.fixture
def anyio_backend():
    return "asyncio"
"""

# test -> (heading, site in service.py, the function holding the site)
FAILING = {
    "test_sleep": ("blocking_call: time.sleep", "sleep", "pause"),
    "test_socket": ("blocking_call: socket.sendall", "socket", "ping_pair"),
    "test_http_client": ("blocking_call: socket.connect", "http", "fetch"),
    "test_file_read": ("blocking_call: open", "file", "load_settings"),
    "test_reentry": ("reentry: asyncio.run", "reentry", "total_sync"),
    "test_blocked_loop": ("blocked_loop", "block", "crunch"),
    "test_unretrieved": ("unretrieved_exception", None, ""),
    "test_never_awaited": ("never_awaited", "never", "forget"),
}


# anyio's test runner itself fails a test whose task exception nobody retrieved.
BARE_FAILS = {"anyio": {"test_unretrieved", "test_unretrieved_allowed"}}


def _ini(mode: str, enable_in_ini: bool) -> str:
    lines = ["[pytest]", "asyncio_default_fixture_loop_scope = function"]
    if mode == "auto":
        lines.append("asyncio_mode = auto")
    if enable_in_ini:
        lines.append("loopwatch = true")
    return "\n".join(lines) + "\n"


def _outcomes(stdout: str) -> dict[str, str]:
    """nodeid -> PASSED/FAILED/... from the ``-rA`` short summary."""
    found = re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", stdout, re.M)
    return {nodeid.split("::", 1)[1]: outcome for outcome, nodeid in found}


def _site_lines(source: str) -> dict[str, int]:
    lines = source.splitlines()
    return {
        m.group(1): number
        for number, text in enumerate(lines, start=1)
        if (m := re.search(r"# site:(\w+)", text))
    }


def _failure_section(stdout: str, test: str) -> str:
    """The text of one test's failure block (up to the next block header)."""
    match = re.search(rf"^_+ {test} _+$(.*?)(?=^_{{3,}} \S.* _{{3,}}$|^=+ )", stdout, re.M | re.S)
    assert match is not None, f"no failure block for {test}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("mode", ["strict", "auto", "anyio"])
def test_hazards_fail_and_clean_tests_pass_identically(
    pytester: pytest.Pytester, mode: str, loop: str
) -> None:
    source = HAZARDS.format(header=HEADERS[mode], loop=loop)
    pytester.makepyfile(test_hazards=source, service=SERVICE)
    enable_in_ini = mode == "anyio"  # the ini switch, on one setup of each loop
    pytester.makeini(_ini(mode, enable_in_ini))
    if loop == "uvloop":
        pytester.makeconftest(UVLOOP_CONFTEST[mode])
    elif mode == "anyio":
        pytester.makeconftest(ANYIO_CONFTEST)
    sites = _site_lines((pytester.path / "service.py").read_text())

    bare_args = ["-p", "no:cacheprovider", "-rA"]
    if enable_in_ini:
        bare_args.append("--no-loopwatch")
    bare = pytester.runpytest_subprocess(*bare_args)
    bare_outcomes = _outcomes(bare.stdout.str())
    bare_failed = {name for name, outcome in bare_outcomes.items() if outcome != "PASSED"}
    assert len(bare_outcomes) == 24
    assert bare_failed == BARE_FAILS.get(mode, set()), bare.stdout.str()

    watched_args = ["-p", "no:cacheprovider", "-rA"]
    if not enable_in_ini:
        watched_args.append("--loopwatch")
    watched = pytester.runpytest_subprocess(*watched_args)
    out = watched.stdout.str()
    outcomes = _outcomes(out)
    assert set(outcomes) == set(bare_outcomes), out
    failed = {name for name, outcome in outcomes.items() if outcome != "PASSED"}
    assert failed == set(FAILING) | bare_failed, out
    assert all(outcomes[name] == "FAILED" for name in failed), out
    assert "loopwatch: on_reentry=raise block_threshold=0.25s" in out

    for test, (heading, site, function) in FAILING.items():
        block = _failure_section(out, test)
        assert heading in block, block
        if site is not None:
            # The app's line, not the test's, nor a line inside loopwatch or the stdlib.
            assert f"service.py:{sites[site]} in {function}" in block, block
        assert "hint: " in block
        # The marker is suggested only where it would make the test pass.
        passes_when_allowed = test not in bare_failed
        assert ("@pytest.mark.loopwatch(allow=" in block) == passes_when_allowed, block
    assert f"loop {'uvloop.Loop' if loop == 'uvloop' else 'asyncio.'}" in _failure_section(
        out, "test_sleep"
    )
    # Policy raise: the original RuntimeError reached the test (pytest.raises caught it).
    assert "action raised" in _failure_section(out, "test_reentry")
    # The allowed twins passed and are listed in the summary section.
    summary = out[out.index("= loopwatch ="):]
    for test in FAILING:
        if f"{test}_allowed" not in bare_failed:
            assert f"::{test}_allowed" in summary, summary
    assert "allowed by @pytest.mark.loopwatch" in summary


ROUTES_APP = '''
import time

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from loopwatch.adapters.starlette import instrument


async def item(request):
    time.sleep(0.001)  # site:route
    return PlainTextResponse(request.path_params["item_id"])


def close():
    time.sleep(0.001)  # site:teardown


app = Starlette(routes=[Route("/items/{item_id}", item)])
instrument(app, metrics_path=None)
'''

ROUTES = '''
import httpx
import pytest

from routes_app import app, close


@pytest.mark.asyncio
async def test_route_blocks():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/items/42")
    assert response.text == "42"


@pytest.fixture
async def sleeps_in_teardown():
    yield
    close()


@pytest.mark.asyncio
async def test_teardown_blocks(sleeps_in_teardown):
    pass


@pytest.mark.asyncio
@pytest.mark.loopwatch(allow=["blocked_loops"])
async def test_marker_typo():
    pass
'''


def test_route_attribution_teardown_error_and_marker_typo(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_routes=ROUTES, routes_app=ROUTES_APP)
    pytester.makeini(_ini("auto", enable_in_ini=False))
    sites = _site_lines((pytester.path / "routes_app.py").read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--loopwatch")
    out = result.stdout.str()
    found = set(re.findall(r"^(PASSED|FAILED|ERROR) test_routes.py::(\w+)", out, re.M))
    # A test that passed its call and erred in teardown is listed under both.
    assert found == {
        ("FAILED", "test_route_blocks"),
        ("PASSED", "test_teardown_blocks"),
        ("ERROR", "test_teardown_blocks"),
        ("ERROR", "test_marker_typo"),
    }, out
    route = _failure_section(out, "test_route_blocks")
    assert "starlette handler: GET /items/{item_id}" in route, route
    assert f"routes_app.py:{sites['route']} in item" in route, route
    assert "ERROR at teardown of test_teardown_blocks" in out
    assert "incident(s) in teardown" in out
    assert f"routes_app.py:{sites['teardown']} in close" in out
    assert "names unknown kind 'blocked_loops'" in out


NAP_APP = """
import time


def nap():
    time.sleep(0.001)
"""


def _patched_state() -> dict[str, Any]:
    names = ("recv", "recv_into", "send", "sendall", "connect", "accept")
    return {
        "sleep": time.sleep,
        "open": builtins.open,
        "io.open": io.open,
        "socket": {n: socket.socket.__dict__.get(n) for n in names},
        "ssl": {n: ssl.SSLSocket.__dict__.get(n) for n in names},
        "path": {n: pathlib.Path.__dict__.get(n) for n in ("open", "read_text", "read_bytes")},
        "handlers": list(logging.getLogger("loopwatch").handlers),
        "create_task": asyncio.BaseEventLoop.__dict__.get("create_task"),
    }


def test_session_restores_everything_exactly(pytester: pytest.Pytester) -> None:
    pytester.makeini(_ini("strict", enable_in_ini=False))
    pytester.makepyfile(
        test_one="""
        import asyncio
        import app

        def test_sleep_under_a_loop():
            async def main():
                app.nap()
            asyncio.run(main())
        """,
        app=NAP_APP,
    )
    before = _patched_state()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--loopwatch")
    result.assert_outcomes(failed=1)
    assert "blocking_call: time.sleep" in result.stdout.str()
    assert _patched_state() == before
    assert _monitor.current() is None


def test_off_unless_enabled(pytester: pytest.Pytester) -> None:
    pytester.makeini(_ini("strict", enable_in_ini=False))
    pytester.makepyfile(
        test_one="""
        import asyncio
        import app

        def test_sleep_under_a_loop():
            async def main():
                app.nap()
            asyncio.run(main())
        """,
        app=NAP_APP,
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "loopwatch: on_reentry" not in out and "= loopwatch =" not in out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--loopwatch-fail-on=reentry,bogus", "unknown kind(s) bogus"),
        ("--loopwatch-block-threshold=0", "--loopwatch-block-threshold='0' is not accepted"),
        ("--loopwatch-on-reentry=ignore", "--loopwatch-on-reentry='ignore' is not accepted"),
        ("--loopwatch-blocking=sleep,dns", "--loopwatch-blocking: unknown categories dns"),
    ],
)
def test_bad_options_are_usage_errors(pytester: pytest.Pytester, option: str, message: str) -> None:
    pytester.makeini(_ini("strict", enable_in_ini=False))
    pytester.makepyfile(test_one="def test_nothing(): pass")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--loopwatch", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert _monitor.current() is None


def test_fail_on_and_blocking_options_narrow_what_fails(pytester: pytest.Pytester) -> None:
    pytester.makeini(_ini("strict", enable_in_ini=False))
    pytester.makepyfile(
        test_one="""
        import asyncio, time

        import app

        def test_sleep_and_reentry():
            async def inner():
                return 1

            async def main():
                app.nap()
                coro = inner()
                try:
                    asyncio.run(coro)
                except RuntimeError:
                    coro.close()
            asyncio.run(main())
        """,
        app=NAP_APP,
    )
    # Blocking calls not watched, re-entry not failing: the test passes, the summary says why.
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--loopwatch", "--loopwatch-blocking=none",
        "--loopwatch-fail-on=blocked_loop",
    )
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "reentry: asyncio.run" in out and "kind not in loopwatch_fail_on" in out
    assert "blocking_call:" not in out


EXAMPLES = '''
import httpx
import pytest

from examples.fastapi_app import app as fastapi_app
from examples.starlette_app import app as starlette_app

APPS = {"starlette": starlette_app, "fastapi": fastapi_app}
pytestmark = [pytest.mark.asyncio, pytest.mark.parametrize("name", sorted(APPS))]


async def get(name, path):
    transport = httpx.ASGITransport(app=APPS[name])
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


async def test_health(name):
    assert (await get(name, "/health")).json() == {"status": "ok"}


async def test_report(name):
    assert (await get(name, "/reports/7")).json() == {"report_id": 7, "rows": 70}


async def test_slow(name):
    assert (await get(name, "/slow")).status_code == 200
'''


@pytest.mark.slow
def test_project_examples_under_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example apps: clean routes pass as bare, the hazard routes fail with the route."""
    monkeypatch.setenv("PYTHONPATH", str(pathlib.Path(__file__).resolve().parents[1]))
    pytester.makepyfile(test_examples=EXAMPLES)
    pytester.makeini(_ini("strict", enable_in_ini=False))
    bare = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    bare_outcomes = _outcomes(bare.stdout.str())
    assert len(bare_outcomes) == 6 and set(bare_outcomes.values()) == {"PASSED"}, bare.stdout
    watched = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--loopwatch")
    out = watched.stdout.str()
    outcomes = _outcomes(out)
    assert {k for k, v in outcomes.items() if v == "PASSED"} == {
        "test_health[fastapi]", "test_health[starlette]"
    }, out
    # The sync helper's asyncio.run() surfaces as the original error, with the route.
    report = _failure_section(out, r"test_report\[starlette\]")
    assert "RuntimeError: asyncio.run() cannot be called from a running event loop" in report
    assert "starlette handler: GET /reports/{report_id}" in report, report
    example = (pathlib.Path(__file__).resolve().parents[1] / "examples" / "starlette_app.py")
    line = example.read_text().splitlines().index(
        "    return asyncio.run(fetch_report(report_id))"
    ) + 1
    assert f"examples/starlette_app.py:{line} in render_report" in report, report
    slow = _failure_section(out, r"test_slow\[fastapi\]")
    assert "blocking_call: time.sleep at " in slow and "fastapi handler: GET /slow" in slow, slow


def test_the_plugin_builds_no_metrics_and_leaves_the_default_registry_alone(
    pytester: pytest.Pytester,
) -> None:
    # The plugin's install counts into metrics of its own: nothing is imported for them
    # until the suite imports prometheus_client, and even then nothing of loopwatch's lands
    # on the registry the suite's own metrics tests read.
    pytester.makeini(_ini("strict", enable_in_ini=False))
    pytester.makepyfile(
        test_one="""
        import asyncio
        import sys
        import app

        def test_a_nothing_imported():
            assert "prometheus_client" not in sys.modules

        def test_b_default_registry_clean():
            async def main():
                app.nap()
            from prometheus_client import REGISTRY, generate_latest
            asyncio.run(main())
            assert b"loopwatch_" not in generate_latest(REGISTRY)
        """,
        app=NAP_APP,
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--loopwatch")
    result.assert_outcomes(passed=1, failed=1)  # the nap still fails its test
    out = result.stdout.str()
    assert "test_b_default_registry_clean" in out and "blocking_call: time.sleep" in out
    assert "AssertionError" not in out
