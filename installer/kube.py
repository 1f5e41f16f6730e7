"""A Kubernetes API client: in-cluster when KUBERNETES_SERVICE_HOST is set, else KUBECONFIG.

The in-cluster loader re-reads the projected service-account token before it
expires, so a rotated token is picked up (never embed the token once).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional


class KubeUnavailable(Exception):
    pass


def api_client(env: Optional[Mapping[str, str]] = None) -> Any:
    env = os.environ if env is None else env
    try:
        from kubernetes import client, config
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise KubeUnavailable(f"the kubernetes client library is missing: {exc}") from None
    cfg = client.Configuration()
    try:
        if env.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            path = env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            config.load_kube_config(config_file=path.split(os.pathsep)[0], client_configuration=cfg)
    except Exception as exc:
        raise KubeUnavailable(f"no Kubernetes API access: {exc}") from None
    return client.ApiClient(cfg)
