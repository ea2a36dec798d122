"""nextcord adapter: attribute every handler a bot runs, and measure it (framework ``nextcord``).

The same code as the discord.py adapter (``loopwatch.adapters.discord``), given nextcord's
modules. Load it as an extension (synchronously, as nextcord loads extensions)::

    bot.load_extension("loopwatch.adapters.nextcord")

or add the cog yourself to pass options (it attaches when it is made)::

    bot.add_cog(LoopwatchCog(bot, metrics_port=9108))

A plain ``nextcord.Client``: call :func:`instrument` and :func:`uninstrument`.

Labels are discord.py's: ``event:on_<name>`` (client methods, ``bot.listen()``,
``Cog.listener()``), ``command:<qualified name>`` (prefix commands),
``task:<qualname>`` and its ``:before_loop``/``:after_loop`` hooks (``tasks`` loops),
``view:<View class>.<item>`` and ``modal:<Modal class>``. Application commands run
through nextcord's own dispatch, inside the ``event:`` label of the event that runs them;
they have no label of their own yet.
"""

from __future__ import annotations

try:
    import nextcord
    from nextcord.ext import commands, tasks
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "loopwatch.adapters.nextcord needs nextcord: pip install 'loopwatch[nextcord]'"
    ) from exc

from loopwatch._compat import nextcord as compat

from . import _discord_cog as cog
from . import _discord_common as common

__all__ = ["Instrumentation", "LoopwatchCog", "instrument", "setup", "teardown", "uninstrument"]

FRAMEWORK = "nextcord"
_FLAVOUR = common.flavour(FRAMEWORK, nextcord, commands, tasks, compat, sync_extensions=True)


class Instrumentation(common.Instrumentation):
    """loopwatch attached to one client: its hooks, latency gauge and metrics server."""

    flavour = _FLAVOUR


#: Watch a ``nextcord.Client`` (or any bot) without the cog; undo with :func:`uninstrument`.
instrument = common.instrumenter(Instrumentation, "nextcord")
uninstrument = common.uninstrument


class LoopwatchCog(cog.SyncCog, commands.Cog, name="Loopwatch"):  # type: ignore[misc,call-arg]
    """The loopwatch cog: making it watches the bot, removing it undoes that exactly.

    nextcord adds a cog without calling anything on it, so the cog attaches when it is
    made. ``registry``, ``metrics_port``, ``metrics_addr`` as for the discord.py cog.
    """

    instrumentation_class = Instrumentation


setup = cog.sync_setup(LoopwatchCog, "loopwatch.adapters.nextcord")
teardown = cog.teardown
