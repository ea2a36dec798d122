"""Real PyPI libraries whose sync API starts an event loop, called from a real IPython kernel.

Each :class:`Case` is what a new user types in a notebook: set-up cells (an app, a client
used in an earlier cell), then a cell whose sync call starts a loop inside the kernel's
running one. :func:`run_case` runs it in a fresh kernel under one :data:`MODES` entry
(nothing, nest_asyncio, nest-asyncio2, or loopwatch with a policy), calls it twice, then
checks that the kernel is still usable (a trivial cell and an interrupted cell).

Everything talks to servers the cell starts itself on 127.0.0.1; nothing else is reached.
Used by ``tests/test_real_libraries.py`` and ``benchmarks/nested_libraries.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
import textwrap
import time

from kernel_harness import CellResult, KernelHarness, KernelTimeout

__all__ = ["CASES", "MODES", "Case", "Outcome", "note_problems", "run_case"]

# Defined in every kernel before a case: a free loopback port, and a thread that waits for
# a server to answer on it, keeps the body, then stops the server the way the case says.
COMMON = textwrap.dedent(
    """
    import asyncio, os, signal, socket, threading, time, urllib.request

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def poke(port, got, stop, path="/", wait=20.0):
        def run():
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                        got.append(r.read().decode())
                    break
                except OSError:
                    time.sleep(0.05)
            if got:
                time.sleep(0.1)
                stop()
        threading.Thread(target=run, daemon=True).start()

    import http.server
    class _Pong(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = b"pong"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    PONG = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pong)
    PONG.daemon_threads = True
    threading.Thread(target=PONG.serve_forever, daemon=True).start()
    PONG_URL = f"http://127.0.0.1:{PONG.server_address[1]}/"
    """
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One library call as a notebook user makes it."""

    name: str
    module: str  # what must be importable for the case to run
    setup: tuple[str, ...]  # cells run once, before the call
    call: str  # prints "RESULT <value>" when the call worked
    expect: str  # the value the call must print
    advice: str = ""  # the library's async API, which a note about this call should name


CASES: tuple[Case, ...] = (
    Case(
        "uvicorn Server.run",
        "uvicorn",
        (
            """
            import uvicorn
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"hello from uvicorn"})
            """,
        ),
        """
        port, got = free_port(), []
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="error", lifespan="off"))
        poke(port, got, lambda: setattr(server, "should_exit", True))
        server.run()
        print("RESULT", got[0] if got else None)
        """,
        "hello from uvicorn",
        "await server.serve()",
    ),
    Case(
        "aiohttp web.run_app",
        "aiohttp",
        (
            """
            from aiohttp import web
            async def hello(request):
                return web.Response(text="hello from aiohttp")
            def graceful():
                raise web.GracefulExit()
            def make_app(loops):
                app = web.Application()
                app.router.add_get("/", hello)
                async def started(app):
                    loops.append(asyncio.get_running_loop())
                app.on_startup.append(started)
                return app
            """,
        ),
        """
        port, got, loops = free_port(), [], []
        poke(port, got, lambda: loops[0].call_soon_threadsafe(graceful))
        web.run_app(make_app(loops), host="127.0.0.1", port=port, print=None)
        print("RESULT", got[0] if got else None)
        """,
        "hello from aiohttp",
        "web.AppRunner",
    ),
    Case(
        "quart app.run (signal handlers)",
        "quart",
        (
            """
            from quart import Quart
            qapp = Quart("nb")
            @qapp.route("/")
            async def index():
                return "hello from quart"
            """,
        ),
        """
        port, got = free_port(), []
        # stopped with Ctrl+C, as in a terminal: Quart's own SIGINT handler must be in place
        poke(port, got, lambda: os.kill(os.getpid(), signal.SIGINT))
        qapp.run(host="127.0.0.1", port=port, use_reloader=False)
        print("RESULT", got[0] if got else None)
        """,
        "hello from quart",
        "await qapp.run_task()",
    ),
    Case(
        "pydantic-ai Agent.run_sync",
        "pydantic_ai",
        (
            """
            from pydantic_ai import Agent
            from pydantic_ai.models.test import TestModel
            agent = Agent(TestModel(custom_output_text="hello from the agent"))
            """,
        ),
        """
        print("RESULT", agent.run_sync("hi").output)
        """,
        "hello from the agent",
        "await agent.run()",
    ),
    Case(
        "asyncclick command()",
        "asyncclick",
        (
            """
            import asyncclick as click
            @click.command()
            @click.option("--name", default="world")
            async def hello_cmd(name):
                await asyncio.sleep(0.01)
                return f"hello {name}"
            """,
        ),
        """
        print("RESULT", hello_cmd(["--name", "cli"], standalone_mode=False))
        """,
        "hello cli",
        "await hello_cmd.main()",
    ),
    Case(
        "httpx AsyncClient from an earlier cell",
        "httpx",
        (
            """
            import httpx
            client = httpx.AsyncClient()
            first = (await client.get(PONG_URL)).text
            def get_sync():
                return asyncio.run(client.get(PONG_URL)).text
            """,
        ),
        """
        got = get_sync()
        after = (await client.get(PONG_URL)).text  # the pool still works on the kernel's loop
        print("RESULT", got, after)
        """,
        "pong pong",
        "await client.get()",
    ),
    Case(
        "aiohttp ClientSession from an earlier cell",
        "aiohttp",
        (
            """
            import aiohttp
            session = aiohttp.ClientSession()
            async def fetch_text(url):
                async with session.get(url) as r:
                    return await r.text()
            first = await fetch_text(PONG_URL)
            def get_sync():
                return asyncio.get_event_loop().run_until_complete(fetch_text(PONG_URL))
            """,
        ),
        """
        got = get_sync()
        after = await fetch_text(PONG_URL)
        print("RESULT", got, after)
        """,
        "pong pong",
        "await fetch_text()",
    ),
    Case(
        "aiosqlite connection from an earlier cell",
        "aiosqlite",
        (
            """
            import aiosqlite
            db = await aiosqlite.connect(":memory:")
            await db.execute("create table t (x int)")
            await db.execute("insert into t values (41)")
            async def answer():
                async with db.execute("select x + 1 from t") as cur:
                    return (await cur.fetchone())[0]
            def answer_sync():
                return asyncio.run(answer())
            """,
        ),
        """
        print("RESULT", answer_sync(), await answer())
        """,
        "42 42",
        "await answer()",
    ),
    Case(
        "SQLAlchemy AsyncEngine from an earlier cell",
        "sqlalchemy",
        (
            """
            from sqlalchemy import text
            from sqlalchemy.ext.asyncio import create_async_engine
            engine = create_async_engine("sqlite+aiosqlite:///:memory:")
            async def one():
                async with engine.connect() as conn:
                    return (await conn.execute(text("select 6 * 7"))).scalar()
            first = await one()
            def one_sync():
                return asyncio.run(one())
            """,
        ),
        """
        print("RESULT", one_sync(), await one())
        """,
        "42 42",
        "await one()",
    ),
)

