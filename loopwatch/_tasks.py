"""H4/H5: task exceptions nobody retrieved, tasks destroyed while pending, coroutines never
awaited.

H4. asyncio reports both task hazards from the future's finalizer by calling
``loop.call_exception_handler(context)``, looked up on the loop object each time. loopwatch
sets that attribute on each loop *instance* (at install for the running loop, and when a
loop starts later), records the incident, then calls the method it shadowed: that calls the
user's handler (``loop.set_exception_handler``) or the default one, exactly as before. The
user's handler may be set before or after install; ``get_exception_handler()`` still
returns it. Nothing is patched on a class.

H5. CPython funnels the "coroutine '...' was never awaited" ``RuntimeWarning`` through
``warnings._warn_unawaited_coroutine(coro)``, which it looks up on the ``warnings`` module
each time. loopwatch's replacement records the incident (every occurrence, whatever the
filters say) and issues the same warning, with the same text, category, source and
location (the frame that dropped the coroutine), so the user's filters and handlers see
what they saw before.

The labels of a task come from its own context: ``Task.get_context()`` on 3.12+, and on
3.10/3.11 the C task's context found through ``gc.get_referents`` (the task visits its
context first) — read only when an incident happens, never on the hot path.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import types
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _context, _frames, _reentry
from ._frames import Frame

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["install", "task_context", "task_labels"]

_UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")
_PENDING = "Task was destroyed but it is pending"
_ATTR = "call_exception_handler"


def task_context(task: Any) -> contextvars.Context | None:
    """The context a task runs its steps in, readable from any thread; ``None`` if unknown."""
    get_context = getattr(task, "get_context", None)
    if get_context is not None:  # 3.12+
        context = get_context()
        return context if isinstance(context, contextvars.Context) else None
    context = getattr(task, "_context", None)  # the pure-Python Task
    if isinstance(context, contextvars.Context):
        return context
    for referent in gc.get_referents(task):  # the C Task before 3.12 visits its context first
        if isinstance(referent, contextvars.Context):
            return referent
    return None


def task_labels(task: Any) -> _context.Labels | None:
    """The handler labels set in a task's context, or ``None`` when it has none."""
    context = task_context(task)
    if context is None:
        return None
    labels = context.get(_context._labels)
    if isinstance(labels, _context.LazyLabels):
        return labels.resolve()
    return labels if isinstance(labels, _context.Labels) else None


def default_labels() -> _context.Labels:
    """The labels of work outside any handler (the install's default framework)."""
    return _context._default_labels


