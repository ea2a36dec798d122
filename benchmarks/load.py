"""Load and soak against a real uvicorn server (uvloop) on 127.0.0.1.

Part 1, overhead: ``examples/fastapi_app.py`` served twice at once, bare and instrumented,
on ``--loop uvloop``; 64 connections on ``GET /health`` (a route with no hazard). "Bare"
is the same module with ``LOOPWATCH_DISABLE=1``: ``instrument()`` then leaves the app
exactly as it is (no middleware, no ``/metrics``, nothing patched). Rounds alternate
between the two servers, and which goes first, so changes in machine load hit both; the
summary gives the median of the rounds with their spread and the ratio of the medians.

Part 2, soak: the small service :func:`soak_app` (run by uvicorn with ``--factory``).
Request ``k`` of the soak goes to ``GET /reentry/{k//2}`` when ``k`` is even (a sync
helper calls ``asyncio.run`` on every request) and to ``GET /block/{k//2}`` when it is
odd (every 50th of those blocks the loop for 20 ms with ``time.sleep``). It counts the
5xx answers, compares the growth of ``loopwatch_reentry_total`` scraped from ``/metrics``
with the number of re-entering requests sent, counts loopwatch's log lines on the
server's stderr (JSON, one object a line) against the folding rule (one line per
fingerprint per minute), and reads the server's VmRSS and thread count from
``/proc/PID/status`` after the warm-up, after the soak and after an idle period.

The load comes from ``wrk`` (Debian package ``wrk``) with a Lua script that sends an exact
number of requests and counts the answers by status; without ``wrk`` an httpx client in
this process does the same, more slowly (a Python client saturates before the server, so
its throughput figures measure the client). Every run is bounded: part 1 by
``--duration``, the soak by ``--requests`` and ``--soak-timeout``. Run it from the
repository root::

    python benchmarks/load.py                          # both parts
    python benchmarks/load.py --part overhead --rounds 5 --duration 10
    python benchmarks/load.py --part soak --requests 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PY = sys.executable
# The soak service reads these (set by this harness for the server process).
BLOCK_EVERY_ENV = "LOAD_BLOCK_EVERY"
BLOCK_SECONDS_ENV = "LOAD_BLOCK_SECONDS"
MARK = "LOADRESULT "


# -- the apps --------------------------------------------------------------------------------


def frozen_example() -> Any:
    """``examples/fastapi_app.py``'s app after ``gc.freeze()`` (``--gc-freeze``; a factory)."""
    import gc

    from examples.fastapi_app import app

    gc.collect()
    gc.freeze()  # the app's long-lived objects leave the collector's generations
    return app


# -- the soak service ----------------------------------------------------------------------


