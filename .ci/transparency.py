#!/usr/bin/env python3
"""Transparency job: CPython's own ``test_asyncio``, bare and with loopwatch installed at start.

For each interpreter given, the suite runs twice with regrtest (``python -m test -jN
--junit-xml``): once bare, once under ``python -m loopwatch run --`` (the sitecustomize hook
with loopwatch's defaults, exactly what a user of ``loopwatch run`` gets; regrtest's worker
processes and the tests' own subprocesses inherit it through ``PYTHONPATH``). The outcome of
every test case, and every test file that crashed, timed out, altered the execution
environment ("env changed", e.g. a dangling thread) or failed outside a test case, is compared.
The only differences allowed are those listed in ``tests/cpython_asyncio_allowed.txt``, each
with its reason. Exit status: 0 no other difference, 1 differences, 2 the job could not run.

Usage (from the repository root)::

    python3 .ci/transparency.py [PYTHON ...] [--jobs 2] [--out DIR] [--env NAME=VALUE ...]

PYTHON is an interpreter path or a version (``3.11``): a version means the project's venv for
it, ``.venv`` when that is the version, else ``.venv-3.X`` (the ones ``dev.py test`` builds).
Without PYTHON every supported version with a venv is used. ``--env`` adds variables to the
loopwatch run only (``--env LOOPWATCH_WATCHDOG=0``), for diagnosis.

Before anything is timed, the bytecode of the loopwatch each interpreter imports is
compiled: under ``PYTHONDONTWRITEBYTECODE`` an editable install edited since it was last
compiled would otherwise be compiled again by every watched process.

Each run is checked to have really been bare or really watched: a second ``sitecustomize``
written by this script (loopwatch's hook chains to it; bare, it runs alone) records in every
process whether loopwatch is installed there, at start and at exit (``loopwatch run``
installs once asyncio is imported), and the job stops if any regrtest worker disagrees with
the mode. Needs only the standard library.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
ALLOWED_FILE = ROOT / "tests" / "cpython_asyncio_allowed.txt"
# Not a LOOPWATCH_* name: loopwatch warns about variables of its prefix it does not know, and
# the tests that read a child's stderr would see that warning.
MARKER_VARIABLE = "TRANSPARENCY_JOB_MARKERS"

# Written next to nothing else into a temporary directory on PYTHONPATH. Only `os`, `sys`
# and asyncio (imported in both runs, see below): the probe must not change what the tests
# observe (threads, modules regrtest compares) between the two runs.
MARKER_SITECUSTOMIZE = '''\
"""Transparency probe: records whether loopwatch is installed in this process."""
import os
import sys


def _record():
    folder = os.environ.get("TRANSPARENCY_JOB_MARKERS")
    if not folder:
        return
    monitor = sys.modules.get("loopwatch._monitor")
    installed = monitor is not None and monitor.current() is not None
    record = {"pid": os.getpid(), "argv": list(getattr(sys, "orig_argv", sys.argv)),
              "installed": installed}
    # Subinterpreters share the pid: a random suffix keeps their records apart.
    name = "%d-%s.marker" % (os.getpid(), os.urandom(4).hex())
    with open(os.path.join(folder, name), "w") as out:
        out.write(repr(record))


def _chain():
    import importlib.machinery
    import importlib.util

    # Only the entries after this one: a sitecustomize earlier on the path (loopwatch's hook)
    # chained to this one already, and searching it again would recurse.
    here = os.path.dirname(os.path.abspath(__file__))
    entries = [os.path.abspath(p or os.curdir) for p in sys.path]
    path = sys.path[entries.index(here) + 1:] if here in entries else []
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _record_safely():
    try:
        _record()
    except Exception as exc:
        sys.stderr.write("transparency probe failed: %r\\n" % (exc,))


# loopwatch run installs when asyncio is first imported, and its threads start then.
# regrtest snapshots the threads before a test file imports asyncio: a thread started by
# that import would read as one the test left behind. Both runs' regrtest workers import
# asyncio here, at start, so the watched one is installed before regrtest looks, as a
# service is before its framework runs. Only the workers (3.11+: test.libregrtest.worker;
# 3.10: --worker-args): the Pythons the tests start themselves (hundreds, most of them
# never importing asyncio) stay as they would be, and a full install in each would be most
# of the watched run's extra time.
_argv = getattr(sys, "orig_argv", sys.argv)
if "test.libregrtest.worker" in _argv or "--worker-args" in _argv:
    try:
        import asyncio  # noqa: F401
    except Exception as exc:
        sys.stderr.write("transparency probe: asyncio: %r\\n" % (exc,))
_record_safely()
# Again at exit (a process that installed later is seen then).
import atexit  # noqa: E402 - a builtin module, imported by the interpreter anyway

atexit.register(_record_safely)
_chain()
'''

# regrtest's one-line verdicts for a test file, 3.10-3.13 wording.
FILE_STATES = (
    ("failed (env changed)", "env-changed"),
    ("failed (uncaught exception)", "crashed"),
    ("worker non-zero exit code", "crashed"),
    ("worker bug", "crashed"),
    ("crashed", "crashed"),
    ("timed out", "timed-out"),
    ("interrupted", "crashed"),
)
PROGRESS = re.compile(r"\] (test_asyncio\.[\w.]+) (.*)$")
ENV_WARNING = re.compile(
    r"^Warning -- (?:.* was modified by (test_asyncio\.[\w.]+)"
    r"|threading_cleanup\(\)|Dangling thread|.*dangling)"
)
TIMEOUT_DUMP = re.compile(r"^Timeout \(\d+:\d\d:\d\d\)!$")
SUMMARY_HEADER = re.compile(r"^(?:All )?\d+ (?:re-run )?tests? (.*):$")


class JobError(Exception):
    """The job itself could not run (no interpreter, loopwatch missing, no results)."""


@dataclass
class Run:
    """One regrtest run of test_asyncio: per-case outcomes and per-file verdicts."""

    mode: str
    cases: dict[str, str] = field(default_factory=dict)  # id -> passed/failure/error/skipped/...
    messages: dict[str, str] = field(default_factory=dict)  # id -> "Type: first line"
    files: dict[str, str] = field(default_factory=dict)  # test file -> crashed/timed-out/...
    seconds: float = 0.0
    # CPU seconds of every process of the run: steadier than wall time on a shared machine.
    cpu: float = 0.0
    returncode: int = 0

    @property
    def bad(self) -> set[str]:
        return {case for case, outcome in self.cases.items() if outcome in ("failure", "error")}

    def items(self) -> dict[str, str]:
        """Everything that went wrong, keyed like the allowed list."""
        found = {case: self.cases[case] for case in self.bad}
        for name, state in self.files.items():
            found[f"{state}:{name}"] = state
        return found


def say(message: str) -> None:
    print(f"[transparency] {message}", flush=True)


def short_id(test_id: str) -> str:
    return test_id.removeprefix("test.")


def file_of(case: str) -> str:
    # test_asyncio.test_tasks.CTask_CFuture_Tests.test_x -> test_asyncio.test_tasks
    return ".".join(case.split(".")[:2])


# -- interpreters ---------------------------------------------------------------------------


def version_of(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise JobError(f"{python} does not run: {out.stderr.strip()}")
    return out.stdout.strip()


def resolve(spec: str) -> tuple[str, str]:
    """An interpreter path and its version, from a path or a version number."""
    if re.fullmatch(r"3\.\d+", spec):
        for env in (ROOT / ".venv", ROOT / f".venv-{spec}"):
            python = env / "bin" / "python"
            if python.exists() and version_of(str(python)) == spec:
                return str(python), spec
        raise JobError(f"no venv for Python {spec} (.venv or .venv-{spec}); run dev.py test")
    return spec, version_of(spec)


def default_pythons() -> list[str]:
    found = []
    for version in SUPPORTED:
        try:
            found.append(resolve(version)[0])
        except JobError:
            say(f"no venv for Python {version}: skipped")
    return found


def asyncio_test_files(python: str, only: list[str]) -> list[str]:
    """The files regrtest splits test_asyncio into (3.11+ does it for -j; 3.10 does not)."""
    code = (
        "import os, test.test_asyncio as t\n"
        "d = os.path.dirname(t.__file__)\n"
        "for n in sorted(os.listdir(d)):\n"
        "    if n.startswith('test_') and (n.endswith('.py') or "
        "os.path.isdir(os.path.join(d, n))):\n"
        "        print('test_asyncio.' + n.removesuffix('.py'))\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False,
                         cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise JobError(f"{python} has no test.test_asyncio: {out.stderr.strip()}")
    names = out.stdout.split()
    if only:
        wanted = {n if n.startswith("test_asyncio.") else f"test_asyncio.{n}" for n in only}
        names = [n for n in names if n in wanted]
    return names


# -- one regrtest run -----------------------------------------------------------------------


def run_regrtest(
    python: str, mode: str, tests: list[str], out: Path, jobs: int, timeout: float,
    extra_env: dict[str, str], skip: list[str],
) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    probe_dir = out / "probe"
    markers = out / "markers"
    for folder in (probe_dir, markers):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    (probe_dir / "sitecustomize.py").write_text(MARKER_SITECUSTOMIZE)
    # What the caller's shell says about loopwatch must not leak into either run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    env["PYTHONPATH"] = str(probe_dir)
    env[MARKER_VARIABLE] = str(markers)
    junit = out / "junit.xml"
    junit.unlink(missing_ok=True)
    ignore = [arg for case in skip for arg in ("--ignore", f"test.{case}")]
    command = [python, "-m", "test", f"-j{jobs}", "--junit-xml", str(junit),
               f"--timeout={timeout:g}", *ignore, *tests]
    if mode != "bare":
        env.update(extra_env)
        command = [python, "-m", "loopwatch", "run", "--", *command]
    log = out / "regrtest.log"
    say(f"{mode}: {' '.join(command[:8])} ... ({len(tests)} test files) > {log}")
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as sink:
        # A scratch cwd: the repository root on sys.path would make loopwatch importable bare.
        proc = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                              cwd=out, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = Run(mode=mode, seconds=time.monotonic() - started, cpu=cpu,
              returncode=proc.returncode)
    check_probe(markers, mode)
    text = log.read_text(errors="replace")
    if not junit.exists():
        raise JobError(f"{mode}: regrtest wrote no {junit.name} (exit {proc.returncode}); "
                       f"see {log}")
    read_junit(junit, run)
    read_verdicts(text, run)
    # A file regrtest calls failed with no failing case in it: a setUpModule/setUpClass error.
    failed = summary_blocks(text).get("failed", set())
    failing_files = {file_of(case) for case in run.bad}
    for name in failed - failing_files - set(run.files):
        run.files[name] = "failed-outside-cases"
    save(run, out)
    return run


def check_probe(markers: Path, mode: str) -> None:
    """Every regrtest process must really be bare, or really have loopwatch installed."""
    by_pid: dict[int, dict[str, object]] = {}
    for path in markers.glob("*.marker"):
        record = ast.literal_eval(path.read_text())
        seen = by_pid.setdefault(record["pid"], {"argv": record["argv"], "installed": False})
        seen["installed"] = bool(seen["installed"]) or bool(record["installed"])
    workers = {
        pid: seen for pid, seen in by_pid.items()
        if any("libregrtest.worker" in a or a == "--worker-args" for a in seen["argv"])  # type: ignore[attr-defined]
    }
    if not workers:
        raise JobError(f"{mode}: no regrtest worker recorded itself; is -j given and "
                       "PYTHONPATH inherited?")
    want = mode != "bare"
    wrong = [pid for pid, seen in workers.items() if seen["installed"] != want]
    if wrong:
        state = "not installed" if want else "installed"
        raise JobError(f"{mode}: loopwatch {state} in {len(wrong)} of {len(workers)} "
                       "regrtest workers")
    say(f"{mode}: {len(workers)} regrtest workers checked, loopwatch "
        f"{'installed' if want else 'absent'} in each")


def read_junit(path: Path, run: Run) -> None:
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        if not name:
            continue
        test_id = short_id(name)
        tags = {child.tag: child for child in case}
        outcome = "passed"
        for tag in ("error", "failure", "skipped"):
            if tag in tags:
                outcome = tag
                break
        else:
            if case.get("outcome") == "UNEXPECTED_SUCCESS":
                outcome = "unexpected-success"
        # A case with subtests can be reported more than once: keep the worst.
        if run.cases.get(test_id) in ("error", "failure") and outcome not in ("error", "failure"):
            continue
        run.cases[test_id] = outcome
        if outcome in ("error", "failure"):
            detail = tags[outcome]
            message = (detail.get("message") or "").strip().splitlines()
            kind = detail.get("type") or ""
            run.messages[test_id] = (message[-1] if message else kind)[:300]
            with (path.parent / "tracebacks.txt").open("a") as tb:
                tb.write(f"=== {test_id} [{outcome}]\n{detail.text or ''}\n")


def read_verdicts(text: str, run: Run) -> None:
    current = None
    for line in text.splitlines():
        match = PROGRESS.search(line)
        if match:
            current, verdict = match.groups()
            for words, state in FILE_STATES:
                if verdict.startswith(words) or f" {words}" in verdict:
                    run.files[current] = state
                    break
            continue
        # regrtest prints a failed file's warnings (dangling threads, a changed event loop
        # policy) but calls it "failed", not "env changed": the warnings count on their own.
        # A worker's output follows its progress line.
        if current and TIMEOUT_DUMP.match(line):
            # regrtest's own --timeout fired inside the worker, which then exits with 1.
            run.files[current] = "timed-out"
            continue
        warning = ENV_WARNING.match(line)
        if warning and (warning.group(1) or current):
            name = warning.group(1) or current
            run.files.setdefault(name, "env-changed")  # type: ignore[arg-type]
    for name in summary_blocks(text).get("env-changed", set()):
        run.files.setdefault(name, "env-changed")


def summary_blocks(text: str) -> dict[str, set[str]]:
    """regrtest's closing summary: "2 tests failed:" followed by indented names."""
    blocks: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in text.splitlines():
        header = SUMMARY_HEADER.match(line)
        if header:
            title = header.group(1)
            key = ("env-changed" if "altered the execution environment" in title
                   else "failed" if title.startswith("failed") else title)
            current = blocks.setdefault(key, set())
            continue
        if current is not None and line.startswith("    ") and line.strip():
            current.update(n for n in line.split() if n.startswith("test_asyncio"))
        else:
            current = None
    return blocks


