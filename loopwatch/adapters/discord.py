"""discord.py adapter: attribute every event, listener and command, and measure them.

Load it as an extension, usually in ``setup_hook``::

    await bot.load_extension("loopwatch.adapters.discord")

or add the cog yourself to pass options::

    await bot.add_cog(LoopwatchCog(bot, metrics_port=9108))

A plain :class:`discord.Client` has no cogs: call :func:`instrument` and :func:`uninstrument`.

Work is labelled ``event:on_<name>`` (client ``on_*`` methods, ``bot.listen()``,
``Cog.listener()``), ``command:<qualified name>`` (prefix and hybrid commands) and
``app_command:<qualified name>`` (slash commands, context menus), and timed in
``loopwatch_handler_duration_seconds{framework="discord"}``. The gateway latency is
``loopwatch_discord_latency_seconds{shard}``, absent while discord.py reports NaN/inf.

Hook points, all set on the instance (never on discord.py's classes, so other clients in the
process are untouched and unloading restores exactly what was there):

* ``client._run_event``: discord.py schedules every event handler through it, whichever way
  it was registered, and calls the client's ``on_error`` from it, which stays the user's.
* ``bot.invoke``: every prefix command, from ``process_commands`` or a custom ``on_message``.
* ``tree._call``: every application command and context menu the command tree runs.

User hooks (``on_error``, ``on_command_error``, ``before_invoke``/``after_invoke``,
``tree.on_error``) are never replaced: they run inside the labelled work, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

try:
    import discord
    from discord.ext import commands
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "loopwatch.adapters.discord needs discord.py: pip install 'loopwatch[discord]'"
    ) from exc

import loopwatch
from loopwatch import _monitor
from loopwatch._context import Labels, reset_labels, set_labels
from loopwatch.metrics import (
    Metrics,
    MetricsServer,
    NullMetrics,
    get_metrics,
    start_http_server,
)

__all__ = ["Instrumentation", "LoopwatchCog", "instrument", "setup", "teardown", "uninstrument"]

FRAMEWORK = "discord"
# The per-client state lives on the client, and the install bookkeeping on the monitor:
# both survive ``reload_extension``, which re-imports this module and drops its globals.
_STATE_ATTR = "_loopwatch_discord"
_HOLDERS_ATTR = "_loopwatch_discord_holders"
_LATENCY_INTERVAL = 5.0

Coro = Coroutine[Any, Any, Any]
CoroFunc = Callable[..., Coro]


class Instrumentation:
    """loopwatch attached to one client: its hooks, latency gauge and metrics server.

    Returned by :func:`instrument`; :class:`LoopwatchCog` manages one for a bot.
    """

    def __init__(
        self,
        client: discord.Client,
        *,
        registry: Any = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
        latency_interval: float = _LATENCY_INTERVAL,
    ) -> None:
        if metrics_port is not None and (
            isinstance(metrics_port, bool) or not isinstance(metrics_port, int)
            or not 0 <= metrics_port <= 65535
        ):
            raise loopwatch.ConfigError(
                f"metrics_port={metrics_port!r} is not accepted; use a TCP port 0-65535 or None"
            )
        if not latency_interval > 0:
            raise loopwatch.ConfigError(
                f"latency_interval={latency_interval!r} is not accepted; use seconds > 0"
            )
        self.client = client
        self.active = False
        self.metrics_server: MetricsServer | None = None
        self._registry = registry
        self._metrics_port = metrics_port
        self._metrics_addr = metrics_addr
        self._latency_interval = latency_interval
        self._metrics: Metrics | NullMetrics | None = None
        self._monitor: _monitor.Monitor | None = None
        # (owner, attribute, what the owner's __dict__ held before or _MISSING, our wrapper)
        self._patches: list[tuple[Any, str, Any, Any]] = []
        self._shards: set[str] = set()
        self._poller: asyncio.Task[None] | None = None
        self._by_cog = False

    # -- attach / detach -------------------------------------------------------------------

    def _attach(self) -> None:
        self._monitor = _acquire_monitor(self._registry)
        if self._monitor is None:  # LOOPWATCH_DISABLE: stay out of the way entirely
            return
        self._metrics = self._monitor.metrics
        if self._registry is not None:
            try:
                self._metrics = get_metrics(self._registry)
            except loopwatch.LoopwatchError:
                # A clash with one of the user's own metrics: say so at load.
                _release_monitor(self._monitor)
                self._monitor = None
                raise
            except Exception as exc:  # metrics must never take the bot down
                _monitor.internal_error("discord.metrics", exc)
                self._metrics = NullMetrics()
        self.active = True
        client = self.client
        self._patch(client, "_run_event", self._wrap_run_event(client._run_event))
        if isinstance(client, commands.Bot):
            self._patch(client, "invoke", self._wrap_invoke(client.invoke))
        self._attach_tree()
        setattr(client, _STATE_ATTR, self)
        with contextlib.suppress(RuntimeError):  # no running loop: started by the first event
            self._start_poller(asyncio.get_running_loop())
        if self._metrics_port is not None:
            self._start_server()

    def _attach_tree(self) -> None:
        tree = self.client._connection._command_tree
        if tree is not None and not any(owner is tree for owner, *_ in self._patches):
            self._patch(tree, "_call", self._wrap_tree_call(tree._call))

    def _patch(self, owner: Any, name: str, wrapper: Any) -> None:
        saved = vars(owner).get(name, _MISSING)
        setattr(owner, name, wrapper)
        self._patches.append((owner, name, saved, wrapper))

    def _detach(self) -> tuple[MetricsServer | None, asyncio.Task[None] | None]:
        """Undo every hook; return the metrics server and the poller for the caller to end."""
        if getattr(self.client, _STATE_ATTR, None) is self:
            delattr(self.client, _STATE_ATTR)
        self.active = False
        while self._patches:
            owner, name, saved, wrapper = self._patches.pop()
            # Someone wrapped our wrapper after us: leave their chain intact; ours is now a
            # pass-through because ``active`` is False.
            if vars(owner).get(name) is wrapper:
                if saved is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, saved)
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
        self._clear_latency()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            _release_monitor(monitor)
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
        async def _run_event(
            coro: CoroFunc, event_name: str, /, *args: Any, **kwargs: Any
        ) -> None:
            if not self.active:
                return await original(coro, event_name, *args, **kwargs)  # type: ignore[no-any-return]
            if self._poller is None:
                self._start_poller(asyncio.get_running_loop())
                self._attach_tree()
            handler = "event:" + event_name
            token = set_labels(FRAMEWORK, handler)
            try:
                # The label also covers the client's on_error, which discord.py calls from
                # inside _run_event; the timing covers the handler alone.
                await original(self._timed(coro, handler), event_name, *args, **kwargs)
            finally:
                reset_labels(token)
            return None

        return _run_event

    async def _labelled(
        self, handler: str, call: Callable[[], Awaitable[Any]], failed: Callable[[], bool],
        *, timed: bool = True,
    ) -> None:
        """Run ``call`` under ``handler``'s labels and record its duration and outcome."""
        token = set_labels(FRAMEWORK, handler)
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
            if outcome == "error" and _cancelling():
                outcome = "cancelled"
            if timed:
                self._observe(handler, outcome, time.perf_counter() - start)

    def _timed(self, func: CoroFunc, handler: str) -> CoroFunc:
        async def handler_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            outcome = "error"
            try:
                result = await func(*args, **kwargs)
                outcome = "ok"
                return result
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                self._observe(handler, outcome, time.perf_counter() - start)

        return handler_call

    def _wrap_invoke(self, original: CoroFunc) -> CoroFunc:
        async def invoke(ctx: commands.Context[Any], /) -> None:
            if not self.active or ctx.command is None:
                return await original(ctx)  # type: ignore[no-any-return]
            # Bot.invoke hands command errors (failed checks included) to the error handlers
            # instead of raising; they all mark the context failed.
            await self._labelled(
                "command:" + _command_name(ctx), lambda: original(ctx),
                lambda: bool(ctx.command_failed),
            )
            return None

        return invoke

    def _wrap_tree_call(self, original: CoroFunc) -> CoroFunc:
        async def _call(interaction: discord.Interaction[Any], /) -> None:
            if not self.active:
                return await original(interaction)  # type: ignore[no-any-return]
            command = interaction.command
            handler = (
                "__unmatched__" if command is None else "app_command:" + command.qualified_name
            )
            # Autocomplete runs per keystroke: attributed, but kept out of the durations so
            # they describe the commands themselves.
            await self._labelled(
                handler, lambda: original(interaction), lambda: bool(interaction.command_failed),
                timed=interaction.type is not discord.InteractionType.autocomplete,
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
                framework=FRAMEWORK, handler=handler, outcome=outcome,
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
        if isinstance(client, discord.AutoShardedClient):
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
                    labels=Labels(FRAMEWORK, "__none__"),
                    detail={"addr": addr, "port": str(port), "error": str(exc)},
                    hint=f"The discord metrics server could not bind {addr}:{port} ({exc}); "
                    "the bot keeps running without it. Pass a free metrics_port.",
                )


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _command_name(ctx: commands.Context[Any]) -> str:
    """The qualified name of the command that will run, subcommands of groups included.

    Bot.invoke only knows the top-level command; the subcommand is picked later by
    Group.invoke from the next word, so peek at it here and put the view back.
    """
    command: Any = ctx.command
    view = ctx.view
    if isinstance(command, commands.Group) and view is not None:
        index, previous = view.index, view.previous
        try:
            while isinstance(command, commands.Group):
                view.skip_ws()
                word = view.get_word()
                sub = command.all_commands.get(word) if word else None
                if sub is None:
                    break
                command = sub
        finally:
            view.index, view.previous = index, previous
    return str(command.qualified_name)


