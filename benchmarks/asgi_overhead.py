"""What LoopwatchMiddleware adds to a request, next to two Prometheus middlewares.

In-process ASGI calls (no network, no client library) on a Starlette app with 30 and
with 300 routes, to the last route (``GET /r{N-1}/{item_id}``, the worst case for anything
that matches routes again). Variants, each measured in the same run:

* bare — the app alone;
* loopwatch — ``LoopwatchMiddleware`` with defaults (labels only);
* loopwatch + handler_metrics — also ``loopwatch_handler_duration_seconds``;
* the same two with ``install(otel=True)`` on an OpenTelemetry SDK ``MeterProvider`` (skipped
  when opentelemetry-sdk is not installed): span events cost nothing per request, the
  handler histogram is also recorded as an OTel histogram;
* prometheus-fastapi-instrumentator and starlette-exporter with their defaults.

Each variant is timed in batches paired with batches of the bare app, back to back and
alternating which goes first, so changes in machine load cancel out of each difference.
"added" is the median of those differences (with the 25th–75th percentiles); "best-of"
is the fastest batch of the variant minus the fastest bare batch, close to the cost on
an idle machine. Run it with::

    python benchmarks/asgi_overhead.py        # --pairs 600 --batch 20 --loop asyncio

"otel adds" at the end comes from the middleware-alone run, where each otel variant is
paired with the same middleware without otel: the median of those differences, with their
25th–75th percentiles.
``--install`` runs it with loopwatch installed (as ``instrument()`` does), so the
per-request tracking of handlers in flight (``stuck_after``) is in the measured path.
``--stuck`` measures that tracking alone: the middleware around the answering app, loopwatch
installed, batches with ``stuck_after=10`` (the default) paired with batches with
``stuck_after=0`` (off), alternating which goes first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import loopwatch
from loopwatch.adapters.asgi import LoopwatchMiddleware

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
except ImportError:  # the otel variants need the SDK; the others run without it
    MeterProvider = None

VARIANTS = (
    "bare",
    "loopwatch",
    "loopwatch + handler_metrics",
    *(("loopwatch, otel", "loopwatch + handler_metrics, otel") if MeterProvider else ()),
    "prometheus-fastapi-instrumentator",
    "starlette-exporter",
)
PEERS = ("prometheus-fastapi-instrumentator", "starlette-exporter")
# The registry of the installed monitor: otel=True mirrors its metrics (one monitor per
# process, so one such registry).
OTEL_REGISTRY = CollectorRegistry()


async def endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app(routes: int, variant: str) -> Starlette:
    app = Starlette(routes=[Route(f"/r{i}/{{item_id}}", endpoint) for i in range(routes)])
    if variant == "loopwatch":
        app.add_middleware(LoopwatchMiddleware, registry=CollectorRegistry())
    elif variant == "loopwatch + handler_metrics":
        app.add_middleware(LoopwatchMiddleware, registry=CollectorRegistry(), handler_metrics=True)
    elif variant == "loopwatch, otel":
        app.add_middleware(LoopwatchMiddleware, registry=OTEL_REGISTRY)
    elif variant == "loopwatch + handler_metrics, otel":
        app.add_middleware(LoopwatchMiddleware, registry=OTEL_REGISTRY, handler_metrics=True)
    elif variant == "prometheus-fastapi-instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator(registry=CollectorRegistry()).instrument(app)
    elif variant == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware)
    return app


def scope_for(path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    if message["type"] == "http.response.start" and message["status"] != 200:
        raise RuntimeError(f"benchmark request failed: {message['status']}")


async def time_requests(app: Any, scope: dict[str, Any], count: int) -> float:
    """Microseconds per request over ``count`` sequential requests."""
    copy = scope.copy
    started = time.perf_counter_ns()
    for _ in range(count):
        await app(copy(), receive, send)
    return (time.perf_counter_ns() - started) / count / 1000


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def paired(
    bare: Any, other: Any, scope: dict[str, Any], pairs: int, batch: int
) -> tuple[list[float], list[float], list[float]]:
    """``pairs`` back-to-back batches of the bare app and of ``other``, alternating which
    goes first, so drift in machine load cancels out of each difference."""
    bare_times: list[float] = []
    other_times: list[float] = []
    for i in range(pairs):
        gc.disable()
        try:
            if i % 2:
                o = await time_requests(other, scope, batch)
                b = await time_requests(bare, scope, batch)
            else:
                b = await time_requests(bare, scope, batch)
                o = await time_requests(other, scope, batch)
        finally:
            gc.enable()
        bare_times.append(b)
        other_times.append(o)
        if i % 16 == 15:
            gc.collect()
    added = [o - b for o, b in zip(other_times, bare_times, strict=True)]
    return bare_times, other_times, added


async def measure(routes: int, pairs: int, batch: int) -> dict[str, dict[str, float]]:
    apps = {variant: make_app(routes, variant) for variant in VARIANTS}
    scope = scope_for(f"/r{routes - 1}/42")
    for app in apps.values():  # build the middleware stacks, fill the caches
        await time_requests(app, scope, 200)
    result: dict[str, dict[str, float]] = {}
    bare_all: list[float] = []
    for variant in VARIANTS[1:]:
        # The peers cost 10-100x more per request: fewer, smaller batches keep the run short.
        n, size = (pairs, batch)
        if variant in PEERS:
            n, size = max(pairs // 4, 8), max(batch // 2, 5)
        bare_times, other_times, added = await paired(apps["bare"], apps[variant], scope, n, size)
        bare_all += bare_times
        result[variant] = {
            "us": statistics.median(other_times),
            "added": statistics.median(added),
            "p25": quantile(added, 0.25),
            "p75": quantile(added, 0.75),
            "best": min(other_times) - min(bare_times),
        }
    result = {"bare": {"us": statistics.median(bare_all), "added": 0.0, "p25": 0.0,
                       "p75": 0.0, "best": 0.0}, **result}
    return result


async def middleware_alone(pairs: int, batch: int) -> dict[str, dict[str, float]]:
    """The middleware around an app that only routes and answers: its cost, unblurred by
    a framework's own ~20-70 µs per request."""
    route = Route("/items/{item_id}", endpoint)
    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"ok"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = route  # what Starlette's router leaves in the scope
        await send(start)
        await send(body)

    variants = {
        "loopwatch": LoopwatchMiddleware(app, framework="starlette"),
        "loopwatch + handler_metrics": LoopwatchMiddleware(
            app, framework="starlette", handler_metrics=True, registry=CollectorRegistry()
        ),
    }
    # With otel on, each is timed against the same middleware without it (not the bare app):
    # the difference is what otel adds.
    against: dict[str, Any] = {}
    if MeterProvider is not None:
        for name in ("loopwatch", "loopwatch + handler_metrics"):
            variants[f"{name}, otel"] = LoopwatchMiddleware(
                app, framework="starlette", handler_metrics="handler" in name,
                registry=OTEL_REGISTRY,
            )
            against[f"{name}, otel"] = variants[name]
    scope = scope_for("/items/42")
    for wrapped in variants.values():
        await time_requests(wrapped, scope, 500)
    result: dict[str, dict[str, float]] = {}
    for name, wrapped in variants.items():
        bare_times, other_times, added = await paired(
            against.get(name, app), wrapped, scope, pairs, batch
        )
        result[name] = {
            "us": statistics.median(other_times),
            "added": statistics.median(added),
            "p25": quantile(added, 0.25),
            "p75": quantile(added, 0.75),
            "best": min(other_times) - min(bare_times),
        }
    return result


