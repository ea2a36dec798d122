"""A FastAPI app watched by loopwatch.

Run it from the repository root and poke it::

    uvicorn examples.fastapi_app:app
    curl localhost:8000/reports/7    # a sync helper calls asyncio.run(): answered, logged
    curl localhost:8000/slow         # blocks the event loop for 250 ms: logged
    curl localhost:8000/health       # an ordinary route
    curl localhost:8000/metrics      # loopwatch_reentry_total{handler="GET /reports/{report_id}"}

Each incident is logged once with the line in ``render_report`` or ``slow`` that caused it
and the route it happened in.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, FastAPI

from loopwatch.adapters.fastapi import instrument

app = FastAPI(title="loopwatch example")
api = APIRouter(prefix="/api")


async def fetch_report(report_id: int) -> dict[str, int]:
    await asyncio.sleep(0.01)
    return {"report_id": report_id, "rows": report_id * 10}


def render_report(report_id: int) -> dict[str, int]:
    """A sync helper as many SDKs have: it runs its own event loop."""
    return asyncio.run(fetch_report(report_id))


@app.get("/reports/{report_id}")
async def report(report_id: int) -> dict[str, int]:
    # Without loopwatch: RuntimeError "asyncio.run() cannot be called from a running
    # event loop", a 500. With it: the coroutine runs on a worker thread and this answers.
    return render_report(report_id)


@app.get("/slow")
async def slow() -> dict[str, str]:
    time.sleep(0.25)  # blocking call inside async def: the whole server stalls
    return {"status": "done, late"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.get("/users/{user_id}")
async def user(user_id: int) -> dict[str, int]:
    return {"user_id": user_id, "rows": render_report(user_id)["rows"]}  # GET /api/users/{user_id}


app.include_router(api)
instrument(app, handler_metrics=True)
