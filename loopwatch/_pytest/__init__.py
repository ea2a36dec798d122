"""The pytest plugin's implementation (the entry point is :mod:`loopwatch.pytest_plugin`)."""

from __future__ import annotations

from typing import Any

# The configs of the pytest sessions configured in this process, innermost last: a
# pytester run in-process nests a session inside a test of the outer one, and what happens
# during it belongs to it, not to the outer test.
active_configs: list[Any] = []
