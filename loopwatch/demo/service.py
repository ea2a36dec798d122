"""The service of ``loopwatch demo``: one route per hazard, written the way they appear in apps.

``loopwatch demo`` runs a copy of this file from a temporary directory, so loopwatch treats
it as your code (the user-frame rule skips loopwatch's own files) and every incident points
at a line below. Each hazard is marked ``# H1`` … ``# H5``; the fix is in the hint loopwatch
prints for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI

from loopwatch.adapters.fastapi import instrument


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Kept so synchronous code can "drive the loop" later: the root of H2.
    app.state.loop = asyncio.get_running_loop()
    yield


app = FastAPI(title="loopwatch demo", lifespan=lifespan)
instrument(app, handler_metrics=True)


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


@app.get("/cache/refresh")
def refresh_cache() -> dict[str, int]:
    # A sync endpoint runs in the threadpool; driving the server's loop from here is H2.
    entries = app.state.loop.run_until_complete(warm_cache())  # H2
    return {"entries": entries}


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
