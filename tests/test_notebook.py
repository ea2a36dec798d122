"""``%load_ext loopwatch`` in a real IPython kernel, and the example notebook.

Each test starts its own ipykernel (see ``kernel_harness``) and runs cells the way a
notebook does. The kernel runs with warnings turned into errors, and every cell's stderr
must stay empty: a warning, a "never awaited" message or a log line would show there.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_harness import CellResult, KernelHarness

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"

PRELUDE = textwrap.dedent(
    """
    import asyncio, contextvars, warnings
    warnings.simplefilter("error")
    request_id = contextvars.ContextVar("request_id", default="unset")

    async def fetch(value="payload", delay=0.01):
        await asyncio.sleep(delay)
        return value

    def sync_sdk_call():
        # a synchronous library that runs its own event loop inside
        return asyncio.run(fetch("from the sdk"))
    """
)

RUN = "asyncio.run(fetch())"
RUN_UNTIL_COMPLETE = "print(asyncio.get_event_loop().run_until_complete(fetch('ruc')))"


@pytest.fixture
def kernel() -> Iterator[KernelHarness]:
    with KernelHarness() as harness:
        ok(harness.execute(PRELUDE))
        yield harness


def ok(cell: CellResult) -> CellResult:
    """The cell ran without error and wrote nothing to stderr."""
    assert cell.error is None and cell.status == "ok", cell.describe()
    assert cell.stderr == "", cell.describe()
    return cell


def notes(cell: CellResult) -> list[str]:
    """The text of the re-entry notes a cell displayed.

    Other incidents (a blocked-loop note when a slow machine stalls an offloaded call past
    the threshold) may show too; they are not what these tests are about.
    """
    return [text for text in cell.texts() if text.startswith("loopwatch: reentry")]


def assert_note(cell: CellResult, *fragments: str) -> None:
    texts = notes(cell)
    assert len(texts) == 1, cell.describe()
    for fragment in fragments:
        assert fragment in texts[0], cell.describe()
    html = [h for h in cell.htmls() if "loopwatch-note" in h and "· reentry" in h]
    assert len(html) == 1, cell.describe()
    assert "hint:" in html[0] and "<b>loopwatch</b>" in html[0]


def test_cells_fail_without_the_extension_and_complete_with_it(kernel: KernelHarness) -> None:
    without = kernel.execute(RUN)
    assert without.error is not None, without.describe()
    assert without.error.ename == "RuntimeError"
    assert "cannot be called from a running event loop" in without.error.evalue
    without = kernel.execute(RUN_UNTIL_COMPLETE)
    assert without.error is not None and without.error.ename == "RuntimeError", without.describe()
    assert "already running" in without.error.evalue

    ok(kernel.execute("%load_ext loopwatch"))

    cell = ok(kernel.execute(RUN))
    assert cell.result_text == "'payload'"
    assert_note(cell, "reentry: asyncio.run()", "In[", "hint:")

    cell = ok(kernel.execute(RUN_UNTIL_COMPLETE))
    assert cell.stdout == "ruc\n"
    assert_note(cell, "reentry: loop.run_until_complete()", "hint:")

    cell = ok(kernel.execute("sync_sdk_call()"))
    assert cell.result_text == "'from the sdk'"
    assert_note(cell, "asyncio.run()")

    # Repeats in one cell update one note instead of adding more.
    cell = ok(kernel.execute("for _ in range(3):\n    asyncio.run(fetch())"))
    assert len(notes(cell)) == 1, cell.describe()
    assert any("×3" in update.get("text/plain", "") for update in cell.updates), cell.describe()


def test_reenter_policy_in_the_kernel(kernel: KernelHarness) -> None:
    ok(kernel.execute("%load_ext loopwatch"))
    cell = ok(kernel.execute("%loopwatch policy reenter"))
    assert cell.stdout == "loopwatch: on_reentry=reenter\n"

    # A task from an earlier cell, awaited by a coroutine given to asyncio.run.
    ok(kernel.execute("earlier = asyncio.ensure_future(fetch('earlier'))"))
    cell = ok(
        kernel.execute(
            "async def uses_earlier():\n    return await earlier\nasyncio.run(uses_earlier())"
        )
    )
    assert cell.result_text == "'earlier'"
    assert_note(cell, "asyncio.run()", "re-entrantly")

    checks = {
        "current_task before, inside, after": """
            outer = asyncio.current_task()
            async def inside():
                return asyncio.current_task()
            nested_task = asyncio.run(inside())
            assert nested_task is not outer and nested_task is not None and nested_task.done()
            assert asyncio.current_task() is outer
            """,
        "two levels deep": """
            async def level2():
                await asyncio.sleep(0)
                return "deep"
            async def level1():
                return asyncio.get_event_loop().run_until_complete(level2())
            assert asyncio.get_event_loop().run_until_complete(level1()) == "deep"
            """,
        "ensure_future passed to a nested run": """
            fut = asyncio.ensure_future(fetch("fut"))
            assert asyncio.get_event_loop().run_until_complete(fut) == "fut"
            """,
        "asyncio.wait of outer tasks": """
            tasks = [asyncio.ensure_future(fetch(i)) for i in range(3)]
            async def wait_all():
                done, pending = await asyncio.wait(tasks)
                return sorted(t.result() for t in done), pending
            assert asyncio.run(wait_all()) == ([0, 1, 2], set())
            """,
        "wait_for timeout": """
            try:
                asyncio.run(asyncio.wait_for(fetch(delay=30), 0.01))
            except asyncio.TimeoutError:
                pass
            else:
                raise AssertionError("no TimeoutError")
            """,
        "two nested runs inside one gather": """
            async def step(n):
                return asyncio.run(fetch(n))
            assert await asyncio.gather(step(1), step(2)) == [1, 2]  # on the kernel's loop
            """,
        "contextvars visible after": """
            async def sets():
                request_id.set("r-42")
            asyncio.run(sets())
            assert request_id.get() == "r-42"
            """,
        "exception inside leaves the loop state": """
            loop, outer = asyncio.get_running_loop(), asyncio.current_task()
            async def fails():
                raise ValueError("inside")
            try:
                asyncio.run(fails())
            except ValueError:
                pass
            assert asyncio._get_running_loop() is loop and asyncio.current_task() is outer
            """,
        "no task left pending": """
            ours = {"fetch", "level1", "level2", "inside", "wait_all", "step", "sets", "fails",
                    "uses_earlier", "_nested_main", "gather"}
            left = [t for t in asyncio.all_tasks()
                    if getattr(t.get_coro(), "__name__", "") in ours]
            assert left == [], left
            """,
    }
    for name, code in checks.items():
        cell = kernel.execute(textwrap.dedent(code))
        assert cell.error is None and cell.stderr == "", f"{name}:\n{cell.describe()}"

    # The kernel keeps working normally afterwards.
    cell = ok(kernel.execute("await fetch('plain await')"))
    assert cell.result_text == "'plain await'"


def test_interrupt_during_a_nested_run_leaves_the_kernel_working(kernel: KernelHarness) -> None:
    ok(kernel.execute("%load_ext loopwatch\n%loopwatch policy reenter"))
    code = textwrap.dedent(
        """
        async def long():
            print("started", flush=True)
            await asyncio.sleep(30)

        loop, outer = asyncio.get_running_loop(), asyncio.current_task()
        try:
            asyncio.run(long())
        except KeyboardInterrupt:
            print("interrupted", asyncio._get_running_loop() is loop,
                  asyncio.current_task() is outer)
        """
    )

    def stop_when_started(text: str) -> None:
        if "started" in text:
            kernel.interrupt()  # the notebook's stop button: SIGINT to the kernel

    cell = ok(kernel.execute(code, on_stdout=stop_when_started))
    assert cell.stdout == "started\ninterrupted True True\n", cell.describe()
    cell = ok(
        kernel.execute(
            "await asyncio.sleep(0)\n"
            "print([t for t in asyncio.all_tasks() if getattr(t.get_coro(), '__name__', '')"
            " in ('long', '_nested_main')])"
        )
    )
    assert cell.stdout == "[]\n", cell.describe()
    assert ok(kernel.execute(RUN)).result_text == "'payload'"


def test_offload_failure_says_so_and_names_the_policy_that_works(kernel: KernelHarness) -> None:
    ok(kernel.execute("%load_ext loopwatch\n%loopwatch policy offload"))
    # still pending when the next cell runs: only the kernel's loop can finish it
    ok(kernel.execute("earlier = asyncio.ensure_future(fetch('earlier', delay=5))"))
    cell = kernel.execute(
        "async def uses_earlier():\n    return await earlier\nasyncio.run(uses_earlier())"
    )
    assert cell.error is not None and cell.error.ename == "LoopwatchError", cell.describe()
    assert "await it instead" in cell.error.evalue
    assert_note(
        cell, "worker thread", "result: failed with LoopwatchError", "%loopwatch policy auto"
    )
    assert "did not fail" not in notes(cell)[0]


def test_default_in_a_kernel_runs_a_task_of_an_earlier_cell_and_a_library_loop(
    kernel: KernelHarness,
) -> None:
    ok(kernel.execute("%load_ext loopwatch"))
    cell = ok(kernel.execute("%loopwatch policy"))
    assert cell.stdout == "loopwatch: on_reentry=auto\n"
    ok(kernel.execute("earlier = asyncio.ensure_future(fetch('earlier'))"))
    cell = ok(
        kernel.execute(
            "async def uses_earlier():\n    return await earlier\nasyncio.run(uses_earlier())"
        )
    )
    assert cell.result_text == "'earlier'"
    assert_note(cell, "re-entrantly", "result: returned")
    # A library's own loop runs on the kernel's (main) thread; the kernel's loop comes back.
    code = textwrap.dedent(
        """
        import signal, threading
        kernel_loop, cell_task = asyncio.get_running_loop(), asyncio.current_task()
        sigint = signal.getsignal(signal.SIGINT)
        own = asyncio.new_event_loop()
        own.add_signal_handler(signal.SIGTERM, lambda: None)  # main thread only
        main = threading.current_thread() is threading.main_thread()
        on_main = own.run_until_complete(fetch(main))
        own.run_until_complete(own.shutdown_asyncgens())
        own.close()
        print(on_main, asyncio.get_running_loop() is kernel_loop,
              asyncio.current_task() is cell_task, signal.getsignal(signal.SIGINT) is sigint)
        """
    )
    cell = ok(kernel.execute(code))
    assert cell.stdout == "True True True True\n", cell.describe()
    texts = notes(cell)
    # The cell ran the library's loop twice, from two lines: two calls, a note for each.
    assert len(texts) == 2 and not any("×" in t for t in texts), cell.describe()
    for text in texts:
        assert "library's own loop on the kernel's thread" in text
        assert "result: returned" in text


def test_uvloop_falls_back_to_offload_and_the_note_says_so(kernel: KernelHarness) -> None:
    pytest.importorskip("uvloop")
    ok(kernel.execute("%load_ext loopwatch\n%loopwatch policy reenter"))
    cell = ok(
        kernel.execute(
            textwrap.dedent(
                """
                import uvloop
                async def on_uvloop():
                    return asyncio.run(fetch("self-contained"))
                uv = uvloop.new_event_loop()
                try:
                    print(uv.run_until_complete(on_uvloop()))
                finally:
                    uv.close()
                """
            )
        )
    )
    assert cell.stdout == "self-contained\n", cell.describe()
    fallbacks = [t for t in notes(cell) if "reenter is not possible on uvloop" in t]
    assert len(fallbacks) == 1, cell.describe()
    assert "worker thread" in fallbacks[0]


def test_magic_lists_incidents_and_switches_policy(kernel: KernelHarness) -> None:
    ok(kernel.execute("%load_ext loopwatch"))
    # Every long cell blocks the kernel's loop by design: no blocked-loop notes in notebooks.
    ok(kernel.execute("import time\ntime.sleep(0.3)"))
    ok(kernel.execute(RUN))
    cell = ok(kernel.execute("import loopwatch\nprint({i.kind for i in loopwatch.incidents()})"))
    assert cell.stdout == "{'reentry'}\n", cell.describe()
    cell = ok(kernel.execute("%loopwatch"))
    listing = [text for text in cell.texts() if text.startswith("loopwatch: on_reentry=")]
    assert len(listing) == 1 and listing[0].startswith("loopwatch: on_reentry=auto"), (
        cell.describe()
    )
    assert "reentry: asyncio.run()" in listing[0]

    bad = kernel.execute("%loopwatch policy sometimes")  # IPython prints UsageError on stderr
    assert bad.status == "error" and "UsageError" in bad.stderr, bad.describe()
    assert "auto, offload, raise, reenter" in bad.stderr

    ok(kernel.execute("%loopwatch policy raise"))
    cell = kernel.execute(RUN)
    assert cell.error is not None and cell.error.ename == "RuntimeError", cell.describe()
    assert cell.stderr == ""
    assert_note(cell, "let the error through")
    assert ok(kernel.execute("%loopwatch policy")).stdout == "loopwatch: on_reentry=raise\n"


def test_unload_undoes_everything(kernel: KernelHarness) -> None:
    ok(
        kernel.execute(
            "import logging\n"
            "_lw_before = (asyncio.run, asyncio.BaseEventLoop.run_until_complete,"
            " list(logging.getLogger('loopwatch').filters))"
        )
    )
    ok(kernel.execute("%load_ext loopwatch\n%loopwatch policy reenter"))
    ok(kernel.execute("for _ in range(2):\n    asyncio.run(fetch())"))
    # Unloading flushes the folded repeat: that line must not land in the cell either.
    ok(kernel.execute("%unload_ext loopwatch"))
    cell = ok(
        kernel.execute(
            "import loopwatch._monitor\n"
            "_lw_after = (asyncio.run, asyncio.BaseEventLoop.run_until_complete,"
            " list(logging.getLogger('loopwatch').filters))\n"
            "print(all(a is b for a, b in zip(_lw_before[:2], _lw_after[:2])),"
            " _lw_after[2] == _lw_before[2], loopwatch._monitor.current())"
        )
    )
    assert cell.stdout == "True True None\n", cell.describe()
    cell = kernel.execute(RUN)
    assert cell.error is not None and cell.error.ename == "RuntimeError", cell.describe()
    assert notes(cell) == []
    gone = kernel.execute("%loopwatch")
    assert gone.status == "error" and "`%loopwatch` not found" in gone.stderr, gone.describe()
    # Loading again works (what %reload_ext does).
    ok(kernel.execute("%load_ext loopwatch"))
    assert ok(kernel.execute(RUN)).result_text == "'payload'"


def test_example_notebook_runs_every_cell_without_error() -> None:
    notebook = json.loads(EXAMPLE.read_text())
    assert notebook["nbformat"] == 4
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code_cells, "the example has no code cells"
    for cell in code_cells:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "outputs not cleared"
    shown: list[str] = []
    with KernelHarness() as harness:
        for source in code_cells:
            code = "".join(source["source"])
            cell = harness.execute(code)
            assert cell.error is None and cell.status == "ok", f"{code}\n{cell.describe()}"
            assert cell.stderr == "", f"{code}\n{cell.describe()}"
            shown.extend(notes(cell))
    # the default in a kernel runs all three cases on the kernel's loop; each cell said so
    assert sum("worker thread" in note for note in shown) == 0, shown
    assert sum("re-entrantly" in note for note in shown) == 3, shown
    assert all("result: returned" in note for note in shown), shown


def test_example_notebook_is_valid_nbformat() -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(str(EXAMPLE), as_version=4)
    nbformat.validate(notebook)
