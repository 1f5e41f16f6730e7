"""Command line and environment of pycni-agent: every flag has an env var (the DaemonSet sets env)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

from pycni.installer.network import KEY
from pycni.installer.settings import parse_configmap, parse_listen



@dataclass(frozen=True)
class Settings:
    node_name: str
    configmap: Optional[Tuple[str, str]]  # (namespace, name); None = defaults only
    config_key: str
    listen: Optional[Tuple[str, int]]
    resync_seconds: float  # unless network.yaml sets resyncSeconds
    log_level: str
    watch_timeout_seconds: int
    debounce_seconds: float


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str) -> str:
        return env.get(name, default)

    p = argparse.ArgumentParser(
        prog="pycni-agent",
        description="Keep this node's routes (host-gw) or VXLAN overlay equal to the cluster's Nodes' podCIDRs.")
    p.add_argument("--node-name", default=e("PYCNI_NODE_NAME", env.get("NODE_NAME", "")))
    p.add_argument("--configmap", default=e("PYCNI_CONFIGMAP", ""),
                   help="NAMESPACE/NAME of the pycni ConfigMap (the one with the conflist)")
    p.add_argument("--config-key", default=e("PYCNI_AGENT_CONFIG_KEY", KEY),
                   help="data key of the agent's settings in that ConfigMap")
    p.add_argument("--listen", default=e("PYCNI_AGENT_LISTEN", "0.0.0.0:9766"),
                   help='HOST:PORT for /healthz, /readyz, /metrics ("off" = no server)')
    p.add_argument("--resync-seconds", type=float, default=float(e("PYCNI_AGENT_RESYNC_SECONDS", "30") or 30))
    p.add_argument("--log-level", default=e("PYCNI_LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"])
    p.add_argument("--watch-timeout-seconds", type=int, default=int(e("PYCNI_WATCH_TIMEOUT_SECONDS", "300") or 300))
    p.add_argument("--debounce-seconds", type=float, default=float(e("PYCNI_DEBOUNCE_SECONDS", "0.05") or 0.05),
                   help="quiet time after a Node or ConfigMap event before converging")
    return p


def parse(argv: Optional[List[str]], env: Mapping[str, str]) -> Settings:
    """Settings from argv and env; raises SystemExit (argparse) or ValueError on bad values."""
    args = _parser(env).parse_args(argv)
    if not args.node_name:
        raise ValueError("--node-name (or NODE_NAME from the downward API) is required")
    if args.resync_seconds <= 0:
        raise ValueError("--resync-seconds must be positive")
    return Settings(node_name=args.node_name, configmap=parse_configmap(args.configmap),
                    config_key=args.config_key, listen=parse_listen(args.listen),
                    resync_seconds=args.resync_seconds, log_level=args.log_level,
                    watch_timeout_seconds=args.watch_timeout_seconds, debounce_seconds=args.debounce_seconds)
