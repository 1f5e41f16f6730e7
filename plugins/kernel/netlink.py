"""A small rtnetlink client on the standard library: links, addresses, routes, network namespaces.

Why not pyroute2: importing it costs 140-450 ms per exec (it pulls in asyncio),
while the whole ADD of a plugin should take a few tens of milliseconds. The
handful of requests a CNI plugin makes are encoded here with `struct`, several
per round trip where the kernel allows (see `RtSocket.batch`).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from contextlib import contextmanager

from pycni.plugins.core.record import Record

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Dict, Iterator, List, Optional, Sequence, Tuple

    # (message type, extra flags, payload, what it does, for errors); for annotations only
    Request = Tuple[int, int, bytes, str]

# netlink header and flags
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 270, 10, 11, 12

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

# link attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS = 12, 16, 18, 20
IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 26, 28, 29, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 4, 33  # hairpin mode is IFLA_BRPORT_MODE
IFLA_MACVLAN_MODE, IFLA_MACVLAN_BC_QUEUE_LEN = 1, 7
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
IFLA_BRIDGE_VLAN_INFO = 2
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4
BRIDGE_VLAN_INFO_RANGE_BEGIN, BRIDGE_VLAN_INFO_RANGE_END = 0x8, 0x10
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP, IFF_PROMISC = 0x1, 0x100
AF_BRIDGE = 7

# address and route attributes
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD, IFA_F_PERMANENT = 0x02, 0x80
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 8, 15
RTAX_MTU, RTAX_ADVMSS = 2, 8
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

CLONE_NEWNET = 0x40000000
_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")


class NetlinkError(OSError):
    """A request the kernel refused; `errno` is the kernel's error, the message names the request."""


# ---------------------------------------------------------------- encoding

def nla(kind: int, data: bytes) -> bytes:
    size = _NLA.size + len(data)
    return _NLA.pack(size, kind) + data + b"\0" * (-size % 4)


def nla_str(kind: int, text: str) -> bytes:
    return nla(kind, text.encode() + b"\0")