def qualname(obj: Any) -> str:
    """A coroutine's (or callable's) qualified name, for incidents."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return str(name or type(obj).__name__)


def traceback_frames(tb: types.TracebackType | None, limit: int = 64) -> list[Frame]:
    """A traceback's frames, innermost first (code locations only)."""
    out: list[Frame] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        out.append(Frame(code.co_filename, tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    out.reverse()
    return out[:limit]


def suspended_frames(coro: Any, limit: int = 64) -> list[Frame]:
    """Where a suspended coroutine chain waits, innermost first (code locations only)."""
    out: list[Frame] = []
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append(Frame(frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    out.reverse()
    return out


def _code_frame(obj: Any) -> list[Frame]:
    code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
    if code is None:
        return []
    return [Frame(code.co_filename, code.co_firstlineno, code.co_name)]


def _loop_of(context: dict[str, Any]) -> Any:
    future = context.get("future") or context.get("task")
    get_loop = getattr(future, "get_loop", None)
    return get_loop() if get_loop is not None else None


class _Chained:
    """Set as ``loop.call_exception_handler``: record, then call what it shadows."""

    __slots__ = ("__weakref__", "active", "hooks", "loop", "previous")

    def __init__(self, hooks: _Hooks, loop: Any, previous: Any) -> None:
        self.hooks = hooks
        self.loop = weakref.ref(loop)
        self.previous = previous  # an instance attribute someone else set first, or None
        self.active = True

    def __call__(self, context: dict[str, Any]) -> Any:
        # The weak reference is already cleared when the loop is being collected together
        # with the task whose finalizer calls us; the future still knows its loop.
        loop = self.loop() or _loop_of(context)
        if self.active and loop is not None:
            self.hooks.record(loop, context)
        if self.previous is not None:
            return self.previous(context)
        if loop is None:
            return None
        return type(loop).call_exception_handler(loop, context)


class _Hooks:
    """The H4/H5 hooks of one install."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[Any, _Chained] = weakref.WeakKeyDictionary()

    # -- H4 --------------------------------------------------------------------------------

    def attach(self, loop: Any) -> None:
        """Chain ``loop``'s exception handling (idempotent; loops without ``__dict__`` skipped)."""
        with self._lock:
            if loop in self._loops:
                return
            namespace = getattr(loop, "__dict__", None)
            if namespace is None:
                return
            previous = namespace.get(_ATTR)
            chained = _Chained(self, loop, previous)
            namespace[_ATTR] = chained
            self._loops[loop] = chained

    def detach_all(self) -> None:
        with self._lock:
            items = list(self._loops.items())
            self._loops.clear()
        for loop, chained in items:
            chained.active = False
            namespace = getattr(loop, "__dict__", {})
            if namespace.get(_ATTR) is not chained:
                continue  # someone wrapped ours; it now only passes calls through
            if chained.previous is None:
                del namespace[_ATTR]
            else:
                namespace[_ATTR] = chained.previous

    def record(self, loop: Any, context: dict[str, Any]) -> None:
        try:
            message = str(context.get("message", ""))
            if message.startswith(_UNRETRIEVED):
                self._report(loop, "unretrieved_exception", context)
            elif message.startswith(_PENDING):
                self._report(loop, "pending_task_destroyed", context)
        except Exception as exc:
            from ._monitor import internal_error

            internal_error("tasks", exc)

    def _report(self, loop: Any, kind: str, context: dict[str, Any]) -> None:
        future = context.get("future") or context.get("task")
        labels = task_labels(future) if isinstance(future, asyncio.Task) else None
        if labels is None:
            labels = default_labels()
        coro = future.get_coro() if isinstance(future, asyncio.Task) else None
        api = qualname(coro) if coro is not None else type(future).__name__
        task_name = future.get_name() if isinstance(future, asyncio.Task) else None
        exc = context.get("exception")
        detail: dict[str, str] = {}
        if kind == "unretrieved_exception" and isinstance(exc, BaseException):
            exc_name = type(exc).__qualname__
            detail["exception"] = exc_name
            stack = traceback_frames(exc.__traceback__) or _code_frame(coro)
            metrics = self.monitor.metrics
            if metrics is not None:
                metrics.child(
                    metrics.task_exceptions_unretrieved_total, framework=labels.framework,
                    handler=labels.handler, exception=exc_name,
                ).inc()
        else:
            stack = suspended_frames(coro) or _code_frame(coro)
        self.monitor.report(
            kind, api=api, stack=stack, labels=labels, task=task_name, loop=loop, detail=detail
        )

    # -- H5 --------------------------------------------------------------------------------

    def never_awaited(self, coro: Any) -> None:
        try:
            name = qualname(coro)
            origin = getattr(coro, "cr_origin", None)
            detail = {"coroutine": name}
            if origin:  # origin tracking was already on (asyncio debug mode, or the user's)
                stack = [Frame(f, line, fn) for f, line, fn in origin]
                detail["origin"] = "created"
            else:
                # Where the last reference was dropped: the creating line when the call was
                # made without ``await``, which is the common case.
                stack = _frames.capture_stack(2)
                detail["origin"] = "dropped"
            defined = _code_frame(coro)
            if defined:
                detail["defined_at"] = f"{defined[0].file}:{defined[0].line}"
            labels = _context.current_labels()
            metrics = self.monitor.metrics
            if metrics is not None:
                metrics.child(
                    metrics.coroutines_never_awaited_total, framework=labels.framework,
                    handler=labels.handler,
                ).inc()
            self.monitor.report("never_awaited", api=name, stack=stack, labels=labels,
                                loop=asyncio._get_running_loop(), detail=detail)
        except Exception as exc:
            from ._monitor import internal_error

            internal_error("tasks", exc)


def _unawaited_message(coro: Any) -> str:
    # The text CPython's own hook produces, so message filters keep matching.
    text = f"coroutine '{coro.__qualname__}' was never awaited"
    origin = getattr(coro, "cr_origin", None)
    if origin:
        import linecache
        import traceback

        entries = [(f, line, fn, linecache.getline(f, line)) for f, line, fn in reversed(origin)]
        text += "\nCoroutine created at (most recent call last)\n"
        text += "".join(traceback.format_list(entries)).rstrip("\n")
    return text


def _make_unawaited_hook(hooks: _Hooks) -> Callable[[Any], None]:
    def _warn_unawaited_coroutine(coro: Any) -> None:
        hooks.never_awaited(coro)
        # stacklevel=2 is this function's caller: the frame that dropped the coroutine, as
        # with CPython's own hook, so locations, registries and module filters are unchanged.
        warnings.warn(_unawaited_message(coro), category=RuntimeWarning, stacklevel=2, source=coro)

    return _warn_unawaited_coroutine


def install(monitor: Monitor) -> Callable[[], None]:
    """Chain the exception handling of running and future loops, hook never-awaited warnings;
    return the undo."""
    hooks = _Hooks(monitor)
    running = asyncio._get_running_loop()
    if running is not None:
        hooks.attach(running)
    _reentry.on_loop_start.append(hooks.attach)

    original = warnings.__dict__.get("_warn_unawaited_coroutine")
    hook: Callable[[Any], None] | None = None
    if original is not None:
        hook = _make_unawaited_hook(hooks)
        warnings._warn_unawaited_coroutine = hook  # type: ignore[attr-defined]

    def undo() -> None:
        if hooks.attach in _reentry.on_loop_start:
            _reentry.on_loop_start.remove(hooks.attach)
        hooks.detach_all()
        if hook is not None and warnings.__dict__.get("_warn_unawaited_coroutine") is hook:
            warnings._warn_unawaited_coroutine = original  # type: ignore[attr-defined]

    return undo
