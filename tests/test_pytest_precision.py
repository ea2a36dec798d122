"""The pytest plugin fails what a maintainer would fix, and only that.

Each rule comes from a misfire on a real project's suite: the test's own peer sockets (A),
a datagram ``connect`` (B), the install mode deciding what is "user code" (C), a test's own
set-up blocking the loop (D), an incident of a nested pytester session (E), loopwatch's own
wrapper doing a blocking call beside blockbuster (F). Every hazard planted in the
application a test calls still fails that test, at the app's line.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def _run(pytester: pytest.Pytester, *args: str) -> tuple[dict[str, str], str]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args)
    out = result.stdout.str()
    found = re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", out, re.M)
    return {nodeid.split("::", 1)[-1]: outcome for outcome, nodeid in found}, out


def _line(path: Path, marker: str) -> int:
    return next(
        n for n, text in enumerate(path.read_text().splitlines(), 1) if f"# {marker}" in text
    )


SCAFFOLDING_TESTS = '''
import asyncio
import socket
import threading
import time
import zlib

import service


async def test_peer_sockets_of_the_test_itself():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.socket()
    with listener, client:
        client.connect(listener.getsockname())
        server_sock, _ = listener.accept()
        with server_sock:
            client.sendall(b"hello")
            assert server_sock.recv(100) == b"hello"
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"


async def test_datagram_connect_in_the_app():
    assert service.udp_peer()[0] == "127.0.0.1"


async def test_the_test_builds_a_big_payload():
    payload = bytes(range(256)) * (16 * 4096)  # 16 MB, built and compressed on the loop
    deadline = time.perf_counter() + 0.4
    while time.perf_counter() < deadline:
        zlib.compress(payload[:1_000_000], 9)
    await asyncio.sleep(0.05)


async def test_a_slow_conftest_fixture(slow_mock):
    await asyncio.sleep(0.05)
    assert slow_mock


async def test_sleep_in_the_test_body():
    time.sleep(0.01)
    threading.Event().wait(0.01)
'''

SCAFFOLDING_CONFTEST = '''
import asyncio
import time

import pytest


@pytest.fixture
async def slow_mock():
    # A conftest that blocks the loop in its set-up (a large autospec, a fixture file).
    deadline = time.perf_counter() + 0.4
    while time.perf_counter() < deadline:
        pass
    await asyncio.sleep(0)
    return True
'''

SCAFFOLDING_SERVICE = '''
import socket


def udp_peer():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", 9))  # records the peer only: never waits
        return sock.getpeername()
'''


def test_scaffolding_and_datagram_connect_fail_nothing(pytester: pytest.Pytester) -> None:
    """Rules A, B, D: the test's own sockets and set-up, a datagram connect: all pass."""
    pytester.makeini(INI)
    pytester.makepyfile(test_scaffold=SCAFFOLDING_TESTS, service=SCAFFOLDING_SERVICE)
    pytester.makeconftest(SCAFFOLDING_CONFTEST)
    outcomes, out = _run(pytester, "--loopwatch")
    assert len(outcomes) == 5 and set(outcomes.values()) == {"PASSED"}, out
    # Seen, said in the summary, not failed.
    summary = out[out.index("= loopwatch ="):]
    assert "from the test's scaffolding at test_scaffold.py:" in summary, summary
    assert "from the test's scaffolding at conftest.py:" in summary, summary


APP_HAZARDS_SERVICE = '''
import asyncio
import socket
import threading
import time


def nap():
    time.sleep(0.4)  # site:nap


def read_peer():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"x")
        return b.recv(1)  # site:recv


async def forever():
    await asyncio.Event().wait()


def start_worker():
    return asyncio.get_running_loop().create_task(forever())  # site:spawn


def start_and_keep():
    return asyncio.create_task(asyncio.sleep(0))


def nested():
    coro = asyncio.sleep(0)
    return asyncio.run(coro)  # site:nested


class Echo(asyncio.Protocol):
    """A server whose connection spawns a task that lives as long as the connection."""

    def connection_made(self, transport):
        self.task = asyncio.get_running_loop().create_task(forever())

    def connection_lost(self, exc):
        self.task.cancel()
'''

