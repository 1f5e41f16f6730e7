"""pyroute2 as a test oracle for plugins/kernel/netlink.py, our standard-library rtnetlink client (it
stays: importing pyroute2 costs 115-143 ms per exec).

Requests: the bytes `RtSocket` writes for the link (veth, bridge, macvlan create/set), address, route,
bridge-port and port-VLAN requests the plugins build must equal pyroute2's encoding of the same
message (same type, flags, sequence number and pid), byte for byte. Replies: kernel answers encoded
by pyroute2 (links, addresses, routes, acks, errors with an extended-ack message) must decode to the
right values through our parser.

The other end of the socket is this test (a unix datagram socketpair in place of the kernel's
netlink socket): no kernel, no netns; the plugin tests exercise the same requests against the kernel.
Nothing is normalised: NLA padding, lengths, nesting and numbers are pyroute2's own. The attribute
order is the one written in each expected message (pyroute2 encodes in the order given), matching
ours; the kernel does not depend on it.
"""
from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Dict, List, Sequence, Tuple

import pytest
from pyroute2.netlink import NLMSG_DONE, NLMSG_ERROR, nlmsg, nlmsgerr
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pycni.plugins.kernel import netlink as nl

SEQ = 41  # the RtSocket's sequence counter before the first request
F_REQ_ACK = nl.NLM_F_REQUEST | nl.NLM_F_ACK
F_CREATE = F_REQ_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL
MAC, PEER_MAC = "02:11:22:33:44:55", "0a:58:0a:f4:01:05"
NETNS_FD = 9


class nlmsgerr_with_header(nlmsg):
    """The kernel's struct nlmsgerr: errno, then the request's header (payload capped by
    NETLINK_CAP_ACK), then extended-ack attributes (pyroute2's `nlmsgerr` leaves the header to its
    marshal, so its field list is spelled out here)."""

    fields = (("error", "i"), ("length", "I"), ("type", "H"), ("flags", "H"), ("sequence_number", "I"),
              ("pid", "I"))
    nla_map = nlmsgerr.nla_map


def pyroute2(cls: Any, mtype: int, nlflags: int, seq: int, attrs: Sequence[Any] = (), **fields: Any) -> bytes:
    """One message as pyroute2 encodes it (`fields`: the message's own fields, not the header's)."""
    msg = cls()
    msg["header"].update(type=mtype, flags=nlflags, sequence_number=seq, pid=0)
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = list(attrs)
    msg.encode()
    return bytes(msg.data)


def ack(seq: int, code: int = 0, text: str = "") -> bytes:
    attrs = [("NLMSGERR_ATTR_MSG", text)] if text else []
    flags = nl.NLM_F_ACK_TLVS if text else 0
    # the echoed header keeps the request's length (116 here) although its payload is not echoed
    return pyroute2(nlmsgerr_with_header, NLMSG_ERROR, flags, seq, attrs, error=-code, length=116,
                    type=nl.RTM_NEWLINK, flags=F_CREATE, sequence_number=seq, pid=0)


def split(data: bytes) -> List[bytes]:
    """A datagram of netlink messages, one bytes per message."""
    out, offset = [], 0
    while offset < len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        out.append(data[offset:offset + length])
        offset += (length + 3) & ~3
    return out


class Wire:
    """An RtSocket whose peer is the test instead of the kernel: replies are queued first, then the
    request runs, then the bytes it wrote are read back."""

    def __init__(self) -> None:
        self.rt = nl.RtSocket.__new__(nl.RtSocket)  # no netlink socket: __init__ would open one
        self.rt.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.rt.seq = SEQ
        self.rt.buf = bytearray(1 << 16)

    def close(self) -> None:
        self.rt.sock.close()
        self.peer.close()

    def reply(self, *messages: bytes) -> None:
        self.peer.send(b"".join(messages))

    def sent(self) -> List[bytes]:
        return split(self.peer.recv(1 << 16))

    def batch(self, requests: Sequence[nl.Request]) -> List[bytes]:
        self.reply(*(ack(SEQ + 1 + i) for i in range(len(requests))))
        self.rt.batch(requests)
        return self.sent()


@pytest.fixture
def wire() -> Any:
    w = Wire()
    yield w
    w.close()