def timing(run: Run) -> str:
    return f"{run.seconds:.0f} s, {run.cpu:.0f} s CPU"


def save(run: Run, out: Path) -> None:
    data = {
        "mode": run.mode, "seconds": round(run.seconds, 1), "cpu": round(run.cpu, 1),
        "returncode": run.returncode,
        "cases": run.cases, "messages": run.messages, "files": run.files,
    }
    (out / "results.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    (out / "failing.txt").write_text("".join(f"{k}\n" for k in sorted(run.items())))


def load(out: Path) -> Run:
    data = json.loads((out / "results.json").read_text())
    return Run(mode=data["mode"], cases=data["cases"], messages=data["messages"],
               files=data["files"], seconds=data["seconds"], cpu=data.get("cpu", 0.0),
               returncode=data["returncode"])


# -- comparing ------------------------------------------------------------------------------


def differences(bare: Run, watched: Run) -> dict[str, str]:
    """Each case or file whose result differs: id -> "bare X, loopwatch Y"."""
    diff: dict[str, str] = {}
    crashed = {name for name, state in {**bare.files, **watched.files}.items()
               if state in ("crashed", "timed-out")}
    for case in sorted(set(bare.cases) | set(watched.cases)):
        before = bare.cases.get(case, "not run")
        after = watched.cases.get(case, "not run")
        if before == after:
            continue
        if "not run" in (before, after) and file_of(case) in crashed:
            continue  # reported once, as the file's crash
        diff[case] = f"bare {before}, loopwatch {after}"
    for name in sorted(set(bare.files) | set(watched.files)):
        before, after = bare.files.get(name), watched.files.get(name)
        if before != after:
            for state in {before, after} - {None}:
                key = f"{state}:{name}"
                diff[key] = (f"bare {'yes' if before == state else 'no'}, "
                             f"loopwatch {'yes' if after == state else 'no'}")
    return diff


@dataclass
class Allowed:
    """The allowed list: id or ``fnmatch`` pattern -> (versions, empty = all; reason)."""

    entries: dict[str, tuple[set[str], str]]

    def match(self, key: str, version: str) -> str | None:
        """The entry that allows ``key`` on ``version``, or None."""
        for pattern, (versions, _) in self.entries.items():
            if (versions and version not in versions) or pattern.startswith("skip:"):
                continue
            if pattern == key or ("*" in pattern and fnmatch.fnmatchcase(key, pattern)):
                return pattern
        return None

    def for_version(self, version: str) -> set[str]:
        return {k for k, (versions, _) in self.entries.items()
                if (not versions or version in versions) and not k.startswith("skip:")}

    def skipped(self, version: str) -> list[str]:
        """Test cases not run at all on ``version``: flaky bare, they would cost the timeout."""
        return sorted(k.removeprefix("skip:") for k, (versions, _) in self.entries.items()
                      if k.startswith("skip:") and (not versions or version in versions))


def read_allowed(path: Path) -> Allowed:
    """``ID [3.10 3.11 ...]  # reason``; a comment block above the ID also counts as reason."""
    entries: dict[str, tuple[set[str], str]] = {}
    pending: list[str] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            pending = []
            continue
        if line.startswith("#"):
            pending.append(line.lstrip("# "))
            continue
        body, _, comment = line.partition("#")
        words = body.split()
        reason = comment.strip() or " ".join(pending)
        if not reason:
            raise JobError(f"{path.name}:{number}: {words[0]} has no reason (# ...)")
        versions = set(words[1:])
        bad = versions - set(SUPPORTED)
        if bad:
            raise JobError(f"{path.name}:{number}: unknown Python version {sorted(bad)}")
        entries[short_id(words[0])] = (versions, reason)
    return Allowed(entries)


def counts(run: Run) -> str:
    run_total = sum(1 for o in run.cases.values() if o != "skipped")
    extra = f", {len(run.files)} file verdicts" if run.files else ""
    return f"{len(run.bad)} failed / {run_total} run{extra}"


def compare(version: str, bare: Run, watched: Run, allowed: Allowed,
            out: Path) -> tuple[dict[str, str], dict[str, str]]:
    diff = differences(bare, watched)
    ok = {k: v for k, v in diff.items() if allowed.match(k, version)}
    not_ok = {k: v for k, v in diff.items() if k not in ok}
    report = [f"Python {version}: bare {counts(bare)}; loopwatch {counts(watched)}"]
    for title, run in (("bare", bare), ("loopwatch", watched)):
        report.append(f"-- failing with {title} ({len(run.items())}):")
        report.extend(f"   {k}  [{run.messages.get(k, v)}]" for k, v in sorted(run.items().items()))
    report.append(f"-- differences ({len(diff)}; allowed {len(ok)}):")
    for key, what in diff.items():
        mark = "allowed" if key in ok else "NOT ALLOWED"
        why = watched.messages.get(key) or bare.messages.get(key) or ""
        report.append(f"   {mark:11} {key}: {what}" + (f"  [{why}]" if why else ""))
    (out / f"{version}-diff.txt").write_text("\n".join(report) + "\n")
    return ok, not_ok


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pythons", nargs="*", help="interpreter paths or versions (3.11)")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300,
                        help="regrtest's per-file timeout in seconds (default 300)")
    parser.add_argument("--out", type=Path, help="where logs and results go (default: a temp dir)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra variable for the loopwatch run only (diagnosis)")
    parser.add_argument("--tests", default="",
                        help="comma-separated test_asyncio files to run (default: all)")
    parser.add_argument("--reuse-bare", type=Path, metavar="DIR",
                        help="take the bare results from an earlier --out DIR")
    parser.add_argument("--rerun-limit", type=int, default=6,
                        help="re-run up to this many files with unlisted differences once, "
                             "bare and watched, to set flaky results apart (default 6)")
    parser.add_argument("--bare-only", action="store_true",
                        help="only the bare run (timing, or results for --reuse-bare later)")
    parser.add_argument("--allowed", type=Path, default=ALLOWED_FILE)
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="time N bare/watched pairs per Python (the later ones for the CPU "
                             "ratio only, alternating which goes first) and print the median "
                             "ratio with its range (default 1)")
    args = parser.parse_args(argv)
    try:
        extra_env = dict(item.split("=", 1) for item in args.env)
    except ValueError:
        parser.error("--env takes NAME=VALUE")
    out = args.out or Path(tempfile.mkdtemp(prefix="loopwatch-transparency-"))
    out = out.resolve()
    try:
        allowed = read_allowed(args.allowed)
        pythons = [resolve(p) for p in args.pythons] or [
            (p, version_of(p)) for p in default_pythons()]
        if not pythons:
            raise JobError("no interpreter to run")
        verdicts = []
        for python, version in pythons:
            verdicts.append(one_python(python, version, args, extra_env, allowed, out))
    except JobError as exc:
        say(f"cannot run: {exc}")
        return 2
    say(f"results under {out}")
    for line in verdicts:
        print(line[0])
    return 1 if any(not good for _, good in verdicts) else 0


