"""What importing loopwatch, and a Python started under ``loopwatch run``, import.

Counted in modules, not timed: ``-X importtime`` names every module a fresh interpreter
imports. ``import loopwatch`` must leave the monitor, the metrics (and prometheus-client),
asyncio and the adapters for when a name of theirs is first used.
"""

from __future__ import annotations

import os
import subprocess
import sys

import loopwatch
from loopwatch import cli

PY = sys.executable


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
    assert {"loopwatch.metrics", "loopwatch._reentry", "prometheus_client"} <= with_asyncio