def veth_peer(name: str, mtu: int, mac: str) -> Dict[str, Any]:
    return {"index": 0, "flags": 0, "change": 0, "family": 0,
            "attrs": [("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", mac), ("IFLA_NET_NS_FD", NETNS_FD)]}


def linkinfo(kind: str, *data: Tuple[str, Any]) -> Tuple[str, Any]:
    attrs: List[Any] = [("IFLA_INFO_KIND", kind)]
    if data:
        attrs.append(("IFLA_INFO_DATA", {"attrs": list(data)}))
    return ("IFLA_LINKINFO", {"attrs": attrs})


def bridge_port(*data: Tuple[str, int]) -> Tuple[str, Any]:
    return ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"),
                                        ("IFLA_INFO_SLAVE_DATA", {"attrs": list(data)})]})


def link_msg(mtype: int, flags: int, seq: int, attrs: Sequence[Any], index: int = 0, ifflags: int = 0,
             change: int = 0, family: int = 0) -> bytes:
    return pyroute2(ifinfmsg, mtype, flags, seq, attrs, family=family, index=index, flags=ifflags, change=change)


# ---- constants ---------------------------------------------------------------------------------
def _numbers(cls: Any) -> Dict[str, int]:
    """name -> attribute number of a pyroute2 NLA table (entries are (name, type) by position, or
    (number, name, type))."""
    out: Dict[str, int] = {}
    for position, entry in enumerate(getattr(cls, "nla_map", ())):
        if isinstance(entry[0], int):
            out.setdefault(entry[1], entry[0])
        else:
            out.setdefault(entry[0], position)
    return out


def test_constants_agree_with_pyroute2() -> None:
    """Every message type, flag and attribute number we define that pyroute2 also defines has
    pyroute2's value (so the expected messages below, built from names, pin our numbers)."""
    import pyroute2.netlink as p_netlink
    import pyroute2.netlink.rtnl as p_rtnl
    from pyroute2.netlink.rtnl import ifaddrmsg as p_ifaddr
    from pyroute2.netlink.rtnl import ifinfmsg as p_ifinf

    expected: Dict[str, int] = {}
    for table in (ifinfmsg, ifinfmsg.ifinfo, ifinfmsg.ifinfo.bridge_data, ifinfmsg.ifinfo.bridge_slave_data,
                  ifinfmsg.af_spec_bridge, ifaddrmsg, rtmsg, rtmsg.metrics, nlmsgerr):
        expected.update(_numbers(table))
    from pyroute2.netlink.rtnl.ifinfmsg import macvx_data

    expected.update(_numbers(macvx_data))
    expected.update(_numbers(ifinfmsg.ifinfo.veth_data))
    for module in (p_netlink, p_rtnl, p_ifinf, p_ifaddr):
        expected.update({k: v for k, v in vars(module).items() if k.isupper() and isinstance(v, int)})
    expected.update({f"RT_SCOPE_{k.upper()}": v for k, v in p_rtnl.rt_scope.items() if isinstance(k, str)})
    expected.update({f"RTPROT_{k.upper()}": v for k, v in p_rtnl.rt_proto.items() if isinstance(k, str)})
    expected.update({f"RTN_{k.upper()}": v for k, v in p_rtnl.rt_type.items() if isinstance(k, str)})
    ours = {k: v for k, v in vars(nl).items() if k.isupper() and isinstance(v, int) and not isinstance(v, bool)}
    checked = sorted(set(ours) & set(expected))
    assert len(checked) >= 60, checked  # 71 with pyroute2 0.9.7; not in its tables: CLONE_NEWNET,
    # NETLINK_CAP_ACK, RTEXT_FILTER_SKIP_STATS, RT_TABLE_MAIN, IFLA_MACVLAN_BC_QUEUE_LEN (see below)
    assert {k: ours[k] for k in checked if ours[k] != expected[k]} == {}
    assert {mode: value for mode, value in nl.MACVLAN_MODES.items()} == \
        {name: number for number, name in macvx_data.mode.value_map.items() if name in nl.MACVLAN_MODES}


