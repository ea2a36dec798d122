"""OpenTelemetry: incidents as events on the span they happened in, metrics as OTel instruments.

Imported only when ``otel`` is on (``install(otel=True)``, ``LOOPWATCH_OTEL=1``,
``loopwatch run --otel``); the rest of loopwatch never imports OpenTelemetry. It uses the
API alone (``opentelemetry-api``): which SDK, exporter or vendor (Logfire, a collector)
receives the data stays the application's choice, and providers set up after install are
picked up (the API's proxies forward to them).

Spans. Each incident becomes an event named ``loopwatch.<kind>`` on the span current in
the work it belongs to: the handler's task for a nested run, the task whose exception was
lost, the task that held a blocked loop. A blocked loop is seen from the watchdog thread
while it lasts; the event goes on the span of the task that was running then (read from
that task's context), at that moment, because the task usually ends its span as soon as the
blocking call returns. Spans are only added to: never renamed, never given a status, never
ended; a span that is not recording (ended, or sampled out) gets nothing.

Metrics. Every Prometheus metric of :class:`~loopwatch.metrics.Metrics` has an OTel
twin named ``loopwatch.<name>``, where ``<name>`` is the Prometheus name without the
``loopwatch_`` prefix and without the ``_total`` and ``_seconds`` suffixes (seconds become
the unit ``s``), with the same label keys as attributes: an OTel-to-Prometheus exporter
turns them back into the same names. Counters and gauges are observed from the Prometheus
values when the reader collects (nothing per occurrence); histograms are recorded as they
are observed (the Prometheus children are wrapped while OTel is on). Metrics added to
``Metrics`` later are mirrored the same way without being listed here.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from ._compat import prometheus as prom
from ._frames import Frame

if TYPE_CHECKING:
    from ._context import Labels
    from ._incidents import Incident
    from ._pending_metrics import PendingMetrics
    from .metrics import Metrics, NullMetrics

__all__ = ["OtelSink", "instrument_name", "trace_ids"]

_NAMESPACE = "loopwatch"
# Stable OpenTelemetry semantic-convention names (code.* became stable with these names;
# the older code.filepath/code.lineno/code.function are deprecated aliases of them).
CODE_FILE = "code.file.path"
CODE_LINE = "code.line.number"
CODE_FUNCTION = "code.function.name"
CODE_STACK = "code.stacktrace"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"


def instrument_name(prometheus_name: str) -> tuple[str, str]:
    """The OTel instrument name and unit of a Prometheus metric name.

    ``loopwatch_reentry_total`` -> (``loopwatch.reentry``, ``""``);
    ``loopwatch_event_loop_blocked_seconds_total`` -> (``loopwatch.event_loop_blocked``, ``s``).
    """
    name = prometheus_name
    if name.startswith(_NAMESPACE + "_"):
        name = name[len(_NAMESPACE) + 1 :]
    name = name.removesuffix("_total")
    unit = ""
    if name.endswith("_seconds"):
        name, unit = name[: -len("_seconds")], "s"
    return f"{_NAMESPACE}.{name}", unit


def trace_ids() -> tuple[str, str] | None:
    """The current span's trace and span id as OTel writes them (hex), or ``None``."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def _stack_text(stack: Iterable[Frame]) -> str:
    return "\n".join(f"{f.file}:{f.line} in {f.function}" for f in stack)