# mode -> the cell that sets it up in a fresh kernel
MODES: dict[str, str] = {
    "bare": "",
    "nest_asyncio": "import nest_asyncio\nnest_asyncio.apply()",
    "nest_asyncio2": "import nest_asyncio2\nnest_asyncio2.apply()",
    "loopwatch offload": "%load_ext loopwatch\n%loopwatch policy offload",
    "loopwatch reenter": "%load_ext loopwatch\n%loopwatch policy reenter",
    "loopwatch default": "%load_ext loopwatch",
}


@dataclasses.dataclass
class Outcome:
    """What one case did under one mode."""

    case: str
    mode: str
    first: str = ""  # "ok" or what went wrong
    second: str = ""
    usable: str = ""  # "ok" or what went wrong afterwards
    seconds: float = 0.0  # the longest of the two calls, wall time
    notes: list[str] = dataclasses.field(default_factory=list)
    note_problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def works(self) -> bool:
        return self.first == "ok" and self.second == "ok" and self.usable == "ok"

    def cell(self) -> str:
        """A short table cell."""
        if self.works:
            return "works"
        if self.first != "ok":
            return f"fails: {self.first}"
        if self.second != "ok":
            return f"2nd call fails: {self.second}"
        return f"kernel broken: {self.usable}"


def available(case: Case) -> bool:
    """Whether the case's library is installed here."""
    return importlib.util.find_spec(case.module) is not None


def _describe(cell: CellResult, expect: str) -> str:
    if cell.error is not None:
        value = re.sub(r"\s+", " ", cell.error.evalue)[:90]
        return f"{cell.error.ename}: {value}"
    found = re.findall(r"^RESULT (.*)$", cell.stdout, re.M)
    if not found:
        return "no result"
    if found[-1].strip() != expect:
        return f"wrong result {found[-1].strip()!r}"
    return "ok"


def _loopwatch_notes(cell: CellResult) -> list[str]:
    return [t for t in cell.texts() if t.startswith("loopwatch: reentry")]