# ---- requests ----------------------------------------------------------------------------------
def test_veth_pair_and_its_port_settings_as_the_bridge_plugin_sends_them(wire: Wire) -> None:
    """bridge._make_veth's batch: the pair (peer moved into the netns), then alias + hairpin + isolation."""
    peer = nl.ifinfomsg() + nl.link_attrs(name="eth0", mtu=1400, mac=PEER_MAC, netns_fd=NETNS_FD)
    attrs = nl.link_attrs(name="vethab12cd34", mtu=1400, mac=MAC, master=3)
    attrs += nl.linkinfo("veth", nl.nla(nl.VETH_INFO_PEER, peer))
    port = nl.bridge_port_data(hairpin=True, isolated=True)
    sent = wire.batch([nl.create_request("create veth", attrs, nl.IFF_UP),
                       nl.change_request("configure", 0, nl.link_attrs(name="vethab12cd34", alias="pycni c=abc")
                                         + port)])
    assert sent == [
        link_msg(nl.RTM_NEWLINK, F_CREATE, SEQ + 1,
                 [("IFLA_IFNAME", "vethab12cd34"), ("IFLA_MTU", 1400), ("IFLA_ADDRESS", MAC), ("IFLA_MASTER", 3),
                  linkinfo("veth", ("VETH_INFO_PEER", veth_peer("eth0", 1400, PEER_MAC)))],
                 ifflags=nl.IFF_UP, change=nl.IFF_UP),
        link_msg(nl.RTM_NEWLINK, F_REQ_ACK, SEQ + 2,
                 [("IFLA_IFNAME", "vethab12cd34"), ("IFLA_IFALIAS", "pycni c=abc"),
                  bridge_port(("IFLA_BRPORT_MODE", 1), ("IFLA_BRPORT_ISOLATED", 1))]),
    ]


@pytest.mark.parametrize("hairpin,isolated,expected", [
    (True, None, [("IFLA_BRPORT_MODE", 1)]),
    (None, True, [("IFLA_BRPORT_ISOLATED", 1)]),
    (False, False, [("IFLA_BRPORT_MODE", 0), ("IFLA_BRPORT_ISOLATED", 0)]),
])
def test_bridge_port_flags(wire: Wire, hairpin: Any, isolated: Any, expected: List[Tuple[str, int]]) -> None:
    sent = wire.batch([nl.change_request("port", 7, nl.bridge_port_data(hairpin=hairpin, isolated=isolated))])
    assert sent == [link_msg(nl.RTM_NEWLINK, F_REQ_ACK, SEQ + 1, [bridge_port(*expected)], index=7)]


def test_bridge_create_and_set_up(wire: Wire) -> None:
    """bridge._ensure_bridge: create (up, promisc, vlan_filtering, MAC pinned), then a later set-up."""
    data = nl.nla_u8(nl.IFLA_BR_VLAN_FILTERING, 1)
    flags = nl.IFF_UP | nl.IFF_PROMISC
    sent = wire.batch([
        nl.create_request("create bridge", nl.link_attrs(name="cni0", mtu=9000, mac=MAC)
                          + nl.linkinfo("bridge", data), flags),
        nl.change_request("set up bridge", 4, nl.linkinfo("bridge", data), set_flags=nl.IFF_UP),
    ])
    assert sent == [
        link_msg(nl.RTM_NEWLINK, F_CREATE, SEQ + 1,
                 [("IFLA_IFNAME", "cni0"), ("IFLA_MTU", 9000), ("IFLA_ADDRESS", MAC),
                  linkinfo("bridge", ("IFLA_BR_VLAN_FILTERING", 1))], ifflags=flags, change=flags),
        link_msg(nl.RTM_NEWLINK, F_REQ_ACK, SEQ + 2, [linkinfo("bridge", ("IFLA_BR_VLAN_FILTERING", 1))],
                 index=4, ifflags=nl.IFF_UP, change=nl.IFF_UP),
    ]


@pytest.mark.parametrize("mode", sorted(nl.MACVLAN_MODES))
def test_macvlan_create(wire: Wire, mode: str) -> None:
    """macvlan.add: on top of `parent`, created straight into the container's netns."""
    data = nl.nla_u32(nl.IFLA_MACVLAN_MODE, nl.MACVLAN_MODES[mode])
    attrs = nl.link_attrs(name="eth1", mtu=1500, mac=MAC, parent=2, netns_fd=NETNS_FD)
    sent = wire.batch([nl.create_request("create macvlan", attrs + nl.linkinfo("macvlan", data))])
    assert sent == [link_msg(nl.RTM_NEWLINK, F_CREATE, SEQ + 1,
                             [("IFLA_IFNAME", "eth1"), ("IFLA_MTU", 1500), ("IFLA_ADDRESS", MAC),
                              ("IFLA_NET_NS_FD", NETNS_FD), ("IFLA_LINK", 2),
                              linkinfo("macvlan", ("IFLA_MACVLAN_MODE", mode))])]


