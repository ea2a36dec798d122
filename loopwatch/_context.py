"""The handler context: which framework and handler the current work belongs to.

One :class:`~contextvars.ContextVar` carries the labels. asyncio copies it into every task
and ``loop.run_in_executor``/``asyncio.to_thread`` carry it into worker threads, so an
incident raised anywhere inside a request, event or command is attributed to it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ._errors import ConfigError

__all__ = [
    "FRAMEWORKS",
    "NO_HANDLER",
    "Labels",
    "LazyLabels",
    "current_labels",
    "handler_context",
    "raw_labels",
    "reset_labels",
    "set_labels",
    "set_lazy_labels",
]

FRAMEWORKS = frozenset({
    "starlette", "fastapi", "aiohttp", "litestar", "discord", "nextcord", "disnake", "pycord",
    "jupyter", "none",
})
NO_HANDLER = "__none__"


class Labels(NamedTuple):
    """The attribution labels every incident and metric carries."""

    framework: str
    handler: str


class LazyLabels:
    """Labels known only after the work has started, resolved each time they are read.

    An HTTP request is routed after the middleware that labels it has run, so the route
    template is not known when the context variable is set. Subclasses implement
    :meth:`resolve`, which must be cheap, thread-safe and never raise.
    """

    __slots__ = ()

    def resolve(self) -> Labels:
        """The labels as they are now."""
        raise NotImplementedError


_DEFAULT = Labels("none", NO_HANDLER)
# Read it only through current_labels(): the value may be a LazyLabels.
_labels: contextvars.ContextVar[Labels | LazyLabels | None] = contextvars.ContextVar(
    "loopwatch_labels", default=None
)
# Outside any handler the framework label is the install's default (``jupyter`` in a kernel).
_default_labels = _DEFAULT


def set_default_framework(framework: str) -> None:
    """Set the framework reported for work outside any handler context."""
    global _default_labels
    _default_labels = Labels(framework, NO_HANDLER)


def current_labels() -> Labels:
    """Return the labels of the work running now."""
    labels = _labels.get()
    if labels is None:
        return _default_labels
    if isinstance(labels, LazyLabels):
        return labels.resolve()
    return labels


def set_labels(framework: str, handler: str) -> contextvars.Token[Labels | LazyLabels | None]:
    """Set the labels without validation (adapters' fast path); undo with :func:`reset_labels`."""
    return _labels.set(Labels(framework, handler))


# The adapters' per-request fast path: the context variable's own methods, so setting and
# resetting the labels adds no Python frame to a request.
#: Set labels that :func:`current_labels` resolves on read; undo with :func:`reset_labels`.
set_lazy_labels = _labels.set
#: Undo a :func:`set_labels` or :func:`set_lazy_labels` (takes the token they returned).
reset_labels = _labels.reset
#: The raw value: a :class:`Labels`, a :class:`LazyLabels` or ``None`` outside any handler.
raw_labels = _labels.get


# While stuck-handler tracking is on, ``(begin, end)`` of loopwatch._handlers (which
# imports this module, so it sets the hook rather than being imported here).
track: tuple[Callable[[Labels], Any], Callable[[Any], None]] | None = None


@contextlib.contextmanager
def handler_context(framework: str, handler: str) -> Iterator[Labels]:
    """Attribute the work inside the ``with`` block to ``framework`` and ``handler``.

    ``framework`` is one of ``starlette``, ``fastapi``, ``aiohttp``, ``litestar``,
    ``discord``, ``nextcord``, ``disnake``, ``pycord``, ``jupyter``, ``none``;
    ``handler`` should be a template (``GET /items/{item_id}``, ``command:ping``), never a
    raw value such as an id, since it becomes a metric label.
    """
    if framework not in FRAMEWORKS:
        raise ConfigError(
            f"handler_context: framework={framework!r} is not accepted; "
            f"use one of {', '.join(sorted(FRAMEWORKS))}"
        )
    if not isinstance(handler, str) or not handler:
        raise ConfigError(f"handler_context: handler={handler!r} must be a non-empty string")
    labels = Labels(framework, handler)
    token = _labels.set(labels)
    hooks = track
    entry = hooks[0](labels) if hooks is not None else None
    try:
        yield labels
    finally:
        _labels.reset(token)
        if hooks is not None:
            hooks[1](entry)