def _site_attributes(site: Frame | None, stack: Iterable[Frame]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if site is not None:
        out[CODE_FILE] = site.file
        out[CODE_LINE] = site.line
        out[CODE_FUNCTION] = site.function
    text = _stack_text(stack)
    if text:
        out[CODE_STACK] = text
    return out


def _exception_attributes(detail: dict[str, str]) -> dict[str, str]:
    """``exception.*`` from what an incident's detail says about an exception."""
    name = detail.get("exception", "")
    message = ""
    result = detail.get("result", "")
    if not name and result.startswith("failed with "):
        # A nested run's outcome: "failed with ValueError: the message".
        name, _, message = result[len("failed with ") :].partition(": ")
    if not name:
        return {}
    out = {EXCEPTION_TYPE: name}
    if message:
        out[EXCEPTION_MESSAGE] = message
    return out


def event_attributes(incident: Incident, count: int) -> dict[str, Any]:
    """The attributes of an incident's span event."""
    out = _site_attributes(incident.site, incident.stack)
    out.update(_exception_attributes(incident.detail))
    for key, value in (
        ("api", incident.api),
        ("action", incident.action),
        ("framework", incident.framework),
        ("handler", incident.handler),
        ("task", incident.task),
        ("thread", incident.thread),
        ("loop", incident.loop),
        ("cause", incident.detail.get("cause")),
        ("hint", incident.hint),
    ):
        if value:
            out[f"{_NAMESPACE}.{key}"] = value
    if incident.duration is not None:
        out[f"{_NAMESPACE}.duration"] = incident.duration
    out[f"{_NAMESPACE}.count"] = count
    return out


class _MirroredHistogram:
    """A Prometheus histogram child that also records into an OTel histogram."""

    __slots__ = ("__wrapped__", "_attributes", "_child", "_otel")

    def __init__(self, child: Any, otel: Any, attributes: dict[str, str]) -> None:
        self._child = child
        self.__wrapped__ = child  # what label_values() reads the labels of
        self._otel = otel
        self._attributes = attributes

    def observe(self, amount: float, *args: Any, **kwargs: Any) -> None:
        self._child.observe(amount, *args, **kwargs)
        self._otel.record(amount, self._attributes)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            # Not the child's internals: a fast path built on them would skip the mirror.
            raise AttributeError(name)
        return getattr(self._child, name)  # anything else (time(), labels) is Prometheus's


class _Instruments:
    """The OTel instruments on one meter provider, made once per process.

    OTel offers no way to remove an instrument, so a second install (or a reconfigure)
    reuses these; the observable ones read whichever sink is attached, nothing when none.
    """

    def __init__(self, meter_provider: Any) -> None:
        from . import __version__

        self.meter = otel_metrics.get_meter(
            "loopwatch", __version__, meter_provider=meter_provider
        )
        self.sink: OtelSink | None = None
        self._lock = threading.Lock()
        self._histograms: dict[str, Any] = {}
        self._observed: set[str] = set()

    def observe(self, attribute: str, metric: Counter | Gauge) -> None:
        """An observable counter or gauge reading ``Metrics.<attribute>`` at collection."""
        family = next(iter(metric.describe()))
        name, unit = instrument_name(family.name)
        with self._lock:
            if name in self._observed:
                return
            self._observed.add(name)
        is_counter = isinstance(metric, Counter)
        sample_name = family.name + ("_total" if is_counter else "")

        def callback(options: Any) -> Iterable[otel_metrics.Observation]:
            sink = self.sink
            current = getattr(sink.metrics(), attribute, None) if sink is not None else None
            if current is None or not isinstance(current, Counter | Gauge):
                return []
            return [
                otel_metrics.Observation(sample.value, dict(sample.labels))
                for fam in current.collect()
                for sample in fam.samples
                if sample.name == sample_name
            ]

        create = (
            self.meter.create_observable_counter
            if is_counter
            else self.meter.create_observable_gauge
        )
        create(name, callbacks=[callback], unit=unit, description=family.documentation)

    def histogram(self, metric: Histogram) -> Any:
        """The OTel histogram twin of a Prometheus histogram (same bucket bounds)."""
        family = next(iter(metric.describe()))
        instrument = self._histograms.get(family.name)
        if instrument is None:
            with self._lock:
                instrument = self._histograms.get(family.name)
                if instrument is None:
                    name, unit = instrument_name(family.name)
                    bounds = [b for b in prom.bucket_bounds(metric) if b != float("inf")]
                    instrument = self.meter.create_histogram(
                        name, unit=unit, description=family.documentation,
                        explicit_bucket_boundaries_advisory=bounds or None,
                    )
                    self._histograms[family.name] = instrument
        return instrument


# Meter provider (None: the global one) -> its instruments. Providers are few and live as
# long as the process.
_instruments: dict[int, tuple[Any, _Instruments]] = {}
_instruments_lock = threading.Lock()


def _instruments_for(meter_provider: Any) -> _Instruments:
    key = id(meter_provider)
    with _instruments_lock:
        found = _instruments.get(key)
        if found is None or found[0] is not meter_provider:
            found = (meter_provider, _Instruments(meter_provider))
            _instruments[key] = found
        return found[1]


class OtelSink:
    """The OpenTelemetry side of one installed monitor: span events and instruments."""

    def __init__(
        self,
        metrics: Callable[[], Metrics | NullMetrics | PendingMetrics | None],
        meter_provider: Any = None,
    ) -> None:
        self.metrics = metrics
        self.meter_provider = meter_provider
        self._instruments = _instruments_for(meter_provider)
        self._lock = threading.Lock()
        # Events not added because their span was not recording (ended or sampled out).
        self.dropped_events = 0

    # -- span events -----------------------------------------------------------------------

    def record(self, incident: Incident, count: int) -> None:
        """Add ``incident`` to the span current here (the monitor runs this in its context)."""
        if incident.kind == "blocked_loop":
            return  # added while the block went on (block_seen); the task may be over now
        when = incident.last_seen - (incident.duration or 0.0)
        self._add(trace.get_current_span(), incident.kind, event_attributes(incident, count), when)

    def block_seen(
        self, context: contextvars.Context, stack: list[Frame], site: Frame | None,
        blocked_for: float, threshold: float, labels: Labels, task: str | None,
        thread: str, loop: str,
    ) -> None:
        """The watchdog found a loop blocked by the task whose context is ``context``.

        Called on the watchdog thread while the block lasts, so the task cannot have ended
        its span meanwhile: the event says where the loop is held and for how long so far.
        """
        span = context.run(trace.get_current_span)
        attributes = _site_attributes(site, stack)
        for key, value in (
            ("framework", labels.framework), ("handler", labels.handler), ("task", task),
            ("thread", thread), ("loop", loop),
        ):
            if value:
                attributes[f"{_NAMESPACE}.{key}"] = value
        attributes[f"{_NAMESPACE}.blocked_for"] = blocked_for
        attributes[f"{_NAMESPACE}.threshold"] = threshold
        # Stamped now, inside the span for sure (the loop got busy a little before the
        # request's span began, sometimes): blocked_for says since when.
        self._add(span, "blocked_loop", attributes, time.time())

    def _add(self, span: Any, kind: str, attributes: dict[str, Any], when: float) -> None:
        if not span.is_recording():
            if span.get_span_context().is_valid:
                with self._lock:
                    self.dropped_events += 1
            return
        span.add_event(f"{_NAMESPACE}.{kind}", attributes, timestamp=int(when * 1e9))

    # -- instruments -----------------------------------------------------------------------

    def start(self) -> None:
        """Attach to the instruments; make those of every counter and gauge of the metrics."""
        self._instruments.sink = self
        metrics = self.metrics()
        if metrics is None:
            return
        for attribute, metric in list(vars(metrics).items()):
            if isinstance(metric, Counter | Gauge):
                self._instruments.observe(attribute, metric)

    def stop(self) -> None:
        """Detach: the observable instruments report nothing until a sink attaches again."""
        if self._instruments.sink is self:
            self._instruments.sink = None

    def mirror(self, metric: Any, labels: dict[str, str], child: Any) -> Any:
        """What :meth:`Metrics.child` hands out while OTel is on (histograms record twice)."""
        if not isinstance(metric, Histogram):
            return child  # counters and gauges are observed at collection
        return _MirroredHistogram(child, self._instruments.histogram(metric), dict(labels))
