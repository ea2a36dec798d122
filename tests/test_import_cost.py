"""What importing loopwatch, and a Python started under ``loopwatch run``, import.

Counted in modules, not timed: ``-X importtime`` names every module a fresh interpreter
imports. ``import loopwatch`` must leave the monitor, the metrics (and prometheus-client),
asyncio and the adapters for when a name of theirs is first used.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import loopwatch
from loopwatch import cli

PY = sys.executable
pytestmark = pytest.mark.core  # the import hook and the hand-over: every Python


def imported(code: str, env: dict[str, str] | None = None) -> set[str]:
    result = subprocess.run(
        [PY, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_import_loopwatch_imports_no_monitor_metrics_or_asyncio() -> None:
    modules = imported("import loopwatch")
    assert "loopwatch" in modules
    heavy = {"prometheus_client", "asyncio", "loopwatch._monitor", "loopwatch.metrics",
             "loopwatch.adapters"}
    assert not heavy & modules
    assert not {m for m in modules if m.startswith("loopwatch.adapters")}


def test_every_public_name_is_there_on_first_use() -> None:
    code = ("import sys, loopwatch\n"
            "assert 'loopwatch._monitor' not in sys.modules\n"
            "missing = [n for n in loopwatch.__all__ if not hasattr(loopwatch, n)]\n"
            "assert not missing, missing\n"
            "assert set(loopwatch.__all__) <= set(dir(loopwatch))\n"
            "assert loopwatch.install is sys.modules['loopwatch._monitor'].install\n"
            "assert loopwatch.Monitor.__module__ == 'loopwatch._monitor'\n")
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert loopwatch.incidents is not None


def test_a_python_that_never_imports_asyncio_imports_nothing_of_loopwatch() -> None:
    env = {**os.environ, **cli.run_environment({}, environ=dict(os.environ))}
    modules = imported("pass", env=env)
    assert "sitecustomize" in modules  # the hook did run
    assert not {m for m in modules if m == "loopwatch" or m.startswith("loopwatch.")}
    assert not {"asyncio", "prometheus_client", "typing"} & modules
    with_asyncio = imported("import asyncio", env=env)
    # (loopwatch._monitor itself comes through importlib, which -X importtime does not list)
    assert {"loopwatch._reentry", "loopwatch._watchdog"} <= with_asyncio


# What the install leaves for when it is needed: prometheus_client and its exposition (the
# metrics pend until something imports it), importlib.abc (which brings importlib.resources
# and pathlib), json (for JSON log lines), ipaddress and difflib (for an option given),
# sysconfig (for the first stack judged), dataclasses (the install's records are written out:
# making a dataclass costs about a millisecond each), concurrent.futures' thread pool (patched
# when the program first asks for it).
LEFT_FOR_LATER = {
    "prometheus_client", "loopwatch.metrics", "http.server", "importlib.abc", "json",
    "ipaddress", "difflib", "sysconfig", "dataclasses", "concurrent.futures.thread",
}


def test_the_install_imports_nothing_it_does_not_need_yet() -> None:
    env = {**os.environ, **cli.run_environment({}, environ=dict(os.environ))}
    installed = imported(
        "import asyncio, loopwatch\n"
        "from loopwatch import _monitor\n"
        "assert _monitor.current() is not None\n"
        "asyncio.run(asyncio.sleep(0))\n",
        env=env,
    )
    assert "loopwatch._watchdog" in installed
    assert not LEFT_FOR_LATER & installed, LEFT_FOR_LATER & installed


def test_the_thread_pool_imported_after_the_install_is_watched_and_no_idle_threads() -> None:
    code = (
        "import asyncio, sys, threading, time, loopwatch\n"
        "loopwatch.install(registry=None)\n"
        "assert 'concurrent.futures.thread' not in sys.modules\n"
        "names = lambda: sorted(t.name for t in threading.enumerate())\n"
        "assert names() == ['MainThread', 'loopwatch-watchdog'], names()\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    await loop.run_in_executor(None, time.sleep, 0.01)\n"
        "asyncio.run(main())\n"
        "import concurrent.futures as cf\n"
        "assert hasattr(cf.ThreadPoolExecutor.submit, '__wrapped__')\n"
        "assert 'loopwatch-handlers' not in names(), names()  # no handler ran\n"
        "loopwatch.uninstall()\n"
        "assert not hasattr(cf.ThreadPoolExecutor.submit, '__wrapped__')\n"
        "print('ok')\n"
    )
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


HAND_OVER = """
import asyncio, sys, time, loopwatch