def test_macvlan_bc_queue_len_attribute_number() -> None:
    """pyroute2 0.9.7 has no name for IFLA_MACVLAN_BC_QUEUE_LEN (it drops unknown names when encoding),
    so its number is checked against pyroute2's table: the attribute after MACADDR_COUNT (if_link.h)."""
    from pyroute2.netlink.rtnl.ifinfmsg import macvx_data

    names = [entry[0] for entry in macvx_data.nla_map]
    assert names.index("IFLA_MACVLAN_MACADDR_COUNT") + 1 == nl.IFLA_MACVLAN_BC_QUEUE_LEN
    assert nl.nla_u32(nl.IFLA_MACVLAN_BC_QUEUE_LEN, 100) == struct.pack("=HHI", 8, 7, 100)


def test_link_up_mac_pin_and_delete(wire: Wire) -> None:
    sent = wire.batch([nl.change_request("set link up", 5, set_flags=nl.IFF_UP),
                       nl.change_request("pin MAC", 4, nl.link_attrs(mac=MAC)),
                       nl.change_request("set down", 6, clear_flags=nl.IFF_UP)])
    assert sent == [link_msg(nl.RTM_NEWLINK, F_REQ_ACK, SEQ + 1, [], index=5, ifflags=nl.IFF_UP, change=nl.IFF_UP),
                    link_msg(nl.RTM_NEWLINK, F_REQ_ACK, SEQ + 2, [("IFLA_ADDRESS", MAC)], index=4),
                    link_msg(nl.RTM_NEWLINK, F_REQ_ACK, SEQ + 3, [], index=6, change=nl.IFF_UP)]
    wire.reply(ack(SEQ + 4))
    assert wire.rt.delete_link(name="veth0")
    assert wire.sent() == [link_msg(nl.RTM_DELLINK, F_REQ_ACK, SEQ + 4, [("IFLA_IFNAME", "veth0")])]


def test_port_vlans(wire: Wire) -> None:
    """bridge: PVID 100 untagged, trunk 200 and 300-310 tagged, default VLAN 1 removed (AF_BRIDGE)."""
    sent = wire.batch(nl.port_vlan_requests(8, 100, [(200, 200), (300, 310)], preserve_default=False))

    def vlan(vid: int, flags: int) -> Tuple[str, Any]:
        return ("IFLA_BRIDGE_VLAN_INFO", {"flags": flags, "vid": vid})

    spec = [vlan(100, nl.BRIDGE_VLAN_INFO_PVID | nl.BRIDGE_VLAN_INFO_UNTAGGED), vlan(200, 0),
            vlan(300, nl.BRIDGE_VLAN_INFO_RANGE_BEGIN), vlan(310, nl.BRIDGE_VLAN_INFO_RANGE_END)]
    assert sent == [
        link_msg(nl.RTM_SETLINK, F_REQ_ACK, SEQ + 1, [("IFLA_AF_SPEC", {"attrs": spec})], index=8,
                 family=nl.AF_BRIDGE),
        link_msg(nl.RTM_DELLINK, F_REQ_ACK, SEQ + 2, [("IFLA_AF_SPEC", {"attrs": [vlan(1, 0)]})], index=8,
                 family=nl.AF_BRIDGE),
    ]


