"""Prometheus metrics: definitions, the incident sink, per-registry reuse, label caps.

Every counter and histogram of an incident is derived here from the incident itself
(:meth:`Metrics.record`), the one place the core writes them; only the lag probe observes
its histogram directly (hot path). Every metric is created once per registry: a second
app, a rebuilt middleware stack or a reloaded extension gets the same objects back from
:func:`get_metrics`. Exposition (the standalone server, the ASGI app, the task view over
HTTP) lives in ``loopwatch._exposition`` and is re-exported here, its public home.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from . import _pending_metrics as _pending
from . import _runtime
from ._compat import prometheus as prom
from ._errors import LoopwatchError

# Exposition's public home stays here; the names outside __all__ are re-exported for the
# adapters and programs that imported them from this module.
from ._exposition import ASGIApp as ASGIApp
from ._exposition import MetricsServer, make_asgi_app, multiprocess_registry, start_http_server
from ._exposition import render as render
from ._exposition import render_tasks as render_tasks
from ._exposition import tasks_endpoint_enabled as tasks_endpoint_enabled

if TYPE_CHECKING:
    from ._incidents import Incident

__all__ = [
    "METRIC_NAMES",
    "Metrics",
    "MetricsServer",
    "get_metrics",
    "make_asgi_app",
    "multiprocess_registry",
    "start_http_server",
]

METRIC_NAMES = (
    "loopwatch_reentry_total",
    "loopwatch_reentry_stall_seconds",
    "loopwatch_event_loop_lag_seconds",
    "loopwatch_event_loop_blocks_total",
    "loopwatch_event_loop_blocked_seconds_total",
    "loopwatch_task_exceptions_unretrieved_total",
    "loopwatch_coroutines_never_awaited_total",
    "loopwatch_handler_duration_seconds",
    "loopwatch_discord_latency_seconds",
    "loopwatch_label_overflow_total",
    "loopwatch_internal_errors_total",
    "loopwatch_info",
    "loopwatch_threadpool_threads",
    "loopwatch_threadpool_limit",
    "loopwatch_threadpool_waiting",
    "loopwatch_threadpool_wait_seconds",
    "loopwatch_tasks",
    "loopwatch_handlers_in_flight",
    "loopwatch_stuck_handlers_total",
)

# Handler values that are always allowed: they are bounded by construction.
_RESERVED_HANDLERS = frozenset({"__none__", "__unmatched__", "__other__"})
_LAG_BUCKETS, _STALL_BUCKETS = _pending.LAG_BUCKETS, _pending.STALL_BUCKETS
_DURATION_BUCKETS, _WAIT_BUCKETS = _pending.DURATION_BUCKETS, _pending.WAIT_BUCKETS

Metric = Counter | Gauge | Histogram


def _make(
    registry: CollectorRegistry,
    cls: type[Metric],
    name: str,
    doc: str,
    labels: tuple[str, ...],
    **kwargs: Any,
) -> Any:
    """Create a metric on ``registry`` or reuse the one already there with the same shape."""
    # prometheus_client keys counters by their full sample names; look any of them up.
    existing = prom.registered(registry, name)
    if existing is None and cls is Counter:
        existing = prom.registered(registry, name + "_total")
    if existing is not None:
        same = isinstance(existing, cls) and prom.label_names(existing) == labels
        if same:
            return existing
        raise LoopwatchError(
            f"metric {name!r} is already registered on this registry as "
            f"{type(existing).__name__} with labels {prom.label_names(existing)}; "
            f"loopwatch needs a {cls.__name__} with labels {labels}. Pass loopwatch its own "
            "registry (install(registry=CollectorRegistry())) or rename the other metric."
        )
    base = name[: -len("_total")] if cls is Counter and name.endswith("_total") else name
    return cls(base, doc, labels, registry=registry, **kwargs)


class Metrics:
    """All loopwatch metrics on one registry. Obtain it with :func:`get_metrics`."""

    def __init__(self, registry: CollectorRegistry, label_cap: int = 100) -> None:
        self.registry = registry
        self.label_cap = label_cap
        r = registry
        self.reentry_total = _make(
            r,
            Counter,
            "loopwatch_reentry_total",
            "Re-entrant or cross-thread event loop runs intercepted.",
            ("api", "action", "framework", "handler"),
        )
        self.reentry_stall_seconds = _make(
            r,
            Histogram,
            "loopwatch_reentry_stall_seconds",
            "How long an intercepted run stalled its caller (and the loop it ran on).",
            ("api", "framework", "handler"),
            buckets=_STALL_BUCKETS,
        )
        self.event_loop_lag_seconds = _make(
            r,
            Histogram,
            "loopwatch_event_loop_lag_seconds",
            "How long each sampled event loop iteration was busy between two waits for "
            "I/O: the longest a ready callback waited to run.",
            (),
            buckets=_LAG_BUCKETS,
        )
        self.event_loop_blocks_total = _make(
            r,
            Counter,
            "loopwatch_event_loop_blocks_total",
            "Times the event loop was blocked past the threshold.",
            ("framework", "handler"),
        )
        self.event_loop_blocked_seconds_total = _make(
            r,
            Counter,
            "loopwatch_event_loop_blocked_seconds_total",
            "Seconds the event loop spent blocked past the threshold.",
            ("framework", "handler"),
        )
        self.task_exceptions_unretrieved_total = _make(
            r,
            Counter,
            "loopwatch_task_exceptions_unretrieved_total",
            "Task exceptions never retrieved.",
            ("framework", "handler", "exception"),
        )
        self.coroutines_never_awaited_total = _make(
            r,
            Counter,
            "loopwatch_coroutines_never_awaited_total",
            "Coroutines created and never awaited.",
            ("framework", "handler"),
        )
        self.handler_duration_seconds = _make(
            r,
            Histogram,
            "loopwatch_handler_duration_seconds",
            "Duration of requests, events and commands by handler and outcome.",
            ("framework", "handler", "outcome"),
            buckets=_DURATION_BUCKETS,
        )
        self.discord_latency_seconds = _make(
            r,
            Gauge,
            "loopwatch_discord_latency_seconds",
            "discord.py gateway heartbeat latency by shard.",
            ("shard",),
            multiprocess_mode="mostrecent",
        )
        self.label_overflow_total = _make(
            r,
            Counter,
            "loopwatch_label_overflow_total",
            "Label values folded into __other__ past the per-metric cap.",
            ("metric",),
        )
        self.internal_errors_total = _make(
            r,
            Counter,
            "loopwatch_internal_errors_total",
            "Failures inside loopwatch itself (caught; the host kept running).",
            ("component",),
        )
        self.info_gauge = _make(
            r,
            Gauge,
            "loopwatch_info",
            "loopwatch build and configuration.",
            ("version", "python", "loop", "on_reentry"),
            # A live series is 1 in the process that has that configuration; a process
            # sets a series it no longer has to 0 (multiprocess files cannot drop one).
            # The max over live processes is then right, and a dead worker's series go
            # once it is marked dead.
            multiprocess_mode="livemax",
        )
        # Gauges of a state (thread pools, pending tasks) are set when the registry is
        # collected: this collector runs their refreshes first.
        self._before_collect = _BeforeCollect()
        registry.register(self._before_collect)
        # Sync work waiting for threads (thread pools: anyio's limiter, loops' executors).
        # Gauges of one process add up across gunicorn workers: each has its own pools.
        self.threadpool_threads = _make(
            r,
            Gauge,
            "loopwatch_threadpool_threads",
            "Threads of a pool running sync work now (busy).",
            ("pool",),
            multiprocess_mode="livesum",
        )
        self.threadpool_limit = _make(
            r,
            Gauge,
            "loopwatch_threadpool_limit",
            "How many threads a pool may run at once.",
            ("pool",),
            multiprocess_mode="livesum",
        )
        self.threadpool_waiting = _make(
            r,
            Gauge,
            "loopwatch_threadpool_waiting",
            "Calls waiting for a free thread of a pool now.",
            ("pool",),
            multiprocess_mode="livesum",
        )
        self.threadpool_wait_seconds = _make(
            r,
            Histogram,
            "loopwatch_threadpool_wait_seconds",
            "How long each sync call waited for a free pool thread, by the handler that asked.",
            ("framework", "handler"),
            buckets=_WAIT_BUCKETS,
        )
        self.pending_tasks = _make(
            r,
            Gauge,
            "loopwatch_tasks",
            "Pending tasks by the handler whose context created them.",
            ("framework", "handler"),
            multiprocess_mode="livesum",
        )
        self.handlers_in_flight = _make(
            r,
            Gauge,
            "loopwatch_handlers_in_flight",
            "Requests, events, commands and loop iterations running now for longer than "
            "a quarter of stuck_after (at most 1 s), by handler.",
            ("framework", "handler"),
            multiprocess_mode="livesum",
        )
        self.stuck_handlers_total = _make(
            r,
            Counter,
            "loopwatch_stuck_handlers_total",
            "Handlers still running past stuck_after while the loop was healthy.",
            ("framework", "handler"),
        )
        self._in_flight: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._children: dict[tuple[Any, ...], Any] = {}
        self._handlers: dict[str, set[str]] = {}
        self._task_series: set[tuple[str, str]] = set()
        self._wait_observers: dict[tuple[str, str], Callable[[float], None]] = {}
        # While OpenTelemetry is on, every child handed out goes through this (it wraps
        # histograms so each observation is recorded there too).
        self._mirror: Callable[[Any, dict[str, str], Any], Any] | None = None

    def set_mirror(self, mirror: Callable[[Any, dict[str, str], Any], Any] | None) -> None:
        """Wrap every child :meth:`child` hands out from now on (``None``: stop wrapping)."""
        with self._lock:
            self._mirror = mirror
            self._children.clear()  # the cached ones are wrapped (or not) the old way
            self._wait_observers.clear()

    def child(self, metric: Any, **labels: str) -> Any:
        """The labelled child of ``metric``, cached; caps distinct ``handler`` values."""
        # Names and values: the same values given in another keyword order, or under
        # other names, are another child.
        key = (id(metric), *labels.items())
        found = self._children.get(key)
        if found is not None:
            return found
        with self._lock:
            handler = labels.get("handler")
            if handler is not None and handler not in _RESERVED_HANDLERS:
                # The exported name: prometheus_client keeps counters' without "_total".
                name = prom.exposed_name(metric)
                seen = self._handlers.setdefault(name, set())
                if handler not in seen:
                    if len(seen) >= self.label_cap:
                        self.label_overflow_total.labels(metric=name).inc()
                        labels = {**labels, "handler": "__other__"}
                        # Not cached under the raw value: each overflow is counted.
                        return self._wrap(metric, labels, metric.labels(**labels))
                    seen.add(handler)
            # A metric without labels is its own child (the lag histogram).
            found = self._wrap(metric, labels, metric.labels(**labels) if labels else metric)
            if len(self._children) < 100_000:
                self._children[key] = found
            return found

    def _wrap(self, metric: Any, labels: dict[str, str], child: Any) -> Any:
        mirror = self._mirror
        return child if mirror is None else mirror(metric, labels, child)


    def record(self, incident: Incident) -> None:
        """Count one occurrence of ``incident`` in the metrics of its kind."""
        for attribute, labels, amount in _pending.incident_samples(incident):
            child = self.child(getattr(self, attribute), **labels)
            if attribute in _pending.HISTOGRAMS:
                child.observe(amount)
            else:
                child.inc(amount)

    def set_in_flight(self, counts: dict[tuple[str, str], int]) -> None:
        """Set ``loopwatch_handlers_in_flight`` to ``counts`` by (framework, handler); the
        handlers seen before and absent now go to 0."""
        for key in list(self._in_flight):
            if key not in counts:
                self._in_flight.pop(key).set(0)
        for (framework, handler), count in counts.items():
            gauge = self._in_flight.get((framework, handler))
            if gauge is None:
                gauge = self.child(self.handlers_in_flight, framework=framework, handler=handler)
                self._in_flight[(framework, handler)] = gauge
            gauge.set(count)

    def count_internal_error(self, component: str) -> None:
        """One failure inside loopwatch (``loopwatch_internal_errors_total``)."""
        self.internal_errors_total.labels(component=component).inc()

    def set_info(self, labels: tuple[str, ...], previous: tuple[str, ...] | None) -> None:
        """Make ``labels`` this process's one ``loopwatch_info`` series, ending ``previous``."""
        if previous is not None and previous != labels:
            self.clear_info(previous)
        self.info_gauge.labels(*labels).set(1)

    def clear_info(self, labels: tuple[str, ...]) -> None:
        """End this process's ``loopwatch_info`` series ``labels``.

        In multiprocess mode the series' value lives in a file prometheus_client cannot
        drop a series from: it is set to 0 there (the gauge's mode takes the max).
        """
        if _multiprocess():
            self.info_gauge.labels(*labels).set(0)
        else:
            self.info_gauge.remove(*labels)

    def set_threadpool(
        self, pool: str, busy: int, waiting: int, limit: float | None = None
    ) -> None:
        """The state of one pool now (threads busy, calls waiting, and its size if known)."""
        self.child(self.threadpool_threads, pool=pool).set(busy)
        self.child(self.threadpool_waiting, pool=pool).set(waiting)
        if limit is not None:
            self.child(self.threadpool_limit, pool=pool).set(limit)

    def observe_threadpool_wait(self, framework: str, handler: str, seconds: float) -> None:
        """How long one sync call waited for a pool thread (once per call: kept cheap)."""
        observe = self._wait_observers.get((framework, handler))
        if observe is None:
            metric = self.threadpool_wait_seconds
            child = self.child(metric, framework=framework, handler=handler)
            observe = prom.fast_observe(child)
            # Only a cached child: a handler past the label cap is counted on each use.
            key = (id(metric), ("framework", framework), ("handler", handler))
            if key in self._children and len(self._wait_observers) < 10_000:
                self._wait_observers[(framework, handler)] = observe
        observe(seconds)

    def set_tasks(self, counts: dict[tuple[str, str], int]) -> None:
        """Pending tasks by (framework, handler) now; handlers no longer seen go to 0."""
        with self._lock:
            gone = self._task_series - counts.keys()
            self._task_series = set(counts) | self._task_series
        for framework, handler in gone:
            self.child(self.pending_tasks, framework=framework, handler=handler).set(0)
        for (framework, handler), count in counts.items():
            self.child(self.pending_tasks, framework=framework, handler=handler).set(count)

    def before_collect(self, name: str, refresh: Callable[[], None] | None) -> None:
        """Run ``refresh`` whenever this registry is collected (``None``: stop).

        Gauges of a state (pool threads, pending tasks) are set there, so the code they
        describe pays nothing for them. Under ``PROMETHEUS_MULTIPROC_DIR`` a scrape reads
        files, not this process: a thread runs the refreshes every few seconds instead.
        """
        self._before_collect.set(name, refresh)

    def move_refreshes(self, to: Metrics | NullMetrics | _pending.PendingMetrics) -> None:
        """Hand every refresh of :meth:`before_collect` to ``to`` (a registry change)."""
        for name, refresh in self._before_collect.take():
            to.before_collect(name, refresh)


