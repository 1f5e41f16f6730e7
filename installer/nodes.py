"""This node's podCIDRs from its Node object; a new node gets them a little after it registers."""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional

from .log import Log
from .watch import ObjectWatcher


def pod_cidrs(node: Optional[Dict[str, Any]]) -> List[str]:
    spec = (node or {}).get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return [c for c in cidrs if isinstance(c, str) and c]


class NodeSource:
    def __init__(self, api_client: Any, node_name: str, log: Log, notify: Callable[[], None],
                 stop: threading.Event, watch_timeout: int, on_restart: Callable[[str], None]) -> None:
        from kubernetes import client

        self.node_name = node_name
        self.log = log
        self.notify = notify
        self.synced = False
        self.exists = False
        self.cidrs: List[str] = []
        core = client.CoreV1Api(api_client)
        self.watcher = ObjectWatcher(f"node {node_name}", core.list_node, (), node_name, self._changed,
                                     log, stop, watch_timeout, on_restart)

    def start(self) -> "NodeSource":
        self.watcher.start()
        return self

    def _changed(self, node: Optional[Dict[str, Any]]) -> None:
        cidrs = pod_cidrs(node)
        changed = cidrs != self.cidrs or (node is not None) != self.exists or not self.synced
        self.cidrs, self.exists, self.synced = cidrs, node is not None, True
        if changed:
            self.log.info("node_pod_cidrs", node=self.node_name, pod_cidrs=cidrs, exists=self.exists)
            self.notify()

    def known_cidrs(self) -> Optional[List[str]]:
        """None until the first list answered; then the Node's podCIDRs ([] while it has none)."""
        return list(self.cidrs) if self.synced else None
