"""The installed monitor: configuration, sinks (log, recent incidents, listeners), lifecycle.

Data flows one way: hooks (``_reentry``, ``_watchdog``, ``_tasks``) and adapters call
:meth:`Monitor.report`; the monitor folds, logs and hands the incident to listeners.
Nothing here ever raises into the host: failures are counted and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _context, _frames
from ._config import Config, load_config
from ._errors import LoopwatchError
from ._frames import Frame
from ._incidents import Incident, IncidentStore, hint_for
from ._logging import LogSetup, logger
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
_current: Monitor | None = None
_errors_logged: set[str] = set()
_disabled_said = False
# Adapters that hold the monitor (acquire/release), and whether acquire() installed it.
_holders = 0
_installed_by_acquire = False


def current() -> Monitor | None:
    """The installed, enabled monitor, or ``None``."""
    mon = _current
    return mon if mon is not None and mon.enabled else None


def loop_name(loop: object | None) -> str:
    """A short name of a loop's type: ``uvloop.Loop``, ``asyncio._UnixSelectorEventLoop``."""
    if loop is None:
        return "none"
    cls = type(loop)
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def internal_error(component: str, exc: BaseException) -> None:
    """Count a failure inside loopwatch and log it once per component. Never raises."""
    try:
        mon = _current
        metrics = mon.metrics if mon is not None and mon.metrics is not None else get_metrics()
        metrics.internal_errors_total.labels(component=component).inc()
    except Exception:  # the counter itself failed; the log line below still says so
        pass
    if component in _errors_logged:
        return
    _errors_logged.add(component)
    try:
        logger.error(
            "loopwatch: internal error in %s (counted in loopwatch_internal_errors_total; "
            "the host program keeps running)",
            component,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    except Exception:
        # The log failed too: stderr is the last place left; if that fails, there is none.
        with contextlib.suppress(Exception):
            sys.stderr.write(f"loopwatch: internal error in {component}: {exc!r}\n")


class Monitor:
    """What :func:`loopwatch.install` returns: the running guard and its configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.enabled = not config.disable
        self.metrics: Metrics | NullMetrics | None = None
        self.store = IncidentStore()
        self._listeners: list[Callable[[Incident], None]] = []
        self._log_setup = LogSetup()
        self._undo: list[Callable[[], None]] = []
        self._server: MetricsServer | None = None
        self._info_labels: tuple[str, ...] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        from . import _reentry

        self._apply(self.config, first=True)
        self._undo.append(_reentry.install(self))

        def loop_started(loop: object) -> None:
            # The service's loop, not the fresh loops of loopwatch's own offload workers.
            if not threading.current_thread().name.startswith("loopwatch-"):
                self._set_info(loop)

        _reentry.on_loop_start.append(loop_started)
        self._undo.append(lambda: _reentry.on_loop_start.remove(loop_started))
        for name in ("_watchdog", "_tasks"):
            component = _optional_component(name)
            if component is not None:
                self._undo.append(component.install(self))

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
        _context.set_default_framework(config.default_framework)
        self._log_setup.apply(config.log_format)
        self._set_info()
        if first or (config.metrics_port, config.metrics_addr) != (
            old.metrics_port,
            old.metrics_addr,
        ):
            self._restart_server()

    def reconfigure(self, **options: Any) -> None:
        """Change options of the running monitor (raises :class:`ConfigError` on bad values)."""
        self._apply(load_config(options, base=self.config))

    def _set_info(self, loop_obj: object | None = None) -> None:
        from . import __version__

        if loop_obj is None:
            loop_obj = asyncio._get_running_loop()
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
                self.config.metrics_port, self.config.metrics_addr, self.config.registry
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
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                internal_error("uninstall", exc)
        if self._server is not None:
            self._server.close()
            self._server = None
        self._log_setup.undo()
        _context.set_default_framework("none")

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
        """Record one incident: fold, log, keep, tell listeners. Never raises."""
        try:
            return self._report(
                kind,
                api,
                action,
                duration,
                stack,
                site,
                hint,
                labels,
                task,
                loop,
                thread,
                detail,
                level,
                skip,
            )
        except Exception as exc:
            internal_error("report", exc)
            return None

    def _report(
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
        level: int | None,
        skip: int,
    ) -> Incident:
        if stack is None:
            stack = _frames.capture_stack(skip + 2)
        if site is None:
            site = _frames.user_frame(stack)
        if labels is None:
            labels = _context.current_labels()
        running = asyncio._get_running_loop()
        if task is None and running is not None:
            current_task = asyncio.current_task(running)
            task = current_task.get_name() if current_task is not None else None
        now = time.time()
        incident = Incident(
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
        merged, folded = self.store.add(incident)
        if folded is not None:
            self._log(incident, folded, level)
        for listener in list(self._listeners):
            try:
                listener(incident)
            except Exception as exc:
                internal_error("listener", exc)
        return merged

    def _log(self, incident: Incident, folded: int, level: int | None) -> None:
        if level is None:
            level = logging.WARNING
            if (
                incident.kind == "blocked_loop"
                and incident.duration is not None
                and incident.duration >= 10 * self.config.block_threshold
            ):
                level = logging.ERROR
        message = incident.summary()
        if folded:
            message += f" (+{folded} folded since the last line)"
        data = incident.as_dict()
        data["folded"] = folded
        try:
            logger.log(level, message, extra={"loopwatch": data})
        except Exception as exc:
            internal_error("logging", exc)

    def flush(self) -> None:
        """Log one line for every fingerprint with folded repeats not yet logged."""
        for incident, folded in self.store.pending_folds():
            try:
                data = incident.as_dict()
                data["folded"] = folded
                logger.warning(
                    "%s (+%d folded since the last line)",
                    incident.summary(),
                    folded,
                    extra={"loopwatch": data},
                )
            except Exception as exc:
                internal_error("logging", exc)


def _optional_component(name: str) -> Any:
    """The H3–H5 components, imported when present (they arrive in their own modules)."""
    import importlib

    try:
        return importlib.import_module(f"loopwatch.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"loopwatch.{name}":
            return None
        raise


def install(**options: Any) -> Monitor:
    """Install loopwatch (idempotent). See :func:`loopwatch.install`."""
    global _current, _disabled_said
    with _lock:
        if _current is not None:
            if options:
                _current.reconfigure(**options)
            return _current
        config = load_config(options)
        monitor = Monitor(config)
        if not monitor.enabled:
            if not _disabled_said:
                _disabled_said = True
                logger.warning("loopwatch: disabled by LOOPWATCH_DISABLE; install() did nothing")
            return monitor
        _current = monitor
        try:
            monitor._start()
        except BaseException:
            _current = None
            monitor._stop()
            raise
        return monitor


def uninstall() -> None:
    """Undo :func:`install` exactly (idempotent)."""
    global _current, _holders, _installed_by_acquire
    with _lock:
        monitor, _current = _current, None
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
        if monitor is not _current or _holders <= 0:
            return
        _holders -= 1
        if _holders == 0 and _installed_by_acquire:
            _installed_by_acquire = False
            uninstall()
