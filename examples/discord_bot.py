"""A discord.py bot with the two classic loop hazards, watched by loopwatch.

* ``!weather <city>`` calls a sync SDK that uses ``asyncio.run`` inside: without loopwatch
  this raises "asyncio.run() cannot be called from a running event loop"; with it, the
  call completes and is reported, attributed to ``command:weather``.
* ``!report`` blocks the event loop with sync work (discord.py would warn that the
  heartbeat is blocked); loopwatch's watchdog names the command and the line.
* the ``Forecasts`` cog refreshes a forecast every 5 minutes in a ``discord.ext.tasks`` loop
  through the same sync SDK: attributed to ``task:Forecasts.refresh``.

Run it for real (the bot needs the message-content intent enabled in the developer portal)::

    pip install 'loopwatch[discord]'
    DISCORD_TOKEN=... python examples/discord_bot.py

or without Discord at all: ``--offline`` feeds a few messages through the real bot objects
with a fake HTTP layer and prints what loopwatch caught::

    python examples/discord_bot.py --offline
    loopwatch run -- python examples/discord_bot.py --offline
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import discord
from discord.ext import commands, tasks

import loopwatch


class WeatherSDK:
    """Stands in for a third-party SDK whose sync API wraps its async one."""

    async def _fetch(self, city: str) -> str:
        await asyncio.sleep(0.05)  # the network call
        return f"{city}: 21°C, sunny"

    def current(self, city: str) -> str:
        return asyncio.run(self._fetch(city))  # fine in a script, a hazard in a bot


class Forecasts(commands.Cog):
    """A background loop, as most bots have one."""

    def __init__(self, sdk: WeatherSDK) -> None:
        self.sdk = sdk
        self.latest = ""

    async def cog_load(self) -> None:
        self.refresh.start()

    async def cog_unload(self) -> None:
        self.refresh.cancel()

    @tasks.loop(minutes=5)
    async def refresh(self) -> None:
        self.latest = self.sdk.current("Oslo")


class ExampleBot(commands.Bot):
    async def setup_hook(self) -> None:
        await self.load_extension("loopwatch.adapters.discord")
        await self.add_cog(Forecasts(WeatherSDK()))


def make_bot() -> ExampleBot:
    intents = discord.Intents.default()
    intents.message_content = True
    bot = ExampleBot(command_prefix="!", intents=intents)
    sdk = WeatherSDK()

    @bot.command()
    async def weather(ctx: commands.Context[Any], *, city: str = "Oslo") -> None:
        """Current weather, from the sync SDK."""
        await ctx.send(sdk.current(city))

    @bot.command()
    async def report(ctx: commands.Context[Any]) -> None:
        """A slow report built with blocking code."""
        time.sleep(0.3)  # e.g. a sync database driver or requests.get
        await ctx.send("report ready")

    return bot


# -- offline mode: real discord.py objects, fake transport ---------------------------------


async def run_offline(bot: ExampleBot) -> None:
    sent: list[str] = []

    async def fake_request(route: discord.http.Route, **kwargs: Any) -> Any:
        payload = kwargs.get("json") or {}
        sent.append(str(payload.get("content", "")))
        return message_payload(str(payload.get("content", "")), author=BOT)

    async with bot:
        state = bot._connection
        state.user = discord.ClientUser(state=state, data=BOT)  # type: ignore[arg-type]
        bot.http.request = fake_request  # type: ignore[method-assign]
        state._add_guild_from_data(GUILD)  # type: ignore[arg-type]
        await bot.setup_hook()  # what login() would do
        for content in ("!weather Bergen", "!report", "!weather Tromsø"):
            state.parse_message_create(message_payload(content, author=ALICE))  # type: ignore[arg-type]
            await handlers_done()
        forecasts = bot.get_cog("Forecasts")
        while isinstance(forecasts, Forecasts) and not forecasts.latest:
            await asyncio.sleep(0.01)  # the loop's first iteration runs at once
        print("bot replied:", sent)
        await asyncio.sleep(0.2)  # the watchdog reports a block once the loop ticks again
        print_caught()  # before close: unloading the extension uninstalls what it installed


async def handlers_done() -> None:
    """Wait for the event handlers discord.py scheduled (it names their tasks)."""
    while pending := [t for t in asyncio.all_tasks() if t.get_name().startswith("discord.py")]:
        await asyncio.wait(pending)


def print_caught() -> None:
    from prometheus_client import REGISTRY

    monitor = loopwatch._monitor.current()
    registry = (monitor.config.registry if monitor is not None else None) or REGISTRY
    caught = loopwatch.incidents()
    total = sum(incident.count for incident in caught)
    print(f"\nloopwatch caught {total} incident(s), {len(caught)} distinct:")
    for incident in caught:
        print(f"  {incident.kind:<13} {incident.api or '-':<14} {incident.handler:<18}"
              f" at {incident.site} (x{incident.count})")
    print("\nmetrics (framework=discord):")
    for family in registry.collect():
        for s in family.samples:
            if s.labels.get("framework") == "discord" and s.name.endswith(("_total", "_count")):
                labels = ",".join(f"{k}={v}" for k, v in s.labels.items() if k != "framework")
                print(f"  {s.name}{{{labels}}} {s.value:g}")


BOT = {"id": "1001", "username": "example", "discriminator": "0", "avatar": None, "bot": True}
ALICE = {"id": "1002", "username": "alice", "discriminator": "0", "avatar": None}
GUILD = {
    "id": "2001", "name": "offline", "owner_id": "1002", "emojis": [], "stickers": [],
    "features": [], "member_count": 2,
    "roles": [{"id": "2001", "name": "@everyone", "position": 0, "permissions": "3072",
               "color": 0, "hoist": False, "managed": False, "mentionable": False}],
    "channels": [{"id": "3001", "type": 0, "name": "general", "position": 0,
                  "permission_overwrites": [], "guild_id": "2001"}],
    "members": [{"user": u, "roles": [], "joined_at": "2024-01-01T00:00:00+00:00",
                 "deaf": False, "mute": False, "flags": 0} for u in (BOT, ALICE)],
}
_ids = iter(range(5_000, 10**9))


def message_payload(content: str, *, author: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(next(_ids)), "channel_id": "3001", "guild_id": "2001", "author": author,
        "member": {"roles": [], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False,
                   "mute": False, "flags": 0},
        "content": content, "timestamp": "2024-01-01T00:00:00+00:00", "edited_timestamp": None,
        "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
        "attachments": [], "embeds": [], "pinned": False, "type": 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true",
                        help="drive fake messages through the bot instead of connecting")
    args = parser.parse_args()
    bot = make_bot()
    if args.offline:
        asyncio.run(run_offline(bot))
        return 0
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        print("set DISCORD_TOKEN (or pass --offline)", file=sys.stderr)
        return 2
    bot.run(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
