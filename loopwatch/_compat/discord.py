"""discord.py internals the discord adapter hooks, each in one small named function.

Checked against discord.py 2.3.2 and 2.7.1 (the oldest release ``loopwatch[discord]``
accepts and the newest at the time of writing). ``tests/test_compat_discord.py`` holds a
canary per touch: when an upgrade renames or removes one of these, that test says which.

Hook points are given by name (``*_RUNNER``) so the adapter's patcher saves and restores
them exactly; every value read here goes through a function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import discord
from discord.ext import tasks
from discord.ui import view as _ui_view

from ._discord_shape import task_loops

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

# ``Client._run_event(coro, event_name, *args, **kwargs)``: every event handler, however it
# was registered, is scheduled through it, and it calls the client's ``on_error``.
# 2.0–2.7.1: unchanged signature.
EVENT_RUNNER = "_run_event"

# discord.py runs application commands through its ``CommandTree`` (``TREE_RUNNER``).
APP_COMMAND_RUNNER: str | None = None
# The processor of application-command interactions whose command the compat module can
# name (``app_command_name``): disnake only.
APP_COMMAND_PROCESSOR: str | None = None

# ``CommandTree._call(interaction)``: every application command, context menu and
# autocomplete the tree runs. 2.0–2.7.1.
TREE_RUNNER = "_call"

# ``Loop._call_loop_function(name, *args)``: runs ``before_loop``, ``after_loop`` and the
# ``error`` handler (looked up on the instance at each call). 2.0–2.7.1.
LOOP_HOOK_RUNNER = "_call_loop_function"

# ``_scheduled_task(item, interaction)`` on the view class: item checks, the view's
# ``interaction_check``, the item's callback and the view's ``on_error``. Defined on ``View``
# up to 2.5 and on ``BaseView`` (shared with ``LayoutView``) from 2.6; ``Modal`` overrides
# it as ``_scheduled_task(interaction, components[, resolved])``.
VIEW_ITEM_RUNNER = "_scheduled_task"

# ``ViewStore.schedule_dynamic_item_call(component_type, factory, interaction, custom_id,
# match)``: builds a ``DynamicItem`` from the custom_id and runs its callback. 2.4–2.7.1.
DYNAMIC_ITEM_RUNNER = "schedule_dynamic_item_call"


def command_tree(client: discord.Client) -> discord.app_commands.CommandTree[Any] | None:
    """The client's attached command tree, if one was created (2.0–2.7.1)."""
    tree: discord.app_commands.CommandTree[Any] | None = client._connection._command_tree
    return tree


def _defining_class(cls: type, name: str) -> type:
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    raise AttributeError(f"{cls.__qualname__} has no {name}")


def view_item_runner_owner() -> type:
    """The class whose ``_scheduled_task`` runs a view item (``View`` or ``BaseView``)."""
    return _defining_class(discord.ui.View, VIEW_ITEM_RUNNER)


def modal_runner_owner() -> type:
    """The class whose ``_scheduled_task`` runs ``Modal.on_submit`` (``Modal``)."""
    return _defining_class(discord.ui.Modal, VIEW_ITEM_RUNNER)


def dynamic_item_runner_owner() -> type | None:
    """The connection's view store class, whose ``schedule_dynamic_item_call`` runs a
    ``DynamicItem`` (``discord.ui.view.ViewStore``, not exported; 2.4–2.7.1); ``None``
    before 2.4, which has no dynamic items."""
    store: type = _ui_view.ViewStore
    return store if DYNAMIC_ITEM_RUNNER in vars(store) else None


def loop_has_hook(loop: tasks.Loop[Any], name: str) -> bool:
    """Whether ``loop`` has a ``before_loop``/``after_loop``/``error`` hook set: discord.py
    keeps them as ``_before_loop``, ``_after_loop``, ``_error`` (2.0–2.7.1)."""
    return getattr(loop, "_" + name, None) is not None


def running_task_loops(running: Iterable[asyncio.Task[Any]]) -> list[tasks.Loop[Any]]:
    """The ``tasks.Loop`` objects whose background task is among ``running``.

    A loop started before loopwatch attached is found through its task: the task's
    coroutine is ``Loop._loop`` and its frame holds the loop as ``self`` (2.0–2.7.1).
    """
    return task_loops(tasks.Loop, running)