def soak_app() -> Any:
    """The soak's FastAPI service, instrumented (``uvicorn benchmarks.load:soak_app --factory``)."""
    import time as clock

    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from loopwatch.adapters.fastapi import instrument

    block_every = int(os.environ.get(BLOCK_EVERY_ENV, "50"))
    block_seconds = float(os.environ.get(BLOCK_SECONDS_ENV, "0.02"))
    app = FastAPI()

    async def lookup(n: int) -> int:
        await asyncio.sleep(0)
        return n

    def sdk_lookup(n: int) -> int:
        return asyncio.run(lookup(n))  # re-enters the server's loop on every call

    @app.get("/reentry/{n}", response_class=PlainTextResponse)
    async def reentry(n: int) -> str:
        sdk_lookup(n)
        return "r"

    @app.get("/block/{n}", response_class=PlainTextResponse)
    async def block(n: int) -> str:
        if n % block_every == 0:
            clock.sleep(block_seconds)  # blocks the loop now and then
        return "b"

    @app.get("/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "h"

    @app.get("/stall", response_class=PlainTextResponse)
    async def stall() -> str:
        clock.sleep(0.3)  # after the soak: is the watchdog still sampling?
        return "s"

    @app.get("/tasks", response_class=PlainTextResponse)
    async def tasks() -> str:
        return str(len(asyncio.all_tasks()))

    @app.get("/threads", response_class=PlainTextResponse)
    async def threads() -> str:
        return "\n".join(sorted(t.name for t in threading.enumerate()))

    instrument(app, handler_metrics=True)
    return app


# -- the machine and the server ------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("uvicorn", "uvloop", "fastapi", "starlette", "httptools"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = "-"
    wrk = shutil.which("wrk")
    wrk_version = "-"
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
        wrk_version = (out.stdout or out.stderr).split(" [", 1)[0].strip()
    return {
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "os": platform.platform(),
        "wrk": wrk_version,
        **versions,
    }


def pinned(cpu: int | None) -> Any:
    """A ``preexec_fn`` that runs the child (and every thread it starts) on ``cpu``."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return functools.partial(os.sched_setaffinity, 0, {cpu})


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


class Server:
    """``python -m uvicorn APP --loop uvloop`` on 127.0.0.1, its stderr in a file."""

    def __init__(self, name: str, app: str, env: dict[str, str], workdir: Path,
                 factory: bool = False, cpu: int | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.stderr_path = workdir / f"{name}.stderr"
        command = [PY, "-m", "uvicorn", app, "--host", HOST, "--port", str(self.port),
                   "--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
        if factory:
            command.append("--factory")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
        full_env.update(env)
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, cwd=ROOT, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     preexec_fn=pinned(cpu))
        self.started_at = time.monotonic()

    def wait_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited: {self.stderr_tail()}")
            with contextlib.suppress(OSError):
                if get(self.port, path, timeout=2)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} server not ready in {timeout:g} s")
            time.sleep(0.1)

    def status(self) -> dict[str, int]:
        """VmRSS (KiB) and Threads of the server process."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process, all threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stderr_lines(self) -> list[str]:
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr_lines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()


# -- load generators -----------------------------------------------------------------------

# Time-bounded: report what wrk measured, as one JSON line.
WRK_TIMED = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d}\\n', "MARK",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# Count-bounded: thread i sends its exact share of request numbers k; even k re-enter,
# odd k go to the blocking route. Past its share a thread sends GET /health (not counted:
# its body is "h") until every counted request is answered, then stops. wrk calls
# request() once on thread 0 to check the script, without sending it: that first call
# gets an uncounted GET /health, so a check never uses up a request number. A thread whose
# requests are all answered stops and says so in a file: wrk's main thread sleeps out -d
# whatever its threads do, so the harness ends it with SIGINT (wrk then reports).
WRK_COUNTED = """
local threads = {}
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  local total, nthreads = tonumber(args[1]), tonumber(args[2])
  done_file = args[3]
  local per, extra = math.floor(total / nthreads), total % nthreads
  quota = per + ((id < extra) and 1 or 0)
  first = id * per + math.min(id, extra)
  sent, answered, s2xx, s4xx, s5xx, sother = 0, 0, 0, 0, 0, 0
  spare = true
end
function request()
  if spare then
    spare = false
    return wrk.format("GET", "/health")
  end
  if sent < quota then
    local k = first + sent
    sent = sent + 1
    if k % 2 == 0 then
      return wrk.format("GET", "/reentry/" .. math.floor(k / 2))
    end
    return wrk.format("GET", "/block/" .. math.floor(k / 2))
  end
  return wrk.format("GET", "/health")
end
function response(status, headers, body)
  if body ~= "h" then
    answered = answered + 1
    if status >= 500 then s5xx = s5xx + 1
    elseif status >= 400 then s4xx = s4xx + 1
    elseif status >= 200 and status < 300 then s2xx = s2xx + 1
    else sother = sother + 1 end
  end
  if answered >= quota and not finished then
    finished = true
    -- wrk itself waits out -d: tell the harness, which then ends it with SIGINT.
    local f = io.open(done_file, "a")
    f:write("done\\n")
    f:close()
    wrk.thread:stop()
  end
end
done = function(summary, latency, requests)
  local t = {sent = 0, answered = 0, s2xx = 0, s4xx = 0, s5xx = 0, sother = 0}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(t) do t[name] = t[name] + thread:get(name) end
  end
  local e = summary.errors
  io.write(string.format(
    '%s{"sent": %d, "answered": %d, "s2xx": %d, "s4xx": %d, "s5xx": %d, "sother": %d, ' ..
    '"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d}\\n', "MARK",
    t.sent, t.answered, t.s2xx, t.s4xx, t.s5xx, t.sother, summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass
class Run:
    """One load run: throughput, latency and what went wrong."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and timeouts
    statuses: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    answered: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _script(text: str, workdir: Path, name: str) -> Path:
    path = workdir / name
    path.write_text(text.replace('"MARK"', json.dumps(MARK)))
    return path


