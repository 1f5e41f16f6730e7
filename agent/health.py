"""Readiness (after the first full sync) and Prometheus metrics of the agent.

Served by the installer's HealthServer (/healthz, /readyz, /metrics), which only needs
`ready()` and `metrics()` from the status object.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Dict, Tuple

PREFIX = "pycni_agent_"


def _labels(**labels: Any) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(str(v))}"' for k, v in labels.items()) + "}"


class AgentStatus:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.synced_once = False
        self.reason = "waiting for the first full sync"
        self.backend = ""
        self.routes = 0
        self.fdb = 0
        self.neighbours = 0
        self.nodes = 0
        self.unreachable: Dict[str, str] = {}
        self.pending: Dict[str, str] = {}
        self.conflicts = 0
        self.last_success = 0.0
        self.last_duration = 0.0
        self.syncs: Counter = Counter()
        self.sync_errors: Counter = Counter()
        self.changes: Counter = Counter()
        self.watch_restarts: Counter = Counter()
        self.config_error = ""

    def update(self, **fields: Any) -> None:
        with self.lock:
            for key, value in fields.items():
                setattr(self, key, value)

    def count(self, counter: str, label: Any, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[label] += n

    def ready(self) -> Tuple[bool, str]:
        with self.lock:
            if self.synced_once:
                return True, "ok" + (f" (config rejected, last good kept: {self.config_error})"
                                     if self.config_error else "")
            return False, self.reason

    def metrics(self) -> str:
        ready, _ = self.ready()
        out = []
        with self.lock:
            def metric(name: str, kind: str, help_text: str, samples: Dict[str, Any]) -> None:
                out.append(f"# HELP {PREFIX}{name} {help_text}")
                out.append(f"# TYPE {PREFIX}{name} {kind}")
                for labels, value in samples.items():
                    text = f"{value:.3f}" if isinstance(value, float) else str(value)
                    out.append(f"{PREFIX}{name}{labels} {text}")

            metric("ready", "gauge", "1 once the first full sync succeeded.", {"": int(ready)})
            metric("backend_info", "gauge", "The backend in use.",
                   {_labels(backend=self.backend): 1} if self.backend else {})
            metric("routes", "gauge", "Routes programmed by the agent (protocol 156).", {"": self.routes})
            metric("fdb_entries", "gauge", "FDB entries on the agent's VXLAN device.", {"": self.fdb})
            metric("neighbours", "gauge", "Permanent neighbour entries on the agent's VXLAN device.",
                   {"": self.neighbours})
            metric("nodes", "gauge", "Node objects known from the API.", {"": self.nodes})
            metric("unreachable_nodes", "gauge", "Nodes (some of) whose podCIDRs have no route, by node.",
                   {_labels(node=n, reason=r[:200]): 1 for n, r in sorted(self.unreachable.items())[:50]}
                   or {"": 0})
            metric("unreachable_nodes_total", "gauge", "Count of nodes without a full route set.",
                   {"": len(self.unreachable)})
            metric("pending_vxlan_nodes", "gauge", "vxlan: nodes still routed by host-gw until their VTEP is known.",
                   {"": len(self.pending)})
            metric("route_conflicts", "gauge", "Prefixes we should route but another party's route holds.",
                   {"": self.conflicts})
            metric("syncs_total", "counter", "Sync passes by trigger.",
                   {_labels(trigger=k): v for k, v in sorted(self.syncs.items())} or {"": 0})
            metric("sync_errors_total", "counter", "Sync passes that failed, by stage.",
                   {_labels(stage=k): v for k, v in sorted(self.sync_errors.items())} or {"": 0})
            metric("changes_total", "counter", "Kernel entries added or removed, by kind and action.",
                   {_labels(kind=k, action=a): v for (k, a), v in sorted(self.changes.items())} or {"": 0})
            metric("watch_restarts_total", "counter", "API watches restarted, by cause.",
                   {_labels(cause=k): v for k, v in sorted(self.watch_restarts.items())} or {"": 0})
            metric("last_successful_sync_timestamp_seconds", "gauge", "Unix time of the last good sync.",
                   {"": float(self.last_success)})
            metric("last_sync_duration_seconds", "gauge", "Duration of the last sync pass.",
                   {"": float(self.last_duration)})
        return "\n".join(out) + "\n"
