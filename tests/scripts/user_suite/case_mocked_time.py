"""Tests on a loop whose clock is scripted, the way CPython's TestLoop and fake-time plugins work.

The selector never sleeps: each time the loop would wait, it asks the script how far to move
the clock instead. A script is a generator that receives the timeout the loop asked for and
yields the advance; when it is exhausted the loop has waited more often than the test said.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

Script = Generator[float, float, None]


class ScriptedClock:
    def __init__(self, script: Script) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self._script = script
        next(script)

    def wait(self, timeout: float) -> None:
        self.waits.append(round(timeout, 6))
        self.now += self._script.send(timeout)


class ScriptedSelector(selectors.SelectSelector):
    def __init__(self, clock: ScriptedClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self.clock.wait(timeout)
        return ready


class ScriptedLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: ScriptedClock) -> None:
        super().__init__(ScriptedSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.now


@pytest.fixture
def make_loop() -> Iterator[Callable[[Script], ScriptedLoop]]:
    loops: list[ScriptedLoop] = []

    def make(script: Script) -> ScriptedLoop:
        loop = ScriptedLoop(ScriptedClock(script))
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()




def follow(waits: int) -> Script:
    """A script for exactly ``waits`` waits, each moving the clock by what the loop asked."""
    asked = yield 0.0
    for _ in range(waits - 1):
        asked = yield asked
    yield asked


def test_sleep_waits_once_for_the_whole_delay(make_loop: Callable[[Script], ScriptedLoop]) -> None:
    def script() -> Script:
        asked = yield 0.0
        assert asked == pytest.approx(10.0)
        yield 10.0

    loop = make_loop(script())
    loop.run_until_complete(asyncio.sleep(10))
    assert loop.time() == pytest.approx(10.0)
    assert loop.clock.waits == [pytest.approx(10.0)]


def test_timers_fire_in_order_on_the_fake_clock(
    make_loop: Callable[[Script], ScriptedLoop],
) -> None:
    loop = make_loop(follow(3))
    fired: list[tuple[str, float]] = []
    for name, delay in (("b", 2.0), ("a", 1.0), ("c", 3.0)):
        loop.call_later(delay, lambda n=name: fired.append((n, loop.time())))
    loop.call_later(3.0, loop.stop)
    loop.run_forever()
    assert fired == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert loop.clock.waits == [1.0, 1.0, 1.0]


def test_wait_for_times_out_on_the_fake_clock(
    make_loop: Callable[[Script], ScriptedLoop],
) -> None:
    def script() -> Script:
        asked = yield 0.0
        assert asked == pytest.approx(5.0)
        yield 5.0

    loop = make_loop(script())

    async def main() -> float:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 5)
        return loop.time()

    assert loop.run_until_complete(main()) == pytest.approx(5.0)


def test_idle_loop_is_not_woken(make_loop: Callable[[Script], ScriptedLoop]) -> None:
    # Nothing scheduled but one timer an hour away: the loop must wait once, for the hour.
    loop = make_loop(follow(1))
    loop.call_later(3600, loop.stop)
    loop.run_forever()
    assert loop.clock.waits == [3600.0]
    assert loop.time() == 3600.0
