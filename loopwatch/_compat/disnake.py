"""disnake internals the disnake adapter hooks, each in one small named function.

Checked against disnake 2.12.2 (the newest at the time of writing; ``loopwatch[disnake]``
accepts 2.9+). ``tests/test_compat_disnake.py`` (run in the library's own test environment:
it cannot share one with discord.py) holds a canary per touch.

The names are those of ``loopwatch._compat.discord``: the shared adapter code asks every
library's compat module the same questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import disnake
import disnake.ui
from disnake.ext import tasks

from ._discord_shape import defining_class, task_loops

__all__ = [
    "APP_COMMAND_PROCESSOR",
    "APP_COMMAND_RUNNER",
    "DYNAMIC_ITEM_RUNNER",
    "EVENT_RUNNER",
    "LOOP_HOOK_RUNNER",
    "TREE_RUNNER",
    "VIEW_ITEM_RUNNER",
    "app_command_name",
    "command_tree",
    "dynamic_item_runner_owner",
    "loop_has_hook",
    "modal_runner_owner",
    "running_task_loops",
    "view_item_runner_owner",
]

# ``Client._run_event(coro, event_name, *args, **kwargs)``: every event handler, listeners
# included, is scheduled through it and it calls the client's ``on_error``. 2.9–2.12.
EVENT_RUNNER = "_run_event"

# disnake has no separate invoker of application commands to hook.
APP_COMMAND_RUNNER: str | None = None

# ``Bot.process_application_commands(interaction)`` (a public method, called on the bot by
# its ``on_application_command`` event): looks the command up by type and name and invokes
# it; errors go to the command's error dispatch, which sets ``interaction.command_failed``.
# 2.9–2.12.
APP_COMMAND_PROCESSOR: str | None = "process_application_commands"

# ``Loop._call_loop_function(name, *args)``: runs ``before_loop``, ``after_loop`` and the
# ``error`` handler, kept as ``_before_loop``/``_after_loop``/``_error``. 2.9–2.12.
LOOP_HOOK_RUNNER = "_call_loop_function"

# ``_scheduled_task(item, interaction)``: a view item's checks, its callback and the view's
# ``on_error``. On ``View``; ``Modal`` has its own as
# ``_scheduled_task(interaction)``. 2.9–2.12.
VIEW_ITEM_RUNNER = "_scheduled_task"

# disnake has no ``CommandTree`` and no dynamic items: nothing is hooked for them.
TREE_RUNNER = "_call"
DYNAMIC_ITEM_RUNNER = "schedule_dynamic_item_call"


def command_tree(client: Any) -> None:
    """disnake has no command tree: application commands are the client's own."""
    return None


def app_command_name(client: Any, interaction: Any) -> str | None:
    """The qualified name of the command ``process_application_commands`` will run, found
    as disnake finds it (by the command's type and name among the bot's global commands,
    then the sub-command options among its own children); ``None`` when unknown."""
    data = interaction.data
    tables = {
        disnake.ApplicationCommandType.chat_input: "all_slash_commands",
        disnake.ApplicationCommandType.user: "all_user_commands",
        disnake.ApplicationCommandType.message: "all_message_commands",
    }
    table = getattr(client, tables.get(data.type, ""), None)
    command = table.get(data.name) if isinstance(table, dict) else None
    if command is None:
        return None
    options = list(getattr(data, "options", None) or [])
    for _ in range(2):  # a group and its sub-command at most
        children = getattr(command, "children", None)
        chosen = next((o for o in options if o.type in _SUB_OPTIONS), None)
        if not children or chosen is None or chosen.name not in children:
            break
        command = children[chosen.name]
        options = list(getattr(chosen, "options", None) or [])
    return str(command.qualified_name)


_SUB_OPTIONS = (disnake.OptionType.sub_command, disnake.OptionType.sub_command_group)


def view_item_runner_owner() -> type | None:
    """The class whose ``_scheduled_task`` runs a view item (``View``)."""
    return defining_class(disnake.ui.View, VIEW_ITEM_RUNNER)


def modal_runner_owner() -> type | None:
    """The class whose ``_scheduled_task(interaction)`` runs ``Modal.callback`` (``Modal``)."""
    return defining_class(disnake.ui.Modal, VIEW_ITEM_RUNNER)


def dynamic_item_runner_owner() -> None:
    """None: disnake has no dynamic items."""
    return None


def loop_has_hook(loop: Any, name: str) -> bool:
    """Whether ``loop`` has a ``before_loop``/``after_loop``/``error`` hook set."""
    return getattr(loop, "_" + name, None) is not None


def running_task_loops(running: Iterable[asyncio.Task[Any]]) -> list[Any]:
    """The ``tasks.Loop`` objects whose background task is among ``running``: the task's
    coroutine is ``Loop._loop`` and its frame holds the loop as ``self``."""
    return task_loops(tasks.Loop, running)
