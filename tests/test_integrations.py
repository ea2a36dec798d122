"""integrations/ (Grafana dashboard, Prometheus rules and config, gunicorn config), checked
with promtool and a real Prometheus server."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prom_harness import (
    PrometheusServer,
    QueryResult,
    check_config,
    check_rules,
    free_port,
    require_binary,
    run_rule_unit_tests,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

ROOT = Path(__file__).resolve().parent.parent
INTEGRATIONS = ROOT / "integrations"
DASHBOARD = INTEGRATIONS / "grafana" / "loopwatch.json"
DASHBOARD_BUILDER = INTEGRATIONS / "grafana" / "build_dashboard.py"
ALERTS = INTEGRATIONS / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = INTEGRATIONS / "prometheus" / "scrape.yml"
GUNICORN_CONF = INTEGRATIONS / "gunicorn" / "gunicorn.conf.py"

# The metric contract of the README, written out independently of loopwatch.metrics so that
# a drift between the two fails test_spec_table_matches_loopwatch_metrics.
SPEC_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "loopwatch_reentry_total": ("counter", ("api", "action", "framework", "handler")),
    "loopwatch_reentry_stall_seconds": ("histogram", ("api", "framework", "handler")),
    "loopwatch_event_loop_lag_seconds": ("histogram", ()),
    "loopwatch_event_loop_blocks_total": ("counter", ("framework", "handler")),
    "loopwatch_event_loop_blocked_seconds_total": ("counter", ("framework", "handler")),
    "loopwatch_task_exceptions_unretrieved_total": (
        "counter",
        ("framework", "handler", "exception"),
    ),
    "loopwatch_coroutines_never_awaited_total": ("counter", ("framework", "handler")),
    "loopwatch_handler_duration_seconds": ("histogram", ("framework", "handler", "outcome")),
    "loopwatch_discord_latency_seconds": ("gauge", ("shard",)),
    "loopwatch_label_overflow_total": ("counter", ("metric",)),
    "loopwatch_internal_errors_total": ("counter", ("component",)),
    "loopwatch_info": ("gauge", ("version", "python", "loop", "on_reentry")),
    "loopwatch_handlers_in_flight": ("gauge", ("framework", "handler")),
    "loopwatch_stuck_handlers_total": ("counter", ("framework", "handler")),
    "loopwatch_threadpool_threads": ("gauge", ("pool",)),
    "loopwatch_threadpool_limit": ("gauge", ("pool",)),
    "loopwatch_threadpool_waiting": ("gauge", ("pool",)),
    "loopwatch_threadpool_wait_seconds": ("histogram", ("framework", "handler")),
    "loopwatch_tasks": ("gauge", ("framework", "handler")),
}

SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": (), "gauge": ()}
METRIC_TOKEN = re.compile(r"\bloopwatch_[a-z0-9_]+")
# A metric name in PromQL and the label matchers that follow it, if any.
SELECTOR = re.compile(r"\b(loopwatch_[a-z0-9_]+|ALERTS)\b\s*(\{[^}]*\})?")
JOB_FILTER = 'job=~"$job"'
INSTANCE_FILTER = 'instance=~"$instance"'
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
GRAFANA_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# Grafana's interval macros, as a dashboard over a 1s-scraped test server would get them.
GRAFANA_MACROS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
# Panels the demo cannot fill: it runs no discord.py bot, stays under the label cap and
# must not fail internally. Their queries still have to be valid.
NOT_PRODUCED_BY_DEMO = frozenset(
    {
        "loopwatch_discord_latency_seconds",
        "loopwatch_label_overflow_total",
        "loopwatch_internal_errors_total",
    }
)


# -- reading the integrations ---------------------------------------------------------------


def require_grafana_sdk() -> None:
    """Skip on Pythons grafana-foundation-sdk does not support (it needs 3.11+).

    On 3.11 and later the ``test`` extra installs it, so a missing SDK is an error there.
    """
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk needs Python 3.11 or later")


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel."""
    return [
        (panel["title"], target)
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def metric_of(token: str) -> str | None:
    """The §6 metric a series name belongs to (``_bucket`` only for histograms, ...)."""
    if token in SPEC_METRICS:
        return token
    for name, (kind, _labels) in SPEC_METRICS.items():
        if any(token == name + suffix for suffix in SERIES_SUFFIXES[kind]):
            return name
    return None


def metrics_in(expr: str) -> set[str]:
    return {metric_of(t) or t for t in METRIC_TOKEN.findall(expr)}


def grafana_expr(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with the template variables and interval macros Grafana would fill in."""
    values = {**GRAFANA_MACROS, **variables}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr}")
        return values[name]

    return GRAFANA_VARIABLE.sub(substitute, expr)


def dashboard_problems(
    prom: PrometheusServer, variables: dict[str, str], may_be_empty: frozenset[str] = frozenset()
) -> list[str]:
    """Run every dashboard query; list those with no number or lacking a legend label.

    A query that Prometheus rejects raises. Queries that only read metrics in
    ``may_be_empty`` may return nothing.
    """
    problems = []
    for title, target in dashboard_targets(load_dashboard()):
        result = prom.query(grafana_expr(target["expr"], variables))
        if not any(math.isfinite(series.value) for series in result.series):
            if not metrics_in(target["expr"]) <= may_be_empty:
                problems.append(f"{title}: no data (or only NaN) for {result.expr}")
            continue
        # Every {{label}} of the legend must be a label of every series returned.
        wanted = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
        for series in result.series:
            if wanted - series.labels.keys():
                problems.append(f"{title}: legend uses {wanted}, series has {series.labels}")
    return problems


# -- (a) rules and config with promtool -----------------------------------------------------


def test_promtool_check_rules() -> None:
    report = check_rules(ALERTS)
    assert f"SUCCESS: {len(alert_rules())} rules found" in report


def test_promtool_check_scrape_config() -> None:
    report = check_config(SCRAPE_CONFIG)
    assert "is valid prometheus config file syntax" in report


def test_scrape_config_targets_loopback_only() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"loopwatch-demo", "loopwatch-gunicorn"} <= jobs.keys()
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            for target in static["targets"]:
                assert target.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]"), target


def test_alert_rules_are_documented_and_cover_the_hazards() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']}: no {key}"
    # One alert per thing an operator must hear about (issue: re-entry, blocked loop,
    # lag p99, unretrieved exceptions, internal errors).
    watched = {name for rule in rules for name in METRIC_TOKEN.findall(rule["expr"])}
    assert {
        "loopwatch_reentry_total",
        "loopwatch_event_loop_blocks_total",
        "loopwatch_event_loop_lag_seconds_bucket",
        "loopwatch_task_exceptions_unretrieved_total",
        "loopwatch_internal_errors_total",
        "loopwatch_stuck_handlers_total",
        "loopwatch_threadpool_waiting",
        "loopwatch_threadpool_wait_seconds_count",
        "loopwatch_tasks",
    } <= watched
    lag_rule = next(r for r in rules if "loopwatch_event_loop_lag_seconds" in r["expr"])
    assert "histogram_quantile(0.99" in lag_rule["expr"]


# promtool unit tests of the rules: thresholds, `for`, and the new-series case. They run
# against a copy of the rules without annotations, because promtool compares annotations
# verbatim and the prose is not what these tests are about.
RULE_UNIT_TESTS = """
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # One re-entry: the series appears at 1 and never increases.
      - series: 'loopwatch_reentry_total{job="app", instance="a:1", api="asyncio.run",
                 action="offloaded", framework="fastapi", handler="GET /sync"}'
        values: '_x2 1x40'
      # Re-entries every minute.
      - series: 'loopwatch_reentry_total{job="app", instance="a:1", api="run_until_complete",
                 action="marshalled", framework="discord", handler="event:on_message"}'
        values: '0+1x40'
      - series: 'loopwatch_event_loop_blocks_total{job="app", instance="a:1",
                 framework="fastapi", handler="GET /slow"}'
        values: '0+3x40'
      - series: 'loopwatch_event_loop_blocks_total{job="app", instance="a:1",
                 framework="fastapi", handler="GET /rarely-slow"}'
        values: '0+0.5x40'
      # Blocked 30 s a minute on one instance, 1 s a minute on another.
      - series: 'loopwatch_event_loop_blocked_seconds_total{job="app", instance="a:1",
                 framework="fastapi", handler="GET /slow"}'
        values: '0+30x40'
      - series: 'loopwatch_event_loop_blocked_seconds_total{job="app", instance="b:1",
                 framework="fastapi", handler="GET /slow"}'
        values: '0+1x40'
      # Instance a: half the lag observations above 250 ms. Instance b: all under 10 ms.
      - series: 'loopwatch_event_loop_lag_seconds_bucket{job="app", instance="a:1", le="0.01"}'
        values: '0+50x40'
      - series: 'loopwatch_event_loop_lag_seconds_bucket{job="app", instance="a:1", le="0.25"}'
        values: '0+50x40'
      - series: 'loopwatch_event_loop_lag_seconds_bucket{job="app", instance="a:1", le="+Inf"}'
        values: '0+100x40'
      - series: 'loopwatch_event_loop_lag_seconds_bucket{job="app", instance="b:1", le="0.01"}'
        values: '0+100x40'
      - series: 'loopwatch_event_loop_lag_seconds_bucket{job="app", instance="b:1", le="0.25"}'
        values: '0+100x40'
      - series: 'loopwatch_event_loop_lag_seconds_bucket{job="app", instance="b:1", le="+Inf"}'
        values: '0+100x40'
      - series: 'loopwatch_task_exceptions_unretrieved_total{job="app", instance="a:1",
                 framework="fastapi", handler="POST /jobs", exception="KeyError"}'
        values: '_x5 1x35'
      - series: 'loopwatch_coroutines_never_awaited_total{job="app", instance="a:1",
                 framework="discord", handler="command:ping"}'
        values: '0x10 1x30'
      - series: 'loopwatch_internal_errors_total{job="app", instance="a:1",
                 component="watchdog"}'
        values: '_x2 2x38'
      # Created at zero and never incremented: no alert.
      - series: 'loopwatch_internal_errors_total{job="app", instance="a:1",
                 component="logging"}'
        values: '0x40'
      - series: 'loopwatch_label_overflow_total{job="app", instance="a:1",
                 metric="loopwatch_reentry_total"}'
        values: '_x30 4x10'
      - series: 'loopwatch_stuck_handlers_total{job="app", instance="a:1",
                 framework="fastapi", handler="GET /orders/{order_id}"}'
        values: '_x3 1x37'
      # Pool anyio full with calls waiting from minute 6; the default executor has room.
      - series: 'loopwatch_threadpool_waiting{job="app", instance="a:1", pool="anyio"}'
        values: '0x5 3x35'
      - series: 'loopwatch_threadpool_threads{job="app", instance="a:1", pool="anyio"}'
        values: '2x40'
      - series: 'loopwatch_threadpool_limit{job="app", instance="a:1", pool="anyio"}'
        values: '2x40'
      - series: 'loopwatch_threadpool_waiting{job="app", instance="a:1",
                 pool="asyncio-default"}'
        values: '2x40'
      - series: 'loopwatch_threadpool_threads{job="app", instance="a:1",
                 pool="asyncio-default"}'
        values: '3x40'
      - series: 'loopwatch_threadpool_limit{job="app", instance="a:1", pool="asyncio-default"}'
        values: '6x40'
      # GET /pdf: half of its ten calls a minute wait past 100 ms; GET /csv never does.
      - series: 'loopwatch_threadpool_wait_seconds_count{job="app", instance="a:1",
                 framework="fastapi", handler="GET /pdf"}'
        values: '0+10x40'
      - series: 'loopwatch_threadpool_wait_seconds_bucket{job="app", instance="a:1",
                 framework="fastapi", handler="GET /pdf", le="0.1"}'
        values: '0+5x40'
      - series: 'loopwatch_threadpool_wait_seconds_count{job="app", instance="a:1",
                 framework="fastapi", handler="GET /csv"}'
        values: '0+10x40'
      - series: 'loopwatch_threadpool_wait_seconds_bucket{job="app", instance="a:1",
                 framework="fastapi", handler="GET /csv", le="0.1"}'
        values: '0+10x40'
      # Ten more tasks left behind a minute by one route; another holds a steady five.
      - series: 'loopwatch_tasks{job="app", instance="a:1", framework="fastapi",
                 handler="GET /watch"}'
        values: '0+10x40'
      - series: 'loopwatch_tasks{job="app", instance="a:1", framework="fastapi",
                 handler="GET /healthy"}'
        values: '5x40'
    alert_rule_test:
      - eval_time: 4m
        alertname: LoopwatchReentry
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", api: asyncio.run,
                         action: offloaded, framework: fastapi, handler: GET /sync}
          - exp_labels: {severity: warning, job: app, instance: "a:1",
                         api: run_until_complete, action: marshalled, framework: discord,
                         handler: "event:on_message"}
      # Ten minutes after the single re-entry, only the recurring one is left.
      - eval_time: 25m
        alertname: LoopwatchReentry
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1",
                         api: run_until_complete, action: marshalled, framework: discord,
                         handler: "event:on_message"}
      # Past 10 blocks per 10 minutes since about 4m, but `for: 5m` has not passed yet.
      - eval_time: 6m
        alertname: LoopwatchEventLoopBlockedOften
        exp_alerts: []
      - eval_time: 20m
        alertname: LoopwatchEventLoopBlockedOften
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", framework: fastapi,
                         handler: GET /slow}
      - eval_time: 20m
        alertname: LoopwatchEventLoopBlockedTime
        exp_alerts:
          - exp_labels: {severity: critical, job: app, instance: "a:1"}
      - eval_time: 30m
        alertname: LoopwatchEventLoopLagHigh
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1"}
      - eval_time: 8m
        alertname: LoopwatchEventLoopLagHigh
        exp_alerts: []
      - eval_time: 7m
        alertname: LoopwatchUnretrievedTaskExceptions
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", framework: fastapi,
                         handler: POST /jobs, exception: KeyError}
      - eval_time: 9m
        alertname: LoopwatchCoroutinesNeverAwaited
        exp_alerts: []
      - eval_time: 12m
        alertname: LoopwatchCoroutinesNeverAwaited
        exp_alerts:
          - exp_labels: {severity: info, job: app, instance: "a:1", framework: discord,
                         handler: "command:ping"}
      - eval_time: 5m
        alertname: LoopwatchInternalErrors
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", component: watchdog}
      - eval_time: 35m
        alertname: LoopwatchInternalErrors
        exp_alerts: []
      - eval_time: 5m
        alertname: LoopwatchHandlerStuck
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", framework: fastapi,
                         handler: "GET /orders/{order_id}"}
      - eval_time: 20m
        alertname: LoopwatchHandlerStuck
        exp_alerts: []
      - eval_time: 8m
        alertname: LoopwatchThreadpoolSaturated
        exp_alerts: []
      - eval_time: 15m
        alertname: LoopwatchThreadpoolSaturated
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", pool: anyio}
      - eval_time: 15m
        alertname: LoopwatchThreadpoolSlowWaits
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", framework: fastapi,
                         handler: GET /pdf}
      - eval_time: 20m
        alertname: LoopwatchTasksLeftBehind
        exp_alerts: []
      - eval_time: 30m
        alertname: LoopwatchTasksLeftBehind
        exp_alerts:
          - exp_labels: {severity: warning, job: app, instance: "a:1", framework: fastapi,
                         handler: GET /watch}
      - eval_time: 32m
        alertname: LoopwatchLabelOverflow
        exp_alerts:
          - exp_labels: {severity: info, job: app, instance: "a:1",
                         metric: loopwatch_reentry_total}
