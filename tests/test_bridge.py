"""pycni-bridge on a real kernel: every test runs the built zipapp inside its own "node" netns."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from helpers import in_netns, link_exists, netns_path, sh, unique
from kernel_plugins import (Node, addrs, host_local, kernel_supports_vlan_filtering, link_json, node, ping,  # noqa: F401
                            shape)

pytestmark = pytest.mark.kernel


def bridge_conf(node: Node, **keys: Any) -> Dict[str, Any]:
    conf: Dict[str, Any] = {"cniVersion": "1.0.0", "name": unique("bn"), "type": "pycni-bridge",
                            "bridge": unique("br"),
                            "ipam": host_local(node.data_dir, keys.pop("subnet", "10.61.0.0/24"))}
    conf.update(keys)
    return conf


def pycni_chains(node: Node, container_id: str = "") -> list:
    lines = [l.strip() for l in node.ruleset().splitlines() if l.strip().startswith("comment \"pycni:")]
    return [l for l in lines if not container_id or l.rstrip('"').endswith(" " + container_id)]


def test_two_containers_ping_gateway_routes_mtu_hairpin_masquerade(node, make_netns):
    conf = bridge_conf(node, isDefaultGateway=True, ipMasq=True, hairpinMode=True, mtu=1400)
    c1, c2 = make_netns("bc"), make_netns("bc")
    r1 = node.ok("ADD", conf, c1, container_id="ctr-one")
    r2 = node.ok("ADD", conf, c2, container_id="ctr-two")

    # result shaped like the reference's
    assert [i["name"] for i in r1["interfaces"]] == [conf["bridge"], r1["interfaces"][1]["name"], "eth0"]
    assert r1["interfaces"][1]["name"].startswith("veth") and len(r1["interfaces"][1]["name"]) == 12
    assert r1["interfaces"][2]["sandbox"] == netns_path(c1)
    assert [ip["interface"] for ip in r1["ips"]] == [2]
    assert r1["ips"][0]["gateway"] == "10.61.0.1"
    assert {"dst": "0.0.0.0/0", "gw": "10.61.0.1"} in r1["routes"]
    assert r1["interfaces"][1]["name"] != r2["interfaces"][1]["name"]

    ip2 = r2["ips"][0]["address"].split("/")[0]
    assert ping(c1, ip2) and ping(c1, "10.61.0.1")
    assert "default via 10.61.0.1 dev eth0" in in_netns(c1, "ip", "route").stdout.decode()
    host_veth = r1["interfaces"][1]["name"]
    assert link_json(c1, "eth0")["mtu"] == 1400
    assert link_json(node.name, host_veth)["mtu"] == 1400
    assert link_json(c1, "eth0")["address"] == r1["interfaces"][2]["mac"]
    assert node.read(f"/sys/class/net/{host_veth}/brport/hairpin_mode") == "1"
    assert node.read("/proc/sys/net/ipv4/ip_forward") == "1"
    assert in_netns(c1, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == b"1"
    # bridge MAC pinned: it stays put while ports come and go
    assert link_json(node.name, conf["bridge"])["address"] == r1["interfaces"][0]["mac"] == r2["interfaces"][0]["mac"]
    assert len(pycni_chains(node, "ctr-one")) == 1 and len(pycni_chains(node, "ctr-two")) == 1
    assert "masquerade" in node.ruleset()

    node.ok("DEL", conf, c1, container_id="ctr-one")
    assert not link_exists(host_veth, node.name) and not link_exists("eth0", c1)
    assert pycni_chains(node, "ctr-one") == [] and len(pycni_chains(node, "ctr-two")) == 1
    node.ok("DEL", conf, c1, container_id="ctr-one")  # twice is fine

    # the runtime's pattern: netns deleted, then DEL with no CNI_NETNS and no prevResult
    sh("ip", "netns", "del", c2)
    node.ok("DEL", conf, "", container_id="ctr-two")
    assert pycni_chains(node) == []
    assert node.veths() == []
    assert node.leases(conf["name"]) == []
    assert link_json(node.name, conf["bridge"])["address"] == r1["interfaces"][0]["mac"]


def test_del_finds_host_veth_without_netns(node, make_netns):
    """DEL without CNI_NETNS (the runtime's second DEL) finds the host veth by its alias and removes the pair."""
    conf = bridge_conf(node, ipMasq=True)
    c1 = make_netns("bc")
    res = node.ok("ADD", conf, c1, container_id="lost")
    node.ok("DEL", conf, "", container_id="lost")
    assert not link_exists(res["interfaces"][1]["name"], node.name)
    assert not link_exists("eth0", c1)
    assert pycni_chains(node) == [] and node.leases(conf["name"]) == []


def test_dual_stack_ipv6_usable_without_dad_wait(node, make_netns):
    conf = bridge_conf(node, isGateway=True)
    conf["ipam"] = host_local(node.data_dir, "10.62.0.0/24", "fd62::/64")
    c1, c2 = make_netns("bc"), make_netns("bc")
    node.ok("ADD", conf, c1, container_id="d1")
    r2 = node.ok("ADD", conf, c2, container_id="d2")
    assert sorted(ip["interface"] for ip in r2["ips"]) == [2, 2]
    v6 = [ip["address"].split("/")[0] for ip in r2["ips"] if ":" in ip["address"]][0]
    # straight away: no address may still be tentative, and traffic flows
    for ns, dev in ((c1, "eth0"), (c2, "eth0"), (node.name, conf["bridge"])):
        tentative = [a for a in addrs(ns, dev) if a.get("tentative") and a.get("scope") == "global"]
        assert tentative == [], (ns, dev, tentative)
    assert in_netns(c1, "sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").stdout.strip() == b"0"
    assert ping(c1, v6) and ping(c1, "fd62::1")
    assert node.read("/proc/sys/net/ipv6/conf/all/forwarding") == "1"
    node.ok("DEL", conf, c1, container_id="d1")
    node.ok("DEL", conf, c2, container_id="d2")
    assert node.leases(conf["name"]) == [] and node.veths() == []


def test_enabledad_keeps_dad(node, make_netns):
    conf = bridge_conf(node, enabledad=True)
    conf["ipam"] = host_local(node.data_dir, "fd63::/64")
    c1 = make_netns("bc")
    node.ok("ADD", conf, c1, container_id="dad")
    assert in_netns(c1, "sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").stdout.strip() != b"0"
    node.ok("DEL", conf, c1, container_id="dad")


def test_failing_ipam_leaves_nothing(node, make_netns):
    conf = bridge_conf(node)
    conf["ipam"]["ranges"] = [[{"subnet": "10.64.0.0/33"}]]
    c1 = make_netns("bc")
    out, rc, _ = node.run("ADD", conf, c1, container_id="bad")
    assert rc != 0 and out["code"] != 0
    assert node.veths() == [] and not link_exists("eth0", c1)


def test_failure_after_ipam_rolls_back(node, make_netns):
    """The container already has an eth0: ADD fails after IPAM; the address is released, no veth is left."""
    conf = bridge_conf(node, ipMasq=True)
    c1 = make_netns("bc")
    in_netns(c1, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    out, rc, _ = node.run("ADD", conf, c1, container_id="clash")
    assert rc != 0 and "eth0" in out["msg"]
    assert node.veths() == [] and node.leases(conf["name"]) == [] and pycni_chains(node) == []


def test_check_passes_then_fails_without_address(node, make_netns):
    conf = bridge_conf(node, isGateway=True)
    c1 = make_netns("bc")
    res = node.ok("ADD", conf, c1, container_id="chk")
    checked = dict(conf, prevResult=res)
    node.ok("CHECK", checked, c1, container_id="chk")
    in_netns(c1, "ip", "addr", "del", res["ips"][0]["address"], "dev", "eth0")
    out, rc, _ = node.run("CHECK", checked, c1, container_id="chk")
    assert rc != 0 and res["ips"][0]["address"] in out["msg"]
    node.ok("DEL", checked, c1, container_id="chk")


@pytest.mark.parametrize("keys,word", [
    ({"bridge": "abcdefghijklmnopq"}, "bridge"),
    ({"bridge": "br/x"}, "bridge"),
    ({"vlan": 4095}, "vlan"),
    ({"vlan": -1}, "vlan"),
    ({"vlanTrunk": [{"id": 0}]}, "vlanTrunk"),
    ({"vlanTrunk": [{"minID": 20, "maxID": 10}]}, "vlanTrunk"),
    ({"mtu": 20}, "mtu"),
    ({"mtu": 70000}, "mtu"),
    ({"hairpinMode": True, "promiscMode": True}, "promiscMode"),
    ({"ipMasqBackend": "pf"}, "ipMasqBackend"),
    ({"runtimeConfig": {"mac": "zz:00:00:00:00:01"}}, "runtimeConfig.mac"),
])
def test_bad_input_is_code_7_naming_the_key(node, netns, keys, word):
    conf = bridge_conf(node, **keys)
    out, rc, _ = node.run("ADD", conf, netns, container_id="bad")
    assert rc != 0 and out["code"] == 7 and word in out["msg"], out
    assert node.veths() == []


def test_bridge_name_taken_by_other_link(node, netns):
    conf = bridge_conf(node)
    node.sh("ip", "link", "add", conf["bridge"], "type", "veth", "peer", "name", unique("p"))
    out, rc, _ = node.run("ADD", conf, netns, container_id="taken")
    assert rc != 0 and out["code"] == 7 and "bridge" in out["msg"]
    assert node.leases(conf["name"]) == []
    status = dict(conf, cniVersion="1.1.0", ipam={})  # the reference host-local (v1.1.1) has no STATUS
    out, rc, _ = node.run("STATUS", status)
    assert rc != 0 and out["code"] == 50
    node.sh("ip", "link", "del", conf["bridge"])
    node.ok("STATUS", status)


def test_mac_precedence(node, make_netns):
    conf = bridge_conf(node)
    conf["args"] = {"cni": {"mac": "02:00:00:00:aa:02"}}
    c1, c2, c3 = make_netns("bc"), make_netns("bc"), make_netns("bc")
    r = node.ok("ADD", dict(conf, runtimeConfig={"mac": "02:00:00:00:aa:03"}), c1, container_id="m1",
                args="IgnoreUnknown=1;MAC=02:00:00:00:aa:01")
    assert r["interfaces"][2]["mac"] == "02:00:00:00:aa:03" == link_json(c1, "eth0")["address"]
    r = node.ok("ADD", conf, c2, container_id="m2", args="IgnoreUnknown=1;MAC=02:00:00:00:aa:01")
    assert r["interfaces"][2]["mac"] == "02:00:00:00:aa:02"
    r = node.ok("ADD", bridge_conf(node, subnet="10.65.0.0/24"), c3, container_id="m3",
                args="IgnoreUnknown=1;MAC=02:00:00:00:aa:01")
    assert r["interfaces"][2]["mac"] == "02:00:00:00:aa:01"


def test_port_isolation_and_l2_only(node, make_netns):
    conf = bridge_conf(node, portIsolation=True)
    conf["ipam"] = {}
    c1 = make_netns("bc")
    res = node.ok("ADD", conf, c1, container_id="iso")
    assert "ips" not in res and len(res["interfaces"]) == 3
    assert node.read(f"/sys/class/net/{res['interfaces'][1]['name']}/brport/isolated") == "1"
    node.ok("DEL", conf, c1, container_id="iso")
    assert node.veths() == []


def test_disable_container_interface(node, make_netns):
    conf = bridge_conf(node, disableContainerInterface=True)
    c1 = make_netns("bc")
    node.ok("ADD", conf, c1, container_id="off")
    info = link_json(c1, "eth0")
    assert "UP" not in info["flags"] and [a for a in addrs(c1, "eth0") if a["family"] == "inet"] == []


def test_vlan_on_bridge_port(node, make_netns):
    conf = bridge_conf(node, vlan=42, preserveDefaultVlan=False)
    c1 = make_netns("bc")
    out, rc, _ = node.run("ADD", conf, c1, container_id="vl")
    if kernel_supports_vlan_filtering():
        assert rc == 0, out
        veth = out["interfaces"][1]["name"]
        vlans = json.loads(node.sh("bridge", "-j", "vlan", "show", "dev", veth).stdout)
        ids = [v["vlan"] for v in vlans[0]["vlans"]]
        assert ids == [42]
    else:  # this kernel has no bridge VLAN filtering: ADD fails cleanly and says why
        assert rc != 0 and "bridge" in out["msg"]
        assert node.veths() == [] and node.leases(conf["name"]) == []


def test_iptables_backend(node, make_netns):
    if shutil.which("iptables-restore") is None:
        pytest.skip("no iptables here")
    conf = bridge_conf(node, ipMasq=True, ipMasqBackend="iptables")
    c1 = make_netns("bc")
    node.ok("ADD", conf, c1, container_id="ipt")
    rules = node.sh("iptables", "-t", "nat", "-S").stdout.decode()
    assert "MASQUERADE" in rules and " ipt" in rules
    node.ok("DEL", conf, "", container_id="ipt")
    rules = node.sh("iptables", "-t", "nat", "-S").stdout.decode()
    assert "PYCNI-" not in rules and "pycni:" not in rules


def test_gc_removes_attachments_not_valid(node, make_netns):
    ours_ipam = _pycni_host_local_ready(node)
    conf = bridge_conf(node, ipMasq=True, cniVersion="1.1.0")
    if ours_ipam:
        conf["ipam"]["type"] = "pycni-host-local"
    else:
        conf["cniVersion"] = "1.0.0"  # the reference host-local (v1.1.1) stops at 1.0.0
    c1, c2 = make_netns("bc"), make_netns("bc")
    keep = node.ok("ADD", conf, c1, container_id="keep")
    drop = node.ok("ADD", conf, c2, container_id="drop")
    other = bridge_conf(node, ipMasq=True, cniVersion="1.0.0", subnet="10.66.0.0/24")
    c3 = make_netns("bc")
    node.ok("ADD", other, c3, container_id="drop")  # same container, other network: not ours to collect
    gc = dict(conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    if not ours_ipam:
        gc["ipam"] = {}
    node.ok("GC", gc)
    assert link_exists(keep["interfaces"][1]["name"], node.name)
    assert not link_exists(drop["interfaces"][1]["name"], node.name)
    assert len(pycni_chains(node, "keep")) == 1
    assert [c for c in pycni_chains(node, "drop") if conf["name"] in c] == []
    assert [c for c in pycni_chains(node, "drop") if other["name"] in c] != []
    if ours_ipam:  # GC went on to the IPAM: only the valid attachment still holds an address
        assert node.leases(conf["name"]) == [keep["ips"][0]["address"].split("/")[0]]


def test_pycni_bridge_with_reference_host_local(node, make_netns):
    conf = bridge_conf(node, isGateway=True)
    assert conf["ipam"]["type"] == "host-local"
    c1 = make_netns("bc")
    res = node.ok("ADD", conf, c1, container_id="refipam")
    assert res["ips"][0]["address"] == "10.61.0.2/24"
    node.ok("DEL", conf, c1, container_id="refipam")
    assert node.leases(conf["name"]) == []


def _pycni_host_local_ready(node: Node) -> bool:
    conf = {"cniVersion": "1.1.0", "name": unique("hl"), "type": "pycni-host-local",
            "ipam": host_local(node.data_dir, "10.67.0.0/24", plugin="pycni-host-local")}
    out, rc, _ = node.run("STATUS", conf)
    return not (rc != 0 and "does not implement" in (out or {}).get("msg", ""))


def test_reference_bridge_with_pycni_host_local(node, make_netns):
    if not _pycni_host_local_ready(node):
        pytest.skip("pycni-host-local is not implemented yet")
    conf = bridge_conf(node, type="bridge", isGateway=True)
    conf["ipam"] = host_local(node.data_dir, "10.68.0.0/24", plugin="pycni-host-local")
    c1 = make_netns("bc")
    res = node.ok("ADD", conf, c1, container_id="ouripam")
    assert res["ips"][0]["address"] == "10.68.0.2/24"
    assert ping(c1, "10.68.0.1")
    node.ok("DEL", conf, c1, container_id="ouripam")
    assert node.leases(conf["name"]) == []


def test_result_shape_equals_reference(node, make_netns):
    ours = bridge_conf(node, isDefaultGateway=True, ipMasq=True)
    ours["ipam"] = host_local(node.data_dir, "10.69.0.0/24", "fd69::/64")
    ref = dict(ours, type="bridge", name=unique("rn"), bridge=unique("br"))
    ref["ipam"] = host_local(node.data_dir, "10.70.0.0/24", "fd70::/64")
    c1, c2 = make_netns("bc"), make_netns("bc")
    mine = node.ok("ADD", ours, c1, container_id="shape")
    theirs = node.ok("ADD", ref, c2, container_id="shape")
    assert shape(mine) == shape(theirs)
    node.ok("DEL", ref, c2, container_id="shape")
    node.ok("DEL", ours, c1, container_id="shape")


def _cli_available() -> bool:
    proc = subprocess.run([sys.executable, "-m", "pycni.plugins.cli.command", "--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    return proc.returncode == 0


def test_conflist_by_pycni_command_ours_and_reference(node, make_netns, tmp_path):
    if not _cli_available():
        pytest.skip("the pycni command is not there yet")
    results = {}
    for flavour, bridge_type, ipam_type in (("ours", "pycni-bridge", "pycni-host-local"),
                                            ("ref", "bridge", "host-local")):
        if flavour == "ours" and not _pycni_host_local_ready(node):
            ipam_type = "host-local"
        name = unique("cl")
        conflist = {"cniVersion": "1.0.0", "name": name, "plugins": [
            {"type": bridge_type, "bridge": unique("br"), "isGateway": True, "ipMasq": True,
             "ipam": host_local(node.data_dir, "10.71.0.0/24" if flavour == "ours" else "10.72.0.0/24",
                                plugin=ipam_type)},
            {"type": "tuning"},
        ]}
        path = tmp_path / f"{flavour}.conflist"
        path.write_text(json.dumps(conflist))
        ns = make_netns("bc")
        base = ["ip", "netns", "exec", node.name, sys.executable, "-m", "pycni.plugins.cli.command"]
        common = ["--cni-path", node.cni_path, "--cache-dir", str(tmp_path / flavour), "--container-id", "cl1"]
        proc = subprocess.run(base + ["add", str(path), netns_path(ns)] + common, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=str(Path(__file__).resolve().parent.parent))
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        results[flavour] = json.loads(proc.stdout)
        assert ping(ns, "10.71.0.1" if flavour == "ours" else "10.72.0.1")
        proc = subprocess.run(base + ["del", str(path), netns_path(ns)] + common, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=str(Path(__file__).resolve().parent.parent))
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert shape(results["ours"]) == shape(results["ref"])
    assert node.veths() == [] and pycni_chains(node) == []


def test_macspoofchk_drops_foreign_source_mac(node, make_netns):
    conf = bridge_conf(node, isGateway=True, macspoofchk=True)
    c1 = make_netns("bc")
    res = node.ok("ADD", conf, c1, container_id="spoof")
    assert "ether saddr != " + res["interfaces"][2]["mac"] in node.sh("nft", "list", "table", "bridge",
                                                                       "pycni").stdout.decode()
    assert ping(c1, "10.61.0.1")
    in_netns(c1, "ip", "neigh", "flush", "all")
    in_netns(c1, "ip", "link", "set", "eth0", "address", "02:de:ad:be:ef:01")
    assert not ping(c1, "10.61.0.1")
    node.ok("DEL", conf, "", container_id="spoof")
    assert "pycni-" not in node.sh("nft", "list", "table", "bridge", "pycni").stdout.decode()


def test_second_subnet_on_the_bridge_keeps_the_first(node, make_netns):
    """A pod CIDR change: the new gateway joins the old one (the reference refuses any second IPv4 address)."""
    conf = bridge_conf(node, isGateway=True)
    node.sh("ip", "link", "add", conf["bridge"], "type", "bridge")
    node.sh("ip", "addr", "add", "10.62.9.1/24", "dev", conf["bridge"])
    node.ok("ADD", conf, make_netns("bc"), container_id="two1")
    have = sorted(a["local"] for a in addrs(node.name, conf["bridge"]) if a["family"] == "inet")
    assert have == ["10.61.0.1", "10.62.9.1"]


def test_force_address_and_promisc(node, make_netns):
    """Also the reference bug "could not set bridge's mac": the failed first ADD leaves the bridge portless
    (MAC 00:00:00:00:00:00), and the second must still pin a real MAC."""
    conf = bridge_conf(node, isGateway=True, promiscMode=True)
    node.sh("ip", "link", "add", conf["bridge"], "type", "bridge")
    node.sh("ip", "addr", "add", "10.61.0.254/24", "dev", conf["bridge"])
    c1, c2 = make_netns("bc"), make_netns("bc")
    out, rc, _ = node.run("ADD", conf, c1, container_id="fa1")
    assert rc != 0 and "10.61.0.254" not in out["msg"] and conf["bridge"] in out["msg"]
    assert node.veths() == [] and node.leases(conf["name"]) == []
    node.ok("ADD", dict(conf, forceAddress=True), c2, container_id="fa2")
    have = [a["local"] for a in addrs(node.name, conf["bridge"]) if a["family"] == "inet"]
    assert have == ["10.61.0.1"]
    assert "PROMISC" in link_json(node.name, conf["bridge"])["flags"]
