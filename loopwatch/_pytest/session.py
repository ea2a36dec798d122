"""One pytest session under loopwatch: install, collect incidents per test, fail, summarise.

Incidents reach :meth:`Session._on_incident` from any thread (the loop thread, the
watchdog, a server thread started by a fixture). Each one belongs to the test running at
that moment, in the phase whose report pytest builds next: an incident that arrives
after a test's call has been reported (an unretrieved exception found when the loop is
closed in a fixture's teardown) fails the teardown, as pytest reports a fixture error.
Incidents outside any test (collection, between tests) go to the summary only, and those
that happen while a session nested in this one runs (pytester in-process) belong to it.

Blocking hazards (blocking calls, blocked loops, tasks left pending) are judged by their
origin (:mod:`loopwatch._pytest.scope`): they fail a test when they come from the code under
test, not when the test's own scaffolding or a library causes them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import types
import weakref
from collections.abc import Callable, Generator
from typing import Any

import pytest

import loopwatch

from .. import _frames, _monitor
from .._frames import Frame
from .._incidents import Incident
from .._pending_metrics import PrivateRegistry
from . import active_configs, blocking_calls, pending_tasks, render
from .options import PENDING_TASK, Settings, allowed_kinds
from .scope import CODE, SCAFFOLDING, Scope, project_packages

__all__ = ["Session"]

_ALLOWED = pytest.StashKey[frozenset[str]]()
# Causes of a blocked loop that are not the test's doing: the machine starved the process,
# or the block was too short to sample, or the first import of a module / a collection
# happened to fall inside the test. Reported in the summary, never a failure.
_NOT_THE_TESTS_DOING = frozenset({"starved", "unsampled", "import", "gc"})
_MAX_PER_TEST = 200  # a loop of blocking calls should not fill memory; the count is kept
# Kinds judged by their origin: the same call is a bug in the app and a choice in a test.
_BY_ORIGIN = frozenset({"blocked_loop"})
# The frame of a loop callback: what runs below it was called by the loop, not by the test.
_HANDLE_RUN = asyncio.events.Handle._run.__code__
# One blocking event can show as two incidents (the call, and the block it caused).
_ONE_EVENT = frozenset({"blocked_loop", blocking_calls.KIND})
_PENDING_HINT = (
    "A task created here was still pending when the test ended: nothing awaited or "
    "cancelled it. Keep a reference and await it (a TaskGroup does both), or cancel it "
    "when its owner shuts down."
)


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
        self._failed: list[tuple[str, str]] = []  # nodeid, phase
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
        explicit = bool(settings.scope)
        self._scope = Scope(
            settings.scope if explicit else project_packages(config.rootpath),
            explicit,
            [str(p) for p in config.getini("python_files")],
            settings.allow,
            excluded=settings.scope_excluded,
        )
        self._undo_tasks: Callable[[], None] | None = None
        # Tasks created by the code under test while a test's call runs, with their site.
        self._created: weakref.WeakKeyDictionary[asyncio.Task[Any], tuple[Frame, list[Frame]]]
        self._created = weakref.WeakKeyDictionary()
        self._in_call = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Install loopwatch (unless the suite already did) and the blocking-call detector."""
        self._preinstalled = _monitor.current() is not None
        logging.getLogger("loopwatch").addHandler(self._quiet)
        self._watch()
        if self._disabled:
            return
        if self._settings.blocking:
            # Found now, not in the first wrapped call: finding them reads the file system,
            # which a detector beside ours (blockbuster) would reject inside a loop.
            _frames.library_prefixes()
            self._undo_blocking = blocking_calls.install(
                self._on_blocking_call, self._settings.blocking, self._judge
            )
        if PENDING_TASK in self._settings.fail_on:
            self._undo_tasks = pending_tasks.install(self._on_task_created)

    def stop(self) -> None:
        """Undo everything :meth:`start` and later re-installs did."""
        if self._undo_blocking is not None:
            self._undo_blocking()
            self._undo_blocking = None
        if self._undo_tasks is not None:
            self._undo_tasks()
            self._undo_tasks = None
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
            monitor = loopwatch.install(**{**self._install, "registry": PrivateRegistry()})
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
        if active_configs and active_configs[-1] is not self._config:
            return  # a session nested in this one is running: the incident is its own
        with self._lock:
            if self._item is None:
                if len(self._outside) < _MAX_PER_TEST:
                    self._outside.append(incident)
            elif len(self._pending) < _MAX_PER_TEST:
                self._pending.append(incident)
            else:
                self._dropped += 1

    def _judge(self, caller: types.FrameType, direct: bool) -> types.FrameType | None:
        """The frame a blocking call is reported at, when it comes from the code under test."""
        origin, frame, _ = self._scope.live_origin(caller, direct)
        return frame if origin == CODE else None

    def _on_blocking_call(
        self,
        api: str,
        hint: str,
        detail: dict[str, str],
        caller: types.FrameType,
        site: types.FrameType,
    ) -> None:
        monitor = _monitor.current() or self._monitor
        if monitor is not None:
            monitor.report(
                blocking_calls.KIND, api=api, hint=hint, detail=detail,
                stack=_frames.stack_from_frame(caller), site=_frame(site),
            )

    def _on_task_created(self, task: asyncio.Task[Any], caller: types.FrameType) -> None:
        if not self._in_call or (active_configs and active_configs[-1] is not self._config):
            return
        origin, frame, _ = self._scope.live_origin(caller, direct=False)
        if origin != CODE or frame is None:
            return
        # Only tasks the test asked for: a test or fixture frame is further out on the stack,
        # in the same loop callback. A server's tasks for each connection start from loop
        # callbacks (connection_made): they are the server's until it shuts down.
        outer = frame.f_back
        while outer is not None and outer.f_code is not _HANDLE_RUN:
            if self._scope.classify(outer.f_code.co_filename) == SCAFFOLDING:
                self._created[task] = (_frame(frame), _frames.stack_from_frame(caller, 16))
                return
            outer = outer.f_back

    def _report_pending_tasks(self) -> None:
        """Tasks the code under test created during the call and left pending."""
        created, self._created = self._created, weakref.WeakKeyDictionary()
        monitor = _monitor.current() or self._monitor
        if monitor is None:
            return
        for task, (site, stack) in list(created.items()):
            if task.done() or task.get_loop().is_closed():
                continue
            monitor.report(
                PENDING_TASK, api=f"task {task.get_name()}", site=site, stack=stack,
                hint=_PENDING_HINT, task=task.get_name(), loop=task.get_loop(),
                detail={"coroutine": getattr(task.get_coro(), "__qualname__", "?")},
            )

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
        scope = ",".join(sorted(self._scope.packages)) or "-"
        text += f" scope={scope}" if self._scope.explicit else f" scope=rootdir ({scope})"
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

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, None]:
        """Watch the tasks the call creates; report those it leaves pending."""
        self._created = weakref.WeakKeyDictionary()
        self._in_call = True
        try:
            yield
        finally:
            self._in_call = False
            if self._undo_tasks is not None:
                self._report_pending_tasks()

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
        # One event, one decision: a blocking call and the block it caused share a site;
        # when the test allows either kind, the other does not fail it for the same line.
        allowed_sites = {
            _site_key(i) for i in incidents if i.kind in _ONE_EVENT and i.kind in allowed
        }
        failing = [
            i for i in failing if not (i.kind in _ONE_EVENT and _site_key(i) in allowed_sites)
        ]
        if failing:
            text = render.failure_text(
                incidents, failing_kinds, call.when, self._root, self._verbose,
                report_failed=report.failed,
            )
            if dropped:
                text += f"(+{dropped} more incidents in this phase, not kept)\n"
            if report.passed and not hasattr(report, "wasxfail"):
                report.outcome = "failed"
                report.longrepr = text
                self._failed.append((item.nodeid, call.when))
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
            tests = len({nodeid for nodeid, _ in self._failed})
            write(f"{tests} test(s) failed by loopwatch:")
            for nodeid, when in self._failed:
                write(f"  {nodeid}" + ("" if when == "call" else f" ({when})"))
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

    def _fails(self, incident: Incident, kinds: frozenset[str]) -> bool:
        if incident.kind not in kinds:
            return False
        if self._scope.allowed_site(incident.stack) is not None:
            return False
        if incident.kind == "blocked_loop" and (
            incident.detail.get("cause") in _NOT_THE_TESTS_DOING or self._starved(incident)
        ):
            return False
        if incident.kind in _BY_ORIGIN:
            return self._scope.origin(incident.stack)[0] == CODE
        return True

    def _starved(self, incident: Incident) -> bool:
        """A block in which the loop thread's own time stayed under the threshold.

        On a loaded machine the loop thread waits for a core: the block is real, the work
        in it is not long enough to be the code's doing. The thread's own time is the block
        less its wait for a CPU (``loop_queued``, where the system tells it); for a block
        of computing, it is also at most its CPU time (``loop_cpu``). A thread sleeping in
        a call (``time.sleep``, a socket read, a lock) waits for no CPU: its block counts
        whole.
        """
        duration = incident.duration
        if duration is None or incident.detail.get("cause") not in ("cpu", "blocking_call"):
            return False
        own = duration
        queued = _share(incident.detail.get("loop_queued"))
        if queued is not None:
            own = duration * (1.0 - queued)
        cpu = _share(incident.detail.get("loop_cpu"))
        if incident.detail.get("cause") == "cpu" and cpu is not None:
            own = min(own, duration * cpu)
        return own < self._settings.block_threshold

    def _why_not(self, incident: Incident, allowed: frozenset[str]) -> str:
        if incident.kind not in self._settings.fail_on:
            return "kind not in loopwatch_fail_on"
        if incident.kind in allowed:
            return "allowed by @pytest.mark.loopwatch"
        site = self._scope.allowed_site(incident.stack)
        if site is not None:
            return f"allowed by loopwatch_allow: {site}"
        if incident.kind == "blocked_loop" and (
            incident.detail.get("cause") in _NOT_THE_TESTS_DOING
        ):
            return f"cause: {incident.detail.get('cause', '?')}, not the test's doing"
        if incident.kind in _ONE_EVENT:
            origin, frame = self._scope.origin(incident.stack)
            if origin != CODE:
                where = f" at {render.short_path(frame.file, self._root)}:{frame.line}" if (
                    frame is not None
                ) else ""
                whose = "the test's scaffolding" if origin == "scaffolding" else "a library"
                return f"from {whose}{where}, not the code under test"
            if incident.kind == "blocked_loop" and self._starved(incident):
                return (
                    f"the loop thread ran {incident.detail.get('loop_cpu', '?')} of the time "
                    f"and waited for a CPU {incident.detail.get('loop_queued', '?')}: the "
                    "machine, not the code, held it"
                )
            return "the same event as an allowed incident at this line"
        return "not failing"


def _frame(frame: types.FrameType) -> Frame:
    code = frame.f_code
    return Frame(code.co_filename, frame.f_lineno or 0, code.co_name)


def _share(text: str | None) -> float | None:
    """``"42%"`` -> 0.42 (``None`` when absent or unreadable)."""
    try:
        return float((text or "").rstrip("%")) / 100
    except ValueError:
        return None


def _site_key(incident: Incident) -> tuple[str, int] | None:
    site = incident.site
    return None if site is None else (site.file, site.line)