"""


def test_alert_rules_unit_tests(tmp_path: Path) -> None:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(document), encoding="utf-8")
    tests = tmp_path / "rules_test.yml"
    unit = yaml.safe_load(RULE_UNIT_TESTS)
    unit["rule_files"] = [str(rules)]
    tests.write_text(yaml.safe_dump(unit), encoding="utf-8")
    tested = {case["alertname"] for case in unit["tests"][0]["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules()}, "an alert has no unit test"
    assert "SUCCESS" in run_rule_unit_tests(tests)


# -- (b) the dashboard's shape ----------------------------------------------------------------


def test_dashboard_is_built_from_the_script() -> None:
    require_grafana_sdk()
    proc = subprocess.run(
        [sys.executable, str(DASHBOARD_BUILDER), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = list(all_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        query = variable["query"]["query"]
        assert LABEL_VALUES.match(query), query
    # The instance list follows the chosen job.
    assert JOB_FILTER in variables["instance"]["query"]["query"]


@pytest.mark.slow
def test_dashboard_builder_type_checks(tmp_path: Path) -> None:
    """The SDK's builders are typed: mypy rejects a misspelt option or a wrong value type."""
    require_grafana_sdk()
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.11",
         "--cache-dir", str(tmp_path / "mypy"), str(DASHBOARD_BUILDER)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dashboard_schema_errors(dashboard: dict[str, Any]) -> list[str]:
    require_grafana_sdk()
    sys.path.insert(0, str(DASHBOARD_BUILDER.parent))
    try:
        from build_dashboard import ALERT_ANNOTATION_FORMAT
    finally:
        sys.path.remove(str(DASHBOARD_BUILDER.parent))
    from grafana_schema import schema_errors

    return schema_errors(dashboard, open_annotation_keys=frozenset(ALERT_ANNOTATION_FORMAT))


