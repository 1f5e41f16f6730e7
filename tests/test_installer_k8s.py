"""pycni-installer on a real cluster's terms (issue 19): what ConfigRejected names, the cause of an
unreachable API, `loopback` installed only where free, and the node uninstall (`uninstall --node`)
on real links, routes and nftables in a private namespace standing in for the node."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from helpers import ROOT, exec_plugin, in_netns, netns_path, plugin_env, unique, wait_until
from pycni.installer.health import Status
from pycni.installer.log import JsonFormatter, Log
from pycni.installer.reconcile import REJECTED, WAITING, Installer
from pycni.installer.settings import parse
from pycni.installer.state import STATE_NAME
from pycni.installer.uninstall import uninstall

# The installer's behaviour does not depend on the node server.
pytestmark = pytest.mark.standalone_only


class Node:
    """Temp dirs standing in for the node's CNI dirs and the mounted ConfigMap."""

    def __init__(self, root: Path, source: Path) -> None:
        self.src = source
        self.bin, self.net, self.cfg = root / "opt-cni-bin", root / "etc-cni-net.d", root / "config"
        for d in (self.bin, self.net, self.cfg):
            d.mkdir()

    def args(self, *extra: str) -> List[str]:
        return ["--source-dir", str(self.src), "--bin-dir", str(self.bin), "--conf-dir", str(self.net),
                "--config-dir", str(self.cfg), "--no-watch-api", "--listen", "off", "--host-root", "/", *extra]

    def installer(self, *extra: str) -> Installer:
        """An installer with its sources started (stopped at the end of the test)."""
        installer = Installer(parse(self.args(*extra), {}), Log("error"), Status())
        installer.start_sources()
        self.started.append(installer)
        return installer


def captured_log() -> Tuple[Log, io.StringIO]:
    """An info-level event log whose JSON lines land in the returned stream (and nowhere else)."""
    stream = io.StringIO()
    log = Log("info", name=unique("log"))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log.logger.addHandler(handler)
    log.logger.propagate = False
    return log, stream


@pytest.fixture
def node(tmp_path: Path, bin_dir: Path) -> Iterator[Node]:
    made = Node(tmp_path, bin_dir)
    made.started = []
    yield made
    for installer in made.started:
        installer.stop.set()