@pytest.mark.parametrize("kind,address,prefixlen,nodad,extra", [
    (nl.RTM_NEWADDR, "10.244.1.5", 24, False, [("IFA_BROADCAST", "10.244.1.255")]),
    (nl.RTM_NEWADDR, "10.244.1.5", 31, False, []),  # /31 and /32: no broadcast
    (nl.RTM_NEWADDR, "fd00:10:244:1::5", 64, True, []),
    (nl.RTM_DELADDR, "10.244.1.1", 16, False, [("IFA_BROADCAST", "10.244.255.255")]),
])
def test_address_requests(wire: Wire, kind: int, address: str, prefixlen: int, nodad: bool,
                          extra: List[Any]) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    flags = nl.IFA_F_NODAD if nodad else 0
    sent = wire.batch([nl.addr_request(kind, 3, address, prefixlen, nodad=nodad)])
    assert sent == [pyroute2(ifaddrmsg, kind, F_CREATE if kind == nl.RTM_NEWADDR else F_REQ_ACK, SEQ + 1,
                             [("IFA_LOCAL", address), ("IFA_ADDRESS", address), ("IFA_FLAGS", flags), *extra],
                             family=family, prefixlen=prefixlen, flags=flags, scope=0, index=3)]


@pytest.mark.parametrize("dst,prefixlen,kwargs,header,attrs", [
    ("10.244.1.0", 24, {}, {"scope": nl.RT_SCOPE_LINK}, []),
    ("0.0.0.0", 0, {"gateway": "10.244.1.1", "mtu": 1400, "advmss": 1360, "priority": 100},
     {"scope": nl.RT_SCOPE_UNIVERSE},
     [("RTA_GATEWAY", "10.244.1.1"), ("RTA_PRIORITY", 100),
      ("RTA_METRICS", {"attrs": [("RTAX_MTU", 1400), ("RTAX_ADVMSS", 1360)]})]),
    ("fd00:10:244:2::", 64, {"gateway": "fd00:10:244:1::1", "table": 256},
     {"scope": nl.RT_SCOPE_UNIVERSE, "table": 0}, [("RTA_TABLE", 256), ("RTA_GATEWAY", "fd00:10:244:1::1")]),
    ("fd00:10:244:3::", 64, {}, {"scope": nl.RT_SCOPE_UNIVERSE}, []),  # IPv6: no link scope, even without gateway
    ("10.96.0.0", 12, {"table": 100, "scope": nl.RT_SCOPE_LINK}, {"scope": nl.RT_SCOPE_LINK, "table": 100}, []),
])
def test_route_requests(wire: Wire, dst: str, prefixlen: int, kwargs: Dict[str, Any], header: Dict[str, int],
                        attrs: List[Any]) -> None:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sent = wire.batch([nl.route_request(5, dst, prefixlen, **kwargs)])
    fields = {"family": family, "dst_len": prefixlen, "src_len": 0, "tos": 0, "table": nl.RT_TABLE_MAIN,
              "proto": nl.RTPROT_BOOT, "type": nl.RTN_UNICAST, "flags": 0, **header}
    assert sent == [pyroute2(rtmsg, nl.RTM_NEWROUTE, F_CREATE, SEQ + 1,
                             [("RTA_DST", dst), ("RTA_OIF", 5), *attrs], **fields)]


# ---- replies -----------------------------------------------------------------------------------
def test_link_reply_decodes(wire: Wire) -> None:
    """RtSocket.link: its GET (IFLA_EXT_MASK, name) and a pyroute2-encoded kernel answer for a bridge port."""
    wire.reply(link_msg(nl.RTM_NEWLINK, 0, SEQ + 1,
                        [("IFLA_IFNAME", "veth1"), ("IFLA_MTU", 1450), ("IFLA_ADDRESS", MAC), ("IFLA_MASTER", 4),
                         ("IFLA_IFALIAS", "pycni c=1"), ("IFLA_LINK", 12),
                         linkinfo("bridge", ("IFLA_BR_VLAN_FILTERING", 1))],
                        index=11, ifflags=nl.IFF_UP | 0x40))
    link = wire.rt.link("veth1")
    assert wire.sent() == [link_msg(nl.RTM_GETLINK, nl.NLM_F_REQUEST, SEQ + 1,
                                    [("IFLA_EXT_MASK", nl.RTEXT_FILTER_SKIP_STATS), ("IFLA_IFNAME", "veth1")])]
    assert (link.index, link.name, link.mtu, link.mac, link.master, link.alias, link.parent, link.kind, link.up) == \
        (11, "veth1", 1450, MAC, 4, "pycni c=1", 12, "bridge", True)
    assert link.info_data[nl.IFLA_BR_VLAN_FILTERING][:1] == b"\1"