def test_dashboard_fits_grafanas_schema() -> None:
    assert dashboard_schema_errors(load_dashboard()) == []


def _set(path: tuple[str | int, ...], value: Any) -> Any:
    def mutate(dashboard: dict[str, Any]) -> None:
        node: Any = dashboard
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _panel(panel_type: str) -> int:
    return next(i for i, p in enumerate(load_dashboard()["panels"]) if p["type"] == panel_type)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("schemaVersion",), "39", "schema_version: '39' is not a int"),
        (("panels", 1, "gridPos", "w"), "4", "grid_pos.w: '4' is not a int"),
        (("graphTooltip",), 7, "graph_tooltip: 7 is not a DashboardCursorSync"),
        (("panels", "timeseries", "fieldConfig", "defaults", "custom", "fillOpacity"), "5",
         "custom.fill_opacity: '5' is not a float"),
        (("panels", "timeseries", "options", "legend", "displayMode"), "tabel",
         "legend.display_mode: 'tabel' is not a LegendDisplayMode"),
        (("panels", "stat", "options", "reduceOptions", "calcs"), "lastNotNull",
         "reduce_options.calcs: str where the schema has a list"),
        (("panels", "timeseries", "targets", 0, "instant"), "no", "instant: 'no'"),
        (("panels", "timeseries", "options", "legend", "placment"), "bottom",
         "legend.placment: not a field of Grafana's schema here"),
    ],
)
def test_schema_check_rejects_what_grafana_would_not_load(
    path: tuple[str | int, ...], value: Any, expected: str
) -> None:
    """The schema check is not vacuous: one wrong field type (or unknown key) fails it."""
    dashboard = load_dashboard()
    resolved = tuple(_panel(key) if key in ("stat", "timeseries") else key for key in path)
    _set(resolved, value)(dashboard)
    errors = dashboard_schema_errors(dashboard)
    assert any(expected in error for error in errors), errors


