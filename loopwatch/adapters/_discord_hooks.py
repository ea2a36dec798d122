"""The process-wide class hooks of the discord adapters: views, modals, dynamic items, tasks loops.

discord.py (and each fork) runs these outside any client method, so they are hooked once
on the library's classes, by one :class:`_Hub` per :class:`Flavour`, for every client
instrumentation attached (``_discord_common.Instrumentation``). Label point:
``_Hub._iteration`` (a tasks loop's iterations).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from loopwatch import _handlers, _monitor
from loopwatch._context import raw_labels, reset_labels, set_labels
from loopwatch._patching import Patches

if TYPE_CHECKING:
    from ._discord_common import Instrumentation

# The per-client state lives on the client: it survives ``reload_extension``, which
# re-imports the adapter module and drops its globals.
_STATE_ATTR = "_loopwatch_discord"
# Marks the functions loopwatch put in place, so a loop is never wrapped twice.
_OURS = "__loopwatch_hook__"
_HUB_ATTR = "__loopwatch_hub__"


class Flavour:
    """One discord.py-style library as the shared code sees it.

    ``package`` is its top-level module (``discord``, ``nextcord``, ``disnake``),
    ``commands`` and ``tasks`` its ``ext`` modules, ``compat`` the ``_compat`` module naming
    its internals (the same names for every library), ``framework`` the label value, and
    ``sync_extensions`` whether it calls an extension's ``setup``/``teardown`` and a cog's
    ``cog_unload`` without awaiting them (the forks do; discord.py awaits).
    """

    def __init__(
        self, framework: str, package: Any, commands: Any, tasks: Any, compat: Any,
        *, sync_extensions: bool,
    ) -> None:
        self.framework = framework
        self.package = package
        self.commands = commands
        self.tasks = tasks
        self.compat = compat
        self.sync_extensions = sync_extensions
        self.hub: _Hub = _existing_hub(self) or _Hub(self)


# One flavour per library and framework label, kept while the process lives: reloading
# an adapter module (``reload_extension``) must find the hub that is already attached.
_flavours: dict[tuple[str, int], Flavour] = {}


def flavour(
    framework: str, package: Any, commands: Any, tasks: Any, compat: Any,
    *, sync_extensions: bool,
) -> Flavour:
    """The :class:`Flavour` of ``package`` under ``framework``, created once per process."""
    key = (framework, id(package))
    found = _flavours.get(key)
    if found is None or found.package is not package:
        found = _flavours[key] = Flavour(
            framework, package, commands, tasks, compat, sync_extensions=sync_extensions
        )
    return found


Coro = Coroutine[Any, Any, Any]
CoroFunc = Callable[..., Coro]


class _Outcome:
    """Whether the user's callback raised, for the dispatch running in this context."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


_outcome: contextvars.ContextVar[_Outcome | None] = contextvars.ContextVar(
    "loopwatch_discord_outcome", default=None
)


