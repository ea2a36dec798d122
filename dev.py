#!/usr/bin/env python3
"""Developer entry point: needs only Python 3.10+ on the machine.

    python3 dev.py demo          set up .venv-demo (only what the demo needs) and run
                                 `loopwatch demo`
    python3 dev.py test          set up .venv, run ruff, mypy and the whole test suite, then
                                 CPython's test_asyncio bare vs watched; beside them, the core,
                                 loop-health and notebook tests on every other supported Python
                                 found (3.10-3.13, and 3.14 when one is on PATH)
    python3 dev.py test --fast   the inner loop: ruff, mypy and the tests not marked slow, on
                                 this Python only (extra arguments go to pytest)

Environments are rebuilt only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import venv
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Each stage of the full run logs here; a failed stage's log is printed whole.
LOGS = ROOT / ".dev-logs"
_print_lock = threading.Lock()
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
# Tried when an interpreter is found, never required: none can be installed on CI machines yet.
OPTIONAL = ("3.14",)
IN_CI = bool(os.environ.get("CI"))
# What runs on every supported Python: the core and its asyncio internals (stdlib + uvloop).
CORE_TESTS = (
    "tests/test_compat.py",
    "tests/test_architecture.py",
    "tests/test_core_regressions.py",
    "tests/test_transparency.py",
    "tests/test_core_reentry.py",
    "tests/test_core_lifecycle.py",
    "tests/test_core_faults.py",
    "tests/test_reliability_core.py",
    "tests/test_reenter.py",
    "tests/test_subinterpreters.py",
    "tests/test_import_cost.py",
)
# The loop-health monitor reads task internals that differ by version: its tests too,
# minus the real-server ones (those need the framework extras).
MONITOR_TESTS = ("tests/test_watchdog.py", "tests/test_tasks.py")
# The notebook case (%load_ext, the reenter policy in a real ipykernel) on every Python too:
# the running-loop and current-task state it restores differs by version.
KERNEL_TESTS = ("tests/test_notebook.py",)
# Real libraries nested in real kernels: on the newest supported Python too (their loops and
# signal handling differ by version); on the others the notebook tests stand for them.
NESTED_TESTS = ("tests/test_real_libraries.py",)
NESTED_ON = ("3.13",)
# The route labels on the oldest Starlette/FastAPI supported (Starlette 0.27 sets no
# scope["route"], FastAPI 0.100 has no included-router contexts): a code path of its own.
OLDEST_WEB = ("starlette==0.27.*", "fastapi==0.100.*", "pydantic==2.1.*", "httpx>=0.25")
ROUTE_TESTS = (
    "tests/test_asgi.py",
    "tests/test_asgi_routes.py",
    "tests/test_compat_starlette.py",
)
# discord.py's forks, each in an environment of its own (py-cord installs as `discord`, the
# others clash with discord.py's dependencies): the adapter and canary tests of that fork.
FORKS = ("nextcord", "disnake", "pycord")
FORK_TESTS = ("tests/test_discord_forks.py", "tests/test_compat_forks.py")


def say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def run(*cmd: str | Path, **kwargs: object) -> None:
    say(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def bin_of(env: Path, name: str) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_env(env: Path, python: str, extras: str, pins: tuple[str, ...] = ()) -> Path:
    """Create ``env`` with ``python`` and install the project with ``extras``, if stale."""
    stamp = env / ".loopwatch-stamp"
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + extras.encode() + " ".join(pins).encode()
    ).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and bin_of(env, "python").exists():
        return env
    if env.exists():
        shutil.rmtree(env)
    if Path(python).resolve() == Path(sys.executable).resolve():
        venv.create(env, with_pip=True)
    else:
        run(python, "-m", "venv", env)
    py = bin_of(env, "python")
    run(py, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(py, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]", *pins)
    stamp.write_text(digest)
    return env


def find_python(version: str) -> str | None:
    """A working interpreter for ``version``: under pyenv, or on PATH as pythonX.Y."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        str(p / "bin" / "python")
        for p in sorted((pyenv_root / "versions").glob(f"{version}.*"), reverse=True)
    ]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    for exe in candidates:
        # pyenv shims exist for versions that are not selected; they fail when run.
        probe = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(
            tuple(map(int, version.split(".")))
        ):
            return exe
    return None


