"""Real async projects' own test suites, bare and under ``pytest --loopwatch``.

For each suite below: download its sdist at the pinned version (``pip download --no-binary
:all: --no-deps``), unpack it, make a virtual environment of its own with the project
installed editable (as its maintainers run it) plus what its tests import, and loopwatch from
this checkout; then run the suite twice in that environment, bare and with ``--loopwatch``,
and compare the outcome of every test (from JUnit XML).

Printed per suite: tests run, failures bare, **extra failures** (tests that pass or skip bare
and fail or err under the plugin, each listed), and the wall-time ratio (one run each, on a
shared machine: a rough figure, not a benchmark of the plugin's cost).

Everything downloaded or built lives in a cache directory outside the repository
(``--cache``, default ``<system temp>/loopwatch-suites``); environments are reused between
runs. The loopwatch configuration of a suite is at most one line (``LOOPWATCH_LINE``), the
counterpart of what the project's own blockbuster setup allows.

Run: ``python benchmarks/plugin_suites.py [--suite NAME ...] [--prepare-only] [-k EXPR]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Suite:
    """One project's suite: where it comes from, what it needs, how it runs."""

    name: str
    requirement: str  # pip requirement of the sdist, pinned
    install: tuple[str, ...]  # pip arguments after the project itself ("." = the project)
    args: tuple[str, ...]  # pytest arguments (paths, selection, overrides of addopts)
    loopwatch_line: str = ""  # the one ini line for loopwatch ("key=value"), or ""
    env: tuple[tuple[str, str], ...] = ()


SUITES = [
    Suite(
        "anyio", "anyio==4.16.0",
        ("-e", ".[trio]", "blockbuster", "hypothesis", "psutil", "pytest", "pytest-mock",
         "pytest-timeout", "trustme", "truststore", "uvloop"),
        # asyncio and asyncio+uvloop backends; trio is not an asyncio loop.
        ("tests", "-m", "not network", "-k", "not trio", "-p", "no:cacheprovider"),
    ),
    Suite(
        "aiohttp", "aiohttp==3.14.5",
        ("-e", ".", "-r", "requirements/test.txt"),
        ("tests", "-n", "0", "--no-cov", "-p", "no:cacheprovider"),
        # Its blockbuster fixture: "save/load is not async, so we must allow this".
        "loopwatch_allow=aiohttp.cookiejar:CookieJar.load aiohttp.cookiejar:CookieJar.save",
        env=(("AIOHTTP_NO_EXTENSIONS", "1"),),
    ),
    Suite(
        "httpx", "httpx==0.29.0",
        ("-e", ".[brotli,zstd,cli,http2,socks]", "pytest", "trio", "trustme", "uvicorn",
         "chardet"),
        ("tests", "-p", "no:cacheprovider"),
    ),
    Suite(
        "starlette", "starlette==1.10.0",
        ("-e", ".[full]", "httpx2[zstd]", "blockbuster", "importlib-metadata",
         "opentelemetry-sdk", "pytest", "trio"),
        ("tests", "-p", "no:cacheprovider"),
    ),
    Suite(
        "fastapi-tutorial", "fastapi==0.165.0",
        ("-e", ".[standard]", "pytest<9.2", "dirty-equals", "inline-snapshot", "sqlmodel",
         "flask", "pyjwt", "pwdlib[argon2]", "strawberry-graphql", "a2wsgi", "pyyaml",
         "anyio[trio]", "pytest-timeout", "python-slugify", "typer", "sentry-sdk",
         "opentelemetry-instrumentation-fastapi", "pytest-xdist"),
        ("tests/test_tutorial", "-n", "0", "-p", "no:cacheprovider"),
        env=(("PYTHONPATH", "./docs_src"),),  # as its scripts/test.sh runs them
    ),
    Suite(
        "uvicorn", "uvicorn==0.55.0",
        # Its dev group: tests/benchmarks run as plain tests with pytest-codspeed installed.
        ("-e", ".[standard]", "pytest", "pytest-mock", "pytest-xdist[psutil]", "trustme",
         "cryptography", "httpx2", "a2wsgi", "wsproto", "pytest-codspeed", "zttp"),
        ("tests", "-n", "0", "-p", "no:cacheprovider"),
    ),
    Suite(
        "aiosqlite", "aiosqlite==0.22.1", ("-e", ".", "pytest"),
        # unittest cases in smoke.py (perf.py is its benchmark)
        ("aiosqlite/tests/smoke.py", "-p", "no:cacheprovider"),
    ),
    Suite(
        "pytest-asyncio", "pytest-asyncio==1.5.0", ("-e", ".[testing]", "pytest"),
        ("-p", "no:cacheprovider"),
    ),
    Suite(
        "sse-starlette", "sse-starlette==3.7.1",
        ("-e", ".", "asgi-lifespan", "httpx2", "pytest", "pytest-asyncio", "uvicorn",
         "starlette", "psutil"),
        # The sdist lacks tests/anyio_compat.py: the two modules importing it cannot run.
        ("tests", "-m", "not integration and not experimentation", "-p", "no:cacheprovider",
         "--continue-on-collection-errors"),
    ),
]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    print("  $", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def prepare(suite: Suite, cache: Path) -> tuple[Path, Path]:
    """The unpacked source tree and the environment's python, made once and cached."""
    sdists = cache / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    project = suite.requirement.split("==")[0]
    stem = f"{project.replace('-', '_')}-{suite.requirement.split('==')[1]}"
    archive = next(iter(sorted(sdists.glob(f"{stem}.tar.gz"))), None) or next(
        iter(sorted(sdists.glob(f"{project}-{suite.requirement.split('==')[1]}.tar.gz"))), None
    )
    if archive is None:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
              "--no-deps", suite.requirement, "-d", str(sdists)], cache)
        archive = next(iter(sorted(sdists.glob(f"*{suite.requirement.split('==')[1]}.tar.gz"))))
    source = cache / "src" / archive.name.removesuffix(".tar.gz")
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(source.parent, filter="data")
    env_dir = cache / "venvs" / suite.name
    python = env_dir / "bin" / "python"
    done = env_dir / ".installed"
    if not done.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        env = {**os.environ, **dict(suite.env)}
        env.pop("PYTHONPATH", None)
        _run([str(python), "-m", "pip", "install", "-q", *suite.install], source, env)
        done.write_text("ok\n")
    _use_this_checkout(python, source, suite)
    return source, python


