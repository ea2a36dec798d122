"""Canaries for every discord.py internal loopwatch touches (loopwatch/_compat/discord.py).

Each test drives discord.py itself and fails, naming the touch, when an upgrade renames,
removes or re-signs what the adapter hooks.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from discord.ext import tasks
from discord_harness import BotHarness, discord, make_bot, run

from loopwatch._compat import discord as compat


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_event_runner_schedules_every_handler() -> None:
    runner = getattr(discord.Client, compat.EVENT_RUNNER)
    assert inspect.iscoroutinefunction(runner), compat.EVENT_RUNNER
    assert _params(runner)[:3] == ["self", "coro", "event_name"]
    bot = make_bot()
    seen: list[str] = []
    original = getattr(bot, compat.EVENT_RUNNER)

    async def spy(coro: Any, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        seen.append(event_name)
        await original(coro, event_name, *args, **kwargs)

    @bot.listen("on_custom")
    async def custom() -> None:
        pass

    async def main() -> None:
        async with BotHarness(bot) as h:
            setattr(bot, compat.EVENT_RUNNER, spy)
            bot.dispatch("custom")
            await h.drain()

    run(main())
    assert seen == ["on_custom"], f"discord.py no longer runs listeners via {compat.EVENT_RUNNER}"


def test_command_tree_and_its_runner() -> None:
    client = make_bot("client")
    assert compat.command_tree(client) is None
    tree = discord.app_commands.CommandTree(client)
    assert compat.command_tree(client) is tree
    runner = getattr(tree, compat.TREE_RUNNER)
    assert inspect.iscoroutinefunction(runner), compat.TREE_RUNNER
    assert _params(runner) == ["interaction"]
    ran: list[str] = []

    @tree.command(description="x")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    async def spy(interaction: discord.Interaction) -> None:
        ran.append(interaction.command.qualified_name if interaction.command else "?")
        await runner(interaction)

    async def main() -> None:
        async with BotHarness(client) as h:
            setattr(tree, compat.TREE_RUNNER, spy)
            await h.app_command("ping")
            assert h.replies == ["pong"]

    run(main())
    assert ran == ["ping"]


def test_view_item_runner() -> None:
    owner = compat.view_item_runner_owner()
    assert issubclass(discord.ui.View, owner)
    runner = vars(owner)[compat.VIEW_ITEM_RUNNER]
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner) == ["self", "item", "interaction"]


def test_modal_runner() -> None:
    owner = compat.modal_runner_owner()
    assert issubclass(discord.ui.Modal, owner)
    runner = vars(owner)[compat.VIEW_ITEM_RUNNER]
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner)[:2] == ["self", "interaction"]


def test_dynamic_item_runner() -> None:
    owner = compat.dynamic_item_runner_owner()
    if not hasattr(discord.ui, "DynamicItem"):  # before 2.4: nothing to hook
        assert owner is None
        return
    assert owner is not None, compat.DYNAMIC_ITEM_RUNNER
    runner = vars(owner)[compat.DYNAMIC_ITEM_RUNNER]
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner)[:4] == ["self", "component_type", "factory", "interaction"]


def test_loop_hook_runner_and_hooks() -> None:
    runner = getattr(tasks.Loop, compat.LOOP_HOOK_RUNNER)
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner)[:2] == ["self", "name"]
    calls: list[str] = []

    @tasks.loop(seconds=0.01, count=1)
    async def once() -> None:
        calls.append("iteration")

    assert not compat.loop_has_hook(once, "before_loop")

    @once.before_loop
    async def before() -> None:
        calls.append("before")

    assert compat.loop_has_hook(once, "before_loop")
    assert not compat.loop_has_hook(once, "after_loop")
    assert compat.loop_has_hook(once, "error")  # the default handler logs
    original = getattr(once, compat.LOOP_HOOK_RUNNER)

    async def spy(name: str, /, *args: Any) -> None:
        calls.append("runner:" + name)
        await original(name, *args)

    async def main() -> None:
        setattr(once, compat.LOOP_HOOK_RUNNER, spy)  # read per call, from the instance
        once.start()
        task = once.get_task()
        assert task is not None
        await task

    asyncio.run(main())
    assert calls == ["runner:before_loop", "before", "iteration", "runner:after_loop"]


def test_loop_iteration_reads_coro_from_the_instance_each_time() -> None:
    seen: list[str] = []

    @tasks.loop(seconds=0.001, count=3)
    async def three() -> None:
        seen.append("original")

    async def replacement() -> None:
        seen.append("replacement")

    async def main() -> None:
        three.start()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # The loop is already running: an instance ``coro`` takes effect at the next
        # iteration, which is how loops started before loopwatch attached are watched.
        three.coro = replacement
        task = three.get_task()
        assert task is not None
        await task

    asyncio.run(main())
    assert seen[0] == "original" and seen[-1] == "replacement"


def test_running_task_loops_finds_loops_through_their_task() -> None:
    @tasks.loop(seconds=0.01)
    async def forever() -> None:
        pass

    async def main() -> list[tasks.Loop[Any]]:
        assert compat.running_task_loops(asyncio.all_tasks()) == []
        forever.start()
        await asyncio.sleep(0.02)
        try:
            return compat.running_task_loops(asyncio.all_tasks())
        finally:
            forever.cancel()

    assert asyncio.run(main()) == [forever]


def test_discord_py_is_not_taken_for_py_cord() -> None:
    """py-cord installs as ``discord`` too; discord.py names itself ``discord``."""
    from loopwatch._compat import pycord
    from loopwatch.adapters import discord as adapter

    assert discord.__title__ == "discord"
    assert not pycord.is_pycord(discord)
    assert adapter.FRAMEWORK == "discord"
