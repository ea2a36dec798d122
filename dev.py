#!/usr/bin/env python3
"""Developer entry point: needs only Python 3.10+ on the machine.

    python3 dev.py demo          set up .venv and run `loopwatch demo`
    python3 dev.py test          set up .venv, run ruff, mypy and the whole test suite, then the
                                 core, loop-health and notebook tests on every other supported
                                 Python found (3.10-3.13, and 3.14 when one is on PATH)
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
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
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
    env = main_env()
    return subprocess.call([str(bin_of(env, "loopwatch")), "demo", *args], cwd=ROOT)


def test(args: list[str]) -> int:
    fast = "--fast" in args
    args = [a for a in args if a != "--fast"]
    env = main_env()
    py = bin_of(env, "python")
    run(py, "-m", "ruff", "check", "loopwatch", "tests", "examples", "benchmarks", "integrations")
    run(py, "-m", "mypy", "--strict", "loopwatch")
    if fast:
        run(py, "-m", "pytest", "-m", "not slow", *args)
        return 0
    run(py, "-m", "pytest", *args)
    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    missing = []
    for version in SUPPORTED + OPTIONAL:
        if version == this:
            continue
        python = find_python(version)
        if python is None:
            if version in SUPPORTED:
                missing.append(version)
            else:
                say(f"no Python {version} found: not tested there")
            continue
        extras = "uvloop,testcore,testkernel" + (",testnested" if version in NESTED_ON else "")
        other = ensure_env(ROOT / f".venv-{version}", python, extras)
        run(
            bin_of(other, "python"),
            "-m",
            "pytest",
            "-m",
            "core",
            "-p",
            "no:cacheprovider",
            *CORE_TESTS,
        )
        run(
            bin_of(other, "python"),
            "-m",
            "pytest",
            "-m",
            "not slow",
            "-p",
            "no:cacheprovider",
            *MONITOR_TESTS,
        )
        run(bin_of(other, "python"), "-m", "pytest", "-p", "no:cacheprovider", *KERNEL_TESTS)
        if version in NESTED_ON:
            run(bin_of(other, "python"), "-m", "pytest", "-p", "no:cacheprovider", *NESTED_TESTS)
    # Not the whole test extra: the nested-run libraries there need a newer pydantic.
    oldest = ensure_env(
        ROOT / ".venv-oldest-web", sys.executable, "uvloop,fastapi,testcore", OLDEST_WEB
    )
    run(bin_of(oldest, "python"), "-m", "pytest", "-m", "not slow", "-p", "no:cacheprovider",
        *ROUTE_TESTS)
    for fork in FORKS:
        env = ensure_env(ROOT / f".venv-{fork}", sys.executable, f"test{fork}")
        run(bin_of(env, "python"), "-m", "pytest", "-p", "no:cacheprovider", *FORK_TESTS)
    if missing:
        say(f"no interpreter found for Python {', '.join(missing)}: core tests not run there")
        if IN_CI:
            return 1
    return 0


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