def conflist(**over: Any) -> str:
    conf = {"cniVersion": "1.0.0", "name": "k8snet", "plugins": [
        {"type": "pycni-bridge", "bridge": "cni0",
         "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "10.235.0.0/24"}]]}}]}
    conf.update(over)
    return json.dumps(conf)


# ---- item 6: ConfigRejected names the node's path ----------------------------------------------

@pytest.mark.parametrize("how", ["configured", "found-through-host-root"])
def test_a_missing_plugin_is_named_with_the_nodes_bin_dir(how: str, node: Node, tmp_path: Path) -> None:
    """Old code named the container's mount (here the temp dir) instead of /opt/cni/bin."""
    (node.cfg / "conflist.yaml").write_text(conflist(plugins=[{"type": "no-such-plugin"}]))
    if how == "configured":  # the chart sets PYCNI_HOST_BIN_DIR from hostPaths.cniBinDir
        installer = node.installer("--host-bin-dir", "/opt/cni/bin")
    else:  # found by inode through the host root, as /opt/cni/bin
        host_root = tmp_path / "hostroot"
        (host_root / "opt" / "cni").mkdir(parents=True)
        (host_root / "opt" / "cni" / "bin").symlink_to(node.bin)  # same dir, seen at the node's path
        installer = node.installer("--host-root", str(host_root))
    assert installer.sync("test") == REJECTED
    kind, message = installer.status.rejection
    assert kind == "missing_plugin"
    assert "'no-such-plugin' is not an executable in /opt/cni/bin" in message, message
    assert str(tmp_path) not in message


# ---- item 2: the cause of an unreachable API -----------------------------------------------------

def unreachable_kubeconfig(tmp_path: Path) -> Tuple[Path, int]:
    """A kubeconfig naming a local port nobody listens on (as the Service address before kube-proxy)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}",
                                              "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    return kubeconfig, port


def test_an_unreachable_api_is_named_on_readyz_and_in_the_log(node: Node, tmp_path: Path) -> None:
    """The issue's node: the Service address does not answer from a host-network pod. After a few
    failures /readyz and one log line name the endpoint and the error; old code only said
    "waiting for the first list of node ..."."""
    kubeconfig, port = unreachable_kubeconfig(tmp_path)
    (node.cfg / "conflist.yaml").write_text(conflist(plugins=[
        {"type": "pycni-bridge", "bridge": "cni0",
         "ipam": {"type": "pycni-host-local", "ranges": "__POD_CIDR_RANGES__"}}]))
    from pycni.installer.kube import api_client

    log, stream = captured_log()
    installer = Installer(parse(node.args("--node-name", "node-x"), {"KUBECONFIG": str(kubeconfig)}),
                          log, Status(), api_factory=lambda: api_client({"KUBECONFIG": str(kubeconfig)}))
    installer.start_sources()
    try:
        def cause() -> str:
            assert installer.sync("test") == WAITING
            reason = installer.status.ready()[1]
            return reason if "not reachable" in reason else ""

        reason = wait_until(cause, 30, "the cause on /readyz")
    finally:
        installer.stop.set()
    assert reason.startswith("waiting for the first list of node node-x: API server "
                             f"https://127.0.0.1:{port} not reachable"), reason
    assert "Connection refused" in reason or "ConnectionRefused" in reason or "Max retries" in reason, reason
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [r for r in lines if r["event"] == "api_unreachable"]
    assert line["endpoint"] == f"https://127.0.0.1:{port}" and line["why"]
    assert "kubernetes.apiServer" in line["hint"]


def test_the_agent_names_an_unreachable_api_on_readyz(make_netns, tmp_path: Path) -> None:
    """pycni-agent (in a namespace standing in for a node) with the same unreachable API: its
    /readyz names the endpoint; old code said only "waiting for the first list of Nodes ..."."""
    kubeconfig, port = unreachable_kubeconfig(tmp_path)
    ns = make_netns("ag")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), NODE_NAME="node-x")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "pycni.agent", "--listen",
                             "127.0.0.1:9766", "--configmap", "kube-system/pycni-config"], cwd=str(ROOT), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    probe = ("import urllib.request, urllib.error\n"
             "try:\n    print(urllib.request.urlopen('http://127.0.0.1:9766/readyz', timeout=2).read().decode())\n"
             "except urllib.error.HTTPError as exc:\n    print(exc.read().decode())\n"
             "except OSError:\n    print('')\n")
    try:
        reason = wait_until(lambda: (lambda r: r if "not reachable" in r else "")(
            in_netns(ns, sys.executable, "-c", probe).stdout.decode()), 60, "the cause on the agent's /readyz")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"API server https://127.0.0.1:{port} not reachable" in reason, reason
    assert '"api_unreachable"' in err


# ---- item 3: loopback, only where free --------------------------------------------------------

def test_loopback_installed_where_free_and_removed_by_uninstall(node: Node) -> None:
    (node.cfg / "conflist.yaml").write_text(conflist())
    installer = node.installer()
    installer.sync("test")
    ours = (node.src / "pycni-loopback").read_bytes()
    assert (node.bin / "loopback").read_bytes() == ours
    assert str(node.bin / "loopback") in json.loads((node.bin / STATE_NAME).read_text())["binaries"]
    assert installer.sync("again") in ("unchanged", "written") and installer.status.binary_copies == len(
        list(node.src.iterdir())) + 1  # nothing copied twice
    assert uninstall(installer.s, Log("error")) == 0
    assert not (node.bin / "loopback").exists() and not (node.bin / "pycni-bridge").exists()


@pytest.mark.parametrize("when", ["before-install", "after-install"])
def test_a_loopback_we_did_not_write_is_never_touched(when: str, node: Node) -> None:
    """Another package's loopback (the reference's, here) stays, byte for byte, through syncs and
    uninstall; ours replaced by it is no longer ours."""
    theirs = Path("/usr/lib/cni/loopback").read_bytes()
    (node.cfg / "conflist.yaml").write_text(conflist())
    if when == "before-install":
        (node.bin / "loopback").write_bytes(theirs)
    installer = node.installer()
    installer.sync("test")
    if when == "after-install":
        (node.bin / "loopback").unlink()
        (node.bin / "loopback").write_bytes(theirs)
    for _ in range(2):
        installer.sync("resync")
        node.installer().sync("restarted installer")
    assert (node.bin / "loopback").read_bytes() == theirs
    uninstall(installer.s, Log("error"))
    assert (node.bin / "loopback").read_bytes() == theirs
    assert not (node.bin / "pycni-loopback").exists()


# ---- item 4: uninstall --node on real kernel state -------------------------------------------

def sh_in(ns: str, *cmd: str) -> None:
    in_netns(ns, *cmd)


def links(ns: str) -> Dict[str, Dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(in_netns(ns, "ip", "-j", "-d", "link", "show").stdout)}


def test_node_uninstall_removes_pycni_state_and_keeps_the_rest(node: Node, bin_dir: Path, make_netns,
                                                               tmp_path: Path) -> None:
    """Everything the issue lists, made for real inside a namespace standing in for the node: the
    installer's files; the agent's `inet pycni-agent` table, proto-156 route and VXLAN device; a
    port-less pycni bridge with its gateway; the IPAM store; the DNS state. A bridge with a pod on it,
    a foreign bridge, another nft table and another route stay."""
    host, pod, busy_pod = make_netns("un"), make_netns("up"), make_netns("up")
    ipam_dir, dns_dir = tmp_path / "ipam", tmp_path / "dns"
    empty, busy, foreign = unique("une"), unique("unb"), unique("unf")

    def net(name: str, bridge: str, subnet: str) -> Dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": name, "plugins": [
            {"type": "pycni-bridge", "bridge": bridge, "isGateway": True,
             "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(ipam_dir)}},
            {"type": "pycni-dns", "stateDir": str(dns_dir)}]}

    conf = net("unnet", empty, "10.236.1.0/24")
    (node.cfg / "conflist.yaml").write_text(json.dumps(conf))
    installer = node.installer()
    installer.sync("test")
    conflist_path = node.net / "10-pycni.conflist"
    assert conflist_path.exists()

    def bridge_call(command: str, ns: str, container: str, plugin: Dict[str, Any], name: str) -> None:
        env = plugin_env(command, netns_path(ns), container, cni_path=str(bin_dir),
                         extra={"PYCNI_SERVER_SOCKET": "off"})
        out, rc, err = exec_plugin(bin_dir / "pycni-bridge", env, {"cniVersion": "1.0.0", "name": name, **plugin},
                                   netns=host)
        assert rc == 0, (out, err)

    bridge_call("ADD", pod, "c1", conf["plugins"][0], "unnet")
    bridge_call("DEL", pod, "c1", conf["plugins"][0], "unnet")  # the bridge stays, gateway on it, no ports
    (ipam_dir / "unnet").mkdir(parents=True, exist_ok=True)
    (ipam_dir / "unnet" / "10.236.1.9").write_text("leftover")
    (dns_dir / "unnet").mkdir(parents=True)
    (dns_dir / "unnet" / "records").write_text("{}")
    busy_conf = net("busynet", busy, "10.236.2.0/24")["plugins"][0]
    bridge_call("ADD", busy_pod, "c2", busy_conf, "busynet")  # a bridge with a pod: must stay
    sh_in(host, "ip", "link", "add", foreign, "type", "bridge")
    sh_in(host, "ip", "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1")
    sh_in(host, "ip", "link", "set", "dummy0", "up")
    sh_in(host, "ip", "addr", "add", "192.0.2.1/24", "dev", "dummy0")
    sh_in(host, "ip", "route", "add", "10.99.0.0/24", "via", "192.0.2.2", "proto", "156")  # the agent's
    sh_in(host, "ip", "route", "add", "10.98.0.0/24", "via", "192.0.2.2")  # someone else's
    sh_in(host, "ip", "link", "add", "pycni-vxlan", "type", "vxlan", "id", "1", "dstport", "8472", "dev", "dummy0")
    sh_in(host, "ip", "link", "set", "pycni-vxlan", "alias", "pycni-agent vxlan")
    sh_in(host, "nft", "add table inet pycni-agent; add chain inet pycni-agent post "
          "{ type nat hook postrouting priority 100; }; add rule inet pycni-agent post masquerade; "
          "add table inet someone-else")

    # the manifest also names the busy network's conflist (a second file of ours, as after an edit)
    (node.net / "20-busy.conflist").write_text(json.dumps(net("busynet", busy, "10.236.2.0/24")))
    installer.manifest.record("conflists", {str(node.net / "20-busy.conflist"): __import__(
        "hashlib").sha256((node.net / "20-busy.conflist").read_bytes()).hexdigest()})

    marker = tmp_path / "done"
    agent = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "pycni.agent", "cleanup"],
                           cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert agent.returncode == 0, agent.stderr
    proc = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "pycni.installer", "uninstall", "--node",
                           "--bin-dir", str(node.bin), "--conf-dir", str(node.net), "--done-marker", str(marker)],
                          cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    log = [json.loads(line) for line in proc.stderr.splitlines()]

    assert sorted(p.name for p in node.bin.iterdir()) == [] and sorted(p.name for p in node.net.iterdir()) == []
    have = links(host)
    assert empty not in have and "pycni-vxlan" not in have
    assert busy in have and foreign in have  # pods on it / not ours
    assert have[busy].get("ifalias") == "pycni-bridge"
    routes = in_netns(host, "ip", "route", "show").stdout.decode()
    assert "10.99.0.0/24" not in routes and "10.98.0.0/24" in routes and "10.236.1.0/24" not in routes
    tables = in_netns(host, "nft", "list", "tables").stdout.decode()
    assert "pycni-agent" not in tables and "someone-else" in tables
    assert not (ipam_dir / "unnet").exists() and not (dns_dir / "unnet").exists()
    assert not (ipam_dir / ".pycni-hostlocal").exists()  # host-local's index of both networks, then its dir
    kept = {r["what"]: r["why"] for r in log if r["event"] == "cleanup_kept"}
    assert "pods still attached" in kept[f"bridge {busy}"], kept
    assert not marker.exists()  # no --idle: exits
    # idempotent: a second run (the pod restarted) finds nothing and succeeds
    again = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "pycni.installer", "uninstall",
                            "--node", "--bin-dir", str(node.bin), "--conf-dir", str(node.net)],
                           cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    agent_again = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "pycni.agent", "cleanup"],
                                 cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert agent_again.returncode == 0, agent_again.stderr
    bridge_call("DEL", busy_pod, "c2", busy_conf, "busynet")


def test_idle_marks_done_and_exits_on_sigterm(node: Node, tmp_path: Path, make_netns) -> None:
    """The DaemonSet container: Ready (the marker) once clean, then waits; SIGTERM ends it with 0."""
    host = make_netns("ui")
    marker = tmp_path / "done"
    proc = subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-m", "pycni.installer", "uninstall",
                             "--node", "--idle", "--bin-dir", str(node.bin), "--conf-dir", str(node.net),
                             "--done-marker", str(marker)], cwd=str(ROOT), stderr=subprocess.DEVNULL)
    try:
        wait_until(marker.exists, 60, "the done marker")
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
