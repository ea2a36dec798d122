"""The installed monitor: configuration, the components, the sinks, the lifecycle.

Data flows one way. Producers (the re-entry guard ``_reentry``, the loop-health watchdog
``_watchdog``, the task hooks ``_tasks``, and the framework adapters) hand what they saw
to :meth:`Monitor.report`, which builds the :class:`~loopwatch.Incident` and passes it to
every sink: the recent-incident store, the metrics (:meth:`Metrics.record`), the folding
log sink and the listeners. Nothing here ever raises into the host: failures are counted
and logged once (``_runtime.internal_error``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import (
    _context,
    _frames,
    _handlers,
    _reentry,
    _runtime,
    _task_gauge,
    _tasks,
    _threadpool,
    _watchdog,
)
from ._compat import asyncio as aio
from ._config import UNSET, Config, LogFormat, Policy, Unset, check_environment, load_config
from ._errors import ConfigError, LoopwatchError
from ._frames import Frame
from ._incidents import Incident, IncidentStore, hint_for
from ._logging import LogSetup, LogSink, logger, set_trace_ids
from ._patching import ImportHook
from ._pending_metrics import PendingMetrics, PrivateRegistry
from ._runtime import internal_error, loop_name

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._otel import OtelSink
    from .metrics import Metrics, MetricsServer, NullMetrics

__all__ = [
    "Monitor",
    "acquire",
    "current",
    "install",
    "internal_error",
    "loop_name",
    "release",
    "uninstall",
]

_lock = threading.RLock()
_disabled_said = False
# Adapters that hold the monitor (acquire/release), whether acquire() installed it, and
# whether the user called install() for this monitor (then no release ever uninstalls it).
_holders = 0
_installed_by_acquire = False
_explicit = False


def current() -> Monitor | None:
    """The installed, enabled monitor, or ``None``."""
    monitor: Monitor | None = _runtime.active()
    return monitor


def _count_on_default_registry(component: str) -> None:
    from .metrics import get_metrics

    get_metrics().count_internal_error(component)


# Before any install, internal errors (of a failed install, say) count on the default registry.
_runtime.set_internal_error_sink(_count_on_default_registry)


class Monitor:
    """What :func:`loopwatch.install` returns: the running guard and its configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.enabled = not config.disable
        self.metrics: Metrics | NullMetrics | PendingMetrics | None = None
        # Waits for prometheus_client while the metrics are pending (see _pending_metrics).
        self._prometheus_hook: ImportHook | None = None
        self._build_lock = threading.RLock()  # re-entered when loopwatch.metrics is imported
        self.store = IncidentStore()
        self._listeners: list[Callable[[Incident], None]] = []
        self._log_setup = LogSetup()
        self._log = LogSink()
        # Undo functions of what _start did, by component, in start order.
        self._undo: dict[str, Callable[[], None]] = {}
        self._server: MetricsServer | None = None
        self._info_labels: tuple[str, ...] | None = None  # the live info series, if any
        self._info_loop: str | None = None  # the loop type a loop start told us about
        self._info_type: type | None = None  # the class of the loop that started last
        # Span events and OTel instruments, while the ``otel`` option is on (_otel imports
        # OpenTelemetry: it is imported only then).
        self.otel: OtelSink | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        self._apply(self.config, first=True)
        self._undo["reentry"] = _reentry.install(self)

        def loop_started(loop: object) -> None:
            # The service's loop (the hooks never see loopwatch's own offload workers'); a
            # loop of the kind already named changes nothing (a program may start thousands).
            kind = type(loop)
            if kind is self._info_type:
                return
            self._info_type = kind
            if self._info_loop != loop_name(loop):
                self._set_info(loop)

        self._undo["info"] = _runtime.on_loop_start(loop_started, once=True)
        self._undo["tasks"] = _tasks.install(self)
        self._undo["threadpool"] = _threadpool.install(self)
        self._undo["task_gauge"] = _task_gauge.install(self)
        self._undo["handlers"] = _handlers.install(self)
        if self.config.watchdog:
            self._undo["watchdog"] = _watchdog.install(self)

    def _apply(self, config: Config, first: bool = False) -> None:
        old = self.config
        old_metrics = self.metrics
        self.config = config
        if first or config.registry is not old.registry or config.label_cap != old.label_cap:
            try:
                self.metrics = self._metrics_for(config, old)
            except LoopwatchError:
                self.config = old
                raise  # a clash with the user's own metric: a configuration error, said at once
            except Exception as exc:  # e.g. an unwritable PROMETHEUS_MULTIPROC_DIR
                internal_error("metrics", exc)
                from .metrics import NullMetrics

                self.metrics = NullMetrics()
        metrics = self.metrics
        moved = metrics is not old_metrics
        if moved and metrics is not None:
            _runtime.set_internal_error_sink(metrics.count_internal_error)
            if old_metrics is not None and self._info_labels is not None:
                try:  # the old registry keeps no live info series of this process
                    old_metrics.clear_info(self._info_labels)
                except Exception as exc:
                    internal_error("metrics", exc)
                self._info_labels = None
        self._apply_otel(config, old, first)
        _context.set_default_framework(config.default_framework)
        self._log_setup.apply(config.log_format)
        self._set_info()
        if not first:
            _handlers.configure(config.stuck_after)
        # Whatever was built from a changed field is built again: the server serves the
        # registry (and the task view), the lag probe writes the registry's histogram, the
        # state gauges (pools, tasks) are refreshed when the new registry is collected.
        if first or moved or (config.metrics_port, config.metrics_addr, config.tasks_endpoint) != (
            old.metrics_port,
            old.metrics_addr,
            old.tasks_endpoint,
        ):
            self._restart_server()
        if not first and moved:
            _watchdog.rebind(self)
            if old_metrics is not None and metrics is not None:
                old_metrics.move_refreshes(metrics)  # the pool and task gauges follow
        if not first and config.watchdog != ("watchdog" in self._undo):
            if config.watchdog:
                self._undo["watchdog"] = _watchdog.install(self)
            else:
                self._undo.pop("watchdog")()

    def _metrics_for(self, config: Config, old: Config) -> Metrics | PendingMetrics:
        """The metrics ``config`` asks for: pending ones while nothing can read them."""
        registry = config.registry
        pending = self.metrics
        if (
            isinstance(pending, PendingMetrics) and pending.target is None
            and registry is old.registry
        ):
            pending.label_cap = config.label_cap  # still nothing built: the cap is all
            return pending
        if (
            (registry is None or isinstance(registry, PrivateRegistry))
            and config.metrics_port is None
            and not config.otel
            and "prometheus_client" not in sys.modules
            # In multiprocess mode another process reads this one's files: write them now.
            and not _multiprocess_dir()
        ):
            pending = PendingMetrics(config.label_cap)
            pending.build = self._build_metrics
            if self._prometheus_hook is None:
                self._prometheus_hook = ImportHook("prometheus_client", self._prometheus_imported)
                self._prometheus_hook.start()
            return pending
        from .metrics import get_metrics

        return get_metrics(_resolve(registry), label_cap=config.label_cap)

    def built_metrics(self) -> Metrics | NullMetrics | None:
        """The monitor's prometheus_client metrics, built now if they were pending (for an
        adapter that writes its own series); ``None`` before the monitor started."""
        metrics = self.metrics
        return self._build_metrics() if isinstance(metrics, PendingMetrics) else metrics

    def _prometheus_imported(self, module: object) -> None:
        # prometheus_client has just been imported: from now on a scrape can read the
        # metrics, so build them. When loopwatch.metrics is what imported it, its last line
        # does this (it is not whole yet).
        try:
            ours = sys.modules.get("loopwatch.metrics")
            if ours is None or getattr(ours, "READY", False):
                self._build_metrics()
        except Exception as exc:
            internal_error("metrics", exc)

    def _build_metrics(self) -> Metrics | NullMetrics:
        """Build the real metrics and hand the pending ones over (once). A failure to build
        them is counted and gives null metrics; only a broken prometheus_client install (no
        ``loopwatch.metrics`` import) raises."""
        from ._compat import prometheus as prom
        from .metrics import Metrics, NullMetrics, get_metrics

        # Its own lock, not the install lock: this runs inside the import of
        # prometheus_client, whose import lock a thread holding the install lock may wait for.
        with self._build_lock:
            pending = self.metrics
            if not isinstance(pending, PendingMetrics):
                return pending if isinstance(pending, Metrics | NullMetrics) else NullMetrics()
            if pending.target is not None:
                return pending.target  # type: ignore[no-any-return]
            real: Metrics | NullMetrics
            try:
                real = get_metrics(_resolve(self.config.registry), label_cap=pending.label_cap)
            except Exception as exc:  # a clash on the default registry, an unwritable dir
                internal_error("metrics", exc)
                real = NullMetrics()
            try:
                pending.hand_over(real, prom.add_counts)
            except Exception as exc:
                internal_error("metrics", exc)
            self.metrics = real
            _runtime.set_internal_error_sink(real.count_internal_error)
            _watchdog.rebind(self)
            self._stop_waiting()
            return real

    def _stop_waiting(self) -> None:
        hook, self._prometheus_hook = self._prometheus_hook, None
        if hook is not None:
            hook.stop()

    def reconfigure(
        self,
        *,
        on_reentry: Policy | Unset = UNSET,
        block_threshold: float | Unset = UNSET,
        log_format: LogFormat | Unset = UNSET,
        metrics_port: int | Unset | None = UNSET,
        metrics_addr: str | Unset = UNSET,
        offload_timeout: float | Unset = UNSET,
        label_cap: int | Unset = UNSET,
        default_framework: str | Unset = UNSET,
        watchdog: bool | Unset = UNSET,
        lag_tick: float | Unset = UNSET,
        stuck_after: float | Unset = UNSET,
        tasks_endpoint: bool | Unset = UNSET,
        otel: bool | Unset = UNSET,
        registry: CollectorRegistry | Unset | None = UNSET,
        meter_provider: Any = UNSET,
    ) -> None:
        """Change options of the running monitor; those not given keep their values.

        The options are those of :func:`loopwatch.install` (``disable`` aside: use
        :func:`loopwatch.uninstall`). What was built from a changed option is rebuilt: a new
        ``registry`` gets the metrics, the lag histogram, the info series and the metrics
        server. Raises :class:`ConfigError` on a bad value, changing nothing.
        """
        self._change(dict(
            on_reentry=on_reentry, block_threshold=block_threshold, log_format=log_format,
            metrics_port=metrics_port, metrics_addr=metrics_addr,
            offload_timeout=offload_timeout, label_cap=label_cap,
            default_framework=default_framework, watchdog=watchdog, lag_tick=lag_tick,
            stuck_after=stuck_after, tasks_endpoint=tasks_endpoint, otel=otel,
            registry=registry, meter_provider=meter_provider,
        ))

    def _apply_otel(self, config: Config, old: Config, first: bool) -> None:
        """Start, restart or stop the OpenTelemetry sink to match ``config``."""
        if not first and (config.otel, config.meter_provider) == (
            old.otel, old.meter_provider
        ):
            if self.otel is not None:
                from .metrics import Metrics

                if isinstance(self.metrics, Metrics):
                    self.metrics.set_mirror(self.otel.mirror)  # the registry may have changed
            return
        self._stop_otel()
        if not config.otel:
            return
        try:
            from . import _otel
        except ImportError:
            raise ConfigError(
                "otel=True needs the OpenTelemetry API: pip install 'loopwatch[otel]'"
            ) from None
        from .metrics import Metrics  # _otel imported prometheus_client: nothing pends now

        sink = _otel.OtelSink(lambda: self.metrics, config.meter_provider)
        sink.start()
        if isinstance(self.metrics, Metrics):
            self.metrics.set_mirror(sink.mirror)
        set_trace_ids(_otel.trace_ids)
        self.otel = sink

    def _stop_otel(self) -> None:
        sink, self.otel = self.otel, None
        if sink is None:
            return
        set_trace_ids(None)
        sink.stop()
        from .metrics import Metrics

        if isinstance(self.metrics, Metrics):
            self.metrics.set_mirror(None)

    def _change(self, options: dict[str, Any]) -> None:
        self._apply(load_config(options, base=self.config))

    def override(self, options: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Apply ``options``; return ``{option: (value before, value set)}`` of those changed.

        For :meth:`restore`: a helper that changes an installed monitor for a while (a test
        helper, a notebook extension) undoes exactly what it changed.
        """
        before = self.config
        self._change(options)
        return {
            name: (getattr(before, name), getattr(self.config, name))
            for name in options
            if options[name] is not UNSET and getattr(before, name) != getattr(self.config, name)
        }

    def restore(self, changed: dict[str, tuple[Any, Any]]) -> None:
        """Undo an :meth:`override`, for each option that still has the value it set."""
        back = {
            name: was for name, (was, set_) in changed.items()
            if getattr(self.config, name) == set_
        }
        if back:
            self._change(back)

    def _set_info(self, loop_obj: object | None = None) -> None:
        from . import __version__

        if loop_obj is None:
            loop_obj = aio.get_running_loop()
        if loop_obj is None and self._info_loop is not None:
            loop = self._info_loop  # keep the loop a previous start told us about
        else:
            loop = self._info_loop = loop_name(loop_obj)
        if self.metrics is None:
            return
        python = ".".join(map(str, sys.version_info[:3]))
        labels = (__version__, python, loop, self.config.on_reentry)
        try:
            if self._info_labels != labels:
                self.metrics.set_info(labels, self._info_labels)  # one info series at a time
                self._info_labels = labels
        except Exception as exc:
            internal_error("metrics", exc)

    def _restart_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        port, addr = self.config.metrics_port, self.config.metrics_addr
        if port is None:
            return
        from .metrics import start_http_server

        try:
            self._server = start_http_server(
                port, addr, _resolve(self.config.registry), tasks=self.config.tasks_endpoint
            )
        except OSError as exc:
            # A port in use is the operator's to fix, not a fault of loopwatch: one line,
            # no traceback, no incident, and the program goes on without the server.
            if self.metrics is not None:
                try:
                    self.metrics.count_internal_error("metrics_server")
                except Exception as error:
                    internal_error("metrics", error)
            logger.warning(
                "metrics server not started: cannot listen on %s:%s (%s); the program goes "
                "on without it (choose a free port with LOOPWATCH_METRICS_PORT, or 0 for any)",
                addr, port, exc.strerror or exc,
            )
            return
        # With port 0 the system picked the port: say which, or nobody can scrape it.
        logger.log(
            logging.WARNING if port == 0 else logging.INFO,
            "serving metrics on http://%s:%s/metrics",
            _host_for_url(self._server.addr), self._server.port,
        )

    @property
    def metrics_server(self) -> MetricsServer | None:
        """The standalone exposition server, when ``metrics_port`` is set and it started."""
        return self._server

    def _stop(self) -> None:
        self.flush()
        for name in reversed(list(self._undo)):
            undo = self._undo.pop(name)
            try:
                undo()
            except Exception as exc:
                internal_error("uninstall", exc)
        if self._server is not None:
            self._server.close()
            self._server = None
        self._log_setup.undo()
        self._stop_otel()
        self._stop_waiting()
        _context.set_default_framework("none")
        _runtime.set_internal_error_sink(_count_on_default_registry)

    # -- sinks -----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Incident], None]) -> None:
        """Call ``listener(incident)`` for every incident (folded or not)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Incident], None]) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def report(
        self,
        kind: str,
        *,
        api: str = "",
        action: str = "",
        duration: float | None = None,
        stack: list[Frame] | tuple[Frame, ...] | None = None,
        site: Frame | None = None,
        hint: str | None = None,
        labels: _context.Labels | None = None,
        task: str | None = None,
        loop: object | None = None,
        thread: str | None = None,
        detail: dict[str, str] | None = None,
        level: int | None = None,
        skip: int = 0,
        context: contextvars.Context | None = None,
    ) -> Incident | None:
        """Record one incident: keep, count, log (folded), tell listeners. Never raises.

        ``context`` is the context of the task the incident belongs to when it is reported
        from elsewhere (a blocked loop, a lost task exception): the log line and the span
        event are made in it, so they carry that task's trace, not whatever runs now.
        """
        try:
            incident = self._incident(
                kind, api, action, duration, stack, site, hint, labels, task, loop, thread,
                detail, skip,
            )
            merged = self.store.add(incident)
        except Exception as exc:
            internal_error("report", exc)
            return None
        metrics = self.metrics
        if metrics is not None:
            try:
                metrics.record(incident)
            except Exception as exc:
                internal_error("metrics", exc)
        if context is None:
            self._log_and_trace(incident, merged, level)
        else:
            context.copy().run(self._log_and_trace, incident, merged, level)
        for listener in list(self._listeners):
            try:
                listener(incident)
            except Exception as exc:
                internal_error("listener", exc)
        return merged

    def _log_and_trace(self, incident: Incident, merged: Incident, level: int | None) -> None:
        try:
            self._log.emit(incident, self._level(incident, level))
        except Exception as exc:
            internal_error("logging", exc)
        otel = self.otel
        if otel is not None:
            try:
                otel.record(incident, merged.count)
            except Exception as exc:
                internal_error("otel", exc)

    def block_seen(
        self, context: contextvars.Context, stack: list[Frame], blocked_for: float,
        labels: _context.Labels, task: str | None, thread: str, loop: object,
    ) -> None:
        """The watchdog sees a loop blocked by the task of ``context`` (while it lasts)."""
        otel = self.otel
        if otel is None:
            return
        try:
            stack = _frames.without_own_frames(list(stack))
            otel.block_seen(
                context, stack, _frames.user_frame(stack), blocked_for,
                self.config.block_threshold, labels, task, thread, loop_name(loop),
            )
        except Exception as exc:
            internal_error("otel", exc)

    def progress(
        self,
        kind: str,
        *,
        message: str,
        api: str = "",
        duration: float | None = None,
        stack: list[Frame] | tuple[Frame, ...] | None = None,
        site: Frame | None = None,
        hint: str | None = None,
        labels: _context.Labels | None = None,
        task: str | None = None,
        loop: object | None = None,
        thread: str | None = None,
        detail: dict[str, str] | None = None,
        debug: bool = False,
        level: int = logging.ERROR,
    ) -> None:
        """Log a line about a hazard still going on ("still blocked", a nested call that
        still stalls its caller), folded per kind, api and site.

        Not an incident: nothing is counted or kept; the incident comes when it ends.
        """
        try:
            if debug and not logger.isEnabledFor(logging.DEBUG):
                return
            detail = {**(detail or {}), "in_progress": "true"}
            incident = self._incident(
                kind, api, "", duration, stack or [], site, hint, labels, task, loop, thread,
                detail, 0,
            )
            level = logging.DEBUG if debug else level
            # A line about a nested call names its site next to the api already.
            where = f" at {site}" if site is not None and not api else ""
            text = f"{message}{where} (framework={incident.framework} handler={incident.handler})"
            self._log.emit(incident, level, text, key=("progress", kind, api, site, debug))
        except Exception as exc:
            internal_error("logging", exc)

    def _incident(
        self,
        kind: str,
        api: str,
        action: str,
        duration: float | None,
        stack: list[Frame] | tuple[Frame, ...] | None,
        site: Frame | None,
        hint: str | None,
        labels: _context.Labels | None,
        task: str | None,
        loop: object | None,
        thread: str | None,
        detail: dict[str, str] | None,
        skip: int,
    ) -> Incident:
        if stack is None:
            stack = _frames.capture_stack(skip + 2)
        if site is None:
            site = _frames.user_frame(stack)
        if labels is None:
            labels = _context.current_labels()
        running = aio.get_running_loop()
        if task is None and running is not None:
            current_task = asyncio.current_task(running)
            task = current_task.get_name() if current_task is not None else None
        now = time.time()
        return Incident(
            kind=kind,
            api=api,
            action=action,
            framework=labels.framework,
            handler=labels.handler,
            site=site,
            stack=tuple(_frames.without_own_frames(list(stack))),
            thread=thread or threading.current_thread().name,
            task=task,
            loop=loop_name(loop if loop is not None else running),
            duration=duration,
            count=1,
            first_seen=now,
            last_seen=now,
            hint=hint or hint_for(kind, api, action),
            detail=dict(detail or {}),
        )

    def _level(self, incident: Incident, level: int | None) -> int:
        if level is not None:
            return level
        if (
            incident.kind == "blocked_loop"
            and incident.duration is not None
            and incident.duration >= 10 * self.config.block_threshold
        ):
            return logging.ERROR
        return logging.WARNING

    def flush(self) -> None:
        """Log one line for every fingerprint with folded repeats not yet logged."""
        try:
            self._log.flush()
        except Exception as exc:
            internal_error("logging", exc)


