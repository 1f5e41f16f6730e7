"""pycni-agent on a real kernel: three simulated nodes, real agents, the in-test API server."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from agent_cluster import Cluster, wait_until

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

VXLAN = "backend: vxlan\nvxlan: {vni: 42, port: 8472}\n"


@pytest.fixture
def make_cluster(tmp_path: Path, bin_dir: Path) -> Iterator[Callable[..., Cluster]]:
    """Cluster(tmp_path, bin_dir, **options), closed after the test."""
    made: List[Cluster] = []

    def make(**options: Any) -> Cluster:
        made.append(Cluster(tmp_path, bin_dir, **options))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.close()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster(resync=2.0)


def with_pods_and_agents(c: Cluster, nodes: List) -> List:
    """One pod on each node, then every node's agent, ready."""
    for node in nodes:
        c.add_pod(node)
    start_agents(c, nodes)
    return nodes


def three_nodes(c: Cluster, config: str = "backend: host-gw\n", third: str = "A"):
    c.start(config, router=third == "B")
    return with_pods_and_agents(c, [c.add_node(1), c.add_node(2), c.add_node(3, third)])


def start_agents(c: Cluster, nodes) -> None:
    for node in nodes:
        c.start_agent(node, wait_ready=False)
    for node in nodes:
        wait_until(lambda: c.ready(node), 60, f"agent of {node.name} ready: {c.log(node)[-3000:]}", interval=0.1)


def test_host_gw_pod_reaches_pods_on_other_nodes_keeping_its_source(cluster: Cluster) -> None:
    n1, n2, n3 = three_nodes(cluster)
    pod1, pod2, pod3 = n1.pods[0], n2.pods[0], n3.pods[0]
    assert cluster.route_map(n1) == {n2.pod_cidr: f"{n2.ip} eth0", n3.pod_cidr: f"{n3.ip} eth0"}
    cluster.wait_ping(pod1, pod2["ip"], 5)
    cluster.wait_ping(pod1, pod3["ip"], 5)
    cluster.wait_ping(pod3, pod2["ip"], 5)
    # pycni-bridge's ipMasq is on: the agent's null binding keeps pod-to-pod sources ...
    assert cluster.observed_source(pod1, pod2) == pod1["ip"]
    # ... while traffic leaving the pod network is still masqueraded (to node1's address)
    outside = {"ns": cluster.nodes["node2"].ns, "ip": n2.ip}  # node2's own address: not a pod
    assert cluster.observed_source(pod1, outside, 5598) == n1.ip
    m = cluster.metrics(n1)
    assert m["pycni_agent_routes"] == 2 and m["pycni_agent_ready"] == 1
    assert m["pycni_agent_unreachable_nodes_total"] == 0


def test_vxlan_across_two_underlay_subnets_where_host_gw_reports_unreachable(cluster: Cluster) -> None:
    n1, n2, n3 = three_nodes(cluster, third="B")  # node3 behind a router
    pod1, pod2, pod3 = n1.pods[0], n2.pods[0], n3.pods[0]
    # host-gw: node3 is not on node1's segment: reported, and no (wrong) route for it
    assert cluster.route_map(n1) == {n2.pod_cidr: f"{n2.ip} eth0"}
    assert cluster.route_map(n3) == {}
    cluster.wait_ping(pod1, pod2["ip"], 5)
    assert not cluster.ping(pod1, pod3["ip"])
    m = cluster.metrics(n1)
    assert m["pycni_agent_unreachable_nodes_total"] == 1
    assert any(k.startswith('pycni_agent_unreachable_nodes{node="node3"') for k in m)
    assert [e["node"] for e in cluster.events(n1, "node_unreachable")] == ["node3"]
    assert cluster.metrics(n3)["pycni_agent_unreachable_nodes_total"] == 2
    # the same cluster on the vxlan backend: a ConfigMap edit, no restart
    cluster.set_config(VXLAN)
    for src, dst in ((pod1, pod3), (pod3, pod2), (pod2, pod1), (pod3, pod1)):
        cluster.wait_ping(src, dst["ip"], 20)
    assert cluster.observed_source(pod3, pod1) == pod3["ip"]
    routes = cluster.routes(n1)
    assert sorted((r["dst"], r["gateway"], r["dev"], "onlink" in r["flags"]) for r in routes) == [
        (n2.pod_cidr, "10.244.2.0", "pycni-vxlan", True), (n3.pod_cidr, "10.244.3.0", "pycni-vxlan", True)]
    macs = {}
    for node in (n1, n2, n3):
        obj = cluster.api.get("nodes", node.name)
        macs[node.name] = obj["metadata"]["annotations"]["pycni.dev/vtep-mac"]
        link = subprocess.run(["ip", "-n", node.ns, "-d", "-j", "link", "show", "pycni-vxlan"],
                              stdout=subprocess.PIPE, check=True).stdout.decode()
        assert macs[node.name] in link and '"id":42' in link and '"mtu":1450' in link
    fdb = cluster.fdb(n1)
    assert len(fdb) == 2 and any(macs["node3"] in e and f"dst {n3.ip}" in e for e in fdb)
    assert any(macs["node2"] in e and "10.244.2.0" in e for e in cluster.neigh(n1))
    m = cluster.metrics(n1)
    assert m["pycni_agent_fdb_entries"] == 2 and m["pycni_agent_unreachable_nodes_total"] == 0


