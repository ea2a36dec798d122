"""Reliability of the core under churn and arbitrary input: nothing crashes, nothing is lost."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers import reentry_total
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_core_lifecycle import assert_identical, patched_attributes

import loopwatch
from loopwatch import ConfigError
from loopwatch._config import OPTIONS, load_config

pytestmark = pytest.mark.core

VARIABLES = sorted(o.variable for o in OPTIONS.values() if o.variable is not None)


@settings(max_examples=300, deadline=None)
@given(variable=st.sampled_from(VARIABLES), value=st.text(max_size=20))
def test_any_environment_value_is_accepted_or_a_config_error(variable: str, value: str) -> None:
    error: ConfigError | None = None
    try:
        config = load_config({}, environ={variable: value})
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert variable in str(error)
        assert isinstance(error, ValueError)
    else:
        assert config.block_threshold > 0
        assert config.offload_timeout > 0


@settings(max_examples=200, deadline=None)
@given(
    option=st.sampled_from(sorted(o for o in OPTIONS if o != "registry")),
    value=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
)
def test_any_keyword_value_is_accepted_or_a_config_error(option: str, value: object) -> None:
    error: ConfigError | None = None
    try:
        load_config({option: value}, environ={})
    except ConfigError as exc:
        error = exc
    assert error is None or option in str(error)


def test_thousand_install_cycles_leave_everything_identical() -> None:
    before = patched_attributes()
    threads_before = {t.ident for t in threading.enumerate()}
    registry = CollectorRegistry()

    async def nested() -> int:
        return asyncio.run(asyncio.sleep(0, result=1))

    for i in range(1000):
        loopwatch.install(registry=registry)
        if i % 100 == 0:
            assert asyncio.run(nested()) == 1  # the guard works in the middle of the churn
        loopwatch.uninstall()
    assert_identical(before, patched_attributes())
    alive = {t.ident for t in threading.enumerate() if t.is_alive()}
    assert alive <= threads_before
    assert reentry_total(registry) == 10


def test_concurrent_installs_with_traffic() -> None:
    # Installs and uninstalls race with code that re-enters: no call fails, no patch is lost.
    before = patched_attributes()
    registry = CollectorRegistry()
    stop = threading.Event()
    failures: list[BaseException] = []

    async def nested() -> int:
        coro = asyncio.sleep(0, result=1)
        try:
            return asyncio.run(coro)
        finally:
            coro.close()  # a no-op when it ran; stops a "never awaited" warning when it did not

    def traffic() -> None:
        while not stop.is_set():
            try:
                asyncio.run(nested())
            except RuntimeError as exc:
                # With the guard momentarily uninstalled, the stdlib error is the right answer.
                if "running event loop" not in str(exc):
                    failures.append(exc)
            except BaseException as exc:  # anything else is a bug
                failures.append(exc)

    def churn() -> None:
        for _ in range(100):
            loopwatch.install(registry=registry)
            loopwatch.uninstall()

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    churners = [threading.Thread(target=churn) for _ in range(4)]
    for t in workers + churners:
        t.start()
    for t in churners:
        t.join()
    stop.set()
    for t in workers:
        t.join()
    assert failures == []
    assert_identical(before, patched_attributes())
