"""One structured JSON line per log record on stderr: our events and every library's records alike.

The installer and the agent log events (`log.info("conflist_written", file=...)`); the kubernetes
client, urllib3 and pyroute2 log through `logging`, and Python warnings (urllib3's
InsecureRequestWarning) go through `warnings`. `configure` sends all of them through one handler
with `JsonFormatter`, so a log collector reads one format (before, library records bypassed it as
plain text). The plugins keep their own one-write event log (plugins/core/log.py).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Optional, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "event", ...fields}` for our events; a library record becomes the event `log`
    with its `logger` and `message` (and `exception`, when it carries one)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
               "level": record.levelname.lower()}
        fields = getattr(record, "fields", None)
        if fields is None:
            out.update(event="log", logger=record.name, message=record.getMessage().rstrip("\n"))
        else:
            out["event"] = record.msg
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _Handler(logging.StreamHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        """A closed or full stderr must not stop the sync loop, nor print a traceback to it."""


class Log:
    """Events with fields: `log.warning("watch_failed", status=403, why=...)`."""

    def __init__(self, level: str = "info", name: str = "pycni") -> None:
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        self.threshold = LEVELS[level]
        self.logger = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: Any) -> None:
        if level >= self.threshold:
            self.logger.log(level, event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def configure(level: str, name: str, stream: Optional[TextIO] = None) -> Log:
    """Make the root logger's only handler one JSON line per record at `level` and up (Python
    warnings included); returns the process's event log. Called once, by a `main`."""
    log = Log(level, name)
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)
    return log