def test_link_dump_spanning_datagrams(wire: Wire) -> None:
    """RtSocket.links: NLM_F_MULTI answers over two reads, ended by NLMSG_DONE."""
    multi = nl.NLM_F_MULTI
    wire.reply(*(link_msg(nl.RTM_NEWLINK, multi, SEQ + 1, [("IFLA_IFNAME", f"eth{i}")], index=i + 1)
                 for i in range(2)))
    wire.reply(link_msg(nl.RTM_NEWLINK, multi, SEQ + 1, [("IFLA_IFNAME", "lo")], index=3),
               pyroute2(nlmsg, NLMSG_DONE, multi, SEQ + 1))
    assert [(link.index, link.name) for link in wire.rt.links()] == [(1, "eth0"), (2, "eth1"), (3, "lo")]
    assert wire.sent() == [link_msg(nl.RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, SEQ + 1,
                                    [("IFLA_EXT_MASK", nl.RTEXT_FILTER_SKIP_STATS)])]


def test_address_and_route_replies_decode(wire: Wire) -> None:
    multi = nl.NLM_F_MULTI
    done = pyroute2(nlmsg, NLMSG_DONE, multi, SEQ + 1)
    wire.reply(pyroute2(ifaddrmsg, nl.RTM_NEWADDR, multi, SEQ + 1, [("IFA_ADDRESS", "10.0.0.2"), ("IFA_LOCAL", "10.0.0.1")],
                        family=socket.AF_INET, prefixlen=24, flags=0x80, scope=0, index=2),
               pyroute2(ifaddrmsg, nl.RTM_NEWADDR, multi, SEQ + 1, [("IFA_ADDRESS", "fe80::1")],
                        family=socket.AF_INET6, prefixlen=64, flags=0x80, scope=nl.RT_SCOPE_LINK, index=2),
               done)
    assert [(a.family, a.address, a.prefixlen, a.index, a.scope) for a in wire.rt.addresses()] == [
        (socket.AF_INET, "10.0.0.1", 24, 2, 0), (socket.AF_INET6, "fe80::1", 64, 2, nl.RT_SCOPE_LINK)]
    done = pyroute2(nlmsg, NLMSG_DONE, multi, SEQ + 2)
    route = dict(src_len=0, tos=0, proto=nl.RTPROT_BOOT, scope=0, type=nl.RTN_UNICAST, flags=0)
    wire.reply(pyroute2(rtmsg, nl.RTM_NEWROUTE, multi, SEQ + 2, [("RTA_GATEWAY", "10.0.0.254"), ("RTA_OIF", 2)],
                        family=socket.AF_INET, dst_len=0, table=nl.RT_TABLE_MAIN, **route),
               pyroute2(rtmsg, nl.RTM_NEWROUTE, multi, SEQ + 2,
                        [("RTA_DST", "fd00:1::"), ("RTA_OIF", 3), ("RTA_TABLE", 1000)],
                        family=socket.AF_INET6, dst_len=64, table=252, **route),
               done)
    assert [(r.family, r.dst, r.gateway, r.oif, r.table) for r in wire.rt.routes()] == [
        (socket.AF_INET, "0.0.0.0/0", "10.0.0.254", 2, nl.RT_TABLE_MAIN),
        (socket.AF_INET6, "fd00:1::/64", "", 3, 1000)]


def test_error_acks_decode_with_the_extended_ack_message(wire: Wire) -> None:
    """A batch's first failure is raised with the kernel's errno and its extended-ack text;
    a tolerated errno is not an error."""
    requests = [nl.change_request("set link up", 5, set_flags=nl.IFF_UP),
                nl.create_request("create bridge cni0", nl.link_attrs(name="cni0"))]
    wire.reply(ack(SEQ + 1), ack(SEQ + 2, errno.EEXIST, "File exists, by the oracle"))
    with pytest.raises(nl.NetlinkError) as caught:
        wire.rt.batch(requests)
    assert caught.value.errno == errno.EEXIST
    assert str(caught.value).endswith("create bridge cni0: File exists (File exists, by the oracle)")
    wire.sent()
    wire.reply(ack(SEQ + 3, errno.EEXIST), ack(SEQ + 4))
    wire.rt.batch(requests, tolerate=(errno.EEXIST,))
    wire.reply(ack(SEQ + 5, errno.ENODEV))
    assert wire.rt.link("gone") is None
