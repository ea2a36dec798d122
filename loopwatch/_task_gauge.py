"""H9: tasks left behind, as the gauge ``loopwatch_tasks{framework,handler}``.

A task copies the context of the code that creates it, so a task a request handler starts
carries that handler's labels for its whole life: no task factory is needed, and none is
ever set on a user's loop. The gauge counts the pending tasks of every watched loop (each
loop that started while loopwatch was installed, held weakly) by those labels; tasks
created outside any handler are not counted, nor is the own task of a handler in flight
(the in-flight registry of ``_handlers`` knows them while stuck-handler tracking is on):
what is counted under a handler's name is what it left behind, or started and still
waits for.

When: only when the metrics are read. A scrape collects a small collector registered just
before the gauge, which counts then (``asyncio.all_tasks`` is written to be read from
another thread, and a task's context is read without touching the task). Nothing runs on
any loop, idle or busy. In prometheus-client's multiprocess mode the scrape reads files
instead of this process, so a loopwatch thread counts every few seconds there (see
:meth:`loopwatch.metrics.Metrics.before_collect`).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _context, _handlers, _runtime
from ._compat import asyncio as aio
from ._tasks import task_labels

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["TaskGauge", "install"]


class TaskGauge:
    """The watched loops and the count of their pending tasks by handler."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._loops: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def watch(self, loop: Any) -> None:
        """Count the tasks of ``loop`` from now on (a loop-start hook)."""
        if _runtime.current_thread_is_ours():
            return  # offload workers' short-lived loops: their tasks are the caller's
        with self._lock:
            self._loops.add(loop)

    def counts(self) -> dict[tuple[str, str], int]:
        """Pending tasks of the watched loops by (framework, handler)."""
        with self._lock:
            loops = list(self._loops)
        counts: dict[tuple[str, str], int] = {}
        # A handler in flight is not something it left behind: its own task is skipped (a
        # request's, not recorded, is any one task carrying its labels object: the same key).
        owners = _handlers.own_tasks()
        for loop in loops:
            if loop.is_closed():
                continue
            for task in asyncio.all_tasks(loop):
                if owners:
                    raw = _handlers.labels_of(task)
                    if raw is not None and id(raw) in owners:
                        own = owners[id(raw)]
                        if own is None or own is task:
                            del owners[id(raw)]
                            continue
                labels = task_labels(task)
                if labels is None or labels.handler == _context.NO_HANDLER:
                    continue
                key = (labels.framework, labels.handler)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def refresh(self) -> None:
        """Set the gauge to the counts now. Never raises."""
        try:
            metrics = self.monitor.metrics
            if metrics is not None:
                metrics.set_tasks(self.counts())
        except Exception as exc:
            _runtime.internal_error("task_gauge", exc)


def install(monitor: Monitor) -> Callable[[], None]:
    """Watch loops as they start and count their tasks at each scrape; return the undo."""
    gauge = TaskGauge(monitor)
    remove_hook = _runtime.on_loop_start(gauge.watch, once=True)
    running = aio.get_running_loop()
    if running is not None:
        gauge.watch(running)
    metrics = monitor.metrics
    if metrics is not None:
        metrics.before_collect("tasks", gauge.refresh)

    def undo() -> None:
        remove_hook()
        if metrics is not None:
            metrics.before_collect("tasks", None)

    return undo
