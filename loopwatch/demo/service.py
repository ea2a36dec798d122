"""The service of ``loopwatch demo``: one route per hazard, written the way they appear in apps.

``loopwatch demo`` runs a copy of this file from a temporary directory, so loopwatch treats
it as your code (the user-frame rule skips loopwatch's own files) and every incident points
at a line below. Each hazard is marked ``# H1`` … ``# H9``; the fix is in the hint loopwatch
prints for it (H9, tasks left behind, shows in the ``loopwatch_tasks`` gauge).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI

from loopwatch.adapters.fastapi import instrument


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Kept so synchronous code can "drive the loop" later: the root of H2.
    app.state.loop = asyncio.get_running_loop()
    # A small thread pool for sync routes (the default is 40), so 8 requests queue: H8.
    anyio.to_thread.current_default_thread_limiter().total_tokens = 2
    app.state.watchers = set()
    yield
    for watcher in app.state.watchers:
        watcher.cancel()


# A request running for more than a second counts as stuck here (the default is 10 s).
os.environ.setdefault("LOOPWATCH_STUCK_AFTER", "1")
app = FastAPI(title="loopwatch demo", lifespan=lifespan)
instrument(app, handler_metrics=True)
export_lock = asyncio.Lock()


async def fetch_report(customer_id: int) -> dict[str, object]:
    await asyncio.sleep(0.005)  # the network round trip of a real client
    return {"customer": customer_id, "balance": 42}


def legacy_report_client(customer_id: int) -> dict[str, object]:
    """A synchronous SDK call that runs its async client with ``asyncio.run``."""
    return asyncio.run(fetch_report(customer_id))  # H1: asyncio.run inside a running loop


async def warm_cache() -> int:
    await asyncio.sleep(0.005)
    return 128


async def send_webhook(event: str) -> None:
    await asyncio.sleep(0)
    raise ConnectionError(f"webhook endpoint refused {event!r}")


async def record_audit(event: str) -> None:
    await asyncio.sleep(0)


@app.get("/healthy")
async def healthy() -> dict[str, bool]:
    await asyncio.sleep(0)
    return {"ok": True}


@app.get("/customers/{customer_id}/report")
async def customer_report(customer_id: int) -> dict[str, object]:
    return legacy_report_client(customer_id)


def refresh_cache() -> int:
    # Sync code on a worker thread; driving the server's loop from here is H2.
    entries: int = app.state.loop.run_until_complete(warm_cache())  # H2
    return entries


@app.get("/cache/refresh")
async def refresh_cache_route() -> dict[str, int]:
    # On the loop's own executor, not behind the small thread limiter of the H8 route: a
    # request queued there past stuck_after would be reported as stuck too.
    return {"entries": await asyncio.to_thread(refresh_cache)}


@app.get("/reports/slow")
async def slow_report() -> dict[str, str]:
    time.sleep(0.3)  # H3: a blocking call on the event loop
    return {"report": "done"}


@app.get("/orders/{order_id}/notify")
async def notify_order(order_id: int) -> dict[str, object]:
    # Fire and forget: nobody keeps the task or looks at its exception.
    asyncio.create_task(send_webhook("order.paid"))  # noqa: RUF006  # H4
    return {"order": order_id, "notified": True}


@app.get("/audit")
async def audit() -> dict[str, bool]:
    # The coroutine is created and dropped: the await is missing.
    record_audit("viewed")  # type: ignore[unused-coroutine]  # H5
    return {"audited": True}


@app.get("/exports/latest")
async def latest_export() -> dict[str, str]:
    # No timeout: a request waits as long as the one before it holds the lock.
    async with export_lock:  # H7: stuck on a lock held by another request
        await asyncio.sleep(2.0)  # building the export holds the lock for 2 s
    return {"export": "ready"}


@app.get("/invoices/{invoice_id}/pdf")
def invoice_pdf(invoice_id: int) -> dict[str, object]:
    # A plain def route runs in the thread pool; with 2 threads the rest wait their turn.
    time.sleep(0.25)  # H8: slow sync work holding one of the pool's threads
    return {"invoice": invoice_id, "pages": 3}


async def poll_price(symbol: int) -> None:
    price_changed = asyncio.Event()  # a feed that never sends: the task waits forever
    await price_changed.wait()


@app.get("/prices/{symbol}/watch")
async def watch_price(symbol: int) -> dict[str, object]:
    # Started and kept, never stopped: the task outlives the request.
    watcher = asyncio.create_task(poll_price(symbol))  # H9: a task left behind
    app.state.watchers.add(watcher)
    return {"watching": symbol}