def _flagging(original: CoroFunc) -> CoroFunc:
    """``original`` that marks the current dispatch failed when it raises."""

    @functools.wraps(original)
    async def callback(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original(*args, **kwargs)
        except Exception:
            cell = _outcome.get()
            if cell is not None:
                cell.failed = True
            raise

    return callback


class _Hub:
    """The process-wide hooks: views, modals, dynamic items and ``tasks`` loops.

    discord.py runs these outside any client method, so they are hooked once on its
    classes, for every :class:`Instrumentation` attached (the first one records loop
    metrics; views go to the instrumentation of the interaction's client).
    """

    def __init__(self, flavour: Flavour) -> None:
        self.flavour = flavour
        self.holders: list[Instrumentation] = []
        self.patches = Patches()  # classes and loops: while any holder is attached
        self.shadows = Patches()  # a callback, only while its dispatch runs
        self._shadow_counts: dict[tuple[int, str], int] = {}
        self._item_labels: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def primary(self) -> Instrumentation | None:
        for holder in self.holders:
            if holder.active:
                return holder
        return None

    def join(self, holder: Instrumentation) -> None:
        first = not self.holders
        self.holders.append(holder)
        if first:
            self._patch_classes()
        try:
            running = asyncio.all_tasks()
        except RuntimeError:  # no running loop: no tasks loop can be running either
            return
        try:
            for loop in self.flavour.compat.running_task_loops(running):
                self.watch_loop(loop)
        except Exception as exc:
            _monitor.internal_error("discord.tasks", exc)

    def leave(self, holder: Instrumentation) -> None:
        if holder in self.holders:
            self.holders.remove(holder)
        if not self.holders:
            self.shadows.undo()
            self._shadow_counts.clear()
            self.patches.undo()

    # -- classes ---------------------------------------------------------------------------

    def _patch_classes(self) -> None:
        compat = self.flavour.compat
        hooks: list[tuple[Callable[[], type | None], str, Callable[[CoroFunc], Any]]] = [
            (compat.view_item_runner_owner, compat.VIEW_ITEM_RUNNER, self._view_runner),
            (compat.modal_runner_owner, compat.VIEW_ITEM_RUNNER, self._modal_runner),
            (compat.dynamic_item_runner_owner, compat.DYNAMIC_ITEM_RUNNER, self._dynamic_runner),
            (lambda: self.flavour.tasks.Loop, "start", self._loop_start),
        ]
        for owner_of, name, make in hooks:
            try:
                owner = owner_of()
                if owner is not None:
                    self.patches.set(owner, name, make(vars(owner)[name]))
            except Exception as exc:  # a discord.py that moved it: that kind goes unlabelled
                _monitor.internal_error("discord.hooks", exc)

    @contextlib.contextmanager
    def _shadowed(self, owner: Any, name: str) -> Iterator[None]:
        """Wrap ``owner.name`` to see whether it raises, for as long as a dispatch runs."""
        key = (id(owner), name)
        count = self._shadow_counts.get(key, 0)
        try:
            if count == 0:
                self.shadows.set(owner, name, _flagging(getattr(owner, name)))
            self._shadow_counts[key] = count + 1
        except Exception as exc:  # an object that refuses it: measure without outcome
            _monitor.internal_error("discord.views", exc)
        try:
            yield
        finally:
            left = self._shadow_counts.get(key, 0) - 1
            if left > 0:
                self._shadow_counts[key] = left
            elif self._shadow_counts.pop(key, None) is not None:
                self.shadows.unpatch(owner, name)

    async def _flagged(
        self, holder: Instrumentation, handler: str, owner: Any, name: str,
        call: Callable[[], Coro],
    ) -> None:
        """Run ``call`` labelled ``handler``, failed if ``owner.name`` (the user's callback,
        shadowed meanwhile) raises: the library catches that exception itself."""
        cell = _Outcome()
        token = _outcome.set(cell)
        try:
            with self._shadowed(owner, name):
                await holder._labelled(handler, call, lambda: cell.failed)
        finally:
            _outcome.reset(token)

    def _view_runner(self, original: CoroFunc) -> CoroFunc:
        async def _scheduled_task(
            view: Any, item: Any, interaction: Any, /,
            *args: Any, **kwargs: Any,
        ) -> Any:
            holder = _holder_for(interaction)
            handler = self._item_label(view, item) if holder is not None else ""
            if holder is None or _already_labelled(self.flavour.framework, handler):
                return await original(view, item, interaction, *args, **kwargs)
            await self._flagged(
                holder, handler, item, "callback",
                lambda: original(view, item, interaction, *args, **kwargs),
            )
            return None

        setattr(_scheduled_task, _OURS, True)
        return _scheduled_task

    def _item_label(self, view: Any, item: Any) -> str:
        try:
            label = self._item_labels.get(item)
        except TypeError:  # an item that cannot be weakly referenced or hashed
            label = None
        if label is None:
            # The attribute that holds the item: the decorated method's name, which
            # discord.py sets on every view instance. Else the item's own class.
            name = next(
                (key for key, value in vars(view).items() if value is item),
                type(item).__name__,
            )
            label = f"view:{type(view).__name__}.{name}"
            with contextlib.suppress(TypeError):
                self._item_labels[item] = label
        return label

    def _modal_runner(self, original: CoroFunc) -> CoroFunc:
        async def _scheduled_task(
            modal: Any, interaction: Any, /, *args: Any, **kwargs: Any,
        ) -> Any:
            holder = _holder_for(interaction)
            handler = "modal:" + type(modal).__name__
            if holder is None or _already_labelled(self.flavour.framework, handler):
                return await original(modal, interaction, *args, **kwargs)
            await self._flagged(
                holder, handler, modal, "on_submit",
                lambda: original(modal, interaction, *args, **kwargs),
            )
            return None

        setattr(_scheduled_task, _OURS, True)
        return _scheduled_task

    def _dynamic_runner(self, original: CoroFunc) -> CoroFunc:
        async def schedule_dynamic_item_call(
            store: Any, component_type: int, factory: type,
            interaction: Any, /, *args: Any, **kwargs: Any,
        ) -> Any:
            holder = _holder_for(interaction)
            handler = "dynamic_item:" + factory.__name__
            if holder is None or _already_labelled(self.flavour.framework, handler):
                return await original(store, component_type, factory, interaction, *args,
                                      **kwargs)
            # discord.py catches and logs a dynamic item's exception itself, before any
            # user hook: the outcome here is ok or cancelled.
            await holder._labelled(
                handler,
                lambda: original(store, component_type, factory, interaction, *args, **kwargs),
                lambda: False,
            )
            return None

        setattr(schedule_dynamic_item_call, _OURS, True)
        return schedule_dynamic_item_call

    # -- tasks loops -----------------------------------------------------------------------

    def _loop_start(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def start(loop: Any, *args: Any, **kwargs: Any) -> Any:
            if self.primary() is not None:
                try:
                    self.watch_loop(loop)
                except Exception as exc:
                    _monitor.internal_error("discord.tasks", exc)
            return original(loop, *args, **kwargs)

        setattr(start, _OURS, True)
        setattr(start, _HUB_ATTR, self)
        return start

    def watch_loop(self, loop: Any) -> None:
        """Label and time ``loop``'s iterations and hooks (running or not); idempotent."""
        if self.patches.patched(loop, "coro") or getattr(
            vars(loop).get("coro"), _OURS, False
        ):
            return
        handler = "task:" + _code_name(loop.coro)
        self.patches.set(loop, "coro", self._iteration(loop.coro, handler))
        hook_runner = self.flavour.compat.LOOP_HOOK_RUNNER
        runner = getattr(loop, hook_runner)
        self.patches.set(
            loop, hook_runner, self._hook_runner(loop, runner, handler)
        )

    def _iteration(self, original: CoroFunc, handler: str) -> CoroFunc:
        @functools.wraps(original)
        async def iteration(*args: Any, **kwargs: Any) -> Any:
            holder = self.primary()
            if holder is None:
                return await original(*args, **kwargs)
            # Label point: one iteration of a tasks loop.
            token = set_labels(self.flavour.framework, handler)
            entry = _handlers.begin_labels(raw_labels())
            try:
                return await holder.timed_call(handler, lambda: original(*args, **kwargs))
            finally:
                reset_labels(token)
                _handlers.end(entry)

        setattr(iteration, _OURS, True)
        return iteration

    def _hook_runner(
        self, loop: Any, original: CoroFunc, handler: str
    ) -> CoroFunc:
        async def call_loop_function(name: str, /, *args: Any, **kwargs: Any) -> Any:
            holder = self.primary()
            if holder is None or not self.flavour.compat.loop_has_hook(loop, name):
                return await original(name, *args, **kwargs)
            # The error handler is the user's reaction to the failed iteration: attributed
            # to the loop, not timed. before_loop/after_loop are timed apart from the
            # iterations (a before_loop usually waits for the bot to be ready).
            error = name == "error"
            await holder._labelled(
                handler if error else f"{handler}:{name}",
                lambda: original(name, *args, **kwargs),
                lambda: False,
                timed=not error,
                # Not a handler that can be stuck: a before_loop waits for the bot to be
                # ready, as long as the connection takes.
                tracked=False,
            )
            return None

        setattr(call_loop_function, _OURS, True)
        return call_loop_function


def _existing_hub(flavour: Flavour) -> _Hub | None:
    """The hub a previous copy of this module left attached (``reload_extension`` re-imports
    the module while other bots may still be watched): one hub per process, whatever copy
    of the module is asking. It is found on the hook it put on ``Loop.start``."""
    hub = getattr(vars(flavour.tasks.Loop).get("start"), _HUB_ATTR, None)
    return hub if hub is not None and hasattr(hub, "holders") else None



def _holder_for(interaction: Any) -> Instrumentation | None:
    """The active instrumentation of the client an interaction came to, if any."""
    holder: Instrumentation | None = getattr(interaction.client, _STATE_ATTR, None)
    return holder if holder is not None and holder.active else None


def _already_labelled(framework: str, handler: str) -> bool:
    """Whether this dispatch is labelled already: should another hook of loopwatch's sit
    on the same runner (a copy of this module from before a reload), one run is still
    counted once."""
    return raw_labels() == (framework, handler)


def _code_name(func: Any) -> str:
    """A function's qualified name without the ``<locals>`` of the functions enclosing it."""
    name = str(getattr(func, "__qualname__", None) or getattr(func, "__name__", "loop"))
    return name.rsplit("<locals>.", 1)[-1]
