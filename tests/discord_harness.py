"""An offline harness for discord.py: real bots, messages and interactions, no network.

The bot under test is a real ``commands.Bot`` (or ``AutoShardedBot``, or plain
``discord.Client``) used inside ``async with bot``. :class:`BotHarness` gives it a logged-in
user, one guild with one text channel, and fake transports: ``HTTPClient.request`` (REST:
``ctx.send``, ``channel.send``) and the webhook adapter (interaction responses) are
replaced by async fakes that record what the bot sent and answer with plausible payloads.
Messages are real :class:`discord.Message` objects built from gateway payloads;
interactions are real :class:`discord.Interaction` objects fed through the connection
state exactly as the gateway would (``parse_interaction_create`` -> ``CommandTree``).

    async with BotHarness(make_bot()) as h:
        await h.dispatch_message("!ping")
        assert h.replies == ["pong"]

Nothing here knows about loopwatch: the same harness drives a plain bot.
"""

from __future__ import annotations

import asyncio
import itertools
import warnings
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

with warnings.catch_warnings():
    # discord.py imports the stdlib audioop module, deprecated on 3.11/3.12; not ours.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord
    from discord.ext import commands
    from discord.webhook.async_ import AsyncWebhookAdapter, async_context

__all__ = [
    "APP_ID",
    "AUTHOR_ID",
    "BOT_USER_ID",
    "CHANNEL_ID",
    "GUILD_ID",
    "BotHarness",
    "SentRequest",
    "commands",
    "discord",
    "make_bot",
    "run",
]

BOT_USER_ID = 900_000_000_000_000_001
APP_ID = 900_000_000_000_000_002
GUILD_ID = 900_000_000_000_000_003
CHANNEL_ID = 900_000_000_000_000_004
AUTHOR_ID = 900_000_000_000_000_005
_TIMESTAMP = "2024-01-01T00:00:00+00:00"
_snowflakes = itertools.count(910_000_000_000_000_000)

T = TypeVar("T")


def reentries(registry: Any, handler: str, api: str = "asyncio.run") -> float:
    """``loopwatch_reentry_total`` of an offloaded call made in a discord handler."""
    value = registry.get_sample_value(
        "loopwatch_reentry_total",
        {"api": api, "action": "offloaded", "framework": "discord", "handler": handler},
    )
    return float(value or 0.0)