def _multiprocess_dir() -> bool:
    # The variables prometheus_client reads for its multiprocess mode.
    names = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
    return any(os.environ.get(name) for name in names)


def _resolve(registry: Any) -> Any:
    """The registry an option names (a private one is made when first needed)."""
    return registry.resolve() if isinstance(registry, PrivateRegistry) else registry


def _host_for_url(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def install(
    *,
    on_reentry: Policy | Unset = UNSET,
    block_threshold: float | Unset = UNSET,
    log_format: LogFormat | Unset = UNSET,
    metrics_port: int | Unset | None = UNSET,
    metrics_addr: str | Unset = UNSET,
    disable: bool | Unset = UNSET,
    offload_timeout: float | Unset = UNSET,
    label_cap: int | Unset = UNSET,
    default_framework: str | Unset = UNSET,
    watchdog: bool | Unset = UNSET,
    lag_tick: float | Unset = UNSET,
    stuck_after: float | Unset = UNSET,
    tasks_endpoint: bool | Unset = UNSET,
    otel: bool | Unset = UNSET,
    registry: CollectorRegistry | Unset | None = UNSET,
    meter_provider: Any = UNSET,
) -> Monitor:
    """Install the guard in this process and return the :class:`Monitor`.

    Idempotent: a second call returns the same monitor, changed by the options given (what
    was built from a changed option is rebuilt). An option not given comes from its
    ``LOOPWATCH_*`` variable, else its default. A bad value raises
    :class:`~loopwatch.ConfigError` naming the option or variable and what is accepted.
    An install made here stays until :func:`uninstall`, whatever adapters attach and detach.

    Args:
        on_reentry: what a nested run on a running loop does (``LOOPWATCH_ON_REENTRY``):
            ``offload`` (default) runs it on a worker thread with a loop of its own;
            ``reenter`` runs it on the running loop itself (stdlib loops); ``auto`` picks
            the one that fits the call; ``raise`` reports it and lets the RuntimeError out.
        block_threshold: seconds a loop may stay busy before it is reported as blocked
            (``LOOPWATCH_BLOCK_THRESHOLD``, default 0.1).
        log_format: ``text`` (default) or ``json``, one object per line
            (``LOOPWATCH_LOG_FORMAT``).
        metrics_port: serve ``/metrics`` on this port from a thread of its own; ``0`` picks
            a free port (logged, and in ``monitor.metrics_server.port``); ``None`` (default)
            serves nothing (``LOOPWATCH_METRICS_PORT``). A port in use is said in one log
            line and the program goes on.
        metrics_addr: the IP address (or ``localhost``) the metrics server listens on
            (``LOOPWATCH_METRICS_ADDR``, default ``127.0.0.1``).
        disable: do nothing at all (``LOOPWATCH_DISABLE``); installed already, uninstall.
        offload_timeout: seconds bounding every offloaded or marshalled call
            (``LOOPWATCH_OFFLOAD_TIMEOUT``, default 30).
        label_cap: distinct ``handler`` values per metric before new ones are folded into
            ``__other__`` (``LOOPWATCH_LABEL_CAP``, default 100).
        default_framework: the ``framework`` label of work no adapter labelled
            (``LOOPWATCH_FRAMEWORK``, default ``none``).
        watchdog: watch loops for blocks and sample the blocked thread, the lag probe
            included (``LOOPWATCH_WATCHDOG``, default on).
        lag_tick: at most one loop-lag sample per loop per this many seconds
            (``LOOPWATCH_LAG_TICK``, default 0.02).
        stuck_after: seconds after which a handler (a request, a discord event, command or
            tasks-loop iteration, a ``handler_context`` block) still waiting on the same
            thing is reported once as ``stuck_handler`` with its await chain
            (``LOOPWATCH_STUCK_AFTER``, default 10; ``0`` turns it off).
        tasks_endpoint: serve the live task view at ``<metrics path>/tasks`` (JSON or
            text, behind the metrics token when one is set; ``LOOPWATCH_TASKS_ENDPOINT``,
            default off).
        otel: add every incident as an event to the OpenTelemetry span of the work it
            belongs to and mirror the metrics as OTel instruments (``LOOPWATCH_OTEL``,
            default off; needs ``loopwatch[otel]``, and nothing of it is imported while off).
        registry: the prometheus_client ``CollectorRegistry`` the metrics go to (keyword
            only; default: prometheus_client's own).
        meter_provider: the OpenTelemetry ``MeterProvider`` the instruments go to with
            ``otel`` on (keyword only; default: the global one).
    """
    return _install(dict(
        on_reentry=on_reentry, block_threshold=block_threshold, log_format=log_format,
        metrics_port=metrics_port, metrics_addr=metrics_addr, disable=disable,
        offload_timeout=offload_timeout, label_cap=label_cap,
        default_framework=default_framework, watchdog=watchdog, lag_tick=lag_tick,
        stuck_after=stuck_after, tasks_endpoint=tasks_endpoint, otel=otel,
        registry=registry, meter_provider=meter_provider,
    ), explicit=True)


def _install(options: dict[str, Any], *, explicit: bool) -> Monitor:
    global _disabled_said, _explicit
    options = {name: value for name, value in options.items() if value is not UNSET}
    with _lock:
        installed = current()
        if installed is not None:
            if options:
                config = load_config(options, base=installed.config)
                if config.disable:
                    uninstall()
                    return Monitor(config)
                installed._apply(config)
            _explicit = _explicit or explicit
            return installed
        check_environment()
        config = load_config(options)
        monitor = Monitor(config)
        if not monitor.enabled:
            if not _disabled_said:
                _disabled_said = True
                logger.warning("disabled by LOOPWATCH_DISABLE; install() did nothing")
            return monitor
        _runtime.set_active(monitor)
        try:
            monitor._start()
        except BaseException:
            _runtime.set_active(None)
            monitor._stop()
            raise
        _explicit = explicit
        return monitor


def uninstall() -> None:
    """Undo :func:`install` exactly (idempotent)."""
    global _holders, _installed_by_acquire, _explicit
    with _lock:
        monitor = current()
        _runtime.set_active(None)
        _holders, _installed_by_acquire, _explicit = 0, False, False
        if monitor is not None:
            monitor._stop()


def acquire(**options: Any) -> Monitor | None:
    """Hold the installed monitor for an adapter, installing it (with ``options``) if needed.

    Every adapter that attaches to something (a bot, an app, a kernel) calls this once and
    :func:`release` when it detaches. A monitor that ``acquire`` installed is uninstalled
    when its last holder releases it, unless the user called :func:`install` meanwhile;
    one the user installed stays. Returns ``None`` when
    loopwatch is disabled (``LOOPWATCH_DISABLE``): the adapter then stays out of the way.
    """
    global _holders, _installed_by_acquire
    with _lock:
        monitor = current()
        if monitor is None:
            monitor = _install(options, explicit=False)
            if current() is not monitor:
                return None
            _installed_by_acquire = True
            _holders = 0
        elif options:
            monitor._change(options)
        _holders += 1
        return monitor


def release(monitor: Monitor) -> None:
    """Let go of a monitor taken with :func:`acquire` (uninstalls it with its last holder)."""
    global _holders, _installed_by_acquire
    with _lock:
        if monitor is not current() or _holders <= 0:
            return
        _holders -= 1
        if _holders == 0 and _installed_by_acquire and not _explicit:
            _installed_by_acquire = False
            uninstall()