def _wrk(args: list[str], timeout: float, cpu: int | None) -> dict[str, Any]:
    out = subprocess.run(["wrk", *args], capture_output=True, text=True, timeout=timeout,
                         preexec_fn=pinned(cpu))
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])  # type: ignore[no-any-return]
    raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")


class WrkLoad:
    """wrk with the Lua scripts above."""

    name = "wrk"

    def __init__(self, workdir: Path, threads: int, cpu: int | None = None) -> None:
        self.threads = threads
        self.cpu = cpu
        self.timed_script = _script(WRK_TIMED, workdir, "timed.lua")
        self.counted_script = _script(WRK_COUNTED, workdir, "counted.lua")

    def timed(self, port: int, path: str, seconds: float, connections: int) -> Run:
        data = _wrk(["-t", str(self.threads), "-c", str(connections), "-d", f"{seconds:g}s",
                     "--timeout", "10s", "-s", str(self.timed_script),
                     f"http://{HOST}:{port}{path}"], timeout=seconds + 60, cpu=self.cpu)
        return Run(
            requests=data["requests"], seconds=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
            errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
            statuses={"non-2xx/3xx": data["status"]},
        )

    def counted(self, port: int, total: int, connections: int, limit: float) -> Run:
        threads = max(1, min(self.threads, total))
        done_file = self.counted_script.with_suffix(".done")
        done_file.write_text("")
        command = ["wrk", "-t", str(threads), "-c", str(max(connections, threads)),
                   "-d", f"{limit:g}s", "--timeout", "10s", "-s", str(self.counted_script),
                   f"http://{HOST}:{port}/", "--", str(total), str(threads), str(done_file)]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        finished = None
        while proc.poll() is None:
            if done_file.read_text().count("done") >= threads:
                finished = time.perf_counter()
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=60)
        seconds = (finished or time.perf_counter()) - started
        data = None
        for line in stdout.splitlines():
            if line.startswith(MARK):
                data = json.loads(line[len(MARK):])
        if data is None:
            raise RuntimeError(f"wrk gave no result:\n{stdout}\n{stderr}")
        return Run(
            requests=data["answered"], seconds=seconds,
            p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
            errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
            statuses={"2xx": data["s2xx"], "4xx": data["s4xx"], "5xx": data["s5xx"],
                      "other": data["sother"]},
            sent=data["sent"], answered=data["answered"],
        )


class HttpxLoad:
    """The fallback without wrk: an httpx client with ``connections`` pooled connections."""

    name = "httpx"

    def timed(self, port: int, path: str, seconds: float, connections: int) -> Run:
        return asyncio.run(self._drive(port, connections, lambda i: path, None, seconds))

    def counted(self, port: int, total: int, connections: int, limit: float) -> Run:
        def path(k: int) -> str:
            return f"/reentry/{k // 2}" if k % 2 == 0 else f"/block/{k // 2}"

        return asyncio.run(self._drive(port, connections, path, total, limit))

    @staticmethod
    async def _drive(port: int, connections: int, path_of: Any, total: int | None,
                     seconds: float) -> Run:
        import httpx

        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        errors = 0
        next_k = 0
        started = time.perf_counter()
        deadline = started + seconds
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits,
                                     timeout=10.0) as client:

            async def worker() -> None:
                nonlocal next_k, errors
                while time.perf_counter() < deadline:
                    k = next_k
                    if total is not None and k >= total:
                        return
                    next_k += 1
                    sent_at = time.perf_counter()
                    try:
                        response = await client.get(path_of(k))
                    except httpx.HTTPError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - sent_at)
                    statuses[f"{response.status_code // 100}xx"] += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
        latencies.sort()

        def pct(q: float) -> float:
            if not latencies:
                return float("nan")
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        return Run(requests=len(latencies), seconds=elapsed, p50_ms=pct(0.50),
                   p99_ms=pct(0.99), errors=errors, statuses=dict(statuses),
                   sent=next_k if total is None else min(next_k, total),
                   answered=len(latencies))