APP_HAZARDS_TESTS = '''
import asyncio

import pytest

import service


async def test_app_sleeps():
    service.nap()


@pytest.mark.loopwatch(allow=["blocked_loop"])
async def test_app_sleeps_block_allowed():
    service.nap()


@pytest.mark.loopwatch(allow=["blocking_call"])
async def test_app_sleeps_call_allowed():
    service.nap()


async def test_app_socket_recv():
    assert service.read_peer() == b"x"


async def test_app_leaves_a_task_pending():
    service.start_worker()


@pytest.mark.loopwatch(allow=["pending_task"])
async def test_app_leaves_a_task_pending_allowed():
    service.start_worker()


async def test_app_task_awaited():
    await service.start_and_keep()


async def test_test_leaves_its_own_task():
    asyncio.get_running_loop().create_task(asyncio.sleep(10))


async def test_app_nested_run():
    service.nested()


@pytest.fixture
async def server():
    srv = await asyncio.get_running_loop().create_server(service.Echo, "127.0.0.1", 0)
    yield srv
    srv.close()


async def test_app_server_tasks_are_the_servers(server):
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.01)
    writer.close()
'''


def test_app_hazards_fail_at_the_apps_line(pytester: pytest.Pytester) -> None:
    """Precision keeps recall: the app's sleep, socket, left task, nested run fail."""
    pytester.makeini(INI)
    pytester.makepyfile(test_app=APP_HAZARDS_TESTS, service=APP_HAZARDS_SERVICE)
    service = pytester.path / "service.py"
    outcomes, out = _run(pytester, "--loopwatch")
    assert outcomes == {
        "test_app_sleeps": "FAILED",
        "test_app_sleeps_block_allowed": "PASSED",  # one event, one decision
        "test_app_sleeps_call_allowed": "PASSED",
        "test_app_socket_recv": "FAILED",
        "test_app_leaves_a_task_pending": "FAILED",
        "test_app_leaves_a_task_pending_allowed": "PASSED",
        "test_app_task_awaited": "PASSED",
        "test_test_leaves_its_own_task": "PASSED",
        "test_app_nested_run": "FAILED",
        "test_app_server_tasks_are_the_servers": "PASSED",
    }, out
    block = _section(out, "test_app_sleeps")
    assert "blocking_call: time.sleep" in block and "blocked_loop" in block, block
    assert f"service.py:{_line(service, 'site:nap')} in nap" in block, block
    block = _section(out, "test_app_socket_recv")
    assert f"service.py:{_line(service, 'site:recv')} in read_peer" in block, block
    block = _section(out, "test_app_leaves_a_task_pending")
    assert "pending_task" in block, block
    assert f"service.py:{_line(service, 'site:spawn')} in start_worker" in block, block
    assert '@pytest.mark.loopwatch(allow=["pending_task"])' in block, block
    nested = _section(out, "test_app_nested_run")
    assert f"service.py:{_line(service, 'site:nested')} in nested" in nested, nested
    # The test failed on asyncio's own error: an allow marker would not make it pass.
    assert "@pytest.mark.loopwatch(allow=" not in nested, nested
    assert "allowing the kind would not make it pass" in nested, nested
    summary = out[out.index("= loopwatch ="):]
    assert "3 test(s) failed by loopwatch:" in summary, summary


def _section(out: str, test: str) -> str:
    match = re.search(rf"^_+ {test} _+$(.*?)(?=^_{{3,}} \S.* _{{3,}}$|^=+ )", out, re.M | re.S)
    assert match is not None, f"no failure block for {test}:\n{out}"
    return match.group(1)


