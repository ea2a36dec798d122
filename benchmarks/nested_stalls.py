"""How long a nested call that needs the outer loop stalls that loop (services).

Each case runs inside a running loop (stdlib asyncio, then uvloop) with loopwatch's service
default: a coroutine that needs the outer loop is given to ``asyncio.run``. Prints, per
case and loop, how long the outer loop was stalled and how the call ended.

Where loopwatch has proof that the call waits for the stalled loop (a Task or Future of
that loop, ``asyncio.wait`` of its tasks) the call fails at once or within a fraction of a
second. Where it has none (a Queue or Event the stalled loop would feed: from the worker's
side they look exactly like a future another thread completes, which must not be cut
short) ``offload_timeout`` bounds it: set to 5 s here instead of the default 30 s. The last
case is such a call that works: a plain thread completes it after 2 s.

Run: ``python benchmarks/nested_stalls.py``
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import loopwatch

Case = Callable[[], Awaitable[object]]


async def task_of_the_running_loop() -> object:
    task = asyncio.ensure_future(asyncio.sleep(0.05, "done"))
    try:
        return asyncio.get_running_loop().run_until_complete(task)
    finally:
        await task


async def awaits_a_task_of_the_running_loop() -> object:
    task = asyncio.ensure_future(asyncio.sleep(0.05, "done"))

    async def waits() -> object:
        return await task

    try:
        return asyncio.run(waits())
    finally:
        await task


async def queue_fed_by_the_running_loop() -> object:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def feed() -> None:
        await asyncio.sleep(0.05)
        queue.put_nowait(1)

    feeder = asyncio.ensure_future(feed())
    try:
        return asyncio.run(queue.get())
    finally:
        await feeder


async def event_set_by_the_running_loop() -> object:
    event = asyncio.Event()
    setter = asyncio.get_running_loop().call_later(0.05, event.set)
    try:
        return asyncio.run(event.wait())
    finally:
        setter.cancel()


async def waits_for_tasks_of_the_running_loop() -> object:
    task = asyncio.ensure_future(asyncio.sleep(0.05, "done"))
    try:
        return asyncio.run(asyncio.wait([task]))
    finally:
        await task


async def completed_by_another_thread() -> object:
    async def bridge() -> object:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()

        def io_thread() -> None:
            time.sleep(2.0)
            loop.call_soon_threadsafe(future.set_result, "done")

        threading.Thread(target=io_thread, daemon=True).start()
        return await future

    return asyncio.run(bridge())


CASES: dict[str, Case] = {
    "Task of the running loop to run_until_complete": task_of_the_running_loop,
    "asyncio.run awaiting a Task of the running loop": awaits_a_task_of_the_running_loop,
    "asyncio.run on asyncio.wait of the running loop's tasks": waits_for_tasks_of_the_running_loop,
    "asyncio.run on a Queue fed by the running loop": queue_fed_by_the_running_loop,
    "asyncio.run on an Event set by the running loop": event_set_by_the_running_loop,
    "asyncio.run on a future another thread completes": completed_by_another_thread,
}


def measure(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> dict[str, tuple[float, str]]:
    out: dict[str, tuple[float, str]] = {}
    for name, case in CASES.items():

        async def one(case: Case = case) -> tuple[float, str]:
            started = time.perf_counter()
            try:
                await case()
                outcome = "returned"
            except loopwatch.LoopwatchError:
                outcome = "LoopwatchError"
            return time.perf_counter() - started, outcome

        loop = new_loop()
        try:
            out[name] = loop.run_until_complete(one())
        finally:
            loop.close()
    return out


def main() -> None:
    logging.getLogger("loopwatch").setLevel(logging.ERROR)  # the incidents are not the point
    loopwatch.install(offload_timeout=5)
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop

        loops["uvloop"] = uvloop.new_event_loop
    except ImportError:
        pass
    worst = 0.0
    for loop_name, factory in loops.items():
        for name, (seconds, outcome) in measure(factory).items():
            worst = max(worst, seconds)
            print(f"{loop_name:8} {name:56} {outcome:15} stalled {seconds:.2f}s")
    print(f"worst stall: {worst:.2f}s")
    loopwatch.uninstall()


if __name__ == "__main__":
    main()
