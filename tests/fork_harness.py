"""The discord.py fork installed in this environment (nextcord, disnake or py-cord), offline.

The forks cannot share an environment with discord.py (py-cord even installs as the
``discord`` package), so each gets its own (``dev.py`` builds ``.venv-nextcord``,
``.venv-disnake``, ``.venv-pycord``). This module finds which one is here and gives the
tests that library's real objects: a real ``commands.Bot`` that never connects, with a
logged-in user, and real ``Message`` objects built from gateway payloads, so commands run
through the library's own ``get_context``/``invoke`` and events through its own
``dispatch``. Without a fork, the tests that use it are skipped.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import warnings
from types import ModuleType
from typing import Any


def _find() -> tuple[str, ModuleType] | None:
    with warnings.catch_warnings():
        # The forks import the stdlib audioop module, deprecated on 3.11/3.12; not ours.
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        for name in ("nextcord", "disnake"):
            try:
                return name, importlib.import_module(name)
            except ImportError:
                pass
        try:
            import discord
        except ImportError:
            return None
    return ("pycord", discord) if getattr(discord, "__title__", "") == "pycord" else None


_found = _find()
#: ``nextcord``, ``disnake``, ``pycord`` (the framework label), or ``None`` without a fork.
FORK: str | None = _found[0] if _found else None
lib: Any = _found[1] if _found else None
commands: Any = importlib.import_module(lib.__name__ + ".ext.commands") if lib else None
tasks: Any = importlib.import_module(lib.__name__ + ".ext.tasks") if lib else None
#: The adapter module a bot of this fork loads as an extension.
EXTENSION = {"nextcord": "loopwatch.adapters.nextcord", "disnake": "loopwatch.adapters.disnake",
             "pycord": "loopwatch.adapters.discord"}.get(FORK or "", "")

_ids = itertools.count(920_000_000_000_000_000)
_USER = {"username": "someone", "discriminator": "0001", "avatar": None, "global_name": None}


def make_bot() -> Any:
    """A real ``commands.Bot`` of the fork with a logged-in user; call inside a running loop."""
    bot = commands.Bot(command_prefix="!", intents=lib.Intents.all())
    state = bot._connection
    state.user = lib.ClientUser(
        state=state,
        data={**_USER, "id": str(next(_ids)), "bot": True, "verified": True,
              "mfa_enabled": False},
    )
    return bot


def message(bot: Any, content: str) -> Any:
    """A real ``Message`` of the fork, as the gateway would deliver it to ``bot``."""
    state = bot._connection
    payload = {
        "id": str(next(_ids)), "channel_id": "123", "type": 0, "content": content,
        "author": {**_USER, "id": str(next(_ids))}, "attachments": [], "embeds": [],
        "mentions": [], "mention_roles": [], "pinned": False, "mention_everyone": False,
        "tts": False, "timestamp": "2024-01-01T00:00:00+00:00", "edited_timestamp": None,
        "flags": 0,
    }
    return lib.Message(
        state=state, channel=lib.PartialMessageable(state=state, id=123), data=payload
    )


async def drain() -> None:
    """Let every handler the library scheduled run to its end (not the latency poller of
    loopwatch, which runs while the bot is watched)."""
    for _ in range(50):
        pending = [
            t for t in asyncio.all_tasks()
            if t is not asyncio.current_task() and not t.done()
            and not t.get_name().startswith("loopwatch")
        ]
        if not pending:
            return
        await asyncio.wait(pending, timeout=0.1)


def sample(registry: Any, name: str, **labels: str) -> float:
    """A sample of ``registry`` under this fork's ``framework`` label (0 when absent)."""
    value = registry.get_sample_value(name, {"framework": FORK or "", **labels})
    return float(value or 0.0)


def slash_interaction(bot: Any, name: str, options: list[dict[str, Any]] | None = None) -> Any:
    """A real application-command ``Interaction`` of the fork, as the gateway delivers it."""
    payload = {
        "id": str(next(_ids)), "application_id": str(next(_ids)), "type": 2, "token": "t",
        "version": 1, "channel_id": "123", "user": {**_USER, "id": str(next(_ids))},
        "data": {"id": str(next(_ids)), "name": name, "type": 1, "options": options or []},
    }
    return lib.Interaction(data=payload, state=bot._connection)


def press(bot: Any, custom_id: str) -> None:
    """Deliver a button press to ``bot`` as the gateway would (``INTERACTION_CREATE``)."""
    author = {**_USER, "id": str(next(_ids))}
    channel_message = {
        "id": str(next(_ids)), "channel_id": "123", "type": 0, "content": "panel",
        "author": {**_USER, "id": str(next(_ids))}, "attachments": [], "embeds": [],
        "mentions": [], "mention_roles": [], "pinned": False, "mention_everyone": False,
        "tts": False, "timestamp": "2024-01-01T00:00:00+00:00", "edited_timestamp": None,
        "flags": 0, "components": [],
    }
    payload = {
        "id": str(next(_ids)), "application_id": str(next(_ids)), "type": 3, "token": "t",
        "version": 1, "channel_id": "123", "user": author, "locale": "en-US",
        "data": {"custom_id": custom_id, "component_type": 2}, "message": channel_message,
        # Fields some forks require of every interaction payload.
        "channel": {"id": "123", "type": 1, "recipients": [author]}, "app_permissions": "0",
        "entitlements": [], "authorizing_integration_owners": {},
        "attachment_size_limit": 8_388_608,
    }
    bot._connection.parse_interaction_create(payload)


def run_slash(bot: Any, name: str, options: list[dict[str, Any]] | None = None) -> None:
    """Deliver a slash command to ``bot`` as the gateway would (``INTERACTION_CREATE``)."""
    author = {**_USER, "id": str(next(_ids))}
    payload = {
        "id": str(next(_ids)), "application_id": str(next(_ids)), "type": 2, "token": "t",
        "version": 1, "channel_id": "123", "user": author, "locale": "en-US",
        "data": {"id": str(next(_ids)), "name": name, "type": 1, "options": options or []},
        "channel": {"id": "123", "type": 1, "recipients": [author]}, "app_permissions": "0",
        "entitlements": [], "authorizing_integration_owners": {},
        "attachment_size_limit": 8_388_608,
    }
    bot._connection.parse_interaction_create(payload)