def test_every_dashboard_query_filters_on_job_and_instance() -> None:
    dashboard = load_dashboard()
    exprs = [(title, target["expr"]) for title, target in dashboard_targets(dashboard)]
    exprs += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    assert len(exprs) > 20
    for title, expr in exprs:
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{title}: no metric in {expr}"
        for metric, matchers in selectors:
            assert JOB_FILTER in matchers and INSTANCE_FILTER in matchers, (
                f"{title}: {metric} is not filtered by $job and $instance in {expr}"
            )


def test_dashboard_lag_panel_shows_p50_p90_p99() -> None:
    quantiles = {
        match
        for _title, target in dashboard_targets(load_dashboard())
        if "loopwatch_event_loop_lag_seconds_bucket" in target["expr"]
        and "$__rate_interval" in target["expr"]
        for match in re.findall(r"histogram_quantile\(([\d.]+)", target["expr"])
    }
    assert {"0.5", "0.9", "0.99"} <= quantiles


# -- (c) metric names, both ways ----------------------------------------------------------------


def test_integrations_name_only_exported_metrics() -> None:
    from loopwatch.metrics import METRIC_NAMES

    exported = set(METRIC_NAMES)
    texts = {path: path.read_text(encoding="utf-8") for path in (DASHBOARD, ALERTS)}
    for path, text in texts.items():
        for token in set(METRIC_TOKEN.findall(text)):
            base = metric_of(token)
            assert base in exported, f"{path.name} names {token}, which loopwatch does not export"


