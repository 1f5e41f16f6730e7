"""/healthz, /readyz (with the reason when not ready) and /metrics in Prometheus text format."""
from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

PREFIX = "pycni_installer_"


class LockedStatus:
    """State one loop updates and the HTTP handler threads read, all under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def update(self, **fields: Any) -> None:
        with self.lock:
            for key, value in fields.items():
                setattr(self, key, value)

    def count(self, counter: str, label: Any, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[label] += n

    def healthy(self) -> Tuple[bool, str]:
        """(healthy, why not): what /healthz answers; a live process is healthy unless told otherwise."""
        return True, "ok"

    def ready(self) -> Tuple[bool, str]:
        """(ready, why not): what /readyz answers."""
        raise NotImplementedError

    def metrics(self) -> str:
        """The Prometheus text /metrics answers."""
        raise NotImplementedError


class Metrics:
    """Prometheus text exposition, built one metric family at a time."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lines: List[str] = []

    def add(self, name: str, kind: str, help_text: str, samples: Dict[str, Any]) -> None:
        """`samples`: labels (see `labels`, "" for none) -> value.

        A labelled family with no sample yet has no series at all: a placeholder `{"": 0}` would
        be a different series that vanishes at the first real sample (Prometheus sees it go stale).
        """
        self.lines.append(f"# HELP {self.prefix}{name} {help_text}")
        self.lines.append(f"# TYPE {self.prefix}{name} {kind}")
        for label_text, value in samples.items():
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            self.lines.append(f"{self.prefix}{name}{label_text} {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def labels(**pairs: Any) -> str:
    """A sample's label set, escaped as the text format wants."""
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(str(v))}"' for k, v in pairs.items()) + "}"


class Status(LockedStatus):
    """What the sync loop knows; read by the HTTP handlers (thread-safe).

    A sync pass running longer than `stuck_after` seconds makes both /readyz and /healthz fail: a pass that
    never ends (a pathological config) must not hide behind the last good answer."""

    def __init__(self, stuck_after: float = 300.0) -> None:
        super().__init__()
        self.stuck_after = stuck_after
        self.sync_started = 0.0  # time.monotonic() when the running pass began; 0 while idle
        self.binaries_ok = False
        self.config_ok = False
        self.reason = "starting"
        self.rejection: Optional[Tuple[str, str]] = None  # (kind, message) of the current input
        self.syncs: Counter = Counter()
        self.rejections: Counter = Counter()
        self.watch_restarts: Counter = Counter()
        self.binary_copies = 0
        self.conflist_writes = 0
        self.last_success = 0.0
        self.config_hash = ""
        self.binary_checks: Dict[str, int] = {}  # plugin -> 1 ran fine on the node / 0 failed (nodecheck)
        self.binary_check_failures: Counter = Counter()  # plugin -> failed checks

    def busy(self) -> bool:
        """Is a sync pass running? Lock-free: the signal handler asks, in a thread that may hold the lock."""
        return self.sync_started > 0

    def stuck(self) -> str:
        """Why the sync loop is stuck ('' when it is not)."""
        with self.lock:
            started = self.sync_started
        running = time.monotonic() - started if started else 0.0
        if running > self.stuck_after:
            return f"a sync pass has been running for {running:.0f}s (limit {self.stuck_after:.0f}s)"
        return ""

    def healthy(self) -> Tuple[bool, str]:
        why = self.stuck()
        return (False, why) if why else (True, "ok")

    def ready(self) -> Tuple[bool, str]:
        why = self.stuck()
        if why:
            return False, why
        with self.lock:
            if self.binaries_ok and self.config_ok and not self.rejection:
                return True, "ok"
            if self.rejection:
                return False, (f"config rejected ({self.rejection[0]}): {self.rejection[1]} "
                               f"(the last good conflist, if any, stays in place)")
            return False, self.reason

    def metrics(self) -> str:
        ready, _ = self.ready()
        out = Metrics(PREFIX)
        with self.lock:
            out.add("syncs_total", "counter", "Sync passes by result (written, unchanged, rejected, waiting, error).",
                    {labels(result=k): v for k, v in sorted(self.syncs.items())} or {labels(result="written"): 0})
            out.add("rejections_total", "counter", "Distinct config inputs rejected, by kind.",
                    {labels(kind=k): v for k, v in sorted(self.rejections.items())})
            out.add("last_successful_sync_timestamp_seconds", "gauge",
                    "Unix time of the last sync that left the node's conflist and binaries as desired.",
                    {"": float(self.last_success)})
            out.add("config_info", "gauge", "sha256 of the conflist last written or confirmed on the node.",
                    {labels(sha256=self.config_hash): 1} if self.config_hash else {})
            out.add("config_rejected", "gauge", "1 while the current config input is rejected (reason label); "
                    "absent while it is not.",
                    {labels(kind=self.rejection[0], reason=self.rejection[1][:300]): 1} if self.rejection else {})
            out.add("ready", "gauge", "1 when binaries are installed and the current config is written.",
                    {"": int(ready)})
            out.add("binary_copies_total", "counter", "Plugin binaries copied into the host bin dir.",
                    {"": self.binary_copies})
            out.add("conflist_writes_total", "counter", "Writes of the conflist into the host conf dir.",
                    {"": self.conflist_writes})
            out.add("watch_restarts_total", "counter", "API watches restarted, by source and cause.",
                    {labels(source=s, cause=c): v for (s, c), v in sorted(self.watch_restarts.items())})
            out.add("binary_check_ok", "gauge",
                    "1 when the plugin binary answered VERSION on the node (through the host root), 0 when not.",
                    {labels(plugin=k): v for k, v in sorted(self.binary_checks.items())})
            out.add("binary_check_failures_total", "counter", "Failed VERSION checks of plugin binaries on the node.",
                    {labels(plugin=k): v for k, v in sorted(self.binary_check_failures.items())})
        return out.text()


class HealthServer:
    def __init__(self, status: LockedStatus, listen: Tuple[str, int]) -> None:
        self.status = status

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, reason = status.healthy()
                    code, body, ctype = (200 if ok else 503), reason + "\n", "text/plain; charset=utf-8"
                elif path == "/readyz":
                    ok, reason = status.ready()
                    code, body, ctype = (200 if ok else 503), reason + "\n", "text/plain; charset=utf-8"
                elif path == "/metrics":
                    code, body, ctype = 200, status.metrics(), "text/plain; version=0.0.4; charset=utf-8"
                else:
                    code, body, ctype = 404, "not found\n", "text/plain; charset=utf-8"
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(listen, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> "HealthServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
