"""Running the demo end to end (``loopwatch demo``), and ``--serve`` for a real Prometheus."""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TextIO

from .._runtime import loop_name
from .plan import (
    HAZARDS,
    LOOPBACK,
    ROUTES,
    Client,
    DemoError,
    DemoOptions,
    Progress,
    burst_requests,
    drive,
    plan_requests,
)
from .report import Report, render_text, scrape
from .server import DemoApp, Server, check_dependencies, listen

__all__ = ["run_demo"]

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
    from .. import __version__  # imported late: the package imports this module

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
    quiet_h5 = contextlib.ExitStack()
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
        # The demo's H5 route drops a coroutine on purpose: its RuntimeWarning is in the
        # report (loopwatch records every one, whatever the filters), not printed raw.
        quiet_h5.enter_context(warnings.catch_warnings())
        warnings.filterwarnings(
            "ignore", message="coroutine 'record_audit' was never awaited",
            category=RuntimeWarning,
        )
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
        burst = burst_requests()
        err.write(f"loopwatch demo: serving {url}; sending {options.requests} requests "
                  f"from {options.concurrency} clients, and {len(burst)} at once\n")
        plan = plan_requests(options.requests)
        progress = Progress(
            len(plan) + len(burst), err, live=err.isatty() and not options.verbose
        )
        # The burst (requests that need company: a queue, a held lock) goes in parallel.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="demo-burst") as one:
            bursting = one.submit(drive, client, burst, len(burst), progress.advance)
            outcomes = drive(client, plan, options.concurrency, progress.advance)
            outcomes = bursting.result() + outcomes
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
            quiet_h5.close()
        for signum, handler in restore.items():
            signal.signal(signum, handler)


def _loop_name(loop: Any) -> str:
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
