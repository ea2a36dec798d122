"""The ``loopwatch`` logger, its text and JSON formats, and the folding log sink.

Every incident is one record on the stdlib logger ``loopwatch`` with
``extra={"loopwatch": incident.as_dict()}``, so the user's own logging setup (structlog,
JSON formatters, log shippers) sees the structured fields. Repeats of one fingerprint are
folded (:class:`LogSink`). loopwatch's own stderr handler prints a record only while no
other handler would show it (so a ``logging.basicConfig()`` made after install does not
print each line twice), and always when JSON lines are asked for.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._frames import is_user_file

if TYPE_CHECKING:
    from ._incidents import Incident

__all__ = [
    "JsonFormatter", "LogSetup", "LogSink", "TextFormatter", "logger", "set_trace_ids",
]

logger = logging.getLogger("loopwatch")


class TextFormatter(logging.Formatter):
    """A summary line, then the hint and the stack (code locations only), indented."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        data = getattr(record, "loopwatch", None)
        if isinstance(data, dict):
            if data.get("hint"):
                line += f"\n    hint: {data['hint']}"
            hidden = 0
            for frame in data.get("stack") or ():
                if not frame:
                    continue
                if not is_user_file(frame["file"]):
                    hidden += 1  # library frames: in the JSON and in as_dict(), not here
                    continue
                line += f"\n    {frame['file']}:{frame['line']} in {frame['function']}"
            if hidden:
                line += f"\n    (+{hidden} library frames; LOOPWATCH_LOG_FORMAT=json has them all)"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# While OpenTelemetry is on: the current span's (trace id, span id) in hex, or None.
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def set_trace_ids(reader: Callable[[], tuple[str, str] | None] | None) -> None:
    """Where JSON lines read the current span's ids (``None``: they carry none)."""
    global _trace_ids
    _trace_ids = reader


class JsonFormatter(logging.Formatter):
    """One JSON object per line; newlines and quotes inside values are escaped by ``json``.

    With OpenTelemetry on, a line written inside a span carries its ``trace_id`` and
    ``span_id``, so log search and traces join.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        reader = _trace_ids
        ids = reader() if reader is not None else None
        if ids is not None:
            payload["trace_id"], payload["span_id"] = ids
        data = getattr(record, "loopwatch", None)
        if isinstance(data, dict):
            payload["loopwatch"] = data
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        import json  # here: a process that logs no JSON line does not import it

        return json.dumps(payload, default=str, ensure_ascii=False)


class _OwnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler loopwatch attached, so uninstall removes exactly that one."""

    def __init__(self, always: bool) -> None:
        super().__init__()
        self.always = always  # JSON lines: loopwatch's own output, whatever else exists

    def emit(self, record: logging.LogRecord) -> None:
        if not self.always and _shown_elsewhere(self):
            return
        # Resolve sys.stderr at emit time: test runners and notebooks swap it.
        self.stream = sys.stderr
        super().emit(record)


def _shown_elsewhere(own: logging.Handler) -> bool:
    """Whether a handler other than ``own`` will handle records of the loopwatch logger."""
    node: logging.Logger | None = logger
    while node is not None:
        if any(h is not own for h in node.handlers):
            return True
        if not node.propagate:
            return False
        node = node.parent
    return False


class LogSetup:
    """What ``install`` changed on the ``loopwatch`` logger, to be undone exactly."""

    def __init__(self) -> None:
        self._handler: _OwnHandler | None = None
        self._propagate: bool | None = None

    def apply(self, log_format: str) -> None:
        """Attach our handler when needed for ``log_format``; idempotent."""
        self.undo()
        user_handlers = [h for h in logger.handlers if not isinstance(h, _OwnHandler)]
        if user_handlers:
            return  # the user configured this logger: leave it alone
        if log_format == "json":
            self._handler = _OwnHandler(always=True)
            self._handler.setFormatter(JsonFormatter())
            # JSON lines were asked for: do not also print the record through root.
            self._propagate = logger.propagate
            logger.propagate = False
        else:
            self._handler = _OwnHandler(always=False)
            self._handler.setFormatter(TextFormatter())
        if self._handler is not None:
            logger.addHandler(self._handler)

    def undo(self) -> None:
        """Remove what :meth:`apply` added."""
        if self._handler is not None:
            logger.removeHandler(self._handler)
            self._handler = None
        if self._propagate is not None:
            logger.propagate = self._propagate
            self._propagate = None


class _Fold:
    __slots__ = ("folded", "incident", "logged_at", "message")

    def __init__(
        self, incident: Incident, logged_at: float, folded: int, message: str | None = None
    ) -> None:
        self.incident = incident
        self.logged_at = logged_at  # monotonic time of the last line for this fingerprint
        self.folded = folded  # occurrences since that line, not logged
        self.message = message  # the latest line's own text (progress lines have one)


class LogSink:
    """Logs incidents, folding repeats: one line per fingerprint per window.

    The first occurrence of a fingerprint is logged at once; later ones within
    ``window`` seconds are counted, and the next line for it (or :meth:`flush`, or the
    entry's eviction from the bounded table) carries how many were folded. "Still
    blocked" progress lines fold the same way, under their own fingerprint.
    """

    def __init__(self, window: float = 60.0, capacity: int = 1024) -> None:
        self._window = window
        self._capacity = capacity
        self._lock = threading.Lock()
        self._folds: collections.OrderedDict[tuple[Any, ...], _Fold] = collections.OrderedDict()

    def emit(
        self, incident: Incident, level: int, message: str | None = None,
        key: tuple[Any, ...] | None = None, now: float | None = None,
    ) -> bool:
        """Log ``incident`` unless it folds into an earlier line; return whether it logged."""
        mono = time.monotonic() if now is None else now
        key = incident.fingerprint if key is None else key
        evicted: _Fold | None = None
        with self._lock:
            fold = self._folds.get(key)
            if fold is None:
                self._folds[key] = _Fold(incident, mono, 0, message)
                if len(self._folds) > self._capacity:
                    _, evicted = self._folds.popitem(last=False)
                folded = 0
            elif mono - fold.logged_at >= self._window:
                folded, fold.folded, fold.logged_at, fold.incident = fold.folded, 0, mono, incident
                fold.message = message
                self._folds.move_to_end(key)
            else:
                fold.folded += incident.count
                fold.incident, fold.message = incident, message
                self._folds.move_to_end(key)
                return False
        if evicted is not None and evicted.folded:
            self._write(evicted.incident, logging.WARNING, evicted.message, evicted.folded)
        self._write(incident, level, message, folded)
        return True

    def flush(self) -> None:
        """Log one line for every fingerprint with folded repeats not yet logged."""
        mono = time.monotonic()
        with self._lock:
            pending = [(f.incident, f.message, f.folded) for f in self._folds.values() if f.folded]
            for fold in self._folds.values():
                if fold.folded:
                    fold.folded, fold.logged_at = 0, mono
        for incident, message, folded in pending:
            self._write(incident, logging.WARNING, message, folded)

    @staticmethod
    def _write(incident: Incident, level: int, message: str | None, folded: int) -> None:
        text = message or incident.summary()
        if folded:
            text += f" (+{folded} folded since the last line)"
        data = incident.as_dict()
        data["folded"] = folded
        logger.log(level, text, extra={"loopwatch": data})
