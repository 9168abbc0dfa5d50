"""Structured JSON logging: one object per line, fields under stable names.

Log lines carry what an operator needs to trace an admission (uid, namespace,
pod, outcome, secrets added) and never pod env values, secret data or keys:
callers pass explicit ``fields``; nothing is dumped wholesale.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import time
from typing import Any

import orjson

LOGGER_NAME = "pullsecrets_webhook"
log = logging.getLogger(LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Readable one-line form for a terminal (``--log-format text``)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# Set by setup_logging: write admission lines straight to stderr, bypassing logging's record
# machinery (the one line per admission was the costliest step of a review, after parsing).
_fast_stream: Any = None
_ts_cache: tuple[int, str] = (-1, "")
# Admission lines are flushed at most this long after they are written (or when the 8 KiB
# buffer fills), not one write(2) per line: under load that syscall cost more than the rest of
# the line. Other log lines flush at once, and push any admission lines before them first, so
# the order on stderr is kept. A SIGKILL can lose the last FLUSH_AFTER seconds of lines.
FLUSH_AFTER = 0.05
_flush_due = 0.0  # monotonic time of the scheduled flush; 0.0: none


def _timestamp(now: float) -> str:
    global _ts_cache
    second = int(now)
    if _ts_cache[0] != second:
        _ts_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_ts_cache[1]}.{int((now - second) * 1000):03d}Z"


def admission(fields: dict[str, Any]) -> None:
    """The per-admission line: same JSON shape as every other line, at a fraction of the cost."""
    if not log.isEnabledFor(logging.INFO):
        return
    stream = _fast_stream
    if stream is None:
        log.info("admission", extra={"fields": fields})
        return
    global _flush_due
    entry = {"ts": _timestamp(time.time()), "level": "info", "logger": LOGGER_NAME, "msg": "admission", **fields}
    stream.write(orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE))
    now = time.monotonic()
    if now < _flush_due + 1.0:  # a flush is due soon (one far overdue was on a loop that is gone)
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop (the CLI, tests): nothing would flush later
        stream.flush()
        return
    _flush_due = now + FLUSH_AFTER
    loop.call_later(FLUSH_AFTER, flush)


def flush() -> None:
    """Write out buffered admission lines (also called on shutdown)."""
    global _flush_due
    _flush_due = 0.0
    if _fast_stream is not None:
        with contextlib.suppress(OSError, ValueError):  # stderr closed or gone: nowhere to write
            _fast_stream.flush()


atexit.register(flush)


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Route our logs and uvicorn's through one handler and format."""
    global _fast_stream
    _fast_stream = getattr(sys.stderr, "buffer", None) if fmt == "json" else None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # One line per admission is written by the app; the access log would double it.
    logging.getLogger("uvicorn.access").disabled = True


def info(msg: str, **fields: Any) -> None:
    log.info(msg, extra={"fields": fields})


def warning(msg: str, **fields: Any) -> None:
    log.warning(msg, extra={"fields": fields})


def error(msg: str, exc_info: bool = False, **fields: Any) -> None:
    log.error(msg, exc_info=exc_info, extra={"fields": fields})
