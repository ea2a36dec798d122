"""py-cord internals the discord adapter hooks under py-cord, one small named function each.

Checked against py-cord 2.8.1 (the newest at the time of writing; ``loopwatch[pycord]``
accepts 2.6+). py-cord installs as the ``discord`` package, so this module imports
``discord`` too. ``tests/test_compat_pycord.py`` (run in the library's own test environment:
it cannot share one with discord.py) holds a canary per touch.

The names are those of ``loopwatch._compat.discord``: the shared adapter code asks every
library's compat module the same questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import discord
import discord.ui
from discord.ext import tasks

from ._discord_shape import defining_class, task_loops

__all__ = [
    "APP_COMMAND_PROCESSOR",
    "APP_COMMAND_RUNNER",
    "DYNAMIC_ITEM_RUNNER",
    "EVENT_RUNNER",
    "LOOP_HOOK_RUNNER",
    "TREE_RUNNER",
    "VIEW_ITEM_RUNNER",
    "command_tree",
    "dynamic_item_runner_owner",
    "is_pycord",
    "loop_has_hook",
    "modal_runner_owner",
    "running_task_loops",
    "view_item_runner_owner",
]

# ``Client._run_event(coro, event_name, *args, **kwargs)``: every event handler, listeners
# included, is scheduled through it and it calls the client's ``on_error``. 2.6–2.8.
EVENT_RUNNER = "_run_event"

# ``Bot.invoke_application_command(ctx)``: every slash command, subcommand and context
# menu, with its ``ApplicationContext`` (a public method, on the bot instance). 2.6–2.8.
APP_COMMAND_RUNNER: str | None = "invoke_application_command"
# The processor of application-command interactions whose command the compat module can
# name (``app_command_name``): disnake only.
APP_COMMAND_PROCESSOR: str | None = None

# ``Loop._call_loop_function(name, *args)``: runs ``before_loop``, ``after_loop`` and the
# ``error`` handler, kept as ``_before_loop``/``_after_loop``/``_error``. 2.6–2.8.
LOOP_HOOK_RUNNER = "_call_loop_function"

# ``_scheduled_task(item, interaction)``: a view item's checks, its callback and the view's
# ``on_error``. On ``BaseView`` (2.7+) or ``View``;
# py-cord's ``Modal`` has no such runner. 2.6–2.8.
VIEW_ITEM_RUNNER = "_scheduled_task"

# py-cord has no ``CommandTree`` and no dynamic items: nothing is hooked for them.
TREE_RUNNER = "_call"
DYNAMIC_ITEM_RUNNER = "schedule_dynamic_item_call"

def is_pycord(package: Any) -> bool:
    """Whether the installed ``discord`` package is py-cord: it names itself ``pycord`` in
    ``__title__`` where discord.py says ``discord`` (py-cord 2.0–2.8, discord.py 1.0–2.7)."""
    return getattr(package, "__title__", None) == "pycord"



def command_tree(client: Any) -> None:
    """py-cord has no command tree: application commands are the client's own."""
    return None


def view_item_runner_owner() -> type | None:
    """The class whose ``_scheduled_task`` runs a view item (``BaseView`` or ``View``)."""
    return defining_class(discord.ui.View, VIEW_ITEM_RUNNER)


def modal_runner_owner() -> type | None:
    """None: py-cord runs ``Modal.callback`` without a runner of its own to hook."""
    return None


def dynamic_item_runner_owner() -> None:
    """None: py-cord has no dynamic items."""
    return None


def loop_has_hook(loop: Any, name: str) -> bool:
    """Whether ``loop`` has a ``before_loop``/``after_loop``/``error`` hook set."""
    return getattr(loop, "_" + name, None) is not None


def running_task_loops(running: Iterable[asyncio.Task[Any]]) -> list[Any]:
    """The ``tasks.Loop`` objects whose background task is among ``running``: the task's
    coroutine is ``Loop._loop`` and its frame holds the loop as ``self``."""
    return task_loops(tasks.Loop, running)
