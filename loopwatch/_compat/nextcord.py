"""nextcord internals the nextcord adapter hooks, each in one small named function.

Checked against nextcord 2.6.0 (the newest at the time of writing; ``loopwatch[nextcord]``
accepts 2.6+). ``tests/test_compat_nextcord.py`` (run in the library's own test environment:
it cannot share one with discord.py) holds a canary per touch.

The names are those of ``loopwatch._compat.discord``: the shared adapter code asks every
library's compat module the same questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import nextcord
import nextcord.ui
from nextcord.ext import tasks

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
    "loop_has_hook",
    "modal_runner_owner",
    "running_task_loops",
    "view_item_runner_owner",
]

# ``Client._run_event(coro, event_name, *args, **kwargs)``: every event handler, listeners
# included, is scheduled through it and it calls the client's ``on_error``. 2.6.
EVENT_RUNNER = "_run_event"

# nextcord has no separate invoker of application commands to hook.
APP_COMMAND_RUNNER: str | None = None
# The processor of application-command interactions whose command the compat module can
# name (``app_command_name``): disnake only.
APP_COMMAND_PROCESSOR: str | None = None

# ``Loop._call_loop_function(name, *args)``: runs ``before_loop``, ``after_loop`` and the
# ``error`` handler, kept as ``_before_loop``/``_after_loop``/``_error``. 2.6.
LOOP_HOOK_RUNNER = "_call_loop_function"

# ``_scheduled_task(item, interaction)``: a view item's checks, its callback and the view's
# ``on_error``. On ``View``; ``Modal`` has its own as
# ``_scheduled_task(interaction)``. 2.6.
VIEW_ITEM_RUNNER = "_scheduled_task"

# nextcord has no ``CommandTree`` and no dynamic items: nothing is hooked for them.
TREE_RUNNER = "_call"
DYNAMIC_ITEM_RUNNER = "schedule_dynamic_item_call"


def command_tree(client: Any) -> None:
    """nextcord has no command tree: application commands are the client's own."""
    return None


def view_item_runner_owner() -> type | None:
    """The class whose ``_scheduled_task`` runs a view item (``View``)."""
    return defining_class(nextcord.ui.View, VIEW_ITEM_RUNNER)


def modal_runner_owner() -> type | None:
    """The class whose ``_scheduled_task(interaction)`` runs ``Modal.callback`` (``Modal``)."""
    return defining_class(nextcord.ui.Modal, VIEW_ITEM_RUNNER)


def dynamic_item_runner_owner() -> None:
    """None: nextcord has no dynamic items."""
    return None


def loop_has_hook(loop: Any, name: str) -> bool:
    """Whether ``loop`` has a ``before_loop``/``after_loop``/``error`` hook set."""
    return getattr(loop, "_" + name, None) is not None


def running_task_loops(running: Iterable[asyncio.Task[Any]]) -> list[Any]:
    """The ``tasks.Loop`` objects whose background task is among ``running``: the task's
    coroutine is ``Loop._loop`` and its frame holds the loop as ``self``."""
    return task_loops(tasks.Loop, running)
