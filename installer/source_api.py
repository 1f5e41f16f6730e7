"""The conflist template straight from the ConfigMap through the API: an edit arrives in about a second."""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

from .log import Log
from .watch import ObjectWatcher


class ConfigMapSource:
    def __init__(self, api_client: Any, namespace: str, name: str, key: str, log: Log,
                 notify: Callable[[], None], stop: threading.Event, watch_timeout: int,
                 on_restart: Callable[[str], None]) -> None:
        from kubernetes import client

        self.namespace, self.name, self.key = namespace, name, key
        self.log = log
        self.notify = notify
        self._lock = threading.Lock()
        self.synced = False  # True once the first list answered
        self.obj: Optional[Dict[str, Any]] = None
        core = client.CoreV1Api(api_client)
        self.watcher = ObjectWatcher(f"configmap {namespace}/{name}", core.list_namespaced_config_map,
                                     (namespace,), name, self._changed, log, stop, watch_timeout,
                                     on_restart)

    def start(self) -> "ConfigMapSource":
        self.watcher.start()
        return self

    @property
    def label(self) -> str:
        return f"configmap {self.namespace}/{self.name} key {self.key}"

    def _changed(self, obj: Optional[Dict[str, Any]]) -> None:
        with self._lock:
            old = self.text()
            self.obj = obj
            self.synced = True
            new = self.text()
        rv = (obj or {}).get("metadata", {}).get("resourceVersion")
        if new != old or rv is None:
            self.log.info("configmap_changed", source=self.label, resource_version=rv,
                          present=new is not None)
        self.notify()

    def text(self, key: Optional[str] = None) -> Optional[str]:
        data = (self.obj or {}).get("data") or {}
        value = data.get(key or self.key)
        return value if isinstance(value, str) else None

    def involved_object(self) -> Dict[str, Any]:
        meta = (self.obj or {}).get("metadata") or {}
        ref = {"kind": "ConfigMap", "apiVersion": "v1", "namespace": self.namespace, "name": self.name}
        if meta.get("uid"):
            ref["uid"] = meta["uid"]
        if meta.get("resourceVersion"):
            ref["resourceVersion"] = meta["resourceVersion"]
        return ref
