"""Label correctness on FastAPI's own documentation apps.

Downloads the sdist of the installed FastAPI from PyPI (``pip download --no-binary``),
imports every app under its ``docs_src/``, instruments each with loopwatch
(``instrument(app, handler_metrics=True)``, a fresh registry per app) and drives every
route it can reach with in-process ASGI requests: each HTTP method of each route, each
websocket route, the routes inside mounts and included routers, every ``frontend()``, and
one path no route serves. The label loopwatch records is compared with a template this
script computes on its own, without loopwatch's resolver: it walks the app's route tree in
order, as Starlette's router would, and joins the ``path_format`` of the first route that
takes the request to the mount and include prefixes above it. A middleware just ahead of
each app's router also reads the label before routing (what a block in an authentication
check gets), compared with the same template (front-ends aside: they are routed last).

    python benchmarks/label_check.py                 # the installed FastAPI's sdist
    python benchmarks/label_check.py --sdist PATH    # an sdist already on disk

Run it in a throwaway virtualenv with the project installed (``pip install -e '.[all]'``);
documentation apps whose extra dependencies are missing (databases, GraphQL, templates)
are counted as not imported. The exit status is 1 when any label differs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import fastapi
import starlette
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Host, Match, Mount, WebSocketRoute

from loopwatch._context import current_labels
from loopwatch.adapters import fastapi as lw_fastapi
from loopwatch.adapters import starlette as lw_starlette

UNMATCHED = "__unmatched__"
NOWHERE = "/zz-loopwatch-no-such-route"
PER_REQUEST_TIMEOUT = 3.0


# -- the independent template: the route tree, walked in routing order ----------------------


@dataclass
class Target:
    """One request to send and the template the route tree says it must get."""

    kind: str  # http | websocket
    method: str
    path: str
    host: str = "testserver"
    accept_html: bool = False


def routes_of(node: Any) -> list[Any]:
    """A router's routes with FastAPI's included routers opened, in routing order."""
    routes = list(getattr(node, "routes", None) or [])
    expand = getattr(fastapi.routing, "iter_route_contexts", None)
    if expand is None:  # FastAPI that copies included routes: already flat
        return routes
    out: list[Any] = []
    for context in expand(routes):
        effective = getattr(context, "_effective_route", None)
        out.append(context.route if effective is None else effective)
    return out


def sample(path: str, convertors: dict[str, Any]) -> str:
    """A concrete path for a route path: every parameter filled with a plain value."""
    concrete = path
    for name, convertor in convertors.items():
        kind = type(convertor).__name__
        value = {"IntegerConvertor": "1", "FloatConvertor": "1.5", "PathConvertor": "a/b",
                 "UUIDConvertor": "12345678-1234-5678-1234-567812345678"}.get(kind, "1")
        for spelled in (f"{{{name}}}", *(f"{{{name}:{c}}}" for c in
                                         ("int", "float", "path", "uuid", "str"))):
            concrete = concrete.replace(spelled, value)
    return concrete


def targets(node: Any, prefix: str = "", host: str = "testserver") -> Iterator[Target]:
    """A request for every route below ``node`` (concrete mount prefix ``prefix``)."""
    for route in routes_of(node):
        if isinstance(route, Host):
            inner = route.host.replace("{", "").replace("}", "")
            yield from targets(route.app, prefix, inner)
        elif isinstance(route, Mount):
            concrete = prefix + sample(route.path, route.param_convertors)
            if getattr(route, "routes", None):
                yield from targets(route, concrete, host)
            else:
                yield Target("http", "GET", concrete + "/file.txt", host)
        elif isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            yield Target("websocket", "", prefix + sample(route.path, route.param_convertors),
                         host)
        elif hasattr(route, "path_regex") and hasattr(route, "path"):
            path = prefix + sample(route.path, getattr(route, "param_convertors", {}))
            methods = sorted(set(getattr(route, "methods", None) or {"GET"}) - {"HEAD"})
            for method in methods or ["GET"]:
                yield Target("http", method, path, host)
    for path in frontends(node):
        yield Target("http", "GET", prefix + path.rstrip("/") + "/assets/app.js", host,
                     accept_html=True)


def frontends(node: Any, prefix: str = "") -> Iterator[str]:
    """The ``frontend()`` paths of a FastAPI router and the routers it includes."""
    router = getattr(node, "router", node)
    for group in getattr(router, "_low_priority_routes", None) or []:
        for route in getattr(group, "routes", []):
            yield prefix + route.path if route.path != "/" or not prefix else prefix
    for route in getattr(router, "routes", None) or []:
        included = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if included is not None and context is not None:
            yield from frontends(included, prefix + context.prefix)


def expected(
    node: Any, target: Target, path: str, prefix: str = "", front_ends: bool = True
) -> str:
    """The template the first route that takes ``path`` has: Starlette's routing order.

    Without ``front_ends``, FastAPI's ``frontend()`` builds are left out: what loopwatch
    labels a request with before its router ran (a middleware answered first)."""
    scope = {"type": target.kind, "path": path, "root_path": "", "method": target.method,
             "headers": [(b"host", target.host.encode())]}
    partial: str | None = None
    for route in routes_of(node):
        if isinstance(route, Host):
            if route.matches(scope)[0] is Match.FULL:
                return expected(route.app, target, path, prefix, front_ends)
            continue
        if isinstance(route, Mount):
            found = route.path_regex.match(path)
            if not found:
                continue
            mount = route.path_format[: -len("/{path}")]
            if not getattr(route, "routes", None):
                return f"{method_of(target)} {prefix}{mount}/{{path}}"
            return expected(route, target, "/" + found.group("path"), prefix + mount,
                            front_ends)
        regex = getattr(route, "path_regex", None)
        if regex is None or not regex.match(path):
            continue
        websocket = isinstance(route, WebSocketRoute) or (
            type(route).__name__ == "APIWebSocketRoute")
        if websocket != (target.kind == "websocket"):
            continue
        label = f"{method_of(target)} {prefix}{route.path_format}"
        methods = getattr(route, "methods", None)
        if target.kind == "http" and methods and target.method not in methods:
            partial = partial or label
            continue
        return label
    if partial is not None:
        return partial
    if not front_ends:
        return UNMATCHED
    for front in sorted(frontends(node), key=len, reverse=True):  # the most specific
        if front == "/" or path == front or path.startswith(front + "/"):
            tail = "" if front == "/" else front
            return f"{method_of(target)} {prefix}{tail}/{{path}}"
    return UNMATCHED


def method_of(target: Target) -> str:
    return "WEBSOCKET" if target.kind == "websocket" else target.method


# -- driving requests -----------------------------------------------------------------------


async def send_one(app: Any, target: Target) -> tuple[int, bool]:
    """One request through the ASGI interface: its status (0: none before the timeout) and
    whether it reached the app's router (a middleware may answer first: an HTTPS redirect,
    a rejected host), which Starlette's router records as ``scope["router"]``."""
    scope: dict[str, Any] = {
        "type": target.kind, "asgi": {"version": "3.0"}, "http_version": "1.1",
        "scheme": "ws" if target.kind == "websocket" else "http", "path": target.path,
        "raw_path": target.path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", target.host.encode())]
        + ([(b"accept", b"text/html")] if target.accept_html else []),
        "client": ("127.0.0.1", 1), "server": (target.host, 80), "state": {},
    }
    if target.kind == "http":
        scope["method"] = target.method
        scope["headers"].append((b"content-type", b"application/json"))
    status = 0
    first = ({"type": "websocket.connect"} if target.kind == "websocket"
             else {"type": "http.request", "body": b"{}", "more_body": False})
    pending = [first]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        if target.kind == "websocket":
            return {"type": "websocket.disconnect", "code": 1000}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "websocket.accept":
            status = 101
        elif message["type"] == "websocket.close" and not status:
            status = 403

    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(app(scope, receive, send), PER_REQUEST_TIMEOUT)
    return status, "router" in scope


