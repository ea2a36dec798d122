"""The pytest plugin: fail the test during which an event-loop hazard happened.

Shipped with the package (entry point ``pytest11: loopwatch``) and off unless enabled with
``pytest --loopwatch`` or ``loopwatch = true`` in the ini file. Enabled, it installs
loopwatch for the session (policy ``raise``, so the original error surfaces), watches for
blocking calls on the loop thread, and turns what happens while a test runs into a failure
of that test (an error when it happens in setup or teardown)::

    pytest --loopwatch
    pytest --loopwatch --loopwatch-block-threshold=0.5 --loopwatch-fail-on=reentry,blocking_call

    @pytest.mark.loopwatch(allow=["blocked_loop"])
    async def test_crunches_numbers(): ...

This module declares the options and the marker; the session's machinery
(:mod:`loopwatch._pytest.session`) is imported only when the plugin is enabled.
"""

from __future__ import annotations

import pytest

from ._pytest import active_configs as _active_configs
from ._pytest import options as _options

__all__ = ["pytest_addoption", "pytest_configure", "pytest_unconfigure"]

_SESSION = "loopwatch-session"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare ``--loopwatch*`` options and their ini counterparts."""
    _options.add(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker; when enabled, start watching for the whole session."""
    config.addinivalue_line(
        "markers",
        "loopwatch(allow=[kinds]): let these loopwatch incident kinds happen in this test "
        "without failing it (e.g. allow=['blocked_loop']); they still show in the summary.",
    )
    _active_configs.append(config)
    settings = _options.read(config)
    if settings is None:
        return
    from ._pytest.session import Session

    session = Session(config, settings)
    session.start()
    config.pluginmanager.register(session, _SESSION)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop watching and restore everything loopwatch patched for the session."""
    if config in _active_configs:
        _active_configs.remove(config)
    session = config.pluginmanager.get_plugin(_SESSION)
    if session is None:
        return
    config.pluginmanager.unregister(session, _SESSION)
    session.stop()