JAR = '''
class Jar:
    def load(self, path):
        with open(path, "rb") as f:  # a documented sync API of the package
            return f.read()


def load(path):
    return Jar().load(path)
'''

JAR_TESTS = '''
import cookiepkg.jar


async def test_jar_load():
    assert cookiepkg.jar.load(__file__)
'''


@pytest.mark.parametrize("install", ["editable", "regular"])
@pytest.mark.parametrize("allow", [False, True])
def test_install_mode_does_not_decide(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, install: str, allow: bool
) -> None:
    """Rule C: the project's package is judged alike from its checkout and site-packages."""
    ini = INI + ("loopwatch_allow = cookiepkg.jar:Jar.load\n" if allow else "")
    pytester.makeini(ini)
    # The checkout: the package's source in the rootdir (src layout), as in an sdist.
    checkout = pytester.path / "src" / "cookiepkg"
    checkout.mkdir(parents=True)
    (checkout / "__init__.py").write_text("")
    (checkout / "jar.py").write_text(JAR)
    pytester.makepyfile(test_jar=JAR_TESTS)
    if install == "regular":
        site = pytester.path.parent / f"{pytester.path.name}-env" / "lib" / "site-packages"
        (site / "cookiepkg").mkdir(parents=True)
        (site / "cookiepkg" / "__init__.py").write_text("")
        (site / "cookiepkg" / "jar.py").write_text(JAR)
    else:
        site = checkout.parent  # editable: the checkout itself is on the path
    # This checkout of loopwatch first, as in the session that runs this test.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(site)]))
    marker = "site-packages" if install == "regular" else "src"
    pytester.makeconftest(f"import cookiepkg\nassert '{marker}' in cookiepkg.__file__")
    outcomes, out = _run(pytester, "--loopwatch")
    assert outcomes == {"test_jar_load": "PASSED" if allow else "FAILED"}, out
    if not allow:
        assert "blocking_call: open" in out and "jar.py:4 in load" in out, out


def test_scope_line_names_the_code_under_test(pytester: pytest.Pytester) -> None:
    """``loopwatch_scope = mypkg``: only mypkg's hazards fail, as blockbuster_ctx("mypkg")."""
    pytester.makeini(INI + "loopwatch_scope = mypkg\n")
    pytester.mkpydir("mypkg")
    nap = "import time\n\ndef nap():\n    time.sleep(0.001)\n"
    (pytester.path / "mypkg" / "core.py").write_text(nap)
    pytester.makepyfile(
        helper="import time\n\ndef nap():\n    time.sleep(0.001)\n",
        test_scope="""
        import helper
        import mypkg.core

        async def test_mypkg():
            mypkg.core.nap()

        async def test_helper_outside_the_scope():
            helper.nap()
        """,
    )
    outcomes, out = _run(pytester, "--loopwatch")
    assert outcomes == {"test_mypkg": "FAILED", "test_helper_outside_the_scope": "PASSED"}, out
    assert "scope=mypkg" in out


NESTED_TESTS = '''
import pytest

pytest_plugins = ["pytester"]

INNER = """
import gc


async def forgotten():
    pass


def test_leaves_a_coroutine():
    forgotten()  # on purpose: the inner suite tests exactly that
    gc.collect()
"""


@pytest.mark.parametrize("inner_flag", [[], ["--loopwatch"]])
def test_runs_an_inner_session(pytester, inner_flag):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *inner_flag)
    if inner_flag:
        result.assert_outcomes(failed=1)  # the inner session fails its own test
    else:
        result.assert_outcomes(passed=1)


async def test_the_app_naps_after_the_inner_sessions():
    import service

    service.nap()
'''


