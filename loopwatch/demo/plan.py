"""The demo's routes, the hazard each one exercises, and the traffic that drives them."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

__all__ = [
    "APP_MODULE", "HAZARDS", "INSTALL_HINT", "LOOPBACK", "ROUTES", "Client", "DemoError",
    "DemoOptions", "Outcome", "Progress", "Route", "burst_requests", "drive", "plan_requests",
]



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

    hazard: str  # "H1".."H9", or "" for the healthy route
    handler: str  # the label loopwatch gives it: method and route template
    path: str  # a request path; "{n}" becomes a number
    weight: int  # share of the traffic
    kinds: tuple[str, ...]  # incident kinds that mean "caught"
    # Metrics whose non-zero series of this handler mean "caught" (hazards that are a
    # state, not an event: tasks left behind).
    metrics: tuple[str, ...] = ()
    # Requests sent all at once before the mixed traffic (a queue needs company).
    burst: int = 0


ROUTES = (
    Route("", "GET /healthy", "/healthy", 6, ()),
    Route("H1", "GET /customers/{customer_id}/report", "/customers/{n}/report", 2, ("reentry",)),
    Route("H2", "GET /cache/refresh", "/cache/refresh", 2, ("cross_thread_run",)),
    Route("H3", "GET /reports/slow", "/reports/slow", 1, ("blocked_loop",)),
    Route("H4", "GET /orders/{order_id}/notify", "/orders/{n}/notify", 2,
          ("unretrieved_exception", "pending_task_destroyed")),
    Route("H5", "GET /audit", "/audit", 2, ("never_awaited",)),
    # Each request holds the lock for 2 s: one in the mix (the least any route gets), two
    # at once in the burst, so one of them waits on the other.
    Route("H7", "GET /exports/latest", "/exports/latest", 0, ("stuck_handler",), burst=2),
    Route("H8", "GET /invoices/{invoice_id}/pdf", "/invoices/{n}/pdf", 1,
          ("threadpool_saturated",), burst=8),
    Route("H9", "GET /prices/{symbol}/watch", "/prices/{n}/watch", 1, (),
          metrics=("loopwatch_tasks",)),
)

# hazard -> (what the route does, the loopwatch module that watches for it)
HAZARDS = {
    "H1": ("asyncio.run() in a sync helper called from an async route", "loopwatch._reentry"),
    "H2": ("a sync endpoint drives the server's loop with run_until_complete()",
           "loopwatch._reentry"),
    "H3": ("time.sleep(0.3) in an async route blocks the loop", "loopwatch._watchdog"),
    "H4": ("a fire-and-forget task fails and nobody retrieves its exception", "loopwatch._tasks"),
    "H5": ("a coroutine is created and never awaited", "loopwatch._tasks"),
    "H7": ("a request waits on a lock another request holds for 2 s (stuck_after 1 s)",
           "loopwatch._handlers"),
    "H8": ("8 requests at once to a sync def route behind a thread limiter of 2",
           "loopwatch._threadpool"),
    "H9": ("a route starts a background task that never ends", "loopwatch._task_gauge"),
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


def burst_requests() -> list[tuple[Route, str]]:
    """The requests sent all at once before the mixed traffic (routes with a ``burst``)."""
    return [
        (route, route.path.replace("{n}", str(i + 1)))
        for route in ROUTES
        for i in range(route.burst)
    ]


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
