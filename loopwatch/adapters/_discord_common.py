"""What the discord.py adapter and the adapters of its forks share: every hook and label.

discord.py, nextcord, disnake and py-cord keep discord.py's structure: an event runner on
the client, ``Bot.invoke`` for prefix commands, ``tasks.Loop`` with its hook runner, a view
runner. The adapters ``loopwatch.adapters.discord`` (discord.py and py-cord),
``loopwatch.adapters.nextcord`` and ``loopwatch.adapters.disnake`` each import their
library and describe it as a :class:`Flavour` (its modules, its ``framework`` label and
the ``_compat`` module that names its internals); everything else is here, once.

Label points (where the handler label is set, for anyone adding per-handler work):
``Instrumentation._wrap_run_event`` (events), ``Instrumentation._labelled`` (commands,
application commands, views, modals, dynamic items, a loop's hooks) and
``_discord_hooks._Hub._iteration`` (a tasks loop's iterations); the class hooks themselves
are in ``_discord_hooks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import loopwatch
from loopwatch import _config, _handlers, _monitor
from loopwatch._context import Labels, raw_labels, reset_labels, set_labels
from loopwatch._patching import Patches
from loopwatch.metrics import (
    Metrics,
    MetricsServer,
    NullMetrics,
    get_metrics,
    start_http_server,
)

from ._discord_hooks import _STATE_ATTR, CoroFunc, Flavour, flavour

__all__ = ["Flavour", "Instrumentation", "attached", "flavour", "instrument", "uninstrument"]

_LATENCY_INTERVAL = 5.0


class Instrumentation:
    """loopwatch attached to one client: its hooks, latency gauge and metrics server.

    Returned by :func:`instrument`; :class:`LoopwatchCog` manages one for a bot. Each
    adapter module subclasses it with its library's :class:`Flavour`.
    """

    flavour: Flavour

    def __init__(
        self,
        client: Any,
        *,
        registry: Any = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
        latency_interval: float = _LATENCY_INTERVAL,
    ) -> None:
        # The core's one parser: the same checks and messages as install()'s.
        metrics_port = _config.parse("metrics_port", metrics_port)
        metrics_addr = _config.parse("metrics_addr", metrics_addr)
        latency_interval = _config.parse_seconds("latency_interval", latency_interval)
        self.client = client
        self.active = False
        self.metrics_server: MetricsServer | None = None
        self._registry = registry
        self._metrics_port = metrics_port
        self._metrics_addr = metrics_addr
        self._latency_interval = latency_interval
        self._metrics: Metrics | NullMetrics | None = None
        self._monitor: _monitor.Monitor | None = None
        self._patches = Patches()
        self._tree: Any = None
        self._shards: set[str] = set()
        self._poller: asyncio.Task[None] | None = None
        self._by_cog = False

    # -- attach / detach -------------------------------------------------------------------

    def _attach(self) -> None:
        # The cog's registry installs loopwatch with it; an install the user made already
        # is not reconfigured (the cog's metrics then go to its registry alone).
        options = {} if self._registry is None or _monitor.current() is not None else {
            "registry": self._registry
        }
        self._monitor = _monitor.acquire(**options)
        if self._monitor is None:  # LOOPWATCH_DISABLE: stay out of the way entirely
            return
        self._metrics = self._monitor.built_metrics()
        if self._registry is not None:
            try:
                self._metrics = get_metrics(self._registry)
            except loopwatch.LoopwatchError:
                # A clash with one of the user's own metrics: say so at load.
                _monitor.release(self._monitor)
                self._monitor = None
                raise
            except Exception as exc:  # metrics must never take the bot down
                _monitor.internal_error("discord.metrics", exc)
                self._metrics = NullMetrics()
        self.active = True
        client = self.client
        compat = self.flavour.compat
        self._patches.set(client, compat.EVENT_RUNNER, self._wrap_run_event(
            getattr(client, compat.EVENT_RUNNER)))
        if isinstance(client, self.flavour.commands.Bot):
            self._patches.set(client, "invoke", self._wrap_invoke(client.invoke))
        app_runner = compat.APP_COMMAND_RUNNER
        if app_runner is not None and callable(getattr(client, app_runner, None)):
            self._patches.set(client, app_runner, self._wrap_app_invoke(
                getattr(client, app_runner)))
        processor = compat.APP_COMMAND_PROCESSOR
        if processor is not None and callable(getattr(client, processor, None)):
            self._patches.set(client, processor, self._wrap_app_process(
                getattr(client, processor)))
        self._attach_tree()
        setattr(client, _STATE_ATTR, self)
        self.flavour.hub.join(self)
        with contextlib.suppress(RuntimeError):  # no running loop: started by the first event
            self._start_poller(asyncio.get_running_loop())
        if self._metrics_port is not None:
            self._start_server()

    def _attach_tree(self) -> None:
        compat = self.flavour.compat
        tree = compat.command_tree(self.client)
        if tree is not None and self._tree is None:
            self._tree = tree
            self._patches.set(tree, compat.TREE_RUNNER, self._wrap_tree_call(
                getattr(tree, compat.TREE_RUNNER)))

    def _detach(self) -> tuple[MetricsServer | None, asyncio.Task[None] | None]:
        """Undo every hook; return the metrics server and the poller for the caller to end."""
        if getattr(self.client, _STATE_ATTR, None) is self:
            delattr(self.client, _STATE_ATTR)
        was_active, self.active = self.active, False
        # A hook someone wrapped after us stays in their chain; ours is then a pass-through
        # because ``active`` is False.
        self._patches.undo()
        self._tree = None
        if was_active:
            self.flavour.hub.leave(self)
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
        self._clear_latency()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            _monitor.release(monitor)
        server, self.metrics_server = self.metrics_server, None
        return server, poller

    def close(self) -> None:
        """Detach from the client and stop the metrics server (blocks until it stops)."""
        server, _ = self._detach()
        if server is not None:
            server.close()

    async def aclose(self) -> None:
        """Detach from the client; stop the metrics server off the event loop."""
        server, poller = self._detach()
        if poller is not None and poller is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if server is not None:
            await asyncio.get_running_loop().run_in_executor(None, server.close)

    # -- the hooks -------------------------------------------------------------------------

    def _wrap_run_event(self, original: CoroFunc) -> CoroFunc:
        async def run_event(
            coro: CoroFunc, event_name: str, /, *args: Any, **kwargs: Any
        ) -> None:
            if not self.active:
                return await original(coro, event_name, *args, **kwargs)  # type: ignore[no-any-return]
            if self._poller is None:
                self._start_poller(asyncio.get_running_loop())
                self._attach_tree()
            handler = "event:" + event_name
            # Label point: every event handler (and the client's on_error).
            token = set_labels(self.flavour.framework, handler)
            entry = _handlers.begin_labels(raw_labels())
            try:
                # The label also covers the client's on_error, which discord.py calls from
                # inside its event runner; the timing covers the handler alone.
                await original(self._timed(coro, handler), event_name, *args, **kwargs)
            finally:
                reset_labels(token)
                _handlers.end(entry)
            return None

        return run_event

    async def _labelled(
        self, handler: str, call: Callable[[], Awaitable[Any]], failed: Callable[[], bool],
        *, timed: bool = True, tracked: bool = True,
    ) -> None:
        """Run ``call`` under ``handler``'s labels and record its duration and outcome."""
        # Label point: commands, application commands, view items, modals, dynamic items
        # and a tasks loop's before/after/error hooks.
        token = set_labels(self.flavour.framework, handler)
        entry = _handlers.begin_labels(raw_labels()) if tracked else None
        start = time.perf_counter()
        outcome = "error"
        try:
            await call()
            outcome = "error" if failed() else "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            reset_labels(token)
            _handlers.end(entry)
            if outcome == "error" and _cancelling():
                outcome = "cancelled"
            if timed:
                self._observe(handler, outcome, time.perf_counter() - start)

    async def timed_call(self, handler: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``call()`` and observe its duration and outcome under ``handler``."""
        start = time.perf_counter()
        outcome = "error"
        try:
            result = await call()
            outcome = "ok"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._observe(handler, outcome, time.perf_counter() - start)

    def _timed(self, func: CoroFunc, handler: str) -> CoroFunc:
        async def handler_call(*args: Any, **kwargs: Any) -> Any:
            return await self.timed_call(handler, lambda: func(*args, **kwargs))

        return handler_call

    def _wrap_invoke(self, original: CoroFunc) -> CoroFunc:
        async def invoke(ctx: Any, /) -> None:
            if not self.active or ctx.command is None:
                return await original(ctx)  # type: ignore[no-any-return]
            # Bot.invoke hands command errors (failed checks included) to the error handlers
            # instead of raising; they all mark the context failed.
            await self._labelled(
                "command:" + _command_name(self.flavour, ctx), lambda: original(ctx),
                lambda: bool(ctx.command_failed),
            )
            return None

        return invoke

    def _wrap_app_invoke(self, original: CoroFunc) -> CoroFunc:
        """A client's own application-command invoker (py-cord): the context knows the
        command, subcommands of groups included."""

        async def invoke_application_command(ctx: Any, /) -> None:
            command = getattr(ctx, "command", None)
            if not self.active or command is None:
                return await original(ctx)  # type: ignore[no-any-return]
            # Errors go to the command's error dispatch, which marks the context failed.
            await self._labelled(
                "app_command:" + _app_command_name(ctx), lambda: original(ctx),
                lambda: bool(getattr(ctx, "command_failed", False)),
            )
            return None

        return invoke_application_command

    def _wrap_app_process(self, original: CoroFunc) -> CoroFunc:
        """A client's processor of application-command interactions (disnake): the command
        is looked up the way the library will, by the compat module."""
        compat = self.flavour.compat

        async def process_application_commands(interaction: Any, /, *args: Any,
                                               **kwargs: Any) -> None:
            name = None
            if self.active:
                try:
                    name = compat.app_command_name(self.client, interaction)
                except Exception as exc:  # an unexpected payload: leave it unlabelled
                    _monitor.internal_error("discord.app_commands", exc)
            if name is None:  # an unknown command: the library ignores or answers it
                return await original(interaction, *args, **kwargs)  # type: ignore[no-any-return]
            # Errors go to the command's error dispatch, which marks the interaction failed.
            await self._labelled(
                "app_command:" + name, lambda: original(interaction, *args, **kwargs),
                lambda: bool(getattr(interaction, "command_failed", False)),
            )
            return None

        return process_application_commands

    def _wrap_tree_call(self, original: CoroFunc) -> CoroFunc:
        async def _call(interaction: Any, /) -> None:
            if not self.active:
                return await original(interaction)  # type: ignore[no-any-return]
            command = interaction.command
            # Autocomplete runs per keystroke: a label of its own, so the command's
            # durations describe the command itself.
            autocomplete = self.flavour.package.InteractionType.autocomplete
            kind = "autocomplete:" if interaction.type is autocomplete else "app_command:"
            handler = "__unmatched__" if command is None else kind + command.qualified_name
            await self._labelled(
                handler, lambda: original(interaction), lambda: bool(interaction.command_failed),
            )
            return None

        return _call

    def _observe(self, handler: str, outcome: str, seconds: float) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        try:
            metrics.child(
                metrics.handler_duration_seconds,
                framework=self.flavour.framework, handler=handler, outcome=outcome,
            ).observe(seconds)
        except Exception as exc:
            _monitor.internal_error("discord.metrics", exc)

    # -- gateway latency -------------------------------------------------------------------

    def update_latency(self) -> None:
        """Export the gateway latency now (the poller does this every few seconds)."""
        metrics = self._metrics
        if metrics is None or not self.active:
            return
        client = self.client
        if isinstance(client, self.flavour.package.AutoShardedClient):
            pairs = client.latencies
        else:
            pairs = [(client.shard_id or 0, client.latency)]
        gauge = metrics.discord_latency_seconds
        seen: set[str] = set()
        for shard, latency in pairs:
            # Before the first heartbeat discord.py reports NaN or inf: absent, not zero.
            if math.isfinite(latency) and latency >= 0:
                label = str(shard)
                # Not through Metrics.child: its cache would keep a removed child alive.
                gauge.labels(shard=label).set(latency)
                seen.add(label)
        self._remove_shards(self._shards - seen)
        self._shards = seen

    def _clear_latency(self) -> None:
        self._remove_shards(self._shards)
        self._shards = set()

    def _remove_shards(self, shards: set[str]) -> None:
        if not shards or self._metrics is None or _multiprocess():
            # prometheus-client cannot remove a child in multiprocess mode.
            return
        for shard in shards:
            with contextlib.suppress(KeyError):
                self._metrics.discord_latency_seconds.remove(shard)

    def _start_poller(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._poller is None:
            self._poller = loop.create_task(self._poll(), name="loopwatch: discord latency")

    async def _poll(self) -> None:
        while self.active and not self.client.is_closed():
            try:
                self.update_latency()
            except Exception as exc:
                _monitor.internal_error("discord.latency", exc)
            await asyncio.sleep(self._latency_interval)
        if self.active:
            self._clear_latency()

    # -- exposition ------------------------------------------------------------------------

    def _start_server(self) -> None:
        port, addr = self._metrics_port, self._metrics_addr
        if port is None:
            return
        registry = self._registry if self._registry is not None else (
            self._monitor.config.registry if self._monitor is not None else None
        )
        try:
            self.metrics_server = start_http_server(port, addr, registry)
        except OSError as exc:
            _monitor.internal_error("discord.metrics_server", exc)
            if self._monitor is not None:
                self._monitor.report(
                    "internal", api="metrics.start_http_server", action="raised",
                    labels=Labels(self.flavour.framework, "__none__"),
                    detail={"addr": addr, "port": str(port), "error": str(exc)},
                    hint=f"The discord metrics server could not bind {addr}:{port} ({exc}); "
                    "the bot keeps running without it. Pass a free metrics_port.",
                )


def _command_name(flavour: Flavour, ctx: Any) -> str:
    """The qualified name of the command that will run, subcommands of groups included.

    Bot.invoke only knows the top-level command; the subcommand is picked later by
    Group.invoke from the next word, so peek at it here and put the view back.
    """
    command: Any = ctx.command
    view = ctx.view
    if isinstance(command, flavour.commands.Group) and view is not None:
        index, previous = view.index, view.previous
        try:
            while isinstance(command, flavour.commands.Group):
                view.skip_ws()
                word = view.get_word()
                sub = command.all_commands.get(word) if word else None
                if sub is None:
                    break
                command = sub
        finally:
            view.index, view.previous = index, previous
    return str(command.qualified_name)


def _app_command_name(ctx: Any) -> str:
    """The qualified name of the application command that will run (py-cord).

    The context holds the top-level command; a group picks its subcommand later from the
    interaction's options, so follow them here, through the group's own subcommands only
    (a name is never taken from the payload unless a subcommand has it).
    """
    command = ctx.command
    data = getattr(getattr(ctx, "interaction", None), "data", None)
    options = data.get("options") if isinstance(data, dict) else None
    for _ in range(3):  # groups nest two levels deep at most
        subcommands = getattr(command, "subcommands", None)
        if not subcommands or not isinstance(options, list):
            break
        # Option types 1 and 2: a subcommand and a subcommand group.
        chosen: dict[str, Any] | None = next(
            (o for o in options if isinstance(o, dict) and o.get("type") in (1, 2)), None
        )
        if chosen is None:
            break
        name = chosen.get("name")
        sub = next((c for c in subcommands if getattr(c, "name", None) == name), None)
        if sub is None:
            break
        command, options = sub, chosen.get("options")
    return str(command.qualified_name)


def _cancelling() -> bool:
    """Whether the current task is being cancelled (discord.py swallows it in commands)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return bool(cancelling()) if cancelling is not None else False


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))



