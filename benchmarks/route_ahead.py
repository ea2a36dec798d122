"""What labelling a request ahead of its router costs, against routing it.

A request whose labels are read before the router ran (a middleware blocked the loop, or
answered first and ``handler_metrics`` records its duration) is matched by loopwatch
against the app's route tree. This times that read (``_Resolver.labels`` on a scope the
router has not seen) and, as the baseline in the same process, what Starlette's router does
to pick a route for the same request (``route.matches`` over the routes in order), for a
FastAPI app of N routes and a request for its last route or for no route.

Run: ``python benchmarks/route_ahead.py [--routes 30 300] [--rounds 9] [--reads 2000]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match

from loopwatch.adapters.asgi import LoopwatchMiddleware


def make_app(routes: int) -> FastAPI:
    app = FastAPI()
    for i in range(routes):
        app.get(f"/r{i}/{{x}}")(lambda x: x)
    return app


def scope_for(app: FastAPI, path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "root_path": "", "app": app,
            "headers": [(b"host", b"app")]}


def per_read(action: Any, reads: int) -> float:
    started = time.perf_counter()
    for _ in range(reads):
        action()
    return (time.perf_counter() - started) / reads * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    print("| routes | request | loopwatch's read, µs (median, min) | router's match, µs "
          "(median, min) | ratio of medians |")
    print("|---:|---|---:|---:|---:|")
    for count in args.routes:
        app = make_app(count)
        resolver = LoopwatchMiddleware(app)._resolver
        routes = app.router.routes
        for what, path in (("its last route", f"/r{count - 1}/a"), ("no route", "/nowhere")):

            def read(path: str = path, app: Any = app, resolver: Any = resolver) -> None:
                resolver.labels(scope_for(app, path), "")

            def route(path: str = path, app: Any = app, routes: Any = routes) -> None:
                scope = scope_for(app, path)
                for candidate in routes:
                    if candidate.matches(scope)[0] is Match.FULL:
                        break

            read()
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(args.rounds):  # alternating, so a change in load touches both
                ours.append(per_read(read, args.reads))
                theirs.append(per_read(route, args.reads))
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"| {count} | {what} | {a:.1f} ({min(ours):.1f}) | {b:.1f} ({min(theirs):.1f})"
                  f" | {a / b:.2f} |")


if __name__ == "__main__":
    main()