def test_incidents_belong_to_the_session_where_they_happened(pytester: pytest.Pytester) -> None:
    """Rule E: an inner pytester session's incident does not fail the outer test."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_outer=NESTED_TESTS, service="import time\n\ndef nap():\n    time.sleep(0.3)\n"
    )
    outcomes, out = _run(pytester, "--loopwatch")
    # (-rA also shows the inner sessions' own outcome lines, in the passed tests' output)
    outcomes = {k: v for k, v in outcomes.items() if k.startswith(("test_runs", "test_the"))}
    assert outcomes == {
        "test_runs_an_inner_session[inner_flag0]": "PASSED",
        "test_runs_an_inner_session[inner_flag1]": "PASSED",
        "test_the_app_naps_after_the_inner_sessions": "FAILED",
    }, out
    # The inner sessions (one with --loopwatch) left the outer one's wrappers and its
    # watchdog in place: the app's sleep is still caught, as a call and as a block.
    after = _section(out, "test_the_app_naps_after_the_inner_sessions")
    assert "blocking_call: time.sleep" in after and "blocked_loop" in after, after


BLOCKBUSTER_CONFTEST = '''
import pytest
from blockbuster import blockbuster_ctx


@pytest.fixture(autouse=True)
def blockbuster():
    with blockbuster_ctx() as bb:
        yield bb
'''

BLOCKBUSTER_TESTS = '''
import asyncio
import os


async def test_opens_a_file_and_reads_it_in_a_thread():
    f = open(os.path.join(os.path.dirname(__file__), "data.txt"), "rb")
    try:
        assert await asyncio.to_thread(f.read) == b"data"
    finally:
        f.close()


async def test_async_code():
    await asyncio.sleep(0)
'''


def test_beside_blockbuster_the_same_as_blockbuster_alone(pytester: pytest.Pytester) -> None:
    """Rule F: loopwatch's wrappers make no call blockbuster rejects (no abspath, stat)."""
    pytest.importorskip("blockbuster")
    pytester.makeini(INI)
    pytester.makeconftest(BLOCKBUSTER_CONFTEST)
    pytester.makepyfile(test_bb=BLOCKBUSTER_TESTS)
    (pytester.path / "data.txt").write_bytes(b"data")
    alone, out_alone = _run(pytester)
    together, out = _run(pytester, "--loopwatch")
    assert set(alone.values()) == {"PASSED"} and len(alone) == 2, out_alone
    assert together == alone, out
    assert "BlockingError" not in out


