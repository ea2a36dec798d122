"""Pure-ASGI middleware that attributes the work of every request to its route template.

``LoopwatchMiddleware`` puts a per-request label holder in loopwatch's handler context
before it calls the app. The route is only known once the app's router has run, so the
holder resolves the template when the labels are read — by an incident raised inside the
endpoint (``async def``, a sync ``def`` in the threadpool, a background task) or, with
``handler_metrics=True``, once the response is done. Nothing is routed twice: the
resolution reads what the router left in the scope (the endpoint of the deepest match,
Starlette's ``scope["route"]``, FastAPI's effective route of an included router or its
``frontend()``, the mount path in ``root_path``), finds the route by identity in a tree of
the app's routes built once, and caches per route object, so its cost does not grow with
the number of routes. Labels read before the router ran (a middleware ahead of it blocks,
or answers first) name the route the router would pick, tried in the tree.

Handler values: ``GET /items/{item_id}`` (mount and include prefixes as templates, the
server's ``root_path`` not), ``WEBSOCKET /ws/{room}``, ``GET /static/{path}`` for a mounted
app without routes and ``GET /app/{path}`` for a FastAPI front-end, ``OTHER /x`` for methods
outside the standard set, ``__unmatched__`` when no route matched (404, a
``redirect_slashes`` redirect). A concrete path never becomes a label: below a mount whose
routes loopwatch cannot see, the deepest mount it can see is the label.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial as _partial
from typing import Any

from prometheus_client import CollectorRegistry

from .. import _handlers
from .._compat import prometheus as prom
from .._context import (
    FRAMEWORKS,
    Labels,
    LazyLabels,
    raw_labels,
    reset_labels,
    set_lazy_labels,
)
from .._errors import ConfigError, LoopwatchError
from .._runtime import active, internal_error
from ..metrics import Metrics, NullMetrics, get_metrics
from ._routes import _CACHE_LIMIT, UNMATCHED, _Resolver
from ._routes import STANDARD_METHODS as STANDARD_METHODS

__all__ = ["UNMATCHED", "LoopwatchMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_now = time.perf_counter
# Starlette's and uvicorn's exceptions for a client that went away, by name (no imports).
_DISCONNECTS = frozenset({"ClientDisconnect", "ClientDisconnected", "WebSocketDisconnect"})


class LoopwatchMiddleware:
    """Attribute everything a request does to ``framework`` and its route template.

    Add it to any ASGI app (``app.add_middleware(LoopwatchMiddleware)``). ``lifespan`` and
    other scope types pass straight through. With ``handler_metrics=True`` it also records
    ``loopwatch_handler_duration_seconds{framework,handler,outcome}`` with ``outcome`` one
    of ``ok``, ``error`` (an exception escaped, or a 5xx status) and ``cancelled`` (the
    client went away first). ``framework`` (``starlette`` or ``fastapi``) is detected from
    the app when not given. Without a ``registry`` of its own the durations go where the
    installed monitor's metrics go, following it when ``install(registry=...)`` changes it.
    The middleware never raises an error of its own into the app.

    Each HTTP request is tracked while in flight (``loopwatch_handlers_in_flight``) and
    reported once as ``stuck_handler`` when its tasks wait on the same thing for
    ``stuck_after`` seconds; a response that keeps streaming moves on to a new wait with
    every chunk, so it is never stuck. WebSocket sessions are tracked only with
    ``stuck_websockets=True`` (a quiet socket is normal).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        handler_metrics: bool = False,
        framework: str | None = None,
        stuck_websockets: bool = False,
    ) -> None:
        if framework is not None and framework not in FRAMEWORKS:
            raise ConfigError(
                f"LoopwatchMiddleware: framework={framework!r} is not accepted; "
                f"use one of {', '.join(sorted(FRAMEWORKS))}"
            )
        self.app = app
        self.stuck_websockets = stuck_websockets
        self.handler_metrics = handler_metrics
        self.framework = framework
        self._metrics: Metrics | NullMetrics | None = None
        # No registry given: follow the installed monitor's (see _followed).
        self._follow = handler_metrics and registry is None
        if handler_metrics:
            try:
                # Created now, so a clash with another metric of that name fails at startup.
                self._metrics = get_metrics(registry)
            except LoopwatchError:
                raise
            except Exception as exc:  # e.g. an unwritable PROMETHEUS_MULTIPROC_DIR
                internal_error("asgi", exc)
                self._metrics = NullMetrics()
        self._resolver = _Resolver(self)
        # (id(leaf), mount prefix, method, outcome) -> (leaf, observe): see _observe.
        self._children: dict[
            tuple[int, str, Any, str], tuple[object, Callable[[float], None]]
        ] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        token = None
        root_path = ""
        key = 0
        try:
            outer = raw_labels()  # an outer LoopwatchMiddleware's request, maybe
            # A mounted app instrumented too: the outermost middleware labels (and times)
            # the request, with the mount prefix only it can see.
            if type(outer) is not _RequestLabels or outer[1] is not scope:
                if self.framework is None:
                    self._detect_framework(scope)
                root_path = scope.get("root_path", "")
                labels = _RequestLabels((self._resolver, scope, root_path))
                token = set_lazy_labels(labels)
                # In flight (for stuck requests): inline, a call costs more than the rest.
                if _TRACKING[0] and (kind == "http" or self.stuck_websockets):
                    key = id(labels)
                    _INFLIGHT[key] = labels
                    if _CHECKER_ASLEEP[0]:
                        _FAST.wake()
        except Exception as exc:
            internal_error("asgi", exc)
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            metrics = self._metrics
            if metrics is None:
                await self.app(scope, receive, send)
                return
            if self._follow:
                metrics = self._followed(metrics)
            # handler_metrics, inline: one coroutine frame less per request.
            sent: list[Any] = [0, False]  # status, body complete
            started = _now()
            try:
                await self.app(scope, receive, _partial(_track, send, sent))
            except BaseException as exc:
                cancelled = (
                    isinstance(exc, asyncio.CancelledError)
                    # Starlette's and uvicorn's errors for a client that went away.
                    or type(exc).__name__ in _DISCONNECTS
                    or _failed_sending(send, exc)
                )
                outcome = "cancelled" if cancelled else "error"
                self._observe(metrics, scope, root_path, outcome, started)
                raise
            status = sent[0]
            if kind == "websocket":
                outcome = "ok"
            elif status == 0 or status >= 500:
                outcome = "error"  # no response at all: the server answers 500
            elif not sent[1]:
                # Starlette stops a streaming response when the client goes away.
                outcome = "cancelled"
            else:
                outcome = "ok"
            self._observe(metrics, scope, root_path, outcome, started)
        finally:
            try:
                reset_labels(token)
                if key:
                    # A with-block (contextlib.suppress) costs more per request than try.
                    try:  # noqa: SIM105
                        del _INFLIGHT[key]
                    except KeyError:  # tracking was turned off (and emptied) meanwhile
                        pass
                    if _REPORTED:  # some handler is stuck now: was it this one?
                        _finished(key)
            except Exception as exc:
                internal_error("asgi", exc)

    def _followed(self, metrics: Metrics | NullMetrics) -> Metrics | NullMetrics:
        # The installed monitor's metrics, else those bound at construction (the default
        # registry's). A change drops the children cached for the previous ones.
        monitor = active()
        current = monitor.metrics if monitor is not None else None
        if current is None or current is metrics:
            return metrics
        self._metrics = current
        self._children.clear()
        return current  # type: ignore[no-any-return]

    def _detect_framework(self, scope: Scope) -> None:
        app = scope.get("app", self.app)
        modules = {cls.__module__.partition(".")[0] for cls in type(app).__mro__}
        self.framework = "fastapi" if "fastapi" in modules else "starlette"

    def labels_for(self, scope: Scope, root_path: str = "") -> Labels:
        """The labels of a request, from what its router has left in ``scope`` so far.

        ``root_path`` is the scope's ``root_path`` as the request entered the middleware
        (the server's, which the template leaves out). Never raises.
        """
        return self._resolver.labels(scope, root_path)

    def _observe(
        self, metrics: Metrics | NullMetrics, scope: Scope, root_path: str, outcome: str,
        started: float,
    ) -> None:
        elapsed = _now() - started
        try:
            # Keyed by what the router matched (the resolver's leaf), not by the labels it
            # resolves to: a repeat request skips the resolver's own cache. The leaf is kept
            # in the value and compared, so a recycled id never finds another's histogram.
            resolver = self._resolver
            try:
                leaf, prefix = resolver.leaf(scope, root_path)
            except Exception as exc:  # counted; labels() below says __unmatched__
                internal_error("asgi", exc)
                leaf, prefix = None, ""
            key = (id(leaf), prefix, scope.get("method"), outcome)
            found = self._children.get(key)
            if found is not None and found[0] is leaf:
                found[1](elapsed)
                return
            labels = resolver.labels(scope, root_path)
            self._new_child(metrics, labels, outcome, key, leaf)(elapsed)
        except Exception as exc:
            internal_error("asgi", exc)

    def _new_child(
        self, metrics: Metrics | NullMetrics, labels: Labels, outcome: str,
        key: tuple[int, str, Any, str], leaf: object,
    ) -> Callable[[float], None]:
        child = metrics.child(
            metrics.handler_duration_seconds, framework=labels.framework,
            handler=labels.handler, outcome=outcome,
        )
        observe = prom.fast_observe(child)
        # Kept only when the value was admitted under the label cap (a value folded into
        # "__other__" must count as an overflow on every request), and not for a matched
        # route the resolver could not name yet (it does not cache that either).
        if labels.handler in prom.label_values(child) and (
            leaf is None or labels.handler != UNMATCHED
        ):
            if len(self._children) >= _CACHE_LIMIT:
                self._children.clear()
            self._children[key] = (leaf, observe)
        return observe