def main_env() -> Path:
    return ensure_env(ROOT / ".venv", sys.executable, "all,test,bench")


def demo(args: list[str]) -> int:
    env = ensure_env(ROOT / ".venv-demo", sys.executable, "demo")
    return subprocess.call([str(bin_of(env, "loopwatch")), "demo", *args], cwd=ROOT)


class Stage:
    """One command of the full run, its log and how long it took."""

    def __init__(self, name: str, *cmd: str | Path) -> None:
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.log = LOGS / (name.replace(" ", "-").replace("/", "-") + ".log")
        self.seconds = 0.0
        self.status: int | None = None

    def run(self) -> bool:
        LOGS.mkdir(exist_ok=True)
        started = time.monotonic()
        with self.log.open("w") as sink:
            sink.write("$ " + " ".join(self.cmd) + "\n")
            sink.flush()
            self.status = subprocess.call(self.cmd, cwd=ROOT, stdout=sink,
                                          stderr=subprocess.STDOUT)
        self.seconds = time.monotonic() - started
        text = self.log.read_text(errors="replace").rstrip().splitlines()
        with _print_lock:
            if self.status == 0:
                say(f"{self.name}: passed in {self.seconds:.0f}s; {' / '.join(text[-1:])}")
            else:
                # The whole log of a failed stage: CI keeps nothing else.
                say(f"{self.name}: FAILED ({self.status}) in {self.seconds:.0f}s; log follows")
                print("\n".join(text), flush=True)
                say(f"{self.name}: FAILED, end of log")
        return self.status == 0


def run_lanes(lanes: list[list[Stage]]) -> bool:
    """Run each lane's stages in order, the lanes side by side; True when all passed."""
    results: list[bool] = []

    def lane(stages: list[Stage]) -> None:
        for stage in stages:
            results.append(stage.run())

    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        list(pool.map(lane, lanes))
    return all(results)


def compile_bytecode(pythons: Iterable[str | Path]) -> None:
    """Compile loopwatch's bytecode for each interpreter, as pip compiles an installed wheel's.

    The environments hold an editable install, and where PYTHONDONTWRITEBYTECODE is set (a
    CI runner, a container) nothing would ever be cached: every Python started under
    `loopwatch run` (test_asyncio's subprocesses, our own subprocess tests) would compile
    loopwatch's modules again, ~100 ms each, a cost no installed user pays.
    """
    for python in pythons:
        run(python, "-m", "compileall", "-q", "loopwatch")


