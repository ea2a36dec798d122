"""Every kind of handler discord.py runs gets its own label: tasks loops, view items, modals,
dynamic items, context menus, nested groups, autocomplete. Real payloads, offline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from discord.ext import tasks
from discord_harness import BotHarness, commands, discord, handled, make_bot, reentries, run
from helpers import marked_line, run_on
from prometheus_client import CollectorRegistry, generate_latest

import loopwatch
from loopwatch._compat import discord as compat
from loopwatch._context import Labels, current_labels
from loopwatch.testing import capture_incidents

EXT = "loopwatch.adapters.discord"
HERE = __file__
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
NONE = Labels("none", "__none__")


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# LINE: marker``."""
    return marked_line(HERE, marker)


def blocks(registry: CollectorRegistry, handler: str) -> float:
    value = registry.get_sample_value(
        "loopwatch_event_loop_blocks_total", {"framework": "discord", "handler": handler}
    )
    return value or 0.0


async def forecast(city: str) -> str:
    await asyncio.sleep(0)
    return f"sunny in {city}"


def sync_sdk(city: str) -> str:
    """A sync SDK of the kind users call from async code: it runs its own loop."""
    return asyncio.run(forecast(city))  # LINE: sdk-run


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``predicate()`` holds (bounded; asserts nothing on time)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def blocked_at(seen: list[loopwatch.Incident], marker: str) -> loopwatch.Incident | None:
    """The blocked-loop incident whose user line is ``marker`` (other stalls of a busy
    machine may be reported too)."""
    line = line_of(marker)
    return next(
        (i for i in seen
         if i.kind == "blocked_loop" and i.site is not None and i.site.line == line),
        None,
    )


def class_hooks() -> dict[str, Any]:
    """What discord.py's classes hold at every process-wide hook point."""
    found = {
        "view": vars(compat.view_item_runner_owner())[compat.VIEW_ITEM_RUNNER],
        "modal": vars(compat.modal_runner_owner())[compat.VIEW_ITEM_RUNNER],
        "start": vars(tasks.Loop)["start"],
    }
    store = compat.dynamic_item_runner_owner()
    if store is not None:
        found["dynamic"] = vars(store)[compat.DYNAMIC_ITEM_RUNNER]
    return found


@pytest.fixture(autouse=True)
def _class_hooks_restored() -> Iterator[None]:
    """Every test leaves discord.py's classes as it found them (and a failed one cannot
    leak its hooks into the next)."""
    before = class_hooks()
    yield
    after = class_hooks()
    if after != before:
        owners = {
            "view": compat.view_item_runner_owner(), "modal": compat.modal_runner_owner(),
            "start": tasks.Loop, "dynamic": compat.dynamic_item_runner_owner(),
        }
        names = {"view": compat.VIEW_ITEM_RUNNER, "modal": compat.VIEW_ITEM_RUNNER,
                 "start": "start", "dynamic": compat.DYNAMIC_ITEM_RUNNER}
        for key, value in before.items():
            setattr(owners[key], names[key], value)
        left = sorted(k for k in before if before[k] is not after[k])
        pytest.fail(f"discord.py classes left hooked: {left}")


# -- discord.ext.tasks loops ---------------------------------------------------------------


class Reporter(commands.Cog):
    """A cog with a background loop that calls a sync SDK, started when the cog loads."""

    def __init__(self) -> None:
        self.labels: list[Labels] = []
        self.hooks: list[tuple[str, Labels]] = []

    async def cog_load(self) -> None:
        self.report.start()

    async def cog_unload(self) -> None:
        self.report.cancel()

    @tasks.loop(seconds=0.01, count=2)
    async def report(self) -> None:
        self.labels.append(current_labels())
        sync_sdk("Oslo")

    @report.before_loop
    async def before_report(self) -> None:
        self.hooks.append(("before", current_labels()))

    @report.after_loop
    async def after_report(self) -> None:
        self.hooks.append(("after", current_labels()))


@tasks.loop(seconds=0.01, count=1)
async def heartbeat() -> None:
    time.sleep(0.3)  # LINE: loop-block


