"""The MTU of the host's default-route interface (the installer runs with hostNetwork)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

FALLBACK_MTU = 1500


def default_route_interface(proc: Path = Path("/proc/net")) -> Optional[str]:
    """The interface of the IPv4 default route with the lowest metric, else the IPv6 one."""
    best: Optional[Tuple[int, str]] = None
    try:
        lines = (proc / "route").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        f = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; flags 0x1 = RTF_UP
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & 1:
            candidate = (int(f[6]), f[0])
            best = candidate if best is None or candidate < best else best
    if best:
        return best[1]
    try:
        lines = (proc / "ipv6_route").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        f = line.split()
        # dest dest_len src src_len nexthop metric refcnt use flags iface
        if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo":
            candidate = (int(f[5], 16), f[9])
            best = candidate if best is None or candidate < best else best
    return best[1] if best else None


def interface_mtu(ifname: str, sys_net: Path = Path("/sys/class/net")) -> Optional[int]:
    try:
        return int((sys_net / ifname / "mtu").read_text().strip())
    except (OSError, ValueError):
        return None


def host_mtu() -> Tuple[int, str]:
    """(mtu, where it came from)."""
    ifname = default_route_interface()
    if ifname:
        mtu = interface_mtu(ifname)
        if mtu:
            return mtu, f"default-route interface {ifname}"
    return FALLBACK_MTU, "no default route found: fallback"