def test_usage_messages(pytester: pytest.Pytester) -> None:
    """Accepted kinds listed once each; a bad ini scope or allow names its key."""
    pytester.makeini(INI)
    pytester.makepyfile(test_one="def test_nothing(): pass")
    result = pytester.runpytest_inprocess("--loopwatch", "--loopwatch-fail-on=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    accepted = result.stderr.str().split("accepted: ", 1)[1]
    kinds = [k.strip() for k in accepted.split(", or")[0].split(",")]
    assert len(kinds) == len(set(kinds)) and "pending_task" in kinds, accepted
    pytester.makeini(INI + "loopwatch_allow = aiohttp.cookiejar:\n")
    result = pytester.runpytest_inprocess("--loopwatch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "loopwatch_allow: 'aiohttp.cookiejar:' is not a call site" in result.stderr.str()


def test_summary_counts_tests_not_phases(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        service="import time\n\ndef nap():\n    time.sleep(0.001)\n",
        test_phases=textwrap.dedent(
            """
            import pytest
            import service

            @pytest.fixture
            async def naps_after():
                yield
                service.nap()

            async def test_both_phases(naps_after):
                service.nap()
            """
        ),
    )
    _, out = _run(pytester, "--loopwatch")
    summary = out[out.index("= loopwatch ="):]
    assert "1 test(s) failed by loopwatch:" in summary, summary
    assert "test_phases.py::test_both_phases (teardown)" in summary, summary


def test_scope_classifies_by_module_name_not_location() -> None:
    """The classifier alone: same package, checkout or site-packages; test support apart."""
    from loopwatch._pytest.scope import CODE, LIBRARY, SCAFFOLDING, Scope

    scope = Scope(["pkg"], explicit=False, test_patterns=["test_*.py"], cwd="/proj",
                  excluded=["pkg.fixtures"])
    site = "/env/lib/python3.11/site-packages"
    assert scope.classify("/proj/pkg/core.py", "pkg.core") == CODE
    assert scope.classify(f"{site}/pkg/core.py", "pkg.core") == CODE
    assert scope.classify(f"{site}/other/core.py", "other.core") == LIBRARY
    assert scope.classify("/proj/app.py", "app") == CODE  # outside the libraries: an app
    assert scope.classify("/proj/tests/helpers.py", "tests.helpers") == SCAFFOLDING
    assert scope.classify("/proj/test_x.py", "test_x") == SCAFFOLDING
    assert scope.classify(f"{site}/pkg/pytest_plugin.py", "pkg.pytest_plugin") == SCAFFOLDING
    assert scope.classify(f"{site}/pkg/test_utils.py", "pkg.test_utils") == SCAFFOLDING
    assert scope.classify("/proj/pkg/fixtures/db.py", "pkg.fixtures.db") == SCAFFOLDING
    explicit = Scope(["pkg"], explicit=True, test_patterns=["test_*.py"], cwd="/proj")
    assert explicit.classify("/proj/app.py", "app") == LIBRARY  # only the named packages


STARVED_SERVICE = '''
import threading
import time


def handshake():
    # 10 ms of the thread's own CPU (a TLS context loading its CA bundle, say).
    start = time.thread_time()
    while time.thread_time() - start < 0.01:
        pass


def wait_for_peer():
    threading.Event().wait(0.4)  # sleeps in a call: a block of the code, whatever the load
'''

STARVED_TESTS = '''
import os
import subprocess
import sys

import pytest

import service


@pytest.fixture
def crowded_cpu():
    """This thread and a busy process share one CPU, this thread with the lowest priority."""
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([
        sys.executable, "-c",
        f"import os; os.sched_setaffinity(0, {{{cpu}}}); print(flush=True)\\n"
        "while True: pass",
    ], stdout=subprocess.PIPE)
    hog.stdout.readline()  # it runs on that CPU now
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # 0: this thread only (the loop's), not the watchdog
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)  # the thread stays SCHED_IDLE: on an idle CPU now
        hog.kill()
        hog.wait()


async def test_short_work_on_a_crowded_cpu(crowded_cpu):
    service.handshake()


async def test_a_wait_in_the_app_on_a_crowded_cpu(crowded_cpu):
    service.wait_for_peer()
'''


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and hasattr(os, "SCHED_IDLE")),
    reason="the kernel's run-queue clock and SCHED_IDLE are Linux's",
)
def test_a_block_the_machine_caused_fails_nothing(pytester: pytest.Pytester) -> None:
    """A loop thread that waits for a CPU is blocked by the machine, not by the code.

    The app's 10 ms of work takes many times the threshold when the loop thread has the
    lowest priority on a busy CPU: it is excused (and listed). A wait in the app blocks
    the loop with the thread asleep, not queued for a CPU: it still fails.
    """
    pytester.makeini(INI)
    pytester.makepyfile(test_starved=STARVED_TESTS, service=STARVED_SERVICE)
    outcomes, out = _run(pytester, "--loopwatch")
    assert outcomes == {
        "test_short_work_on_a_crowded_cpu": "PASSED",
        "test_a_wait_in_the_app_on_a_crowded_cpu": "FAILED",
    }, out
    summary = out[out.index("= loopwatch ="):]
    excused = summary[summary.index("test_short_work_on_a_crowded_cpu"):]
    assert "blocked_loop at service.py" in excused and "waited for a CPU" in excused, summary
    assert "in wait_for_peer" in _section(out, "test_a_wait_in_the_app_on_a_crowded_cpu")
