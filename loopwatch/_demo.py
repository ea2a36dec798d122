"""``loopwatch demo``: an instrumented FastAPI service with every hazard, traffic, and the result.

The service (``_demo_app.py``) runs under uvicorn on loopback in a thread of this process; a
small pool of client threads sends a bounded burst of requests; then the report shows every
request's outcome, the incidents grouped by fingerprint (handler, user line, hint, stack)
and the ``loopwatch_`` series scraped from ``/metrics``. The exit status is 0 only when
every request was answered and every hazard was caught.

FastAPI and uvicorn are imported only here, and only when the demo runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import http.client
import importlib.metadata
import importlib.resources
import importlib.util
import json
import linecache
import logging
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from ._frames import is_user_file
from ._incidents import Incident

__all__ = ["DemoOptions", "run_demo"]

INSTALL_HINT = "pip install 'loopwatch[fastapi]'"
APP_MODULE = "loopwatch_demo_app"
LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What ``loopwatch demo`` was asked to do (see ``loopwatch demo --help``)."""

    requests: int = 60
    concurrency: int = 8
    serve: bool = False
    host: str = LOOPBACK
    port: int = 0
    json: bool = False
    loop: str = "auto"
    verbose: bool = False
    interval: float = 3.0


@dataclasses.dataclass(frozen=True)
class Route:
    """One route of the demo service and the hazard it exercises."""

    hazard: str  # "H1".."H5", or "" for the healthy route
    handler: str  # the label loopwatch gives it: method and route template
    path: str  # a request path; "{n}" becomes a number
    weight: int  # share of the traffic
    kinds: tuple[str, ...]  # incident kinds that mean "caught"


ROUTES = (
    Route("", "GET /healthy", "/healthy", 6, ()),
    Route("H1", "GET /customers/{customer_id}/report", "/customers/{n}/report", 2, ("reentry",)),
    Route("H2", "GET /cache/refresh", "/cache/refresh", 2, ("cross_thread_run",)),
    Route("H3", "GET /reports/slow", "/reports/slow", 1, ("blocked_loop",)),
    Route("H4", "GET /orders/{order_id}/notify", "/orders/{n}/notify", 2,
          ("unretrieved_exception", "pending_task_destroyed")),
    Route("H5", "GET /audit", "/audit", 2, ("never_awaited",)),
)

# hazard -> (what the route does, the loopwatch module that watches for it)
HAZARDS = {
    "H1": ("asyncio.run() in a sync helper called from an async route", "loopwatch._reentry"),
    "H2": ("a sync endpoint drives the server's loop with run_until_complete()",
           "loopwatch._reentry"),
    "H3": ("time.sleep(0.3) in an async route blocks the loop", "loopwatch._watchdog"),
    "H4": ("a fire-and-forget task fails and nobody retrieves its exception", "loopwatch._tasks"),
    "H5": ("a coroutine is created and never awaited", "loopwatch._tasks"),
}
_HAZARD_OF_KIND = {kind: route.hazard for route in ROUTES for kind in route.kinds}
_HAZARD_OF_KIND["foreign_patch"] = "H6"


class DemoError(Exception):
    """The demo could not run (missing dependency, port taken, server did not start)."""


# -- traffic -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one request."""

    route: Route
    status: int | None
    error: str | None = None


