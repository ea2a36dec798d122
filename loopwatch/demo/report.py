"""What the demo shows: every request's outcome, the incidents, the metrics."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import linecache
import os
import textwrap
from collections.abc import Iterator
from typing import Any

from .._frames import is_user_file
from .._incidents import Incident
from .plan import _HAZARD_OF_KIND, HAZARDS, ROUTES, Client, Outcome, Route

__all__ = ["Report", "render_text", "scrape"]

# -- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """Everything the demo shows, in a form both the text and the JSON output use."""

    url: str
    app_file: str
    loop: str
    versions: dict[str, str]
    outcomes: list[Outcome]
    seconds: float
    incidents: list[Incident]
    metrics: list[str]
    absent: dict[str, str]  # hazard -> module that is missing
    log_lines: int | None

    @property
    def caught(self) -> dict[str, list[Incident]]:
        out: dict[str, list[Incident]] = {hazard: [] for hazard in HAZARDS}
        for incident in self.incidents:
            hazard = _HAZARD_OF_KIND.get(incident.kind)
            if hazard in out:
                out[hazard].append(incident)
        return out

    @property
    def signals(self) -> dict[str, list[str]]:
        """Per hazard, the scraped non-zero series that show it (a state, not an event)."""
        out: dict[str, list[str]] = {hazard: [] for hazard in HAZARDS}
        for route in ROUTES:
            handler = f'handler="{route.handler}"'
            for line in self.metrics:
                name = line.split("{", 1)[0]
                if name in route.metrics and handler in line and route.hazard in out:
                    out[route.hazard].append(line)
        return out

    def evidence(self) -> dict[str, float]:
        """Per hazard, how often it was seen: incidents counted, or the series' values."""
        caught, signals = self.caught, self.signals
        out: dict[str, float] = {}
        for hazard in HAZARDS:
            total = float(sum(i.count for i in caught[hazard]))
            for line in signals[hazard]:
                with contextlib.suppress(ValueError):
                    total += float(line.rsplit(" ", 1)[1])
            out[hazard] = total
        return out

    @property
    def failed_requests(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    @property
    def missed(self) -> list[str]:
        """Hazards this build watches that the run did not catch."""
        seen = self.evidence()
        return [h for h in HAZARDS if h not in self.absent and not seen[h]]

    @property
    def ok(self) -> bool:
        return not self.failed_requests and not self.missed

    def by_route(self) -> dict[Route, collections.Counter[str]]:
        table: dict[Route, collections.Counter[str]] = {
            route: collections.Counter() for route in ROUTES
        }
        for outcome in self.outcomes:
            key = str(outcome.status) if outcome.status is not None else "no answer"
            table[outcome.route][key] += 1
        return table

    def as_dict(self) -> dict[str, Any]:
        seen = self.evidence()
        return {
            "ok": self.ok,
            "url": self.url,
            "app_file": self.app_file,
            "loop": self.loop,
            "versions": self.versions,
            "requests": {
                "sent": len(self.outcomes),
                "answered": len(self.outcomes) - len(self.failed_requests),
                "seconds": round(self.seconds, 3),
                "by_route": {
                    route.handler: {"hazard": route.hazard or None, "status": dict(counts)}
                    for route, counts in self.by_route().items()
                },
                "errors": sorted({o.error for o in self.outcomes if o.error}),
            },
            "hazards": {
                hazard: {
                    "what": what,
                    "caught": bool(seen[hazard]),
                    "count": seen[hazard],
                    "monitor": module,
                    "monitor_present": hazard not in self.absent,
                }
                for hazard, (what, module) in HAZARDS.items()
            },
            "incidents": [incident.as_dict() for incident in self.incidents],
            "metrics": self.metrics,
        }


def scrape(client: Client, path: str = "/metrics") -> list[str]:
    """The non-zero ``loopwatch_`` samples of ``/metrics``, without buckets and ``_created``."""
    try:
        status, body = client.get(path)
    except (OSError, http.client.HTTPException) as exc:
        return [f"# could not scrape {path}: {exc}"]
    if status != 200:
        return [f"# {path} answered {status}"]
    lines = []
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("loopwatch_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith(("_bucket", "_created")):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if value != 0:
            lines.append(line)
    return lines


def _hazard_order(incident: Incident) -> tuple[str, int]:
    return (_HAZARD_OF_KIND.get(incident.kind, "H9"), -incident.count)


def render_text(report: Report) -> str:
    """The human report."""
    out: list[str] = []
    add = out.append
    versions = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    add(f"loopwatch demo: FastAPI app under uvicorn at {report.url} ({report.loop})")
    add(f"  {versions}")
    add(f"  app: {report.app_file}")
    add("       (a copy of loopwatch/demo/service.py, run from outside the package so its lines")
    add("        count as your code; the line numbers match the original)")
    add("")
    failed = report.failed_requests
    answered = len(report.outcomes) - len(failed)
    add(f"Requests: {len(report.outcomes)} sent, {answered} answered with 200 "
        f"in {report.seconds:.1f} s")
    for route, counts in report.by_route().items():
        status = ", ".join(f"{n} x {code}" for code, n in sorted(counts.items()))
        add(f"  {route.hazard or '  '}  {route.handler:<38} {status}")
    for error in sorted({o.error for o in failed if o.error}):
        add(f"  error: {error}")
    add("")
    add("Incidents, grouped by fingerprint (kind, api, user line):")
    if not report.incidents:
        add("  none")
    for incident in sorted(report.incidents, key=_hazard_order):
        out.extend(_render_incident(incident, report.app_file))
    add("")
    add("Hazards:")
    seen, signals = report.evidence(), report.signals
    for hazard, (what, module) in HAZARDS.items():
        if seen[hazard] and signals[hazard] and not report.caught[hazard]:
            add(f"  {hazard} caught ({seen[hazard]:g} now): {what}")
            out.extend(f"     {line}" for line in signals[hazard])
        elif seen[hazard]:
            add(f"  {hazard} caught ({seen[hazard]:g}x): {what}")
        elif hazard in report.absent:
            add(f"  {hazard} NOT WATCHED: {what}")
            add(f"     ({module} is not part of this build)")
        else:
            add(f"  {hazard} MISSED: {what}")
    add("")
    add("Metrics from /metrics (loopwatch_ series that are not zero; histogram buckets left out):")
    out.extend(f"  {line}" for line in report.metrics or ["none"])
    if report.log_lines is not None:
        add("")
        add(f"loopwatch logged {report.log_lines} line(s) on the 'loopwatch' logger "
            "(repeats folded per minute); --verbose shows them.")
    add("")
    if report.ok:
        watched = " watched by this build" if report.absent else ""
        add(f"Result: every request was answered and every hazard{watched} was caught.")
    else:
        problems = []
        if failed:
            problems.append(f"{len(failed)} request(s) not answered with 200")
        missing = report.missed
        if missing:
            problems.append(f"not caught: {', '.join(missing)}")
        add(f"Result: FAILED: {'; '.join(problems)}.")
    return "\n".join(out) + "\n"


def _render_incident(incident: Incident, app_file: str = "") -> Iterator[str]:
    hazard = _HAZARD_OF_KIND.get(incident.kind, "  ")
    action = f"[{incident.action}]" if incident.action else ""
    head = " ".join(p for p in (incident.kind, incident.api, action) if p)
    yield f"  {hazard}  {head}  x{incident.count}"

    def row(label: str, text: str) -> str:
        return f"      {label:<14} {text}".rstrip()

    yield row("handler", f"{incident.handler}  (framework {incident.framework})")
    task = f"task {incident.task}, " if incident.task else ""
    yield row("where", f"{task}thread {incident.thread}, loop {incident.loop}")
    site = incident.site
    if site is None:
        yield row("line", "(no frame of your code on the stack)")
    else:
        yield row("line", f"{site.file}:{site.line} in {site.function}")
        code = linecache.getline(site.file, site.line).strip()
        if code:
            yield row("", f"{site.line} | {code}")
    if incident.duration is not None:
        yield row("duration", f"{incident.duration * 1000:.1f} ms (the latest one)")
    for key, value in sorted(incident.detail.items()):
        if app_file:
            value = value.replace(app_file, os.path.basename(app_file))
        lines = [line for part in value.split("; ") for line in textwrap.wrap(part, 72) or [""]]
        for i, line in enumerate(lines):
            yield row(key if i == 0 else "", line)
    for i, line in enumerate(textwrap.wrap(incident.hint, width=72)):
        yield row("hint" if i == 0 else "", line)
    user = [f for f in incident.stack if is_user_file(f.file)][:4]
    for i, frame in enumerate(user):
        yield row("stack" if i == 0 else "",
                  f"{os.path.basename(frame.file)}:{frame.line} in {frame.function}")
    hidden = len(incident.stack) - len(user)
    if hidden:
        yield row("" if user else "stack", f"(+{hidden} library frame(s) not shown)")
