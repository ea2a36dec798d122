"""The command line: ``loopwatch demo``, ``loopwatch run`` and ``loopwatch doctor``.

The demo and the wrapped commands run as real subprocesses (the way users run them); the
argument checks and ``doctor`` also run in-process through :func:`loopwatch.cli.main`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port

from loopwatch import cli
from loopwatch._incidents import hint_for
from loopwatch.demo import plan as _demo

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
# Found, not imported: importing the demo service installs loopwatch (it instruments its app).
DEMO_SOURCE = Path(importlib.util.find_spec("loopwatch.demo.service").origin)  # type: ignore[union-attr,arg-type]
WATCHED = {
    hazard: importlib.util.find_spec(module) is not None
    for hazard, (_, module) in _demo.HAZARDS.items()
}
ALL_WATCHED = all(WATCHED.values())
# Where each hazard is in the demo app: the line marked "# H<n>" and the function around it.
MARKED: dict[str, tuple[int, str]] = {}
_function = ""
for _number, _line in enumerate(DEMO_SOURCE.read_text().splitlines(), start=1):
    _m = re.match(r"\s*(?:async )?def (\w+)", _line)
    if _m:
        _function = _m.group(1)
    _m = re.search(r"# (H[1-9])\b", _line)
    if _m:
        MARKED[_m.group(1)] = (_number, _function)
# Hazards whose user line is the marked line itself (H4/H5 may point at the task's or the
# coroutine's own code instead, which is also in the app).
EXACT_LINE = ("H1", "H2", "H3")


def loopwatch_cmd(*args: str) -> list[str]:
    return [PY, "-m", "loopwatch", *args]


def run(cmd: list[str], timeout: float = 50, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def json_log_lines(stderr: str) -> list[dict[str, Any]]:
    """The ``loopwatch`` records of a JSON-lines stderr."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "loopwatch" and "loopwatch" in record:
                out.append(record["loopwatch"])
    return out


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- demo ----------------------------------------------------------------------------------


def test_demo_plan_covers_every_route() -> None:
    plan = _demo.plan_requests(60)
    assert len(plan) == 60
    assert {route for route, _ in plan} == set(_demo.ROUTES)
    assert plan == _demo.plan_requests(60)  # the same burst every run
    few = len(_demo.ROUTES)  # the fewest that still reach every route
    assert len(_demo.plan_requests(few)) == few
    assert all("{" not in path for _, path in plan)


def test_demo_without_fastapi_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert cli.main(["demo"]) == 2
    assert "pip install 'loopwatch[fastapi]'" in capsys.readouterr().err