monitor = loopwatch.install(block_threshold=0.05, registry=None)
assert "prometheus_client" not in sys.modules

async def main():
    time.sleep(0.2)  # a blocked loop, counted before prometheus_client exists here
    await asyncio.sleep(0)

asyncio.run(main())
assert "prometheus_client" not in sys.modules, "something imported prometheus_client"
{first_import}
from prometheus_client import REGISTRY, generate_latest
text = generate_latest(REGISTRY).decode()
asyncio.run(main())
text2 = generate_latest(REGISTRY).decode()
print("TYPE", type(monitor.metrics).__name__)
print(text)
print("SECOND")
print(text2)
"""


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in\n{text}")


@pytest.mark.parametrize("first_import", [
    "import prometheus_client",
    "from loopwatch.metrics import get_metrics",  # loopwatch's module imports it
    "from loopwatch.metrics import make_asgi_app; make_asgi_app()",
])
def test_what_pending_metrics_counted_is_all_there_once_prometheus_client_is(
    first_import: str,
) -> None:
    result = subprocess.run(
        [PY, "-c", HAND_OVER.format(first_import=first_import)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("SECOND")
    assert "TYPE Metrics" in first
    # The block counted while pending, then one more after the hand-over.
    block = 'loopwatch_event_loop_blocks_total{framework="none",handler="__none__"}'
    assert sample(first, block) == 1.0
    assert sample(second, block) == 2.0
    assert sample(first, "loopwatch_event_loop_blocked_seconds_total") >= 0.2
    # The lag histogram's pending buckets: the 0.2 s sample sits in the 0.25 bucket, not
    # below it, and the sum carries it.
    lag = "loopwatch_event_loop_lag_seconds"
    assert sample(first, lag + '_bucket{le="0.1"}') < sample(first, lag + '_bucket{le="0.25"}')
    assert sample(first, lag + "_sum") >= 0.2
    assert sample(second, lag + "_count") > sample(first, lag + "_count")
    assert sample(first, "loopwatch_info") == 1.0


def test_a_module_loopwatch_waits_for_keeps_what_its_loader_offers() -> None:
    # prometheus_client is loaded through loopwatch's import hook here (the install saw it
    # missing): its loader's other services (source, resources) must still answer.
    code = (
        "import asyncio, importlib.resources, inspect, sys, loopwatch\n"
        "loopwatch.install()\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "import prometheus_client\n"
        "loader = prometheus_client.__loader__\n"
        "assert type(loader).__module__ == 'loopwatch._patching', loader\n"
        "assert 'REGISTRY' in loader.get_source('prometheus_client')\n"
        "assert loader.get_filename('prometheus_client').endswith('__init__.py')\n"
        "assert 'REGISTRY' in inspect.getsource(prometheus_client)\n"
        "assert importlib.resources.files('prometheus_client').joinpath('__init__.py').is_file()\n"
        "assert type(loopwatch._monitor.current().metrics).__name__ == 'Metrics'\n"
    )
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_in_multiprocess_mode_a_worker_that_never_imports_prometheus_writes_its_files(
    tmp_path: pathlib.Path,
) -> None:
    # Another process (gunicorn's master, a sidecar) reads the files: they cannot wait for
    # this one to import prometheus_client.
    code = (
        "import asyncio, time, loopwatch\n"
        "loopwatch.install(block_threshold=0.05)\n"
        "async def main():\n"
        "    time.sleep(0.2)\n"
        "asyncio.run(main())\n"
        "loopwatch.uninstall()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0, result.stderr
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert sample(text, "loopwatch_event_loop_blocks_total") == 1.0