def test_every_exported_metric_is_on_the_dashboard_or_in_the_rules() -> None:
    from loopwatch.metrics import METRIC_NAMES

    queried: set[str] = set()
    for _title, target in dashboard_targets(load_dashboard()):
        queried |= metrics_in(target["expr"])
    for rule in alert_rules():
        queried |= metrics_in(rule["expr"])
    missing = set(METRIC_NAMES) - queried
    assert not missing, f"exported but never queried: {sorted(missing)}"


def test_spec_table_matches_loopwatch_metrics() -> None:
    """The §6 table used by these tests is what loopwatch.metrics defines."""
    from loopwatch.metrics import METRIC_NAMES, get_metrics

    assert set(METRIC_NAMES) == set(SPEC_METRICS)
    registry = CollectorRegistry()
    metrics = get_metrics(registry)
    found: dict[str, tuple[str, set[str]]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, (Counter, Gauge, Histogram)):
            continue
        (family,) = metric.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        kind, labels = SPEC_METRICS[name]
        # .labels() rejects label names that differ from the metric's.
        child: Any = metric.labels(**dict.fromkeys(labels, "x")) if labels else metric
        if kind == "histogram":
            child.observe(0.01)
        elif kind == "counter":
            child.inc()
        else:
            child.set(1)
        found[name] = (family.type, set(labels))
    assert {name: kind for name, (kind, _) in found.items()} == {
        name: kind for name, (kind, _) in SPEC_METRICS.items()
    }
    for family in registry.collect():
        for sample in family.samples:
            base = metric_of(sample.name) or metric_of(sample.name.removesuffix("_created"))
            if base is None:
                continue
            assert set(sample.labels) - {"le"} == found[base][1], sample


