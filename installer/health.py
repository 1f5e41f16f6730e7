"""/healthz, /readyz (with the reason when not ready) and /metrics in Prometheus text format."""
from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

PREFIX = "pycni_installer_"


class Status:
    """What the sync loop knows; read by the HTTP handlers (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
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

    def ready(self) -> Tuple[bool, str]:
        with self.lock:
            if self.binaries_ok and self.config_ok and not self.rejection:
                return True, "ok"
            if self.rejection:
                return False, (f"config rejected ({self.rejection[0]}): {self.rejection[1]} "
                               f"(the last good conflist, if any, stays in place)")
            return False, self.reason

    def update(self, **fields: Any) -> None:
        with self.lock:
            for key, value in fields.items():
                setattr(self, key, value)

    def count(self, counter: str, label: str, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[label] += n

    def metrics(self) -> str:
        ready, _ = self.ready()
        with self.lock:
            out = []

            def metric(name: str, kind: str, help_text: str, samples: Dict[str, float]) -> None:
                out.append(f"# HELP {PREFIX}{name} {help_text}")
                out.append(f"# TYPE {PREFIX}{name} {kind}")
                for labels, value in samples.items():
                    out.append(f"{PREFIX}{name}{labels} {value:.3f}" if isinstance(value, float)
                               else f"{PREFIX}{name}{labels} {value}")

            metric("syncs_total", "counter", "Sync passes by result (written, unchanged, rejected, waiting, error).",
                   {_labels(result=k): v for k, v in sorted(self.syncs.items())} or {_labels(result="written"): 0})
            metric("rejections_total", "counter", "Distinct config inputs rejected, by kind.",
                   {_labels(kind=k): v for k, v in sorted(self.rejections.items())} or {"": 0})
            metric("last_successful_sync_timestamp_seconds", "gauge",
                   "Unix time of the last sync that left the node's conflist and binaries as desired.",
                   {"": float(self.last_success)})
            metric("config_info", "gauge", "sha256 of the conflist last written or confirmed on the node.",
                   {_labels(sha256=self.config_hash): 1} if self.config_hash else {})
            metric("config_rejected", "gauge", "1 while the current config input is rejected (reason label).",
                   {_labels(kind=self.rejection[0], reason=self.rejection[1][:300]): 1} if self.rejection
                   else {"": 0})
            metric("ready", "gauge", "1 when binaries are installed and the current config is written.",
                   {"": int(ready)})
            metric("binary_copies_total", "counter", "Plugin binaries copied into the host bin dir.",
                   {"": self.binary_copies})
            metric("conflist_writes_total", "counter", "Writes of the conflist into the host conf dir.",
                   {"": self.conflist_writes})
            metric("watch_restarts_total", "counter", "API watches restarted, by source and cause.",
                   {_labels(source=s, cause=c): v for (s, c), v in sorted(self.watch_restarts.items())})
            metric("binary_check_ok", "gauge",
                   "1 when the plugin binary answered VERSION on the node (through the host root), 0 when not.",
                   {_labels(plugin=k): v for k, v in sorted(self.binary_checks.items())})
            metric("binary_check_failures_total", "counter", "Failed VERSION checks of plugin binaries on the node.",
                   {_labels(plugin=k): v for k, v in sorted(self.binary_check_failures.items())})
            return "\n".join(out) + "\n"


def _labels(**labels: str) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(str(v))}"' for k, v in labels.items()) + "}"


class HealthServer:
    def __init__(self, status: Status, listen: Tuple[str, int]) -> None:
        self.status = status

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    code, body, ctype = 200, "ok\n", "text/plain; charset=utf-8"
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
        return self.server.server_address[:2]

    def start(self) -> "HealthServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
