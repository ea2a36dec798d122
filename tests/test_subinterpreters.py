"""Subinterpreters beside a watched loop: loopwatch must never be what kills the process.

On CPython 3.12+ reading another thread's stack (``sys._current_frames()``) while
subinterpreters run code corrupts the heap and aborts the process. The watchdog used to do
that on every poll of a uvloop; now it tells an idle C loop by its thread's CPU clock and
reads no stack at all once subinterpreters exist. Each test runs in its own process: the
crash is an abort, and "subinterpreters have existed" is remembered for the process's life.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import uvloop

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parent.parent
# The module that runs code in subinterpreters: 3.13+, then 3.12's private one.
INTERPRETERS = next(
    (name for name in ("_interpreters", "_xxsubinterpreters") if importlib.util.find_spec(name)),
    None,
)
needs_subinterpreters = pytest.mark.skipif(
    INTERPRETERS is None or sys.version_info < (3, 12),
    reason="no subinterpreters with their own GIL on this Python (3.12+)",
)


def has_to_interpreter() -> bool:
    if sys.version_info < (3, 13):
        return False  # anyio runs subinterpreters on 3.13+ only
    try:
        import anyio.to_interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def run_python(tmp_path: Path, script: str, *, watched: bool, timeout: float = 240) -> str:
    """Run ``script`` in a new Python (under ``loopwatch run`` when ``watched``); its stdout.

    Fails with the process's output when it did not exit 0 (an abort is -6, or 134).
    """
    path = tmp_path / "main.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(tmp_path), env.get("PYTHONPATH", "")) if p
    )
    prefix = [sys.executable, "-m", "loopwatch", "run", "--"] if watched else []
    done = subprocess.run(
        [*prefix, sys.executable, str(path)], capture_output=True, text=True, env=env,
        timeout=timeout, cwd=tmp_path,
    )
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout


@needs_subinterpreters
@pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
@pytest.mark.skipif(
    not has_to_interpreter(), reason="no anyio to_interpreter (anyio 4.8+ on Python 3.13+)"
)
def test_anyio_to_interpreter_on_uvloop_survives_loopwatch_run(tmp_path: Path) -> None:
    # The reported crash: 3 runs of 3 aborted ("free(): invalid pointer") under `loopwatch
    # run`, none bare. The function must be importable in the subinterpreter: a module.
    (tmp_path / "work.py").write_text("def total():\n    return sum(range(1000))\n")
    out = run_python(tmp_path, """
        import anyio
        import anyio.to_interpreter

        from loopwatch import _monitor
        from work import total

        async def main() -> None:
            for _ in range(10):
                assert await anyio.to_interpreter.run_sync(total) == 499500

        for _ in range(20):
            anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
        print("survived", _monitor.current() is not None)
    """, watched=True)
    assert out.split() == ["survived", "True"]


@needs_subinterpreters
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_block_beside_running_subinterpreters_is_reported_without_a_stack(
    tmp_path: Path, loop: str
) -> None:
    # A real block while a subinterpreter runs code on another thread: the process lives, the
    # block is reported (timed, attributed, caused), and its incident says why no stack.
    if loop == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    out = run_python(tmp_path, f"""
        import asyncio
        import json
        import threading
        import time

        import {INTERPRETERS} as interpreters

        import loopwatch
        from loopwatch.testing import capture_incidents

        stop = threading.Event()
        code = "sum(i * i for i in range(20000))"

        def busy_subinterpreter() -> None:
            try:
                interp = interpreters.create(isolated=True)
            except TypeError:  # 3.13+: isolated (own GIL, own allocator) is the default
                interp = interpreters.create()
            while not stop.is_set():
                interpreters.run_string(interp, code)
            interpreters.destroy(interp)

        worker = threading.Thread(target=busy_subinterpreter)
        worker.start()
        time.sleep(0.2)

        async def main() -> None:
            await asyncio.sleep(0.05)
            with loopwatch.handler_context("starlette", "GET /beside"):
                time.sleep(0.4)
            await asyncio.sleep(0.2)

        def new_loop():
            if {loop!r} == "uvloop":
                import uvloop
                return uvloop.new_event_loop()
            return asyncio.new_event_loop()

        loopwatch.install()
        with capture_incidents() as seen:
            the_loop = new_loop()
            the_loop.run_until_complete(main())
            the_loop.close()
        stop.set()
        worker.join()
        print(json.dumps([
            {{"stack": [str(f) for f in i.stack], "detail": i.detail, "handler": i.handler,
              "duration": i.duration, "hint": i.hint}}
            for i in seen if i.kind == "blocked_loop"
        ]))
    """, watched=False)
    (incident,) = json.loads(out)
    assert incident["stack"] == []
    assert incident["detail"]["stack"].startswith("not read: subinterpreters run")
    assert "(The stack was not read: subinterpreters run" in incident["hint"]
    assert incident["detail"]["cause"] == "blocking_call"
    assert incident["handler"] == "GET /beside"
    assert 0.3 <= incident["duration"] <= 0.6


@needs_subinterpreters
def test_stacks_unreadable_from_the_first_subinterpreter_on(tmp_path: Path) -> None:
    # Readable before any subinterpreter; not once one exists, nor after it is gone (a pool
    # of interpreters refilling must never meet a stack read).
    out = run_python(tmp_path, f"""
        import json

        import {INTERPRETERS} as interpreters

        from loopwatch._compat import cpython

        answers = [cpython.frames_unreadable()]
        interp = interpreters.create()
        answers.append(cpython.frames_unreadable())
        interpreters.destroy(interp)
        answers.append(cpython.frames_unreadable())
        try:
            cpython.thread_frame(0)
        except cpython.UnreadableFrames as exc:
            answers.append(str(exc))
        print(json.dumps(answers))
    """, watched=False)
    before, during, after, raised = json.loads(out)
    assert before == ""
    assert during.startswith("not read: subinterpreters run") and after == during
    assert raised == during


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ has own-GIL subinterpreters")
def test_stacks_stay_readable_where_interpreters_share_one_gil() -> None:
    from loopwatch._compat import cpython

    assert not cpython.FRAMES_UNSAFE_WITH_SUBINTERPRETERS
    assert cpython.frames_unreadable() == ""