def _cancelling() -> bool:
    """Whether the current task is being cancelled (discord.py swallows it in commands)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return bool(cancelling()) if cancelling is not None else False


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _acquire_monitor(registry: Any) -> _monitor.Monitor | None:
    """The installed monitor, installing it (options from the environment) if needed.

    Adapters that installed loopwatch uninstall it when the last of them detaches.
    """
    monitor = _monitor.current()
    installed_here = monitor is None
    if monitor is None:
        monitor = loopwatch.install(**({} if registry is None else {"registry": registry}))
        if _monitor.current() is not monitor:  # disabled by LOOPWATCH_DISABLE
            return None
    holders: dict[str, Any] = vars(monitor).setdefault(
        _HOLDERS_ATTR, {"owned": installed_here, "count": 0}
    )
    holders["count"] += 1
    return monitor


def _release_monitor(monitor: _monitor.Monitor) -> None:
    holders: dict[str, Any] | None = vars(monitor).get(_HOLDERS_ATTR)
    if holders is None:
        return
    holders["count"] -= 1
    if holders["count"] <= 0:
        del vars(monitor)[_HOLDERS_ATTR]
        if holders["owned"] and _monitor.current() is monitor:
            loopwatch.uninstall()


def instrument(
    client: discord.Client,
    *,
    registry: Any = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    latency_interval: float = _LATENCY_INTERVAL,
) -> Instrumentation:
    """Watch a plain :class:`discord.Client` (or any bot) without the cog; idempotent.

    Installs loopwatch if it is not installed (options from the ``LOOPWATCH_*``
    environment). Call it after creating the client's ``CommandTree``. Without a running
    loop, the latency gauge starts with the first event. Undo with :func:`uninstrument`.
    """
    existing: Instrumentation | None = getattr(client, _STATE_ATTR, None)
    if existing is not None:
        return existing
    state = Instrumentation(
        client, registry=registry, metrics_port=metrics_port, metrics_addr=metrics_addr,
        latency_interval=latency_interval,
    )
    state._attach()
    return state


def uninstrument(client: discord.Client) -> None:
    """Undo :func:`instrument` exactly (idempotent); stops its metrics server."""
    state: Instrumentation | None = getattr(client, _STATE_ATTR, None)
    if state is not None:
        state.close()


class LoopwatchCog(commands.Cog, name="Loopwatch"):
    """The loopwatch cog: adding it watches the bot, removing it undoes that exactly.

    ``registry`` receives the metrics (default: loopwatch's); with ``metrics_port`` a
    ``/metrics`` server listens on ``metrics_addr`` (loopback by default) while the cog
    is loaded. A taken port is reported as one incident and the bot keeps running.
    """

    def __init__(
        self,
        bot: commands.Bot,
        *,
        registry: Any = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
        latency_interval: float = _LATENCY_INTERVAL,
    ) -> None:
        self.bot = bot
        self.instrumentation = Instrumentation(
            bot, registry=registry, metrics_port=metrics_port, metrics_addr=metrics_addr,
            latency_interval=latency_interval,
        )
        self._owns = False

    async def cog_load(self) -> None:
        """Attach to the bot (discord.py calls this from ``add_cog``)."""
        if getattr(self.bot, _STATE_ATTR, None) is None:
            self.instrumentation._by_cog = True
            self.instrumentation._attach()
            self._owns = True

    async def cog_unload(self) -> None:
        """Detach from the bot and stop the metrics server (called from ``remove_cog``)."""
        if self._owns:
            self._owns = False
            await self.instrumentation.aclose()

    def update_latency(self) -> None:
        """Export the gateway latency now."""
        self.instrumentation.update_latency()

    @property
    def metrics_server(self) -> MetricsServer | None:
        """The cog's metrics server, when ``metrics_port`` was given and the port was free."""
        return self.instrumentation.metrics_server


async def setup(bot: commands.Bot) -> None:
    """Extension entry point: ``await bot.load_extension("loopwatch.adapters.discord")``."""
    await bot.add_cog(LoopwatchCog(bot))


async def teardown(bot: commands.Bot) -> None:
    """Extension exit point: undo anything the cog's removal left behind.

    An :func:`instrument` the user made is theirs and stays.
    """
    state: Instrumentation | None = getattr(bot, _STATE_ATTR, None)
    if state is not None and state._by_cog:
        await state.aclose()
