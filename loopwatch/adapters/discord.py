"""discord.py and py-cord adapter: attribute every handler a bot runs, and measure it.

Load it as an extension, usually in ``setup_hook``::

    await bot.load_extension("loopwatch.adapters.discord")

or add the cog yourself to pass options::

    await bot.add_cog(LoopwatchCog(bot, metrics_port=9108))

A plain :class:`discord.Client` has no cogs: call :func:`instrument` and :func:`uninstrument`.

py-cord installs as the same ``discord`` package: this module recognises it, labels its work
``framework="pycord"`` and loads with py-cord's ``bot.load_extension(...)`` (not awaited:
py-cord calls ``setup`` synchronously). Its labels are those below; application commands
come through ``Bot.invoke_application_command`` (``app_command:<qualified name>``, no
autocomplete label), and py-cord has no modal runner and no dynamic items to hook.
nextcord and disnake have adapters of their own, ``loopwatch.adapters.nextcord`` and
``loopwatch.adapters.disnake``, built from the same code.

Handler labels (templates from code, never an id, a custom_id, a user or a guild):

=====================================  ==================================================
``event:on_<name>``                    client ``on_*`` methods, ``bot.listen()``, ``Cog.listener()``
``command:<qualified name>``           prefix commands, group subcommands, hybrid commands
                                       called by prefix
``app_command:<qualified name>``       slash commands, group subcommands, context menus,
                                       hybrid commands called as slash commands
``autocomplete:<qualified name>``      an autocomplete callback of that command
``task:<qualname>``                    one iteration of a ``discord.ext.tasks`` loop:
                                       ``task:<Cog class>.<method>`` in a cog, the function's
                                       name outside one
``task:<qualname>:before_loop``,       the loop's ``before_loop`` / ``after_loop`` hooks
``task:<qualname>:after_loop``
``view:<View class>.<item>``           a button or select of a view: the view attribute
                                       holding the item (the decorated method's name), else
                                       the item's class
``modal:<Modal class>``                ``Modal.on_submit``
``dynamic_item:<DynamicItem class>``   a ``DynamicItem``'s callback
``__unmatched__``                      an interaction for a command the tree does not know
=====================================  ==================================================

Each run is timed in ``loopwatch_handler_duration_seconds{framework="discord"}`` with
``outcome`` ``ok``, ``error`` (the handler raised: a command's error, a loop iteration's
exception, a view item's or modal's callback that reached ``on_error``) or ``cancelled``.
The gateway latency is ``loopwatch_discord_latency_seconds{shard}``, absent while discord.py
reports NaN/inf.

Hook points. Per client, on the instance (other clients in the process are untouched):
the client's event runner (every event handler, and the client's ``on_error``), ``bot.invoke``
(every prefix command), ``CommandTree._call`` (every application command). Process-wide,
on discord.py's classes, pass-through for clients loopwatch does not watch: the view runner
(items, with ``interaction_check`` and ``View.on_error``), the modal runner, the dynamic-item
runner and ``tasks.Loop.start``; every ``tasks.Loop`` (running or started later) gets its
iteration (``coro``) and hook runner wrapped on the instance. While a view item or modal
runs, its callback is wrapped on the instance to see whether it raised, then put back.

User hooks (``on_error``, ``on_command_error``, ``before_invoke``/``after_invoke``,
``tree.on_error``, ``View.on_error``, ``Modal.on_error``, ``interaction_check``,
``Loop.error``) are never replaced: they run inside the labelled work, unchanged. Unloading
restores every hooked attribute exactly, on loops that keep running too.
"""

from __future__ import annotations

from typing import Any

try:
    import discord
    from discord.ext import commands, tasks
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "loopwatch.adapters.discord needs discord.py (or py-cord): "
        "pip install 'loopwatch[discord]'"
    ) from exc

from loopwatch._compat import pycord as _pycord

from . import _discord_cog as cog
from . import _discord_common as common

__all__ = ["Instrumentation", "LoopwatchCog", "instrument", "setup", "teardown", "uninstrument"]

if _pycord.is_pycord(discord):
    FRAMEWORK = "pycord"
    compat: Any = _pycord
else:
    from loopwatch._compat import discord as compat

    FRAMEWORK = "discord"

_FLAVOUR = common.flavour(
    FRAMEWORK, discord, commands, tasks, compat, sync_extensions=FRAMEWORK == "pycord"
)
_LATENCY_INTERVAL = common._LATENCY_INTERVAL


class Instrumentation(common.Instrumentation):
    """loopwatch attached to one client: its hooks, latency gauge and metrics server.

    Returned by :func:`instrument`; :class:`LoopwatchCog` manages one for a bot.
    """

    flavour = _FLAVOUR


def instrument(
    client: discord.Client,
    *,
    registry: Any = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    latency_interval: float = _LATENCY_INTERVAL,
) -> common.Instrumentation:
    """Watch a plain :class:`discord.Client` (or any bot) without the cog; idempotent.

    Installs loopwatch if it is not installed (options from the ``LOOPWATCH_*``
    environment). Call it after creating the client's ``CommandTree``. Without a running
    loop, the latency gauge starts with the first event. Undo with :func:`uninstrument`.
    """
    return common.instrument(
        Instrumentation, client, registry=registry, metrics_port=metrics_port,
        metrics_addr=metrics_addr, latency_interval=latency_interval,
    )


def uninstrument(client: discord.Client) -> None:
    """Undo :func:`instrument` exactly (idempotent); stops its metrics server."""
    common.uninstrument(client)


class LoopwatchCog(cog.CogBody, commands.Cog, name="Loopwatch"):
    """The loopwatch cog: adding it watches the bot, removing it undoes that exactly.

    ``registry`` receives the metrics (default: loopwatch's); with ``metrics_port`` a
    ``/metrics`` server listens on ``metrics_addr`` (loopback by default) while the cog
    is loaded. A taken port is reported as one incident and the bot keeps running. Under
    py-cord, which calls nothing when a cog is added, the cog attaches when it is made.
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
        self._make_state(
            Instrumentation, bot, registry=registry, metrics_port=metrics_port,
            metrics_addr=metrics_addr, latency_interval=latency_interval,
        )
        if _FLAVOUR.sync_extensions:
            self._state.load()

    async def cog_load(self) -> None:
        """Attach to the bot (discord.py calls this from ``add_cog``)."""
        self._state.load()

    def cog_unload(self) -> Any:
        """Detach from the bot and stop the metrics server (called from ``remove_cog``).

        discord.py awaits what this returns; py-cord calls it without awaiting.
        """
        if _FLAVOUR.sync_extensions:
            self._state.unload()
            return None
        return self._state.aunload()


if _FLAVOUR.sync_extensions:

    def setup(bot: commands.Bot) -> None:
        """Extension entry point: ``bot.load_extension("loopwatch.adapters.discord")``."""
        # py-cord's add_cog is synchronous (discord.py's returns a coroutine).
        bot.add_cog(LoopwatchCog(bot))  # type: ignore[unused-coroutine]

    def teardown(bot: commands.Bot) -> None:
        """Extension exit point: undo anything the cog's removal left behind."""
        cog.teardown(bot)

else:

    async def setup(bot: commands.Bot) -> None:  # type: ignore[misc]
        """Extension entry point: ``await bot.load_extension("loopwatch.adapters.discord")``."""
        await bot.add_cog(LoopwatchCog(bot))

    async def teardown(bot: commands.Bot) -> None:  # type: ignore[misc]
        """Extension exit point: undo anything the cog's removal left behind.

        An :func:`instrument` the user made is theirs and stays.
        """
        await cog.ateardown(bot)
