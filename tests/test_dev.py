"""``dev.py``, the README's test command: what it does before the suite runs."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_test_command_compiles_loopwatchs_bytecode_for_each_python() -> None:
    # Under PYTHONDONTWRITEBYTECODE (set on this machine and on CI runners) nothing else
    # writes it: without this step every watched subprocess compiles loopwatch again.
    dev = load_dev()
    cached = Path(importlib.util.cache_from_source(str(ROOT / "loopwatch" / "_probe.py")))
    cached.unlink(missing_ok=True)
    dev.compile_bytecode([sys.executable])
    assert cached.exists()
    # ... and `dev.py test` runs that step for the environments it built.
    assert "compile_bytecode(" in inspect.getsource(dev.test)