#: Seconds between two refreshes of the state gauges when a scrape cannot trigger one.
MULTIPROCESS_REFRESH = 5.0


class _BeforeCollect:
    """A collector with no samples, registered before the gauges its refreshes set.

    The registry collects in registration order, so the refreshes set those gauges a moment
    before they are read: a scrape sees the state as it is, and nothing is done between
    scrapes.
    """

    def __init__(self) -> None:
        self._refreshes: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None

    def set(self, name: str, refresh: Callable[[], None] | None) -> None:
        with self._lock:
            if refresh is None:
                self._refreshes.pop(name, None)
            else:
                self._refreshes[name] = refresh
            wanted = bool(self._refreshes) and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
            if wanted and self._stop is None:
                self._stop = threading.Event()
                threading.Thread(
                    target=self._every, args=(self._stop,), name="loopwatch-gauges", daemon=True
                ).start()
            elif not wanted and self._stop is not None:
                self._stop.set()
                self._stop = None

    def take(self) -> list[tuple[str, Callable[[], None]]]:
        """Remove and return every refresh (stopping the refresh thread if one runs)."""
        with self._lock:
            taken = list(self._refreshes.items())
        for name, _ in taken:
            self.set(name, None)
        return taken

    def _every(self, stop: threading.Event) -> None:
        while not stop.wait(MULTIPROCESS_REFRESH):
            self.collect()

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        with self._lock:
            refreshes = list(self._refreshes.values())
        for refresh in refreshes:
            refresh()  # never raises: each refresh reports its own failures
        return []