# The request's task is found by this frame on its await chain, only once it is stuck.
_CALL = LoopwatchMiddleware.__call__.__code__
_FAST = _handlers.FAST
_TRACKING, _CHECKER_ASLEEP = _FAST.on, _FAST.asleep
_INFLIGHT, _REPORTED = _FAST.inflight, _FAST.reported
_finished = _handlers.finished


class _RequestLabels(LazyLabels, tuple[Any, Scope, str]):
    """The labels of one request, resolved from its scope on each read.

    ``(resolver, scope, root_path at entry)``: a tuple, because one is made per request
    and a tuple is the cheapest object Python builds. Work that outlives the request (a
    task it started) reads the final scope, which nothing changes any more.
    """

    __slots__ = ()

    def resolve(self) -> Labels:
        resolver: _Resolver = self[0]
        return resolver.labels(self[1], self[2])


def _track(send: Send, sent: list[Any], message: Message) -> Awaitable[None]:
    """The ``send`` the app gets with ``handler_metrics`` (bound with ``functools.partial``).

    It notes the status and whether the body is complete in ``sent`` (``[status,
    complete]``) and hands back the server's own awaitable: no coroutine and no object of
    ours per message. A send that fails (ASGI 2.4: an ``OSError`` once the client has
    gone) is found afterwards, off the fast path, by :func:`_failed_sending`.
    """
    kind = message["type"]
    if kind == "http.response.body":  # first: a streamed response sends many
        if not message.get("more_body", False):
            sent[1] = True
    elif kind == "http.response.start":
        sent[0] = message.get("status", 200)
    elif (
        # pathsend and zerocopysend (ASGI extensions) send a whole file or a part of one.
        kind == "http.response.zerocopysend" and not message.get("more_body", False)
    ) or kind == "http.response.pathsend":
        sent[1] = True
    return send(message)


def _failed_sending(send: Send, exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` raised by the server's ``send``."""
    if not isinstance(exc, OSError):
        return False
    try:
        code = _code_of(send)
        tb = exc.__traceback__
        while code is not None and tb is not None:
            if tb.tb_frame.f_code is code:
                return True
            tb = tb.tb_next
    except Exception as error:  # never let the outcome replace the app's exception
        internal_error("asgi", error)
    return False


def _code_of(func: object) -> types.CodeType | None:
    """The code object a Python callable runs (function, bound method, ``__call__``)."""
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if code is None:
        call = getattr(type(func), "__call__", None)  # noqa: B004 - its code, not a test
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    return code if isinstance(code, types.CodeType) else None


_FAST.mark(_RequestLabels, _CALL)
