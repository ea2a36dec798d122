"""A Starlette app watched by loopwatch.

Run it from the repository root and poke it::

    uvicorn examples.starlette_app:app
    curl localhost:8000/reports/7    # a sync helper calls asyncio.run(): answered, logged
    curl localhost:8000/slow         # blocks the event loop for 250 ms: logged
    curl localhost:8000/health       # an ordinary route
    curl localhost:8000/metrics
"""

from __future__ import annotations

import asyncio
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from loopwatch.adapters.starlette import instrument


async def fetch_report(report_id: int) -> dict[str, int]:
    await asyncio.sleep(0.01)
    return {"report_id": report_id, "rows": report_id * 10}


def render_report(report_id: int) -> dict[str, int]:
    """A sync helper as many SDKs have: it runs its own event loop."""
    return asyncio.run(fetch_report(report_id))


async def report(request: Request) -> JSONResponse:
    return JSONResponse(render_report(request.path_params["report_id"]))


async def slow(request: Request) -> JSONResponse:
    time.sleep(0.25)  # blocking call inside async def: the whole server stalls
    return JSONResponse({"status": "done, late"})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[
    Route("/reports/{report_id:int}", report),
    Route("/slow", slow),
    Route("/health", health),
    Mount("/admin", routes=[Route("/reports/{report_id:int}", report)]),  # GET /admin/reports/…
])
instrument(app, handler_metrics=True)
