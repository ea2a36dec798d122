"""H9: tasks left behind, as the gauge ``loopwatch_tasks{framework,handler}``.

A task copies the context of the code that creates it, so a task a request handler starts
carries that handler's labels for its whole life: no task factory is needed, and none is
ever set on a user's loop. The gauge counts the pending tasks of every watched loop (each
loop that started while loopwatch was installed, held weakly: the loops :mod:`._handlers`
keeps, so a loop's first start files it once for both) by those labels; tasks
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
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _context, _handlers, _runtime
from ._tasks import task_labels

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["TaskGauge", "install"]


class TaskGauge:
    """The count of the watched loops' pending tasks by handler."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def counts(self) -> dict[tuple[str, str], int]:
        """Pending tasks of the watched loops by (framework, handler)."""
        loops = [loop for loop, _ in _handlers.watched_loops()]
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
    """Count the watched loops' tasks at each scrape; return the undo."""
    gauge = TaskGauge(monitor)
    metrics = monitor.metrics
    if metrics is not None:
        metrics.before_collect("tasks", gauge.refresh)

    def undo() -> None:
        if metrics is not None:
            metrics.before_collect("tasks", None)

    return undo
