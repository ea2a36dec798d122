"""One pytest session under loopwatch: install, collect incidents per test, fail, summarise.

Incidents reach :meth:`Session._on_incident` from any thread (the loop thread, the
watchdog, a server thread started by a fixture). Each one belongs to the test running at
that moment, in the phase whose report pytest builds next: an incident that arrives
after a test's call has been reported (an unretrieved exception found when the loop is
closed in a fixture's teardown) fails the teardown, as pytest reports a fixture error.
Incidents outside any test (collection, between tests) go to the summary only.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Generator
from typing import Any

import pytest

import loopwatch

from .. import _blocking, _monitor
from .._incidents import Incident
from ..testing import fresh_registry
from . import render
from .options import Settings, allowed_kinds

__all__ = ["Session"]

_ALLOWED = pytest.StashKey[frozenset[str]]()
# Causes of a blocked loop that are not the test's doing: the machine starved the process,
# or the block was too short to sample, or the first import of a module / a collection
# happened to fall inside the test. Reported in the summary, never a failure.
_NOT_THE_TESTS_DOING = frozenset({"starved", "unsampled", "import", "gc"})
_MAX_PER_TEST = 200  # a loop of blocking calls should not fill memory; the count is kept


class Session:
    """The plugin object registered for a session with ``--loopwatch``."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self._config = config
        self._settings = settings
        self._root = config.rootpath
        self._verbose = int(getattr(config.option, "verbose", 0) or 0) >= 2
        self._lock = threading.Lock()
        self._item: pytest.Item | None = None
        self._pending: list[Incident] = []
        self._dropped = 0
        self._outside: list[Incident] = []
        self._unfailed: list[tuple[str, str, Incident, str]] = []  # nodeid, phase, incident, why
        self._failed: list[str] = []
        self._install: dict[str, Any] = {  # install() keywords, parsed already
            "on_reentry": settings.on_reentry,
            "block_threshold": settings.block_threshold,
        }
        self._monitor: loopwatch.Monitor | None = None
        self._attached: list[loopwatch.Monitor] = []
        self._installed: list[loopwatch.Monitor] = []
        self._undo_blocking: Callable[[], None] | None = None
        self._preinstalled = False
        self._disabled = False
        # pytest shows the log records of each test ("Captured log"); a handler of our own
        # here keeps loopwatch from also printing them to stderr (it adds one when the
        # logger has none, and pytest attaches its handlers only while a test runs).
        self._quiet = logging.NullHandler()
        self._test_patterns = [str(p) for p in config.getini("python_files")]
        self._test_files: dict[str, bool] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Install loopwatch (unless the suite already did) and the blocking-call detector."""
        self._preinstalled = _monitor.current() is not None
        logging.getLogger("loopwatch").addHandler(self._quiet)
        self._watch()
        if self._disabled:
            return
        if self._settings.blocking:
            self._undo_blocking = _blocking.install(
                self._on_blocking_call, self._settings.blocking, self._is_test_file
            )

    def stop(self) -> None:
        """Undo everything :meth:`start` and later re-installs did."""
        if self._undo_blocking is not None:
            self._undo_blocking()
            self._undo_blocking = None
        for monitor in self._attached:
            monitor.remove_listener(self._on_incident)
        self._attached.clear()
        if _monitor.current() in self._installed:
            loopwatch.uninstall()
        self._installed.clear()
        logging.getLogger("loopwatch").removeHandler(self._quiet)

    def _watch(self) -> None:
        """Make sure loopwatch is installed and this session listens to it.

        A suite that uninstalls loopwatch itself (an autouse fixture) would leave the next
        tests unwatched: install it again, between tests.
        """
        current = _monitor.current()
        if current is None:
            monitor = loopwatch.install(registry=fresh_registry(), **self._install)
            if not monitor.enabled:  # LOOPWATCH_DISABLE: stay out of the way
                self._disabled = True
                return
            self._installed.append(monitor)
            current = monitor
        if current is not self._monitor:
            current.add_listener(self._on_incident)
            self._attached.append(current)
            self._monitor = current

    # -- incoming --------------------------------------------------------------------------

    def _on_incident(self, incident: Incident) -> None:
        with self._lock:
            if self._item is None:
                if len(self._outside) < _MAX_PER_TEST:
                    self._outside.append(incident)
            elif len(self._pending) < _MAX_PER_TEST:
                self._pending.append(incident)
            else:
                self._dropped += 1

    def _on_blocking_call(self, api: str, hint: str, detail: dict[str, str]) -> None:
        monitor = _monitor.current() or self._monitor
        if monitor is not None:
            monitor.report(_blocking.KIND, api=api, hint=hint, detail=detail)

    def _is_test_file(self, filename: str) -> bool:
        """Test modules and conftest files: their own file reads are test scaffolding."""
        known = self._test_files.get(filename)
        if known is None:
            name = os.path.basename(filename)
            known = name == "conftest.py" or any(
                fnmatch.fnmatch(name, pattern) for pattern in self._test_patterns
            )
            self._test_files[filename] = known
        return known

    def _take(self) -> tuple[list[Incident], int]:
        with self._lock:
            taken, self._pending = self._pending, []
            dropped, self._dropped = self._dropped, 0
        return taken, dropped

    # -- hooks -----------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> str:
        """One line saying what loopwatch watches in this session."""
        if self._disabled:
            return "loopwatch: disabled by LOOPWATCH_DISABLE"
        settings = self._settings
        blocking = ",".join(settings.blocking) or "none"
        fails = ",".join(sorted(settings.fail_on)) or "none"
        text = (
            f"loopwatch: on_reentry={settings.on_reentry} "
            f"block_threshold={settings.block_threshold:g}s blocking_calls={blocking} "
            f"fail_on={fails}"
        )
        if self._preinstalled:
            text += " (the suite installed loopwatch first: its configuration is kept)"
        return text

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, None]:
        """Incidents from here to the teardown report belong to ``item``."""
        if not self._disabled:
            self._watch()
        with self._lock:
            self._outside.extend(self._pending)
            self._pending = []
            self._item = item
        try:
            yield
        finally:
            with self._lock:
                self._item = None
                self._outside.extend(self._pending)  # arrived after the teardown report
                self._pending = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Read the ``loopwatch`` markers before any fixture runs."""
        try:
            item.stash[_ALLOWED] = allowed_kinds(item)
            return
        except ValueError as exc:
            problem = str(exc)
        pytest.fail(problem, pytrace=False)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        """Fail a passing phase that caused a failing incident; annotate a failed one."""
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        incidents, dropped = self._take()
        if not incidents:
            return
        allowed = item.stash.get(_ALLOWED, frozenset())
        failing_kinds = self._settings.fail_on - allowed
        failing = [i for i in incidents if self._fails(i, failing_kinds)]
        if failing:
            text = render.failure_text(
                incidents, failing_kinds, call.when, self._root, self._verbose
            )
            if dropped:
                text += f"(+{dropped} more incidents in this phase, not kept)\n"
            if report.passed and not hasattr(report, "wasxfail"):
                report.outcome = "failed"
                report.longrepr = text
                self._failed.append(f"{item.nodeid} ({call.when})")
            else:
                report.sections.append((f"loopwatch {call.when}", text))
        failing_ids = {id(i) for i in failing}
        for incident in incidents:
            if id(incident) not in failing_ids:
                why = self._why_not(incident, allowed)
                self._unfailed.append((item.nodeid, call.when, incident, why))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """A section with the tests loopwatch failed and the incidents that failed none."""
        if not (self._failed or self._unfailed or self._outside):
            return
        write = terminalreporter.write_line
        terminalreporter.section("loopwatch")
        if self._failed:
            write(f"{len(self._failed)} test phase(s) failed by loopwatch:")
            for nodeid in self._failed:
                write(f"  {nodeid}")
        if self._unfailed:
            write("incidents that did not fail a test:")
            last = ""
            for nodeid, when, incident, why in self._unfailed:
                if nodeid != last:
                    write(f"  {nodeid}")
                    last = nodeid
                write(f"    [{when}] {render.one_line(incident, self._root)} ({why})")
        if self._outside:
            write("incidents outside any test (collection, between tests):")
            for incident, count in render.group(self._outside):
                write(f"    {render.one_line(incident, self._root, count)}")

    # -- decisions -------------------------------------------------------------------------

    @staticmethod
    def _fails(incident: Incident, kinds: frozenset[str]) -> bool:
        if incident.kind not in kinds:
            return False
        if incident.kind == "blocked_loop":
            return incident.detail.get("cause") not in _NOT_THE_TESTS_DOING
        return True

    def _why_not(self, incident: Incident, allowed: frozenset[str]) -> str:
        if incident.kind in allowed and incident.kind in self._settings.fail_on:
            return "allowed by @pytest.mark.loopwatch"
        if incident.kind == "blocked_loop" and incident.kind in self._settings.fail_on:
            return f"cause: {incident.detail.get('cause', '?')}, not the test's doing"
        return "kind not in loopwatch_fail_on"
