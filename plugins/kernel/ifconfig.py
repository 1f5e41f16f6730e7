"""Apply (and check) an IPAM result's addresses and routes on one interface, inside its netns.

Used by bridge and macvlan: the caller has a socket bound in the container's
namespace and the interface's index; everything goes out in one netlink batch.
"""
from __future__ import annotations

import ipaddress

from pycni.plugins.kernel import netlink as nl
from pycni.plugins.core.errors import INTERNAL, INVALID_CONFIG, CNIError
from pycni.plugins.core.result import Interface, IPConfig, Result, Route

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import List, Optional, Tuple


def _required(prev: Optional[Result]) -> Result:
    if prev is None:
        raise CNIError(INVALID_CONFIG, "CHECK needs a prevResult")
    return prev


def container_interface(prev: Optional[Result], ifname: str) -> Tuple[int, Interface]:
    """CHECK's starting point: the position and entry of the container interface in prevResult."""
    prev = _required(prev)
    position = next((i for i, itf in enumerate(prev.interfaces) if itf.name == ifname and itf.sandbox), None)
    if position is None:
        raise CNIError(INTERNAL, f"prevResult has no interface {ifname!r} in a sandbox")
    return position, prev.interfaces[position]


def _ips_for(result: Result, if_position: int) -> List[IPConfig]:
    """The ips[] entries that belong to the interface at `if_position` (no index = all of them)."""
    return [ip for ip in result.ips if ip.interface is None or ip.interface == if_position]


def _gateways(ips: List[IPConfig]):
    v4 = next((ip.gateway for ip in ips if ip.gateway is not None and ip.gateway.version == 4), None)
    v6 = next((ip.gateway for ip in ips if ip.gateway is not None and ip.gateway.version == 6), None)
    return v4, v6


def route_gateway(route: Route, ips: List[IPConfig]) -> Optional[str]:
    """The route's gw, or (as the reference's ConfigureIface) the interface's gateway of that family."""
    if route.gw is not None:
        return str(route.gw)
    v4, v6 = _gateways(ips)
    gw = v4 if route.dst.version == 4 else v6
    return str(gw) if gw is not None else None


def configure_requests(result: Result, index: int, if_position: int, nodad: bool, up: bool = True) -> List[nl.Request]:
    """Link up, every address, then every route, as one batch (order matters: routes need the addresses)."""
    ips = _ips_for(result, if_position)
    requests: List[nl.Request] = []
    if up:
        requests.append(nl.change_request("set link up", index, set_flags=nl.IFF_UP))
    for ip in ips:
        requests.append(nl.addr_request(nl.RTM_NEWADDR, index, str(ip.address.ip), ip.address.network.prefixlen,
                                        nodad=nodad and ip.address.version == 6))
    for route in result.routes:
        gw = route_gateway(route, ips)
        requests.append(nl.route_request(index, str(route.dst.network_address), route.dst.prefixlen, gw or "",
                                         mtu=route.mtu, advmss=route.advmss, priority=route.priority,
                                         table=route.table, scope=route.scope))
    return requests


def configure(sock: nl.RtSocket, result: Result, index: int, if_position: int, nodad: bool) -> None:
    try:
        sock.batch(configure_requests(result, index, if_position, nodad))
    except nl.NetlinkError as exc:
        raise CNIError(INTERNAL, f"failed to configure interface: {exc.strerror}") from None


def check(sock: nl.RtSocket, result: Optional[Result], index: int, ifname: str, if_position: int) -> None:
    """Every address of the result on the interface, every route present (CHECK); raise naming what's missing."""
    result = _required(result)
    ips = _ips_for(result, if_position)
    have = {(a.address, a.prefixlen) for a in sock.addresses(index=index)}
    for ip in ips:
        key = (str(ip.address.ip), ip.address.network.prefixlen)
        if key not in have:
            raise CNIError(INTERNAL, f"address {ip.address} is missing on {ifname}")
    if not result.routes:
        return
    present = set()
    for entry in sock.routes():
        if entry.oif == index:
            present.add((str(ipaddress.ip_network(entry.dst, strict=False)), entry.gateway))
    for route in result.routes:
        gw = route_gateway(route, ips) or ""
        wanted = (str(route.dst), str(ipaddress.ip_address(gw)) if gw else "")
        if wanted not in present:
            raise CNIError(INTERNAL, f"route {route.dst}" + (f" via {gw}" if gw else "") + f" is missing on {ifname}")
