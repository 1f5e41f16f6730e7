"""The network settings in the pycni ConfigMap (the one holding the conflist): the agent runs them,
the installer derives the pods' MTU from them (`pod_mtu`), so they live below both.

Data key `network.yaml` (YAML or JSON), every field optional:

    backend: host-gw          # or vxlan
    vxlan:
      vni: 1                  # VXLAN network identifier, 1..16777215
      port: 8472              # UDP port (8472 = Linux/flannel default; IANA's is 4789)
      mtu: 0                  # 0 = underlay interface MTU minus the VXLAN overhead
      device: pycni-vxlan     # name of the agent's VXLAN device (<= 15 chars)
    resyncSeconds: 30         # periodic full resync (also the bound on repair time)
    masquerade: true          # masquerade pod traffic leaving the cluster pod network
    clusterCIDRs: []          # the cluster pod network; empty = every Node's podCIDRs

A missing key or ConfigMap means all defaults. A bad value is rejected with the
key's name and the agent keeps the last good settings.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

KEY = "network.yaml"
BACKENDS = ("host-gw", "vxlan")
# outer Ethernet is not counted in the MTU: IP header (20 / 40) + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_OVERHEAD = {4: 50, 6: 70}


class ConfigError(ValueError):
    """A value in network.yaml the agent cannot use; the message names the key."""


@dataclass(frozen=True)
class VxlanConfig:
    vni: int = 1
    port: int = 8472
    mtu: int = 0
    device: str = "pycni-vxlan"


@dataclass(frozen=True)
class NetworkConfig:
    backend: str = "host-gw"
    vxlan: VxlanConfig = field(default_factory=VxlanConfig)
    resync_seconds: Optional[float] = None  # None = the command-line default
    masquerade: bool = True
    cluster_cidrs: Tuple[str, ...] = ()


def vxlan_mtu(underlay_mtu: int, underlay_family: int = 4) -> int:
    """The largest MTU a pod can use over the VXLAN overlay (the installer's __MTU__ in vxlan mode)."""
    return underlay_mtu - VXLAN_OVERHEAD[underlay_family]


def _int(data: Dict[str, Any], key: str, what: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what}: expected an integer from {low} to {high}, got {value!r}")
    return value


def _vxlan(data: Any) -> VxlanConfig:
    if data is None:
        return VxlanConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"vxlan: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - {"vni", "port", "mtu", "device"}
    if unknown:
        raise ConfigError(f"vxlan: unknown key(s) {', '.join(sorted(unknown))}")
    device = data.get("device", VxlanConfig.device)
    if not isinstance(device, str) or not 1 <= len(device) <= 15 or "/" in device or " " in device:
        raise ConfigError(f"vxlan.device: expected an interface name of 1-15 characters, got {device!r}")
    mtu = _int(data, "mtu", "vxlan.mtu", 0, 0, 65535)
    if mtu and mtu < 576:
        raise ConfigError(f"vxlan.mtu: expected 0 (automatic) or at least 576, got {mtu}")
    return VxlanConfig(vni=_int(data, "vni", "vxlan.vni", 1, 1, 2 ** 24 - 1),
                       port=_int(data, "port", "vxlan.port", 8472, 1, 65535), mtu=mtu, device=device)


def parse_network_config(text: Optional[str]) -> NetworkConfig:
    """NetworkConfig from the ConfigMap value (None or blank = defaults); raises ConfigError."""
    if text is None or not text.strip():
        return NetworkConfig()
    from pycni.installer import yamlsafe

    try:
        data = yamlsafe.load(text)
    except yamlsafe.YamlRefused as exc:
        raise ConfigError(f"{KEY}: {exc}") from None
    if data is None:
        return NetworkConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{KEY}: expected a mapping at the top, got {type(data).__name__}")
    unknown = set(data) - {"backend", "vxlan", "resyncSeconds", "masquerade", "clusterCIDRs"}
    if unknown:
        raise ConfigError(f"{KEY}: unknown key(s) {', '.join(sorted(unknown))}")
    backend = data.get("backend", "host-gw")
    if backend not in BACKENDS:
        raise ConfigError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    resync = data.get("resyncSeconds")
    if resync is not None and (isinstance(resync, bool) or not isinstance(resync, (int, float)) or resync <= 0):
        raise ConfigError(f"resyncSeconds: expected a positive number, got {resync!r}")
    masquerade = data.get("masquerade", True)
    if not isinstance(masquerade, bool):
        raise ConfigError(f"masquerade: expected true or false, got {masquerade!r}")
    cidrs = data.get("clusterCIDRs") or []
    if not isinstance(cidrs, list):
        raise ConfigError(f"clusterCIDRs: expected a list of CIDRs, got {cidrs!r}")
    normalized = []
    for cidr in cidrs:
        try:
            normalized.append(str(ipaddress.ip_network(str(cidr), strict=False)))
        except ValueError:
            raise ConfigError(f"clusterCIDRs: {cidr!r} is not a CIDR") from None
    return NetworkConfig(backend=backend, vxlan=_vxlan(data.get("vxlan")),
                         resync_seconds=float(resync) if resync is not None else None,
                         masquerade=masquerade, cluster_cidrs=tuple(normalized))


def pod_mtu(host_mtu: int, network_yaml: Optional[str]) -> int:
    """The installer's __MTU__: the host MTU, or in vxlan mode the overlay's (vxlan.mtu, else host - 50).

    An invalid network.yaml leaves the host MTU (the agent rejects and reports that value).
    """
    try:
        config = parse_network_config(network_yaml)
    except ConfigError:
        return host_mtu
    if config.backend != "vxlan":
        return host_mtu
    return config.vxlan.mtu or vxlan_mtu(host_mtu, 4)