class _NullMetric:
    """Stands in for a metric when metrics cannot work at all (the host must keep running)."""

    def labels(self, *args: Any, **kwargs: Any) -> _NullMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        """Do nothing."""

    def observe(self, amount: float) -> None:
        """Do nothing."""

    def set(self, value: float) -> None:
        """Do nothing."""

    def remove(self, *labelvalues: Any) -> None:
        """Do nothing."""


def _multiprocess() -> bool:
    # The test prometheus_client itself makes before it refuses to remove a series.
    names = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
    return any(name in os.environ for name in names)


class NullMetrics:
    """A :class:`Metrics` look-alike that records nothing; used after metrics failed to start."""

    registry = None
    label_cap = 0

    def __init__(self) -> None:
        self._null = _NullMetric()

    def __getattr__(self, name: str) -> Any:
        return self._null

    def child(self, metric: Any, **labels: str) -> Any:
        """A child that records nothing."""
        return self._null

    def record(self, incident: Incident) -> None:
        """Record nothing."""

    def count_internal_error(self, component: str) -> None:
        """Count nothing."""

    def set_info(self, labels: tuple[str, ...], previous: tuple[str, ...] | None) -> None:
        """Set nothing."""

    def clear_info(self, labels: tuple[str, ...]) -> None:
        """Clear nothing."""

    def set_threadpool(self, *args: Any, **kwargs: Any) -> None:
        """Record nothing."""

    def observe_threadpool_wait(self, *args: Any, **kwargs: Any) -> None:
        """Record nothing."""

    def set_tasks(self, counts: dict[tuple[str, str], int]) -> None:
        """Record nothing."""

    def before_collect(self, name: str, refresh: Callable[[], None] | None) -> None:
        """Refresh nothing."""

    def move_refreshes(self, to: Metrics | NullMetrics | _pending.PendingMetrics) -> None:
        """Nothing to hand over."""

    def set_in_flight(self, counts: dict[tuple[str, str], int]) -> None:
        """Set nothing."""


_by_registry: MutableMapping[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_by_registry_lock = threading.Lock()


def get_metrics(
    registry: CollectorRegistry | None = None, *, label_cap: int | None = None
) -> Metrics:
    """The :class:`Metrics` of ``registry`` (default: prometheus-client's), created once."""
    reg = REGISTRY if registry is None else registry
    with _by_registry_lock:
        metrics = _by_registry.get(reg)
        if metrics is None:
            metrics = Metrics(reg, label_cap if label_cap is not None else 100)
            _by_registry[reg] = metrics
        elif label_cap is not None:
            metrics.label_cap = label_cap
        return metrics


def _hand_over_pending() -> None:
    # A monitor installed before prometheus_client was imported counts into pending metrics;
    # when this module is what imports prometheus_client, the hand-over waits for its end.
    monitor = _runtime.active()
    pending = getattr(monitor, "metrics", None)
    if isinstance(pending, _pending.PendingMetrics) and pending.target is None:
        try:
            if pending.build is not None:
                pending.build()
        except Exception as exc:
            _runtime.internal_error("metrics", exc)


READY = True  # this module is whole (the pending metrics' hand-over checks it)
_hand_over_pending()