def test_tasks_loops_calling_asyncio_run_or_blocking_are_attributed(
    registry: CollectorRegistry, loop_factory: LoopFactory
) -> None:
    bot = make_bot()
    cog = Reporter()

    async def main() -> list[loopwatch.Incident]:
        with capture_incidents(registry=registry, block_threshold=0.1) as seen:
            async with BotHarness(bot):
                await bot.load_extension(EXT)
                await bot.add_cog(cog)  # after loopwatch: started through Loop.start
                task = cog.report.get_task()
                assert task is not None
                await task
                heartbeat.start()
                hb = heartbeat.get_task()
                assert hb is not None
                await hb
                await wait_for(lambda: blocked_at(seen, "loop-block") is not None, "block")
                await bot.unload_extension(EXT)
        return seen

    seen = run_on(loop_factory, main())
    handler = "task:Reporter.report"
    assert cog.labels == [Labels("discord", handler)] * 2
    assert cog.hooks == [
        ("before", Labels("discord", handler + ":before_loop")),
        ("after", Labels("discord", handler + ":after_loop")),
    ]
    assert reentries(registry, handler) == 2
    assert handled(registry, handler) == 2
    assert handled(registry, handler + ":before_loop") == 1
    assert handled(registry, handler + ":after_loop") == 1
    (reentry, *_) = [i for i in seen if i.kind == "reentry"]
    assert (reentry.framework, reentry.handler) == ("discord", handler)
    assert reentry.site is not None and reentry.site.line == line_of("sdk-run")
    block = blocked_at(seen, "loop-block")
    assert block is not None
    assert (block.framework, block.handler) == ("discord", "task:heartbeat")
    assert blocks(registry, "task:heartbeat") == 1
    assert handled(registry, "task:heartbeat") == 1


def test_loop_errors_are_counted_and_the_users_error_hook_runs_once(
    registry: CollectorRegistry,
) -> None:
    errors: list[tuple[str, Labels]] = []

    @tasks.loop(seconds=0.01, count=3)
    async def flaky() -> None:
        raise KeyError("the user's own error")

    @flaky.error
    async def on_flaky_error(exc: BaseException) -> None:
        errors.append((type(exc).__name__, current_labels()))

    error_hook = vars(flaky)["_error"]

    async def main() -> None:
        loopwatch.install(registry=registry)
        bot = make_bot()
        async with BotHarness(bot):
            await bot.load_extension(EXT)
            flaky.start()
            task = flaky.get_task()
            assert task is not None
            with pytest.raises(KeyError):
                await task
            assert vars(flaky)["_error"] is error_hook  # the user's hook, never replaced
            await bot.unload_extension(EXT)

    run(main())
    # The error ends the loop: one failed iteration, the user's hook once, inside the loop's
    # labels.
    assert errors == [("KeyError", Labels("discord", "task:flaky"))]
    assert handled(registry, "task:flaky", "error") == 1
    assert handled(registry, "task:flaky") == 0


def test_a_loop_running_before_load_is_covered_and_unload_restores_it_exactly(
    registry: CollectorRegistry,
) -> None:
    seen: list[Labels] = []

    @tasks.loop(seconds=0.005)
    async def ticker() -> None:
        seen.append(current_labels())

    async def main() -> None:
        loopwatch.install(registry=registry)
        bot = make_bot()
        async with BotHarness(bot):
            ticker.start()
            await wait_for(lambda: len(seen) >= 2, "ticks before load")
            before_vars = dict(vars(ticker))
            before_classes = class_hooks()
            await bot.load_extension(EXT)
            assert vars(ticker)["coro"] is not before_vars["coro"]
            for _ in range(3):
                mark = len(seen)
                await wait_for(lambda: len(seen) >= mark + 2, "ticks while loaded")
                await bot.reload_extension(EXT)
            mark = len(seen)
            await wait_for(lambda: len(seen) >= mark + 2, "ticks while loaded")
            await bot.unload_extension(EXT)
            # Exactly what was there: no attribute added or left behind, the same body and
            # hooks (the loop's own counters and timestamps moved on meanwhile).
            assert vars(ticker).keys() == before_vars.keys()
            for key in ("coro", "_before_loop", "_after_loop", "_error"):
                assert vars(ticker).get(key) is before_vars.get(key), key
            assert class_hooks() == before_classes
            assert ticker.is_running()  # the loop never noticed
            mark = len(seen)
            await wait_for(lambda: len(seen) >= mark + 2, "ticks after unload")
            ticker.cancel()

    run(main())
    labelled = seen.count(Labels("discord", "task:ticker"))
    assert labelled >= 8
    # One iteration, one sample, across three reloads: no wrapper stacked on another.
    assert handled(registry, "task:ticker") == labelled
    assert seen[-1] == NONE