def test_demo_port_taken_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(loopwatch_cmd("demo", "--port", str(port)))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.slow
def test_demo_answers_every_request_and_shows_each_hazard() -> None:
    result = run(loopwatch_cmd("demo"))
    out = result.stdout
    sent = 60 + len(_demo.burst_requests())
    assert f"Requests: {sent} sent, {sent} answered with 200" in out, out + result.stderr
    # The demo's own never-awaited coroutine (H5) is in the report, not printed raw above it.
    assert "was never awaited" not in result.stderr, result.stderr
    assert "RuntimeWarning" not in result.stderr, result.stderr
    for route in _demo.ROUTES:
        assert re.search(rf"{re.escape(route.handler)}\s+\d+ x 200$", out, re.M), route
    for hazard, watched in WATCHED.items():
        if not watched:
            assert f"{hazard} NOT WATCHED" in out
            continue
        assert re.search(rf"^  {hazard} caught \(\d+(x| now)\)", out, re.M), out
        line, function = MARKED[hazard]
        if hazard in EXACT_LINE:
            assert f"demo_app.py:{line} in {function}" in out, (hazard, out)
            # The source of the user line is shown under it.
            assert re.search(rf"^\s+{line} \| .*# {hazard}", out, re.M), (hazard, out)
    with_incidents = [r.hazard for r in _demo.ROUTES if r.kinds and WATCHED[r.hazard]]
    assert len(re.findall(r"^      hint\s", out, re.M)) >= len(with_incidents)
    assert "loopwatch_reentry_total{" in out
    assert 'handler="GET /customers/{customer_id}/report"' in out
    assert "_bucket" not in out
    # A hazard this build does not watch is said, and does not fail the run.
    assert result.returncode == 0, out + result.stderr
    watched = "" if ALL_WATCHED else " watched by this build"
    assert f"Result: every request was answered and every hazard{watched} was caught." in out
    # Tasks left behind (a state, not an event) are shown from the gauge.
    if WATCHED["H9"]:
        assert re.search(r"^  H9 caught \(\d+ now\)", out, re.M), out
        assert 'loopwatch_tasks{framework="fastapi",handler="GET /prices/{symbol}/watch"}' in out
    if WATCHED["H8"]:
        assert re.search(r"^  H8  threadpool_saturated anyio.to_thread.run_sync", out, re.M)
        assert 'loopwatch_threadpool_wait_seconds_count{framework="fastapi",handler="GET ' \
            '/invoices/{invoice_id}/pdf"}' in out


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_demo_json_incidents(loop: str) -> None:
    result = run(loopwatch_cmd("demo", "--json", "--requests", "24", "--loop", loop))
    report = json.loads(result.stdout)
    sent = 24 + len(_demo.burst_requests())
    assert report["requests"]["sent"] == report["requests"]["answered"] == sent
    assert report["loop"] == ("uvloop.Loop" if loop == "auto" and importlib.util.find_spec(
        "uvloop") else "asyncio._UnixSelectorEventLoop")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for incident in report["incidents"]:
        by_kind.setdefault(incident["kind"], []).append(incident)
    for route in _demo.ROUTES[1:]:
        hazard = report["hazards"][route.hazard]
        assert hazard["monitor_present"] is WATCHED[route.hazard]
        assert hazard["caught"] is WATCHED[route.hazard], (route.hazard, report["incidents"])
        if not WATCHED[route.hazard]:
            continue
        # Other incidents may come first (a module imported on the loop at a route's first
        # call is a real block of its own): the route's own one must be there.
        if not route.kinds:  # caught by a gauge (H9): shown among the metrics
            assert any(
                f'handler="{route.handler}"' in line and line.startswith(route.metrics)
                for line in report["metrics"]
            ), (route, report["metrics"])
            continue
        found = [
            i for kind in route.kinds for i in by_kind.get(kind, [])
            if i["handler"] == route.handler
        ]
        assert found, (route, report["incidents"])
        incident = found[0]
        assert incident["framework"] == "fastapi"
        assert incident["handler"] == route.handler, incident
        assert incident["site"]["file"].endswith("demo_app.py"), incident
        assert incident["count"] >= 1
        assert len(incident["hint"].split()) > 5
        if route.hazard == "H2":
            assert incident["hint"] == hint_for(incident["kind"], incident["api"],
                                                incident["action"])
        if route.hazard == "H1":
            # The note says what ran where and how it ended, then the one fix.
            assert incident["hint"].startswith("asyncio.run() ran on a worker thread"), incident
            assert "and returned" in incident["hint"]
            assert "`await` the coroutine" in incident["hint"]
        if route.hazard in EXACT_LINE:
            line, function = MARKED[route.hazard]
            assert (incident["site"]["line"], incident["site"]["function"]) == (line, function)
    reentry = by_kind["reentry"][0]
    assert (reentry["api"], reentry["action"]) == ("asyncio.run", "offloaded")
    assert by_kind["cross_thread_run"][0]["action"] == "marshalled"
    assert any(line.startswith("loopwatch_reentry_total{") for line in report["metrics"])
    assert result.returncode == 0