def nla_u8(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=B", value))


def nla_u32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=I", value))


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return _IFINFO.pack(family, 0, index, flags, change)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_str(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def random_mac() -> str:
    """A random unicast, locally administered MAC (what the kernel would pick, chosen here to save a read-back)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return mac_str(bytes(raw))


# ---------------------------------------------------------------- decoding

def parse_attrs(data: bytes, offset: int = 0) -> Dict[int, bytes]:
    """Attributes from `offset` on, by type (NLA_F_NESTED/BYTEORDER bits stripped; the last of a type wins)."""
    out: Dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        size, kind = _NLA.unpack_from(data, offset)
        if size < 4:
            break
        out[kind & 0x3FFF] = bytes(data[offset + 4:offset + size])
        offset += (size + 3) & ~3
    return out


def _cstr(data: Optional[bytes]) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace") if data else ""


def _u32(data: Optional[bytes]) -> int:
    return struct.unpack("=I", data[:4])[0] if data else 0


class Link(Record):
    # parent is IFLA_LINK: the peer of a veth, the lower device of a macvlan
    __slots__ = ("index", "name", "flags", "mtu", "mac", "master", "kind", "alias", "parent", "info_data")
    index: int
    name: str
    flags: int
    mtu: int
    mac: str
    master: int
    kind: str
    alias: str
    parent: int
    info_data: Dict[int, bytes]

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @classmethod
    def decode(cls, payload: bytes) -> "Link":
        _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
        attrs = parse_attrs(payload, _IFINFO.size)
        info = parse_attrs(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
        return cls(
            index, _cstr(attrs.get(IFLA_IFNAME)), flags, _u32(attrs.get(IFLA_MTU)),
            mac_str(attrs[IFLA_ADDRESS]) if IFLA_ADDRESS in attrs else "",
            _u32(attrs.get(IFLA_MASTER)), _cstr(info.get(IFLA_INFO_KIND)),
            _cstr(attrs.get(IFLA_IFALIAS)), _u32(attrs.get(IFLA_LINK)),
            parse_attrs(info[IFLA_INFO_DATA]) if IFLA_INFO_DATA in info else {},
        )


class Addr(Record):
    __slots__ = ("family", "prefixlen", "index", "scope", "address")
    family: int
    prefixlen: int
    index: int
    scope: int
    address: str

    @classmethod
    def decode(cls, payload: bytes) -> "Addr":
        family, prefixlen, _flags, scope, index = _IFADDR.unpack_from(payload)
        attrs = parse_attrs(payload, _IFADDR.size)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS) or b""
        return cls(family, prefixlen, index, scope, socket.inet_ntop(family, raw) if raw else "")


class RouteEntry(Record):
    __slots__ = ("family", "dst", "gateway", "oif", "table")
    family: int
    dst: str  # "address/prefixlen"
    gateway: str
    oif: int
    table: int

    @classmethod
    def decode(cls, payload: bytes) -> "RouteEntry":
        family, dst_len, _src, _tos, table, _proto, _scope, _type, _flags = _RTMSG.unpack_from(payload)
        attrs = parse_attrs(payload, _RTMSG.size)
        if RTA_DST in attrs:
            dst = socket.inet_ntop(family, attrs[RTA_DST])
        else:
            dst = "0.0.0.0" if family == socket.AF_INET else "::"
        gateway = socket.inet_ntop(family, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else ""
        return cls(family, f"{dst}/{dst_len}", gateway, _u32(attrs.get(RTA_OIF)),
                   _u32(attrs.get(RTA_TABLE)) or table)


# ---------------------------------------------------------------- the socket

class RtSocket:
    """An rtnetlink socket bound in the network namespace that was current when it was made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:
                pass
        self.sock.bind((0, 0))
        self.seq = 0
        self.buf = bytearray(1 << 18)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RtSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _messages(self) -> Iterator[Tuple[int, int, int, memoryview]]:
        size = self.sock.recv_into(self.buf)
        view = memoryview(self.buf)[:size]
        offset = 0
        while offset + _HDR.size <= size:
            length, kind, flags, seq, _pid = _HDR.unpack_from(view, offset)
            if length < _HDR.size:
                break
            yield kind, flags, seq, view[offset + _HDR.size:offset + length]
            offset += (length + 3) & ~3

    def batch(self, requests: Sequence[Request], tolerate: Sequence[int] = ()) -> None:
        """Send requests in one write and wait for every ack; raise the first error not in `tolerate`."""
        out = []
        first = self.seq + 1
        for kind, flags, payload, _what in requests:
            self.seq += 1
            out.append(_HDR.pack(_HDR.size + len(payload), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0))
            out.append(payload + b"\0" * (-len(payload) % 4))
        self.sock.send(b"".join(out))
        pending = set(range(first, self.seq + 1))
        failure: Optional[NetlinkError] = None
        while pending:
            for kind, flags, seq, body in self._messages():
                if kind != NLMSG_ERROR or seq not in pending:
                    continue
                pending.discard(seq)
                code = -struct.unpack_from("=i", body)[0]
                if code and code not in tolerate and failure is None:
                    failure = self._error(code, flags, body, requests[seq - first][3])
        if failure is not None:
            raise failure

    def request(self, kind: int, flags: int, payload: bytes, what: str, tolerate: Sequence[int] = ()) -> None:
        self.batch([(kind, flags, payload, what)], tolerate)

    def _error(self, code: int, flags: int, body: memoryview, what: str) -> NetlinkError:
        detail = ""
        if flags & NLM_F_ACK_TLVS:
            # error struct: errno + the original header (capped, so payload not echoed)
            attrs = parse_attrs(bytes(body), 4 + _HDR.size)
            detail = _cstr(attrs.get(NLMSGERR_ATTR_MSG))
        text = f"{what}: {os.strerror(code)}" + (f" ({detail})" if detail else "")
        return NetlinkError(code, text)

    def dump(self, kind: int, payload: bytes, what: str) -> List[bytes]:
        self.seq += 1
        seq = self.seq
        self.sock.send(_HDR.pack(_HDR.size + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload)
        out: List[bytes] = []
        while True:
            for mtype, flags, mseq, body in self._messages():
                if mseq != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise self._error(code, flags, body, what)
                    return out
                out.append(bytes(body))

    def get(self, kind: int, payload: bytes, what: str, tolerate: Sequence[int] = ()) -> Optional[bytes]:
        """A single-object GET; None when the kernel answers with an error in `tolerate`."""
        self.seq += 1
        seq = self.seq
        self.sock.send(_HDR.pack(_HDR.size + len(payload), kind, NLM_F_REQUEST, seq, 0) + payload)
        while True:
            for mtype, flags, mseq, body in self._messages():
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code in tolerate:
                        return None
                    raise self._error(code, flags, body, what)
                return bytes(body)

    # ------------------------------------------------------------ links

    def link(self, name: str = "", index: int = 0) -> Optional[Link]:
        payload = ifinfomsg(index=index) + nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        if name:
            payload += nla_str(IFLA_IFNAME, name)
        body = self.get(RTM_GETLINK, payload, f"get link {name or index}", tolerate=(errno.ENODEV,))
        return Link.decode(body) if body is not None else None

    def links(self) -> List[Link]:
        payload = ifinfomsg() + nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        return [Link.decode(b) for b in self.dump(RTM_GETLINK, payload, "list links")]

    def delete_link(self, index: int = 0, name: str = "") -> bool:
        """Delete a link; False when it was already gone."""
        payload = ifinfomsg(index=index) + (nla_str(IFLA_IFNAME, name) if name else b"")
        try:
            self.request(RTM_DELLINK, 0, payload, f"delete link {name or index}")
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # ------------------------------------------------------------ addresses and routes

    def addresses(self, family: int = 0, index: int = 0) -> List[Addr]:
        rows = [Addr.decode(b) for b in self.dump(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0), "list addresses")]
        return [a for a in rows if not index or a.index == index]

    def routes(self, family: int = 0) -> List[RouteEntry]:
        payload = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        return [RouteEntry.decode(b) for b in self.dump(RTM_GETROUTE, payload, "list routes")]


def addr_request(kind: int, index: int, address: str, prefixlen: int, nodad: bool = False) -> Request:
    """RTM_NEWADDR / RTM_DELADDR for `address/prefixlen` on link `index`."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    flags = IFA_F_NODAD if nodad else 0
    payload = _IFADDR.pack(family, prefixlen, flags, RT_SCOPE_UNIVERSE, index)
    payload += nla(IFA_LOCAL, raw) + nla(IFA_ADDRESS, raw) + nla_u32(IFA_FLAGS, flags)
    if family == socket.AF_INET and prefixlen < 31:
        net = int.from_bytes(raw, "big") | ((1 << (32 - prefixlen)) - 1)
        payload += nla(4, net.to_bytes(4, "big"))  # IFA_BROADCAST, as `ip addr add ... brd +`
    what = f"{'add' if kind == RTM_NEWADDR else 'delete'} address {address}/{prefixlen}"
    return (kind, NLM_F_CREATE | NLM_F_EXCL if kind == RTM_NEWADDR else 0, payload, what)


def route_request(index: int, dst: str, prefixlen: int, gateway: str = "", mtu: Optional[int] = None,
                  advmss: Optional[int] = None, priority: Optional[int] = None, table: Optional[int] = None,
                  scope: Optional[int] = None) -> Request:
    """RTM_NEWROUTE in the main table (unless `table`) via link `index`."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    if family == socket.AF_INET6:
        scope = RT_SCOPE_UNIVERSE  # the kernel ignores IPv6 route scopes
    table_id = table if table is not None else RT_TABLE_MAIN
    payload = _RTMSG.pack(family, prefixlen, 0, 0, table_id if table_id < 256 else 0, RTPROT_BOOT,
                          scope, RTN_UNICAST, 0)
    payload += nla(RTA_DST, socket.inet_pton(family, dst)) + nla_u32(RTA_OIF, index)
    if table_id >= 256:
        payload += nla_u32(RTA_TABLE, table_id)
    if gateway:
        payload += nla(RTA_GATEWAY, socket.inet_pton(family, gateway))
    if priority is not None:
        payload += nla_u32(RTA_PRIORITY, priority)
    metrics = b""
    if mtu:
        metrics += nla_u32(RTAX_MTU, mtu)
    if advmss:
        metrics += nla_u32(RTAX_ADVMSS, advmss)
    if metrics:
        payload += nla(RTA_METRICS, metrics)
    what = f"add route {dst}/{prefixlen}" + (f" via {gateway}" if gateway else "")
    return (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, payload, what)


# ---------------------------------------------------------------- link requests

def linkinfo(kind: str, data: bytes = b"") -> bytes:
    return nla(IFLA_LINKINFO, nla_str(IFLA_INFO_KIND, kind) + (nla(IFLA_INFO_DATA, data) if data else b""))


def link_attrs(name: str = "", mtu: int = 0, mac: str = "", master: int = 0, netns_fd: int = -1,
               alias: str = "", parent: int = 0) -> bytes:
    """The common IFLA_* attributes of a link request; zero/empty values are left out."""
    out = nla_str(IFLA_IFNAME, name) if name else b""
    if mtu:
        out += nla_u32(IFLA_MTU, mtu)
    if mac:
        out += nla(IFLA_ADDRESS, mac_bytes(mac))
    if master:
        out += nla_u32(IFLA_MASTER, master)
    if netns_fd >= 0:
        out += nla_u32(IFLA_NET_NS_FD, netns_fd)
    if alias:
        out += nla_str(IFLA_IFALIAS, alias)
    if parent:
        out += nla_u32(IFLA_LINK, parent)
    return out


def create_request(what: str, attrs: bytes, flags: int = 0) -> Request:
    """RTM_NEWLINK creating a link (fails with EEXIST when the name is taken)."""
    return (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, ifinfomsg(flags=flags, change=flags) + attrs, what)


def change_request(what: str, index: int, attrs: bytes = b"", set_flags: int = 0, clear_flags: int = 0) -> Request:
    """RTM_NEWLINK on an existing link: flags, attributes and (via IFLA_LINKINFO) port settings at once."""
    change = set_flags | clear_flags
    return (RTM_NEWLINK, 0, ifinfomsg(index=index, flags=set_flags, change=change) + attrs, what)


def bridge_port_data(hairpin: Optional[bool] = None, isolated: Optional[bool] = None) -> bytes:
    """IFLA_LINKINFO for a bridge port's flags (as `ip link set X type bridge_slave ...`)."""
    data = b""
    if hairpin is not None:
        data += nla_u8(IFLA_BRPORT_MODE, int(hairpin))
    if isolated is not None:
        data += nla_u8(IFLA_BRPORT_ISOLATED, int(isolated))
    if not data:
        return b""
    return nla(IFLA_LINKINFO, nla_str(IFLA_INFO_SLAVE_KIND, "bridge") + nla(IFLA_INFO_SLAVE_DATA, data))


def vlan_info(vid: int, flags: int) -> bytes:
    return nla(IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", flags, vid))


def port_vlan_requests(index: int, vlan: int, trunks: Sequence[Tuple[int, int]],
                       preserve_default: bool) -> List[Request]:
    """The AF_BRIDGE requests that give bridge port `index` its VLANs (as `bridge vlan add/del`).

    `vlan` becomes the port's PVID, untagged; each (min, max) of `trunks` is
    allowed tagged; the default VLAN 1 is removed unless `preserve_default`.
    """
    out: List[Request] = []
    head = ifinfomsg(index=index, family=AF_BRIDGE)
    spec = b""
    if vlan:
        spec += vlan_info(vlan, BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED)
    for low, high in trunks:
        if low == high:
            spec += vlan_info(low, 0)
        else:
            spec += vlan_info(low, BRIDGE_VLAN_INFO_RANGE_BEGIN) + vlan_info(high, BRIDGE_VLAN_INFO_RANGE_END)
    if spec:
        out.append((RTM_SETLINK, 0, head + nla(IFLA_AF_SPEC, spec), "set port VLANs"))
    if not preserve_default:
        out.append((RTM_DELLINK, 0, head + nla(IFLA_AF_SPEC, vlan_info(1, 0)), "remove default VLAN 1"))
    return out


# ---------------------------------------------------------------- namespaces and sysctls

_LIBC = None
# Where /proc/sys is. A container whose /proc/sys is read-only (every unprivileged one) gets the
# host's /proc/sys/net bind-mounted elsewhere (the chart: /host/proc/sys/net); lookups through it
# still follow the writing thread's current netns. Read once, at import: a property of where the
# process runs, never of a request's env.
PROC_SYS = os.environ.get("PYCNI_PROC_SYS") or "/proc/sys"


def _setns(fd: int) -> None:
    global _LIBC
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes

    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


class Netns:
    """An open network namespace (by path): enter it briefly, or open sockets bound inside it."""

    def __init__(self, path: str) -> None:
        from pycni.plugins.kernel.nsfs import open_netns_fd

        self.path = path
        self.fd = -1
        self.fd = open_netns_fd(path)  # never blocks; NotANetns for anything but a network namespace

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with this thread in the namespace (sockets and /proc/sys opened there stay there)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(self.fd)
            except OSError as exc:
                raise OSError(exc.errno, f"{self.path} is not a usable network namespace: {exc.strerror}") from None
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def socket(self) -> RtSocket:
        with self.entered():
            return RtSocket()


def open_netns(path: str) -> Optional[Netns]:
    """The namespace at `path`, or None when the path is empty, gone, unreadable or not a network namespace
    (for DEL, which must succeed: the host side is then cleaned by other means)."""
    if not path:
        return None
    try:
        return Netns(path)
    except OSError:  # FileNotFoundError, nsfs.NotANetns, ENAMETOOLONG, ELOOP, EACCES ...
        return None


def write_sysctl(path: str, value: str, only_if_present: bool = True) -> bool:
    """Write a /proc/sys value (in the netns current at the call); skip when it already holds it."""
    full = PROC_SYS + "/" + path
    try:
        with open(full, "r+") as handle:
            if handle.read().strip() == value:
                return False
            handle.seek(0)
            handle.write(value)
        return True
    except FileNotFoundError:
        if only_if_present:
            return False
        raise