# -- views: buttons, selects, persistent and message-bound ---------------------------------


class Panel(discord.ui.View):
    """A persistent view (no timeout, fixed custom_ids), as bots register in setup_hook."""

    def __init__(self) -> None:
        super().__init__(timeout=None)
        self.calls: list[tuple[str, Labels]] = []
        self.errors: list[tuple[str, Labels]] = []
        self.add_item(RoleButton(self))

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any], /
    ) -> None:
        self.errors.append((type(error).__name__, current_labels()))

    @discord.ui.button(label="weather", custom_id="panel:weather")
    async def weather(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.calls.append(("weather", current_labels()))
        await interaction.response.send_message(sync_sdk("Bergen"))  # LINE: button-run

    @discord.ui.select(
        custom_id="panel:city",
        options=[discord.SelectOption(label="Oslo"), discord.SelectOption(label="Tromsø")],
    )
    async def choose(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        self.calls.append(("choose:" + ",".join(select.values), current_labels()))
        time.sleep(0.3)  # LINE: select-block
        await interaction.response.send_message("chosen")

    @discord.ui.button(label="broken", custom_id="panel:broken")
    async def broken(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        raise ValueError("the user's own error")


class RoleButton(discord.ui.Button["Panel"]):
    """An item added with add_item, with its callback on its own class."""

    def __init__(self, panel: Panel) -> None:
        super().__init__(label="role", custom_id="panel:role")
        self.panel = panel

    async def callback(self, interaction: discord.Interaction) -> None:
        self.panel.calls.append(("role", current_labels()))
        await interaction.response.send_message("role given")


class Confirm(discord.ui.View):
    """A message-bound view (default timeout, generated custom_ids)."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[Labels] = []

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        self.labels.append(current_labels())
        return True

    @discord.ui.button(label="yes")
    async def yes(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.labels.append(current_labels())
        await interaction.response.send_message(sync_sdk("Tromsø"))


def _view_state(view: discord.ui.View) -> dict[str, Any]:
    return {
        "view": dict(vars(view)),
        "items": [dict(vars(item)) for item in view.children],
    }


def _same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["view"].keys() == before["view"].keys()
    for key, value in before["view"].items():
        assert after["view"][key] is value, key
    for old, new in zip(before["items"], after["items"], strict=True):
        assert new.keys() == old.keys()
        assert all(new[k] is v for k, v in old.items())


def test_view_buttons_and_selects_are_attributed_to_their_own_handler(
    registry: CollectorRegistry, loop_factory: LoopFactory
) -> None:
    bot = make_bot()

    async def main() -> tuple[list[loopwatch.Incident], Panel, Confirm, list[str]]:
        with capture_incidents(registry=registry, block_threshold=0.1) as seen:
            async with BotHarness(bot) as h:
                await bot.load_extension(EXT)
                panel = Panel()
                bot.add_view(panel)  # persistent: not bound to a message
                posted = await h.send_view(Panel())  # the same class, sent with a message
                state = _view_state(panel)
                await h.click(posted, "panel:weather")
                await h.click(posted, "panel:role")
                await h.click(posted, "panel:city", component_type=3, values=["Tromsø"])
                await wait_for(lambda: blocked_at(seen, "select-block") is not None, "block")
                await h.click(posted, "panel:broken")
                _same_state(state, _view_state(panel))  # nothing left on the view or items
                confirm = Confirm()
                message = await h.send_view(confirm)
                yes = confirm.children[0]
                assert isinstance(yes, discord.ui.Button) and yes.custom_id is not None
                await h.click(message, yes.custom_id)
                replies = h.replies
        return seen, panel, confirm, replies

    seen, panel, confirm, replies = run_on(loop_factory, main())
    # The persistent view and a message-bound copy of the same class: the message-bound
    # one receives the clicks on its message (discord.py prefers it), both label alike.
    assert panel.calls == []
    assert replies == ["pick", "sunny in Bergen", "role given", "chosen", "pick", "sunny in Tromsø"]
    assert reentries(registry, "view:Panel.weather") == 1
    assert handled(registry, "view:Panel.weather") == 1
    assert handled(registry, "view:Panel.RoleButton") == 1
    assert handled(registry, "view:Panel.choose") == 1
    assert handled(registry, "view:Panel.broken", "error") == 1
    reentry = next(i for i in seen if i.kind == "reentry")
    assert (reentry.framework, reentry.handler) == ("discord", "view:Panel.weather")
    assert reentry.site is not None and reentry.site.line == line_of("sdk-run")
    block = blocked_at(seen, "select-block")
    assert block is not None
    assert (block.framework, block.handler) == ("discord", "view:Panel.choose")
    assert blocks(registry, "view:Panel.choose") == 1
    # interaction_check is the user's, run inside the item's labels.
    assert confirm.labels == [Labels("discord", "view:Confirm.yes")] * 2
    assert reentries(registry, "view:Confirm.yes") == 1
    # Generated custom_ids (random hex) never become labels.
    yes = confirm.children[0]
    assert isinstance(yes, discord.ui.Button) and yes.custom_id is not None
    assert yes.custom_id not in generate_latest(registry).decode()


def test_view_on_error_stays_the_users_and_runs_inside_the_item_labels(
    registry: CollectorRegistry,
) -> None:
    bot = make_bot()

    async def main() -> Panel:
        loopwatch.install(registry=registry)
        async with BotHarness(bot) as h:
            await bot.load_extension(EXT)
            panel = Panel()
            on_error = panel.on_error
            message = await h.send_view(panel)
            await h.click(message, "panel:broken")
            await h.click(message, "panel:role")
            assert panel.on_error == on_error
            assert "on_error" not in vars(panel)
        return panel

    panel = run(main())
    assert panel.errors == [("ValueError", Labels("discord", "view:Panel.broken"))]
    assert panel.calls == [("role", Labels("discord", "view:Panel.RoleButton"))]
    assert handled(registry, "view:Panel.broken", "error") == 1
    assert handled(registry, "view:Panel.broken") == 0


# -- modals ----------------------------------------------------------------------------------


class Feedback(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[Feedback] = discord.ui.TextInput(
        label="text", custom_id="feedback:text"
    )

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Labels]] = []

    async def on_submit(self, interaction: discord.Interaction, /) -> None:
        self.seen.append((self.text.value, current_labels()))
        if self.text.value == "crash":
            raise RuntimeError("the user's own error")
        await interaction.response.send_message(sync_sdk(self.text.value))  # LINE: modal-run

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        self.seen.append(("on_error:" + type(error).__name__, current_labels()))


def test_modal_submit_is_attributed_and_its_on_error_untouched(
    registry: CollectorRegistry, loop_factory: LoopFactory
) -> None:
    bot = make_bot()
    modals: list[Feedback] = []

    @bot.tree.command(description="ask for feedback")
    async def feedback(interaction: discord.Interaction) -> None:
        modal = Feedback()
        modals.append(modal)
        await interaction.response.send_modal(modal)

    async def main() -> list[loopwatch.Incident]:
        with capture_incidents(registry=registry) as seen:
            async with BotHarness(bot) as h:
                await bot.load_extension(EXT)
                for value in ("Narvik", "crash"):
                    await h.app_command("feedback")
                    modal = modals[-1]
                    before = dict(vars(modal))
                    await h.submit_modal(modal.custom_id, {"feedback:text": value})
                    assert vars(modal).keys() == before.keys()
                    assert "on_submit" not in vars(modal) and "on_error" not in vars(modal)
                assert h.replies == ["sunny in Narvik"]
        return seen

    seen = run_on(loop_factory, main())
    label = Labels("discord", "modal:Feedback")
    assert modals[0].seen == [("Narvik", label)]
    assert modals[1].seen == [("crash", label), ("on_error:RuntimeError", label)]
    assert reentries(registry, "modal:Feedback") == 1
    assert handled(registry, "modal:Feedback") == 1
    assert handled(registry, "modal:Feedback", "error") == 1
    assert handled(registry, "app_command:feedback") == 2
    reentry = next(i for i in seen if i.kind == "reentry")
    assert reentry.handler == "modal:Feedback"
    assert reentry.site is not None and reentry.site.line == line_of("sdk-run")
    assert modals[0].custom_id not in generate_latest(registry).decode()


# -- dynamic items ---------------------------------------------------------------------------


HAS_DYNAMIC_ITEMS = hasattr(discord.ui, "DynamicItem")  # discord.py 2.4+

if HAS_DYNAMIC_ITEMS:

    class Counter(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"counter:(?P<n>\d+)"):
        """A stateless button whose state lives in its custom_id (it carries an id)."""

        calls: ClassVar[list[tuple[int, Labels]]] = []

        def __init__(self, n: int) -> None:
            super().__init__(discord.ui.Button(label=str(n), custom_id=f"counter:{n}"))
            self.n = n

        @classmethod
        async def from_custom_id(
            cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
        ) -> Counter:
            return cls(int(match["n"]))

        async def callback(self, interaction: discord.Interaction) -> None:
            Counter.calls.append((self.n, current_labels()))
            await interaction.response.send_message(sync_sdk(str(self.n)))


@pytest.mark.skipif(not HAS_DYNAMIC_ITEMS, reason="DynamicItem arrived in discord.py 2.4")
def test_dynamic_items_are_labelled_by_class_never_by_custom_id(
    registry: CollectorRegistry,
) -> None:
    bot = make_bot()
    Counter.calls = []
    item_id = 987_654_321_012_345

    async def main() -> None:
        loopwatch.install(registry=registry)
        async with BotHarness(bot) as h:
            await bot.load_extension(EXT)
            bot.add_dynamic_items(Counter)
            view = discord.ui.View(timeout=None)
            view.add_item(Counter(item_id))
            message = await h.send_view(view)
            await h.click(message, f"counter:{item_id}")
            assert h.replies[-1] == f"sunny in {item_id}"

    run(main())
    assert Counter.calls == [(item_id, Labels("discord", "dynamic_item:Counter"))]
    assert reentries(registry, "dynamic_item:Counter") == 1
    assert handled(registry, "dynamic_item:Counter") == 1
    assert str(item_id) not in generate_latest(registry).decode()


# -- application commands: context menus, nested groups with arguments, autocomplete ------


def test_context_menus_nested_groups_and_autocomplete_are_labelled(
    registry: CollectorRegistry, loop_factory: LoopFactory
) -> None:
    bot = make_bot()
    labels: list[tuple[str, Labels]] = []
    admin = discord.app_commands.Group(name="admin", description="admin")
    user = discord.app_commands.Group(name="user", parent=admin, description="users")

    @user.command(description="ban someone")
    async def ban(interaction: discord.Interaction, reason: str, days: int) -> None:
        labels.append((f"ban:{reason}:{days}", current_labels()))
        await interaction.response.send_message(sync_sdk(reason))

    @admin.command(description="convert")
    async def convert(interaction: discord.Interaction, amount: float, unit: str) -> None:
        labels.append((f"convert:{amount}{unit}", current_labels()))
        await interaction.response.send_message(f"{amount}{unit}")

    @convert.autocomplete("unit")
    async def unit_choices(
        interaction: discord.Interaction, current: str
    ) -> list[discord.app_commands.Choice[str]]:
        labels.append(("autocomplete:" + current, current_labels()))
        return [discord.app_commands.Choice(name="km", value="km")]

    bot.tree.add_command(admin)

    @bot.tree.context_menu(name="Translate")
    async def translate(interaction: discord.Interaction, message: discord.Message) -> None:
        labels.append(("translate:" + message.content, current_labels()))
        await interaction.response.send_message(sync_sdk(message.content))  # LINE: menu-run

    @bot.tree.context_menu(name="Profile")
    async def profile(interaction: discord.Interaction, member: discord.Member) -> None:
        labels.append((f"profile:{member.name}", current_labels()))
        time.sleep(0.3)  # LINE: menu-block
        await interaction.response.send_message("profile")

    async def main() -> list[loopwatch.Incident]:
        with capture_incidents(registry=registry, block_threshold=0.1) as seen:
            async with BotHarness(bot) as h:
                await bot.load_extension(EXT)
                await h.app_command("admin user ban", {"reason": "spam", "days": 7})
                await h.app_command("admin convert", {"amount": 2.5, "unit": "km"})
                await h.autocomplete("admin convert", {"amount": 2.5, "unit": "k"}, "unit")
                target = h.message("Hamar")
                await h.message_context_menu("Translate", target)
                await h.user_context_menu("Profile")
                await wait_for(lambda: blocked_at(seen, "menu-block") is not None, "block")
        return seen

    seen = run_on(loop_factory, main())
    assert labels == [
        ("ban:spam:7", Labels("discord", "app_command:admin user ban")),
        ("convert:2.5km", Labels("discord", "app_command:admin convert")),
        ("autocomplete:k", Labels("discord", "autocomplete:admin convert")),
        ("translate:Hamar", Labels("discord", "app_command:Translate")),
        ("profile:alice", Labels("discord", "app_command:Profile")),
    ]
    assert reentries(registry, "app_command:admin user ban") == 1
    assert reentries(registry, "app_command:Translate") == 1
    assert handled(registry, "app_command:admin convert") == 1
    assert handled(registry, "autocomplete:admin convert") == 1
    assert handled(registry, "app_command:Profile") == 1
    menu = next(i for i in seen if i.kind == "reentry" and i.handler == "app_command:Translate")
    assert menu.site is not None and menu.site.line == line_of("sdk-run")
    block = blocked_at(seen, "menu-block")
    assert block is not None and block.handler == "app_command:Profile"
    assert blocks(registry, "app_command:Profile") == 1
    text = generate_latest(registry).decode()
    assert "spam" not in text and "Hamar" not in text


# -- load / unload / reload: exact counts, hooks intact --------------------------------------


def test_reload_cycles_count_every_click_and_submit_once_and_unload_restores(
    registry: CollectorRegistry,
) -> None:
    bot = make_bot()
    modals: list[Feedback] = []

    @bot.tree.command(description="ask for feedback")
    async def feedback(interaction: discord.Interaction) -> None:
        modal = Feedback()
        modals.append(modal)
        await interaction.response.send_modal(modal)

    async def main() -> Panel:
        loopwatch.install(registry=registry)
        async with BotHarness(bot) as h:
            before = class_hooks()
            panel = Panel()
            message = await h.send_view(panel)
            state = _view_state(panel)
            for _ in range(3):
                await bot.load_extension(EXT)
                await bot.unload_extension(EXT)
                assert class_hooks() == before
            await bot.load_extension(EXT)
            for _ in range(3):
                await bot.reload_extension(EXT)
                await h.click(message, "panel:role")
                await h.app_command("feedback")
                await h.submit_modal(modals[-1].custom_id, {"feedback:text": "crash"})
            await bot.unload_extension(EXT)
            assert class_hooks() == before
            _same_state(state, _view_state(panel))
            await h.click(message, "panel:role")  # after unload: not labelled, not counted
        return panel

    panel = run(main())
    assert [labels for _, labels in panel.calls] == [
        Labels("discord", "view:Panel.RoleButton")
    ] * 3 + [NONE]
    assert handled(registry, "view:Panel.RoleButton") == 3
    assert handled(registry, "modal:Feedback", "error") == 3
    assert all(len(m.seen) == 2 for m in modals)  # on_submit and the user's on_error, once


def test_two_bots_in_one_process_only_the_watched_one_is_labelled(
    registry: CollectorRegistry,
) -> None:
    watched, other = make_bot(), make_bot()

    async def main() -> tuple[Panel, Panel]:
        loopwatch.install(registry=registry)
        async with BotHarness(watched) as hw, BotHarness(other) as ho:
            await watched.load_extension(EXT)
            mine, theirs = Panel(), Panel()
            m1 = await hw.send_view(mine)
            m2 = await ho.send_view(theirs)
            await hw.click(m1, "panel:role")
            await ho.click(m2, "panel:role")
            await watched.unload_extension(EXT)
        return mine, theirs

    mine, theirs = run(main())
    assert mine.calls == [("role", Labels("discord", "view:Panel.RoleButton"))]
    assert theirs.calls == [("role", NONE)]
    assert handled(registry, "view:Panel.RoleButton") == 1


def test_two_watched_bots_and_a_reload_of_one_keep_counts_exact(
    registry: CollectorRegistry,
) -> None:
    first, second = make_bot(), make_bot()

    async def main() -> tuple[Panel, Panel]:
        loopwatch.install(registry=registry)
        before = class_hooks()
        async with BotHarness(first) as h1, BotHarness(second) as h2:
            await first.load_extension(EXT)
            await second.load_extension(EXT)
            await second.reload_extension(EXT)  # a second copy of the module for one bot
            one, two = Panel(), Panel()
            m1 = await h1.send_view(one)
            m2 = await h2.send_view(two)
            await h1.click(m1, "panel:role")
            await h2.click(m2, "panel:role")
            await first.unload_extension(EXT)
            await h2.click(m2, "panel:role")
            await second.unload_extension(EXT)
            assert class_hooks() == before
        return one, two

    one, two = run(main())
    label = Labels("discord", "view:Panel.RoleButton")
    assert one.calls == [("role", label)]
    assert two.calls == [("role", label), ("role", label)]
    assert handled(registry, "view:Panel.RoleButton") == 3