def note_problems(cell: CellResult, outcome: str, case: Case) -> list[str]:
    """Where the notes a cell showed say something that is not true of the cell."""
    problems = []
    texts = _loopwatch_notes(cell)
    failed = outcome != "ok"
    for text in texts:
        says_failed = "result: failed" in text
        says_done = "result: returned" in text
        if not (says_failed or says_done or "result: stopped by" in text):
            problems.append(f"note does not say whether the call worked: {text!r}")
        if says_done and cell.error is not None and cell.error.ename == "LoopwatchError":
            # loopwatch's own error means the nested call failed: no note may say it returned.
            problems.append(f"note says returned, cell failed: {text!r}")
        if says_failed and not failed and cell.error is None:
            problems.append(f"note says failed, cell worked: {text!r}")
        if "did not fail" in text and failed:
            problems.append(f"note says the call did not fail: {text!r}")
        if "policy reenter" in text and "uvloop" in text:
            problems.append(f"advises reenter on uvloop: {text!r}")
        if "×" in text:
            problems.append(f"one call counted several times: {text!r}")
        if case.advice and "fix:" in text and case.advice not in text:
            problems.append(f"fix does not name {case.advice!r}: {text!r}")
    return problems


def run_case(
    case: Case, mode: str, *, call_timeout: float = 45.0, env: dict[str, str] | None = None
) -> Outcome:
    """Run ``case`` under ``mode`` in a fresh kernel; never raises for a failing case."""
    outcome = Outcome(case.name, mode)
    with KernelHarness(cell_timeout=60.0, env=env) as kernel:
        setup = [COMMON, MODES[mode], *(textwrap.dedent(c) for c in case.setup)]
        for code in setup:
            if not code:
                continue
            cell = kernel.execute(code)
            if cell.error is not None:
                outcome.first = f"set-up failed: {_describe(cell, '')}"
                return outcome
        for attempt in ("first", "second"):
            started = time.perf_counter()
            try:
                cell = kernel.execute(textwrap.dedent(case.call), timeout=call_timeout)
            except KernelTimeout:
                outcome.seconds = max(outcome.seconds, time.perf_counter() - started)
                setattr(outcome, attempt, f"stalled > {call_timeout:g}s")
                outcome.usable = _recover(kernel)
                return outcome
            outcome.seconds = max(outcome.seconds, time.perf_counter() - started)
            result = _describe(cell, case.expect)
            setattr(outcome, attempt, result)
            outcome.notes.extend(_loopwatch_notes(cell))
            outcome.note_problems.extend(note_problems(cell, result, case))
            if attempt == "first" and result != "ok" and mode == "bare":
                break  # the baseline only has to show that it fails
        if not outcome.second:
            outcome.second = "not run"
        outcome.usable = _usable(kernel)
    return outcome


def _usable(kernel: KernelHarness) -> str:
    step = "trivial cell"
    try:
        cell = kernel.execute("print(6 * 7)", timeout=20)
        if cell.stdout.strip() != "42":
            return f"trivial cell: {_describe(cell, '42')}"
        step = "interrupted cell"
        started: list[str] = []

        def stop(text: str) -> None:
            if "sleeping" in text:
                started.append(text)
                kernel.interrupt()

        def stop_again() -> None:
            # The kernel sometimes sleeps on through the first SIGINT, with no loopwatch at
            # all too (kernels that had run a case's server threads, on a loaded machine;
            # likely the signal taken by another thread, which does not wake the sleeping
            # one). A user presses stop again.
            if started:
                print("kernel check: no answer 5 s after stop, pressing it again",
                      file=sys.stderr)
                kernel.interrupt()

        cell = kernel.execute(
            "print('sleeping', flush=True)\ntime.sleep(30)",
            timeout=25, on_stdout=stop, on_quiet=stop_again, quiet_after=5.0,
        )
        # A second press that lands while IPython is still showing the first one's traceback
        # ends the cell with "KeyboardInterrupt" on stderr and no error message (IPython's
        # showtraceback catches it): the cell was interrupted all the same.
        stopped = cell.error is not None and cell.error.ename == "KeyboardInterrupt"
        if not stopped and not (cell.error is None and "KeyboardInterrupt" in cell.stderr):
            return f"interrupt: {_describe(cell, '')}"
        step = "cell after the interrupt"
        cell = kernel.execute("print(await asyncio.sleep(0, 'alive'))", timeout=20)
        if cell.stdout.strip() != "alive":
            return f"after interrupt: {_describe(cell, 'alive')}"
    except KernelTimeout as exc:
        return f"cell stalled: {step} ({str(exc)[-1500:]})"
    return "ok"


def _recover(kernel: KernelHarness) -> str:
    try:
        kernel.interrupt()
        kernel.execute("print(1)", timeout=40)
    except KernelTimeout:
        return "stalled even after an interrupt"
    return _usable(kernel)