# -- part 1: overhead ----------------------------------------------------------------------


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def overhead(args: argparse.Namespace, load: WrkLoad | HttpxLoad, workdir: Path) -> str:
    app = "benchmarks.load:frozen_example" if args.gc_freeze else "examples.fastapi_app:app"
    factory = args.gc_freeze
    cpu = args.server_cpu
    servers = {
        "bare": Server("bare", app, {"LOOPWATCH_DISABLE": "1"}, workdir, factory, cpu),
        "instrumented": Server("instrumented", app, {}, workdir, factory, cpu),
    }
    runs: dict[str, list[Run]] = {"bare": [], "instrumented": []}
    cpu_us: dict[str, list[float]] = {"bare": [], "instrumented": []}
    try:
        for server in servers.values():
            server.wait_ready("/health")
        # The two really differ: only the instrumented one serves loopwatch's metrics.
        if get(servers["bare"].port, "/metrics")[0] != 404:
            raise RuntimeError("the bare server serves /metrics: it is not bare")
        status, body = get(servers["instrumented"].port, "/metrics")
        if status != 200 or "loopwatch_info" not in body:
            raise RuntimeError("the instrumented server does not serve loopwatch's metrics")
        for server in servers.values():  # warm-up, not counted
            load.timed(server.port, "/health", args.warmup_seconds, args.connections)
        for i in range(args.rounds):
            order = ["bare", "instrumented"] if i % 2 == 0 else ["instrumented", "bare"]
            for name in order:
                server = servers[name]
                used = server.cpu_seconds()
                run = load.timed(server.port, "/health", args.duration, args.connections)
                used = server.cpu_seconds() - used
                runs[name].append(run)
                cpu_us[name].append(used / run.requests * 1e6 if run.requests else math.nan)
                print(f"  round {i + 1} {name:12s} {run.rps:7.0f} req/s  p50 {run.p50_ms:6.2f} "
                      f"ms  p99 {run.p99_ms:7.2f} ms  server CPU {cpu_us[name][-1]:5.0f} µs/req",
                      file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    failed = {name: sum(r.errors + sum(r.statuses.values()) for r in rs)
              for name, rs in runs.items()}
    bare_rps = statistics.median(r.rps for r in runs["bare"])
    inst_rps = statistics.median(r.rps for r in runs["instrumented"])
    paired = [i.rps / b.rps for b, i in zip(runs["bare"], runs["instrumented"], strict=True)]
    cpu_ratio = statistics.median(cpu_us["bare"]) / statistics.median(cpu_us["instrumented"])
    where = (f"servers pinned to CPU {cpu}, wrk to CPU {load.cpu}"
             if args.pin and isinstance(load, WrkLoad) else "no CPU pinning")
    lines = [
        f"### Overhead: `GET /health` of examples/fastapi_app.py, {args.connections} "
        f"connections, {args.rounds} alternating rounds of {args.duration:g} s per server "
        f"({load.name}, {where}{', both after gc.freeze()' if args.gc_freeze else ''})",
        "",
        "| server | requests/s | p50 ms | p99 ms | server CPU µs/request | errors + non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        lines.append(
            f"| {name} | {_spread([r.rps for r in rs], '.0f')} | "
            f"{_spread([r.p50_ms for r in rs], '.2f')} | {_spread([r.p99_ms for r in rs], '.2f')}"
            f" | {_spread(cpu_us[name], '.0f')} | {failed[name]} |"
        )
    ratio = inst_rps / bare_rps
    lines += [
        "",
        "Median (min–max) over the rounds. Instrumented / bare throughput: "
        f"**{ratio:.1%}** (ratio of the medians; per-round ratios "
        f"{min(paired):.1%}–{max(paired):.1%}, median {statistics.median(paired):.1%}); "
        f"target ≥ 97%: {'met' if ratio >= 0.97 else 'NOT met'}. By server CPU time per "
        f"request (less sensitive to other load on the machine), bare ÷ instrumented = "
        f"{cpu_ratio:.1%}.",
    ]
    return "\n".join(lines)


# -- part 2: soak --------------------------------------------------------------------------


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def _metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str,
                **labels: str) -> float:
    return sum(v for n, ls, v in samples
               if n == name and all(ls.get(k) == want for k, want in labels.items()))


