"""H4/H5: task exceptions nobody retrieved, tasks destroyed while pending, coroutines never
awaited.

H4. asyncio reports both task hazards from the future's finalizer by calling
``loop.call_exception_handler(context)``. loopwatch wraps that method at class level (the
stdlib ``BaseEventLoop`` and ``uvloop.Loop``): the wrapper records the incident, then calls
the method it wraps, which calls the user's handler (``set_exception_handler``) or the
default one exactly as before. Nothing is set on a loop instance, so a loop's own
``call_exception_handler``, ``set_exception_handler`` and ``get_exception_handler`` behave
as without loopwatch, and an instance attribute a user or a test sets (a mock) wins.

H5. CPython funnels the "coroutine '...' was never awaited" ``RuntimeWarning`` through a
hook in the ``warnings`` module, looked up on each call (:mod:`._compat.asyncio`).
loopwatch's replacement records the incident (every occurrence, whatever the filters say)
and issues the same warning, with the same text, category, source and location (the frame
that dropped the coroutine), so the user's filters and handlers see what they saw before.

The labels of a task come from its own context, read only when an incident happens.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import contextvars
import functools
import types
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _context, _frames, _runtime
from ._compat import asyncio as aio
from ._frames import Frame
from ._patching import ImportHook, Patches, uvloop_patcher

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["install", "task_context", "task_labels"]

_UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")
_PENDING = "Task was destroyed but it is pending"


def task_context(task: Any) -> contextvars.Context | None:
    """The context a task runs its steps in, readable from any thread; ``None`` if unknown."""
    return aio.task_context(task)


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


class _Hooks:
    """The H4/H5 hooks of one install."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    # -- H4 --------------------------------------------------------------------------------

    def record(self, loop: Any, context: dict[str, Any]) -> None:
        try:
            message = str(context.get("message", ""))
            if message.startswith(_UNRETRIEVED):
                self._report(loop, "unretrieved_exception", context)
            elif message.startswith(_PENDING):
                self._report(loop, "pending_task_destroyed", context)
        except Exception as exc:
            _runtime.internal_error("tasks", exc)

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
        else:
            stack = suspended_frames(coro) or _code_frame(coro)
        # The task's own context: its span gets the event, not whatever runs at collection.
        own = task_context(future) if isinstance(future, asyncio.Task) else None
        self.monitor.report(
            kind, api=api, stack=stack, labels=labels, task=task_name, loop=loop, detail=detail,
            context=own,
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
            self.monitor.report("never_awaited", api=name, stack=stack,
                                loop=aio.get_running_loop(), detail=detail)
        except Exception as exc:
            _runtime.internal_error("tasks", exc)


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
    def warn_unawaited(coro: Any) -> None:
        hooks.never_awaited(coro)
        # stacklevel=2 is this function's caller: the frame that dropped the coroutine, as
        # with CPython's own hook, so locations, registries and module filters are unchanged.
        warnings.warn(_unawaited_message(coro), category=RuntimeWarning, stacklevel=2, source=coro)

    return warn_unawaited


def _make_call_exception_handler(
    hooks: _Hooks,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def call_exception_handler(self: Any, context: dict[str, Any]) -> Any:
            hooks.record(self, context)
            return original(self, context)

        return call_exception_handler

    return make


def install(monitor: Monitor) -> Callable[[], None]:
    """Wrap the loops' exception handling at class level and hook never-awaited warnings;
    return the undo."""
    hooks = _Hooks(monitor)
    patches = Patches()
    make = _make_call_exception_handler(hooks)
    patches.patch(asyncio.base_events.BaseEventLoop, "call_exception_handler", make)

    uvloop_hook = ImportHook("uvloop", uvloop_patcher(patches, "call_exception_handler", make))
    uvloop_hook.start()

    original = aio.unawaited_hook()
    hook: Callable[[Any], None] | None = None
    if original is not None:
        hook = _make_unawaited_hook(hooks)
        aio.set_unawaited_hook(hook)

    def undo() -> None:
        uvloop_hook.stop()
        patches.undo()
        if hook is not None and aio.unawaited_hook() is hook and original is not None:
            aio.set_unawaited_hook(original)

    return undo
