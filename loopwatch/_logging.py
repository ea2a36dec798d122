"""The ``loopwatch`` logger and its text and JSON formats.

Every incident is one record on the stdlib logger ``loopwatch`` with
``extra={"loopwatch": incident.as_dict()}``, so the user's own logging setup (structlog,
JSON formatters, log shippers) sees the structured fields. When nothing would show the
record (no handler anywhere), or when JSON lines are asked for, loopwatch attaches a
stderr handler of its own and removes it on uninstall.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ._frames import is_user_file

__all__ = ["JsonFormatter", "TextFormatter", "logger"]

logger = logging.getLogger("loopwatch")


class TextFormatter(logging.Formatter):
    """A summary line, then the hint and the stack (code locations only), indented."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.getMessage()}"
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line; newlines and quotes inside values are escaped by ``json``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data = getattr(record, "loopwatch", None)
        if isinstance(data, dict):
            payload["loopwatch"] = data
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _OwnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler loopwatch attached, so uninstall removes exactly that one."""

    def emit(self, record: logging.LogRecord) -> None:
        # Resolve sys.stderr at emit time: test runners and notebooks swap it.
        self.stream = sys.stderr
        super().emit(record)


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
            self._handler = _OwnHandler()
            self._handler.setFormatter(JsonFormatter())
            # JSON lines were asked for: do not also print the record through root.
            self._propagate = logger.propagate
            logger.propagate = False
        elif not logging.getLogger().handlers:
            self._handler = _OwnHandler()
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
