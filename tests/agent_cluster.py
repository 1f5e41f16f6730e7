"""Simulated nodes for the pycni-agent tests: node network namespaces on an underlay, pods, agents.

- underlay A: a bridge in the root namespace holding an address of a fresh /24 (the only root
  address the tests create): the in-test API server listens there, so agents in the node
  namespaces reach it;
- underlay B (optional): a bridge inside a router namespace, routed to A by that router;
- each node: a namespace with `eth0` on A or B, a pod bridge on its podCIDR, pods attached by
  exec'ing the built pycni-bridge/pycni-host-local inside the node namespace, and a real
  `python3 -m pycni.agent` process inside the node namespace.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from helpers import plugin_env, sh, stop_process, unique, wait_until  # noqa: F401 (wait_until: used by test_agent)
from k8s_fake_api import FakeKubeAPI, _Handler

NAMESPACE, CONFIGMAP = "kube-system", "pycni"
AGENT_PORT = 9766
PROTO = "156"


class NetFakeKubeAPI(FakeKubeAPI):
    """The fake API server on a given address (the root namespace's underlay address)."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def start(self) -> "NetFakeKubeAPI":
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"




def _free_subnet(taken: List[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    routes = sh("ip", "-j", "route", "show").stdout.decode()
    used = [ipaddress.ip_network(r["dst"], strict=False) for r in json.loads(routes or "[]")
            if r.get("dst") not in (None, "default")]
    for _ in range(100):
        net = ipaddress.ip_network(f"172.{random.randint(16, 31)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used + taken):
            return net
    raise RuntimeError("no free /24 in 172.16.0.0/12")


@dataclass
class Node:
    name: str
    ns: str
    ip: str
    pod_cidr: str
    subnet: str  # "A" or "B"
    data_dir: Path
    ip6: str = ""
    pod_cidr6: str = ""
    pods: List[Dict[str, str]] = field(default_factory=list)  # {"ns": ..., "ip": ...}
    agent: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None


class Cluster:
    def __init__(self, tmp: Path, bin_dir: Path, resync: float = 30.0, dual_stack: bool = False,
                 masq_backend: str = "nftables") -> None:
        self.tmp, self.bin_dir, self.resync, self.dual_stack = tmp, bin_dir, resync, dual_stack
        self.masq_backend = masq_backend  # pycni-bridge's ipMasqBackend for the pods
        self.net6 = f"fd{random.randint(0, 255):02x}:{random.randint(0, 65535):x}:{random.randint(0, 65535):x}::"
        self.netns: List[str] = []
        self.nodes: Dict[str, Node] = {}
        self.bridge = unique("aub")
        self.net_a = _free_subnet([])
        self.net_b = _free_subnet([self.net_a])
        self.router: Optional[str] = None
        self.api: Optional[NetFakeKubeAPI] = None
        self.kubeconfig = tmp / "kubeconfig"
        self.procs: List[subprocess.Popen] = []

    # ---- building --------------------------------------------------------------------------
    def _ns(self, prefix: str) -> str:
        name = unique(prefix)
        sh("ip", "netns", "add", name)
        self.netns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def addr(self, net: ipaddress.IPv4Network, host: int) -> str:
        return str(net.network_address + host)

    def start(self, config: str = "backend: host-gw\n", router: bool = False) -> "Cluster":
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.addr(self.net_a, 1)}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        if router:
            self.router = self._ns("aur")
            r = self.router
            peer = unique("aup")
            sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", r)
            sh("ip", "link", "set", peer, "master", self.bridge, "up")
            sh("ip", "-n", r, "addr", "add", f"{self.addr(self.net_a, 254)}/24", "dev", "eth0")
            sh("ip", "-n", r, "link", "set", "eth0", "up")
            sh("ip", "-n", r, "link", "add", "brb", "type", "bridge")
            sh("ip", "-n", r, "addr", "add", f"{self.addr(self.net_b, 254)}/24", "dev", "brb")
            sh("ip", "-n", r, "link", "set", "brb", "up")
            sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # replies of the API server to nodes on B (removed with the bridge)
            sh("ip", "route", "add", str(self.net_b), "via", self.addr(self.net_a, 254), "dev", self.bridge)
        self.api = NetFakeKubeAPI(self.addr(self.net_a, 1)).start()
        self.api.write_kubeconfig(self.kubeconfig)
        self.set_config(config)
        return self

    def set_config(self, text: str) -> None:
        assert self.api is not None
        self.api.put_configmap(NAMESPACE, CONFIGMAP, {"conflist.yaml": "{}", "network.yaml": text})

    def add_node(self, index: int, subnet: str = "A", register: bool = True) -> Node:
        ns = self._ns(f"aun{index}")
        net = self.net_a if subnet == "A" else self.net_b
        ip = self.addr(net, 10 + index)
        if subnet == "A":
            peer = unique("aup")
            sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", peer, "master", self.bridge, "up")
        else:
            assert self.router is not None
            peer = f"vb{index}"
            sh("ip", "-n", self.router, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.router, "link", "set", peer, "master", "brb", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if self.router:
            gw = self.addr(net, 254)
            sh("ip", "-n", ns, "route", "add", "default", "via", gw)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        node = Node(f"node{index}", ns, ip, f"10.244.{index}.0/24", subnet, self.tmp / f"ipam-{index}")
        if self.dual_stack:  # the underlay's IPv6 subnet is on segment A only
            node.ip6, node.pod_cidr6 = f"{self.net6}{10 + index:x}", f"fd10:{index}::/64"
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            sh("ip", "-n", ns, "addr", "add", f"{node.ip6}/64", "dev", "eth0", "nodad")
        self.nodes[node.name] = node
        if register:
            self.register(node)
        return node

    def register(self, node: Node) -> None:
        assert self.api is not None
        cidrs = [node.pod_cidr] + ([node.pod_cidr6] if node.pod_cidr6 else [])
        addresses = [{"type": "InternalIP", "address": ip} for ip in (node.ip, node.ip6) if ip]
        self.api.put("nodes", {"metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
                               "spec": {"podCIDR": node.pod_cidr, "podCIDRs": cidrs},
                               "status": {"addresses": addresses + [{"type": "Hostname", "address": node.name}]}})

    def update_node(self, name: str, change: Callable[[Dict[str, Any]], None]) -> None:
        assert self.api is not None
        obj = self.api.get("nodes", name)
        assert obj is not None
        change(obj)
        self.api.put("nodes", obj)

    def add_pod(self, node: Node) -> Dict[str, str]:
        pod = self._ns("aupod")
        conf = {"cniVersion": "1.0.0", "name": "podnet", "type": "pycni-bridge", "bridge": "cni0",
                "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "ipMasqBackend": self.masq_backend,
                "ipam": {"type": "pycni-host-local",
                         "ranges": [[{"subnet": c}] for c in (node.pod_cidr, node.pod_cidr6) if c],
                         "dataDir": str(node.data_dir)}}
        env = plugin_env("ADD", netns=f"/var/run/netns/{pod}", container_id=unique("c"),
                         cni_path=str(self.bin_dir))
        proc = subprocess.run(["ip", "netns", "exec", node.ns, str(self.bin_dir / "pycni-bridge")],
                              input=json.dumps(conf).encode(), env=env, cwd="/",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        result = json.loads(proc.stdout)
        entry = {"ns": pod, "ip": result["ips"][0]["address"].split("/")[0]}
        if node.pod_cidr6:
            entry["ip6"] = result["ips"][1]["address"].split("/")[0]
        node.pods.append(entry)
        return entry

    # ---- agents ----------------------------------------------------------------------------
    def start_agent(self, node: Node, wait_ready: bool = True) -> subprocess.Popen:
        starts = len(list(self.tmp.glob(f"agent-{node.name}-*.log")))
        node.log_path = self.tmp / f"agent-{node.name}-{starts + 1}.log"  # one log per agent process
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), NODE_NAME=node.name)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = open(node.log_path, "ab")
        node.agent = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, sys.executable, "-m", "pycni.agent",
             "--configmap", f"{NAMESPACE}/{CONFIGMAP}", "--listen", f"127.0.0.1:{AGENT_PORT}",
             "--resync-seconds", str(self.resync), "--log-level", "debug"],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.procs.append(node.agent)
        if wait_ready:
            wait_until(lambda: self.ready(node), 20, f"agent of {node.name} ready; log: {self.log(node)[-2000:]}",
                       interval=0.1)
        return node.agent

    def stop_agent(self, node: Node, sig: int = signal.SIGTERM) -> None:
        if node.agent is not None:
            stop_process(node.agent, sig)
        node.agent = None

    def http(self, node: Node, path: str) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", node.ns, "curl", "-s", "-o", "-", "-w", "\n%{http_code}",
                  "--max-time", "2", f"http://127.0.0.1:{AGENT_PORT}{path}", check=False)

    def ready(self, node: Node) -> bool:
        if node.agent is not None and node.agent.poll() is not None:
            raise AssertionError(f"agent of {node.name} exited: {self.log(node)[-3000:]}")
        return self.http(node, "/readyz").stdout.decode().endswith("\n200")

    def metrics(self, node: Node) -> Dict[str, float]:
        text = self.http(node, "/metrics").stdout.decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and " " in line:
                key, _, value = line.rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

    def log(self, node: Node) -> str:
        return node.log_path.read_text() if node.log_path and node.log_path.exists() else ""

    def events(self, node: Node, event: str) -> List[Dict[str, Any]]:
        out = []
        for line in self.log(node).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                out.append(record)
        return out

    # ---- kernel state ----------------------------------------------------------------------
    def routes(self, node: Node, proto: Optional[str] = PROTO, family: str = "-4") -> List[Dict[str, Any]]:
        cmd = ["ip", family, "-n", node.ns, "-j", "route", "show"] + (["proto", proto] if proto else [])
        return json.loads(sh(*cmd).stdout.decode() or "[]")

    def route_map(self, node: Node, family: str = "-4") -> Dict[str, str]:
        return {r["dst"]: f"{r.get('gateway')} {r.get('dev')}" for r in self.routes(node, family=family)}

    def fdb(self, node: Node, dev: str = "pycni-vxlan") -> List[str]:
        out = sh("bridge", "-n", node.ns, "fdb", "show", "dev", dev, check=False).stdout.decode()
        return sorted(line for line in out.splitlines() if " dst " in line)

    def neigh(self, node: Node, dev: str = "pycni-vxlan") -> List[str]:
        out = sh("ip", "-n", node.ns, "neigh", "show", "dev", dev, "nud", "permanent", check=False).stdout.decode()
        return sorted(out.splitlines())

    def ping(self, pod: Dict[str, str], ip: str, count: int = 1, wait: float = 1) -> bool:
        return sh("ip", "netns", "exec", pod["ns"], "ping", "-c", str(count), "-W", str(wait), ip,
                  check=False).returncode == 0

    def wait_ping(self, pod: Dict[str, str], ip: str, timeout: float = 15.0) -> None:
        wait_until(lambda: self.ping(pod, ip), timeout, f"ping {pod['ip']} -> {ip}")

    def observed_source(self, client: Dict[str, str], server: Dict[str, str], port: int = 5599) -> str:
        """The source address `server` sees on a UDP datagram from `client` (NAT or not)."""
        srv = subprocess.Popen(
            ["ip", "netns", "exec", server["ns"], sys.executable, "-c",
             "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
             f"s.bind(('0.0.0.0',{port}))\ns.settimeout(10)\nprint(s.recvfrom(100)[1][0],flush=True)"],
            stdout=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while srv.poll() is None and time.monotonic() < deadline:
                sh("ip", "netns", "exec", client["ns"], sys.executable, "-c",
                   "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                   f"s.sendto(b'x',('{server['ip']}',{port}))", check=False)
                time.sleep(0.1)
            out, _ = srv.communicate(timeout=5)
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
        return out.decode().strip()

    # ---- cleanup ---------------------------------------------------------------------------
    def close(self) -> None:
        for node in self.nodes.values():
            self.stop_agent(node, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.api is not None:
            self.api.stop()
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
