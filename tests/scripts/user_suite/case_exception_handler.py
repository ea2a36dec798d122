"""A loop's exception handler, set or mocked by the test, is the one the loop uses."""

from __future__ import annotations

import asyncio
import gc
from unittest import mock

import pytest


@pytest.fixture
def loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_mocked_call_exception_handler_receives_callback_errors(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The pattern of CPython's own tests: replace the method on the instance, then check it.
    loop.call_exception_handler = mock.Mock()  # type: ignore[method-assign]

    def fail() -> None:
        raise ZeroDivisionError

    loop.call_soon(fail)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert loop.call_exception_handler.call_count == 1
    context = loop.call_exception_handler.call_args.args[0]
    assert isinstance(context["exception"], ZeroDivisionError)


def test_mocked_call_exception_handler_stays_uncalled_on_clean_run(
    loop: asyncio.AbstractEventLoop,
) -> None:
    loop.call_exception_handler = mock.Mock()  # type: ignore[method-assign]
    loop.run_until_complete(asyncio.sleep(0))
    assert not loop.call_exception_handler.called


def test_set_exception_handler_mock_gets_unretrieved_task_error(
    loop: asyncio.AbstractEventLoop,
) -> None:
    handler = mock.Mock()
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler

    async def boom() -> None:
        raise ValueError("never retrieved")

    task = loop.create_task(boom())
    loop.run_until_complete(asyncio.sleep(0.01))
    del task
    gc.collect()
    assert handler.call_count == 1
    called_loop, context = handler.call_args.args
    assert called_loop is loop
    assert isinstance(context["exception"], ValueError)


def test_default_exception_handler_is_none(loop: asyncio.AbstractEventLoop) -> None:
    assert loop.get_exception_handler() is None
    loop.run_until_complete(asyncio.sleep(0))
    assert loop.get_exception_handler() is None


def test_exception_handler_is_a_plain_method(loop: asyncio.AbstractEventLoop) -> None:
    # Code that introspects the loop (debuggers, instrumentation) sees the class's method.
    loop.run_until_complete(asyncio.sleep(0))
    assert "call_exception_handler" not in vars(loop)
    assert loop.call_exception_handler.__func__ is type(loop).call_exception_handler