def counts(registry: CollectorRegistry) -> Counter[str]:
    found: Counter[str] = Counter()
    for family in registry.collect():
        for s in family.samples:
            if s.name == "loopwatch_handler_duration_seconds_count":
                found[s.labels["handler"]] += int(s.value)
    return found


@dataclass
class Report:
    modules: int = 0
    imported: int = 0
    apps: int = 0
    routes: int = 0
    requests: int = 0
    exact: int = 0
    unrouted: int = 0  # answered by a middleware before any routing
    ahead: int = 0  # labels read by a middleware just ahead of the router
    ahead_exact: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    misses: list[str] = field(default_factory=list)
    failed_imports: list[str] = field(default_factory=list)


class Ahead:
    """The innermost middleware, just ahead of the router: the label loopwatch gives work
    there (a block in an authentication check), before any route is known."""

    seen: ClassVar[list[str]] = []

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            Ahead.seen.append(current_labels().handler)
        await self.app(scope, receive, send)


def instrument(name: str, app: Any, report: Report) -> CollectorRegistry | None:
    registry = CollectorRegistry()
    add = lw_fastapi.instrument if isinstance(app, fastapi.FastAPI) else lw_starlette.instrument
    try:
        add(app, registry=registry, handler_metrics=True, metrics_path=None)
    except RuntimeError as exc:  # a sub-app another app has already served
        report.failed_imports.append(f"{name}: not instrumented: {exc}")
        return None
    app.user_middleware.append(Middleware(Ahead))
    return registry