def test_deleted_node_loses_its_routes_and_a_moved_node_moves(cluster: Cluster) -> None:
    n1, n2, n3 = three_nodes(cluster)
    cluster.api.delete("nodes", "node3")
    wait_until(lambda: n3.pod_cidr not in cluster.route_map(n1), 10, what="node3's route gone on node1")
    wait_until(lambda: n3.pod_cidr not in cluster.route_map(n2), 10, what="node3's route gone on node2")
    assert cluster.route_map(n1) == {n2.pod_cidr: f"{n2.ip} eth0"}
    assert not cluster.ping(n1.pods[0], n3.pods[0]["ip"])
    # node2 gets a new InternalIP: the route follows it
    new_ip = cluster.addr(cluster.net_a, 99)
    subprocess.run(["ip", "-n", n2.ns, "addr", "add", f"{new_ip}/24", "dev", "eth0"], check=True)

    def move(obj):
        obj["status"]["addresses"][0]["address"] = new_ip
    cluster.update_node("node2", move)
    wait_until(lambda: cluster.route_map(n1) == {n2.pod_cidr: f"{new_ip} eth0"}, 10, what="route via the new IP")
    cluster.wait_ping(n1.pods[0], n2.pods[0]["ip"], 5)


def test_resync_removes_own_stale_routes_and_spares_foreign_ones(cluster: Cluster) -> None:
    n1, n2, n3 = three_nodes(cluster)
    ns = ["ip", "-n", n1.ns, "route", "add"]
    subprocess.run(ns + ["10.99.0.0/24", "via", n2.ip, "proto", "156"], check=True)  # ours, stale
    subprocess.run(ns + [n2.pod_cidr, "via", n3.ip, "proto", "156", "metric", "50"], check=True)  # ours, duplicate
    subprocess.run(ns + ["10.98.0.0/24", "via", n2.ip, "proto", "static"], check=True)  # foreign
    subprocess.run(ns + ["10.97.0.0/24", "via", n3.ip], check=True)  # foreign (proto boot)
    wait_until(lambda: len(cluster.routes(n1)) == 2, 8, what="stale agent routes removed at resync")
    assert cluster.route_map(n1) == {n2.pod_cidr: f"{n2.ip} eth0", n3.pod_cidr: f"{n3.ip} eth0"}
    foreign = {r["dst"] for r in cluster.routes(n1, proto=None)}
    assert {"10.98.0.0/24", "10.97.0.0/24"} <= foreign
    # a foreign route holding a prefix we should route: left alone and reported
    subprocess.run(["ip", "-n", n1.ns, "route", "del", n3.pod_cidr, "proto", "156"], check=True)
    subprocess.run(ns + [n3.pod_cidr, "via", n2.ip, "proto", "static"], check=True)
    wait_until(lambda: cluster.metrics(n1).get("pycni_agent_route_conflicts") == 1, 8, what="conflict reported")
    static = [r for r in cluster.routes(n1, proto=None) if r["dst"] == n3.pod_cidr]
    assert len(static) == 1 and static[0]["gateway"] == n2.ip and static[0].get("protocol") == "static"


def test_restarted_agent_converges_to_the_same_state_without_duplicates(cluster: Cluster) -> None:
    n1, n2, n3 = three_nodes(cluster, VXLAN)
    cluster.wait_ping(n1.pods[0], n3.pods[0]["ip"], 15)

    def state():
        return (cluster.routes(n1), cluster.fdb(n1), cluster.neigh(n1),
                subprocess.run(["ip", "-n", n1.ns, "addr", "show", "dev", "pycni-vxlan"],
                               stdout=subprocess.PIPE).stdout.decode().count("inet "),
                subprocess.run(["ip", "netns", "exec", n1.ns, "nft", "list", "ruleset"],
                               stdout=subprocess.PIPE).stdout.decode())

    # converged: both peers' VTEPs known, so their routes have moved from host-gw onto the device
    wait_until(lambda: len(cluster.fdb(n1)) == 2 and {r.get("dev") for r in cluster.routes(n1)} == {"pycni-vxlan"},
               10, what="two FDB entries on node1 and its routes over pycni-vxlan")
    before = state()
    cluster.stop_agent(n1)  # SIGTERM: everything stays in place for the next agent
    assert state()[:4] == before[:4]
    assert cluster.ping(n1.pods[0], n3.pods[0]["ip"])
    cluster.start_agent(n1)
    time.sleep(2.5)  # one resync more
    after = state()
    assert after == before and len(after[0]) == 2 and after[3] == 1
    # the restarted agent found everything in place: it changed nothing (the device was reused)
    changes = ("route_set", "route_removed", "fdb_added", "fdb_removed", "neighbour_added",
               "neighbour_removed", "vtep_address_added", "vxlan_device_added", "vxlan_device_removed")
    assert [e for kind in changes for e in cluster.events(n1, kind)] == []
    assert cluster.events(n1, "config_loaded")  # (the log is the new agent's)
    assert cluster.ping(n1.pods[0], n3.pods[0]["ip"])


