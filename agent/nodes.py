"""Every Node of the cluster, kept current by list + watch (the installer's watch loop, for a whole list).

Only what routing needs is kept per Node (NodeInfo), so 1,000 Nodes cost little memory.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from pycni.installer.log import Log
from pycni.installer.nodes import pod_cidrs
from pycni.installer.watch import ObjectWatcher

VTEP_MAC_ANNOTATION = "pycni.dev/vtep-mac"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    internal_ips: Tuple[str, ...]
    pod_cidrs: Tuple[str, ...]
    vtep_mac: Optional[str]  # the VXLAN device MAC the node's agent published


def node_info(obj: Dict[str, Any]) -> NodeInfo:
    meta = obj.get("metadata") or {}
    addresses = ((obj.get("status") or {}).get("addresses")) or []
    ips = tuple(a["address"] for a in addresses
                if isinstance(a, dict) and a.get("type") == "InternalIP" and a.get("address"))
    mac = (meta.get("annotations") or {}).get(VTEP_MAC_ANNOTATION)
    return NodeInfo(meta.get("name", ""), ips, tuple(pod_cidrs(obj)), mac.lower() if isinstance(mac, str) else None)


class NodeStore:
    """Thread-safe name -> NodeInfo; `notify` runs after every change that matters for routing."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._nodes: Dict[str, NodeInfo] = {}
        self.notify = notify
        self.synced = False  # True once the first list answered

    def replace_all(self, objects: Iterable[Dict[str, Any]]) -> None:
        nodes = {info.name: info for info in map(node_info, objects) if info.name}
        with self._lock:
            changed = nodes != self._nodes or not self.synced
            self._nodes, self.synced = nodes, True
        if changed:
            self.notify()

    def upsert(self, obj: Dict[str, Any]) -> None:
        info = node_info(obj)
        with self._lock:
            changed = self._nodes.get(info.name) != info
            self._nodes[info.name] = info
        if changed:
            self.notify()

    def remove(self, name: str) -> None:
        with self._lock:
            changed = self._nodes.pop(name, None) is not None
        if changed:
            self.notify()

    def snapshot(self) -> Dict[str, NodeInfo]:
        with self._lock:
            return dict(self._nodes)


class NodeListWatcher(ObjectWatcher):
    """ObjectWatcher's loop (backoff, resume from the last resourceVersion, relist on 410) over ALL Nodes.

    ObjectWatcher follows one named object and reports deletions as None (no name), so the
    query and what a list or an event does are replaced; list, watch and retry loop are reused.
    """

    def __init__(self, api_client: Any, store: NodeStore, log: Log, stop: threading.Event,
                 watch_timeout: int, on_restart: Callable[[str], None]) -> None:
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        super().__init__("nodes", core.list_node, (), "", lambda obj: None, log, stop, watch_timeout, on_restart)
        self.store = store
        self.query = {}  # every Node

    def _listed(self, items: List[Dict[str, Any]]) -> None:
        self.store.replace_all(items)

    def _event(self, kind: str, obj: Dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self.store.upsert(obj)
        elif kind == "DELETED":
            self.store.remove((obj.get("metadata") or {}).get("name", ""))
