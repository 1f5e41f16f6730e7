"""pycni-host-local configuration: the reference host-local's keys, decoded and validated.

Keys (inside `ipam`): `ranges` (list of range sets, each a list of
`{subnet, rangeStart, rangeEnd, gateway}`), the legacy single range at the
top of `ipam`, `routes`, `dataDir`, `resolvConf`. Range sets from the
`ipRanges` capability come first, then the legacy range, then `ranges`,
as in the reference. Every problem is a CNIError(7) naming the bad value.
"""
from __future__ import annotations

import ipaddress
import os
from pycni.plugins.core.record import FrozenRecord, Record

from pycni.plugins.core.config import NetConf
from pycni.plugins.core.errors import INVALID_CONFIG, CNIError
from pycni.plugins.core.result import DNS, Route

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
    from pycni.plugins.core.result import IPAddress, IPNetwork

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, msg)


def _address(where: str, value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise _bad(f"{where}: expected an IP address string, got {value!r}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise _bad(f"{where}: invalid IP address {value!r}") from None


class IPRange(FrozenRecord):
    """One range of a range set, with the reference's defaults filled in."""

    __slots__ = ("subnet", "start", "end", "gateway")
    subnet: IPNetwork
    start: int  # first address, inclusive, as an integer
    end: int  # last address, inclusive
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    def excluded(self) -> Tuple[int, ...]:
        """Addresses never handed out: the network address, the IPv4 broadcast, the gateway."""
        out = [int(self.subnet.network_address), int(self.gateway)]
        if self.version == 4:
            out.append(int(self.subnet.broadcast_address))
        return tuple(out)

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.version and self.start <= int(ip) <= self.end

    def capacity(self) -> int:
        skipped = {x for x in self.excluded() if self.start <= x <= self.end}
        return self.end - self.start + 1 - len(skipped)

    def overlaps(self, other: "IPRange") -> bool:
        return self.version == other.version and self.start <= other.end and other.start <= self.end

    def describe(self) -> str:
        cls = ipaddress.ip_address
        return f"{cls(self.start)}-{cls(self.end)}"

    def interface(self, ip: IPAddress) -> Any:
        """The address with this range's prefix length, as a result carries it."""
        return ipaddress.ip_interface(f"{ip}/{self.subnet.prefixlen}")


class RangeSet(FrozenRecord):
    """A list of ranges of one family; ADD takes one address from each set."""

    __slots__ = ("ranges",)
    ranges: Tuple[IPRange, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, ip: IPAddress) -> Optional[IPRange]:
        for r in self.ranges:
            if r.contains(ip):
                return r
        return None

    def describe(self) -> str:
        return ",".join(r.describe() for r in self.ranges)

    def capacity(self) -> int:
        return sum(r.capacity() for r in self.ranges)

    def candidates(self, last: Optional[IPAddress]) -> Iterator[Tuple[IPAddress, IPRange]]:
        """Every allocatable address once, round-robin: after `last` when it is in the set, wrapping.

        The reference's iterator, over integers: network, broadcast and gateway are skipped.
        """
        ranges = self.ranges
        first_range, first_ip = 0, ranges[0].start
        if last is not None:
            for i, r in enumerate(ranges):
                if r.contains(last):
                    first_range, first_ip = i, int(last) + 1
                    if first_ip > r.end:
                        first_range = (i + 1) % len(ranges)
                        first_ip = ranges[first_range].start
                    break
        n = len(ranges)
        head = ranges[first_range]
        segments: List[Tuple[IPRange, Optional[int], Optional[int]]] = [(head, first_ip, head.end)]
        segments += [(ranges[(first_range + k) % n], None, None) for k in range(1, n)]
        segments.append((head, head.start, first_ip - 1))  # wrapped around to where we began
        make = ipaddress.ip_address
        for r, begin, stop in segments:
            begin = r.start if begin is None else begin
            stop = r.end if stop is None else stop
            skip = r.excluded()
            x = begin
            while x <= stop:
                if x not in skip:
                    yield make(x), r
                x += 1


def _parse_range(where: str, raw: Any) -> IPRange:
    if not isinstance(raw, dict):
        raise _bad(f"{where}: expected an object with `subnet`, got {raw!r}")
    subnet_text = raw.get("subnet")
    if not isinstance(subnet_text, str) or not subnet_text:
        raise _bad(f"{where}.subnet: missing or not a string: {subnet_text!r}")
    try:
        iface = ipaddress.ip_interface(subnet_text)
    except ValueError:
        raise _bad(f"{where}.subnet: invalid CIDR {subnet_text!r}") from None
    subnet = iface.network
    if iface.ip != subnet.network_address:
        raise _bad(f"{where}.subnet: {subnet_text!r} has host bits set (the network address is {subnet})")
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise _bad(f"{where}.subnet: network {subnet_text} is too small to allocate from")
    if isinstance(subnet, ipaddress.IPv6Network) and subnet.network_address.ipv4_mapped is not None:
        raise _bad(f"{where}.subnet: IPv4-mapped IPv6 subnet {subnet_text!r} is not supported")

    def in_subnet(key: str, default: IPAddress) -> IPAddress:
        if raw.get(key) in (None, ""):
            return default
        ip = _address(f"{where}.{key}", raw[key])
        if ip.version != subnet.version or ip not in subnet:
            raise _bad(f"{where}.{key}: {ip} is not in network {subnet}")
        return ip

    gateway = subnet.network_address + 1
    if raw.get("gateway") not in (None, ""):
        gateway = _address(f"{where}.gateway", raw["gateway"])
        if gateway.version != subnet.version:
            raise _bad(f"{where}.gateway: {gateway} is not of the same family as {subnet}")
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    start = in_subnet("rangeStart", subnet.network_address + 1)
    end = in_subnet("rangeEnd", last)
    if int(start) > int(end):
        raise _bad(f"{where}: rangeStart {start} is after rangeEnd {end}")
    rng = IPRange(subnet=subnet, start=int(start), end=int(end), gateway=gateway)
    if rng.capacity() < 1:
        raise _bad(f"{where}: range {rng.describe()} has no allocatable address")
    return rng


def _parse_range_set(where: str, raw: Any) -> RangeSet:
    if not isinstance(raw, list) or not raw:
        raise _bad(f"{where}: a range set must be a non-empty list of ranges, got {raw!r}")
    ranges = tuple(_parse_range(f"{where}[{i}]", r) for i, r in enumerate(raw))
    for i, r in enumerate(ranges):
        if r.version != ranges[0].version:
            raise _bad(f"{where}: mixed address families ({ranges[0].subnet} and {r.subnet})")
        for j in range(i):
            if ranges[j].overlaps(r):
                raise _bad(f"{where}: ranges {ranges[j].describe()} and {r.describe()} overlap")
    return RangeSet(ranges)


def _parse_routes(raw: Any) -> List[Route]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(f"ipam.routes: expected a list, got {raw!r}")
    routes = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("dst"), str):
            raise _bad(f"ipam.routes[{i}]: expected {{dst, gw}}, got {item!r}")
        try:
            dst = ipaddress.ip_network(item["dst"], strict=False)
        except ValueError:
            raise _bad(f"ipam.routes[{i}].dst: invalid CIDR {item['dst']!r}") from None
        gw = _address(f"ipam.routes[{i}].gw", item["gw"]) if item.get("gw") else None
        if gw is not None and gw.version != dst.version:
            raise _bad(f"ipam.routes[{i}]: gw {gw} and dst {dst} are of different families")
        routes.append(Route(dst=dst, gw=gw))
    return routes


def _path(key: str, value: Any, default: str) -> str:
    if value in (None, ""):
        return default
    if not isinstance(value, str) or "\0" in value:
        raise _bad(f"ipam.{key}: expected a path string, got {value!r}")
    if not os.path.isabs(value):
        raise _bad(f"ipam.{key}: {value!r} must be an absolute path")
    return os.path.normpath(value)


def _requested(where: str, values: Sequence[str]) -> List[IPAddress]:
    out = []
    for value in values:
        text = value.strip()
        try:  # the `ips` capability carries a prefix length ("10.1.0.5/24"): only the address counts
            out.append(ipaddress.ip_interface(text).ip)
        except ValueError:
            raise _bad(f"{where}: invalid IP address {value!r}") from None
    return out


class HostLocalConfig(Record):
    __slots__ = ("network", "range_sets", "routes", "data_dir", "resolv_conf")
    _defaults = {"routes": list, "data_dir": DEFAULT_DATA_DIR, "resolv_conf": ""}
    network: str
    range_sets: List[RangeSet]
    routes: List[Route]
    data_dir: str
    resolv_conf: str


def requested_addresses(conf: NetConf, cni_args_ip: Optional[str]) -> List[IPAddress]:
    """Addresses asked for by the `ips` capability, `args.cni.ips` and CNI_ARGS `IP=`, each once.

    CONVENTIONS.md: when `args` and CNI_ARGS say the same thing, `args` wins.
    """
    requested: List[IPAddress] = []
    if conf.args.ips:
        requested += _requested("args.cni.ips", conf.args.ips)
    elif cni_args_ip:
        requested += _requested("CNI_ARGS IP", cni_args_ip.split(","))
    requested += _requested("runtimeConfig.ips", conf.runtime_config.ips)
    return list(dict.fromkeys(requested))


def load(conf: NetConf) -> HostLocalConfig:
    """Decode the `ipam` object of `conf` (requested addresses come from requested_addresses)."""
    ipam: Dict[str, Any] = conf.ipam
    if not ipam:
        raise _bad("ipam: missing (host-local reads its configuration from the `ipam` object)")
    raw_sets: List[Tuple[str, Any]] = []
    for i, s in enumerate(conf.runtime_config.ip_ranges):
        raw_sets.append((f"runtimeConfig.ipRanges[{i}]", s))
    legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
    if legacy.get("subnet") not in (None, ""):
        raw_sets.append(("ipam", [legacy]))
    elif legacy:
        raise _bad(f"ipam: {sorted(legacy)} given without `subnet`")
    ranges = ipam.get("ranges")
    if ranges is not None and not isinstance(ranges, list):
        raise _bad(f"ipam.ranges: expected a list of range sets, got {ranges!r}")
    for i, s in enumerate(ranges or []):
        raw_sets.append((f"ipam.ranges[{i}]", s))
    if not raw_sets:
        raise _bad("ipam: no IP ranges specified (set `ranges` or `subnet`)")
    sets = [_parse_range_set(where, s) for where, s in raw_sets]
    for i, a in enumerate(sets):
        for j in range(i):
            if any(x.overlaps(y) for x in sets[j].ranges for y in a.ranges):
                raise _bad(f"{raw_sets[i][0]} ({a.describe()}) overlaps with {raw_sets[j][0]} ({sets[j].describe()})")
    resolv = ipam.get("resolvConf")
    return HostLocalConfig(
        network=conf.name,
        range_sets=sets,
        routes=_parse_routes(ipam.get("routes")),
        data_dir=_path("dataDir", ipam.get("dataDir"), DEFAULT_DATA_DIR),
        resolv_conf=_path("resolvConf", resolv, "") if resolv else "",
    )


def read_resolv_conf(path: str) -> DNS:
    """The `dns` of a result from a resolv.conf file, parsed as the reference does."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise _bad(f"ipam.resolvConf: cannot read {path}: {exc.strerror}") from None
    dns = DNS()
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0][0] in "#;":
            continue
        if fields[0] == "nameserver":
            dns.nameservers.append(fields[1])
        elif fields[0] == "domain":
            dns.domain = fields[1]
        elif fields[0] == "search":
            dns.search.extend(fields[1:])
        elif fields[0] == "options":
            dns.options.extend(fields[1:])
    return dns