def _log_records(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    records, other = [], []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(record, dict) and record.get("logger") == "loopwatch":
            records.append(record)
        else:
            other.append(line)
    return records, other


def _fingerprint(record: dict[str, Any]) -> tuple[str, str, str]:
    data = record.get("loopwatch") or {}
    site = data.get("site") or {}
    return (str(data.get("kind")), str(data.get("api")),
            f"{site.get('file')}:{site.get('line')}" if site else "-")


def soak(args: argparse.Namespace, load: WrkLoad | HttpxLoad, workdir: Path) -> str:
    env = {
        "LOOPWATCH_LOG_FORMAT": "json",
        "LOOPWATCH_BLOCK_THRESHOLD": f"{args.block_threshold:g}",
        BLOCK_EVERY_ENV: str(args.block_every),
        BLOCK_SECONDS_ENV: f"{args.block_ms / 1000:g}",
    }
    server = Server("soak", "benchmarks.load:soak_app", env, workdir, factory=True)
    try:
        server.wait_ready("/health")
        unscraped = server.status()["Threads"]
        # The first scrape starts asyncio's default executor thread (the exposition runs
        # there, off the loop); it stays for the life of the loop, as that executor's
        # threads do. Steady state for a scraped service starts after it.
        get(server.port, "/metrics")
        start = server.status()
        start_names = get(server.port, "/threads")[1].splitlines()
        start_tasks = int(get(server.port, "/tasks")[1])
        warm = load.counted(server.port, args.warmup, args.connections, args.soak_timeout)
        time.sleep(1.0)  # the warm-up's connections close
        before = server.status()
        before_metrics = _samples(get(server.port, "/metrics")[1])
        print(f"  soak: {args.requests} requests ...", file=sys.stderr, flush=True)
        run = load.counted(server.port, args.requests, args.connections, args.soak_timeout)
        time.sleep(1.0)
        after = server.status()
        after_tasks = int(get(server.port, "/tasks")[1])
        after_metrics = _samples(get(server.port, "/metrics")[1])
        soak_end = time.monotonic()
        lines = server.stderr_lines()
        # One long block after the soak: the watchdog must still sample it (site, handler).
        get(server.port, "/stall")
        time.sleep(1.0)
        stall_records, _ = _log_records(server.stderr_lines()[len(lines):])
        stall_seen = [r["loopwatch"] for r in stall_records
                      if (r["loopwatch"].get("site") or {}).get("function") == "stall"]
        idle_started = time.monotonic()
        threads_idle = after["Threads"]
        while time.monotonic() - idle_started < args.idle:
            threads_idle = server.status()["Threads"]
            if threads_idle <= start["Threads"]:
                break
            time.sleep(1.0)
        idle_waited = time.monotonic() - idle_started
        idle_names = get(server.port, "/threads")[1].splitlines()
        final_lines = server.stderr_lines()
    finally:
        server.stop()

    reentry_sent = math.ceil(args.requests / 2)
    block_requests = args.requests // 2
    blocks_sent = math.ceil(block_requests / args.block_every)
    reentry_counted = (_metric_sum(after_metrics, "loopwatch_reentry_total", api="asyncio.run")
                       - _metric_sum(before_metrics, "loopwatch_reentry_total",
                                     api="asyncio.run"))
    route_blocks = (
        _metric_sum(after_metrics, "loopwatch_event_loop_blocks_total",
                    handler="GET /block/{n}")
        - _metric_sum(before_metrics, "loopwatch_event_loop_blocks_total",
                      handler="GET /block/{n}"))
    all_blocks = (_metric_sum(after_metrics, "loopwatch_event_loop_blocks_total")
                  - _metric_sum(before_metrics, "loopwatch_event_loop_blocks_total"))
    by_handler = Counter({
        handler: _metric_sum(after_metrics, "loopwatch_event_loop_blocks_total", handler=handler)
        - _metric_sum(before_metrics, "loopwatch_event_loop_blocks_total", handler=handler)
        for handler in {ls.get("handler", "") for n, ls, _ in after_metrics
                        if n == "loopwatch_event_loop_blocks_total"}
    })
    internal = _metric_sum(after_metrics, "loopwatch_internal_errors_total")
    records, other = _log_records(lines)
    fingerprints = Counter(_fingerprint(r) for r in records)
    elapsed = soak_end - server.started_at
    per_fingerprint = 1 + math.floor(elapsed / 60)
    bound = len(fingerprints) * per_fingerprint
    worst = max(fingerprints.values(), default=0)
    still = sum(1 for r in records
                if (r.get("loopwatch") or {}).get("detail", {}).get("still_blocked"))
    rss_growth_mb = (after["VmRSS"] - before["VmRSS"]) / 1024
    five_xx = warm.statuses.get("5xx", 0) + run.statuses.get("5xx", 0)
    late_lines = len(final_lines) - len(lines)

    def ok(flag: bool) -> str:
        return "yes" if flag else "**NO**"

    out = [
        f"### Soak: {args.requests:,} requests ({load.name}, {args.connections} connections), "
        f"after a warm-up of {args.warmup:,}",
        "",
        f"Mix: {reentry_sent:,} × `GET /reentry/{{n}}` (`asyncio.run` in a sync helper, every "
        f"time), {block_requests:,} × `GET /block/{{n}}` ({blocks_sent:,} of them block the loop "
        f"{args.block_ms:g} ms); `LOOPWATCH_BLOCK_THRESHOLD={args.block_threshold:g}`, "
        "`LOOPWATCH_LOG_FORMAT=json`.",
        "",
        "| check | measured | target | met |",
        "|---|---|---|---|",
        f"| requests answered | {run.answered:,} of {run.sent:,} sent in {run.seconds:.1f} s "
        f"({run.rps:,.0f}/s; p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms) | all | "
        f"{ok(run.answered == run.sent == args.requests)} |",
        f"| 5xx answers (warm-up + soak) | {five_xx} (socket errors: "
        f"{warm.errors + run.errors}) | 0 | {ok(five_xx == 0 and run.errors == 0)} |",
        f"| `loopwatch_reentry_total` growth | {reentry_counted:,.0f} | {reentry_sent:,} "
        f"re-entering requests sent | {ok(reentry_counted == reentry_sent)} |",
        f"| loopwatch log lines (server start → soak end, {elapsed:.0f} s) | {len(records)} "
        f"({still} of them \"still blocked\" lines; {len(fingerprints)} fingerprints, at most "
        f"{worst} for one) | ≤ {bound} "
        f"(fingerprints × (1 + ⌊{elapsed:.0f}/60⌋)) | "
        f"{ok(len(records) <= bound and worst <= per_fingerprint)} |",
        f"| server stderr lines that are not loopwatch JSON | {len(other)} | 0 | "
        f"{ok(not other)} |",
        f"| RSS growth over the soak | {rss_growth_mb:+.1f} MB ({before['VmRSS'] / 1024:.1f} → "
        f"{after['VmRSS'] / 1024:.1f} MB) | < 10 MB | {ok(rss_growth_mb < 10)} |",
        f"| threads: start → after warm-up → soak end → idle | {start['Threads']} → "
        f"{before['Threads']} → {after['Threads']} → {threads_idle} "
        f"(after {idle_waited:.0f} s idle; {unscraped} before the first scrape) | back to "
        f"{start['Threads']} | {ok(threads_idle <= start['Threads'])} |",
        f"| asyncio tasks: start → soak end | {start_tasks} → {after_tasks} | no growth | "
        f"{ok(after_tasks <= start_tasks)} |",
        f"| blocks counted (`loopwatch_event_loop_blocks_total`) | {all_blocks:,.0f} in all, "
        f"{route_blocks:,.0f} on `GET /block/{{n}}` ("
        + ", ".join(f"{h}: {v:,.0f}" for h, v in by_handler.most_common() if v)
        + f") | {blocks_sent:,} {args.block_ms:g}-ms blocks sent | info |",
        f"| `loopwatch_internal_errors_total` | {internal:.0f} | 0 | {ok(internal == 0)} |",
        "| a 300 ms block after the soak is sampled (site and handler) | "
        + (f"{stall_seen[0]['handler']} at line {stall_seen[0]['site']['line']}"
           if stall_seen else "not reported with its site")
        + f" | `GET /stall` | {ok(any(r['handler'] == 'GET /stall' for r in stall_seen))} |",
    ]
    if fingerprints:
        out += ["", "Log lines per fingerprint (kind, api, site):", ""]
        for (kind, api, site), count in fingerprints.most_common(10):
            where = Path(site).name if site != "-" else "no user frame"
            out.append(f"- {count} × {kind} {api} at {where}")
        if len(fingerprints) > 10:
            out.append(f"- … {len(fingerprints) - 10} more fingerprints")
    new_names = sorted(set(idle_names) - set(start_names))
    out += ["", f"Python threads at start: {', '.join(start_names)}; after the idle period, "
            f"new: {', '.join(new_names) or 'none'}."]
    if other:
        out += ["", "Other stderr lines (first 5):", "", "```", *other[:5], "```"]
    if late_lines:
        out += ["", f"(Log lines during the idle period after the soak: {late_lines}.)"]
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "overhead", "soak"), default="all")
    parser.add_argument("--load", choices=("auto", "wrk", "httpx"), default="auto",
                        help="load generator (auto: wrk when installed, else httpx)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (default 1: leaves a core to the server on 2 cores)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the overhead servers to one CPU and wrk to another")
    parser.add_argument("--rounds", type=int, default=10, help="overhead rounds per server (≥ 3)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="overhead: both servers call gc.freeze() after loading the app "
                             "(see benchmarks/gc_pressure.py)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per round")
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--requests", type=int, default=100_000, help="soak requests")
    parser.add_argument("--warmup", type=int, default=2_000, help="soak warm-up requests")
    parser.add_argument("--block-every", type=int, default=50,
                        help="every Nth request to /block/{n} blocks the loop")
    parser.add_argument("--block-ms", type=float, default=20.0)
    parser.add_argument("--block-threshold", type=float, default=0.01,
                        help="LOOPWATCH_BLOCK_THRESHOLD for the soak server (seconds)")
    parser.add_argument("--soak-timeout", type=float, default=1800.0,
                        help="upper bound on the soak's duration (seconds)")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="at most this many idle seconds for the thread count to settle")
    parser.add_argument("--logs", type=Path, default=None, metavar="DIR",
                        help="keep the servers' stderr (and the wrk scripts) in DIR")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if args.requests < 2 or args.warmup < 2:
        parser.error("--requests and --warmup must be at least 2")
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    if args.load == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), or use --load httpx")
    info = machine()
    given = sys.argv[1:] if argv is None else argv
    sections = [
        "## loopwatch load and soak",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"{info['os']}; uvicorn {info['uvicorn']} (`--loop uvloop`, uvloop {info['uvloop']}, "
        f"httptools {info['httptools']}), FastAPI {info['fastapi']}, load: "
        f"{info['wrk'] if use_wrk else 'httpx'}.",
        f"Command: `{shlex.join(['python', 'benchmarks/load.py', *given])}`",
    ]
    with tempfile.TemporaryDirectory(prefix="loopwatch-load-") as tmp:
        workdir = Path(tmp) if args.logs is None else args.logs
        workdir.mkdir(parents=True, exist_ok=True)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2:
            args.pin = False  # one CPU: nothing to keep apart
        args.server_cpu = cpus[0] if args.pin else None
        load: WrkLoad | HttpxLoad = (
            WrkLoad(workdir, args.threads, cpu=cpus[1] if args.pin else None) if use_wrk
            else HttpxLoad()
        )
        if args.part in ("all", "overhead"):
            sections += ["", overhead(args, load, workdir)]
        if args.part in ("all", "soak"):
            sections += ["", soak(args, load, workdir)]
    print("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