def plan_requests(total: int, seed: int = 0) -> list[tuple[Route, str]]:
    """``total`` requests spread over the routes by weight (each route at least once), shuffled."""
    weights = sum(route.weight for route in ROUTES)
    counts = [max(1, total * route.weight // weights) for route in ROUTES]
    counts[0] += total - sum(counts)  # the healthy route absorbs the rounding
    rng = random.Random(seed)
    plan = [
        (route, route.path.replace("{n}", str(rng.randint(1, 9999))))
        for route, count in zip(ROUTES, counts, strict=True)
        for _ in range(count)
    ]
    rng.shuffle(plan)
    return plan


class Client:
    """Blocking HTTP/1.1 client with one keep-alive connection per thread (stdlib only)."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``; return status and body. Retries once on a stale kept-alive socket."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = self._connect()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            conn.close()
            self._local.conn = None
            if not reused:
                raise
            return self.get(path)
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            raise

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection any thread opened."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class Progress:
    """A one-line progress bar on a stream; on a non-terminal, one line at the end."""

    def __init__(self, total: int, stream: TextIO, live: bool, width: int = 30) -> None:
        self.total, self.stream, self.live, self.width = total, stream, live, width
        self.done = 0
        self._started = time.perf_counter()

    def advance(self) -> None:
        self.done += 1
        if self.live:
            filled = self.width * self.done // max(1, self.total)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r  requests [{bar}] {self.done}/{self.total}")
            self.stream.flush()

    def finish(self) -> float:
        seconds = time.perf_counter() - self._started
        text = f"  sent {self.done}/{self.total} requests in {seconds:.1f} s"
        self.stream.write(f"\r{text:<{self.width + 30}}\n" if self.live else f"{text}\n")
        self.stream.flush()
        return seconds


def drive(
    client: Client, plan: Sequence[tuple[Route, str]], concurrency: int,
    on_done: Callable[[], None] = lambda: None,
) -> list[Outcome]:
    """Send the planned requests from ``concurrency`` threads; every one gets an outcome."""

    def one(route: Route, path: str) -> Outcome:
        try:
            status, _ = client.get(path)
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(route, None, f"{type(exc).__name__}: {exc}")
        return Outcome(route, status)

    with concurrent.futures.ThreadPoolExecutor(
        concurrency, thread_name_prefix="demo-client"
    ) as pool:
        futures = [pool.submit(one, route, path) for route, path in plan]
        for _ in concurrent.futures.as_completed(futures):
            on_done()
    return [future.result() for future in futures]


# -- the server ----------------------------------------------------------------------------


def check_dependencies() -> None:
    """Raise :class:`DemoError` with the install hint when FastAPI or uvicorn is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoError(
            f"the demo needs {' and '.join(missing)}, which are not installed: {INSTALL_HINT}"
        )
    if importlib.util.find_spec("loopwatch.adapters.fastapi") is None:
        raise DemoError(
            "this build of loopwatch has no FastAPI adapter (loopwatch.adapters.fastapi)"
        )


@dataclasses.dataclass
class DemoApp:
    """The demo service module, loaded from a copy outside loopwatch's package directory."""

    module: types.ModuleType
    path: str
    directory: str

    @classmethod
    def load(cls) -> DemoApp:
        source = importlib.resources.files("loopwatch").joinpath("_demo_app.py").read_text("utf-8")
        directory = tempfile.mkdtemp(prefix="loopwatch-demo-")
        path = os.path.join(directory, "demo_app.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(APP_MODULE, path)
        if spec is None or spec.loader is None:  # pragma: no cover - a plain .py file
            raise DemoError(f"cannot load the demo app from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[APP_MODULE] = module
        try:
            spec.loader.exec_module(module)
        except ModuleNotFoundError as exc:
            cls._remove(directory)
            raise DemoError(f"the demo cannot import {exc.name}: {INSTALL_HINT}") from exc
        except BaseException:
            cls._remove(directory)
            raise
        return cls(module, path, directory)

    @property
    def app(self) -> Any:
        return self.module.app

    @property
    def loop(self) -> Any:
        return getattr(self.app.state, "loop", None)

    def close(self) -> None:
        self._remove(self.directory)

    @staticmethod
    def _remove(directory: str) -> None:
        sys.modules.pop(APP_MODULE, None)
        linecache.checkcache()
        shutil.rmtree(directory, ignore_errors=True)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a taken port is a clear error, not a server crash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise DemoError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from exc


class Server:
    """uvicorn serving the app in a thread of its own (signals stay with the main thread)."""

    def __init__(self, app: Any, sock: socket.socket, loop: str) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, loop=loop, lifespan="on", log_level="warning", access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="demo-server",
            daemon=True,
        )

    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise DemoError("the demo server stopped during startup (its log is above)")
            if time.monotonic() > deadline:
                raise DemoError(f"the demo server did not start within {timeout:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


# -- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """Everything the demo shows, in a form both the text and the JSON output use."""

    url: str
    app_file: str
    loop: str
    versions: dict[str, str]
    outcomes: list[Outcome]
    seconds: float
    incidents: list[Incident]
    metrics: list[str]
    absent: dict[str, str]  # hazard -> module that is missing
    log_lines: int | None

    @property
    def caught(self) -> dict[str, list[Incident]]:
        out: dict[str, list[Incident]] = {hazard: [] for hazard in HAZARDS}
        for incident in self.incidents:
            hazard = _HAZARD_OF_KIND.get(incident.kind)
            if hazard in out:
                out[hazard].append(incident)
        return out

    @property
    def failed_requests(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    @property
    def ok(self) -> bool:
        return not self.failed_requests and all(self.caught.values())

    def by_route(self) -> dict[Route, collections.Counter[str]]:
        table: dict[Route, collections.Counter[str]] = {
            route: collections.Counter() for route in ROUTES
        }
        for outcome in self.outcomes:
            key = str(outcome.status) if outcome.status is not None else "no answer"
            table[outcome.route][key] += 1
        return table

    def as_dict(self) -> dict[str, Any]:
        caught = self.caught
        return {
            "ok": self.ok,
            "url": self.url,
            "app_file": self.app_file,
            "loop": self.loop,
            "versions": self.versions,
            "requests": {
                "sent": len(self.outcomes),
                "answered": len(self.outcomes) - len(self.failed_requests),
                "seconds": round(self.seconds, 3),
                "by_route": {
                    route.handler: {"hazard": route.hazard or None, "status": dict(counts)}
                    for route, counts in self.by_route().items()
                },
                "errors": sorted({o.error for o in self.outcomes if o.error}),
            },
            "hazards": {
                hazard: {
                    "what": what,
                    "caught": bool(caught[hazard]),
                    "count": sum(i.count for i in caught[hazard]),
                    "monitor": module,
                    "monitor_present": hazard not in self.absent,
                }
                for hazard, (what, module) in HAZARDS.items()
            },
            "incidents": [incident.as_dict() for incident in self.incidents],
            "metrics": self.metrics,
        }


def scrape(client: Client, path: str = "/metrics") -> list[str]:
    """The non-zero ``loopwatch_`` samples of ``/metrics``, without buckets and ``_created``."""
    try:
        status, body = client.get(path)
    except (OSError, http.client.HTTPException) as exc:
        return [f"# could not scrape {path}: {exc}"]
    if status != 200:
        return [f"# {path} answered {status}"]
    lines = []
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("loopwatch_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith(("_bucket", "_created")):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if value != 0:
            lines.append(line)
    return lines


def _hazard_order(incident: Incident) -> tuple[str, int]:
    return (_HAZARD_OF_KIND.get(incident.kind, "H9"), -incident.count)


def render_text(report: Report) -> str:
    """The human report."""
    out: list[str] = []
    add = out.append
    versions = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    add(f"loopwatch demo: FastAPI app under uvicorn at {report.url} ({report.loop})")
    add(f"  {versions}")
    add(f"  app: {report.app_file}")
    add("       (a copy of loopwatch/_demo_app.py, run from outside the package so its lines")
    add("        count as your code; the line numbers match the original)")
    add("")
    failed = report.failed_requests
    answered = len(report.outcomes) - len(failed)
    add(f"Requests: {len(report.outcomes)} sent, {answered} answered with 200 "
        f"in {report.seconds:.1f} s")
    for route, counts in report.by_route().items():
        status = ", ".join(f"{n} x {code}" for code, n in sorted(counts.items()))
        add(f"  {route.hazard or '  '}  {route.handler:<38} {status}")
    for error in sorted({o.error for o in failed if o.error}):
        add(f"  error: {error}")
    add("")
    add("Incidents, grouped by fingerprint (kind, api, user line):")
    if not report.incidents:
        add("  none")
    for incident in sorted(report.incidents, key=_hazard_order):
        out.extend(_render_incident(incident, report.app_file))
    add("")
    add("Hazards:")
    caught = report.caught
    for hazard, (what, module) in HAZARDS.items():
        if caught[hazard]:
            n = sum(i.count for i in caught[hazard])
            add(f"  {hazard} caught ({n}x): {what}")
        elif hazard in report.absent:
            add(f"  {hazard} NOT WATCHED: {what}")
            add(f"     ({module} is not part of this build)")
        else:
            add(f"  {hazard} MISSED: {what}")
    add("")
    add("Metrics from /metrics (loopwatch_ series that are not zero; histogram buckets left out):")
    out.extend(f"  {line}" for line in report.metrics or ["none"])
    if report.log_lines is not None:
        add("")
        add(f"loopwatch logged {report.log_lines} line(s) on the 'loopwatch' logger "
            "(repeats folded per minute); --verbose shows them.")
    add("")
    if report.ok:
        add("Result: every request was answered and every hazard was caught.")
    else:
        problems = []
        if failed:
            problems.append(f"{len(failed)} request(s) not answered with 200")
        missing = [h for h, found in caught.items() if not found]
        if missing:
            problems.append(f"not caught: {', '.join(missing)}")
        add(f"Result: FAILED: {'; '.join(problems)}.")
    return "\n".join(out) + "\n"


def _render_incident(incident: Incident, app_file: str = "") -> Iterator[str]:
    hazard = _HAZARD_OF_KIND.get(incident.kind, "  ")
    action = f"[{incident.action}]" if incident.action else ""
    head = " ".join(p for p in (incident.kind, incident.api, action) if p)
    yield f"  {hazard}  {head}  x{incident.count}"

    def row(label: str, text: str) -> str:
        return f"      {label:<14} {text}".rstrip()

    yield row("handler", f"{incident.handler}  (framework {incident.framework})")
    task = f"task {incident.task}, " if incident.task else ""
    yield row("where", f"{task}thread {incident.thread}, loop {incident.loop}")
    site = incident.site
    if site is None:
        yield row("line", "(no frame of your code on the stack)")
    else:
        yield row("line", f"{site.file}:{site.line} in {site.function}")
        code = linecache.getline(site.file, site.line).strip()
        if code:
            yield row("", f"{site.line} | {code}")
    if incident.duration is not None:
        yield row("duration", f"{incident.duration * 1000:.1f} ms (the latest one)")
    for key, value in sorted(incident.detail.items()):
        if app_file:
            value = value.replace(app_file, os.path.basename(app_file))
        lines = [line for part in value.split("; ") for line in textwrap.wrap(part, 72) or [""]]
        for i, line in enumerate(lines):
            yield row(key if i == 0 else "", line)
    for i, line in enumerate(textwrap.wrap(incident.hint, width=72)):
        yield row("hint" if i == 0 else "", line)
    user = [f for f in incident.stack if is_user_file(f.file)][:4]
    for i, frame in enumerate(user):
        yield row("stack" if i == 0 else "",
                  f"{os.path.basename(frame.file)}:{frame.line} in {frame.function}")
    hidden = len(incident.stack) - len(user)
    if hidden:
        yield row("" if user else "stack", f"(+{hidden} library frame(s) not shown)")


# -- running it ----------------------------------------------------------------------------


class _CountRecords(logging.Handler):
    """Keeps loopwatch's log lines off the terminal during the demo and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.quiet = logging.NullHandler()

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _versions() -> dict[str, str]:
    from . import __version__

    out = {"loopwatch": __version__}
    for dist in ("fastapi", "uvicorn"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    out["python"] = ".".join(map(str, sys.version_info[:3]))
    return out


def _absent_monitors() -> dict[str, str]:
    absent = {}
    for hazard, (_, module) in HAZARDS.items():
        if importlib.util.find_spec(module) is None:
            absent[hazard] = module
    return absent


def _settle(demo: DemoApp, report_caught: Callable[[], bool], timeout: float) -> None:
    """Give late reports (destroyed tasks, dropped coroutines, watchdog samples) time to land."""
    loop = demo.loop
    if loop is not None:
        import gc

        # Failed tasks are reported when they are destroyed; collect cycles on the loop's
        # own thread so their reports carry that loop.
        with contextlib.suppress(RuntimeError):  # a closed loop has nothing left to collect
            loop.call_soon_threadsafe(gc.collect)
    deadline = time.monotonic() + timeout
    while not report_caught() and time.monotonic() < deadline:
        time.sleep(0.05)


def _client_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return LOOPBACK
    if host == "::":
        return "::1"
    return host


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_demo(
    options: DemoOptions, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the demo; return the exit status (0: all answered and all hazards caught)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        check_dependencies()
    except DemoError as exc:
        err.write(f"loopwatch demo: {exc}\n")
        return 2

    import loopwatch

    records: _CountRecords | None = None
    lw_logger = logging.getLogger("loopwatch")
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_propagate = asyncio_logger.propagate
    if not options.verbose:
        records = _CountRecords()
        lw_logger.addHandler(records)
        # asyncio's own "Task exception was never retrieved" lines repeat what the report
        # shows (loopwatch chains asyncio's handler); keep them for --verbose.
        asyncio_logger.addHandler(records.quiet)
        asyncio_logger.propagate = False
    stop = threading.Event()
    restore = _catch_signals(stop) if options.serve else {}
    demo: DemoApp | None = None
    server: Server | None = None
    client: Client | None = None
    try:
        demo = DemoApp.load()
        sock = listen(options.host, options.port)
        port = int(sock.getsockname()[1])
        server = Server(demo.app, sock, options.loop)
        server.start()
        if options.host not in (LOOPBACK, "localhost", "::1"):
            err.write(f"loopwatch demo: listening on {options.host}:{port}, reachable from "
                      "other machines\n")
        client = Client(_client_host(options.host), port)
        url = _url(options.host, port)
        err.write(f"loopwatch demo: serving {url}; sending {options.requests} requests "
                  f"from {options.concurrency} clients\n")
        plan = plan_requests(options.requests)
        progress = Progress(len(plan), err, live=err.isatty() and not options.verbose)
        outcomes = drive(client, plan, options.concurrency, progress.advance)
        seconds = progress.finish()
        absent = _absent_monitors()

        def all_caught() -> bool:
            kinds = {i.kind for i in loopwatch.incidents()}
            return all(
                set(route.kinds) & kinds for route in ROUTES
                if route.kinds and route.hazard not in absent
            )

        _settle(demo, all_caught, timeout=3.0)
        report = Report(
            url=url, app_file=demo.path, loop=_loop_name(demo.loop), versions=_versions(),
            outcomes=outcomes, seconds=seconds, incidents=loopwatch.incidents(),
            metrics=scrape(client), absent=absent,
            log_lines=None if records is None else records.count,
        )
        if options.json:
            out.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
        else:
            out.write(render_text(report))
        out.flush()
        status = 0 if report.ok else 1
        if options.serve:
            _serve(client, url, options, stop, out if not options.json else err, err)
        return status
    except DemoError as exc:
        err.write(f"loopwatch demo: {exc}\n")
        return 2
    except KeyboardInterrupt:
        err.write("\nloopwatch demo: interrupted\n")
        return 130
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        if demo is not None:
            demo.close()
        if records is not None:
            lw_logger.removeHandler(records)
            asyncio_logger.removeHandler(records.quiet)
            asyncio_logger.propagate = asyncio_propagate
        for signum, handler in restore.items():
            signal.signal(signum, handler)


def _loop_name(loop: Any) -> str:
    from ._monitor import loop_name

    return loop_name(loop)


def _catch_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGINT and SIGTERM end ``--serve`` cleanly; returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    restore: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, name, None)
        if signum is not None:
            restore[signum] = signal.signal(signum, lambda *_: stop.set())
    return restore


def _serve(
    client: Client, url: str, options: DemoOptions, stop: threading.Event, out: TextIO,
    err: TextIO,
) -> None:
    """Keep serving until SIGINT/SIGTERM, with a little traffic every ``interval`` seconds."""
    out.write(f"\nServing {url} (metrics at {url}/metrics) until Ctrl-C or SIGTERM; "
              f"{len(ROUTES)} requests every {options.interval:g} s keep the rates above zero.\n")
    out.flush()
    burst = [(route, route.path.replace("{n}", str(i + 1))) for i, route in enumerate(ROUTES)]
    while not stop.wait(options.interval):
        outcomes = drive(client, burst, len(burst))
        failed = [o for o in outcomes if o.status != 200]
        if failed:
            err.write(f"loopwatch demo: {len(failed)} of {len(outcomes)} requests failed: "
                      f"{failed[0].route.handler} -> {failed[0].status or failed[0].error}\n")
            err.flush()
    err.write("loopwatch demo: stopping\n")
