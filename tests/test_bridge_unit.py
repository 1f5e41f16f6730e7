"""Pure parts of the bridge plugin: config decoding, the VLAN netlink requests (this kernel has no
bridge VLAN filtering, so the requests are checked byte by byte here), masquerade scripts, tags."""
from __future__ import annotations

import ipaddress
import json
import struct

import pytest

from pycni.plugins.kernel import netlink as nl
from pycni.plugins.kernel.attachment import Tag, network_prefix, parse_prefix
from pycni.plugins.main.bridge import load_bridge_config, parse_vlan_trunk
from pycni.plugins.core.config import parse_netconf
from pycni.plugins.core.errors import CNIError
from pycni.plugins.kernel.masquerade import NftMasquerade, find_tool

from helpers import sh


def conf(**keys):
    raw = {"cniVersion": "1.0.0", "name": "n", "type": "pycni-bridge", **keys}
    return parse_netconf(json.dumps(raw).encode())


def test_reference_defaults():
    cfg = load_bridge_config(conf())
    assert cfg.bridge == "cni0" and cfg.preserve_default_vlan and cfg.ip_masq_backend == "nftables"
    assert not (cfg.is_gateway or cfg.enable_dad or cfg.hairpin or cfg.vlan_filtering)
    assert load_bridge_config(conf(isDefaultGateway=True)).is_gateway
    assert load_bridge_config(conf(portIsolation="true")).port_isolation


def test_vlan_trunk_parsing():
    assert parse_vlan_trunk([{"id": 5}, {"minID": 10, "maxID": 20}]) == [(5, 5), (10, 20)]
    for bad in ([{"id": 4095}], [{"minID": 3}], [{}], "x", [{"id": True}]):
        with pytest.raises(CNIError) as err:
            parse_vlan_trunk(bad)
        assert err.value.code == 7 and "vlanTrunk" in err.value.msg


def _vlan_entries(payload: bytes):
    """(flags, vid) pairs inside IFLA_AF_SPEC of an AF_BRIDGE ifinfomsg payload."""
    family, _t, index, _f, _c = struct.unpack_from("=BxHiII", payload)
    assert family == nl.AF_BRIDGE
    spec = nl.parse_attrs(payload, 16)[nl.IFLA_AF_SPEC]
    out, offset = [], 0
    while offset < len(spec):
        size, kind = struct.unpack_from("=HH", spec, offset)
        assert kind == nl.IFLA_BRIDGE_VLAN_INFO
        out.append(struct.unpack_from("=HH", spec, offset + 4))
        offset += (size + 3) & ~3
    return index, out


def test_port_vlan_requests_access_port():
    reqs = nl.port_vlan_requests(7, 42, [], preserve_default=False)
    assert [r[0] for r in reqs] == [nl.RTM_SETLINK, nl.RTM_DELLINK]
    assert _vlan_entries(reqs[0][2]) == (7, [(nl.BRIDGE_VLAN_INFO_PVID | nl.BRIDGE_VLAN_INFO_UNTAGGED, 42)])
    assert _vlan_entries(reqs[1][2]) == (7, [(0, 1)])


def test_port_vlan_requests_trunk_keeps_default():
    reqs = nl.port_vlan_requests(3, 0, [(5, 5), (10, 20)], preserve_default=True)
    assert [r[0] for r in reqs] == [nl.RTM_SETLINK]
    assert _vlan_entries(reqs[0][2]) == (3, [(0, 5), (nl.BRIDGE_VLAN_INFO_RANGE_BEGIN, 10),
                                             (nl.BRIDGE_VLAN_INFO_RANGE_END, 20)])


def test_bridge_port_flags_request():
    data = nl.bridge_port_data(hairpin=True, isolated=True)
    info = nl.parse_attrs(nl.parse_attrs(data)[nl.IFLA_LINKINFO])
    assert info[nl.IFLA_INFO_SLAVE_KIND] == b"bridge\0"
    port = nl.parse_attrs(info[nl.IFLA_INFO_SLAVE_DATA])
    assert port == {nl.IFLA_BRPORT_MODE: b"\1", nl.IFLA_BRPORT_ISOLATED: b"\1"}
    assert nl.bridge_port_data() == b""


def test_tags_are_stable_and_parseable():
    tag = Tag("net", "c" * 64, "eth0")
    assert tag.prefix == Tag("net", "c" * 64, "eth0").prefix != Tag("net", "c" * 64, "eth1").prefix
    assert parse_prefix(tag.describe(250)) == (tag.net, tag.attachment)
    assert tag.describe(250).startswith(network_prefix("net"))
    assert parse_prefix("something else") is None


@pytest.mark.skipif(find_tool("nft") is None, reason="no nft")
def test_masquerade_script_is_valid_nft(netns):
    script = NftMasquerade().setup_script(Tag("n", "c1", "eth0"), [ipaddress.ip_interface("10.1.0.5/24"),
                                                                    ipaddress.ip_interface("fd01::5/64")])
    assert "masquerade" in script and "10.1.0.0/24" in script and "ff00::/8" in script
    proc = sh("ip", "netns", "exec", netns, "nft", "-c", "-f", "-", input=script.encode(), check=False)
    assert proc.returncode == 0, proc.stderr.decode()
