"""OpenTelemetry: incidents as span events, metrics as OTel instruments, trace ids in JSON logs.

The SDK's in-memory span exporter and metric reader stand in for a backend; FastAPI is
instrumented by opentelemetry-instrumentation-fastapi and served by uvicorn on 127.0.0.1.
One test ships the metrics with the real OTLP/HTTP exporter to a receiver on 127.0.0.1 that
decodes them with opentelemetry-proto.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from helpers import LOOP_KINDS, serve_uvicorn, wait_for
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _logging
from loopwatch._compat import prometheus as prom
from loopwatch._otel import instrument_name
from loopwatch.adapters.fastapi import instrument as lw_instrument

ROOT = Path(__file__).resolve().parent.parent


# -- helpers -------------------------------------------------------------------------------


class Tracing:
    """A tracer provider of its own per test, exporting into memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def server_span(self, route: str) -> ReadableSpan:
        found = [
            s for s in self.spans()
            if s.kind == SpanKind.SERVER and (s.attributes or {}).get("http.route") == route
        ]
        assert len(found) == 1, [(s.name, s.kind, s.attributes) for s in self.spans()]
        return found[0]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    t = Tracing()
    yield t
    t.provider.shutdown()


@pytest.fixture
def reader() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    yield metric_reader, provider
    provider.shutdown()


def events(span: ReadableSpan, name: str) -> list[Any]:
    return [e for e in span.events if e.name == name]


async def _answer() -> int:
    await asyncio.sleep(0)
    return 42


def _nested_line() -> int:
    return _app_lines["nested"]


_app_lines: dict[str, int] = {}
_waiting = threading.Event()


def make_app(tracing: Tracing, registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()

    @app.get("/nested")
    async def nested() -> dict[str, int]:
        _app_lines["nested"] = sys._getframe().f_lineno + 1
        value = asyncio.run(_answer())  # a nested run inside the request's task
        return {"value": value}

    @app.get("/block")
    async def block() -> dict[str, str]:
        _app_lines["block"] = sys._getframe().f_lineno + 1
        time.sleep(0.3)  # holds the loop: every other request waits
        return {"ok": "blocked"}

    @app.get("/wait")
    async def wait() -> dict[str, str]:
        _waiting.set()
        await asyncio.sleep(0.6)  # in flight, awaiting, while /block holds the loop
        return {"ok": "waited"}

    lw_instrument(app, metrics_path=None, registry=registry)
    # Added last, so outermost: the server span is current in every loopwatch hook.
    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracing.provider)
    return app