async def drive(name: str, app: Any, registry: CollectorRegistry, report: Report) -> None:
    planned = [*targets(app), Target("http", "GET", NOWHERE)]
    report.apps += 1
    report.routes += len({(t.kind, t.path, t.host) for t in planned}) - 1
    for target in planned:
        before = counts(registry)
        Ahead.seen = []
        status, routed = await send_one(app, target)
        want = expected(app, target, target.path, front_ends=routed)
        grown = counts(registry) - before
        got = next(iter(grown)) if len(grown) == 1 else f"<{len(grown)} labels: {dict(grown)}>"
        report.requests += 1
        report.unrouted += not routed
        report.statuses[status] += 1
        if got == want:
            report.exact += 1
        else:
            report.misses.append(f"{name}: {method_of(target)} {target.path} "
                                 f"(host {target.host}): got {got!r}, want {want!r}")
        if Ahead.seen:  # no other middleware answered first
            report.ahead += 1
            want_ahead = expected(app, target, target.path, front_ends=False)
            if Ahead.seen[0] == want_ahead:
                report.ahead_exact += 1
            else:
                report.misses.append(
                    f"{name}: {method_of(target)} {target.path} (host {target.host}), ahead "
                    f"of the router: got {Ahead.seen[0]!r}, want {want_ahead!r}"
                )


def apps_in(module: Any) -> list[Any]:
    found: list[Any] = []
    for value in vars(module).values():
        if isinstance(value, Starlette) and all(value is not seen for seen in found):
            found.append(value)
    return found


def prepare(workdir: Path) -> None:
    """What the documentation apps expect in their working directory."""
    for folder in ("dist", "static", "templates", "dist/assets"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    (workdir / "dist" / "index.html").write_text("<html></html>")
    (workdir / "dist" / "404.html").write_text("<html></html>")
    (workdir / "dist" / "assets" / "app.js").write_text("")
    (workdir / "static" / "file.txt").write_text("")
    (workdir / "templates" / "item.html").write_text("{{ id }}")


def fetch_sdist(into: Path) -> Path:
    spec = f"fastapi=={fastapi.__version__}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", spec, "-d", str(into)], check=True)
    [sdist] = into.glob("fastapi-*.tar.gz")
    return sdist


async def run(sdist: Path, workdir: Path) -> Report:
    with tarfile.open(sdist) as archive:
        archive.extractall(workdir, filter="data")
    [root] = [p for p in workdir.iterdir() if (p / "docs_src").is_dir()]
    if not (root / "docs_src").is_dir():
        raise SystemExit(f"{sdist.name} has no docs_src/")
    sys.path.insert(0, str(root))
    prepare(workdir)
    os.chdir(workdir)
    report = Report()
    seen: list[Any] = []
    for file in sorted((root / "docs_src").rglob("*.py")):
        if file.name == "__init__.py" or "test" in file.name:
            continue
        name = ".".join(file.relative_to(root).with_suffix("").parts)
        report.modules += 1
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except BaseException as exc:  # missing extras, apps that need a service
            report.failed_imports.append(f"{name}: {type(exc).__name__}: {exc}"[:160])
            continue
        report.imported += 1
        # Every app of the module instrumented before any serves: a served app's sub-apps
        # take no more middleware.
        instrumented = []
        for app in apps_in(module):
            if any(app is other for other in seen):  # imported from another module
                continue
            seen.append(app)
            registry = instrument(name, app, report)
            if registry is not None:
                instrumented.append((app, registry))
        for app, registry in instrumented:
            await drive(name, app, registry, report)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--sdist", type=Path, help="a FastAPI sdist already downloaded")
    parser.add_argument("--verbose", action="store_true", help="list the failed imports")
    args = parser.parse_args()
    logging.getLogger("loopwatch").setLevel(logging.CRITICAL)  # the apps' hazards are noise
    with tempfile.TemporaryDirectory(prefix="label-check-") as tmp:
        workdir = Path(tmp)
        sdist = args.sdist.resolve() if args.sdist else fetch_sdist(workdir / "sdist")
        report = asyncio.run(run(sdist, workdir / "src"))
    share = 100.0 * report.exact / report.requests if report.requests else 0.0
    print(f"FastAPI {fastapi.__version__}, Starlette {starlette.__version__}, "
          f"Python {sys.version.split()[0]}: docs_src of {sdist.name}")
    print(f"{report.modules} modules, {report.imported} imported, {report.apps} apps, "
          f"{report.routes} routes, {report.requests} requests: {report.exact} exact labels "
          f"({share:.2f} %); {report.unrouted} answered by a middleware before routing")
    print(f"ahead of the router (a middleware reading the labels before routing): "
          f"{report.ahead_exact} of {report.ahead} exact")
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items())))
    for miss in report.misses:
        print("MISS " + miss)
    if args.verbose:
        for failed in report.failed_imports:
            print("not imported: " + failed)
    return 1 if report.misses else 0


if __name__ == "__main__":
    sys.exit(main())
