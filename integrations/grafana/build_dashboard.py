"""Build the loopwatch Grafana dashboard (loopwatch.json, next to this file).

Run ``python build_dashboard.py`` to rewrite loopwatch.json, or ``--check`` to exit 1
when the committed file differs from what this script builds. The dashboard is made with
the typed builders of ``grafana-foundation-sdk`` (the version pinned in the ``test`` extra
of pyproject.toml), so a misspelt option or a value of the wrong type fails at type-check
time instead of in an operator's Grafana.

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

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, prometheus
from grafana_foundation_sdk.models import dashboard as model

OUTPUT = Path(__file__).with_name("loopwatch.json")
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
FILTER = 'job=~"$job", instance=~"$instance"'
# The dashboard JSON schema version Grafana 10.4 writes (the SDK's types are Grafana 10.4's).
SCHEMA_VERSION = 39

Panel = stat_b.Panel | timeseries_b.Panel | table_b.Panel


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


def target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> prometheus_b.Dataquery:
    query = (
        prometheus_b.Dataquery()
        .datasource(DATASOURCE)
        .editor_mode(prometheus.QueryEditorMode.CODE)
        .expr(expr)
        .legend_format(legend or "__auto")
        .ref_id(ref)
    )
    if instant:
        return query.format(prometheus.PromQueryFormat.TABLE).instant()
    return query.range()


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    red_from: float = 1,
    no_value: str = "0",
) -> stat_b.Panel:
    panel = (
        stat_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target(expr))
        .unit(unit)
        .no_value(no_value)
        .color_scheme(dashboard_b.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .thresholds(
            dashboard_b.ThresholdsConfig()
            .mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=None, color="green"), model.Threshold(red_from, "red")])
        )
        .reduce_options(
            common_b.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
        )
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .text_mode(common.BigValueTextMode.AUTO)
    )
    if unit == "short":
        # Counts of incidents: increase() extrapolates, a fraction would only confuse.
        panel = panel.decimals(0)
    return panel


def timeseries(
    title: str,
    description: str,
    targets: list[prometheus_b.Dataquery],
    *,
    unit: str,
    stacked: bool = False,
) -> timeseries_b.Panel:
    return (
        timeseries_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(targets))
        .unit(unit)
        .min(0)
        .color_scheme(dashboard_b.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(20 if stacked else 5)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_b.StackingConfig()
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
            .group("A")
        )
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["max", "lastNotNull"])
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )


def table(title: str, description: str, expr: str, *, value_name: str) -> table_b.Panel:
    return (
        table_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target(expr, instant=True))
        .align(common.FieldTextAlignment.AUTO)
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(common_b.TableFooterOptions().show(False))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": value_name},
                },
            )
        )
    )


def row(title: str) -> dashboard_b.Row:
    return dashboard_b.Row(title).collapsed(False)


# -- the panels, top to bottom; each inner list is one line of the grid -------------------

RANGE_NOTE = "over the dashboard's time range"
# Waits for a pool thread under loopwatch's default block threshold (a histogram bucket).
FAST = 'le="0.1"'

LAYOUT: list[tuple[dashboard_b.Row, list[tuple[Panel, int, int]]]] = [
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
                            f"sum by (framework, handler) ({sel('loopwatch_handlers_in_flight')})",
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


def variable(name: str, label: str, query: str) -> dashboard_b.QueryVariable:
    return (
        dashboard_b.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .multi(True)
        .all_value(".*")
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


# How Grafana's Prometheus data source titles an annotation. Grafana's schema leaves
# annotation queries open for such data-source fields; the SDK types only ``expr``.
ALERT_ANNOTATION_FORMAT: dict[str, Any] = {
    "step": "1m",
    "titleFormat": "{{alertname}}",
    "textFormat": "{{instance}} {{handler}}",
    "useValueForTime": False,
}


def dashboard() -> model.Dashboard:
    """The dashboard as the SDK's typed model."""
    builder = (
        dashboard_b.Dashboard("loopwatch: asyncio event loop")
        .uid("loopwatch")
        .description(
            "Re-entrant event loop runs, blocked loops, lost task exceptions, "
            "never-awaited coroutines, stuck handlers, full thread pools and tasks left "
            "behind, by handler, from loopwatch's Prometheus metrics."
        )
        .tags(["loopwatch", "asyncio", "python"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .time("now-1h", "now")
        .timezone("")
        .refresh("30s")
        .annotation(
            dashboard_b.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .built_in(1)
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .annotation(
            dashboard_b.AnnotationQuery()
            .name("loopwatch alerts")
            .datasource(DATASOURCE)
            .enable(True)
            .hide(False)
            .icon_color("red")
            .expr(f'ALERTS{{alertname=~"Loopwatch.+", alertstate="firing", {FILTER}}}')
        )
        .with_variable(
            dashboard_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(variable("job", "Job", "label_values(loopwatch_info, job)"))
        .with_variable(
            variable("instance", "Instance", 'label_values(loopwatch_info{job=~"$job"}, instance)')
        )
    )
    # The SDK places each row and its panels on the grid, left to right, and starts a
    # new line when a line is full (every line here adds up to the full width).
    for row_builder, line in LAYOUT:
        builder = builder.with_row(row_builder)
        for panel, width, height in line:
            builder = builder.with_panel(panel.span(width).height(height))
    result = builder.build()
    result.schema_version = SCHEMA_VERSION
    for number, panel_model in enumerate(result.panels or [], start=1):
        panel_model.id_val = number
    return result


def build() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    document: dict[str, Any] = json.loads(json.dumps(dashboard(), cls=JSONEncoder))
    for annotation in document["annotations"]["list"]:
        if annotation.get("expr"):
            annotation.update(ALERT_ANNOTATION_FORMAT)
    return document


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