def doc_event_keys() -> dict[str, set[str]]:
    """Event name -> attribute keys, from the example in docs/opentelemetry.md."""
    text = (ROOT / "docs" / "opentelemetry.md").read_text()
    start = text.index("```json\n[") + len("```json\n")
    spans = json.loads(text[start : text.index("\n```", start)])
    return {
        event["name"]: {a["key"] for a in event["attributes"]}
        for span in spans
        for event in span["events"]
    }


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Instrument name -> its data points, from one collection."""
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "loopwatch":
                continue
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


# -- off by default ------------------------------------------------------------------------


def _modules_after(code: str, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    environ.update(env, PYTHONPATH=str(ROOT))
    script = code + "\nimport sys; print(sorted(m for m in sys.modules if 'opentelemetry' in m))"
    result = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout.strip().replace("'", '"'))
    return loaded


def test_off_by_default_imports_nothing_of_opentelemetry() -> None:
    assert _modules_after("import loopwatch; loopwatch.install()") == []
    # The same program with the option on does import it: the check above can fail.
    assert "opentelemetry.trace" in _modules_after("import loopwatch; loopwatch.install(otel=True)")
    assert "opentelemetry.trace" in _modules_after(
        "import loopwatch; loopwatch.install()", LOOPWATCH_OTEL="1"
    )


def test_loopwatch_run_otel_flag_turns_it_on() -> None:
    code = (
        "import sys; from loopwatch import _monitor; m = _monitor.current(); "
        "print(m.config.otel, m.otel is not None, 'opentelemetry.trace' in sys.modules)"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    environ["PYTHONPATH"] = str(ROOT)
    on = subprocess.run(
        [sys.executable, "-m", "loopwatch", "run", "--otel", "--", sys.executable, "-c", code],
        env=environ, capture_output=True, text=True, timeout=60,
    )
    assert on.stdout.split() == ["True", "True", "True"], on.stderr
    off = subprocess.run(
        [sys.executable, "-m", "loopwatch", "run", "--", sys.executable, "-c", code],
        env=environ, capture_output=True, text=True, timeout=60,
    )
    assert off.stdout.split() == ["False", "False", "False"], off.stderr


def test_without_the_api_installed_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if it were not installed
        "import loopwatch\n"
        "try:\n    loopwatch.install(otel=True)\n"
        "except loopwatch.ConfigError as exc:\n    print(exc)\n"
        "print(loopwatch._monitor.current())"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    environ["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.splitlines() == [
        "otel=True needs the OpenTelemetry API: pip install 'loopwatch[otel]'", "None",
    ], result.stderr


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPWATCH_OTEL", "maybe")
    with pytest.raises(loopwatch.ConfigError, match="LOOPWATCH_OTEL='maybe'"):
        loopwatch.install()


# -- span events through a real server -----------------------------------------------------


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_nested_run_is_an_event_on_the_request_span(
    loop: str, tracing: Tracing, registry: CollectorRegistry
) -> None:
    loopwatch.install(otel=True, registry=registry)
    app = make_app(tracing, registry)
    with serve_uvicorn(app, loop) as url:
        assert httpx.get(f"{url}/nested", timeout=10).json() == {"value": 42}
        wait_for(lambda: any(s.kind == SpanKind.SERVER for s in tracing.spans()))
    span = tracing.server_span("/nested")
    (event,) = events(span, "loopwatch.reentry")
    attrs = dict(event.attributes or {})
    assert attrs["code.function.name"] == "nested"
    assert attrs["code.file.path"] == __file__
    assert attrs["code.line.number"] == _nested_line()
    assert attrs["loopwatch.api"] == "asyncio.run"
    assert attrs["loopwatch.action"] == "offloaded"
    assert attrs["loopwatch.handler"] == "GET /nested"
    assert attrs["loopwatch.framework"] == "fastapi"
    assert attrs["loopwatch.duration"] > 0
    assert set(attrs) == doc_event_keys()["loopwatch.reentry"]  # the docs show these
    # Observed, not altered: the instrumentation's name and status stand.
    assert span.name == "GET /nested"
    assert span.status.status_code == StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= event.timestamp <= span.end_time


@pytest.mark.parametrize("loop", LOOP_KINDS)
def test_blocked_loop_is_on_the_blocking_request_span_not_its_neighbour(
    loop: str, tracing: Tracing, registry: CollectorRegistry
) -> None:
    loopwatch.install(otel=True, registry=registry, block_threshold=0.1)
    _waiting.clear()
    app = make_app(tracing, registry)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(_logging.JsonFormatter())
    _logging.logger.addHandler(handler)
    with contextlib.ExitStack() as stack:
        stack.callback(_logging.logger.removeHandler, handler)
        url = stack.enter_context(serve_uvicorn(app, loop))
        results: dict[str, Any] = {}

        def get(path: str) -> None:
            results[path] = httpx.get(f"{url}{path}", timeout=10).json()

        waiter = threading.Thread(target=get, args=("/wait",))
        waiter.start()
        # /wait is in flight (its span open and current in its task) before /block starts.
        assert _waiting.wait(10)
        get("/block")
        waiter.join(10)
        assert results == {"/wait": {"ok": "waited"}, "/block": {"ok": "blocked"}}
        wait_for(lambda: len([s for s in tracing.spans() if s.kind == SpanKind.SERVER]) == 2)
    blocking, waiting = tracing.server_span("/block"), tracing.server_span("/wait")
    assert waiting.start_time is not None and blocking.start_time is not None
    assert waiting.end_time is not None and blocking.end_time is not None
    # They overlapped: the neighbour's span was open, current in its own task, all along.
    assert waiting.start_time < blocking.start_time < blocking.end_time < waiting.end_time
    (event,) = events(blocking, "loopwatch.blocked_loop")
    attrs = dict(event.attributes or {})
    assert attrs["code.function.name"] == "block"
    assert attrs["code.line.number"] == _app_lines["block"]
    assert attrs["loopwatch.handler"] == "GET /block"
    assert attrs["loopwatch.blocked_for"] >= 0.1
    assert set(attrs) == doc_event_keys()["loopwatch.blocked_loop"]  # the docs show these
    assert blocking.start_time <= event.timestamp <= blocking.end_time
    assert events(waiting, "loopwatch.blocked_loop") == []
    own = os.path.dirname(loopwatch.__file__) + os.sep
    assert own not in str(attrs["code.stacktrace"])  # the stack shows the app, not loopwatch
    # The incident's log line, written when the block ended, joins the same span.
    blocked = [
        json.loads(text) for text in lines.getvalue().splitlines()
        if json.loads(text)["loopwatch"]["kind"] == "blocked_loop"
    ]
    mine = [b for b in blocked if b["loopwatch"]["handler"] == "GET /block"]
    assert len(mine) == 1, blocked
    line = mine[0]
    context = blocking.get_span_context()
    assert context is not None
    assert line["trace_id"] == trace.format_trace_id(context.trace_id)
    assert line["span_id"] == trace.format_span_id(context.span_id)
    assert line["loopwatch"]["duration"] >= 0.25
    for span in (blocking, waiting):
        assert span.status.status_code == StatusCode.UNSET
    assert (blocking.name, waiting.name) == ("GET /block", "GET /wait")


def test_event_goes_to_a_users_own_span_and_not_to_an_ended_one(
    tracing: Tracing, registry: CollectorRegistry
) -> None:
    monitor = loopwatch.install(otel=True, registry=registry)
    assert monitor.otel is not None

    async def main() -> None:
        with tracing.tracer.start_as_current_span("mine"):
            asyncio.run(_answer())
        ended = tracing.tracer.start_span("ended")
        ended.end()
        with trace.use_span(ended):
            asyncio.run(_answer())  # its span is over: nothing added, nothing raised

    asyncio.run(main())
    (mine,) = [s for s in tracing.spans() if s.name == "mine"]
    assert [e.name for e in mine.events] == ["loopwatch.reentry"]
    (ended_span,) = [s for s in tracing.spans() if s.name == "ended"]
    assert ended_span.events == ()
    assert monitor.otel.dropped_events == 1
    # The incident itself is kept (and logged, and counted) all the same.
    assert len([i for i in loopwatch.incidents() if i.kind == "reentry"]) == 2


def test_lost_task_exception_goes_on_the_tasks_span_not_the_current_one(
    tracing: Tracing, registry: CollectorRegistry
) -> None:
    loopwatch.install(otel=True, registry=registry)

    async def fail() -> None:
        raise ValueError("nobody looked")

    async def main() -> None:
        with tracing.tracer.start_as_current_span("creator"):
            task = asyncio.get_running_loop().create_task(fail())
            await asyncio.sleep(0.01)
            with tracing.tracer.start_as_current_span("bystander"):
                del task
                gc.collect()  # the loop reports the lost exception here

    asyncio.run(main())
    by_name = {s.name: s for s in tracing.spans()}
    (event,) = events(by_name["creator"], "loopwatch.unretrieved_exception")
    assert dict(event.attributes or {})["exception.type"] == "ValueError"
    assert events(by_name["bystander"], "loopwatch.unretrieved_exception") == []


# -- JSON log lines ------------------------------------------------------------------------


def _json_lines(run: Any) -> list[dict[str, Any]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_logging.JsonFormatter())
    _logging.logger.addHandler(handler)
    try:
        run()
    finally:
        _logging.logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("otel", [True, False])
def test_json_log_line_carries_the_span_ids(
    otel: bool, tracing: Tracing, registry: CollectorRegistry
) -> None:
    loopwatch.install(otel=otel, registry=registry, log_format="json")

    async def inside() -> None:
        with tracing.tracer.start_as_current_span("request"):
            asyncio.run(_answer())

    async def outside() -> None:
        asyncio.run(_answer())

    def run() -> None:
        asyncio.run(inside())
        asyncio.run(outside())

    first, second = _json_lines(run)
    (span,) = tracing.spans()
    context = span.get_span_context()
    assert context is not None
    if otel:
        assert first["trace_id"] == trace.format_trace_id(context.trace_id)
        assert first["span_id"] == trace.format_span_id(context.span_id)
        assert len(first["trace_id"]) == 32 and len(first["span_id"]) == 16
    else:
        assert "trace_id" not in first and "span_id" not in first
    assert "trace_id" not in second  # no span current: no ids
    assert first["loopwatch"]["kind"] == "reentry"


# -- metrics -------------------------------------------------------------------------------


def test_instrument_names_follow_the_prometheus_names() -> None:
    assert instrument_name("loopwatch_reentry_total") == ("loopwatch.reentry", "")
    assert instrument_name("loopwatch_reentry_stall_seconds") == ("loopwatch.reentry_stall", "s")
    assert instrument_name("loopwatch_event_loop_blocked_seconds_total") == (
        "loopwatch.event_loop_blocked", "s",
    )
    assert instrument_name("loopwatch_info") == ("loopwatch.info", "")


def test_metrics_reach_the_meter_provider(
    reader: tuple[InMemoryMetricReader, MeterProvider], registry: CollectorRegistry
) -> None:
    metric_reader, provider = reader
    loopwatch.install(
        otel=True, meter_provider=provider, registry=registry, block_threshold=0.05
    )

    async def main() -> None:
        with loopwatch.handler_context("fastapi", "GET /x"):
            asyncio.run(_answer())
            time.sleep(0.2)  # a blocked loop
            await asyncio.sleep(0.1)

    asyncio.run(main())
    points = metric_points(metric_reader)
    (reentry,) = points["loopwatch.reentry"]
    assert reentry.value == 1
    assert dict(reentry.attributes) == {
        "api": "asyncio.run", "action": "offloaded", "framework": "fastapi", "handler": "GET /x",
    }
    (stall,) = points["loopwatch.reentry_stall"]
    assert stall.count == 1 and list(stall.explicit_bounds)[:2] == [0.001, 0.005]
    (blocks,) = points["loopwatch.event_loop_blocks"]
    assert blocks.value == 1 and dict(blocks.attributes)["handler"] == "GET /x"
    (blocked,) = points["loopwatch.event_loop_blocked"]
    assert blocked.value >= 0.15
    (lag,) = points["loopwatch.event_loop_lag"]
    assert lag.count >= 1
    assert any(dict(p.attributes).get("on_reentry") == "offload" for p in points["loopwatch.info"])
    # The Prometheus side counted the same occurrences.
    assert registry.get_sample_value(
        "loopwatch_reentry_total",
        {"api": "asyncio.run", "action": "offloaded", "framework": "fastapi", "handler": "GET /x"},
    ) == 1


def test_lag_still_reaches_the_meter_provider_after_a_registry_change(
    reader: tuple[InMemoryMetricReader, MeterProvider], registry: CollectorRegistry
) -> None:
    metric_reader, provider = reader
    loopwatch.install(otel=True, meter_provider=provider, block_threshold=0.05)
    loopwatch.install(registry=registry)  # the lag histogram moves to this registry

    async def main() -> None:
        time.sleep(0.2)  # a blocked loop: one lag sample at least
        await asyncio.sleep(0)

    asyncio.run(main())
    assert registry.get_sample_value("loopwatch_event_loop_lag_seconds_count")
    (lag,) = metric_points(metric_reader)["loopwatch.event_loop_lag"]
    assert lag.count >= 1


def test_handler_durations_reach_the_meter_provider(
    reader: tuple[InMemoryMetricReader, MeterProvider], registry: CollectorRegistry
) -> None:
    metric_reader, provider = reader
    monitor = loopwatch.install(otel=True, meter_provider=provider, registry=registry)
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    lw_instrument(app, metrics_path=None, registry=registry, handler_metrics=True)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for i in range(3):
                assert (await client.get(f"/items/{i}")).status_code == 200

    asyncio.run(main())
    (point,) = metric_points(metric_reader)["loopwatch.handler_duration"]
    assert point.count == 3
    assert dict(point.attributes) == {
        "framework": "fastapi", "handler": "GET /items/{item_id}", "outcome": "ok",
    }
    assert registry.get_sample_value(
        "loopwatch_handler_duration_seconds_count",
        {"framework": "fastapi", "handler": "GET /items/{item_id}", "outcome": "ok"},
    ) == 3
    # The mirror keeps the child's labels readable: the middleware caches it (label cap).
    metrics = monitor.metrics
    assert metrics is not None
    child = metrics.child(
        metrics.handler_duration_seconds, framework="fastapi", handler="GET /items/{item_id}",
        outcome="ok",
    )
    assert type(child).__name__ == "_MirroredHistogram"
    assert prom.label_values(child) == ("fastapi", "GET /items/{item_id}", "ok")


def test_a_global_provider_set_after_install_is_used() -> None:
    # What `loopwatch run --otel` does: loopwatch first, the app's SDK setup later.
    code = """if True:
        import asyncio
        import loopwatch
        loopwatch.install(otel=True)
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        async def answer():
            return 1
        async def main():
            asyncio.run(answer())
        asyncio.run(main())
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "loopwatch.reentry":
                        print(metric.name, metric.data.data_points[0].value)
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    environ["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.split() == ["loopwatch.reentry", "1.0"], result.stderr


def test_uninstall_detaches_the_instruments(
    reader: tuple[InMemoryMetricReader, MeterProvider], registry: CollectorRegistry
) -> None:
    metric_reader, provider = reader
    monitor = loopwatch.install(otel=True, meter_provider=provider, registry=registry)
    assert monitor.metrics is not None and monitor.metrics._mirror is not None
    loopwatch.uninstall()
    assert monitor.metrics._mirror is None and _logging._trace_ids is None
    assert "loopwatch.info" not in metric_points(metric_reader)


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_metrics_arrive_through_otlp_http(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _Receiver.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/metrics"
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint), export_interval_millis=60_000,
    )])
    try:
        loopwatch.install(otel=True, meter_provider=provider, registry=registry)

        async def main() -> None:
            with loopwatch.handler_context("fastapi", "GET /otlp"):
                asyncio.run(_answer())

        asyncio.run(main())
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
        server.shutdown()
        server.server_close()
        thread.join(5)
    found: dict[str, Any] = {}
    for body in _Receiver.bodies:
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name == "loopwatch":
                    for metric in scope.metrics:
                        found[metric.name] = metric
    reentry = found["loopwatch.reentry"]
    assert reentry.sum.is_monotonic
    (point,) = reentry.sum.data_points
    attrs = {a.key: a.value.string_value for a in point.attributes}
    assert attrs["handler"] == "GET /otlp" and point.as_double == 1
    stall = found["loopwatch.reentry_stall"]
    assert stall.unit == "s" and stall.histogram.data_points[0].count == 1
    assert found["loopwatch.info"].description == "loopwatch build and configuration."
