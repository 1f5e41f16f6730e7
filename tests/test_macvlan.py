"""pycni-macvlan on a real kernel. No dummy links here: the master is one end of a veth pair
inside the test's own "node" netns."""
from __future__ import annotations

from typing import Any, Dict

import pytest

from helpers import in_netns, link_exists, netns_path, sh, unique
from kernel_plugins import Node, host_local, link_json, node, ping, reference_missing, shape  # noqa: F401

pytestmark = pytest.mark.kernel


def make_master(ns: str, name: str = "m0", up: bool = True, mtu: int = 1500) -> str:
    in_netns(ns, "ip", "link", "add", name, "mtu", str(mtu), "type", "veth", "peer", "name", name + "p")
    if up:
        in_netns(ns, "ip", "link", "set", name, "up")
        in_netns(ns, "ip", "link", "set", name + "p", "up")
    return name


def mv_conf(node: Node, **keys: Any) -> Dict[str, Any]:
    conf: Dict[str, Any] = {"cniVersion": "1.0.0", "name": unique("mv"), "type": "pycni-macvlan", "master": "m0",
                            "ipam": host_local(node.data_dir, keys.pop("subnet", "10.81.0.0/24"))}
    conf.update(keys)
    return conf


def test_bridge_mode_two_containers_ping_mtu_mac_del(node, make_netns):
    make_master(node.name)
    conf = mv_conf(node, mtu=1400, mac="02:11:22:33:44:55")
    c1, c2 = make_netns("mc"), make_netns("mc")
    r1 = node.ok("ADD", conf, c1, container_id="a1")
    r2 = node.ok("ADD", dict(conf, mac=None), c2, container_id="a2", args="IgnoreUnknown=1;MAC=02:11:22:33:44:66")
    assert r1["interfaces"] == [{"name": "eth0", "mac": "02:11:22:33:44:55", "sandbox": netns_path(c1)}]
    assert r2["interfaces"][0]["mac"] == "02:11:22:33:44:66"
    assert [ip["interface"] for ip in r1["ips"]] == [0]
    info = link_json(c1, "eth0")
    assert info["mtu"] == 1400 and info["address"] == "02:11:22:33:44:55"
    assert info["linkinfo"]["info_kind"] == "macvlan" and info["linkinfo"]["info_data"]["mode"] == "bridge"
    assert in_netns(c1, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == b"1"
    assert in_netns(c1, "sysctl", "-n", "net.ipv6.conf.eth0.ndisc_notify").stdout.strip() == b"1"
    assert ping(c1, r2["ips"][0]["address"].split("/")[0])
    assert [l for l in node.links() if l.get("linkinfo", {}).get("info_kind") == "macvlan"] == []

    node.ok("CHECK", dict(conf, prevResult=r1), c1, container_id="a1")
    node.ok("DEL", conf, c1, container_id="a1")
    assert not link_exists("eth0", c1)
    node.ok("DEL", conf, c1, container_id="a1")  # idempotent
    sh("ip", "netns", "del", c2)  # DEL after the netns is gone
    node.ok("DEL", conf, "", container_id="a2")
    node.ok("DEL", conf, netns_path(c2).split("/")[-1], container_id="a2")
    assert node.leases(conf["name"]) == []


def test_private_mode_blocks_neighbours(node, make_netns):
    make_master(node.name)
    conf = mv_conf(node, mode="private")
    c1, c2 = make_netns("mc"), make_netns("mc")
    node.ok("ADD", conf, c1, container_id="p1")
    r2 = node.ok("ADD", conf, c2, container_id="p2")
    assert link_json(c1, "eth0")["linkinfo"]["info_data"]["mode"] == "private"
    assert not ping(c1, r2["ips"][0]["address"].split("/")[0])


def test_passthru_mode(node, netns):
    make_master(node.name)
    conf = mv_conf(node, mode="passthru")
    node.ok("ADD", conf, netns, container_id="pt")
    assert link_json(netns, "eth0")["linkinfo"]["info_data"]["mode"] == "passthru"
    node.ok("DEL", conf, netns, container_id="pt")
    assert node.leases(conf["name"]) == []


def test_check_fails_after_address_removed(node, netns):
    make_master(node.name)
    conf = mv_conf(node)
    res = node.ok("ADD", conf, netns, container_id="ck")
    in_netns(netns, "ip", "addr", "del", res["ips"][0]["address"], "dev", "eth0")
    out, rc, _ = node.run("CHECK", dict(conf, prevResult=res), netns, container_id="ck")
    assert rc != 0 and res["ips"][0]["address"] in out["msg"]


def test_default_master_and_bcqueuelen_and_l2_only(node, netns):
    make_master(node.name, "up0")
    node.sh("ip", "addr", "add", "192.0.2.10/24", "dev", "up0")
    node.sh("ip", "route", "add", "default", "via", "192.0.2.1")
    conf = mv_conf(node, bcqueuelen=123)
    del conf["master"]
    conf["ipam"] = {}
    res = node.ok("ADD", conf, netns, container_id="dm")
    assert "ips" not in res
    info = link_json(netns, "eth0")
    assert info["link_netnsid"] is not None and info["linkinfo"]["info_data"].get("bcqueuelen") == 123
    node.ok("DEL", conf, netns, container_id="dm")
    assert not link_exists("eth0", netns)


def test_link_in_container(node, netns):
    make_master(netns, "lm0")
    conf = mv_conf(node, master="lm0", linkInContainer=True)
    res = node.ok("ADD", conf, netns, container_id="lic", ifname="net1")
    assert res["interfaces"][0]["name"] == "net1" and link_exists("net1", netns)
    node.ok("DEL", conf, netns, container_id="lic", ifname="net1")
    assert not link_exists("net1", netns) and node.leases(conf["name"]) == []


@pytest.mark.parametrize("keys,word", [
    ({"mode": "bogus"}, "mode"),
    ({"master": "nosuch0"}, "nosuch0"),
    ({"mtu": 9000}, "mtu"),
    ({"mac": "02:00:00:00:00"}, "mac"),
    ({"mac": "03:00:00:00:00:01"}, "mac"),
    ({"bcqueuelen": -1}, "bcqueuelen"),
])
def test_bad_input_is_code_7(node, netns, keys, word):
    make_master(node.name)
    out, rc, _ = node.run("ADD", mv_conf(node, **keys), netns, container_id="bad")
    assert rc != 0 and out["code"] == 7 and word in out["msg"], out
    assert not link_exists("eth0", netns)


def test_status_reports_missing_or_down_master(node):
    conf = mv_conf(node, cniVersion="1.1.0", ipam={})
    out, rc, _ = node.run("STATUS", conf)
    assert rc != 0 and out["code"] == 50 and "m0" in out["msg"]
    make_master(node.name, up=False)
    out, rc, _ = node.run("STATUS", conf)
    assert rc != 0 and out["code"] == 50 and "down" in out["msg"]
    node.sh("ip", "link", "set", "m0", "up")
    node.ok("STATUS", conf)


def test_failure_after_ipam_rolls_back(node, netns):
    make_master(node.name)
    in_netns(netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0")
    conf = mv_conf(node)
    out, rc, _ = node.run("ADD", conf, netns, container_id="rb")
    assert rc != 0 and "eth0" in out["msg"]
    assert node.leases(conf["name"]) == []


@pytest.mark.skipif(reference_missing("macvlan"), reason="no reference macvlan")
def test_result_shape_equals_reference(node, make_netns):
    make_master(node.name)
    c1, c2 = make_netns("mc"), make_netns("mc")
    ours = mv_conf(node)
    ref = dict(mv_conf(node, subnet="10.82.0.0/24"), type="macvlan")
    mine = node.ok("ADD", ours, c1, container_id="s1")
    theirs = node.ok("ADD", ref, c2, container_id="s2")
    assert shape(mine) == shape(theirs)
    node.ok("DEL", ref, c2, container_id="s2")
    node.ok("DEL", ours, c1, container_id="s1")
