"""Structured logs: one JSON object per line on stderr or a file (or plain text).

The daemon's own loggers (`duplexd.*`) and the libraries it runs on (`trio`, whose listener
logs accept() failures such as running out of file descriptors, and `trio-websocket`) all go
through the same handler. A library's record never prints a traceback: its exception becomes
one `error` field, and the same message is logged at most once a second (`suppressed` counts
the repeats in between), so a failure that repeats a hundred times a second stays one line.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any, Final

from .settings import LogSettings

_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


LIBRARY_LOGGERS: Final = ("trio", "trio-websocket")
REPEAT_INTERVAL_S: Final = 1.0


class LibraryRecords(logging.Filter):
    """For the libraries' loggers: the exception as one `error` field instead of a traceback,
    and each message at most once per `REPEAT_INTERVAL_S` (the repeats are counted)."""

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, object], float] = {}
        self._suppressed: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = record.created
        if now - self._last.get(key, -math.inf) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) > 1024:  # bounded: a flood of distinct messages cannot grow it
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.suppressed = suppressed
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.error = f"{type(exc).__name__}: {exc}"
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(settings: LogSettings) -> None:
    """Route the `duplexd` loggers (and trio's, trio-websocket's) to stderr or `settings.file`
    (opened anew: call it again to reopen a rotated file), one JSON object per line or plain
    text."""
    handler: logging.Handler
    if settings.file:
        handler = logging.FileHandler(settings.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    old = _route(logging.getLogger("duplexd"), handler, settings.level.upper())
    library = _Through(handler)
    library.addFilter(LibraryRecords())
    for name in LIBRARY_LOGGERS:
        old += _route(logging.getLogger(name), library, "WARNING")
    for h in old:
        if isinstance(h, _Through):
            h = h.target
        if isinstance(h, logging.FileHandler) and h is not handler:
            h.close()


class _Through(logging.Handler):
    """Hands the records its filters let through to another handler."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


def _route(logger: logging.Logger, handler: logging.Handler, level: str) -> list[logging.Handler]:
    old, logger.handlers[:] = logger.handlers[:], [handler]
    logger.setLevel(level)
    logger.propagate = False
    return old
