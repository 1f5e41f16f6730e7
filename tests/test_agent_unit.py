"""pycni-agent without a kernel: config keys, the desired-state function, the NAT ruleset, the Node watch."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from k8s_fake_api import FakeKubeAPI
from pycni.installer.network import ConfigError, NetworkConfig, parse_network_config, vxlan_mtu
from pycni.agent.desired import RouteSpec, Subnet, compute
from pycni.agent.masq import ruleset
from pycni.agent.nodes import NodeInfo, NodeListWatcher, NodeStore
from pycni.installer.log import Log


def test_network_config_defaults_and_keys() -> None:
    assert parse_network_config(None) == NetworkConfig()
    assert parse_network_config("") == NetworkConfig()
    cfg = parse_network_config("backend: vxlan\nvxlan: {vni: 7, port: 4789, mtu: 1400, device: vx0}\n"
                               "resyncSeconds: 5\nmasquerade: false\nclusterCIDRs: [10.244.0.0/16]\n")
    assert (cfg.backend, cfg.vxlan.vni, cfg.vxlan.port, cfg.vxlan.mtu, cfg.vxlan.device) == \
        ("vxlan", 7, 4789, 1400, "vx0")
    assert cfg.resync_seconds == 5 and cfg.masquerade is False and cfg.cluster_cidrs == ("10.244.0.0/16",)
    assert vxlan_mtu(1500) == 1450 and vxlan_mtu(1500, 6) == 1430


@pytest.mark.parametrize("text,key", [
    ("backend: flannel", "backend"), ("vxlan: {vni: 0}", "vxlan.vni"), ("vxlan: {port: 70000}", "vxlan.port"),
    ("vxlan: {device: averyveryverylongname}", "vxlan.device"), ("vxlan: {mtu: 100}", "vxlan.mtu"),
    ("resyncSeconds: -1", "resyncSeconds"), ("masquerade: 1", "masquerade"), ("clusterCIDRs: [nope]", "clusterCIDRs"),
    ("bogus: 1", "network.yaml"), ("[1, 2]", "network.yaml"), ("vxlan: {vnii: 1}", "vxlan"),
])
def test_network_config_rejects_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_network_config(text)


NODES = {
    "a": NodeInfo("a", ("192.168.1.1", "fd00::1"), ("10.244.1.0/24", "fd10:1::/64"), "02:00:00:00:00:01"),
    "b": NodeInfo("b", ("192.168.1.2", "fd00::2"), ("10.244.2.0/24", "fd10:2::/64"), "02:00:00:00:00:02"),
    "c": NodeInfo("c", ("192.168.9.3",), ("10.244.3.0/24",), None),
    "d": NodeInfo("d", ("192.168.1.4",), (), None),
    "e": NodeInfo("e", ("192.168.1.5",), ("10.244.2.0/24",), None),  # claims b's podCIDR
}
SUBNETS = [Subnet("192.168.1.0/24", "eth0"), Subnet("fd00::/64", "eth0")]


def test_host_gw_routes_only_nodes_on_the_segment_both_families() -> None:
    d = compute("a", NODES, "host-gw", SUBNETS)
    assert d.routes == {"10.244.2.0/24": RouteSpec("10.244.2.0/24", "192.168.1.2", "eth0"),
                        "fd10:2::/64": RouteSpec("fd10:2::/64", "fd00::2", "eth0")}
    assert set(d.unreachable) == {"c", "d", "e"}
    assert "not on the same L2 segment" in d.unreachable["c"]
    assert "no podCIDR" in d.unreachable["d"] and "also b's" in d.unreachable["e"]
    assert not d.fdb and not d.neighbours and not d.vtep_addresses
    assert d.cluster_cidrs == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "fd10:1::/64", "fd10:2::/64"]


def test_vxlan_routes_neighbours_fdb_and_host_gw_fallback_while_a_vtep_is_unknown() -> None:
    nodes = dict(NODES, f=NodeInfo("f", ("192.168.1.6",), ("10.244.6.0/24",), None))
    d = compute("a", nodes, "vxlan", SUBNETS, "vx", 4)
    assert d.routes["10.244.2.0/24"] == RouteSpec("10.244.2.0/24", "10.244.2.0", "vx", onlink=True)
    assert d.routes["fd10:2::/64"] == RouteSpec("fd10:2::/64", "fd10:2::", "vx", onlink=True)
    assert {(f.mac, f.dst) for f in d.fdb} == {("02:00:00:00:00:02", "192.168.1.2")}
    assert {(n.ip, n.mac) for n in d.neighbours} == {("10.244.2.0", "02:00:00:00:00:02"),
                                                     ("fd10:2::", "02:00:00:00:00:02")}
    assert d.vtep_addresses == ["10.244.1.0/32", "fd10:1::/128"]
    # f has no VTEP MAC yet but shares our segment: host-gw meanwhile; c has neither: unreachable
    assert d.routes["10.244.6.0/24"] == RouteSpec("10.244.6.0/24", "192.168.1.6", "eth0")
    assert "f" in d.pending and "f" not in d.unreachable
    assert "c" in d.unreachable and "10.244.3.0/24" not in d.routes


def test_nat_ruleset_keeps_pod_sources_and_masquerades_the_rest() -> None:
    script = ruleset(["10.244.1.0/24", "10.244.2.0/24"], ["10.244.1.0/24"], True)
    assert "snat ip to ip saddr" in script and "priority srcnat - 10" in script
    assert "ip saddr { 10.244.1.0/24 } ip daddr != @pods4" in script and "masquerade" in script
    assert "ip6" not in script
    assert "masquerade-out" not in ruleset(["10.244.1.0/24"], ["10.244.1.0/24"], False)
    assert "chain" not in ruleset([], [], True)


def test_node_watcher_follows_changes_relists_after_410_and_patch_reaches_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """... and the watch events stay JSON dicts: the client's model deserialiser (~15x json.loads for
    a Node) never runs for them (it did when the watch went through kubernetes.watch.Watch)."""
    from kubernetes.client import ApiClient

    from pycni.installer.kube import api_client

    models = []
    real_deserialize = ApiClient.deserialize

    def deserialize(self, *args, **kwargs):  # a spy on the real method
        models.append(args[1] if len(args) > 1 else kwargs.get("response_type"))
        return real_deserialize(self, *args, **kwargs)

    monkeypatch.setattr(ApiClient, "deserialize", deserialize)
    with FakeKubeAPI() as api:
        api.put_node("n1", ["10.244.1.0/24"])
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        client = api_client({"KUBECONFIG": str(kubeconfig)})
        changed = threading.Event()
        store = NodeStore(changed.set)
        stop = threading.Event()
        restarts = []
        watcher = NodeListWatcher(client, store, Log("error"), stop, 30, restarts.append).start()
        try:
            def wait(pred, what):
                deadline = time.monotonic() + 10
                while not pred():
                    assert time.monotonic() < deadline, what
                    time.sleep(0.02)

            wait(lambda: store.synced and "n1" in store.snapshot(), "first list")
            api.wait_for_watch("nodes")
            api.put_node("n2", ["10.244.2.0/24"])
            wait(lambda: "n2" in store.snapshot(), "ADDED n2")
            api.delete("nodes", "n1")
            wait(lambda: "n1" not in store.snapshot(), "DELETED n1")
            # the watch is cut and history compacted: the watcher relists (410) and sees n3
            api.drop_watches()
            api.compact()
            api.put_node("n3", ["10.244.3.0/24"])
            api.compact()
            wait(lambda: "n3" in store.snapshot(), "n3 after relist")
            assert "gone" in restarts, restarts  # 410 Gone: listed again
            assert not models, f"watch events deserialised into models: {models}"
            # PATCH (strategic merge, as patch_node sends it) lands, and the watch brings it
            from pycni.agent.annotate import VtepAnnotator

            assert VtepAnnotator(client, "n2", Log("error")).publish("02:aa:bb:cc:dd:ee", None)
            wait(lambda: store.snapshot()["n2"].vtep_mac == "02:aa:bb:cc:dd:ee", "annotation")
            assert api.requests_for("nodes", method="PATCH")[0].headers["content-type"].startswith(
                "application/strategic-merge-patch+json")
            assert VtepAnnotator(client, "n2", Log("error")).publish(None, "02:aa:bb:cc:dd:ee")
            wait(lambda: store.snapshot()["n2"].vtep_mac is None, "annotation removed")
            assert api.get("nodes", "n2")["spec"]["podCIDRs"] == ["10.244.2.0/24"]
        finally:
            stop.set()
            api.drop_watches()
            watcher.thread.join(timeout=10)


def test_pod_mtu_for_the_installer() -> None:
    from pycni.installer.network import pod_mtu

    assert pod_mtu(1500, None) == 1500 and pod_mtu(1500, "backend: host-gw") == 1500
    assert pod_mtu(1500, "backend: vxlan") == 1450 and pod_mtu(9000, "backend: vxlan") == 8950
    assert pod_mtu(1500, "backend: vxlan\nvxlan: {mtu: 1400}") == 1400
    assert pod_mtu(1500, "backend: bogus") == 1500