def test_switching_host_gw_to_vxlan_keeps_pods_connected(cluster: Cluster) -> None:
    n1, n2, n3 = three_nodes(cluster)
    pod1, pod2 = n1.pods[0], n2.pods[0]
    cluster.wait_ping(pod1, pod2["ip"], 5)
    interval = 0.05
    pinger = subprocess.Popen(["ip", "netns", "exec", pod1["ns"], "ping", "-n", "-i", str(interval), "-W", "1",
                               "-w", "8", pod2["ip"]], stdout=subprocess.PIPE)
    time.sleep(1)
    cluster.set_config(VXLAN)
    wait_until(lambda: {r.get("dev") for r in cluster.routes(n1)} == {"pycni-vxlan"}, 8, what="vxlan routes")
    out, _ = pinger.communicate(timeout=20)
    seqs = sorted(int(s) for s in re.findall(r"icmp_seq=(\d+)", out.decode()))
    assert seqs, out
    gaps = [b - a for a, b in zip(seqs, seqs[1:])]
    longest = max(gaps + [1]) * interval
    assert longest < cluster.resync, f"pod-to-pod outage of {longest:.2f}s (resync {cluster.resync}s)"
    print(f"host-gw -> vxlan: longest pod-to-pod gap {longest:.2f}s, {len(seqs)} replies")  # shown with -s
    assert seqs[-1] * interval > 5  # the ping kept running past the switch
    # and back: the VXLAN device and the annotations go away, routes return to host-gw
    cluster.set_config("backend: host-gw\n")
    wait_until(lambda: cluster.route_map(n1) == {n2.pod_cidr: f"{n2.ip} eth0", n3.pod_cidr: f"{n3.ip} eth0"}, 8,
               what="host-gw routes again")
    wait_until(lambda: not cluster.fdb(n1) and subprocess.run(
        ["ip", "-n", n1.ns, "link", "show", "pycni-vxlan"], stderr=subprocess.DEVNULL).returncode != 0, 8,
        what="vxlan device removed")
    wait_until(lambda: "pycni.dev/vtep-mac" not in (cluster.api.get("nodes", "node1")["metadata"].get(
        "annotations") or {}), 8, what="annotation removed")
    cluster.wait_ping(pod1, pod2["ip"], 3)


def test_host_gw_and_vxlan_route_ipv6_pod_cidrs_too(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(resync=2.0, dual_stack=True)
    c.start()
    n1, n2 = with_pods_and_agents(c, [c.add_node(1), c.add_node(2)])
    assert c.route_map(n1, "-6") == {n2.pod_cidr6: f"{n2.ip6} eth0"}
    assert c.route_map(n1) == {n2.pod_cidr: f"{n2.ip} eth0"}
    wait_until(lambda: c.ping(n1.pods[0], n2.pods[0]["ip6"]), 10, what="IPv6 pod-to-pod over host-gw")
    c.set_config(VXLAN)  # IPv4 underlay carrying both families
    wait_until(lambda: {r.get("dev") for r in c.routes(n1, family="-6")} == {"pycni-vxlan"}, 10,
               what="IPv6 routes over the VXLAN device")
    assert c.route_map(n1, "-6") == {n2.pod_cidr6: "fd10:2:: pycni-vxlan"}
    wait_until(lambda: c.ping(n1.pods[0], n2.pods[0]["ip6"]), 10, what="IPv6 pod-to-pod over vxlan")
    c.wait_ping(n2.pods[0], n1.pods[0]["ip"], 5)


def test_pod_sources_survive_the_bridge_iptables_masquerade_too(make_cluster: Callable[..., Cluster]) -> None:
    """ipMasqBackend: iptables (iptables-nft here) hooks NAT at the same point: the null binding wins too."""
    c = make_cluster(masq_backend="iptables")
    c.start()
    n1, n2 = with_pods_and_agents(c, [c.add_node(1), c.add_node(2)])
    assert "MASQUERADE" in subprocess.run(["ip", "netns", "exec", n1.ns, "iptables", "-t", "nat", "-S"],
                                          stdout=subprocess.PIPE).stdout.decode()
    c.wait_ping(n1.pods[0], n2.pods[0]["ip"], 5)
    assert c.observed_source(n1.pods[0], n2.pods[0]) == n1.pods[0]["ip"]
    assert c.observed_source(n1.pods[0], {"ns": n2.ns, "ip": n2.ip}, 5598) == n1.ip