async def stuck_tracking(pairs: int, batch: int) -> dict[str, float]:
    """What tracking requests in flight adds: stuck_after=10 against stuck_after=0."""

    monitor = loopwatch.install(registry=CollectorRegistry())
    route = Route("/items/{item_id}", endpoint)
    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"ok"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = route
        await send(start)
        await send(body)

    wrapped = LoopwatchMiddleware(app, framework="starlette")
    scope = scope_for("/items/42")
    await time_requests(wrapped, scope, 500)
    on: list[float] = []
    off: list[float] = []
    for i in range(pairs):
        for stuck_after in ((10.0, 0.0) if i % 2 else (0.0, 10.0)):
            monitor.reconfigure(stuck_after=stuck_after)
            gc.disable()
            try:
                took = await time_requests(wrapped, scope, batch)
            finally:
                gc.enable()
            (on if stuck_after else off).append(took)
        if i % 16 == 15:
            gc.collect()
    added = [a - b for a, b in zip(on, off, strict=True)]
    return {"added": statistics.median(added), "p25": quantile(added, 0.25),
            "p75": quantile(added, 0.75), "best": min(on) - min(off),
            "off": statistics.median(off)}


def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| routes | middleware | µs/request | added µs, median | p25 – p75 | added µs, best-of "
        "| loopwatch default ÷ this |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for routes, rows in results.items():
        ours = rows["loopwatch"]["added"]
        for variant, row in rows.items():
            ratio = ""
            if variant in PEERS and row["added"] > 0:
                ratio = f"1 : {row['added'] / ours:.0f}" if ours > 0 else "—"
            if variant == "bare":
                lines.append(f"| {routes} | bare | {row['us']:.1f} | — | — | — | |")
                continue
            lines.append(
                f"| {routes} | {variant} | {row['us']:.1f} | {row['added']:.2f} "
                f"| {row['p25']:.2f} – {row['p75']:.2f} | {row['best']:.2f} | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600, help="paired batches per variant")
    parser.add_argument("--batch", type=int, default=20, help="requests per batch")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--install", action="store_true", help="install loopwatch first")
    parser.add_argument("--alone", action="store_true", help="only the middleware alone")
    parser.add_argument("--stuck", action="store_true",
                        help="only what tracking requests in flight adds (stuck_after)")
    args = parser.parse_args(argv)
    if args.stuck:
        row = asyncio.run(stuck_tracking(args.pairs, 200))
        print(f"Python {sys.version.split()[0]}: stuck_after=10 vs 0, {args.pairs} paired "
              f"batches x 200 requests, middleware alone ({row['off']:.2f} µs/request off): "
              f"added {row['added']:.2f} µs median (p25 {row['p25']:.2f}, p75 "
              f"{row['p75']:.2f}), best-of {row['best']:.2f} µs")
        return
    if args.install:
        loopwatch.install(registry=CollectorRegistry())
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    results: dict[int, dict[str, dict[str, float]]] = {}
    if MeterProvider is not None:
        # An SDK provider that aggregates in memory: the work an exporting one does per
        # observation, without the network.
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        loopwatch.install(otel=True, registry=OTEL_REGISTRY, meter_provider=provider,
                          watchdog=False)
    loop = factory()
    try:
        alone = loop.run_until_complete(middleware_alone(args.pairs, 200))
        for routes in () if args.alone else (30, 300):
            results[routes] = loop.run_until_complete(measure(routes, args.pairs, args.batch))
    finally:
        loop.close()
    print(
        f"Python {sys.version.split()[0]}, {args.loop} loop, {args.pairs} paired batches × "
        f"{args.batch} requests per loopwatch variant (peers: a quarter of the pairs, half "
        f"the batch), GET /r{{N-1}}/42 in-process\n"
    )
    print(table(results))
    print("\nThe middleware alone, around an app that only sets scope['route'] and answers "
          f"({args.pairs} paired batches × 200 requests):\n")
    print("| middleware | against | added µs, median | p25 – p75 | added µs, best-of |")
    print("|---|---|---:|---:|---:|")
    for name, row in alone.items():
        against = name.removesuffix(", otel") if name.endswith(", otel") else "bare app"
        print(f"| {name} | {against} | {row['added']:.2f} | {row['p25']:.2f} – {row['p75']:.2f} "
              f"| {row['best']:.2f} |")
    for routes, rows in results.items():
        ours = rows["loopwatch"]["added"]
        timed = rows["loopwatch + handler_metrics"]["added"]
        peers = ", ".join(f"{p} {rows[p]['added']:.1f} µs" for p in PEERS)
        print(f"\n{routes} routes: loopwatch adds {ours:.2f} µs (handler_metrics: {timed:.2f} µs); "
              f"{peers}.")
    for base in ("loopwatch", "loopwatch + handler_metrics"):
        on = alone.get(f"{base}, otel")
        if on is not None:
            print(f"\notel adds {on['added']:.2f} µs per request to {base} (median of paired "
                  f"differences, p25 – p75 {on['p25']:.2f} – {on['p75']:.2f}, best-of "
                  f"{on['best']:.2f})", end="")
    print()


if __name__ == "__main__":
    main()
