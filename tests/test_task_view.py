"""The live task view: ``loopwatch.tasks()``, the opt-in HTTP view, ``loopwatch tasks URL``
and ``%loopwatch tasks`` in a real kernel.

Tasks wait on an ``asyncio.Event`` that never fires, inside a labelled handler, on the
stdlib loop and on uvloop; the view must show each with its handler and its await chain
(innermost first, the user's line in it), read on the loop's own thread whether the caller
is that thread or another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import LOOP_KINDS, Gate, run_on, serve_uvicorn, wait_for
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import cli
from loopwatch._taskview import render_text
from loopwatch.adapters.fastapi import instrument

TOKEN = "s3cret"


async def wait_for_pool(never: asyncio.Event) -> None:
    await never.wait()  # the line the view must show


async def nightly(never: asyncio.Event) -> None:
    with loopwatch.handler_context("none", "job:nightly"):
        await wait_for_pool(never)


def functions(info: loopwatch.TaskInfo) -> list[str]:
    return [frame.function.rpartition(".")[2] for frame in info.chain]


def by_name(infos: list[loopwatch.TaskInfo], name: str) -> loopwatch.TaskInfo:
    (found,) = [i for i in infos if i.name == name]
    return found


def test_tasks_shows_handler_and_chain_read_on_the_loops_thread(
    loop_factory: Any, registry: CollectorRegistry
) -> None:
    loopwatch.install(registry=registry)

    async def main() -> tuple[list[loopwatch.TaskInfo], list[loopwatch.TaskInfo], str]:
        never = asyncio.Event()
        task = asyncio.ensure_future(nightly(never))
        task.set_name("nightly-job")
        await asyncio.sleep(0.05)
        here = loopwatch.tasks()  # on the loop's own thread: read directly
        # From another thread: one callback posted to this loop, which is free meanwhile.
        there = await asyncio.get_running_loop().run_in_executor(None, loopwatch.tasks)
        me = asyncio.current_task()
        assert me is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return here, there, me.get_name()

    here, there, me = run_on(loop_factory, main())
    for infos in (here, there):
        job = by_name(infos, "nightly-job")
        assert (job.framework, job.handler) == ("none", "job:nightly")
        assert job.state == "waiting"
        assert job.age_from == "handler" and job.age >= 0.04
        assert functions(job)[0] == "wait"
        assert functions(job).index("wait_for_pool") < functions(job).index("nightly")
        assert job.chain[1].file == __file__
        assert job.coroutine.endswith("nightly")
        assert job.loop.split(".")[0] in ("asyncio", "uvloop")
    assert by_name(here, me).state == "running"
    assert by_name(there, me).state == "waiting"  # it was waiting for the executor


def test_a_loop_of_another_thread_answers_and_a_blocked_one_is_listed_without_chains(
    registry: CollectorRegistry,
) -> None:
    loopwatch.install(registry=registry)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    release = threading.Event()

    async def service() -> None:
        never = asyncio.Event()
        asyncio.ensure_future(nightly(never)).set_name("nightly-job")
        ready.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=loop.run_until_complete, args=(service(),),
                              name="service-loop")
    thread.start()
    try:
        assert ready.wait(5)
        wait_for(lambda: any(i.name == "nightly-job" for i in loopwatch.tasks()))
        job = by_name(loopwatch.tasks(), "nightly-job")
        assert job.thread == "service-loop"
        assert "wait_for_pool" in functions(job)
        # A loop that does not answer in time: its tasks are listed, without chains.
        blocked = threading.Event()
        loop.call_soon_threadsafe(blocked.wait, 5)
        stalled = loopwatch.tasks(timeout=0.2)
        blocked.set()
        assert by_name(stalled, "nightly-job").state == "unknown"
        assert by_name(stalled, "nightly-job").chain == ()
    finally:
        release.set()
        thread.join(5)
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


# -- the HTTP view and `loopwatch tasks URL` --------------------------------------------------


def make_app(registry: CollectorRegistry, gate: Gate, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        never = asyncio.Event()
        gate.loop, gate.event = asyncio.get_running_loop(), never
        gate.started.set()
        await wait_for_pool(never)
        return {"order": order_id}

    instrument(app, registry=registry, **options)
    return app


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_http_view_json_text_token_and_the_cli_tree(
    loop: str, registry: CollectorRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = Gate()
    app = make_app(registry, gate, metrics_token=TOKEN, tasks_endpoint=True, stuck_after=0.3)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve_uvicorn(app, loop) as base:
        caller = threading.Thread(
            target=lambda: httpx.get(f"{base}/orders/7", timeout=30), name="caller"
        )
        caller.start()
        try:
            assert gate.started.wait(5)
            wait_for(lambda: any(i.kind == "stuck_handler" for i in loopwatch.incidents()))
            assert httpx.get(f"{base}/metrics/tasks").status_code == 401
            response = httpx.get(f"{base}/metrics/tasks?format=json", headers=auth)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            items = response.json()["tasks"]
            (request,) = [t for t in items if t["handler"] == "GET /orders/{order_id}"
                          and t["age_from"] == "handler"]
            assert request["framework"] == "fastapi"
            assert request["state"] == "stuck"
            chain = [f["function"].rpartition(".")[2] for f in request["chain"]]
            assert chain[0] == "wait" and "wait_for_pool" in chain and "order" in chain
            by_accept = httpx.get(f"{base}/metrics/tasks",
                                  headers={**auth, "Accept": "application/json"})
            assert by_accept.headers["content-type"] == "application/json"
            text = httpx.get(f"{base}/metrics/tasks", headers=auth)
            assert text.headers["content-type"].startswith("text/plain")
            assert "GET /orders/{order_id} (fastapi): 1 task" in text.text
            assert "wait_for_pool  " in text.text
            # The command line, given the metrics URL.
            assert cli.main(["tasks", f"{base}/metrics", "--token", TOKEN]) == 0
            printed = capsys.readouterr().out
            print(printed)  # shown with -s: the docs' example comes from here
            assert "GET /orders/{order_id} (fastapi): 1 task" in printed
            assert "stuck" in printed and "wait_for_pool" in printed
            assert cli.main(["tasks", f"{base}/metrics"]) == 1
            assert "metrics token" in capsys.readouterr().err
        finally:
            gate.release()
            caller.join(10)


def test_the_http_view_is_absent_by_default(registry: CollectorRegistry) -> None:
    app = make_app(registry, Gate())
    transport = httpx.ASGITransport(app=app)

    async def go() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return ((await client.get("/metrics/tasks")).status_code,
                    (await client.get("/metrics")).status_code)

    assert asyncio.run(go()) == (404, 200)
    assert loopwatch.install().config.tasks_endpoint is False


def test_the_environment_turns_the_http_view_on(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPWATCH_TASKS_ENDPOINT", "1")
    app = make_app(registry, Gate(), metrics_token=TOKEN)
    transport = httpx.ASGITransport(app=app)

    async def go() -> tuple[int, int, str]:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            denied = await client.get("/metrics/tasks")
            allowed = await client.get("/metrics/tasks?format=json",
                                       headers={"Authorization": f"Bearer {TOKEN}"})
            return denied.status_code, allowed.status_code, allowed.text

    denied, allowed, body = asyncio.run(go())
    assert (denied, allowed) == (401, 200)
    assert isinstance(json.loads(body)["tasks"], list)


def test_the_standalone_metrics_server_serves_the_view_when_asked(
    registry: CollectorRegistry,
) -> None:
    from helpers import free_port

    port = free_port()
    loopwatch.install(registry=registry, metrics_port=port)
    url = f"http://127.0.0.1:{port}"
    # Off by default: /tasks is the exposition's (any path is), never the view.
    assert "tasks" not in httpx.get(f"{url}/tasks").text.split("\n", 1)[0]
    loopwatch.install(tasks_endpoint=True)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    stop = asyncio.Event()

    async def service() -> None:
        never = asyncio.Event()
        job = asyncio.ensure_future(nightly(never))
        job.set_name("nightly-job")
        ready.set()
        await stop.wait()
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job

    thread = threading.Thread(target=loop.run_until_complete, args=(service(),))
    thread.start()
    try:
        assert ready.wait(5)
        response = httpx.get(f"{url}/tasks?format=json")
        assert response.headers["content-type"] == "application/json"
        (job,) = [t for t in response.json()["tasks"] if t["name"] == "nightly-job"]
        assert job["handler"] == "job:nightly"
        assert "job:nightly (none): 1 task" in httpx.get(f"{url}/tasks").text
        assert "loopwatch_info" in httpx.get(f"{url}/metrics").text
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()


def test_cli_says_why_when_the_view_is_absent(capsys: pytest.CaptureFixture[str]) -> None:
    app = FastAPI()
    instrument(app, registry=CollectorRegistry())
    with serve_uvicorn(app, "asyncio") as base:
        assert cli.main(["tasks", f"{base}/metrics"]) == 1
    assert "tasks_endpoint=True" in capsys.readouterr().err


def test_render_text_is_a_tree_by_loop_and_handler() -> None:
    frame = {"file": "/srv/app/db.py", "line": 42, "function": "Pool.acquire", "user": True}
    outer = {"file": "/venv/lib/python3.11/site-packages/uvicorn/x.py", "line": 9,
             "function": "run_asgi", "user": False}
    base = {"framework": "fastapi", "age_from": "handler", "loop": "uvloop.Loop",
            "thread": "MainThread", "coroutine": "run_asgi", "chain": [frame, outer]}
    items = [
        {**base, "name": "Task-3", "handler": "GET /orders/{order_id}", "age": 12.5,
         "state": "stuck"},
        {**base, "name": "Task-4", "handler": "GET /orders/{order_id}", "age": 0.2,
         "state": "waiting"},
        {**base, "name": "Task-1", "framework": "none", "handler": "__none__", "age": 99.0,
         "age_from": "first_seen", "state": "waiting", "chain": []},
    ]
    assert render_text(items) == (
        "uvloop.Loop on thread MainThread: 3 tasks\n"
        "├─ GET /orders/{order_id} (fastapi): 2 tasks\n"
        "│  ├─ Task-3 stuck 12.5 s since its handler began  [run_asgi]\n"
        "│  │  ├─ Pool.acquire  /srv/app/db.py:42\n"
        "│  │  └─ … 1 outer frame\n"
        "│  └─ Task-4 waiting 0.2 s since its handler began  [run_asgi]\n"
        "│     ├─ Pool.acquire  /srv/app/db.py:42\n"
        "│     └─ … 1 outer frame\n"
        "└─ __none__ (none): 1 task\n"
        "   └─ Task-1 waiting 1.6 min seen  [run_asgi]\n"
    )
    assert "uvicorn/x.py:9" in render_text(items, full=True)
    assert render_text([]) == "no tasks in any watched loop\n"


# -- %loopwatch tasks --------------------------------------------------------------------------


def test_the_notebook_magic_lists_the_kernels_tasks() -> None:
    from kernel_harness import KernelHarness

    with KernelHarness() as kernel:
        setup = kernel.execute(
            "import asyncio, loopwatch\n"
            "%load_ext loopwatch\n"
            "never = asyncio.Event()\n"
            "async def wait_for_pool():\n"
            "    with loopwatch.handler_context('jupyter', 'cell:fetch'):\n"
            "        await never.wait()\n"
            "job = asyncio.ensure_future(wait_for_pool())\n"
            "job.set_name('fetch-job')\n"
        )
        assert setup.error is None, setup.describe()
        kernel.execute("await asyncio.sleep(0.05)")
        cell = kernel.execute("%loopwatch tasks")
        assert cell.error is None, cell.describe()
        assert "cell:fetch (jupyter): 1 task" in cell.stdout, cell.describe()
        assert "fetch-job waiting" in cell.stdout
        assert "wait_for_pool" in cell.stdout
        kernel.execute("job.cancel()")