def _use_this_checkout(python: Path, source: Path, suite: Suite) -> None:
    """Install loopwatch editable from the checkout this script is in, unless it already is.

    Environments are cached and shared by checkouts of the repository: the one that runs
    the suites must be the one measured.
    """
    env = {**os.environ, **dict(suite.env)}
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [str(python), "-c", "import loopwatch; print(loopwatch.__file__)"],
        cwd=source, env=env, capture_output=True, text=True,
    ).stdout.strip()
    if where and Path(where).resolve().parent == REPO / "loopwatch":
        return
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], source, env)


def outcomes(junit: Path) -> dict[str, str]:
    """nodeid-ish key -> passed / failed / error / skipped, from a JUnit XML report."""
    found: dict[str, str] = {}
    if not junit.exists():
        return found
    for case in ET.parse(junit).iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed" if child.tag == "failure" else "error"
                break
            if child.tag == "skipped":
                state = "skipped"
        # A test with a passing call and a failing teardown appears twice: keep the worst.
        if found.get(key) in ("failed", "error"):
            continue
        found[key] = state
    return found


def run_once(
    suite: Suite, source: Path, python: Path, watched: bool, extra: list[str], out: Path,
    pair: int = 1,
) -> tuple[dict[str, str], float, str]:
    # Each pair's reports are kept (the first pair's without a number).
    name = f"{suite.name}-{'watched' if watched else 'bare'}" + (f"-{pair}" if pair > 1 else "")
    junit = out / f"{name}.xml"
    junit.unlink(missing_ok=True)
    cmd = [str(python), "-m", "pytest", *suite.args, *extra, "-q", f"--junitxml={junit}",
           "-o", "junit_logging=no", "-o", "junit_family=xunit1"]
    if watched:
        cmd.append("--loopwatch")
        if suite.loopwatch_line:
            cmd += ["-o", suite.loopwatch_line]
    else:
        cmd.append("--no-loopwatch")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("LOOPWATCH_DISABLE", None)
    # Without bytecode files pytest rewrites every module again in each in-process pytester
    # session (they restore sys.modules): pytest-asyncio's suite took 4x longer.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(suite.env)  # after: a suite may set its own PYTHONPATH
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    log = out / f"{name}.log"
    log.write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return outcomes(junit), elapsed, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "loopwatch-suites")
    parser.add_argument("--suite", action="append", choices=[s.name for s in SUITES])
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("-k", dest="keyword", help="pytest -k for every suite run")
    parser.add_argument("--path", help="run only this path of the suite (e.g. tests/test_x.py)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run N alternating bare/watched pairs: an extra failure of any pair "
                             "is listed with how many pairs had it; the ratio is the median "
                             "of the pairs' ratios")
    ns = parser.parse_args()
    chosen = [s for s in SUITES if not ns.suite or s.name in ns.suite]
    out = ns.cache / "reports"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    order = ["aiosqlite", "pytest-asyncio", "sse-starlette", "httpx", "starlette", "uvicorn",
             "fastapi-tutorial", "anyio", "aiohttp"]  # the longest last
    chosen.sort(key=lambda s: order.index(s.name))
    for suite in chosen:
        print(f"== {suite.name} ({suite.requirement})", flush=True)
        try:
            source, python = prepare(suite, ns.cache)
        except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
            rows.append(f"{suite.name:18} not installed here: {exc}")
            continue
        if ns.prepare_only:
            continue
        extra: list[str] = []
        if ns.keyword:
            extra += ["-k", ns.keyword]
        if ns.path:
            suite = dataclasses.replace(
                suite, args=(ns.path, *[a for a in suite.args if not a.startswith("tests")
                                        and not a.startswith("aiosqlite/tests")])
            )
        bare, t_bare, tail_bare = run_once(suite, source, python, False, extra, out)
        watched, t_watched, tail_watched = run_once(suite, source, python, True, extra, out)
        print(f"  bare:    {tail_bare}\n  watched: {tail_watched}", flush=True)
        pairs = [(t_bare, t_watched)]
        outcomes_of = [(bare, watched)]
        for pair in range(2, ns.repeat + 1):
            more_bare, more_t_bare, _ = run_once(suite, source, python, False, extra, out, pair)
            more_watched, more_t_watched, _ = run_once(
                suite, source, python, True, extra, out, pair
            )
            pairs.append((more_t_bare, more_t_watched))
            outcomes_of.append((more_bare, more_watched))
        bad = ("failed", "error")
        # An extra failure of any pair counts, with how many pairs had it.
        seen: dict[str, int] = {}
        for pair_bare, pair_watched in outcomes_of:
            for k, v in pair_watched.items():
                if v in bad and pair_bare.get(k) not in bad:
                    seen[k] = seen.get(k, 0) + 1
        extra_failures = sorted(seen)
        fixed = sorted(k for k, v in bare.items() if v in bad and watched.get(k) not in bad)
        bare_failed = sum(v in bad for v in bare.values())
        ratios = sorted(w / b if b else float("nan") for b, w in pairs)
        ratio = statistics.median(ratios)
        t_bare = statistics.median(b for b, _ in pairs)
        t_watched = statistics.median(w for _, w in pairs)
        spread = f", {len(pairs)} pairs {ratios[0]:.2f}-{ratios[-1]:.2f}" if len(pairs) > 1 else ""
        start = len(rows)
        rows.append(
            f"{suite.name:18} tests {len(bare):5}  failed bare {bare_failed:3}  "
            f"extra failures {len(extra_failures):3}  wall {t_bare:6.1f}s -> {t_watched:6.1f}s "
            f"({ratio:.2f}x{spread})" + (f"  config: {suite.loopwatch_line}"
                                         if suite.loopwatch_line else "")
        )
        for key in extra_failures:
            where = f" in {seen[key]} of {len(pairs)} pairs" if len(pairs) > 1 else ""
            rows.append(f"    extra: {key} ({watched.get(key, 'passed in the first')}{where})")
        for key in fixed:
            rows.append(f"    failed bare only: {key}")
        if len(watched) != len(bare):
            rows.append(f"    tests watched {len(watched)} != bare {len(bare)}")
        print("\n".join(rows[start:]), flush=True)
    print("\n".join(["", "== summary", *rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
