"""Label correctness on aiohttp's own example apps.

Downloads the sdist of the installed aiohttp (``pip download --no-binary :all: --no-deps``)
into a temporary directory and collects the ``web.Application`` of every example under its
``examples/``: the app each module hands to ``web.run_app`` on import, the one its
``init()`` returns, or the one its ``run_test_server()`` gives to ``web.AppRunner``. Each
app is instrumented (``instrument(app, metrics_path=None)``) and served by a real
``AppRunner``/``TCPSite`` on 127.0.0.1; every route of every resource (sub-applications
included) gets one request per method, plus one path no route serves and, for each
resource, one method it does not allow. A middleware placed right after loopwatch's
records the label loopwatch set for the request.

The expected label is computed here without loopwatch's code: the leaf resources are
walked in routing order, the first whose pattern matches the path and which has a route
for the method wins (or, when only the path matched, the first such resource: a 405),
and its template is rebuilt from ``get_info()`` (``path``, ``formatter``, a static
``prefix`` plus ``/{filename}``).

    python benchmarks/label_check_aiohttp.py                # the installed aiohttp's sdist
    python benchmarks/label_check_aiohttp.py --sdist PATH   # an sdist already on disk

Exit status 1 when any label differs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import itertools
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from loopwatch._context import current_labels
from loopwatch.adapters.aiohttp import instrument

UNMATCHED = "__unmatched__"
NOWHERE = "/zz-loopwatch-no-such-route"
STANDARD = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
SAMPLES = ("1", "x", "abc", "a.txt", "2024", "a-b", "x/y")
TIMEOUT = aiohttp.ClientTimeout(total=3)


class _Captured(Exception):
    def __init__(self, app: web.Application) -> None:
        super().__init__("captured")
        self.app = app


# -- collecting the example apps ------------------------------------------------------------


def sdist_of(version: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
         "--no-deps", f"aiohttp=={version}", "-d", str(into)],
        check=True,
    )
    return next(into.glob("aiohttp-*.tar.gz"))


def examples_in(sdist: Path, into: Path) -> list[Path]:
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/examples/" in m.name]
        tar.extractall(into, members=members, filter="data")
    return sorted(into.glob("*/examples/*.py"))


def apps_of(path: Path) -> list[web.Application]:
    """The apps one example builds, found without serving them on its own port."""
    handed: list[Any] = []
    real_run_app = web.run_app

    def run_app(app: Any, *args: Any, **kwargs: Any) -> None:
        handed.append(app)
        if asyncio.iscoroutine(app):
            app.close()

    web.run_app = run_app  # type: ignore[assignment]
    try:
        spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
        if spec is None or spec.loader is None:
            return []
        module = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(io.StringIO()):
            spec.loader.exec_module(module)
    except Exception as exc:
        print(f"  {path.name}: not imported ({type(exc).__name__}: {exc})")
        return []
    finally:
        web.run_app = real_run_app  # type: ignore[assignment]
    found = [a for a in handed if isinstance(a, web.Application)]
    if not found:
        found = _from_factories(module)
    return found


def _from_factories(module: Any) -> list[web.Application]:
    init = getattr(module, "init", None)
    if callable(init):
        try:
            # cli_app.py's init(argv) takes the command line: one positional message.
            app = init() if not _params(init) else init(["loopwatch"])
            if asyncio.iscoroutine(app):
                app = asyncio.run(app)
            if isinstance(app, web.Application):
                return [app]
        except (Exception, SystemExit) as exc:
            print(f"  {module.__name__}: init() failed ({type(exc).__name__}: {exc})")
    server = getattr(module, "run_test_server", None)
    if callable(server) and hasattr(module, "web"):

        class Capture:
            def __init__(self, app: web.Application, *args: Any, **kwargs: Any) -> None:
                raise _Captured(app)

        real = module.web
        module.web = type("web", (), {**vars(web), "AppRunner": Capture})
        try:
            asyncio.run(server())
        except _Captured as captured:
            return [captured.app]
        except Exception as exc:
            print(f"  {module.__name__}: run_test_server() failed ({exc!r})")
        finally:
            module.web = real
    return []


def _params(func: Any) -> list[str]:
    import inspect

    return [
        p.name for p in inspect.signature(func).parameters.values()
        if p.default is inspect.Parameter.empty
    ]


# -- the independent expectation ------------------------------------------------------------


@dataclass
class Leaf:
    resource: Any
    template: str
    regex: re.Pattern[str] | None
    methods: set[str]


def leaves(app: web.Application, depth: int = 0) -> Iterator[Leaf]:
    """The app's leaf resources in routing order, sub-applications opened in place."""
    for resource in app.router.resources():
        info = resource.get_info()
        if isinstance(info.get("app"), web.Application):
            if depth < 16:
                yield from leaves(info["app"], depth + 1)
            continue
        methods = {route.method for route in resource}
        if "path" in info:
            yield Leaf(resource, info["path"], re.compile(re.escape(info["path"])), methods)
        elif "formatter" in info:
            yield Leaf(resource, info["formatter"], info["pattern"], methods)
        elif "prefix" in info:
            prefix = info["prefix"].rstrip("/")
            regex = re.compile(re.escape(prefix) + r"/.+")
            yield Leaf(resource, prefix + "/{filename}", regex, methods)


