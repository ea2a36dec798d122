"""Build the loopwatch Grafana dashboard (loopwatch.json, next to this file).

Run ``python build_dashboard.py`` to rewrite loopwatch.json, or ``--check`` to exit 1
when the committed file differs from what this script builds. Standard library only.

Every query filters on the ``$job`` and ``$instance`` template variables and uses the
``$datasource`` variable, so the dashboard imports into any Grafana with a Prometheus
data source.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("loopwatch.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTER = 'job=~"$job", instance=~"$instance"'
WIDTH = 24

Panel = dict[str, Any]


def sel(metric: str, extra: str = "") -> str:
    """A selector of ``metric`` restricted to the chosen job and instance."""
    matchers = f"{FILTER}, {extra}" if extra else FILTER
    return f"{metric}{{{matchers}}}"


def rate(metric: str, window: str = "$__rate_interval") -> str:
    return f"rate({sel(metric)}[{window}])"


def increase(metric: str, window: str = "$__range") -> str:
    return f"increase({sel(metric)}[{window}])"


def quantile(q: float, histogram: str, by: str, window: str = "$__rate_interval") -> str:
    """``q``-quantile of a histogram, aggregated over everything but ``by`` and ``le``."""
    return (
        f"histogram_quantile({q}, sum by ({by}, le) (rate({sel(histogram + '_bucket')}[{window}])))"
    )


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> Panel:
    result: Panel = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
    }
    if instant:
        result.update({"format": "table", "instant": True, "range": False})
    else:
        result.update({"range": True})
    return result


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    red_from: float = 1,
    no_value: str = "0",
) -> Panel:
    defaults: Panel = {
        "unit": unit,
        "noValue": no_value,
        "color": {"mode": "thresholds"},
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": red_from}],
        },
    }
    if unit == "short":
        # Counts of incidents: increase() extrapolates, a fraction would only confuse.
        defaults["decimals"] = 0
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
    }


def timeseries(
    title: str, description: str, targets: list[Panel], *, unit: str, stacked: bool = False
) -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 20 if stacked else 5,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def table(title: str, description: str, expr: str, *, value_name: str) -> Panel:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        "transformations": [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": value_name},
                },
            }
        ],
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


# -- the panels, top to bottom; each inner list is one line of the grid -------------------

RANGE_NOTE = "over the dashboard's time range"
# Waits for a pool thread under loopwatch's default block threshold (a histogram bucket).
FAST = 'le="0.1"'

LAYOUT: list[tuple[Panel, list[tuple[Panel, int, int]]]] = [
    (
        row("Overview"),
        [
            (
                stat(
                    "Re-entries",
                    f"Re-entrant or cross-thread event loop runs loopwatch "
                    f"intercepted, {RANGE_NOTE} (H1/H2). Any is a bug to fix.",
                    f"sum({increase('loopwatch_reentry_total')})",
                ),
                4,
                4,
            ),
            (
                stat(
                    "Loop blocks",
                    f"Times the event loop was blocked past the threshold, {RANGE_NOTE} (H3).",
                    f"sum({increase('loopwatch_event_loop_blocks_total')})",
                ),
                4,
                4,
            ),
            (
                stat(
                    "Lag p99",
                    f"99th percentile of event loop lag {RANGE_NOTE}. Healthy loops "
                    "stay in the low milliseconds.",
                    quantile(0.99, "loopwatch_event_loop_lag_seconds", "job, instance", "$__range"),
                    unit="s",
                    red_from=0.1,
                    no_value="-",
                ),
                4,
                4,
            ),
            (
                stat(
                    "Unretrieved task exceptions",
                    f"Task exceptions nobody retrieved, {RANGE_NOTE} (H4).",
                    f"sum({increase('loopwatch_task_exceptions_unretrieved_total')})",
                ),
                4,
                4,
            ),
            (
                stat(
                    "Never-awaited coroutines",
                    f"Coroutines created and never awaited, {RANGE_NOTE} (H5).",
                    f"sum({increase('loopwatch_coroutines_never_awaited_total')})",
                ),
                4,
                4,
            ),
            (
                stat(
                    "loopwatch internal errors",
                    f"Failures inside loopwatch itself, "
                    f"{RANGE_NOTE}. The host kept running; its incidents may be incomplete.",
                    f"sum({increase('loopwatch_internal_errors_total')})",
                ),
                4,
                4,
            ),
        ],
    ),
    (
        row("Event loop"),
        [
            (
                timeseries(
                    "Event loop lag p50 / p90 / p99",
                    "How late the loop ran loopwatch's probe timer, from the "
                    "loopwatch_event_loop_lag_seconds histogram. Lag is what every coroutine on "
                    "the loop waits on top of its own work.",
                    [
                        target(
                            quantile(q, "loopwatch_event_loop_lag_seconds", "job, instance"),
                            f"p{round(q * 100)} {{{{instance}}}}",
                            ref,
                        )
                        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
                    ],
                    unit="s",
                ),
                12,
                8,
            ),
            (
                timeseries(
                    "Share of time the loop was blocked",
                    "Blocked seconds per second: 1 means the loop did nothing else.",
                    [
                        target(
                            "sum by (job, instance) "
                            f"({rate('loopwatch_event_loop_blocked_seconds_total')})",
                            "{{instance}}",
                        )
                    ],
                    unit="percentunit",
                ),
                12,
                8,
            ),
        ],
    ),
    (
        row("Re-entry (H1/H2)"),
        [
            (
                timeseries(
                    "Re-entries by handler",
                    "Intercepted runs per second by the route, event or command that made them, "
                    "the asyncio API called and what loopwatch did (offloaded, marshalled, "
                    "reentered, raised).",
                    [
                        target(
                            "sum by (framework, handler, api, action) "
                            f"({rate('loopwatch_reentry_total')})",
                            "{{handler}} {{api}} ({{action}})",
                        )
                    ],
                    unit="cps",
                    stacked=True,
                ),
                12,
                8,
            ),
            (
                timeseries(
                    "Re-entry stall p99 by handler",
                    "How long an intercepted run stalled its caller and the loop it ran on.",
                    [
                        target(
                            quantile(0.99, "loopwatch_reentry_stall_seconds", "handler, api"),
                            "{{handler}} {{api}}",
                        )
                    ],
                    unit="s",
                ),
                12,
                8,
            ),
            (
                table(
                    "Re-entering handlers",
                    f"Re-entries by handler {RANGE_NOTE}; the incident log has the user line.",
                    "sort_desc(sum by (framework, handler, api, action) "
                    f"({increase('loopwatch_reentry_total')}))",
                    value_name="re-entries",
                ),
                24,
                7,
            ),
        ],
    ),
    (
        row("Blocking (H3)"),
        [
            (
                timeseries(
                    "Loop blocks by handler",
                    "Blocks past the threshold per second, by the handler that was running.",
                    [
                        target(
                            "sum by (framework, handler) "
                            f"({rate('loopwatch_event_loop_blocks_total')})",
                            "{{handler}}",
                        )
                    ],
                    unit="cps",
                    stacked=True,
                ),
                12,
                8,
            ),
            (
                timeseries(
                    "Blocked seconds by handler",
                    "Seconds the loop spent blocked per second, by the handler that blocked it.",
                    [
                        target(
                            "sum by (framework, handler) "
                            f"({rate('loopwatch_event_loop_blocked_seconds_total')})",
                            "{{handler}}",
                        )
                    ],
                    unit="percentunit",
                    stacked=True,
                ),
                12,
                8,
            ),
        ],
    ),
    (
        row("Tasks and coroutines (H4/H5)"),
        [
            (
                timeseries(
                    "Unretrieved task exceptions",
                    "Exceptions of tasks nobody awaited, by exception type and handler.",
                    [
                        target(
                            "sum by (framework, handler, exception) "
                            f"({rate('loopwatch_task_exceptions_unretrieved_total')})",
                            "{{exception}} in {{handler}}",
                        )
                    ],
                    unit="cps",
                    stacked=True,
                ),
                12,
                8,
            ),
            (
                timeseries(
                    "Never-awaited coroutines",
                    "Coroutines created and garbage-collected without being awaited, by handler.",
                    [
                        target(
                            "sum by (framework, handler) "
                            f"({rate('loopwatch_coroutines_never_awaited_total')})",
                            "{{handler}}",
                        )
                    ],
                    unit="cps",
                    stacked=True,
                ),
                12,
                8,
            ),
        ],
    ),
    (
        row("Stuck handlers (H7)"),
        [
            (
                timeseries(
                    "Handlers in flight",
                    "Requests, events and commands running now, by handler. A line that only "
                    "climbs while throughput stays flat is work that does not finish.",
                    [
                        target(
                            "sum by (framework, handler) "
                            f"({sel('loopwatch_handlers_in_flight')})",
                            "{{handler}}",
                        )
                    ],
                    unit="short",
                    stacked=True,
                ),
                12,
                8,
            ),
            (
                timeseries(
                    "Stuck handlers by handler",
                    "Handlers still running past stuck_after while the loop was healthy, per "
                    "second (one stuck_handler incident each; the log has its await chain).",
                    [
                        target(
                            "sum by (framework, handler) "
                            f"({rate('loopwatch_stuck_handlers_total')})",
                            "{{handler}}",
                        )
                    ],
                    unit="cps",
                    stacked=True,
                ),
                12,
                8,
            ),
        ],
    ),
    (
        row("Thread pools (H8)"),
        [
            (
                timeseries(
                    "Pool threads: busy / limit / waiting",
                    "Sync work (def routes, run_in_threadpool, to_thread, run_in_executor) by "
                    "pool: anyio is the default thread limiter, asyncio-default the loops' "
                    "default executor. Busy at the limit with calls waiting is saturation.",
                    [
                        target(
                            f"sum by (job, instance, pool) ({sel(f'loopwatch_threadpool_{m}')})",
                            f"{m} {{{{pool}}}} {{{{instance}}}}",
                            ref,
                        )
                        for m, ref in (("threads", "A"), ("limit", "B"), ("waiting", "C"))
                    ],
                    unit="short",
                ),
                8,
                8,
            ),
            (
                timeseries(
                    "Wait for a thread p95 by route",
                    "How long sync calls waited for a free pool thread, by the route that "
                    "asked. A free thread answers in well under a millisecond.",
                    [
                        target(
                            quantile(
                                0.95, "loopwatch_threadpool_wait_seconds", "framework, handler"
                            ),
                            "{{handler}}",
                        )
                    ],
                    unit="s",
                ),
                8,
                8,
            ),
            (
                timeseries(
                    "Saturated waits by route",
                    "Sync calls per second that waited more than 100 ms for a thread (the "
                    "default block threshold: each is a threadpool_saturated incident, whose "
                    "log line names the pool, its size and the queue).",
                    [
                        target(
                            "sum by (framework, handler) "
                            f"({rate('loopwatch_threadpool_wait_seconds_count')})"
                            " - sum by (framework, handler) "
                            f"(rate({sel('loopwatch_threadpool_wait_seconds_bucket', FAST)}"
                            "[$__rate_interval]))",
                            "{{handler}}",
                        )
                    ],
                    unit="cps",
                    stacked=True,
                ),
                8,
                8,
            ),
        ],
    ),
    (
        row("Tasks left behind (H9)"),
        [
            (
                timeseries(
                    "Pending tasks by the handler that created them",
                    "Tasks still pending, by the route, event or command whose context "
                    "created them (a running handler's own task included). Growth after "
                    "requests end is tasks left behind.",
                    [
                        target(
                            f"sum by (framework, handler) ({sel('loopwatch_tasks')})",
                            "{{handler}}",
                        )
                    ],
                    unit="short",
                    stacked=True,
                ),
                24,
                8,
            ),
        ],
    ),
    (
        row("Handlers"),
        [
            (
                timeseries(
                    "Handler duration p50 / p99",
                    "Duration of requests, events and commands by handler.",
                    [
                        target(
                            quantile(q, "loopwatch_handler_duration_seconds", "framework, handler"),
                            f"p{round(q * 100)} {{{{handler}}}}",
                            ref,
                        )
                        for q, ref in ((0.5, "A"), (0.99, "B"))
                    ],
                    unit="s",
                ),
                12,
                8,
            ),
            (
                timeseries(
                    "Handler throughput by outcome",
                    "Requests, events and commands finished per second, by handler and outcome.",
                    [
                        target(
                            "sum by (framework, handler, outcome) "
                            f"({rate('loopwatch_handler_duration_seconds_count')})",
                            "{{handler}} {{outcome}}",
                        )
                    ],
                    unit="reqps",
                    stacked=True,
                ),
                12,
                8,
            ),
        ],
    ),
    (
        row("discord.py"),
        [
            (
                timeseries(
                    "Gateway latency by shard",
                    "discord.py heartbeat latency. It climbs when the loop is blocked.",
                    [
                        target(
                            "max by (job, instance, shard) "
                            f"({sel('loopwatch_discord_latency_seconds')})",
                            "shard {{shard}} {{instance}}",
                        )
                    ],
                    unit="s",
                ),
                24,
                7,
            ),
        ],
    ),
    (
        row("loopwatch itself"),
        [
            (
                timeseries(
                    "Internal errors by component",
                    "Failures inside loopwatch, caught and logged once; the log line has the "
                    "traceback to report.",
                    [
                        target(
                            f"sum by (component) ({rate('loopwatch_internal_errors_total')})",
                            "{{component}}",
                        )
                    ],
                    unit="cps",
                ),
                8,
                8,
            ),
            (
                timeseries(
                    "Label overflow by metric",
                    "Handler values folded into __other__ past the per-metric cap: some handler "
                    "label is not a template (raw paths or ids).",
                    [
                        target(
                            f"sum by (metric) ({rate('loopwatch_label_overflow_total')})",
                            "{{metric}}",
                        )
                    ],
                    unit="cps",
                ),
                8,
                8,
            ),
            (
                table(
                    "Build and configuration",
                    "loopwatch version, Python, event loop implementation and re-entry policy "
                    "per instance.",
                    # == 1: in multiprocess mode a process sets the series it no longer
                    # has to 0 (prometheus_client cannot drop one there).
                    "max by (job, instance, version, python, loop, on_reentry) "
                    f"({sel('loopwatch_info')}) == 1",
                    value_name="up",
                ),
                8,
                8,
            ),
        ],
    ),
]


def variable(name: str, label: str, query: str) -> Panel:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def build() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    panels: list[Panel] = []
    y = 0
    for row_panel, line in LAYOUT:
        panels.append({**row_panel, "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}})
        y += 1
        x = 0
        line_height = 0
        for panel, width, height in line:
            if x + width > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append({**panel, "gridPos": {"h": height, "w": width, "x": x, "y": y}})
            x += width
            line_height = max(line_height, height)
        y += line_height
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "title": "loopwatch: asyncio event loop",
        "uid": "loopwatch",
        "description": "Re-entrant event loop runs, blocked loops, lost task exceptions, "
        "never-awaited coroutines, stuck handlers, full thread pools and tasks left behind, "
        "by handler, from loopwatch's Prometheus metrics.",
        "tags": ["loopwatch", "asyncio", "python"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": "30s",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DATASOURCE,
                    "enable": True,
                    "hide": False,
                    "iconColor": "red",
                    "name": "loopwatch alerts",
                    "expr": f'ALERTS{{alertname=~"Loopwatch.+", alertstate="firing", {FILTER}}}',
                    "step": "1m",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{instance}} {{handler}}",
                    "useValueForTime": False,
                },
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "options": [],
                    "regex": "",
                    "refresh": 1,
                    "includeAll": False,
                    "multi": False,
                    "hide": 0,
                },
                variable("job", "Job", "label_values(loopwatch_info, job)"),
                variable(
                    "instance", "Instance", 'label_values(loopwatch_info{job=~"$job"}, instance)'
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    """The dashboard JSON text, exactly as committed."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if loopwatch.json is not what this script builds",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
