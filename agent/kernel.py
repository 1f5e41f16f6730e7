"""Netlink state the agent owns, through pyroute2 (a long-running process: the import cost is paid once).

Ownership marks, so nothing else on the host is ever touched:
- routes: protocol PROTO (156, shown by `ip route` as "proto 156"); only routes with it are
  deleted or replaced, and a route another party installed for the same prefix is left alone;
- the VXLAN device: created by the agent with the alias ALIAS; only a device with that alias
  is reconfigured or deleted, and FDB/neighbour entries are only ever changed on it.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from .desired import FdbSpec, NeighSpec, RouteSpec, Subnet

PROTO = 156  # 0x9c: pycni-agent's route protocol number
ALIAS = "pycni-agent vxlan"
MAIN_TABLE = 254
RTNH_F_ONLINK = 4
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7


class KernelError(Exception):
    """A netlink request failed; the message says which."""


@dataclass(frozen=True)
class RouteState:
    dst: str
    gateway: Optional[str]
    oif: Optional[int]
    onlink: bool
    priority: int
    proto: int

    def matches(self, spec: RouteSpec, oif: int) -> bool:
        return (self.gateway == spec.gateway and self.oif == oif and self.onlink == spec.onlink
                and self.priority == 0)


@dataclass(frozen=True)
class VxlanLink:
    index: int
    kind: str
    alias: str
    mac: str
    mtu: int
    up: bool
    vni: Optional[int]
    port: Optional[int]
    local: Optional[str]
    link: Optional[int]

    @property
    def ours(self) -> bool:
        return self.kind == "vxlan" and self.alias == ALIAS


def _fail(what: str, exc: Exception) -> KernelError:
    return KernelError(f"{what}: {exc}")


class Kernel:
    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    # ---- links and addresses --------------------------------------------------------------
    def ifindex(self, name: str) -> Optional[int]:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def _links(self) -> Dict[int, Any]:
        return {link["index"]: link for link in self.ipr.get_links()}

    def subnets(self, exclude: Set[str]) -> List[Subnet]:
        """Directly connected subnets on links that are up (not loopback, not `exclude`, not link-local)."""
        links = self._links()
        out = []
        for addr in self.ipr.get_addr():
            link = links.get(addr["index"])
            if link is None or not link["flags"] & 1 or link["flags"] & 8:  # IFF_UP, IFF_LOOPBACK
                continue
            name = link.get("ifname")
            if name in exclude:
                continue
            net = ipaddress.ip_network(f"{addr.get('address')}/{addr['prefixlen']}", strict=False)
            if net.is_link_local or net.prefixlen == net.max_prefixlen:
                continue
            out.append(Subnet(str(net), name))
        return out

    def address_owner(self, ip: str) -> Optional[Tuple[int, str, int]]:
        """(ifindex, ifname, mtu) of the interface holding `ip`."""
        links = self._links()
        for addr in self.ipr.get_addr():
            if addr.get("address") == ip and addr["index"] in links:
                link = links[addr["index"]]
                return link["index"], link.get("ifname"), link.get("mtu")
        return None

    def vxlan_link(self, name: str) -> Optional[VxlanLink]:
        index = self.ifindex(name)
        if index is None:
            return None
        link = self.ipr.get_links(index)[0]
        info = link.get("linkinfo")
        kind = info.get("kind") if info else ""
        data = (info.get("data") if info else None) or None
        get = (lambda key: data.get(key)) if data is not None and hasattr(data, "get") else (lambda key: None)
        return VxlanLink(index=index, kind=kind or "", alias=link.get("ifalias") or "",
                         mac=(link.get("address") or "").lower(), mtu=link.get("mtu"),
                         up=bool(link["flags"] & 1), vni=get("vxlan_id"), port=get("vxlan_port"),
                         local=get("vxlan_local") or get("vxlan_local6"), link=get("vxlan_link"))

    def create_vxlan(self, name: str, vni: int, port: int, local: str, underlay_index: int, mtu: int) -> None:
        local_key = "vxlan_local6" if ipaddress.ip_address(local).version == 6 else "vxlan_local"
        try:
            self.ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=port,
                          vxlan_learning=0, vxlan_link=underlay_index, **{local_key: local})
            index = self.ifindex(name)
            self.ipr.link("set", index=index, ifalias=ALIAS)
            self.ipr.link("set", index=index, mtu=mtu, state="up")
        except Exception as exc:
            raise _fail(f"creating VXLAN device {name} (vni {vni}, port {port}, local {local})", exc) from None

    def set_mtu_up(self, index: int, mtu: int) -> None:
        try:
            self.ipr.link("set", index=index, mtu=mtu, state="up")
        except Exception as exc:
            raise _fail(f"setting MTU {mtu} on link {index}", exc) from None

    def delete_link(self, index: int) -> None:
        try:
            self.ipr.link("del", index=index)
        except Exception as exc:
            raise _fail(f"deleting link {index}", exc) from None

    def addresses(self, index: int) -> Set[str]:
        return {f"{a.get('address')}/{a['prefixlen']}" for a in self.ipr.get_addr(index=index)
                if not ipaddress.ip_address(a.get("address")).is_link_local}

    def set_address(self, index: int, cidr: str, add: bool) -> None:
        addr, _, plen = cidr.partition("/")
        try:
            self.ipr.addr("add" if add else "del", index=index, address=addr, prefixlen=int(plen))
        except Exception as exc:
            raise _fail(f"{'adding' if add else 'removing'} address {cidr}", exc) from None

    # ---- routes ---------------------------------------------------------------------------
    def main_routes(self) -> Tuple[List[RouteState], Dict[str, int]]:
        """(our routes in the main table, {dst: protocol} of everyone else's unicast routes there)."""
        owned: List[RouteState] = []
        foreign: Dict[str, int] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in self.ipr.get_routes(family=family):
                table = r.get("table") or r["table"]
                if table != MAIN_TABLE or r["type"] != 1:  # RTN_UNICAST
                    continue
                dst = f"{r.get('dst') or ('0.0.0.0' if family == socket.AF_INET else '::')}/{r['dst_len']}"
                if r["proto"] == PROTO:
                    owned.append(RouteState(dst, r.get("gateway"), r.get("oif"), bool(r["flags"] & RTNH_F_ONLINK),
                                            r.get("priority") or 0, r["proto"]))
                else:
                    foreign.setdefault(dst, r["proto"])
        return owned, foreign

    def replace_route(self, spec: RouteSpec, oif: int) -> None:
        try:
            self.ipr.route("replace", dst=spec.dst, gateway=spec.gateway, oif=oif, proto=PROTO,
                           table=MAIN_TABLE, flags=RTNH_F_ONLINK if spec.onlink else 0)
        except Exception as exc:
            raise _fail(f"route {spec.dst} via {spec.gateway} dev {spec.ifname}", exc) from None

    def delete_route(self, route: RouteState) -> None:
        """Delete one of OUR routes; the protocol in the request makes the kernel spare any other."""
        kwargs: Dict[str, Any] = {"dst": route.dst, "proto": PROTO, "table": MAIN_TABLE}
        if route.priority:
            kwargs["priority"] = route.priority
        try:
            self.ipr.route("del", **kwargs)
        except Exception as exc:
            raise _fail(f"deleting route {route.dst} proto {PROTO}", exc) from None

    # ---- neighbours and FDB (only on our VXLAN device) ------------------------------------
    def neighbours(self, index: int) -> Set[NeighSpec]:
        out = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for n in self.ipr.get_neighbours(family=family, ifindex=index):
                if n["ifindex"] == index and n["state"] & NUD_PERMANENT and n.get("lladdr"):
                    out.add(NeighSpec(n.get("dst"), n.get("lladdr").lower()))
        return out

    def set_neighbour(self, index: int, entry: NeighSpec, add: bool) -> None:
        try:
            if add:
                self.ipr.neigh("replace", dst=entry.ip, lladdr=entry.mac, ifindex=index, state=NUD_PERMANENT)
            else:
                self.ipr.neigh("del", dst=entry.ip, ifindex=index)
        except Exception as exc:
            raise _fail(f"{'adding' if add else 'removing'} neighbour {entry.ip} lladdr {entry.mac}", exc) from None

    def fdb(self, index: int) -> Set[FdbSpec]:
        return {FdbSpec(e.get("lladdr").lower(), e.get("dst")) for e in self.ipr.fdb("dump", ifindex=index)
                if e["ifindex"] == index and e.get("dst") and e.get("lladdr")}

    def set_fdb(self, index: int, entry: FdbSpec, add: bool) -> None:
        try:
            self.ipr.fdb("append" if add else "del", ifindex=index, lladdr=entry.mac, dst=entry.dst)
        except Exception as exc:
            raise _fail(f"{'adding' if add else 'removing'} FDB entry {entry.mac} dst {entry.dst}", exc) from None
