"""IPython / Jupyter: ``%load_ext loopwatch``.

Loading the extension installs loopwatch for the kernel with framework ``jupyter`` and
shows every incident in the output of the cell that caused it, as a short note with the
hint (HTML where the frontend renders it, text otherwise) instead of log lines on stderr.
Repeats within one cell update that cell's note rather than adding more. The blocked-loop
watchdog stays off (every long cell blocks the kernel's loop by design), unless loopwatch
was installed with it before the extension loaded.

The policy is ``auto`` unless ``LOOPWATCH_ON_REENTRY`` says otherwise: a nested
``asyncio.run()`` / ``run_until_complete`` runs on the kernel's loop, re-entrantly (so it can
use a client, task or lock of an earlier cell), and a loop a library creates and runs itself
(a server's ``run()``) runs on the kernel's thread, its signal handlers working as in a
script; on a uvloop kernel the call runs on a worker thread instead, and the note says so.
``%loopwatch`` shows the recent incidents and the policy; ``%loopwatch policy offload`` (or
``auto``, ``reenter``, ``raise``) switches it. ``%unload_ext loopwatch`` undoes everything
the extension did.
"""

from __future__ import annotations

import collections
import contextlib
import html
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, cast

try:
    from IPython.core.error import UsageError
    from IPython.display import DisplayHandle
    from IPython.display import display as _ipython_display
except ImportError as exc:  # pragma: no cover - only without IPython
    raise ImportError(
        "loopwatch's IPython extension needs IPython: pip install 'loopwatch[jupyter]'"
    ) from exc

import loopwatch
from loopwatch import _monitor
from loopwatch._config import POLICIES, Policy
from loopwatch._incidents import Incident
from loopwatch._logging import logger
from loopwatch._taskview import render_text

__all__ = ["IncidentNote", "load_ipython_extension", "unload_ipython_extension"]

# IPython's display functions are not annotated; give them a type once here.
display: Callable[..., Any] = _ipython_display

_RECENT = 10  # incidents listed by ``%loopwatch``
_PENDING = 100  # incidents kept for the next cell's output
_ACTIONS = {
    "reentered": "ran it on the kernel's loop, re-entrantly",
    "nested": "ran the library's own loop on the kernel's thread",
    "offloaded": "ran it on a worker thread",
    "raised": "let the error through",
    "marshalled": "ran it on the loop's own thread",
}


class IncidentNote:
    """A short, displayable note about one incident (``_repr_html_`` and ``__repr__``)."""

    def __init__(
        self, incident: Incident, count: int = 1, where: str | None = None, brief: bool = False
    ) -> None:
        self.incident = incident
        self.count = count
        self.where = where  # "In[3], line 2" for a cell, else "file, line n"
        self.brief = brief  # the headline only (in the ``%loopwatch`` listing)

    def _headline(self) -> str:
        inc = self.incident
        line = inc.kind.replace("_", " ")
        if inc.api:
            line += f": {inc.api}()"
        if self.count > 1:
            line += f" ×{self.count}"
        if self.where:
            line += f" at {self.where}"
        done = _ACTIONS.get(inc.action, inc.action)
        if inc.action == "raised" and "reason" in inc.detail:
            done = "failed at once"
        if done:
            line += f" — {done}"
        return line

    def _lines(self) -> list[tuple[str, str]]:
        inc = self.incident
        # The hint already carries the one fix that applies to this call.
        lines = [(key, _shorten(value)) for key, value in inc.detail.items()]
        lines.append(("hint", inc.hint))
        return lines

    def __repr__(self) -> str:
        head = f"loopwatch: {self._headline()}"
        if self.brief:
            return head
        return "\n".join([head, *(f"  {key}: {value}" for key, value in self._lines())])

    def _repr_html_(self) -> str:
        esc = html.escape
        body = f"<b>loopwatch</b> · {esc(self._headline())}"
        if not self.brief:
            body += "".join(
                f"<br><small>{esc(key)}: {esc(value)}</small>" for key, value in self._lines()
            )
        return (
            '<div class="loopwatch-note" style="border-left: 3px solid #d9a400; '
            f'padding: 2px 8px; margin: 2px 0; font-size: 0.9em">{body}</div>'
        )


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Status:
    """What ``%loopwatch`` shows: the policy and the recent incidents."""

    def __init__(self, policy: str | None, notes: list[IncidentNote]) -> None:
        self.policy = policy
        self.notes = notes

    def _title(self) -> str:
        if self.policy is None:
            return "loopwatch is not installed (%load_ext loopwatch installs it)"
        return f"loopwatch: on_reentry={self.policy}; {len(self.notes)} recent incident(s)"

    def __repr__(self) -> str:
        return "\n".join([self._title(), *(repr(note) for note in self.notes)])

    def _repr_html_(self) -> str:
        notes = "".join(note._repr_html_() for note in self.notes)
        return f"<div><b>{html.escape(self._title())}</b>{notes}</div>"


