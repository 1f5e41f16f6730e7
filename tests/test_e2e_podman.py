"""End to end: podman (CNI backend) networked by pycni, the node populated by the pycni installer.

The installer runs `--once` from the source tree with the chart's default conflist,
exactly as the DaemonSet renders it (only names and state dirs made unique per test);
podman then runs real containers with the installed zipapps.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from dns_helpers import free_subnet, kill_servers, server_pids
from server_helpers import status
from helpers import ROOT, sh, unique
from podman_helpers import Podman
from test_image import RUN, chart_security_flags, image  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def chart_default_conflist() -> Dict[str, Any]:
    """The chart's conflist as a standalone runtime's node wants it (README): podman uses CNI DNS
    results (`dns.enabled`), and without pycni-agent the bridge masquerades (`ipMasq`)."""
    values = yaml.safe_load((ROOT / "charts" / "pycni" / "values.yaml").read_text())
    conf = values["conflist"]
    conf["plugins"][0]["ipMasq"] = True
    conf["plugins"].append({"type": "pycni-dns", **values["dns"]["config"]})
    return conf


class Node:
    """Host dirs populated by the installer, and a podman that uses them."""

    def __init__(self, tmp: Path, bin_dir: Path) -> None:
        self.tmp = tmp
        self.source = bin_dir
        self.bin = tmp / "host" / "opt" / "cni" / "bin"
        self.conf = tmp / "host" / "etc" / "cni" / "net.d"
        self.config = tmp / "configmap"
        for d in (self.bin, self.conf, self.config):
            d.mkdir(parents=True)
        self.ipam = tmp / "ipam"
        self.dns_state = tmp / "dns"
        self.network = unique("e2e")
        self.bridge = unique("e2b")
        self.podman = Podman(tmp, [self.bin], self.conf)
        self.extra_links: List[str] = []

    def template(self, **plugin0: Any) -> Dict[str, Any]:
        """The chart's default conflist with this test's names and state dirs."""
        conf = chart_default_conflist()
        conf["name"] = self.network
        for plugin in conf["plugins"]:
            if plugin["type"] == "pycni-bridge":
                plugin["bridge"] = self.bridge
                plugin["ipam"]["dataDir"] = str(self.ipam)
            if plugin["type"] == "pycni-dns":
                plugin["stateDir"] = str(self.dns_state)
                plugin["upstreams"] = []
        conf["plugins"][0].update(plugin0)
        return conf

    def install(self, template: Dict[str, Any], pod_cidrs: str) -> Dict[str, Any]:
        (self.config / "conflist.yaml").write_text(yaml.safe_dump(template))
        proc = subprocess.run([sys.executable, "-m", "pycni.installer", "--once", "--source-dir", str(self.source),
                               "--bin-dir", str(self.bin), "--conf-dir", str(self.conf), "--config-dir",
                               str(self.config), "--node-name", "e2e-node", "--pod-cidrs", pod_cidrs,
                               "--listen", "off"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return json.loads((self.conf / "10-pycni.conflist").read_text())

    def install_with_image(self, image_ref: str, security_flags: List[str], template: Dict[str, Any],
                           pod_cidrs: str) -> Dict[str, Any]:
        """The installer from the built image, as the DaemonSet runs it, with this node's dirs as host paths."""
        (self.config / "conflist.yaml").write_text(yaml.safe_dump(template))
        cmd = RUN + ["--network", "none", *security_flags,
                     "-v", f"{self.bin}:/host/opt/cni/bin", "-v", f"{self.conf}:/host/etc/cni/net.d",
                     "-v", f"{self.config}:/etc/pycni/config:ro", "-e", f"PYCNI_HOST_BIN_DIR={self.bin}",
                     "-e", "PYCNI_NODE_NAME=e2e-node", "-e", f"PYCNI_POD_CIDRS={pod_cidrs}", image_ref, "--once"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads((self.conf / "10-pycni.conflist").read_text())

    def reservations(self) -> List[str]:
        store = self.ipam / self.network
        return sorted(p.name for p in store.iterdir() if p.name[0].isdigit() or ":" in p.name) \
            if store.is_dir() else []

    def cleanup(self) -> None:
        self.podman.cleanup()
        kill_servers(self.dns_state)
        sh("ip", "link", "del", self.bridge, check=False)
        for link in self.extra_links:
            sh("ip", "link", "del", link, check=False)


@pytest.fixture
def node(tmp_path: Path, bin_dir: Path):
    n = Node(tmp_path, bin_dir)
    try:
        n.podman.import_busybox()
        yield n
    finally:
        n.cleanup()


def start(node: Node, name: str, *extra: str) -> str:
    node.podman.run("-d", "--name", name, "--network", node.network, *extra, node.podman.image, "sleep", "600")
    return node.podman.ip_of(name, node.network)


def exec_in(node: Node, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return node.podman("exec", name, *cmd, check=check)


def host_veths(bridge: str) -> List[str]:
    out = sh("ip", "-o", "link", "show", "master", bridge, check=False).stdout.decode()
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def nft_mentions(text: str) -> bool:
    return text in sh("nft", "list", "ruleset").stdout.decode()


def test_default_conflist_two_containers_ping_resolve_and_clean_up(node: Node) -> None:
    subnet = free_subnet()
    conf = node.install(node.template(), str(subnet))
    assert [p["type"] for p in conf["plugins"]] == ["pycni-bridge", "pycni-dns"]
    a, b = unique("a"), unique("b")
    ip_a, ip_b = start(node, a), start(node, b)
    assert ip_a != ip_b and all(ipaddress.ip_address(ip) in subnet for ip in (ip_a, ip_b))
    gateway = str(subnet.network_address + 1)
    exec_in(node, a, "ping", "-c", "1", "-W", "3", ip_b)
    exec_in(node, b, "ping", "-c", "1", "-W", "3", gateway)
    resolved = exec_in(node, a, "nslookup", b).stdout.decode()
    assert f"Address: {ip_b}" in resolved, resolved
    assert len(node.reservations()) == 2 and len(host_veths(node.bridge)) == 2
    ids = [node.podman("inspect", "-f", "{{.Id}}", c).stdout.decode().strip() for c in (a, b)]
    assert all(nft_mentions(cid[:12]) or nft_mentions(cid) for cid in ids), "masquerade rules per container"
    node.podman("rm", "-f", "-t", "0", a)
    assert len(node.reservations()) == 1 and len(server_pids(node.dns_state)) == 1
    node.podman("rm", "-f", "-t", "0", b)
    assert node.reservations() == [] and host_veths(node.bridge) == []
    assert not any(nft_mentions(cid) for cid in ids)
    records = node.dns_state / node.network / "records.json"
    assert not records.exists() or all(cid not in records.read_text() for cid in ids)
    assert server_pids(node.dns_state) == [], "the DNS server is gone after the last container"


def test_podman_hands_plugin_execs_to_the_node_server(node: Node, start_server) -> None:
    """A real runtime's execs (Go's exec: pipes, its whole environment) go through the sh handoff:
    podman run's ADDs of pycni-bridge and pycni-dns are handed over (none comes over the socket)
    and the container works. Its DELs may come from conmon's `podman container cleanup`, which
    does not pass PYCNI_SERVER_SOCKET on (a node needs none: the default path is the chart's)."""
    path = start_server()
    node.podman.env["PYCNI_SERVER_SOCKET"] = str(path)
    subnet = free_subnet()
    node.install(node.template(), str(subnet))
    before = status(path)
    a = unique("h")
    start(node, a)
    exec_in(node, a, "ping", "-c", "1", "-W", "3", str(subnet.network_address + 1))
    handed, served = (status(path)[k] - before[k] for k in ("handed", "served"))
    assert handed >= 2 and served == handed
    node.podman("rm", "-f", "-t", "0", a)
    assert node.reservations() == [] and host_veths(node.bridge) == []


@pytest.mark.standalone_only  # the image's own server path is covered in test_image
def test_installed_by_the_built_image(node: Node, image: str, chart_security_flags: List[str]) -> None:  # noqa: F811
    subnet = free_subnet()
    conf = node.install_with_image(image, chart_security_flags, node.template(), str(subnet))
    assert [p["type"] for p in conf["plugins"]] == ["pycni-bridge", "pycni-dns"]
    assert sorted(p.name for p in node.bin.iterdir() if p.name.startswith("pycni-")) == [
        "pycni-bridge", "pycni-dns", "pycni-host-local", "pycni-loopback", "pycni-macvlan"]
    a, b = unique("a"), unique("b")
    ip_a, ip_b = start(node, a), start(node, b)
    assert all(ipaddress.ip_address(ip) in subnet for ip in (ip_a, ip_b))
    exec_in(node, a, "ping", "-c", "1", "-W", "3", ip_b)
    assert f"Address: {ip_b}" in exec_in(node, a, "nslookup", b).stdout.decode()
    node.podman("rm", "-f", "-t", "0", a, b)
    assert node.reservations() == [] and host_veths(node.bridge) == []


def test_macvlan_on_a_veth_master(node: Node) -> None:
    master, peer = unique("mvm"), unique("mvp")
    node.extra_links.append(master)
    sh("ip", "link", "add", master, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", master, "up")
    sh("ip", "link", "set", peer, "up")
    subnet = free_subnet()
    template = {"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": node.network, "plugins": [
        {"type": "pycni-macvlan", "master": master, "mode": "bridge",
         "ipam": {"type": "pycni-host-local", "ranges": "__POD_CIDR_RANGES__", "dataDir": str(node.ipam)}}]}
    node.install(template, str(subnet))
    a, b = unique("a"), unique("b")
    ip_a, ip_b = start(node, a), start(node, b)
    assert all(ipaddress.ip_address(ip) in subnet for ip in (ip_a, ip_b))
    exec_in(node, a, "ping", "-c", "1", "-W", "3", ip_b)
    node.podman("rm", "-f", "-t", "0", a, b)
    assert node.reservations() == []


def test_installer_rerun_with_a_new_subnet(node: Node) -> None:
    first, second = free_subnet(), free_subnet()
    node.install(node.template(), str(first))
    old = unique("old")
    ip_old = start(node, old)
    node.install(node.template(), str(second))
    new = unique("new")
    ip_new = start(node, new)
    assert ipaddress.ip_address(ip_old) in first and ipaddress.ip_address(ip_new) in second
    exec_in(node, old, "ping", "-c", "1", "-W", "3", str(first.network_address + 1))
    exec_in(node, new, "ping", "-c", "1", "-W", "3", str(second.network_address + 1))
    node.podman("rm", "-f", "-t", "0", old, new)
    assert node.reservations() == []


def test_twenty_concurrent_containers(node: Node) -> None:
    subnet = free_subnet()
    node.install(node.template(), str(subnet))
    names = [unique("c") for _ in range(20)]
    with ThreadPoolExecutor(20) as pool:
        ips = list(pool.map(lambda n: start(node, n), names))
    assert len(set(ips)) == 20 and all(ipaddress.ip_address(ip) in subnet for ip in ips)
    assert len(node.reservations()) == 20
    resolved = exec_in(node, names[0], "nslookup", names[-1]).stdout.decode()
    assert f"Address: {ips[-1]}" in resolved
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda n: node.podman("rm", "-f", "-t", "0", n), names))
    assert node.reservations() == [] and host_veths(node.bridge) == []
    assert server_pids(node.dns_state) == []
