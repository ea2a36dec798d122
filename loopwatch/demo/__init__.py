"""``loopwatch demo``: an instrumented FastAPI service with every hazard, traffic, and the result.

The service (``service.py``) runs under uvicorn on loopback in a thread of this process; a
small pool of client threads sends a bounded burst of requests (``plan.py``); then the
report (``report.py``) shows every request's outcome, the incidents grouped by fingerprint
(handler, user line, hint, stack) and the ``loopwatch_`` series scraped from ``/metrics``.
The exit status is 0 only when every request was answered and every hazard was caught.

FastAPI and uvicorn are imported only by this package, and only when the demo runs.
"""

from __future__ import annotations

from .plan import HAZARDS, ROUTES, DemoOptions, plan_requests
from .run import run_demo

__all__ = ["HAZARDS", "ROUTES", "DemoOptions", "plan_requests", "run_demo"]
