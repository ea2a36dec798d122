"""The cog of the discord adapters: what every library's ``LoopwatchCog`` does.

Each adapter module defines its own ``LoopwatchCog`` on its library's ``commands.Cog`` (the
hooks a library calls differ); :class:`CogState` is what they share: one instrumentation
per cog, attached unless something attached first, detached only if the cog attached it.
:func:`ateardown`/:func:`teardown` undo what an extension's cog left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loopwatch.metrics import MetricsServer

from ._discord_common import _LATENCY_INTERVAL, Instrumentation, attached
from ._discord_hooks import _STATE_ATTR

__all__ = ["CogBody", "CogState", "SyncCog", "ateardown", "sync_setup", "teardown"]


class CogState:
    """What every library's ``LoopwatchCog`` does, whatever its cog hooks are called.

    discord.py calls ``await cog.cog_load()`` from ``add_cog``; the forks add a cog
    synchronously and call nothing on the way in, so their cog attaches when it is made.
    """

    def __init__(
        self,
        cls: type[Instrumentation],
        bot: Any,
        *,
        registry: Any = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
        latency_interval: float = _LATENCY_INTERVAL,
    ) -> None:
        self.instrumentation = cls(
            bot, registry=registry, metrics_port=metrics_port, metrics_addr=metrics_addr,
            latency_interval=latency_interval,
        )
        self.bot = bot
        self.owns = False

    def load(self) -> None:
        """Attach to the bot, unless something attached already (then leave it be)."""
        if getattr(self.bot, _STATE_ATTR, None) is None:
            self.instrumentation._by_cog = True
            self.instrumentation._attach()
            self.owns = True

    async def aunload(self) -> None:
        """Detach from the bot; stop the metrics server off the event loop."""
        if self.owns:
            self.owns = False
            await self.instrumentation.aclose()

    def unload(self) -> None:
        """Detach from the bot; stop the metrics server (blocks until it stops)."""
        if self.owns:
            self.owns = False
            self.instrumentation.close()


class CogBody:
    """The part of every library's ``LoopwatchCog`` its library's hooks do not change: the
    state, the latency export and the metrics server (mixed in before ``commands.Cog``)."""

    bot: Any
    instrumentation: Instrumentation
    _state: CogState

    def _make_state(
        self,
        cls: type[Instrumentation],
        bot: Any,
        *,
        registry: Any,
        metrics_port: int | None,
        metrics_addr: str,
        latency_interval: float,
    ) -> None:
        self.bot = bot
        self._state = CogState(
            cls, bot, registry=registry, metrics_port=metrics_port,
            metrics_addr=metrics_addr, latency_interval=latency_interval,
        )
        self.instrumentation = self._state.instrumentation

    def update_latency(self) -> None:
        """Export the gateway latency now."""
        self.instrumentation.update_latency()

    @property
    def metrics_server(self) -> MetricsServer | None:
        """The cog's metrics server, when ``metrics_port`` was given and the port was free."""
        return self.instrumentation.metrics_server


async def ateardown(bot: Any) -> None:
    """Undo what an extension's cog left behind (an :func:`instrument` of the user's stays)."""
    state = attached(bot)
    if state is not None and state._by_cog:
        await state.aclose()


def teardown(bot: Any) -> None:
    """:func:`ateardown` for the libraries that call ``teardown`` without awaiting it."""
    state = attached(bot)
    if state is not None and state._by_cog:
        state.close()


class SyncCog(CogBody):
    """A fork's ``LoopwatchCog`` body (nextcord, disnake): it attaches when it is made.

    Those libraries add a cog synchronously and call nothing on it on the way in; on the way
    out they call ``cog_unload``. A fork's module mixes this in before its library's
    ``commands.Cog`` and names its instrumentation class.
    """

    instrumentation_class: type[Instrumentation]

    def __init__(
        self,
        bot: Any,
        *,
        registry: Any = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
        latency_interval: float = _LATENCY_INTERVAL,
    ) -> None:
        self._make_state(
            self.instrumentation_class, bot, registry=registry, metrics_port=metrics_port,
            metrics_addr=metrics_addr, latency_interval=latency_interval,
        )
        self._state.load()

    def cog_unload(self) -> None:
        """Detach from the bot and stop the metrics server (called from ``remove_cog``)."""
        self._state.unload()


def sync_setup(cog_class: type[SyncCog], module: str) -> Callable[[Any], None]:
    """The ``setup`` of a fork's extension module: add a new ``cog_class`` to the bot."""

    def setup(bot: Any) -> None:
        bot.add_cog(cog_class(bot))

    setup.__doc__ = f'Extension entry point: ``bot.load_extension("{module}")``.'
    return setup
