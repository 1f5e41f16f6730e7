"""What this node's kernel should hold, from the Nodes and the backend: a pure function, no I/O.

host-gw: `<remote podCIDR> via <remote InternalIP>` out of the interface whose subnet holds
that InternalIP. A node whose InternalIP of the right family lies in none of this node's
directly connected subnets is not on our L2 segment: it is reported, never routed (a
route via an off-link gateway would be wrong or silently blackhole).

vxlan (flannel's layout): every node's VTEP address is the first address of its podCIDR
(assigned /32 or /128 to its VXLAN device); here `<podCIDR> via <VTEP address> dev vxlan
onlink`, a permanent neighbour `<VTEP address> lladdr <its VTEP MAC>` and an FDB entry
`<its VTEP MAC> dst <its InternalIP>`. A node that has not published its VTEP MAC yet
keeps a host-gw route if it is on our segment (so switching backends does not cut it off).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from .nodes import VTEP_MAC_ANNOTATION, NodeInfo


@dataclass(frozen=True)
class Subnet:
    """A directly connected subnet of this node (an address with its prefix on an interface)."""
    network: str
    ifname: str


@dataclass(frozen=True)
class RouteSpec:
    dst: str  # normalized CIDR
    gateway: str
    ifname: str
    onlink: bool = False


@dataclass(frozen=True)
class FdbSpec:
    mac: str
    dst: str  # remote underlay address


@dataclass(frozen=True)
class NeighSpec:
    ip: str
    mac: str


@dataclass
class Desired:
    routes: Dict[str, RouteSpec] = field(default_factory=dict)  # dst -> route
    fdb: Set[FdbSpec] = field(default_factory=set)
    neighbours: Set[NeighSpec] = field(default_factory=set)
    vtep_addresses: List[str] = field(default_factory=list)  # "addr/prefixlen" for our VXLAN device
    unreachable: Dict[str, str] = field(default_factory=dict)  # node -> why (some of) its podCIDRs have no route
    pending: Dict[str, str] = field(default_factory=dict)  # vxlan: node routed by host-gw until its VTEP is known
    cluster_cidrs: List[str] = field(default_factory=list)  # every node's podCIDRs, sorted


def normalize(cidr: str) -> Optional[str]:
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        return None


def vtep_address(cidr: str) -> str:
    """A node's VTEP address on the overlay: the network address of its podCIDR."""
    return str(ipaddress.ip_network(cidr, strict=False).network_address)


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def on_link(ip: str, subnets: Sequence[Subnet]) -> Optional[Subnet]:
    """The connected subnet holding `ip` (longest prefix first), or None."""
    addr = ipaddress.ip_address(ip)
    best: Optional[Tuple[int, Subnet]] = None
    for subnet in subnets:
        net = ipaddress.ip_network(subnet.network, strict=False)
        if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, subnet)
    return best[1] if best else None


def underlay_ip(node: NodeInfo, family: int) -> Optional[str]:
    for ip in node.internal_ips:
        try:
            if _family(ip) == family:
                return ip
        except ValueError:
            continue
    return None


def _host_gw_route(node: NodeInfo, cidr: str, subnets: Sequence[Subnet]) -> Tuple[Optional[RouteSpec], str]:
    family = ipaddress.ip_network(cidr).version
    gateway = underlay_ip(node, family)
    if gateway is None:
        return None, f"no IPv{family} InternalIP for podCIDR {cidr}"
    subnet = on_link(gateway, subnets)
    if subnet is None:
        return None, (f"InternalIP {gateway} is in none of this node's connected subnets "
                      f"(not on the same L2 segment: host-gw cannot reach it; use the vxlan backend)")
    return RouteSpec(cidr, gateway, subnet.ifname), ""


def compute(local_name: str, nodes: Mapping[str, NodeInfo], backend: str, subnets: Sequence[Subnet],
            vxlan_device: str = "", underlay_family: int = 4) -> Desired:
    """The desired kernel state of node `local_name`; problems go to `Desired.unreachable`."""
    out = Desired()
    local = nodes.get(local_name)
    local_cidrs = {c for c in map(normalize, local.pod_cidrs if local else ()) if c}
    all_cidrs: Set[str] = set(local_cidrs)
    taken: Dict[str, str] = {c: local_name for c in local_cidrs}
    if backend == "vxlan":
        for cidr in sorted(local_cidrs):
            out.vtep_addresses.append(f"{vtep_address(cidr)}/{ipaddress.ip_network(cidr).max_prefixlen}")
    for name in sorted(nodes):
        if name == local_name:
            continue
        node = nodes[name]
        cidrs = [c for c in map(normalize, node.pod_cidrs) if c]
        all_cidrs.update(cidrs)
        if not cidrs:
            out.unreachable[name] = "no podCIDR assigned yet"
            continue
        problems: List[str] = []
        vx_ready = backend == "vxlan" and node.vtep_mac is not None
        remote_underlay = underlay_ip(node, underlay_family) if backend == "vxlan" else None
        for cidr in cidrs:
            if cidr in taken:
                problems.append(f"podCIDR {cidr} is also {taken[cidr]}'s")
                continue
            if vx_ready and remote_underlay is not None:
                vtep = vtep_address(cidr)
                out.routes[cidr] = RouteSpec(cidr, vtep, vxlan_device, onlink=True)
                out.neighbours.add(NeighSpec(vtep, node.vtep_mac or ""))
                out.fdb.add(FdbSpec(node.vtep_mac or "", remote_underlay))
                taken[cidr] = name
                continue
            route, why = _host_gw_route(node, cidr, subnets)
            if backend == "vxlan":
                lack = (f"no IPv{underlay_family} InternalIP for the VXLAN underlay" if node.vtep_mac
                        else f"no VTEP MAC published yet (annotation {VTEP_MAC_ANNOTATION})")
                if route is not None:
                    out.pending[name] = f"{lack}: host-gw route meanwhile"
                why = f"{lack}; host-gw fallback impossible: {why}"
            if route is None:
                problems.append(why)
                continue
            out.routes[cidr] = route
            taken[cidr] = name
        if problems:
            out.unreachable[name] = "; ".join(problems)
    out.cluster_cidrs = sorted(all_cidrs, key=lambda c: (ipaddress.ip_network(c).version, ipaddress.ip_network(c)))
    return out
