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
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _context, _frames, _handlers, _reentry, _runtime, _tasks, _watchdog
from ._compat import asyncio as aio
from ._config import Config, load_config
from ._errors import LoopwatchError
from ._frames import Frame
from ._incidents import Incident, IncidentStore, hint_for
from ._logging import LogSetup, LogSink, logger
from ._runtime import internal_error, loop_name
from .metrics import Metrics, MetricsServer, NullMetrics, get_metrics, start_http_server

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
# Adapters that hold the monitor (acquire/release), and whether acquire() installed it.
_holders = 0
_installed_by_acquire = False


def current() -> Monitor | None:
    """The installed, enabled monitor, or ``None``."""
    monitor: Monitor | None = _runtime.active()
    return monitor


def _count_on_default_registry(component: str) -> None:
    get_metrics().count_internal_error(component)


# Before any install, internal errors (of a failed install, say) count on the default registry.
_runtime.set_internal_error_sink(_count_on_default_registry)


class Monitor:
    """What :func:`loopwatch.install` returns: the running guard and its configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.enabled = not config.disable
        self.metrics: Metrics | NullMetrics | None = None
        self.store = IncidentStore()
        self._listeners: list[Callable[[Incident], None]] = []
        self._log_setup = LogSetup()
        self._log = LogSink()
        # Undo functions of what _start did, by component, in start order.
        self._undo: dict[str, Callable[[], None]] = {}
        self._server: MetricsServer | None = None
        self._info_labels: tuple[str, ...] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        self._apply(self.config, first=True)
        self._undo["reentry"] = _reentry.install(self)

        def loop_started(loop: object) -> None:
            # The service's loop, not the fresh loops of loopwatch's own offload workers; a
            # loop of the kind already named changes nothing (a program may start thousands).
            known = self._info_labels
            if known is not None and known[2] == loop_name(loop):
                return
            if not _runtime.current_thread_is_ours():
                self._set_info(loop)

        self._undo["info"] = _runtime.on_loop_start(loop_started)
        self._undo["tasks"] = _tasks.install(self)
        self._undo["handlers"] = _handlers.install(self)
        if self.config.watchdog:
            self._undo["watchdog"] = _watchdog.install(self)

    def _apply(self, config: Config, first: bool = False) -> None:
        old = self.config
        self.config = config
        try:
            self.metrics = get_metrics(config.registry, label_cap=config.label_cap)
        except LoopwatchError:
            raise  # a clash with the user's own metric: a configuration error, said at once
        except Exception as exc:  # e.g. an unwritable PROMETHEUS_MULTIPROC_DIR
            internal_error("metrics", exc)
            self.metrics = NullMetrics()
        _runtime.set_internal_error_sink(self.metrics.count_internal_error)
        _context.set_default_framework(config.default_framework)
        self._log_setup.apply(config.log_format)
        self._set_info()
        if not first:
            _handlers.configure(config.stuck_after)
        if first or (config.metrics_port, config.metrics_addr, config.tasks_endpoint) != (
            old.metrics_port,
            old.metrics_addr,
            old.tasks_endpoint,
        ):
            self._restart_server()
        if not first and config.watchdog != ("watchdog" in self._undo):
            if config.watchdog:
                self._undo["watchdog"] = _watchdog.install(self)
            else:
                self._undo.pop("watchdog")()

    def reconfigure(self, **options: Any) -> None:
        """Change options of the running monitor (raises :class:`ConfigError` on bad values)."""
        self._apply(load_config(options, base=self.config))

    def _set_info(self, loop_obj: object | None = None) -> None:
        from . import __version__

        if loop_obj is None:
            loop_obj = aio.get_running_loop()
        if loop_obj is None and self._info_labels is not None:
            loop = self._info_labels[2]  # keep the loop a previous start told us about
        else:
            loop = loop_name(loop_obj)
        if self.metrics is None:
            return
        python = ".".join(map(str, sys.version_info[:3]))
        labels = (__version__, python, loop, self.config.on_reentry)
        try:
            if self._info_labels is not None and self._info_labels != labels:
                self.metrics.info.remove(*self._info_labels)  # one info series at a time
            self.metrics.info.labels(*labels).set(1)
            self._info_labels = labels
        except Exception as exc:
            internal_error("metrics", exc)

    def _restart_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.config.metrics_port is None:
            return
        try:
            self._server = start_http_server(
                self.config.metrics_port, self.config.metrics_addr, self.config.registry,
                tasks=self.config.tasks_endpoint,
            )
        except OSError as exc:
            internal_error("metrics_server", exc)
            self.report(
                "internal",
                api="metrics.start_http_server",
                action="raised",
                hint=f"The metrics port {self.config.metrics_addr}:"
                f"{self.config.metrics_port} could not be bound ({exc}); "
                "choose a free port with LOOPWATCH_METRICS_PORT.",
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
    ) -> Incident | None:
        """Record one incident: keep, count, log (folded), tell listeners. Never raises."""
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
        try:
            self._log.emit(incident, self._level(incident, level))
        except Exception as exc:
            internal_error("logging", exc)
        for listener in list(self._listeners):
            try:
                listener(incident)
            except Exception as exc:
                internal_error("listener", exc)
        return merged

    def progress(
        self,
        kind: str,
        *,
        message: str,
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
    ) -> None:
        """Log a line about a hazard still going on ("still blocked"), folded per site.

        Not an incident: nothing is counted or kept; the incident comes when it ends.
        """
        try:
            if debug and not logger.isEnabledFor(logging.DEBUG):
                return
            detail = {**(detail or {}), "in_progress": "true"}
            incident = self._incident(
                kind, "", "", duration, stack or [], site, hint, labels, task, loop, thread,
                detail, 0,
            )
            level = logging.DEBUG if debug else logging.ERROR
            where = f" at {site}" if site is not None else ""
            text = f"{message}{where} (framework={incident.framework} handler={incident.handler})"
            self._log.emit(incident, level, text, key=("progress", kind, site, debug))
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


def install(**options: Any) -> Monitor:
    """Install loopwatch (idempotent). See :func:`loopwatch.install`."""
    global _disabled_said
    with _lock:
        installed = current()
        if installed is not None:
            if options:
                config = load_config(options, base=installed.config)
                if config.disable:
                    uninstall()
                    return Monitor(config)
                installed.reconfigure(**options)
            return installed
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
        return monitor


def uninstall() -> None:
    """Undo :func:`install` exactly (idempotent)."""
    global _holders, _installed_by_acquire
    with _lock:
        monitor = current()
        _runtime.set_active(None)
        _holders, _installed_by_acquire = 0, False
        if monitor is not None:
            monitor._stop()


def acquire(**options: Any) -> Monitor | None:
    """Hold the installed monitor for an adapter, installing it (with ``options``) if needed.

    Every adapter that attaches to something (a bot, an app, a kernel) calls this once and
    :func:`release` when it detaches. A monitor that ``acquire`` installed is uninstalled
    when its last holder releases it; one the user installed stays. Returns ``None`` when
    loopwatch is disabled (``LOOPWATCH_DISABLE``): the adapter then stays out of the way.
    """
    global _holders, _installed_by_acquire
    with _lock:
        monitor = current()
        if monitor is None:
            monitor = install(**options)
            if current() is not monitor:
                return None
            _installed_by_acquire = True
            _holders = 0
        elif options:
            monitor.reconfigure(**options)
        _holders += 1
        return monitor


def release(monitor: Monitor) -> None:
    """Let go of a monitor taken with :func:`acquire` (uninstalls it with its last holder)."""
    global _holders, _installed_by_acquire
    with _lock:
        if monitor is not current() or _holders <= 0:
            return
        _holders -= 1
        if _holders == 0 and _installed_by_acquire:
            _installed_by_acquire = False
            uninstall()