def expected(app: web.Application, method: str, path: str) -> str:
    path_match: Leaf | None = None
    for leaf in leaves(app):
        if leaf.regex is None or not leaf.regex.fullmatch(path):
            continue
        if method in leaf.methods or "*" in leaf.methods:
            return f"{_verb(method)} {leaf.template}"
        if path_match is None:
            path_match = leaf
    if path_match is not None:
        return f"{_verb(method)} {path_match.template}"
    return UNMATCHED


def _verb(method: str) -> str:
    return method if method in STANDARD else "OTHER"


def sample_path(leaf: Leaf) -> str | None:
    """A concrete path the leaf's pattern takes (placeholders filled with sample values)."""
    names = re.findall(r"\{([^}:]+)(?::[^}]*)?\}", leaf.template)
    if not names:
        return leaf.template
    if leaf.template.endswith("/{filename}") and len(names) == 1:
        return leaf.template.replace("{filename}", "loopwatch-missing.txt")
    for values in itertools.product(SAMPLES, repeat=len(names)):
        path = leaf.template
        for name, value in zip(names, values, strict=True):
            path = re.sub(r"\{" + re.escape(name) + r"(?::[^}]*)?\}", value, path, count=1)
        if leaf.regex is not None and leaf.regex.fullmatch(path):
            return path
    return None


# -- driving the app ------------------------------------------------------------------------


@dataclass
class Result:
    requests: int = 0
    exact: int = 0
    routes: int = 0
    unreachable: int = 0


async def check(app: web.Application, result: Result, name: str) -> None:
    seen: list[str] = []

    @web.middleware
    async def recorder(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(current_labels().handler)
        return await handler(request)

    instrument(app, metrics_path=None)
    app.middlewares.insert(1, recorder)  # right inside loopwatch's: before any of the app's
    targets: list[tuple[str, str]] = [("GET", NOWHERE)]
    for leaf in list(leaves(app)):
        path = sample_path(leaf)
        result.routes += 1
        if path is None:
            result.unreachable += 1
            continue
        methods = sorted(m for m in leaf.methods if m != "*") or ["GET", "POST"]
        targets += [(m, path) for m in methods]
        missing = next((m for m in ("DELETE", "PATCH", "PUT") if m not in leaf.methods), None)
        if missing is not None and "*" not in leaf.methods:
            targets.append((missing, path))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for method, path in targets:
                seen.clear()
                want = expected(app, method, path)
                with contextlib.suppress(Exception):
                    async with session.request(
                        method, f"http://127.0.0.1:{port}{path}", allow_redirects=False
                    ) as response:
                        await response.read()
                result.requests += 1
                if seen and seen[0] == want:
                    result.exact += 1
                else:
                    print(f"  {name}: {method} {path}: got {seen[:1]}, expected {want!r}")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", type=Path, help="an aiohttp sdist already on disk")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the examples' own logging and loopwatch's notes
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or sdist_of(aiohttp.__version__, Path(tmp))
        examples = examples_in(sdist, Path(tmp))
        result = Result()
        apps = 0
        for path in examples:
            for app in apps_of(path):
                apps += 1
                asyncio.run(check(app, result, path.name))
    share = 100.0 * result.exact / result.requests if result.requests else 0.0
    print(
        f"aiohttp {aiohttp.__version__}: {len(examples)} example files, {apps} apps, "
        f"{result.routes} resources ({result.unreachable} without a sample path), "
        f"{result.requests} requests, {result.exact} exact labels ({share:.1f} %)"
    )
    return 0 if result.exact == result.requests and result.requests else 1


if __name__ == "__main__":
    sys.exit(main())
