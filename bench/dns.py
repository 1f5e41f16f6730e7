"""Benchmark pycni-dns against dnsmasq: `python3 bench/dns.py` (as root; builds dist/bin first if missing).

Both serve the same 20 names on loopback, in the same run:
  - pycni-dns: registered by exec'ing the built zipapp (ADD) with /usr/bin/python3, as a node would;
  - dnsmasq: the same names from a hosts file (`--addn-hosts`).
Forwarded names go to a third process, an upstream dnsmasq answering `fwd*.example.test`
from its own hosts file. The dnsmasq under test runs with `--cache-size=0` so that it
forwards every query as pycni-dns does (pycni-dns has no cache); a second run with
dnsmasq's default cache is printed for reference.

Latency: sequential queries, one at a time (median and p99). Throughput: one client
socket keeping WINDOW queries in flight for SECONDS; the Python client itself tops
out at some tens of thousands of queries per second, so dnsmasq's figure is a floor.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "dist" / "bin"
NODE_PYTHON = "/usr/bin/python3"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
NAMES = 20
LATENCY_QUERIES = 2000
WINDOW = 32
SECONDS = 3.0
DOMAIN = "dns.pycni"
CACHE_DIR = ""  # set in main: a private byte-code cache, removed afterwards

sys.path.insert(0, str(ROOT / "bench"))
try:
    from dnslib import DNSRecord
except ImportError:  # dnslib from the built zipapp's payload
    sys.exit("bench/dns.py needs dnslib importable (pip install dnslib)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dnsmasq(port: int, hosts: Path, upstream_port: int = 0, cache: int = 0) -> subprocess.Popen:
    args = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts", "--no-resolv",
            "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={port}", f"--addn-hosts={hosts}",
            f"--cache-size={cache}", "--user=root", "--pid-file=", "--log-facility=/dev/null"]
    if upstream_port:
        args.append(f"--server=127.0.0.1#{upstream_port}")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_answering(port, "fwd0.example.test" if not upstream_port else f"pod0.{DOMAIN}")
    return proc


def wait_answering(port: int, name: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ask(port, name) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers {name} on port {port}")


def ask(port: int, name: str, timeout: float = 0.5):
    q = DNSRecord.question(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q.pack(), ("127.0.0.1", port))
            return DNSRecord.parse(s.recv(4096))
        except OSError:
            return None


def queries(names: List[str]) -> List[bytes]:
    return [DNSRecord.question(n).pack() for n in names]


def latency(port: int, packets: List[bytes]) -> Tuple[float, float]:
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.settimeout(2)
        for i in range(LATENCY_QUERIES):
            pkt = packets[i % len(packets)]
            t0 = time.perf_counter()
            s.send(pkt)
            while s.recv(4096)[:2] != pkt[:2]:
                pass
            times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


def throughput(port: int, packets: List[bytes]) -> float:
    done = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.settimeout(0.5)
        inflight = 0
        i = 0
        end = time.perf_counter() + SECONDS
        start = time.perf_counter()
        while time.perf_counter() < end:
            while inflight < WINDOW:
                s.send(packets[i % len(packets)])
                i += 1
                inflight += 1
            try:
                s.recv(4096)
                done += 1
                inflight -= 1
            except socket.timeout:
                inflight = 0  # lost ones: refill the window
        elapsed = time.perf_counter() - start
    return done / elapsed


def plugin(command: str, cid: str, conf: Dict, args: str = "") -> None:
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
           "CNI_NETNS": "/proc/self/ns/net", "CNI_ARGS": args, "PYCNI_CACHE_DIR": CACHE_DIR}
    proc = subprocess.run([NODE_PYTHON, str(BIN / "pycni-dns")], input=json.dumps(conf).encode(), env=env,
                          stdout=subprocess.PIPE, cwd="/")
    if proc.returncode:
        raise RuntimeError(f"pycni-dns {command} failed: {proc.stdout.decode()}")


def main() -> None:
    if not (BIN / "pycni-dns").exists():
        subprocess.run([sys.executable, str(ROOT / "zipapp" / "build.py")], check=True)
    global CACHE_DIR
    tmp = Path(tempfile.mkdtemp(prefix="pycni-dns-bench-"))
    tmp.chmod(0o755)
    CACHE_DIR = str(tmp / "cache")
    procs: List[subprocess.Popen] = []
    up_port, mine_port, theirs_port, cached_port = (free_port() for _ in range(4))
    conf = {"cniVersion": "1.1.0", "name": "bench", "type": "pycni-dns", "stateDir": str(tmp / "state"),
            "listenAddresses": ["127.0.0.1"], "port": mine_port, "upstreams": [f"127.0.0.1:{up_port}"]}
    ips = [f"10.77.0.{10 + i}" for i in range(NAMES)]
    try:
        (tmp / "upstream.hosts").write_text("".join(f"192.0.2.{i + 1} fwd{i}.example.test\n" for i in range(NAMES)))
        (tmp / "local.hosts").write_text("".join(f"{ip} pod{i}.{DOMAIN} pod{i}\n" for i, ip in enumerate(ips)))
        procs.append(start_dnsmasq(up_port, tmp / "upstream.hosts"))
        procs.append(start_dnsmasq(theirs_port, tmp / "local.hosts", up_port, cache=0))
        procs.append(start_dnsmasq(cached_port, tmp / "local.hosts", up_port, cache=150))
        plugin("VERSION", "warm", conf)  # unpack + byte-compile the zipapp's payload once
        add_times = []
        for i, ip in enumerate(ips):
            prev = {"cniVersion": "1.1.0", "ips": [{"address": f"{ip}/24", "gateway": "10.77.0.1"}]}
            t0 = time.perf_counter()
            plugin("ADD", f"bench{i}", {**conf, "prevResult": prev}, f"K8S_POD_NAME=pod{i}")
            add_times.append((time.perf_counter() - t0) * 1000)
        wait_answering(mine_port, f"pod0.{DOMAIN}")
        local = queries([f"pod{i}.{DOMAIN}" for i in range(NAMES)])
        forwarded = queries([f"fwd{i}.example.test" for i in range(NAMES)])
        rows = []
        for label, port in (("pycni-dns", mine_port), ("dnsmasq cache=0", theirs_port),
                            ("dnsmasq cache=150", cached_port)):
            for kind, packets in (("registered", local), ("forwarded", forwarded)):
                med, p99 = latency(port, packets)
                qps = throughput(port, packets)
                rows.append((label, kind, med, p99, qps))
        print(f"pycni-dns ADD (exec of the zipapp): first (starts the server) {add_times[0]:.0f} ms, "
              f"median of the rest {statistics.median(add_times[1:]):.0f} ms; load average {os.getloadavg()[0]:.1f}\n")
        print(f"{'server':<20}{'names':<12}{'median us':>10}{'p99 us':>10}{'qps':>10}")
        for label, kind, med, p99, qps in rows:
            print(f"{label:<20}{kind:<12}{med:>10.0f}{p99:>10.0f}{qps:>10.0f}")
        by = {(r[0], r[1]): r for r in rows}
        print()
        for kind in ("registered", "forwarded"):
            ours, theirs = by[("pycni-dns", kind)], by[("dnsmasq cache=0", kind)]
            print(f"{kind}: latency ratio pycni-dns/dnsmasq = {ours[2] / theirs[2]:.2f}x, "
                  f"qps ratio = {ours[4] / theirs[4]:.2f}x")
    finally:
        for i in range(NAMES):
            try:
                plugin("DEL", f"bench{i}", conf)
            except Exception:
                pass
        for proc in procs:
            proc.terminate()
            proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
