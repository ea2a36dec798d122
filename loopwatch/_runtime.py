"""Process-wide runtime state shared by every part of loopwatch (a leaf module).

It holds what more than one component needs and nobody owns: the active monitor, the
once-per-component internal-error log and the hooks run when a loop starts (which threads
wait for a nested call is :mod:`._stalls`'). It imports
nothing from loopwatch but the logger, so any module may import it without a circle.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._logging import logger

__all__ = [
    "active",
    "after_fork_in_child",
    "internal_error",
    "loop_name",
    "loop_seen_hooks",
    "loop_start_hooks",
    "on_loop_start",
    "run_loop_start_hooks",
    "set_active",
    "set_internal_error_sink",
    "thread_name",
]

# The installed, enabled monitor (a loopwatch._monitor.Monitor), or None. Typed loosely
# here so this module stays a leaf.
_active: Any = None


def active() -> Any:
    """The installed, enabled monitor, or ``None``."""
    return _active


def set_active(monitor: Any) -> None:
    """Set (or clear, with ``None``) the installed monitor. Only ``_monitor`` calls this."""
    global _active
    _active = monitor


# -- internal errors -----------------------------------------------------------------------

errors_logged: set[str] = set()
# Counts an internal error in loopwatch_internal_errors_total; the monitor sets it at install.
_count_error: Callable[[str], None] | None = None


def set_internal_error_sink(count: Callable[[str], None] | None) -> None:
    """Where :func:`internal_error` counts failures (the monitor's metrics)."""
    global _count_error
    _count_error = count


def internal_error(component: str, exc: BaseException) -> None:
    """Count a failure inside loopwatch and log it once per component. Never raises."""
    count = _count_error
    if count is not None:
        with contextlib.suppress(Exception):  # the log line below still says it
            count(component)
    if component in errors_logged:
        return
    errors_logged.add(component)
    try:
        logger.error(
            "internal error in %s (counted in loopwatch_internal_errors_total; "
            "the host program keeps running)",
            component,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    except Exception:
        # The log failed too: stderr is the last place left; if that fails, there is none.
        with contextlib.suppress(Exception):
            sys.stderr.write(f"loopwatch: internal error in {component}: {exc!r}\n")


# -- forked children ------------------------------------------------------------------------

# component -> what it resets in a forked child (threads and locks do not survive a fork: a
# preloading server such as ``gunicorn --preload`` installs in the parent, then forks).
_fork_hooks: dict[str, Callable[[], None]] = {}


def after_fork_in_child(component: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` in every child forked from now on; a failure is an internal error of
    ``component``. One hook per component (a second call replaces the first)."""
    if not _fork_hooks and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_run_fork_hooks)
    _fork_hooks[component] = hook


def _run_fork_hooks() -> None:
    for component, hook in list(_fork_hooks.items()):
        try:
            hook()
        except Exception as exc:
            internal_error(component, exc)


# -- loops starting ------------------------------------------------------------------------

# Called with a loop just before it starts running in this thread (the loop-health probe
# attaches there). Each hook is wrapped so it never raises. No hook sees the loops of
# loopwatch's own threads (offload workers: their loops are short-lived and their stalls
# are the re-entry's), so no hook asks. What a hook returns is ignored, but for the one case
# run_loop_start_hooks describes.
loop_start_hooks: list[Callable[[Any], object]] = []
# Called once per loop rather than per start (the info metric, the loops the handlers and the
# task gauge look at): a loop that ``asyncio.run`` drives starts three times (the main
# coroutine, then the shutdown of async generators and of the default executor), and a
# reused loop may start thousands of times.
loop_seen_hooks: list[Callable[[Any], object]] = []
# The loop last started, the thread it started in, whether that thread is one of
# loopwatch's own, and what the start hook said at that start (see run_loop_start_hooks):
# when the same loop starts again in the same thread, the once-per-loop hooks already ran
# for it and the thread is known. (A restart is the common case, and the one that must cost
# next to nothing: ``asyncio.run`` starts its loop three times.)
_NOT_STARTED: tuple[Any, int, bool, list[Any] | None] = (None, 0, False, None)
_last_started = _NOT_STARTED
_get_ident = threading.get_ident


def on_loop_start(hook: Callable[[Any], object], *, once: bool = False) -> Callable[[], None]:
    """Call ``hook(loop)`` whenever a loop starts; return the function that removes it.

    ``once``: only the first time a loop starts (in practice: again when another loop
    started in that thread meanwhile, so the hook must not mind a second call). Loops of
    loopwatch's own threads are never shown to a hook.
    """
    global _last_started
    hooks = loop_seen_hooks if once else loop_start_hooks
    hooks.append(hook)
    _last_started = _NOT_STARTED  # a new once-per-loop hook has seen no loop yet

    def remove() -> None:
        global _last_started
        if hook in hooks:
            hooks.remove(hook)
        _last_started = _NOT_STARTED  # nor keep what the hook said (a note holds its probe)

    return remove


def run_loop_start_hooks(loop: Any) -> None:
    """Run every loop-start hook for ``loop``; a failing hook is an internal error.

    The start hook, when it is the only one, may return a list whose last item is ``None``
    while the loop's restarts need nothing from it, and which it fills in (from any thread)
    once they do: until then a restart of that loop in that thread runs no hook at all. (The
    watchdog's note of a C loop it has not looked at yet: ``asyncio.run`` starts its loop
    three times, and a loop that closes before the watchdog's next look needs no probe.)
    """
    global _last_started
    last, ident, ours, quiet = _last_started
    if last is None or last() is not loop or ident != _get_ident():
        try:  # current_thread_is_ours(), inline: asked at every new loop
            ours = _thread_kind.ours
        except AttributeError:
            ours = current_thread_is_ours()
        try:
            ref = weakref.ref(loop)
        except TypeError:  # a loop that cannot be referenced weakly: every start is new
            ref = None
        if ours:
            _last_started = (ref, _get_ident(), True, None) if ref is not None else _NOT_STARTED
            return
        for hook in list(loop_seen_hooks):
            try:
                hook(loop)
            except Exception as exc:
                internal_error("loop_start", exc)
        said: object = None
        for hook in loop_start_hooks:
            try:
                said = hook(loop)
            except Exception as exc:
                said = None
                internal_error("loop_start", exc)
        quiet = said if isinstance(said, list) and len(loop_start_hooks) == 1 else None
        _last_started = (ref, _get_ident(), False, quiet) if ref is not None else _NOT_STARTED
        return
    if ours or (quiet is not None and quiet[-1] is None):
        return
    for hook in loop_start_hooks:
        try:
            hook(loop)
        except Exception as exc:
            internal_error("loop_start", exc)


# -- names ---------------------------------------------------------------------------------


def loop_name(loop: object | None) -> str:
    """A short name of a loop's type: ``uvloop.Loop``, ``asyncio._UnixSelectorEventLoop``."""
    if loop is None:
        return "none"
    cls = type(loop)
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def thread_name(ident: int) -> str:
    """The name of the live thread ``ident``, else ``thread <ident>``.

    Looked up by whatever reports a loop's thread, not by the loop start that notes the id:
    a start is frequent, a report rare.
    """
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread {ident}"  # ended since, or a thread the threading module does not know


# Per thread, once known: whether it is one of loopwatch's own. Asked at each new loop, and
# the name behind it costs two Python calls (``current_thread`` and the ``name`` property);
# a thread-local answer dies with its thread, so a reused thread id never inherits it.
_thread_kind = threading.local()


def current_thread_is_ours() -> bool:
    """Whether this thread is one of loopwatch's own (offload workers, the watchdog).

    Told by the name it was started with (``loopwatch-...``), read at its first question.
    """
    try:
        ours: bool = _thread_kind.ours
    except AttributeError:
        ours = _thread_kind.ours = threading.current_thread().name.startswith("loopwatch-")
    return ours
