"""One result model at spec 1.1.0, converted only at the edge (reading prevResult, printing)."""
from __future__ import annotations

import ipaddress
from pycni.plugins.core.record import Record

from pycni.plugins.core.errors import DECODE_FAILURE, CNIError
from pycni.plugins.core.versions import CURRENT_VERSION, at_least, require_supported

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Union

    # For annotations only: import them under TYPE_CHECKING too.
    IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
    IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
    IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _bad(what: str, value: Any) -> CNIError:
    return CNIError(DECODE_FAILURE, f"result: invalid {what}: {value!r}")


def _parse(kind: Any, what: str, value: Any) -> Any:
    try:
        return kind(value)
    except (ValueError, TypeError):
        raise _bad(what, value) from None


def _int_or_none(what: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(what, value)
    return value


class Interface(Record):
    __slots__ = ("name", "mac", "sandbox", "mtu", "socket_path", "pci_id")
    _defaults = {"mac": "", "sandbox": "", "mtu": None, "socket_path": "", "pci_id": ""}
    name: str
    mac: str
    sandbox: str
    mtu: Optional[int]  # 1.1.0
    socket_path: str  # 1.1.0
    pci_id: str  # 1.1.0

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Interface":
        if not isinstance(d, dict) or not isinstance(d.get("name", ""), str):
            raise _bad("interface", d)
        return cls(
            name=d.get("name", ""),
            mac=d.get("mac", "") or "",
            sandbox=d.get("sandbox", "") or "",
            mtu=_int_or_none("interface mtu", d.get("mtu")),
            socket_path=d.get("socketPath", "") or "",
            pci_id=d.get("pciID", "") or "",
        )

    def to_dict(self, version: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if at_least(version, "1.1.0"):
            if self.mtu:
                out["mtu"] = self.mtu
            if self.socket_path:
                out["socketPath"] = self.socket_path
            if self.pci_id:
                out["pciID"] = self.pci_id
        return out


class IPConfig(Record):
    __slots__ = ("address", "gateway", "interface")
    _defaults = {"gateway": None, "interface": None}
    address: IPInterface
    gateway: Optional[IPAddress]
    interface: Optional[int]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "IPConfig":
        if not isinstance(d, dict) or "address" not in d:
            raise _bad("ips entry", d)
        gateway = d.get("gateway")
        return cls(
            address=_parse(ipaddress.ip_interface, "address", d["address"]),
            gateway=_parse(ipaddress.ip_address, "gateway", gateway) if gateway else None,
            interface=_int_or_none("ips interface", d.get("interface")),
        )

    def to_dict(self, version: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if not at_least(version, "1.0.0"):
            out["version"] = str(self.address.version)
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = str(self.address)
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        return out


class Route(Record):
    __slots__ = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
    _defaults = {"gw": None, "mtu": None, "advmss": None, "priority": None, "table": None, "scope": None}
    dst: IPNetwork
    gw: Optional[IPAddress]
    mtu: Optional[int]  # 1.1.0 from here on
    advmss: Optional[int]
    priority: Optional[int]
    table: Optional[int]
    scope: Optional[int]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Route":
        if not isinstance(d, dict) or "dst" not in d:
            raise _bad("route", d)
        gw = d.get("gw")
        return cls(
            dst=_parse(lambda v: ipaddress.ip_network(v, strict=False), "route dst", d["dst"]),
            gw=_parse(ipaddress.ip_address, "route gw", gw) if gw else None,
            mtu=_int_or_none("route mtu", d.get("mtu")),
            advmss=_int_or_none("route advmss", d.get("advmss")),
            priority=_int_or_none("route priority", d.get("priority")),
            table=_int_or_none("route table", d.get("table")),
            scope=_int_or_none("route scope", d.get("scope")),
        )

    def to_dict(self, version: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        if at_least(version, "1.1.0"):
            for key in ("mtu", "advmss", "priority", "table", "scope"):
                value = getattr(self, key)
                if value is not None:
                    out[key] = value
        return out


class DNS(Record):
    __slots__ = ("nameservers", "domain", "search", "options")
    _defaults = {"nameservers": list, "domain": "", "search": list, "options": list}
    nameservers: List[str]
    domain: str
    search: List[str]
    options: List[str]

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "DNS":
        if not d:
            return cls()
        if not isinstance(d, dict):
            raise _bad("dns", d)
        lists = {}
        for key in ("nameservers", "search", "options"):
            value = d.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _bad(f"dns {key}", value)
            lists[key] = list(value)
        domain = d.get("domain", "") or ""
        if not isinstance(domain, str):
            raise _bad("dns domain", domain)
        return cls(domain=domain, **lists)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


class Result(Record):
    """An ADD result (also an IPAM result, which has no interfaces)."""

    __slots__ = ("interfaces", "ips", "routes", "dns")
    _defaults = {"interfaces": list, "ips": list, "routes": list, "dns": DNS}
    interfaces: List[Interface]
    ips: List[IPConfig]
    routes: List[Route]
    dns: DNS

    @classmethod
    def from_dict(cls, d: Any) -> "Result":
        """Read a result of any supported version (0.3.0 to 1.1.0)."""
        if not isinstance(d, dict):
            raise _bad("result", d)
        version = d.get("cniVersion", CURRENT_VERSION)
        if not isinstance(version, str):
            raise _bad("result cniVersion", version)
        require_supported(version)
        for key in ("interfaces", "ips", "routes"):
            if d.get(key) is not None and not isinstance(d[key], list):
                raise _bad(key, d[key])
        return cls(
            interfaces=[Interface.from_dict(i) for i in d.get("interfaces") or []],
            ips=[IPConfig.from_dict(i) for i in d.get("ips") or []],
            routes=[Route.from_dict(r) for r in d.get("routes") or []],
            dns=DNS.from_dict(d.get("dns")),
        )

    def to_dict(self, version: str) -> Dict[str, Any]:
        """Print at `version`: ips[].version below 1.0.0, no 1.1.0-only fields below 1.1.0."""
        require_supported(version)
        out: Dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(version) for i in self.interfaces]
        if self.ips:
            out["ips"] = [i.to_dict(version) for i in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict(version) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out