def test(args: list[str]) -> int:
    fast = "--fast" in args
    args = [a for a in args if a != "--fast"]
    total = time.monotonic()
    if fast:
        env = main_env()
        py = bin_of(env, "python")
        run(py, "-m", "ruff", "check", "loopwatch", "tests", "examples", "benchmarks",
            "integrations")
        run(py, "-m", "mypy", "--strict", "loopwatch")
        run(py, "-m", "pytest", "-m", "not slow", *args)
        return 0
    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    others: dict[str, str] = {}
    missing = []
    for version in SUPPORTED + OPTIONAL:
        if version == this:
            continue
        python = find_python(version)
        if python is not None:
            others[version] = python
        elif version in SUPPORTED:
            missing.append(version)
        else:
            say(f"no Python {version} found: not tested there")

    # Environments are built side by side: pip mostly waits for downloads.
    started = time.monotonic()
    builds: dict[str, Callable[[], Path]] = {"main": main_env}
    for version, python in others.items():
        extras = "uvloop,testcore,testkernel" + (",testnested" if version in NESTED_ON else "")
        builds[version] = partial(ensure_env, ROOT / f".venv-{version}", python, extras)
    # Not the whole test extra: the nested-run libraries there need a newer pydantic.
    builds["oldest-web"] = partial(
        ensure_env, ROOT / ".venv-oldest-web", sys.executable, "uvloop,fastapi,testcore",
        OLDEST_WEB,
    )
    for fork in FORKS:
        builds[fork] = partial(ensure_env, ROOT / f".venv-{fork}", sys.executable, f"test{fork}")
    builds["docs"] = partial(ensure_env, ROOT / ".venv-docs", sys.executable, "docs")
    with ThreadPoolExecutor(max_workers=4) as pool:
        envs = dict(zip(builds, pool.map(lambda build: build(), builds.values()), strict=True))
    say(f"environments ready in {time.monotonic() - started:.0f}s")

    compile_bytecode(
        bin_of(env, "python") for env in {envs["main"], *(envs[version] for version in others)}
    )

    py = bin_of(envs["main"], "python")
    run(py, "-m", "ruff", "check", "loopwatch", "tests", "examples", "benchmarks", "integrations")
    run(py, "-m", "mypy", "--strict", "loopwatch")

    # Two lanes for two cores: the main suite, then CPython's test_asyncio bare vs watched;
    # beside them, every other Python and the oldest supported Starlette/FastAPI.
    main_lane = [Stage(f"{this} whole suite", py, "-m", "pytest", "-p", "no:cacheprovider",
                       *args)]
    if not args:
        main_lane.append(Stage(
            "test_asyncio transparency", sys.executable, ROOT / ".ci" / "transparency.py",
            *(v for v in SUPPORTED if v == this or v in others),
        ))
    other_lane: list[Stage] = []
    for version in others:
        other_py = bin_of(envs[version], "python")
        quiet = ("-p", "no:cacheprovider")
        other_lane += [
            Stage(f"{version} core", other_py, "-m", "pytest", "-m", "core", *quiet,
                  *CORE_TESTS),
            Stage(f"{version} loop health", other_py, "-m", "pytest", "-m", "not slow", *quiet,
                  *MONITOR_TESTS),
            Stage(f"{version} notebook", other_py, "-m", "pytest", *quiet, *KERNEL_TESTS),
        ]
        if version in NESTED_ON:
            # Real kernels running real libraries' nested loops.
            other_lane.append(Stage(f"{version} real libraries", other_py, "-m", "pytest",
                                    *quiet, *NESTED_TESTS))
    other_lane.append(Stage(
        "oldest starlette-fastapi", bin_of(envs["oldest-web"], "python"), "-m", "pytest",
        "-m", "not slow", "-p", "no:cacheprovider", *ROUTE_TESTS,
    ))
    for fork in FORKS:
        other_lane.append(Stage(f"{fork}", bin_of(envs[fork], "python"), "-m", "pytest",
                                "-p", "no:cacheprovider", *FORK_TESTS))
    other_lane.append(Stage(
        "docs site", bin_of(envs["docs"], "mkdocs"), "build", "--strict", "--quiet",
        "-d", tempfile.mkdtemp(prefix="loopwatch-site-"),
    ))
    passed = run_lanes([main_lane, other_lane])
    stages = main_lane + other_lane
    say("stage times: " + ", ".join(f"{s.name} {s.seconds:.0f}s" for s in stages))
    say(f"total {time.monotonic() - total:.0f}s")
    if missing:
        say(f"no interpreter found for Python {', '.join(missing)}: core tests not run there")
        if IN_CI:
            return 1
    return 0 if passed else 1


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    try:
        return demo(argv[1:]) if argv[0] == "demo" else test(argv[1:])
    except subprocess.CalledProcessError as exc:
        say(f"failed ({exc.returncode}): {' '.join(map(str, exc.cmd))}")
        return exc.returncode or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