class _KeepOffConsole(logging.Filter):
    """On the ``loopwatch`` logger: incident records reach every handler but console ones.

    In a kernel, console handlers write into the cell as red stderr text; the extension
    shows the incident as a note instead. File and other handlers still get the record.
    Records that are not incidents (loopwatch's own errors) are left alone.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "loopwatch"):
            return True
        source: logging.Logger | None = logger
        while source is not None:
            for handler in source.handlers:
                if not _console(handler) and record.levelno >= handler.level:
                    handler.handle(record)
            source = source.parent if source.propagate else None
        return False  # handled above; do not print it on the console


def _console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


class _Extension:
    """The loaded extension: what it changed, to undo it exactly on unload."""

    def __init__(self, ip: Any) -> None:
        self.ip = ip
        self.thread = threading.get_ident()  # the thread that runs cells
        self.monitor: loopwatch.Monitor | None = None
        # What loading changed on a monitor installed before it, to give back on unload;
        # None: loading installed it (held with acquire, released on unload).
        self.previous: dict[str, tuple[Any, Any]] | None = None
        self.previous_policy = "offload"
        self.filter = _KeepOffConsole()
        self.lock = threading.Lock()
        self.in_cell = False
        # Seen off the cell thread or between cells; bounded for a kernel left idle for days.
        self.pending: collections.deque[Incident] = collections.deque(maxlen=_PENDING)
        self.shown: dict[tuple[Any, ...], tuple[IncidentNote, Any]] = {}  # note, DisplayHandle

    # -- load / unload ---------------------------------------------------------------------

    def load(self) -> None:
        existing = _monitor.current()
        if existing is not None:
            self.monitor = existing
            self.previous = existing.override({"default_framework": "jupyter"})
            # A policy chosen with %loopwatch is given back on unload too.
            self.previous_policy = existing.config.on_reentry
        else:
            # Cells run on the kernel loop's thread, so every slow cell would read as a
            # blocked loop: leave the watchdog off here unless it was installed before.
            # In a kernel nested runs go on the kernel's own thread (``auto``), unless the
            # environment chose a policy.
            policy = {} if "LOOPWATCH_ON_REENTRY" in os.environ else {"on_reentry": "auto"}
            self.monitor = _monitor.acquire(default_framework="jupyter", watchdog=False, **policy)
        if self.monitor is not None:  # None: LOOPWATCH_DISABLE
            self.monitor.add_listener(self.on_incident)
        logger.addFilter(self.filter)
        self.ip.events.register("pre_run_cell", self.pre_run_cell)
        self.ip.events.register("post_run_cell", self.post_run_cell)
        self.ip.register_magic_function(self.magic, magic_kind="line", magic_name="loopwatch")

    def unload(self) -> None:
        for event, callback in (
            ("pre_run_cell", self.pre_run_cell),
            ("post_run_cell", self.post_run_cell),
        ):
            with contextlib.suppress(ValueError):  # already gone
                self.ip.events.unregister(event, callback)
        self.ip.magics_manager.magics["line"].pop("loopwatch", None)
        if self.monitor is not None:
            self.monitor.remove_listener(self.on_incident)
        try:
            if self.previous is None:
                # Its last folded-repeat lines stay off the console too. An install the
                # user made meanwhile stays.
                if self.monitor is not None:
                    _monitor.release(self.monitor)
            elif self.monitor is not None and _monitor.current() is self.monitor:
                self.monitor.restore(self.previous)
                if self.monitor.config.on_reentry != self.previous_policy:
                    self.monitor.reconfigure(on_reentry=cast(Policy, self.previous_policy))
        finally:
            logger.removeFilter(self.filter)

    # -- incidents -------------------------------------------------------------------------

    def on_incident(self, incident: Incident) -> None:
        with self.lock:
            now = self.in_cell and threading.get_ident() == self.thread
            if not now:
                # Another thread (the watchdog), or no cell running: show it with the
                # next cell's output rather than in some unrelated place.
                self.pending.append(incident)
                return
        self.show(incident)

    def show(self, incident: Incident) -> None:
        key = incident.fingerprint
        seen = self.shown.get(key)
        if seen is not None:
            note, handle = seen
            note.incident = incident
            note.count += 1
            if handle is not None:
                handle.update(note)
            return
        note = IncidentNote(incident, where=self.where(incident))
        handle = display(note, display_id=True)
        self.shown[key] = (note, handle if isinstance(handle, DisplayHandle) else None)

    def where(self, incident: Incident) -> str | None:
        site = incident.site
        if site is None:
            return None
        place = site.file
        format_code_name = getattr(getattr(self.ip, "compile", None), "format_code_name", None)
        if format_code_name is not None:
            try:
                named = format_code_name(site.file)
            except Exception:  # IPython internals differ between versions: keep the file
                named = None
            if named:
                place = named[1]
        return f"{place}, line {site.line}"

    def pre_run_cell(self, *_info: Any) -> None:
        with self.lock:
            self.in_cell = True
            self.shown = {}

    def post_run_cell(self, *_result: Any) -> None:
        with self.lock:
            pending = list(self.pending)
            self.pending.clear()
        for incident in pending:
            self.show(incident)
        with self.lock:
            self.in_cell = False

    # -- the magic -------------------------------------------------------------------------

    def magic(self, line: str) -> None:
        """Show loopwatch's policy and recent incidents, or switch the policy.

        Usage::

            %loopwatch                   # policy and recent incidents
            %loopwatch policy            # the policy
            %loopwatch policy reenter    # or auto, offload, raise
            %loopwatch tasks             # the live tasks: handler, age, await chain
        """
        words = line.split()
        if words == ["tasks"]:
            # The kernel's own loop is read directly (this runs on its thread); any other
            # watched loop answers a posted callback.
            items = [info.as_dict() for info in loopwatch.tasks()]
            print(render_text(items), end="")
            return
        if not words:
            monitor = _monitor.current()
            recent = loopwatch.incidents()[-_RECENT:]
            notes = [IncidentNote(i, i.count, self.where(i), brief=True) for i in recent]
            display(_Status(None if monitor is None else monitor.config.on_reentry, notes))
            return
        if words[0] != "policy" or len(words) > 2:
            raise UsageError(f"usage: %loopwatch [tasks | policy [{'|'.join(POLICIES)}]]")
        if len(words) == 1:
            monitor = _monitor.current()
            policy = "(not installed)" if monitor is None else monitor.config.on_reentry
            print(f"loopwatch: on_reentry={policy}")
            return
        policy = words[1].lower()
        if policy not in POLICIES:
            raise UsageError(
                f"%loopwatch policy {words[1]}: not a policy; use one of {', '.join(POLICIES)}"
            )
        monitor = _monitor.current()
        if monitor is None:  # uninstalled since the extension loaded: install it again
            monitor = _monitor.acquire(on_reentry=policy)
            if monitor is None:
                print("loopwatch: disabled (LOOPWATCH_DISABLE)")
                return
            self.previous = None
        else:
            monitor.reconfigure(on_reentry=cast(Policy, policy))  # checked above
        if monitor is not self.monitor:
            # loopwatch was uninstalled and installed again since the extension loaded.
            if self.monitor is not None:
                self.monitor.remove_listener(self.on_incident)
            self.monitor = monitor
            monitor.add_listener(self.on_incident)
        print(f"loopwatch: on_reentry={policy}")


_loaded: _Extension | None = None


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext loopwatch``: install loopwatch for this kernel and show incidents in cells."""
    global _loaded
    if _loaded is not None:
        return
    extension = _Extension(ip)
    extension.load()
    _loaded = extension


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext loopwatch``: undo what loading did (uninstall, if loading installed it)."""
    global _loaded
    extension, _loaded = _loaded, None
    if extension is not None:
        extension.unload()