# Compiles the bytecode of the loopwatch this interpreter imports. Under
# PYTHONDONTWRITEBYTECODE an editable install whose modules changed since they were last
# compiled is compiled again by every process of the watched run, which then measures that.
_COMPILE = (
    "import compileall, os, sys, loopwatch; "
    "sys.exit(not compileall.compile_dir(os.path.dirname(loopwatch.__file__), quiet=1))"
)


def compile_loopwatch(python: str) -> None:
    done = subprocess.run([python, "-c", _COMPILE], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise JobError(f"could not compile loopwatch for {python}: {done.stderr.strip()}")


def one_python(python: str, version: str, args: argparse.Namespace, extra_env: dict[str, str],
               allowed: Allowed, out: Path) -> tuple[str, bool]:
    tests = asyncio_test_files(python, [t for t in args.tests.split(",") if t])
    if not tests:
        raise JobError(f"no test_asyncio files selected for {python}")
    compile_loopwatch(python)
    here = out / version
    skip = allowed.skipped(version)
    if args.reuse_bare:
        bare = load(args.reuse_bare.resolve() / version / "bare")
        say(f"{version}: bare results reused from {args.reuse_bare}")
    else:
        bare = run_regrtest(python, "bare", tests, here / "bare", args.jobs, args.timeout, {},
                            skip)
    if args.bare_only:
        return f"{version}: bare {counts(bare)} ({timing(bare)})", True
    watched = run_regrtest(python, "loopwatch", tests, here / "loopwatch", args.jobs,
                           args.timeout, extra_env, skip)
    ok, not_ok = compare(version, bare, watched, allowed, here)
    flaky: dict[str, str] = {}
    # Crashes and timeouts are not re-run: they would cost the timeout again.
    files = sorted({file_of(k.split(":")[-1]) for k in not_ok
                    if not k.startswith(("crashed:", "timed-out:"))})
    if not_ok and len(files) <= args.rerun_limit:
        say(f"{version}: re-running {', '.join(files)} once, bare and watched")
        bare2 = run_regrtest(python, "bare", files, here / "bare-rerun", args.jobs,
                             args.timeout, {}, skip)
        watched2 = run_regrtest(python, "loopwatch", files, here / "loopwatch-rerun",
                                args.jobs, args.timeout, extra_env, skip)
        again = differences(bare2, watched2)
        flaky = {k: v for k, v in not_ok.items() if k not in again}
        not_ok = {k: v for k, v in not_ok.items() if k in again}
    used = {allowed.match(k, version) for k in ok}
    stale = sorted(allowed.for_version(version) - used)
    print(f"\n==== Python {version} ({python})")
    print((here / f"{version}-diff.txt").read_text(), end="")
    for key, what in flaky.items():
        print(f"   flaky (gone on re-run, not counted): {key}: {what}")
    if stale:
        print(f"   listed as allowed but not different here ({len(stale)}): "
              + ", ".join(stale))
    if flaky:
        print(f"   still not allowed after the re-run: {len(not_ok)}")
    cost = f"{watched.cpu / bare.cpu:.2f}x" if bare.cpu > 0 else "unknown"
    if args.repeat > 1 and bare.cpu > 0:
        cost = repeated_cost(python, version, tests, args, extra_env, skip, here,
                             watched.cpu / bare.cpu)
    line = (f"{version}: bare {counts(bare)} ({timing(bare)}); loopwatch "
            f"{counts(watched)} ({timing(watched)}; CPU {cost} bare); "
            f"allowed differences {len(ok)}; "
            f"not allowed {len(not_ok)}; skipped as flaky bare {len(skip)}")
    return line, not not_ok


def repeated_cost(python: str, version: str, tests: list[str], args: argparse.Namespace,
                  extra_env: dict[str, str], skip: list[str], here: Path, first: float) -> str:
    """The CPU ratio over ``--repeat`` pairs: the first pair's, then pairs timed only.

    A shared machine's load moves a single run's CPU time by a quarter either way; the
    median of several pairs, each run back to back and alternating which goes first, is
    the figure to quote.
    """
    ratios = [first]
    for i in range(1, args.repeat):
        order = ("loopwatch", "bare") if i % 2 else ("bare", "loopwatch")
        cpu: dict[str, float] = {}
        for mode in order:
            run = run_regrtest(python, mode, tests, here / f"{mode}-{i + 1}", args.jobs,
                               args.timeout, extra_env if mode == "loopwatch" else {}, skip)
            cpu[mode] = run.cpu
        if cpu["bare"] > 0:
            ratios.append(cpu["loopwatch"] / cpu["bare"])
            say(f"{version}: pair {i + 1}: CPU {cpu['bare']:.0f} s bare, "
                f"{cpu['loopwatch']:.0f} s watched, {ratios[-1]:.2f}x")
    ordered = sorted(ratios)
    middle = len(ordered) // 2
    median = (ordered[middle] if len(ordered) % 2
              else (ordered[middle - 1] + ordered[middle]) / 2)
    listed = ", ".join(f"{r:.2f}" for r in ratios)
    return f"{median:.2f}x median of {len(ratios)} pairs ({listed})"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