@pytest.mark.slow
def test_demo_fails_when_a_request_is_not_answered() -> None:
    # With the observe-only policy the H1 route answers 500: caught, but not answered.
    env = {**os.environ, "LOOPWATCH_ON_REENTRY": "raise"}
    result = run(loopwatch_cmd("demo", "--json", "--requests", "12"), env=env)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    h1 = report["requests"]["by_route"]["GET /customers/{customer_id}/report"]
    assert set(h1["status"]) == {"500"}
    assert report["hazards"]["H1"]["caught"] is True
    sent = 12 + len(_demo.burst_requests())
    assert report["requests"]["answered"] == sent - sum(h1["status"].values())
    assert report["ok"] is False


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class _Lines:
    """Collects a pipe's lines from a thread, so a test can wait for one without blocking."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen in:\n{''.join(self.lines)}")
            time.sleep(0.05)

    def text(self) -> str:
        self._thread.join(5)
        return "".join(self.lines)


@pytest.mark.slow
def test_demo_serve_keeps_traffic_flowing_until_sigterm() -> None:
    port = free_port()
    with subprocess.Popen(
        loopwatch_cmd("demo", "--serve", "--port", str(port), "--requests", "12",
                      "--interval", "0.5"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        out, err = _Lines(proc.stdout), _Lines(proc.stderr)
        try:
            out.wait_for("Serving http://127.0.0.1:", timeout=40)
            url = f"http://127.0.0.1:{port}/metrics"
            first = sample(get(url)[1], "loopwatch_reentry_total", api="asyncio.run")
            deadline = time.monotonic() + 15
            while sample(get(url)[1], "loopwatch_reentry_total", api="asyncio.run") <= first:
                assert time.monotonic() < deadline, "no new re-entries while serving"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=20)
        finally:
            _stop(proc)
    sent = 12 + len(_demo.burst_requests())
    assert f"Requests: {sent} sent, {sent} answered with 200" in out.text()
    assert "stopping" in err.text()
    assert status == 0


# -- run -----------------------------------------------------------------------------------

REENTRY_SCRIPT = textwrap.dedent("""\
    import asyncio
    import subprocess
    import sys

    async def lookup():
        await asyncio.sleep(0)
        return 41

    def sdk_lookup():
        return asyncio.run(lookup())  # the re-entry

    async def main():
        try:
            return sdk_lookup() + 1
        except RuntimeError as exc:
            return f"raised: {exc}"

    print(sys.argv[1], "result", asyncio.run(main()), flush=True)
    if sys.argv[1] == "parent":
        subprocess.run([sys.executable, __file__, "child"], check=True)
    """)
REENTRY_LINE = 10


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "service.py"
    path.write_text(REENTRY_SCRIPT)
    return path


def test_run_catches_reentry_in_the_process_and_its_children(script: Path) -> None:
    result = run(loopwatch_cmd("run", "--log-format", "json", "--", PY, str(script), "parent"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["parent result 42", "child result 42"]
    records = json_log_lines(result.stderr)
    assert len(records) == 2, result.stderr  # one from each process
    for record in records:
        assert (record["kind"], record["api"], record["action"]) == (
            "reentry", "asyncio.run", "offloaded")
        assert record["site"] == {"file": str(script), "line": REENTRY_LINE,
                                  "function": "sdk_lookup"}


def test_run_flags_reach_the_process(script: Path) -> None:
    result = run(loopwatch_cmd("run", "--on-reentry", "raise", "--log-format", "json", "--",
                               PY, str(script), "single"))
    assert result.returncode == 0, result.stderr
    assert "single result raised: asyncio.run() cannot be called" in result.stdout
    [record] = json_log_lines(result.stderr)
    assert record["action"] == "raised"


def test_run_passes_the_exit_status_through() -> None:
    result = run(loopwatch_cmd("run", "--", PY, "-c", "raise SystemExit(7)"))
    assert result.returncode == 7


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--on-reentry", "bogus",
         "--on-reentry='bogus' is not accepted; use one of: auto, offload, raise, reenter"),
        ("--block-threshold", "soon", "--block-threshold='soon' is not a number of seconds"),
        ("--block-threshold", "-1", "--block-threshold='-1' is not accepted"),
        ("--log-format", "xml", "--log-format='xml' is not accepted; use one of: text, json"),
        ("--metrics-port", "99999", "--metrics-port='99999' is not a port"),
        ("--metrics-addr", "a b", "--metrics-addr='a b' is not accepted; use an IP address"),
        ("--offload-timeout", "0", "--offload-timeout='0' is not accepted"),
    ],
)
def test_run_rejects_a_bad_flag_naming_it(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", flag, value, "--", PY, "-c", "pass"]) == 2
    assert message in capsys.readouterr().err


def test_run_rejects_a_bad_inherited_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPWATCH_BLOCK_THRESHOLD", "never")
    assert cli.main(["run", "--", PY, "-c", "pass"]) == 2
    assert "LOOPWATCH_BLOCK_THRESHOLD='never' is not a number of seconds" in capsys.readouterr().err


def test_run_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run"]) == 2
    assert cli.main(["run", "--"]) == 2
    assert "no command given" in capsys.readouterr().err


def test_run_reports_a_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--", "loopwatch-test-no-such-command"]) == 127
    assert "cannot run 'loopwatch-test-no-such-command'" in capsys.readouterr().err


def test_run_environment_puts_the_hook_first_once() -> None:
    env = cli.run_environment(
        {"on_reentry": "raise", "block_threshold": None},
        environ={"PYTHONPATH": os.pathsep.join(["/srv/app", cli.HOOK_DIR]), "HOME": "/home/u"},
    )
    assert env["PYTHONPATH"].split(os.pathsep) == [cli.HOOK_DIR, "/srv/app"]
    assert env["LOOPWATCH_ON_REENTRY"] == "raise"
    assert "LOOPWATCH_BLOCK_THRESHOLD" not in env
    assert env[cli.ROOT_PID_VARIABLE] == str(os.getpid())
    assert env["HOME"] == "/home/u"
    assert Path(cli.HOOK_DIR, "sitecustomize.py").is_file()


def test_sitecustomize_chains_to_the_one_it_shadows(tmp_path: Path) -> None:
    other = tmp_path / "sitecustomize.py"
    # It speaks only in the wrapped command (the `loopwatch run` process itself runs it too).
    other.write_text("import os, sys\nif 'LOOPWATCH_RUN_PID' in os.environ:\n"
                     "    sys.stdout.write('other sitecustomize ran\\n')\n")
    code = ("import sys, loopwatch._monitor as m; print(m.current() is not None); "
            "print(sys.modules['sitecustomize'].__file__)")
    result = run(loopwatch_cmd("run", "--", PY, "-c", code),
                 env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["other sitecustomize ran", "True", str(other)]


def test_sitecustomize_and_another_that_chains_the_same_way_run_once_each(
    tmp_path: Path,
) -> None:
    # A second sitecustomize that, like loopwatch's, runs "the next sitecustomize on the
    # path but itself" would find loopwatch's again: each must still run exactly once.
    other = tmp_path / "sitecustomize.py"
    other.write_text(textwrap.dedent("""
        import importlib.machinery, importlib.util, os, sys
        sys.stdout.write("other ran\\n")
        here = os.path.dirname(os.path.abspath(__file__))
        path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
        if spec is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([cli.HOOK_DIR, str(tmp_path)])}
    code = "import loopwatch._monitor as m; print(m.current() is not None)"
    result = run([PY, "-c", code], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["other ran", "True"]
    assert "RecursionError" not in result.stderr


def test_sitecustomize_installs_when_asyncio_is_imported_not_before() -> None:
    # A Python that never imports asyncio imports nothing of loopwatch; one that does is
    # guarded from the moment asyncio has finished importing, before it can start a loop.
    code = ("import sys; print('loopwatch' in sys.modules, 'asyncio' in sys.modules); "
            "import asyncio; import loopwatch._monitor as m; print(m.current() is not None); "
            "print(any(type(f).__name__ == '_InstallAfterAsyncio' for f in sys.meta_path))")
    result = run(loopwatch_cmd("run", "--", PY, "-c", code))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False False", "True", "False"]


def test_sitecustomize_waits_for_a_program_that_imports_loopwatch_itself() -> None:
    # loopwatch's own modules import asyncio: the install happens once that import is done.
    code = ("import loopwatch.metrics, sys; import loopwatch._monitor as m; "
            "print(m.current() is not None, 'asyncio' in sys.modules)")
    result = run(loopwatch_cmd("run", "--", PY, "-c", code))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True True"]


def test_sitecustomize_never_breaks_the_host(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": cli.HOOK_DIR, "LOOPWATCH_ON_REENTRY": "bogus"}
    # loopwatch installs (and so reads its options) once asyncio is imported.
    result = run([PY, "-c", "import asyncio; print('still running')"], env=env)
    assert (result.returncode, result.stdout) == (0, "still running\n")
    assert result.stderr.count("loopwatch: not installed in this process:") == 1
    assert "LOOPWATCH_ON_REENTRY='bogus'" in result.stderr

    broken = tmp_path / "loopwatch"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('broken build')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([cli.HOOK_DIR, str(tmp_path)])}
    # From tmp_path: `-c` puts the working directory first on the path by the time asyncio
    # is imported, and the broken build must be the loopwatch found.
    result = run([PY, "-c", "import asyncio; print('still running')"], env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "still running\n")
    assert "not installed in this process: broken build" in result.stderr


def test_run_metrics_port_is_served_by_one_process(script: Path) -> None:
    port = free_port()
    script.write_text(REENTRY_SCRIPT + textwrap.dedent(f"""\
        if sys.argv[1] == "parent":
            import urllib.request
            with urllib.request.urlopen("http://127.0.0.1:{port}/metrics") as response:
                body = response.read().decode()
            print([l for l in body.splitlines() if l.startswith("loopwatch_reentry_total")])
        """))
    result = run(loopwatch_cmd("run", "--metrics-port", str(port), "--", PY, str(script),
                               "parent"))
    assert result.returncode == 0, result.stderr
    assert "could not be bound" not in result.stderr
    assert "internal error" not in result.stderr
    served = result.stdout.splitlines()[-1]
    # The parent serves its own count; the child (port taken) served nothing and said nothing.
    assert 'api="asyncio.run"' in served and served.endswith(" 1.0']")


PLAIN_APP = textwrap.dedent("""\
    import asyncio

    from fastapi import FastAPI

    app = FastAPI()

    async def lookup(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    def sdk_lookup(n: int) -> int:
        return asyncio.run(lookup(n))

    @app.get("/double/{n}")
    async def double(n: int) -> dict[str, int]:
        return {"value": sdk_lookup(n)}
    """)


@pytest.mark.slow
def test_run_uvicorn_app_catches_reentry_without_code_change(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    (tmp_path / "plain_app.py").write_text(PLAIN_APP)
    port, metrics_port = free_port(), free_port()
    with subprocess.Popen(
        loopwatch_cmd("run", "--metrics-port", str(metrics_port), "--log-format", "json", "--",
                      PY, "-m", "uvicorn", "plain_app:app", "--host", "127.0.0.1",
                      "--port", str(port)),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        err = _Lines(proc.stderr)
        try:
            err.wait_for("Uvicorn running on", timeout=30)
            assert get(f"http://127.0.0.1:{port}/double/21") == (200, '{"value":42}')
            metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            assert sample(metrics, "loopwatch_reentry_total", api="asyncio.run",
                          action="offloaded") == 1
            err.wait_for('"kind": "reentry"', timeout=10)
            proc.terminate()
            proc.wait(timeout=20)
        finally:
            _stop(proc)
    [record] = [r for r in json_log_lines(err.text()) if r["kind"] == "reentry"]
    assert record["site"]["file"] == str(tmp_path / "plain_app.py")
    assert (record["site"]["line"], record["site"]["function"]) == (12, "sdk_lookup")


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "examples" / "fastapi_app.py").is_file(),
                    reason="examples/fastapi_app.py is not in this checkout")
def test_run_example_fastapi_app() -> None:
    port = free_port()
    with subprocess.Popen(
        loopwatch_cmd("run", "--log-format", "json", "--", PY, "-m", "uvicorn",
                      "examples.fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        err = _Lines(proc.stderr)
        try:
            err.wait_for("Uvicorn running on", timeout=30)
            status, body = get(f"http://127.0.0.1:{port}/openapi.json")
            assert status == 200
            hit = []
            for template in json.loads(body)["paths"]:
                path = re.sub(r"\{[^}]*\}", "1", template)
                hit.append((path, get(f"http://127.0.0.1:{port}{path}")[0]))
            err.wait_for('"kind": "reentry"', timeout=10)
            proc.terminate()
            proc.wait(timeout=20)
        finally:
            _stop(proc)
    assert all(status == 200 for _, status in hit), hit
    assert any(r["kind"] == "reentry" for r in json_log_lines(err.text())), hit


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "examples" / "discord_bot.py").is_file(),
                    reason="examples/discord_bot.py is not in this checkout")
def test_run_example_discord_bot_offline() -> None:
    pytest.importorskip("discord")
    result = run(loopwatch_cmd("run", "--log-format", "json", "--", PY,
                               str(ROOT / "examples" / "discord_bot.py"), "--offline"), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    records = json_log_lines(result.stderr)
    reentry = [r for r in records if r["kind"] == "reentry"]
    assert reentry, result.stderr
    assert (reentry[0]["framework"], reentry[0]["handler"]) == ("discord", "command:weather")
    assert reentry[0]["site"]["file"] == str(ROOT / "examples" / "discord_bot.py")


# -- doctor --------------------------------------------------------------------------------


def test_doctor_prints_what_loopwatch_sees(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^python\s+{re.escape(sys.version.split()[0])} \(", out, re.M)
    assert re.search(r"^loop policy\s+\S+", out, re.M)
    assert re.search(r"^uvloop\s+(\S+ installed|not installed)", out, re.M)
    fastapi = importlib.util.find_spec("fastapi") is not None
    if fastapi:
        import fastapi as fastapi_module

        assert f"fastapi {fastapi_module.__version__}" in out
    assert re.search(r"^nest_asyncio\s+", out, re.M)
    assert re.search(r"H3 lag probe and watchdog: (present|absent)", out)
    assert "on_reentry = 'offload'" in out
    assert "installed in this process: no" in out


def test_doctor_lists_every_framework_with_an_adapter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["doctor", "--json"]) == 0
    frameworks = json.loads(capsys.readouterr().out)["frameworks"]
    for dist in ("aiohttp", "litestar", "discord.py", "py-cord", "nextcord", "disnake"):
        assert dist in frameworks
        try:
            expected: str | None = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert frameworks[dist] == expected, dist


def test_doctor_names_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPWATCH_ON_REENTRY", "bogus")
    assert cli.main(["doctor"]) == 1
    captured = capsys.readouterr()
    assert ("loopwatch doctor: ConfigError: LOOPWATCH_ON_REENTRY='bogus' is not accepted; "
            "use one of: auto, offload, raise, reenter") in captured.err
    assert "config        INVALID:" in captured.out


def test_doctor_under_run_sees_the_installed_monitor() -> None:
    result = run(loopwatch_cmd("run", "--on-reentry", "raise", "--", PY, "-m", "loopwatch",
                               "doctor", "--json"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["loopwatch"]["installed_here"] is True
    assert data["loopwatch"]["run_hook_active"] is True
    assert data["config"]["on_reentry"] == {"value": "raise", "source": "LOOPWATCH_ON_REENTRY"}
    assert data["environment"]["LOOPWATCH_ON_REENTRY"] == "raise"


def test_doctor_sees_nest_asyncio() -> None:
    pytest.importorskip("nest_asyncio")
    code = ("import asyncio, nest_asyncio; nest_asyncio.apply(asyncio.new_event_loop()); "
            "from loopwatch.cli import main; raise SystemExit(main(['doctor']))")
    result = run([PY, "-W", "ignore", "-c", code])
    assert result.returncode == 0, result.stderr
    assert "patched in this process: asyncio (nest_asyncio.apply)" in result.stdout


def test_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("loopwatch ")
    assert cli.main([]) == 2
    assert cli.main(["nonsense"]) == 2


def test_console_script() -> None:
    script = Path(PY).with_name("loopwatch")
    if not script.exists():
        pytest.skip("the loopwatch console script is not installed next to this Python")
    result = run([str(script), "--version"])
    assert result.returncode == 0 and result.stdout.startswith("loopwatch ")


@pytest.fixture(autouse=True)
def _no_stray_demo_module() -> Iterator[None]:
    yield
    assert _demo.APP_MODULE not in sys.modules
