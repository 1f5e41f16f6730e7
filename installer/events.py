"""Kubernetes Events on the ConfigMap, so `kubectl describe configmap` shows which node rejected what."""
from __future__ import annotations

import datetime
import time
from typing import Any, Callable, Dict, Set, Tuple

from .log import Log

COMPONENT = "pycni-installer"


class EventRecorder:
    def __init__(self, api_client: Any, namespace: str, node_name: str,
                 involved_object: Callable[[], Dict[str, Any]], log: Log) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.node_name = node_name
        self.involved_object = involved_object
        self.log = log
        self._posted: Set[Tuple[str, str]] = set()

    def record(self, reason: str, message: str, kind: str = "Warning", dedupe_key: str = "") -> None:
        """Post once per (reason, dedupe_key): a resync re-rejecting the same input posts nothing new."""
        key = (reason, dedupe_key or message)
        if key in self._posted:
            return
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj = self.involved_object()
        node = self.node_name or "(unknown node)"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{obj['name']}.{time.time_ns():x}", "namespace": self.namespace},
            "involvedObject": obj,
            "reason": reason,
            "message": f"node {node}: {message}"[:1024],
            "type": kind,
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            # The client serialises a plain dict body as it does a model (its stubs name only the model).
            self.core.create_namespaced_event(self.namespace, body, _request_timeout=(5, 10))  # type: ignore[arg-type]
            self._posted.add(key)
            self.log.info("event_posted", reason=reason, object=f"{obj['namespace']}/{obj['name']}", node=node)
        except Exception as exc:  # an Event is a courtesy: never fail a sync over it
            self.log.warning("event_failed", reason=reason, why=f"{type(exc).__name__}: {exc}")
