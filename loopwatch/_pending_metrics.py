"""The metrics of a process that has not imported prometheus_client (yet).

prometheus_client and its exposition import a third of the standard library (http.server,
urllib, email, wsgiref): ~40-60 ms of every Python that installs loopwatch. Nothing can read
a metric before prometheus_client is imported, so until then the monitor counts into a
:class:`PendingMetrics`: plain counts by name and labels, histograms as bucket counts, the
state gauges' last values. The moment prometheus_client is imported (by the program, an
adapter, a ``metrics_port``) the monitor builds the real metrics and :meth:`hand_over`
adds every count to them, so a scrape sees everything from the start. A script, a test
run or a worker that never exposes metrics never pays for them.

No import of prometheus_client, nor of ``loopwatch.metrics``, here.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._incidents import Incident

__all__ = [
    "DURATION_BUCKETS",
    "HISTOGRAMS",
    "LAG_BUCKETS",
    "STALL_BUCKETS",
    "WAIT_BUCKETS",
    "PendingMetrics",
    "PrivateRegistry",
    "incident_samples",
]

# The histograms' buckets (here: pending histograms count into the same ones).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Waits for a pool thread: a free thread answers in well under a millisecond; 0.1 is the
# default block threshold, so "waits past the threshold" is one bucket away in a query.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_BUCKETS = {
    "event_loop_lag_seconds": LAG_BUCKETS,
    "reentry_stall_seconds": STALL_BUCKETS,
    "threadpool_wait_seconds": WAIT_BUCKETS,
}
HISTOGRAMS = frozenset(_BUCKETS)  # the Metrics attributes that are histograms
# Distinct label sets kept per pending process; past it, handlers fold into __other__
# (the real metrics' label cap folds them at the hand-over anyway).
_MAX_SERIES = 10_000

Sample = tuple[str, dict[str, str], float]  # (Metrics attribute, labels, amount)


def incident_samples(incident: Incident) -> list[Sample]:
    """What one occurrence of ``incident`` adds to the metrics: ``(attribute, labels,
    amount)``, a counter's increment or a histogram's observation (``reentry_stall_seconds``).
    """
    framework, handler, kind = incident.framework, incident.handler, incident.kind
    at = {"framework": framework, "handler": handler}
    if kind in ("reentry", "cross_thread_run"):
        samples: list[Sample] = [(
            "reentry_total",
            {"api": incident.api, "action": incident.action, **at},
            1.0,
        )]
        if incident.duration is not None:
            samples.append(
                ("reentry_stall_seconds", {"api": incident.api, **at}, incident.duration)
            )
        return samples
    if kind == "blocked_loop":
        return [
            ("event_loop_blocks_total", at, 1.0),
            ("event_loop_blocked_seconds_total", at, incident.duration or 0.0),
        ]
    if kind == "unretrieved_exception":
        exception = incident.detail.get("exception", "unknown")
        return [("task_exceptions_unretrieved_total", {**at, "exception": exception}, 1.0)]
    if kind == "never_awaited":
        return [("coroutines_never_awaited_total", at, 1.0)]
    if kind == "stuck_handler":
        return [("stuck_handlers_total", at, 1.0)]
    return []


class PrivateRegistry:
    """A registry of the monitor's own, made only if metrics are ever built.

    For an install whose metrics nobody reads and that must not touch prometheus_client's
    default registry (the pytest plugin's): with it, neither prometheus_client nor a
    ``CollectorRegistry`` is made until something imports prometheus_client.
    """

    def __init__(self) -> None:
        self._made: Any = None
        self._lock = threading.Lock()

    def resolve(self) -> Any:
        """The ``CollectorRegistry`` this stands for (made on the first call)."""
        with self._lock:
            if self._made is None:
                from prometheus_client import CollectorRegistry

                self._made = CollectorRegistry()
            return self._made


class _PendingHistogram:
    """The lag histogram's child before the hand-over (the watchdog writes it directly)."""

    __slots__ = ("_key", "_pending")

    def __init__(self, pending: PendingMetrics, key: tuple[str, tuple[tuple[str, str], ...]]):
        self._pending = pending
        self._key = key

    def observe(self, amount: float) -> None:
        self._pending._observe(self._key, amount)


class PendingMetrics:
    """What the monitor counts before prometheus_client is imported; see the module."""

    # The registry it will go to is the monitor's configuration's; nothing is built yet.
    registry = None

    def __init__(self, label_cap: int = 100) -> None:
        self.label_cap = label_cap
        self._lock = threading.Lock()
        self._target: Any = None  # the real metrics, once handed over
        # (attribute, sorted labels) -> amount, or a histogram's [bucket counts..., sum]
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._histograms: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self._errors: dict[str, int] = {}
        self._info: tuple[tuple[str, ...], tuple[str, ...] | None] | None = None
        self._in_flight: dict[tuple[str, str], int] | None = None
        self._refreshes: dict[str, Callable[[], None]] = {}

    @property
    def target(self) -> Any:
        """The real metrics everything went to, or ``None`` before the hand-over."""
        return self._target

    # -- what the core writes -------------------------------------------------------------

    def record(self, incident: Incident) -> None:
        """Count one occurrence of ``incident`` (as :meth:`Metrics.record` would)."""
        samples = incident_samples(incident)
        with self._lock:
            target = self._target
            if target is None:
                for attribute, labels, amount in samples:
                    key = (attribute, self._series(labels))
                    if attribute in _BUCKETS:
                        self._add_observation(key, amount)
                    else:
                        self._counts[key] = self._counts.get(key, 0.0) + amount
                return
        target.record(incident)

    def count_internal_error(self, component: str) -> None:
        """One failure inside loopwatch (``loopwatch_internal_errors_total``)."""
        with self._lock:
            target = self._target
            if target is None:
                self._errors[component] = self._errors.get(component, 0) + 1
                return
        target.count_internal_error(component)

    def child(self, metric: Any, **labels: str) -> Any:
        """The lag histogram (the one metric the core writes outside :meth:`record`)."""
        if metric == "event_loop_lag_seconds" and not labels:
            return _PendingHistogram(self, (metric, ()))
        target = self._hand_over_now()
        return target.child(getattr(target, metric) if isinstance(metric, str) else metric,
                            **labels)

    @property
    def event_loop_lag_seconds(self) -> Any:
        """Stands for the lag histogram until the hand-over (see :meth:`child`)."""
        target = self._target
        return "event_loop_lag_seconds" if target is None else target.event_loop_lag_seconds

    def observe_threadpool_wait(self, framework: str, handler: str, seconds: float) -> None:
        """How long one sync call waited for a pool thread."""
        key = ("threadpool_wait_seconds", (("framework", framework), ("handler", handler)))
        self._observe(key, seconds)

    def set_info(self, labels: tuple[str, ...], previous: tuple[str, ...] | None) -> None:
        """This process's ``loopwatch_info`` series, set at the hand-over."""
        with self._lock:
            target = self._target
            if target is None:
                self._info = (labels, None)  # nothing was set before: nothing to end
                return
        target.set_info(labels, previous)

    def clear_info(self, labels: tuple[str, ...]) -> None:
        """End the ``loopwatch_info`` series ``labels``."""
        with self._lock:
            target = self._target
            if target is None:
                if self._info is not None and self._info[0] == labels:
                    self._info = None
                return
        target.clear_info(labels)

    def set_in_flight(self, counts: dict[tuple[str, str], int]) -> None:
        """Handlers running long now, by (framework, handler): the last value is kept."""
        with self._lock:
            target = self._target
            if target is None:
                self._in_flight = dict(counts)
                return
        target.set_in_flight(counts)

    def set_threadpool(self, *args: Any, **kwargs: Any) -> None:
        """Set only when metrics are collected, which cannot happen before the hand-over."""
        target = self._target
        if target is not None:
            target.set_threadpool(*args, **kwargs)

    def set_tasks(self, counts: dict[tuple[str, str], int]) -> None:
        """Set only when metrics are collected (as :meth:`set_threadpool`)."""
        target = self._target
        if target is not None:
            target.set_tasks(counts)

    def before_collect(self, name: str, refresh: Callable[[], None] | None) -> None:
        """Run ``refresh`` whenever the real metrics are collected (``None``: stop)."""
        with self._lock:
            target = self._target
            if target is None:
                if refresh is None:
                    self._refreshes.pop(name, None)
                else:
                    self._refreshes[name] = refresh
                return
        target.before_collect(name, refresh)

    def move_refreshes(self, to: Any) -> None:
        """Hand every refresh of :meth:`before_collect` to ``to`` (a registry change)."""
        with self._lock:
            taken, self._refreshes = self._refreshes, {}
            target = self._target
        if target is not None:
            target.move_refreshes(to)
        for name, refresh in taken.items():
            to.before_collect(name, refresh)

    def __getattr__(self, name: str) -> Any:
        # Anything else (a metric an adapter writes, the mirror of OpenTelemetry) needs the
        # real metrics: build them now.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._hand_over_now(), name)

    # -- the hand-over ---------------------------------------------------------------------

    #: Called (by the monitor) to build the real metrics and hand over when something
    #: needs them at once; it returns them.
    build: Callable[[], Any] | None = None

    def _hand_over_now(self) -> Any:
        target = self._target
        if target is not None:
            return target
        build = self.build
        if build is None:
            raise AttributeError("these pending metrics have no way to build the real ones")
        return build()

    def hand_over(self, target: Any, add_counts: Callable[[Any, list[float]], None]) -> None:
        """Add everything counted so far to ``target`` (the real metrics) and forward every
        later call there. ``add_counts(child, [bucket counts..., sum])`` adds a pending
        histogram's counts to a real histogram's child."""
        with self._lock:
            if self._target is not None:
                return
            self._target = target
            counts, self._counts = self._counts, {}
            histograms, self._histograms = self._histograms, {}
            errors, self._errors = self._errors, {}
            info, self._info = self._info, None
            in_flight, self._in_flight = self._in_flight, None
            refreshes, self._refreshes = self._refreshes, {}
        for (attribute, labels), amount in counts.items():
            target.child(getattr(target, attribute), **dict(labels)).inc(amount)
        for (attribute, labels), values in histograms.items():
            add_counts(target.child(getattr(target, attribute), **dict(labels)), values)
        for component, count in errors.items():
            for _ in range(count):
                target.count_internal_error(component)
        if info is not None:
            target.set_info(*info)
        if in_flight is not None:
            target.set_in_flight(in_flight)
        for name, refresh in refreshes.items():
            target.before_collect(name, refresh)

    # -- internals -------------------------------------------------------------------------

    def _series(self, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        series = tuple(sorted(labels.items()))
        if len(self._counts) + len(self._histograms) >= _MAX_SERIES and "handler" in labels:
            series = tuple(sorted({**labels, "handler": "__other__"}.items()))
        return series

    def _observe(self, key: tuple[str, tuple[tuple[str, str], ...]], amount: float) -> None:
        with self._lock:
            target = self._target
            if target is None:
                self._add_observation(key, amount)
                return
        attribute, labels = key
        target.child(getattr(target, attribute), **dict(labels)).observe(amount)

    def _add_observation(
        self, key: tuple[str, tuple[tuple[str, str], ...]], amount: float
    ) -> None:
        # Called with the lock held. [count per bucket (the last: +Inf)..., sum]
        bounds = _BUCKETS[key[0]]
        values = self._histograms.get(key)
        if values is None:
            values = self._histograms[key] = [0.0] * (len(bounds) + 2)
        values[bisect_left(bounds, amount)] += 1
        values[-1] += amount
