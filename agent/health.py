"""Readiness (after the first full sync) and Prometheus metrics of the agent.

Served by the installer's HealthServer (/healthz, /readyz, /metrics), which only needs
`ready()` and `metrics()` from the status object.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Tuple

from pycni.installer.health import LockedStatus, Metrics, labels

PREFIX = "pycni_agent_"


class AgentStatus(LockedStatus):
    def __init__(self) -> None:
        super().__init__()
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

    def ready(self) -> Tuple[bool, str]:
        with self.lock:
            if self.synced_once:
                return True, "ok" + (f" (config rejected, last good kept: {self.config_error})"
                                     if self.config_error else "")
            return False, self.reason

    def metrics(self) -> str:
        ready, _ = self.ready()
        out = Metrics(PREFIX)
        with self.lock:
            out.add("ready", "gauge", "1 once the first full sync succeeded.", {"": int(ready)})
            out.add("backend_info", "gauge", "The backend in use.",
                    {labels(backend=self.backend): 1} if self.backend else {})
            out.add("routes", "gauge", "Routes programmed by the agent (protocol 156).", {"": self.routes})
            out.add("fdb_entries", "gauge", "FDB entries on the agent's VXLAN device.", {"": self.fdb})
            out.add("neighbours", "gauge", "Permanent neighbour entries on the agent's VXLAN device.",
                    {"": self.neighbours})
            out.add("nodes", "gauge", "Node objects known from the API.", {"": self.nodes})
            out.add("unreachable_nodes", "gauge", "Nodes (some of) whose podCIDRs have no route, by node.",
                    {labels(node=n, reason=r[:200]): 1 for n, r in sorted(self.unreachable.items())[:50]})
            out.add("unreachable_nodes_total", "gauge", "Count of nodes without a full route set.",
                    {"": len(self.unreachable)})
            out.add("pending_vxlan_nodes", "gauge", "vxlan: nodes still routed by host-gw until their VTEP is known.",
                    {"": len(self.pending)})
            out.add("route_conflicts", "gauge", "Prefixes we should route but another party's route holds.",
                    {"": self.conflicts})
            out.add("syncs_total", "counter", "Sync passes by trigger.",
                    {labels(trigger=k): v for k, v in sorted(self.syncs.items())})
            out.add("sync_errors_total", "counter", "Sync passes that failed, by stage.",
                    {labels(stage=k): v for k, v in sorted(self.sync_errors.items())})
            out.add("changes_total", "counter", "Kernel entries added or removed, by kind and action.",
                    {labels(kind=k, action=a): v for (k, a), v in sorted(self.changes.items())})
            out.add("watch_restarts_total", "counter", "API watches restarted, by cause.",
                    {labels(cause=k): v for k, v in sorted(self.watch_restarts.items())})
            out.add("last_successful_sync_timestamp_seconds", "gauge", "Unix time of the last good sync.",
                    {"": float(self.last_success)})
            out.add("last_sync_duration_seconds", "gauge", "Duration of the last sync pass.",
                    {"": float(self.last_duration)})
        return out.text()