def instrument(
    cls: type[Instrumentation],
    client: Any,
    *,
    registry: Any = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    latency_interval: float = _LATENCY_INTERVAL,
) -> Instrumentation:
    """Attach a ``cls`` to ``client`` unless one is attached already (then return it)."""
    existing: Instrumentation | None = getattr(client, _STATE_ATTR, None)
    if existing is not None:
        return existing
    state = cls(
        client, registry=registry, metrics_port=metrics_port, metrics_addr=metrics_addr,
        latency_interval=latency_interval,
    )
    state._attach()
    return state


def instrumenter(cls: type[Instrumentation], library: str) -> Callable[..., Instrumentation]:
    """The public ``instrument`` of an adapter module whose instrumentation is ``cls``."""

    def instrument_client(
        client: Any,
        *,
        registry: Any = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
        latency_interval: float = _LATENCY_INTERVAL,
    ) -> Instrumentation:
        return instrument(
            cls, client, registry=registry, metrics_port=metrics_port,
            metrics_addr=metrics_addr, latency_interval=latency_interval,
        )

    instrument_client.__name__ = instrument_client.__qualname__ = "instrument"
    instrument_client.__doc__ = (
        f"Watch a ``{library}.Client`` (or any bot) without the cog; idempotent.\n\n"
        "Installs loopwatch if it is not installed (options from the ``LOOPWATCH_*``\n"
        "environment). Undo with :func:`uninstrument`."
    )
    return instrument_client


def uninstrument(client: Any) -> None:
    """Undo :func:`instrument` exactly (idempotent); stops its metrics server."""
    state: Instrumentation | None = getattr(client, _STATE_ATTR, None)
    if state is not None:
        state.close()


def attached(client: Any) -> Instrumentation | None:
    """The instrumentation attached to ``client``, if any."""
    state: Instrumentation | None = getattr(client, _STATE_ATTR, None)
    return state
