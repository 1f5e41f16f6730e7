"""Publish this node's VTEP MAC on its own Node object (annotation), so other agents can program it.

RBAC: `patch` on `nodes` (the agent only ever patches the Node named by --node-name).
"""
from __future__ import annotations

import time
from typing import Any, Optional

from pycni.installer.log import Log

from .nodes import VTEP_MAC_ANNOTATION


class VtepAnnotator:
    def __init__(self, api_client: Any, node_name: str, log: Log) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.log = log
        self._sent: Optional[str] = "unset"  # last value PATCHed, until the watch shows it
        self._sent_at = 0.0

    def publish(self, mac: Optional[str], current: Optional[str], retry_after: float = 1.0) -> bool:
        """PATCH the annotation to `mac` (None removes it) unless the Node already says so. True if sent."""
        if mac == current:
            self._sent = "unset"
            return False
        if mac == self._sent and time.monotonic() - self._sent_at < retry_after:
            return False  # just sent; the watch has not delivered it yet (a re-created Node gets it again)
        body = {"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}}
        self.core.patch_node(self.node_name, body, _request_timeout=(10, 30))
        self._sent, self._sent_at = mac, time.monotonic()
        self.log.info("vtep_mac_published", node=self.node_name, annotation=VTEP_MAC_ANNOTATION, mac=mac)
        return True
