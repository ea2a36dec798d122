"""nest_asyncio's and nest-asyncio2's own test suites, with their ``apply()`` replaced by loopwatch.

Downloads both sdists from the package index at run time (into a temporary directory, never
into the repository), unpacks them and runs each one's ``tests/nest_test.py`` in a child
process where:

* ``import nest_asyncio`` / ``import nest_asyncio2`` gets a stand-in whose ``apply()``
  installs loopwatch as the IPython extension does (``on_reentry`` from ``--policy``,
  default ``auto``, framework ``jupyter``) and patches nothing else;
* ``--setting loop`` (default): the suites as they are: their nested calls are made on their
  own running stdlib loop, the kernel-like case;
* ``--setting cell``: besides, every test method runs as a notebook cell does, inside a task
  of another running stdlib loop (the "kernel's loop"), so even the suite's outermost
  ``run_until_complete`` is a nested run (set-up and tear-down run outside, as a kernel's do).

``--apply original`` runs the suites with the real ``apply()`` instead, for comparison.

Prints one line per test and a summary per suite; exits non-zero if any test failed.

Run: ``python benchmarks/nest_suites.py [--policy auto|offload|reenter] [--setting loop|cell]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITES = {"nest_asyncio": "nest_asyncio", "nest-asyncio2": "nest_asyncio2"}  # pip -> module


def _stand_in(module: str, policy: str) -> types.ModuleType:
    """A module named like the original whose ``apply()`` installs loopwatch instead."""
    import loopwatch

    stand_in = types.ModuleType(module)

    def apply(loop: Any = None) -> None:
        loopwatch.install(on_reentry=policy, default_framework="jupyter", watchdog=False)

    stand_in.apply = apply  # type: ignore[attr-defined]
    return stand_in


def _as_cells(case_class: type[unittest.TestCase], kernel: asyncio.AbstractEventLoop) -> None:
    """Make every test method of ``case_class`` run inside a task of ``kernel``."""
    for name in dir(case_class):
        if not name.startswith("test"):
            continue
        method = getattr(case_class, name)

        def cell(self: unittest.TestCase, method: Any = method) -> None:
            async def run_cell() -> None:
                method(self)

            kernel.run_until_complete(run_cell())

        setattr(case_class, name, functools.wraps(method)(cell))


def driver(test_file: str, module: str, policy: str, setting: str, apply: str) -> int:
    """Run one suite in this process (the child side)."""
    if apply == "loopwatch":
        sys.modules[module] = _stand_in(module, policy)
    else:
        sys.path.insert(0, str(Path(test_file).parents[1]))
    spec = importlib.util.spec_from_file_location("nest_suite", test_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {test_file}")
    suite_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite_module)
    kernel = asyncio.new_event_loop()
    for value in vars(suite_module).values():
        if setting == "cell" and isinstance(value, type) and issubclass(value, unittest.TestCase):
            _as_cells(value, kernel)
    suite = unittest.defaultTestLoader.loadTestsFromModule(suite_module)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    kernel.close()
    return 0 if result.wasSuccessful() else 1


def _download(into: Path) -> dict[str, Path]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
         "--no-deps", "--dest", str(into), *SUITES],
        check=True,
    )
    found: dict[str, Path] = {}
    for archive in sorted(into.glob("*.tar.gz")):
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        root = into / archive.name.removesuffix(".tar.gz")
        for pip_name, module in SUITES.items():
            if archive.name.startswith(module + "-"):
                found[pip_name] = root
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="auto")
    parser.add_argument("--setting", choices=("loop", "cell"), default="loop")
    parser.add_argument("--apply", choices=("loopwatch", "original"), default="loopwatch")
    parser.add_argument("--keep", default="", help="download and unpack here (kept)")
    parser.add_argument(
        "--driver", nargs=2, metavar=("TEST_FILE", "MODULE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.driver:
        return driver(args.driver[0], args.driver[1], args.policy, args.setting, args.apply)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nest-suites-"))
    work.mkdir(parents=True, exist_ok=True)
    roots = _download(work)
    failed = 0
    version = ".".join(map(str, sys.version_info[:3]))
    for pip_name, root in roots.items():
        test_file = root / "tests" / "nest_test.py"
        path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=path)
        proc = subprocess.run(
            [sys.executable, __file__, "--policy", args.policy, "--setting", args.setting,
             "--apply", args.apply, "--driver", str(test_file), SUITES[pip_name]],
            env=env, capture_output=True, text=True, timeout=600,
        )
        output = proc.stdout + proc.stderr
        ends = (" ... ok", " ... FAIL", " ... ERROR")
        ran = [line for line in output.splitlines() if line.endswith(ends)]
        passed = sum(line.endswith(" ... ok") for line in ran)
        how = "original apply()" if args.apply == "original" else (
            f"apply() -> loopwatch on_reentry={args.policy}"
        )
        print(f"== {root.name} on Python {version}, {how}, setting {args.setting}: "
              f"{passed}/{len(ran)} passed")
        for line in ran:
            print("   ", line)
        if proc.returncode != 0:
            failed += 1
            print(output[-3000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
