"""Faults inside and around the core: the host keeps running, failures are counted and said once."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request

import pytest
from helpers import free_port, reentry_total
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _reentry
from loopwatch.metrics import start_http_server

pytestmark = pytest.mark.core


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_base_exceptions_reach_the_caller(exc_type: type[BaseException]) -> None:
    registry = CollectorRegistry()
    loopwatch.install(registry=registry)
    # A worker abandoned by an earlier test's timeout may still be finishing: count ours only.
    workers_before = _reentry.worker_threads()

    async def raises() -> None:
        await asyncio.sleep(0)
        raise exc_type("from the offloaded coroutine")

    caught: list[BaseException] = []

    async def main() -> str:
        try:
            asyncio.run(raises())
        except BaseException as exc:  # what the caller would have seen without loopwatch
            caught.append(exc)
        return "still serving"

    assert asyncio.run(main()) == "still serving"
    assert type(caught[0]) is exc_type
    assert reentry_total(registry) == 1
    # The worker handed the exception over and is gone: no thread outlives its call.
    assert _reentry.worker_threads() <= workers_before


def test_taken_metrics_port(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        registry = CollectorRegistry()
        monitor = loopwatch.install(registry=registry, metrics_port=port)
        assert monitor.metrics_server is None
        assert asyncio.run(asyncio.sleep(0, result="host runs")) == "host runs"
    assert (
        registry.get_sample_value(
            "loopwatch_internal_errors_total", {"component": "metrics_server"}
        )
        == 1
    )
    # A port in use is the operator's to fix: one line that names it, no traceback, no
    # incident.
    assert [i for i in loopwatch.incidents() if i.kind == "internal"] == []
    said = [r for r in caplog.records if r.name == "loopwatch"]
    assert len(said) == 1
    assert f"127.0.0.1:{port}" in said[0].getMessage()
    assert said[0].exc_info is None


def test_standalone_server_binds_loopback_and_stops() -> None:
    registry = CollectorRegistry()
    loopwatch.install(registry=registry)
    server = start_http_server(0, registry=registry)
    try:
        assert server.addr == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
        assert b"loopwatch_info{" in body
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def test_install_metrics_port_serves_and_uninstall_stops() -> None:
    port = free_port()
    loopwatch.install(registry=CollectorRegistry(), metrics_port=port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert b"loopwatch_reentry_total" in body or b"loopwatch_info" in body
    loopwatch.uninstall()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_unwritable_multiprocess_dir(tmp_path: os.PathLike[str]) -> None:
    # prometheus-client writes every value to files there; when it cannot, the host keeps
    # running and loopwatch counts the failure.
    missing = os.path.join(str(tmp_path), "does", "not", "exist")
    code = textwrap.dedent(
        """
        import asyncio, loopwatch
        from loopwatch import _runtime
        loopwatch.install()
        async def two(): return 2
        async def main(): return [asyncio.run(two()) for _ in range(3)]
        print(asyncio.run(main()))
        print(sorted(_runtime.errors_logged))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": missing}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[2, 2, 2]"
    assert "metrics" in lines[1]
    assert out.stderr.count("internal error in metrics") == 1


def test_uninstall_leaves_no_threads() -> None:
    before = {t.ident for t in threading.enumerate()}
    for _ in range(3):
        loopwatch.install(registry=CollectorRegistry())

        async def main() -> int:
            return asyncio.run(asyncio.sleep(0, result=1))

        assert asyncio.run(main()) == 1
        loopwatch.uninstall()
    after = {t.ident for t in threading.enumerate() if t.is_alive()}
    assert after <= before