def handled(registry: Any, handler: str, outcome: str = "ok") -> float:
    """How many runs of a discord handler ``loopwatch_handler_duration_seconds`` counted."""
    value = registry.get_sample_value(
        "loopwatch_handler_duration_seconds_count",
        {"framework": "discord", "handler": handler, "outcome": outcome},
    )
    return float(value or 0.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop (the tests are plain functions)."""
    return asyncio.run(coro)


def make_bot(kind: str = "bot", **options: Any) -> Any:
    """A real bot with the message-content intent: ``kind`` is bot, autosharded or client."""
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = True
    options.setdefault("intents", intents)
    if kind == "client":
        return discord.Client(**options)
    options.setdefault("command_prefix", "!")
    if kind == "autosharded":
        options.setdefault("shard_count", 2)
        return commands.AutoShardedBot(**options)
    if kind == "bot":
        return commands.Bot(**options)
    raise ValueError(f"make_bot: kind={kind!r}; use bot, autosharded or client")


@dataclass(frozen=True)
class SentRequest:
    """One request the bot made to Discord (REST or interaction webhook)."""

    method: str
    path: str
    payload: dict[str, Any] | None

    @property
    def content(self) -> str | None:
        """The message text the request carried, if any."""
        if not self.payload:
            return None
        data = self.payload.get("data", self.payload)
        content = data.get("content") if isinstance(data, dict) else None
        return content if isinstance(content, str) else None


def _snowflake() -> str:
    return str(next(_snowflakes))


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    """A gateway user object."""
    return {
        "id": str(user_id), "username": name, "discriminator": "0", "global_name": name,
        "avatar": None, "bot": bot,
    }


def member_payload(user: dict[str, Any]) -> dict[str, Any]:
    """A gateway guild member object for ``user``."""
    return {
        "user": user, "roles": [], "joined_at": _TIMESTAMP, "deaf": False, "mute": False,
        "flags": 0, "permissions": str(discord.Permissions.all().value),
    }


class _FakeWebhookAdapter(AsyncWebhookAdapter):
    """Interaction responses and follow-ups go through this instead of aiohttp."""

    def __init__(self, harness: BotHarness) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._harness = harness

    async def request(self, route: Any, session: Any = None, **kwargs: Any) -> Any:
        return self._harness._answer(route, kwargs.get("payload") or _multipart_json(kwargs))


def _multipart_json(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    import json

    for part in kwargs.get("multipart") or ():
        if part.get("name") == "payload_json":
            value = json.loads(part["value"])
            return value if isinstance(value, dict) else None
    return None


class _FakeWebSocket:
    """What ``Client.latency`` reads: a gateway socket that reports a heartbeat latency."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.open = False

    async def close(self, code: int = 1000) -> None:
        return None


class _FakeShard:
    def __init__(self, latency: float) -> None:
        self.ws = _FakeWebSocket(latency)

    async def close(self) -> None:
        return None


class BotHarness:
    """Run a real bot offline: ``async with BotHarness(bot) as h: ...``.

    ``h.requests`` lists every request the bot sent, ``h.replies`` the message texts.
    """

    def __init__(self, bot: Any, *, ignore_tasks: tuple[str, ...] = ("loopwatch",)) -> None:
        self.bot = bot
        self.requests: list[SentRequest] = []
        self.ignore_tasks = ignore_tasks
        self._baseline: set[asyncio.Task[Any]] = set()
        self._adapter_token: Any = None
        self.guild: discord.Guild | None = None
        self.channel: discord.TextChannel | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> BotHarness:
        await self.bot.__aenter__()
        state = self.bot._connection
        state.user = discord.ClientUser(
            state=state, data=user_payload(BOT_USER_ID, "loopbot", bot=True)  # type: ignore[arg-type]
        )
        state.application_id = APP_ID
        self.bot.http.request = self._http_request
        self._adapter_token = async_context.set(_FakeWebhookAdapter(self))
        self.guild = state._add_guild_from_data(self._guild_payload())
        channel = self.guild.get_channel(CHANNEL_ID)
        if not isinstance(channel, discord.TextChannel):
            raise RuntimeError("harness guild has no text channel")
        self.channel = channel
        current = asyncio.current_task()
        self._baseline = {t for t in asyncio.all_tasks() if t is not current}
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.drain()
        finally:
            try:
                await self.bot.__aexit__(exc_type, exc, tb)
            finally:
                self.bot.http.__dict__.pop("request", None)
                async_context.reset(self._adapter_token)

    async def drain(self) -> None:
        """Wait until every task the bot scheduled (events, interactions) has finished."""
        current = asyncio.current_task()
        while True:
            await asyncio.sleep(0)
            pending = [
                t for t in asyncio.all_tasks()
                if t is not current and t not in self._baseline
                and not t.get_name().startswith(self.ignore_tasks)
                and not _waits_for_a_timeout(t)
            ]
            if not pending:
                return
            await asyncio.wait(pending)

    # -- gateway-side input ----------------------------------------------------------------

    def message_payload(
        self, content: str, *, author_id: int = AUTHOR_ID, author_name: str = "alice",
        bot: bool = False,
    ) -> dict[str, Any]:
        """A ``MESSAGE_CREATE`` payload in the harness guild's channel."""
        author = user_payload(author_id, author_name, bot=bot)
        member = member_payload(author)
        member.pop("user")
        return {
            "id": _snowflake(), "channel_id": str(CHANNEL_ID), "guild_id": str(GUILD_ID),
            "author": author, "member": member, "content": content, "timestamp": _TIMESTAMP,
            "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": [],
            "mention_roles": [], "attachments": [], "embeds": [], "pinned": False, "type": 0,
        }

    def message(self, content: str, **kwargs: Any) -> discord.Message:
        """A real :class:`discord.Message` from a payload (nothing dispatched)."""
        return discord.Message(
            state=self.bot._connection, channel=self.channel,  # type: ignore[arg-type]
            data=self.message_payload(content, **kwargs),  # type: ignore[arg-type]
        )

    async def dispatch_message(self, content: str, **kwargs: Any) -> discord.Message:
        """``bot.dispatch("message", msg)`` as the gateway does, then wait for the handlers."""
        msg = self.message(content, **kwargs)
        self.bot.dispatch("message", msg)
        await self.drain()
        return msg

    async def gateway_message(self, content: str, **kwargs: Any) -> None:
        """Feed a raw ``MESSAGE_CREATE`` through the connection state's parser."""
        self.bot._connection.parse_message_create(self.message_payload(content, **kwargs))
        await self.drain()

    async def process_commands(self, content: str, **kwargs: Any) -> discord.Message:
        """``await bot.process_commands(msg)`` directly (no event handlers involved)."""
        msg = self.message(content, **kwargs)
        await self.bot.process_commands(msg)
        await self.drain()
        return msg

    def _interaction_base(self, interaction_type: int, data: dict[str, Any]) -> dict[str, Any]:
        member = member_payload(user_payload(AUTHOR_ID, "alice"))
        return {
            "id": _snowflake(), "application_id": str(APP_ID), "type": interaction_type,
            "token": "interaction-token-" + _snowflake(), "version": 1,
            "guild_id": str(GUILD_ID), "channel_id": str(CHANNEL_ID),
            "channel": {"id": str(CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID),
                        "name": "general", "position": 0, "permission_overwrites": []},
            "member": member, "app_permissions": str(discord.Permissions.all().value),
            "locale": "en-US", "guild_locale": "en-US", "attachment_size_limit": 8_388_608,
            "data": data,
        }

    def interaction_payload(
        self, name: str, options: dict[str, Any] | None = None, *, interaction_type: int = 2,
        focused: str | None = None,
    ) -> dict[str, Any]:
        """An ``INTERACTION_CREATE`` payload for the slash command ``name``.

        ``name`` may be ``"group sub"`` or ``"group subgroup sub"``; ``interaction_type`` 4
        with ``focused`` (an option name) is an autocomplete request.
        """
        parts = name.split()
        opts: list[dict[str, Any]] = [
            {"name": k, "type": _option_type(v), "value": v} for k, v in (options or {}).items()
        ]
        for opt in opts:
            if opt["name"] == focused:
                opt["focused"] = True
        for depth, sub in reversed(list(enumerate(parts[1:], 1))):
            # The last word is the subcommand (1); a word between is a subcommand group (2).
            opts = [{"name": sub, "type": 1 if depth == len(parts) - 1 else 2, "options": opts}]
        return self._interaction_base(
            interaction_type, {"id": _snowflake(), "name": parts[0], "type": 1, "options": opts}
        )

    def interaction(self, name: str, options: dict[str, Any] | None = None) -> discord.Interaction:
        """A real :class:`discord.Interaction` (nothing dispatched)."""
        return discord.Interaction(
            data=self.interaction_payload(name, options),  # type: ignore[arg-type]
            state=self.bot._connection,
        )

    async def _feed(self, payload: dict[str, Any]) -> None:
        self.bot._connection.parse_interaction_create(payload)
        await self.drain()

    async def app_command(self, name: str, options: dict[str, Any] | None = None) -> None:
        """Feed an ``INTERACTION_CREATE`` as the gateway does (to ``bot.tree``), then wait."""
        await self._feed(self.interaction_payload(name, options))

    async def autocomplete(self, name: str, options: dict[str, Any], focused: str) -> None:
        """Feed an autocomplete request for option ``focused`` of ``name``, then wait."""
        await self._feed(
            self.interaction_payload(name, options, interaction_type=4, focused=focused)
        )

    async def message_context_menu(self, name: str, target: discord.Message) -> None:
        """Run the message context menu ``name`` on ``target``, then wait."""
        payload = self.message_payload(target.content)
        payload["id"] = str(target.id)
        data = {
            "id": _snowflake(), "name": name, "type": 3, "target_id": str(target.id),
            "resolved": {"messages": {str(target.id): payload}},
        }
        await self._feed(self._interaction_base(2, data))

    async def user_context_menu(self, name: str, user_id: int = AUTHOR_ID) -> None:
        """Run the user context menu ``name`` on the member ``user_id``, then wait."""
        user = user_payload(user_id, "alice")
        member = member_payload(user)
        member.pop("user")
        data = {
            "id": _snowflake(), "name": name, "type": 2, "target_id": str(user_id),
            "resolved": {"users": {str(user_id): user}, "members": {str(user_id): member}},
        }
        await self._feed(self._interaction_base(2, data))

    async def send_view(self, view: discord.ui.View, content: str = "pick") -> discord.Message:
        """Send a message carrying ``view`` as the bot would (discord.py then tracks it)."""
        if self.channel is None:
            raise RuntimeError("harness not entered")
        return await self.channel.send(content, view=view)

    async def click(
        self, message: discord.Message, custom_id: str, *, component_type: int = 2,
        values: list[str] | None = None,
    ) -> None:
        """A user clicks the button (or picks ``values`` in the select) ``custom_id`` of
        ``message``: a component ``INTERACTION_CREATE`` through the connection's parser."""
        payload = self.message_payload(message.content, author_id=BOT_USER_ID,
                                       author_name="loopbot", bot=True)
        payload["id"] = str(message.id)
        payload["components"] = [c.to_dict() for c in message.components]
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        body = self._interaction_base(3, data)
        body["message"] = payload
        await self._feed(body)

    async def submit_modal(self, custom_id: str, fields: dict[str, str]) -> None:
        """A user submits the modal ``custom_id`` with these text input values."""
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
            for key, value in fields.items()
        ]
        await self._feed(self._interaction_base(5, {"custom_id": custom_id, "components": rows}))

    def set_latency(self, latencies: dict[int, float]) -> None:
        """Make the gateway report these heartbeat latencies per shard (no socket opened)."""
        if isinstance(self.bot, discord.AutoShardedClient):
            shards = {shard: _FakeShard(value) for shard, value in latencies.items()}
            setattr(self.bot, "_AutoShardedClient__shards", shards)  # a name-mangled attribute
        else:
            (value,) = latencies.values()
            self.bot.ws = _FakeWebSocket(value)

    # -- what the bot sent -----------------------------------------------------------------

    @property
    def replies(self) -> list[str]:
        """The text of every message the bot sent, in order."""
        return [r.content for r in self.requests if r.content is not None]

    async def _http_request(self, route: Any, **kwargs: Any) -> Any:
        payload = kwargs.get("json")
        if payload is None and kwargs.get("form"):
            payload = _multipart_json({"multipart": kwargs["form"]})
        return self._answer(route, payload)

    def _answer(self, route: Any, payload: dict[str, Any] | None) -> Any:
        self.requests.append(SentRequest(route.method, route.path, payload))
        data = dict(payload or {})
        if route.path.endswith("/callback"):
            inner = data.get("data") or {}
            message = self._sent_message(inner)
            return {
                "interaction": {
                    "id": str(route.webhook_id), "type": 2,
                    "response_message_id": message["id"],
                    "response_message_loading": data.get("type") == 5,
                    "response_message_ephemeral": bool(inner.get("flags", 0) & 64),
                },
                "resource": {"type": data.get("type", 4), "message": message},
            }
        if (route.method in ("POST", "PATCH") and "messages" in route.path) or (
            route.method == "POST" and route.path.startswith("/webhooks/")
        ):
            return self._sent_message(data)
        return {}

    def _sent_message(self, data: dict[str, Any]) -> dict[str, Any]:
        payload = self.message_payload(
            data.get("content") or "", author_id=BOT_USER_ID, author_name="loopbot", bot=True
        )
        payload["embeds"] = data.get("embeds") or []
        payload["components"] = data.get("components") or []
        return payload

    # -- helpers ---------------------------------------------------------------------------

    def _guild_payload(self) -> dict[str, Any]:
        everyone = {
            "id": str(GUILD_ID), "name": "@everyone", "position": 0, "color": 0, "hoist": False,
            "managed": False, "mentionable": False, "flags": 0,
            "permissions": str(
                discord.Permissions.general().value | discord.Permissions.text().value
            ),
        }
        me = member_payload(user_payload(BOT_USER_ID, "loopbot", bot=True))
        alice = member_payload(user_payload(AUTHOR_ID, "alice"))
        return {
            "id": str(GUILD_ID), "name": "harness", "owner_id": str(AUTHOR_ID),
            "roles": [everyone], "emojis": [], "stickers": [], "features": [],
            "member_count": 2, "members": [me, alice],
            "channels": [{
                "id": str(CHANNEL_ID), "type": 0, "name": "general", "position": 0,
                "permission_overwrites": [], "guild_id": str(GUILD_ID),
            }],
        }


def _waits_for_a_timeout(task: asyncio.Task[Any]) -> bool:
    """A view's timeout watcher: it sleeps until the view times out, not work to wait for."""
    name = getattr(task.get_coro(), "__qualname__", "")
    return isinstance(name, str) and name.endswith("timeout_task_impl")


def _option_type(value: object) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3