# -- (d) a real Prometheus scraping a live target ---------------------------------------------


class SyntheticTarget:
    """A prometheus_client exporter with every §6 metric, for Prometheus to scrape.

    Counters start at zero ("quiet"); :meth:`stir` makes every kind of incident happen.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.reentry = Counter(
            "loopwatch_reentry",
            "re-entries",
            SPEC_METRICS["loopwatch_reentry_total"][1],
            registry=reg,
        ).labels(
            api="asyncio.run",
            action="offloaded",
            framework="fastapi",
            handler="GET /items/{item_id}",
        )
        self.stall = Histogram(
            "loopwatch_reentry_stall_seconds",
            "stall",
            SPEC_METRICS["loopwatch_reentry_stall_seconds"][1],
            registry=reg,
        ).labels(api="asyncio.run", framework="fastapi", handler="GET /items/{item_id}")
        self.lag = Histogram(
            "loopwatch_event_loop_lag_seconds",
            "lag",
            registry=reg,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
        )
        self.blocks = Counter(
            "loopwatch_event_loop_blocks", "blocks", ("framework", "handler"), registry=reg
        ).labels(framework="fastapi", handler="GET /report")
        self.blocked = Counter(
            "loopwatch_event_loop_blocked_seconds",
            "blocked",
            ("framework", "handler"),
            registry=reg,
        ).labels(framework="fastapi", handler="GET /report")
        self.exceptions = Counter(
            "loopwatch_task_exceptions_unretrieved",
            "exc",
            ("framework", "handler", "exception"),
            registry=reg,
        ).labels(framework="fastapi", handler="POST /jobs", exception="KeyError")
        self.never_awaited = Counter(
            "loopwatch_coroutines_never_awaited",
            "never",
            ("framework", "handler"),
            registry=reg,
        ).labels(framework="discord", handler="event:on_message")
        self.duration = Histogram(
            "loopwatch_handler_duration_seconds",
            "duration",
            ("framework", "handler", "outcome"),
            registry=reg,
        ).labels(framework="fastapi", handler="GET /items/{item_id}", outcome="ok")
        Gauge("loopwatch_discord_latency_seconds", "latency", ("shard",), registry=reg).labels(
            shard="0"
        ).set(0.042)
        self.overflow = Counter(
            "loopwatch_label_overflow", "overflow", ("metric",), registry=reg
        ).labels(metric="loopwatch_reentry_total")
        self.internal = Counter(
            "loopwatch_internal_errors", "internal", ("component",), registry=reg
        ).labels(component="watchdog")
        Gauge("loopwatch_info", "info", SPEC_METRICS["loopwatch_info"][1], registry=reg).labels(
            version="0.0.0", python="3.x", loop="uvloop", on_reentry="offload"
        ).set(1)
        self.in_flight = Gauge(
            "loopwatch_handlers_in_flight", "in flight", ("framework", "handler"),
            registry=reg,
        ).labels(framework="fastapi", handler="GET /orders/{order_id}")
        self.stuck = Counter(
            "loopwatch_stuck_handlers", "stuck", ("framework", "handler"), registry=reg
        ).labels(framework="fastapi", handler="GET /orders/{order_id}")
        self.pool = {
            name: Gauge(f"loopwatch_threadpool_{name}", name, ("pool",), registry=reg).labels(
                pool="anyio"
            )
            for name in ("threads", "limit", "waiting")
        }
        self.pool["limit"].set(40)
        self.pool["threads"].set(3)
        self.pool_wait = Histogram(
            "loopwatch_threadpool_wait_seconds",
            "wait",
            ("framework", "handler"),
            registry=reg,
            buckets=(0.001, 0.01, 0.1, 1.0, 10.0),
        ).labels(framework="fastapi", handler="GET /invoices/{invoice_id}/pdf")
        self.tasks = Gauge(
            "loopwatch_tasks", "tasks", ("framework", "handler"), registry=reg
        ).labels(framework="fastapi", handler="GET /prices/{symbol}/watch")
        self.tasks.set(2)
        self._server: Any = None
        self.port = 0

    def start(self) -> str:
        self._server, _thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.port = int(self._server.server_address[1])
        return f"127.0.0.1:{self.port}"

    def stir(self) -> None:
        self.reentry.inc(3)
        self.stall.observe(0.3)
        for _ in range(200):
            self.lag.observe(0.4)
        self.blocks.inc(100)
        self.blocked.inc(100)
        self.exceptions.inc(2)
        self.never_awaited.inc()
        self.duration.observe(0.02)
        self.overflow.inc()
        self.internal.inc()
        self.in_flight.set(37)
        self.stuck.inc(2)
        self.pool["threads"].set(40)
        self.pool["waiting"].set(12)
        for _ in range(50):
            self.pool_wait.observe(0.5)
        self.tasks.set(500)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class Live:
    prom: PrometheusServer
    target: str
    quiet_alert_results: dict[str, QueryResult] = field(default_factory=dict)
    quiet_alerts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def variables(self) -> dict[str, str]:
        return {"job": self.prom.job, "instance": self.target}


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """Prometheus scraping the synthetic target, with the rules loaded.

    First quiet (every series present, nothing happening), then stirred.
    """
    require_binary("prometheus")
    exporter = SyntheticTarget()
    target = exporter.start()
    try:
        with PrometheusServer([target], job="loopwatch-synthetic", rule_files=[ALERTS]) as prom:
            state = Live(prom, target)
            prom.wait_for_scrapes(2)
            for rule in alert_rules():
                state.quiet_alert_results[rule["alert"]] = prom.query(rule["expr"])
            prom.wait_for_rule_evaluation()
            state.quiet_alerts = prom.alerts()
            exporter.stir()
            prom.wait_for_scrapes(2)
            yield state
    finally:
        exporter.close()


@pytest.mark.slow
def test_dashboard_queries_return_data_live(live: Live) -> None:
    problems = dashboard_problems(live.prom, live.variables)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_dashboard_variables_live(live: Live) -> None:
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(grafana_expr(variable["query"]["query"], live.variables))
        assert match is not None
        selector, label = match.groups()
        values = {s.labels.get(label) for s in live.prom.query(selector).series}
        assert live.variables[variable["name"]] in values, (variable["name"], values)


@pytest.mark.slow
def test_alert_expressions_live(live: Live) -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert not live.quiet_alert_results[name], f"{name} fires while nothing happens"
        assert live.prom.query(rule["expr"]), f"{name} does not fire on its incident"
    assert live.quiet_alerts == []


@pytest.mark.slow
def test_alerts_fire_live(live: Live) -> None:
    expected = {rule["alert"]: rule for rule in alert_rules()}
    deadline = time.monotonic() + 30
    while True:
        active = {a["labels"]["alertname"]: a for a in live.prom.alerts()}
        if expected.keys() <= active.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert sorted(expected.keys() - active.keys()) == []
    for name, alert in active.items():
        assert alert["state"] == ("pending" if "for" in expected[name] else "firing"), name
        assert alert["labels"]["job"] == live.prom.job
        for key in ("summary", "description", "runbook"):
            text = alert["annotations"][key]
            assert text and "<no value>" not in text and "{{" not in text, (name, key, text)
        if "handler" in alert["labels"]:
            assert alert["labels"]["handler"] in alert["annotations"]["summary"]
    for group in live.prom.rule_groups():
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # The dashboard's annotation query sees the firing alerts.
    (annotation,) = [a for a in load_dashboard()["annotations"]["list"] if "expr" in a]
    assert live.prom.query(grafana_expr(annotation["expr"], live.variables))


# -- against `loopwatch demo --serve` -----------------------------------------------------------


def _demo_can_serve() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "loopwatch", "demo", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0 and "--serve" in proc.stdout


def _wait_for_metrics(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer within 60s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_dashboard_against_demo(tmp_path: Path) -> None:
    require_binary("prometheus")
    if not _demo_can_serve():
        pytest.skip("needs loopwatch demo --serve")
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "loopwatch", "demo", "--serve", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        _wait_for_metrics(f"http://127.0.0.1:{port}/metrics", demo, log)
        target = f"127.0.0.1:{port}"
        with PrometheusServer([target], job="loopwatch-demo", rule_files=[ALERTS]) as prom:
            prom.wait_for_scrapes(2)
            variables = {"job": prom.job, "instance": target}
            for rule in alert_rules():
                prom.query(rule["expr"])  # raises if Prometheus rejects it
            # Rates and quantiles need a traffic burst of the demo between two scrapes:
            # poll (bounded) until every panel has shown data and the alert is active.
            deadline = time.monotonic() + 30
            while True:
                problems = dashboard_problems(prom, variables, NOT_PRODUCED_BY_DEMO)
                states = {a["labels"]["alertname"]: a["state"] for a in prom.alerts()}
                reentry = states.get("LoopwatchReentry")
                if (not problems and reentry) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert not problems, "\n".join(problems)
            assert reentry in ("pending", "firing"), states
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=5)


# -- gunicorn in multiprocess mode ------------------------------------------------------------

GUNICORN_APP = '''
"""A bare ASGI app for the gunicorn config test."""
from __future__ import annotations

import json
import math
import os

from prometheus_client import Gauge

import loopwatch._monitor
from loopwatch.metrics import make_asgi_app

WORKERS = Gauge("lwtest_live_workers", "live workers", multiprocess_mode="livesum")
WORKERS.set(1)
metrics_app = make_asgi_app()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/metrics":
        await metrics_app(scope, receive, send)
        return
    body = json.dumps(
        {"pid": os.getpid(), "installed": loopwatch._monitor.current() is not None}
    ).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def _gauge_value(metrics: str, name: str) -> float | None:
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else None


@pytest.mark.slow
def test_gunicorn_config_multiprocess(tmp_path: Path) -> None:
    gunicorn_config = pytest.importorskip("gunicorn.config")

    pytest.importorskip("uvicorn")
    import loopwatch

    if not hasattr(loopwatch, "install") or not hasattr(loopwatch, "_monitor"):
        pytest.skip("needs loopwatch.install")
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    # Values left by a previous run: the config must wipe them before workers start.
    subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            from prometheus_client import Counter
            Counter("lwtest_stale", "stale").inc(7)
        """),
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
        check=True,
    )
    assert list(multiproc.glob("*.db"))
    (tmp_path / "lwtest_app.py").write_text(GUNICORN_APP, encoding="utf-8")
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "WEB_CONCURRENCY": "2",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    # Under gunicorn the app's /metrics serves every worker: the config must keep the
    # workers from all binding this port.
    ignored_port = free_port()
    env["LOOPWATCH_METRICS_PORT"] = str(ignored_port)
    command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)]
    command += ["-b", f"127.0.0.1:{port}", "lwtest_app:app"]
    if "control_socket_disable" in gunicorn_config.Config().settings:
        # gunicorn >= 24 opens a control socket in the home directory: shared otherwise.
        command.append("--no-control-socket")
    with log.open("wb") as out:
        server = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45

        def live_workers() -> float | None:
            return _gauge_value(_get(f"{base}/metrics").decode(), "lwtest_live_workers")

        def wait(condition: str, check: Any) -> None:
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    break
                try:
                    if check():
                        return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.2)
            pytest.fail(f"gunicorn: {condition} did not happen:\n{log.read_text()[-4000:]}")

        wait("two workers up", lambda: live_workers() == 2)
        metrics = _get(f"{base}/metrics").decode()
        assert "lwtest_stale" not in metrics, "stale multiprocess files were not wiped"
        assert "loopwatch_info{" in metrics
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{ignored_port}/metrics")
        answer = json.loads(_get(f"{base}/"))
        assert answer["installed"] is True
        # A worker that dies is marked dead: its live gauge stops counting.
        victim = int(answer["pid"])
        # loopwatch's own live gauges are in the worker's files too: loopwatch_info
        # (livemax), and the pool, task and in-flight gauges (livesum).
        assert list(multiproc.glob(f"gauge_livemax_{victim}.db")), sorted(multiproc.iterdir())
        os.kill(victim, signal.SIGKILL)
        wait(
            "the dead worker's live gauge files removed",
            lambda: not list(multiproc.glob(f"gauge_live*_{victim}.db")),
        )
        wait("a replacement worker up", lambda: live_workers() == 2)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
