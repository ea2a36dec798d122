"""The discord adapters on nextcord, disnake and py-cord, with each library's own objects.

Run in the fork's own environment (``dev.py`` builds one per fork); elsewhere skipped.
The bot is the fork's real ``commands.Bot``; events go through its own ``dispatch``,
commands through its ``get_context``/``invoke``, loops through its ``tasks.Loop``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fork_harness import (
    EXTENSION,
    FORK,
    commands,
    drain,
    lib,
    make_bot,
    message,
    press,
    run_slash,
    sample,
    slash_interaction,
    tasks,
)
from prometheus_client import CollectorRegistry

import loopwatch
from loopwatch import _monitor
from loopwatch._context import current_labels

pytestmark = pytest.mark.skipif(FORK is None, reason="no discord.py fork installed here")


async def _double(n: int) -> int:
    await asyncio.sleep(0)
    return 2 * n


def nested(n: int) -> int:
    """A sync helper that starts its own loop: the nested run loopwatch answers."""
    return asyncio.run(_double(n))


def reentries(registry: CollectorRegistry, handler: str) -> float:
    return sample(registry, "loopwatch_reentry_total", handler=handler, api="asyncio.run",
                  action="offloaded")


def handled(registry: CollectorRegistry, handler: str, outcome: str = "ok") -> float:
    return sample(registry, "loopwatch_handler_duration_seconds_count", handler=handler,
                  outcome=outcome)


def test_extension_loads_and_a_nesting_listener_is_answered_and_labelled(
    registry: CollectorRegistry,
) -> None:
    """The fork loads the extension its own way (py-cord calls ``setup`` unawaited)."""
    loopwatch.install(registry=registry)
    seen: list[tuple[int, tuple[str, str]]] = []

    async def main() -> tuple[list[str], bool, bool]:
        bot = make_bot()

        @bot.listen("on_order")
        async def on_order(n: int) -> None:
            seen.append((nested(n), tuple(current_labels())))

        bot.load_extension(EXTENSION)
        await drain()
        cogs = list(bot.cogs)
        bot.dispatch("order", 21)
        await drain()
        hooked = "_run_event" in vars(bot)
        bot.unload_extension(EXTENSION)
        await drain()
        restored = "_run_event" not in vars(bot) and "invoke" not in vars(bot)
        bot.dispatch("order", 1)  # after unloading: answered, not labelled
        await drain()
        await bot.close()
        return cogs, hooked, restored

    cogs, hooked, restored = asyncio.run(main())
    assert cogs == ["Loopwatch"] and hooked and restored
    assert seen[0] == (42, (FORK, "event:on_order"))
    assert seen[1] == (2, ("none", "__none__"))
    assert reentries(registry, "event:on_order") == 1
    assert handled(registry, "event:on_order") == 1


def test_a_nesting_tasks_loop_is_answered_and_labelled(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    seen: list[tuple[str, int, tuple[str, str]]] = []

    @tasks.loop(seconds=0.01, count=2)
    async def refresh() -> None:
        seen.append(("iteration", nested(len(seen)), tuple(current_labels())))

    @refresh.before_loop
    async def before() -> None:
        seen.append(("before", nested(5), tuple(current_labels())))

    async def main() -> None:
        bot = make_bot()
        bot.load_extension(EXTENSION)
        refresh.start()
        task = refresh.get_task()
        assert task is not None
        await task
        bot.unload_extension(EXTENSION)
        await bot.close()

    asyncio.run(main())
    assert seen == [
        ("before", 10, (FORK, "task:refresh:before_loop")),
        ("iteration", 2, (FORK, "task:refresh")),
        ("iteration", 4, (FORK, "task:refresh")),
    ]
    assert reentries(registry, "task:refresh") == 2
    assert reentries(registry, "task:refresh:before_loop") == 1
    assert handled(registry, "task:refresh") == 2
    # The loop's own attributes are given back on unload.
    assert "__wrapped__" not in vars(refresh.coro) and "_call_loop_function" not in vars(refresh)


def test_prefix_commands_and_subcommands_are_labelled(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    seen: list[tuple[str, tuple[str, str]]] = []

    async def main() -> None:
        bot = make_bot()

        @bot.command()
        async def ping(ctx: Any) -> None:
            seen.append(("ping", tuple(current_labels())))

        @bot.group()
        async def admin(ctx: Any) -> None:
            pass

        @admin.command()
        async def ban(ctx: Any, who: str) -> None:
            seen.append((who, tuple(current_labels())))

        @bot.command()
        async def fail(ctx: Any) -> None:
            raise RuntimeError("boom")

        @bot.event
        async def on_command_error(ctx: Any, error: Exception) -> None:
            seen.append(("error", tuple(current_labels())))

        bot.load_extension(EXTENSION)
        for text in ("!ping", "!admin ban 12345", "!fail"):
            await bot.invoke(await bot.get_context(message(bot, text)))
        await drain()
        bot.unload_extension(EXTENSION)
        await bot.close()

    asyncio.run(main())
    assert seen[:2] == [
        ("ping", (FORK, "command:ping")), ("12345", (FORK, "command:admin ban")),
    ]
    # The error handler runs as an event of its own (dispatched by the library).
    assert seen[2] == ("error", (FORK, "event:on_command_error"))
    assert handled(registry, "command:ping") == 1
    assert handled(registry, "command:admin ban") == 1
    assert handled(registry, "command:fail", "error") == 1


def test_a_nesting_view_button_is_answered_and_labelled(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    seen: list[tuple[int, tuple[str, str]]] = []

    class Panel(lib.ui.View):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @lib.ui.button(label="go", custom_id="panel:go")
        async def go(self, *args: Any) -> None:  # the forks order (button, interaction)
            seen.append((nested(3), tuple(current_labels())))

    async def main() -> None:
        bot = make_bot()
        bot.load_extension(EXTENSION)
        bot.add_view(Panel())
        press(bot, "panel:go")
        await drain()
        bot.unload_extension(EXTENSION)
        press(bot, "panel:go")  # after unloading: answered, not labelled
        await drain()
        await bot.close()

    asyncio.run(main())
    assert seen == [(6, (FORK, "view:Panel.go")), (6, ("none", "__none__"))]
    assert reentries(registry, "view:Panel.go") == 1
    assert handled(registry, "view:Panel.go") == 1


@pytest.mark.skipif(FORK != "pycord", reason="py-cord's application-command invoker")
def test_pycord_application_commands_are_labelled(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    seen: list[tuple[Any, tuple[str, str]]] = []

    async def main() -> None:
        bot = make_bot()

        @bot.slash_command(name="report")
        async def report(ctx: Any) -> None:
            seen.append((nested(4), tuple(current_labels())))

        admin = bot.create_group("admin")

        @admin.command(name="ban")
        async def ban(ctx: Any) -> None:
            seen.append(("ban", tuple(current_labels())))

        @bot.slash_command(name="broken")
        async def broken(ctx: Any) -> None:
            raise RuntimeError("boom")

        @bot.event
        async def on_application_command_error(ctx: Any, error: Exception) -> None:
            seen.append(("error", tuple(current_labels())))

        bot.load_extension(EXTENSION)
        await bot.process_application_commands(slash_interaction(bot, "report"))
        sub = [{"name": "ban", "type": 1, "options": []}]
        await bot.process_application_commands(slash_interaction(bot, "admin", sub))
        await bot.process_application_commands(slash_interaction(bot, "broken"))
        await drain()
        bot.unload_extension(EXTENSION)
        await bot.close()

    asyncio.run(main())
    assert seen[:2] == [(8, ("pycord", "app_command:report")),
                        ("ban", ("pycord", "app_command:admin ban"))]
    assert seen[2] == ("error", ("pycord", "event:on_application_command_error"))
    assert reentries(registry, "app_command:report") == 1
    assert handled(registry, "app_command:admin ban") == 1
    assert handled(registry, "app_command:broken", "error") == 1


@pytest.mark.skipif(FORK != "disnake", reason="disnake's application-command processor")
def test_disnake_application_commands_are_labelled(registry: CollectorRegistry) -> None:
    loopwatch.install(registry=registry)
    seen: list[tuple[Any, tuple[str, str]]] = []

    async def main() -> None:
        bot = make_bot()

        @bot.slash_command(name="report", description="r")
        async def report(inter) -> None:  # disnake reads the parameter, unannotated
            seen.append((nested(4), tuple(current_labels())))

        @bot.slash_command(name="admin", description="a")
        async def admin(inter) -> None:  # disnake reads the parameter, unannotated
            pass

        @admin.sub_command(name="ban", description="b")
        async def ban(inter) -> None:  # disnake reads the parameter, unannotated
            seen.append(("ban", tuple(current_labels())))

        @bot.slash_command(name="broken", description="b")
        async def broken(inter) -> None:  # disnake reads the parameter, unannotated
            raise RuntimeError("boom")

        @bot.event
        async def on_slash_command_error(inter: Any, error: Exception) -> None:
            seen.append(("error", tuple(current_labels())))

        bot.load_extension(EXTENSION)
        run_slash(bot, "report")
        run_slash(bot, "admin", [{"name": "ban", "type": 1, "options": []}])
        run_slash(bot, "broken")
        run_slash(bot, "nobody-knows")  # unknown: the event's label, no command label
        await drain()
        bot.unload_extension(EXTENSION)
        await bot.close()

    asyncio.run(main())
    assert seen[:2] == [(8, ("disnake", "app_command:report")),
                        ("ban", ("disnake", "app_command:admin ban"))]
    assert seen[2] == ("error", ("disnake", "event:on_slash_command_error"))
    assert reentries(registry, "app_command:report") == 1
    assert handled(registry, "app_command:admin ban") == 1
    assert handled(registry, "app_command:broken", "error") == 1
    assert not any("nobody" in h for h in _handlers(registry))


def _handlers(registry: CollectorRegistry) -> set[str]:
    return {
        s.labels["handler"]
        for m in registry.collect() if m.name == "loopwatch_handler_duration_seconds"
        for s in m.samples
    }


def test_a_cog_made_by_hand_attaches_and_detaches(registry: CollectorRegistry) -> None:
    """The forks add cogs synchronously: the cog attaches when made, detaches on removal,
    and loopwatch, installed by it, is uninstalled with it."""
    cog_module = __import__(EXTENSION, fromlist=["LoopwatchCog"])

    async def main() -> tuple[bool, bool, bool]:
        bot = make_bot()
        cog = cog_module.LoopwatchCog(bot, registry=registry)
        bot.add_cog(cog)
        attached = "_run_event" in vars(bot) and _monitor.current() is not None
        bot.remove_cog("Loopwatch")
        await drain()
        detached = "_run_event" not in vars(bot)
        await bot.close()
        return attached, detached, _monitor.current() is None

    assert asyncio.run(main()) == (True, True, True)


def test_commands_module_is_the_forks() -> None:
    """The harness drives the fork, never discord.py."""
    assert commands.Bot.__module__.partition(".")[0] == ("discord" if FORK == "pycord" else FORK)
