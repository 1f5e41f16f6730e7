"""Structured event log: one JSON line per event, never on stdout, off unless asked for.

The file comes from the config key `logFile` or the env variable
PYCNI_LOG_FILE; `logLevel` / PYCNI_LOG_LEVEL is `debug`, `info` (default when a
file is set) or `error`.
"""
from __future__ import annotations

import json
import os
import time

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Any, Mapping, Optional

LEVELS = {"debug": 10, "info": 20, "error": 40}


class EventLog:
    def __init__(self, path: Optional[str] = None, level: str = "info", **context: Any) -> None:
        self.path = path
        self.threshold = LEVELS.get(level, LEVELS["info"])
        self.context = {k: v for k, v in context.items() if v}

    @classmethod
    def from_settings(cls, config: Mapping[str, Any], environ: Mapping[str, str], **context: Any) -> "EventLog":
        path = config.get("logFile") or environ.get("PYCNI_LOG_FILE") or None
        level = config.get("logLevel") or environ.get("PYCNI_LOG_LEVEL") or "info"
        return cls(path if isinstance(path, str) else None, str(level), **context)

    def event(self, name: str, level: str = "info", /, **fields: Any) -> None:
        if not self.path or LEVELS.get(level, 20) < self.threshold:
            return
        record = {"ts": round(time.time(), 6), "level": level, "event": name, "pid": os.getpid()}
        record.update((k, v) for k, v in {**self.context, **fields}.items() if k not in record)
        line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write per line, so concurrent plugins do not interleave
            finally:
                os.close(fd)
        except OSError:
            pass  # logging must never fail a CNI operation

    def debug(self, name: str, /, **fields: Any) -> None:
        self.event(name, "debug", **fields)

    def error(self, name: str, /, **fields: Any) -> None:
        self.event(name, "error", **fields)
