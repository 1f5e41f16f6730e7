"""Helpers for the pycni-dns tests: a network on a reference bridge with pycni-dns chained after it."""
from __future__ import annotations

import ipaddress
import os
import random
import re
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from helpers import REFERENCE_BIN, alive, exec_plugin, in_netns, netns_path, plugin_env, sh, stat_fields, unique

SERVER_MARKER = b"pycni.plugins.meta.dns.server"


def free_subnet() -> ipaddress.IPv4Network:
    """A random /24 in 10.128.0.0/9 that no host route overlaps."""
    routes = sh("ip", "-4", "route", "show", "table", "all").stdout.decode()
    used = [ipaddress.ip_network(m, strict=False) for m in re.findall(r"(\d+\.\d+\.\d+\.\d+/\d+)", routes)]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(128, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free subnet")


def server_processes(state_dir: Path) -> Dict[int, int]:
    """pid -> parent pid of every live pycni-dns process (servers and their workers) under `state_dir`."""
    needle = os.fsencode(str(state_dir))
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            parent = int(stat_fields(entry)[1])
        except OSError:
            continue
        if any(SERVER_MARKER in a for a in args) and any(a.startswith(needle) for a in args):
            out[int(entry)] = parent
    return out


def server_pids(state_dir: Path) -> List[int]:
    """Every live pycni-dns server whose network dir is under `state_dir` (not their workers)."""
    procs = server_processes(state_dir)
    return [pid for pid, ppid in procs.items() if ppid not in procs]


def worker_pids(state_dir: Path, server: int) -> List[int]:
    return [pid for pid, ppid in server_processes(state_dir).items() if ppid == server]


def kill_servers(state_dir: Path) -> None:
    for pid in server_processes(state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_pid(state_dir: Path, network: str) -> Optional[int]:
    try:
        return int((state_dir / network / "server.pid").read_text())
    except (OSError, ValueError):
        return None


def dig(ns: Optional[str], server: str, name: str, qtype: str = "A", tcp: bool = False,
        port: int = 53) -> Tuple[str, List[str], str]:
    """(status, answer data, flags) of one query, from inside netns `ns` (host when None)."""
    cmd = ["dig", "+time=2", "+tries=2", "+noall", "+comments", "+answer", f"@{server}", "-p", str(port)]
    if tcp:
        cmd.append("+tcp")
    cmd += ["-x", name] if qtype == "PTR" else [name, qtype]
    proc = in_netns(ns, *cmd, check=False) if ns else sh(*cmd, check=False)
    text = proc.stdout.decode()
    status = re.search(r"status: (\w+)", text)
    flags = re.search(r";; flags: ([a-z ]+);", text)
    answers = [line.split()[-1] for line in text.splitlines() if line and not line.startswith(";")]
    return (status.group(1) if status else "NOANSWER"), answers, (flags.group(1) if flags else "")


def udp_query(host: str, port: int, name: str, qtype: str = "A", timeout: float = 2.0):
    from dnslib import DNSRecord

    q = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q.pack(), (host, port))
        while True:
            data, _ = s.recvfrom(65535)
            if data[:2] == q.pack()[:2]:
                return DNSRecord.parse(data)


class Upstream:
    """A tiny upstream DNS server on loopback answering `*.example.test` with fixed addresses."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.client_ports: set = set()  # source ports pycni-dns forwarded from
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        from dnslib import QTYPE, RCODE, RR, A, DNSRecord

        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                q = DNSRecord.parse(data)
                self.queries += 1
                self.client_ports.add(addr[1])
                reply = q.reply(ra=1, aa=1)  # AA on purpose: pycni-dns must clear it
                name = str(q.q.qname).lower()
                if name.endswith("example.test."):
                    reply.add_answer(RR(q.q.qname, QTYPE.A, ttl=30, rdata=A("192.0.2.77")))
                else:
                    reply.header.rcode = RCODE.NXDOMAIN
                self.sock.sendto(reply.pack(), addr)
            except Exception:
                continue

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


@dataclass
class Attachment:
    container_id: str
    netns: str
    ip: str
    args: str
    result: Dict[str, Any]
    aliases: Any = None


@dataclass
class DnsNetwork:
    """A reference bridge (isGateway) + host-local network with pycni-dns chained after it."""

    bin_dir: Path
    state_dir: Path
    make_netns: Any
    data_dir: Path
    upstreams: List[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: unique("dn"))
    bridge: str = field(default_factory=lambda: unique("dbr"))
    subnet: ipaddress.IPv4Network = field(default_factory=free_subnet)
    attachments: List[Attachment] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def bridge_conf(self) -> Dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": self.name, "type": "bridge", "bridge": self.bridge,
                "isGateway": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                         "dataDir": str(self.data_dir)}}

    def dns_conf(self, prev: Optional[Dict[str, Any]] = None, aliases: Any = None, **extra: Any) -> Dict[str, Any]:
        conf: Dict[str, Any] = {"cniVersion": "1.0.0", "name": self.name, "type": "pycni-dns",
                                "stateDir": str(self.state_dir), "upstreams": self.upstreams}
        conf.update(extra)
        if prev is not None:
            conf["prevResult"] = prev
        if aliases is not None:
            conf["runtimeConfig"] = {"aliases": aliases}
        return conf

    def dns(self, command: str, container_id: str, netns: str = "", args: str = "",
            prev: Optional[Dict[str, Any]] = None, aliases: Any = None, **extra: Any) -> Tuple[Any, int, str]:
        env = plugin_env(command, netns=netns, container_id=container_id, args=args,
                         cni_path=str(self.bin_dir))
        return exec_plugin(self.bin_dir / "pycni-dns", env, self.dns_conf(prev, aliases, **extra))

    def attach(self, pod: str, namespace: str = "", aliases: Any = None, **extra: Any) -> Attachment:
        """A container netns wired by the reference bridge, then registered by pycni-dns."""
        ns = self.make_netns("dns")
        cid = unique("c")
        env = plugin_env("ADD", netns=netns_path(ns), container_id=cid, cni_path=str(REFERENCE_BIN))
        prev, rc, err = exec_plugin(REFERENCE_BIN / "bridge", env, self.bridge_conf())
        assert rc == 0, (prev, err)
        args = f"IgnoreUnknown=1;K8S_POD_NAME={pod}" + (f";K8S_POD_NAMESPACE={namespace}" if namespace else "")
        out, rc, err = self.dns("ADD", cid, netns_path(ns), args, prev, aliases, **extra)
        assert rc == 0, (out, err)
        att = Attachment(cid, ns, prev["ips"][0]["address"].split("/")[0], args, out, aliases)
        self.attachments.append(att)
        return att

    def detach(self, att: Attachment, with_prev: bool = True) -> None:
        out, rc, err = self.dns("DEL", att.container_id, netns_path(att.netns) if with_prev else "", att.args,
                                att.result if with_prev else None)
        assert rc == 0, (out, err)
        env = plugin_env("DEL", netns=netns_path(att.netns), container_id=att.container_id,
                         cni_path=str(REFERENCE_BIN))
        exec_plugin(REFERENCE_BIN / "bridge", env, self.bridge_conf())
        self.attachments.remove(att)

    def teardown(self) -> None:
        for att in list(self.attachments):
            try:
                self.detach(att)
            except AssertionError:
                pass
        sh("ip", "link", "del", self.bridge, check=False)

    def pid(self) -> Optional[int]:
        return read_pid(self.state_dir, self.name)


def random_frames(count: int, seed: int) -> List[bytes]:
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        n = rng.choice([0, 1, 2, 11, 12, 13, 17, 30, 64, 300, 512, 1500])
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if i % 3 == 0 and n >= 12:  # look like a query: QR=0, QDCOUNT=1, so deeper parsing is reached
            data = data[:2] + bytes([data[2] & 0x7F]) + data[3:4] + b"\x00\x01" + data[6:]
        frames.append(data)
    return frames


def tcp_frame(payload: bytes, honest: bool) -> bytes:
    length = len(payload) if honest else random.randint(0, 65535)
    return struct.pack("!H", length) + payload


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def outsider(make_netns, target: str) -> str:
    """A netns routed to the node over its own veth, from a /30 outside every DNS network:
    a client that can reach `target` (the gateway address) but is not on the network."""
    ns = make_netns("dno")
    host_if, ns_if = unique("dvo"), unique("dvi")
    net = free_subnet()
    host_ip, ns_ip = net.network_address + 1, net.network_address + 2
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
    sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    in_netns(ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
    in_netns(ns, "ip", "link", "set", ns_if, "up")
    in_netns(ns, "ip", "link", "set", "lo", "up")
    in_netns(ns, "ip", "route", "add", f"{target}/32", "via", str(host_ip))
    return ns


def dnsperf(ns: str, server: str, names: List[str], seconds: int, rate: int) -> Dict[str, float]:
    """Run dnsperf inside `ns` over `names` (A queries); see run_dnsperf."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".queries", delete=False) as f:
        f.write("".join(f"{n} A\n" for n in names))
    try:
        return run_dnsperf(ns, server, 53, f.name, seconds, rate)
    finally:
        os.unlink(f.name)


def run_dnsperf(ns: str, server: str, port: int, query_file: str, seconds: float, rate: int,
                prefix: Tuple[str, ...] = ()) -> Dict[str, float]:
    """dnsperf inside `ns`, 4 clients, 50 outstanding (rate 0: as fast as it goes):
    sent, completed, lost, qps, latency (average, seconds)."""
    cmd = ["dnsperf", "-s", server, "-p", str(port), "-d", query_file, "-c", "4", "-q", "50",
           "-l", f"{seconds:g}", "-t", "2"]
    if rate:
        cmd += ["-Q", str(rate)]
    return parse_dnsperf(in_netns(ns, *prefix, *cmd, check=False).stdout.decode())


def parse_dnsperf(text: str) -> Dict[str, float]:
    fields = {"sent": r"Queries sent:\s+(\d+)", "completed": r"Queries completed:\s+(\d+)",
              "lost": r"Queries lost:\s+(\d+)", "qps": r"Queries per second:\s+([\d.]+)",
              "latency": r"Average Latency \(s\):\s+([\d.]+)"}
    out = {}
    for key, pattern in fields.items():
        m = re.search(pattern, text)
        if not m:
            raise RuntimeError(f"dnsperf output without {key}: {text[-2000:]}")
        out[key] = float(m.group(1))
    return out
