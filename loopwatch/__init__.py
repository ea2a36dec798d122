"""loopwatch: a runtime guard for asyncio services.

Installed in one line, it intercepts ``asyncio.run()`` / ``loop.run_until_complete()``
calls made inside a running event loop, keeps them from crashing, reports each one with
the user's line and the route / event / command it belongs to, and exports Prometheus
metrics. Framework adapters live in :mod:`loopwatch.adapters` and are imported only when
you import them.

PYTEST_DONT_REWRITE: ``loopwatch run`` imports the package before pytest starts, and the
package ships a pytest plugin; pytest must not warn that it cannot rewrite it.

Importing the package costs next to nothing: the monitor, the metrics and the rest are
imported when one of their names is first used, so a process that only imports loopwatch,
or one ``loopwatch run`` starts that never uses asyncio, does not pay for them. Even
installed, loopwatch imports prometheus-client only once the program (or an adapter, or
``metrics_port``) does: until then it counts on its own, and hands every count over then.
"""

from __future__ import annotations

import importlib

from ._errors import ConfigError, LoopwatchError

# Not from `typing`, which would double what importing this package costs (type checkers
# treat this name as theirs wherever it is defined).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._context import handler_context
    from ._incidents import Incident
    from ._monitor import Monitor, install
    from ._taskview import TaskInfo

__version__ = "0.2.0"

# Public names imported on first use: name -> the module that defines it.
_LAZY = {
    "Incident": "._incidents",
    "Monitor": "._monitor",
    "TaskInfo": "._taskview",
    "handler_context": "._context",
    "install": "._monitor",
}

__all__ = [
    "ConfigError",
    "Incident",
    "LoopwatchError",
    "Monitor",
    "TaskInfo",
    "__version__",
    "handler_context",
    "incidents",
    "install",
    "load_ipython_extension",
    "tasks",
    "uninstall",
    "unload_ipython_extension",
]


def uninstall() -> None:
    """Remove the guard: every patched object is restored to the identical original."""
    from . import _monitor

    _monitor.uninstall()


def incidents() -> list[Incident]:
    """Recent incidents, one per fingerprint (kind, api, site), oldest first; bounded."""
    from . import _monitor

    monitor = _monitor.current()
    return [] if monitor is None else monitor.store.snapshot()


def tasks(timeout: float = 1.0) -> list[TaskInfo]:
    """Every task of every watched loop: name, handler, age, state, loop, thread, chain.

    Chains are read on each loop's own thread: from another thread this posts one callback
    to each running loop and waits up to ``timeout`` seconds for it (a loop blocked that
    long is listed without chains, state ``unknown``).
    """
    from . import _taskview

    return _taskview.tasks(timeout)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext loopwatch``: install for the kernel (see :mod:`loopwatch.adapters.ipython`)."""
    from .adapters import ipython as adapter

    adapter.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext loopwatch``."""
    from .adapters import ipython as adapter

    adapter.unload_ipython_extension(ipython)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next look-up is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
