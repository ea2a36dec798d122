"""Canaries for the internals the adapters touch in nextcord, disnake and py-cord
(``loopwatch/_compat/nextcord.py``, ``disnake.py``, ``pycord.py``).

Run in the fork's own environment; elsewhere skipped. Each test drives the fork itself and
fails, naming the touch, when an upgrade renames, removes or re-signs what is hooked.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

import pytest
from fork_harness import FORK, commands, drain, lib, make_bot, tasks

pytestmark = pytest.mark.skipif(FORK is None, reason="no discord.py fork installed here")

compat: Any = importlib.import_module(f"loopwatch._compat.{FORK}") if FORK else None


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_event_runner_runs_listeners() -> None:
    runner = getattr(lib.Client, compat.EVENT_RUNNER)
    assert inspect.iscoroutinefunction(runner), compat.EVENT_RUNNER
    assert _params(runner)[:3] == ["self", "coro", "event_name"]
    seen: list[str] = []

    async def main() -> None:
        bot = make_bot()
        original = getattr(bot, compat.EVENT_RUNNER)

        async def spy(coro: Any, event_name: str, /, *args: Any, **kwargs: Any) -> None:
            seen.append(event_name)
            await original(coro, event_name, *args, **kwargs)

        @bot.listen("on_custom")
        async def custom() -> None:
            pass

        setattr(bot, compat.EVENT_RUNNER, spy)  # read from the instance at each dispatch
        bot.dispatch("custom")
        await drain()
        await bot.close()

    asyncio.run(main())
    assert "on_custom" in seen, f"{FORK} no longer runs listeners via {compat.EVENT_RUNNER}"


def test_no_command_tree_and_no_dynamic_items() -> None:
    async def main() -> None:
        bot = make_bot()
        assert compat.command_tree(bot) is None
        await bot.close()

    asyncio.run(main())
    assert compat.dynamic_item_runner_owner() is None


def test_application_command_invoker() -> None:
    if FORK != "pycord":
        assert compat.APP_COMMAND_RUNNER is None
        return
    runner = getattr(lib.Bot, compat.APP_COMMAND_RUNNER)
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner)[:2] == ["self", "ctx"]


def test_application_command_processor() -> None:
    if FORK != "disnake":
        assert compat.APP_COMMAND_PROCESSOR is None
        return
    runner = getattr(commands.InteractionBot, compat.APP_COMMAND_PROCESSOR)
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner)[:2] == ["self", "interaction"]
    # The command tables and the option types app_command_name reads.
    bot_attrs = ("all_slash_commands", "all_user_commands", "all_message_commands")

    async def tables() -> list[bool]:
        bot = make_bot()
        try:
            return [isinstance(getattr(bot, a, None), dict) for a in bot_attrs]
        finally:
            await bot.close()

    assert asyncio.run(tables()) == [True] * 3
    assert lib.OptionType.sub_command.value == 1
    assert lib.OptionType.sub_command_group.value == 2


def test_view_item_runner() -> None:
    owner = compat.view_item_runner_owner()
    assert owner is not None and issubclass(lib.ui.View, owner)
    runner = vars(owner)[compat.VIEW_ITEM_RUNNER]
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner)[:3] == ["self", "item", "interaction"]


def test_modal_runner() -> None:
    owner = compat.modal_runner_owner()
    if FORK == "pycord":
        # py-cord's Modal has no runner of its own: modals go unlabelled there.
        assert owner is None
        return
    assert owner is lib.ui.Modal
    runner = vars(owner)[compat.VIEW_ITEM_RUNNER]
    assert inspect.iscoroutinefunction(runner)
    assert _params(runner)[:2] == ["self", "interaction"]


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
        while not seen:  # the first iteration has run: the loop is going
            await asyncio.sleep(0)
        # An instance ``coro`` set on a running loop takes effect at the next iteration:
        # how loops started before loopwatch attached are watched.
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

    async def main() -> list[Any]:
        assert compat.running_task_loops(asyncio.all_tasks()) == []
        forever.start()
        await asyncio.sleep(0.02)
        try:
            return list(compat.running_task_loops(asyncio.all_tasks()))
        finally:
            forever.cancel()

    assert asyncio.run(main()) == [forever]


@pytest.mark.skipif(FORK != "pycord", reason="py-cord only")
def test_pycord_is_told_apart_from_discord_py() -> None:
    """py-cord's ``discord`` says ``pycord`` in ``__title__`` (discord.py's says ``discord``:
    checked in the main environment by the discord adapter tests)."""
    from loopwatch._compat import pycord

    assert pycord.is_pycord(lib)
    assert importlib.import_module("loopwatch.adapters.discord").FRAMEWORK == "pycord"
