"""Benchmark pycni-dns against dnsmasq with dnsperf: `python3 bench/dns.py [--rounds N] [--seconds S] [--bin DIR]`.

As root; builds dist/bin first if missing. Both servers run on the node (host netns),
on the gateway address of a veth whose other end is a pod netns; dnsperf runs in the
pod netns (4 clients, 50 outstanding queries), as a pod's resolver would reach them:
  - pycni-dns: 10 pods registered by exec'ing the built zipapp (ADD) with /usr/bin/python3;
  - dnsmasq: the same 10 names from a hosts file, `--cache-size=0`, `--local=/<domain>/`.
Query mix for local names: each registered name plus one missing name in the domain
(what search suffixes cause). Forwarded names go to a third server, an upstream dnsmasq
on the node's loopback answering `fwd*.example.test` from its hosts file; both servers
under test forward every query to it (pycni-dns has no cache, dnsmasq runs without one).

Scenarios, interleaved round by round (the two servers alternate, so drift hits both):
  max qps (local names), average latency at a steady 1,000 qps (local and forwarded).
Prints medians over the rounds, the pycni-dns/dnsmasq ratio and every lost query, and
the CPU time each server spent per answered query (from /proc/<pid>/task/*/schedstat):
on a shared, loaded machine latency mostly measures the scheduler, CPU per query does not.
Not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from dns_helpers import free_subnet, run_dnsperf  # noqa: E402  (the tests' dnsperf driver)

NODE_PYTHON = "/usr/bin/python3"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
PODS = 10
DOMAIN = "dns.pycni"
DNSMASQ_PORT = 5353
SCENARIOS = (  # (label, query kind, dnsperf -Q rate or 0 for as fast as it goes)
    ("max qps, local names", "local", 0),
    ("latency at 1,000 qps, local names", "local", 1000),
    ("latency at 1,000 qps, forwarded names", "forwarded", 1000),
)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class PodNet:
    """A pod netns joined to the node by a veth; the node side holds the gateway address."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.ns, self.host_if, self.pod_if = f"dnsb{tag}", f"dbh{tag}", f"dbp{tag}"
        self.subnet = free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        pod_ip = f"{self.subnet.network_address + 2}/{self.subnet.prefixlen}"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.pod_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        for cmd in (("ip", "addr", "add", pod_ip, "dev", self.pod_if), ("ip", "link", "set", self.pod_if, "up"),
                    ("ip", "link", "set", "lo", "up")):
            sh("ip", "netns", "exec", self.ns, *cmd)

    def pod_ip(self, index: int) -> str:
        return str(self.subnet.network_address + 100 + index)

    def close(self) -> None:
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def start_dnsmasq(listen: str, port: int, hosts: Path, upstream: str = "", cache: int = 0) -> subprocess.Popen:
    args = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts", "--no-resolv",
            "--bind-interfaces", f"--listen-address={listen}", f"--port={port}", f"--addn-hosts={hosts}",
            f"--cache-size={cache}", "--user=root", "--pid-file=", "--log-facility=/dev/null",
            f"--local=/{DOMAIN}/"]
    if upstream:
        args.append(f"--server={upstream}")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def plugin(bin_dir: Path, cache_dir: str, command: str, cid: str, conf: Dict, netns: str, args: str = "") -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_IFNAME": "eth0", "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_ARGS": args,
           "PYCNI_CACHE_DIR": cache_dir, "PYCNI_SERVER_SOCKET": "off"}
    proc = subprocess.run([NODE_PYTHON, str(bin_dir / "pycni-dns")], input=json.dumps(conf).encode(), env=env,
                          stdout=subprocess.PIPE, cwd="/")
    if proc.returncode:
        raise RuntimeError(f"pycni-dns {command} failed: {proc.stdout.decode()}")


def family(pid: int) -> List[int]:
    """The process and its child processes (pycni-dns's workers)."""
    return [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_seconds(pid: int) -> float:
    """CPU time so far of every thread of the process and its children, nanosecond resolution."""
    total = 0
    for proc in family(pid):
        for task in os.listdir(f"/proc/{proc}/task"):
            try:
                with open(f"/proc/{proc}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def set_fifo(pid: int, priority: int) -> None:
    """SCHED_FIFO `priority` for every thread of `pid` and its children (0: back to SCHED_OTHER)."""
    for proc in family(pid):
        for task in os.listdir(f"/proc/{proc}/task"):
            sh("chrt", "-f" if priority else "-o", "-p", str(priority), task, check=False)


def wait_answering(ns: str, server: str, port: int, queries: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if run_dnsperf(ns, server, port, str(queries), 0.3, 50)["completed"] > 0:
                return
        except RuntimeError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on {server} port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per dnsperf run")
    parser.add_argument("--rt", action="store_true",
                        help="latency runs (-Q) at SCHED_FIFO 1 for both servers and dnsperf: on a loaded "
                             "machine this measures the servers, not the scheduler (never for max qps)")
    parser.add_argument("--processes", type=int, default=0, help="pycni-dns serverProcesses (0: its default)")
    parser.add_argument("--bin", type=Path, default=ROOT / "dist" / "bin", help="where pycni-dns is")
    opts = parser.parse_args()
    if not (opts.bin / "pycni-dns").exists():
        subprocess.run([sys.executable, str(ROOT / "zipapp" / "build.py")], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="pycni-dns-bench-"))
    tmp.chmod(0o755)
    cache_dir = str(tmp / "cache")
    procs: List[subprocess.Popen] = []
    pod = PodNet()
    up_port = random.randint(20000, 60000)
    conf = {"cniVersion": "1.1.0", "name": f"bench{uuid.uuid4().hex[:6]}", "type": "pycni-dns",
            "stateDir": str(tmp / "state"), "listenAddresses": [pod.gateway], "port": 53,
            "upstreams": [f"127.0.0.1:{up_port}"]}
    if opts.processes:
        conf["serverProcesses"] = opts.processes
    try:
        (tmp / "upstream.hosts").write_text("".join(f"192.0.2.{i + 1} fwd{i}.example.test\n" for i in range(PODS)))
        (tmp / "local.hosts").write_text("".join(f"{pod.pod_ip(i)} pod{i}.{DOMAIN}\n" for i in range(PODS)))
        queries = {"local": tmp / "local.queries", "forwarded": tmp / "forwarded.queries"}
        queries["local"].write_text("".join(f"pod{i}.{DOMAIN} A\n" for i in range(PODS)) + f"missing.{DOMAIN} A\n")
        queries["forwarded"].write_text("".join(f"fwd{i}.example.test A\n" for i in range(PODS)))
        procs.append(start_dnsmasq("127.0.0.1", up_port, tmp / "upstream.hosts", cache=150))
        procs.append(start_dnsmasq(pod.gateway, DNSMASQ_PORT, tmp / "local.hosts", f"127.0.0.1#{up_port}"))
        for i in range(PODS):
            prev = {"cniVersion": "1.1.0",
                    "interfaces": [{"name": pod.host_if}, {"name": "eth0", "sandbox": f"/var/run/netns/{pod.ns}"}],
                    "ips": [{"address": f"{pod.pod_ip(i)}/{pod.subnet.prefixlen}", "gateway": pod.gateway,
                             "interface": 1}]}
            plugin(opts.bin, cache_dir, "ADD", f"bench{i}", {**conf, "prevResult": prev}, pod.ns,
                   f"K8S_POD_NAME=pod{i}")
        servers = (("pycni-dns", 53), ("dnsmasq", DNSMASQ_PORT))
        pids = {"pycni-dns": int((tmp / "state" / conf["name"] / "server.pid").read_text()), "dnsmasq": procs[1].pid}
        for _, port in servers:
            for kind in queries:
                wait_answering(pod.ns, pod.gateway, port, queries[kind])
        results: Dict[Tuple[str, str], List[Dict[str, float]]] = {}
        for round_no in range(opts.rounds):
            for label, kind, rate in SCENARIOS:
                order = servers if round_no % 2 == 0 else servers[::-1]
                for server, port in order:
                    cpu = cpu_seconds(pids[server])
                    rt = opts.rt and rate > 0
                    if rt:
                        set_fifo(pids[server], 1)
                    try:
                        stats = run_dnsperf(pod.ns, pod.gateway, port, str(queries[kind]), opts.seconds, rate,
                                            prefix=("chrt", "-f", "1") if rt else ())
                    finally:
                        if rt:
                            set_fifo(pids[server], 0)
                    stats["cpu"] = (cpu_seconds(pids[server]) - cpu) / max(1.0, stats["completed"])
                    results.setdefault((label, server), []).append(stats)
        report(results, opts)
    finally:
        for i in range(PODS):
            try:
                plugin(opts.bin, cache_dir, "DEL", f"bench{i}", conf, pod.ns)
            except Exception as exc:  # report, keep cleaning
                print(f"cleanup: {exc}", file=sys.stderr)
        for proc in procs:
            proc.terminate()
            proc.wait(5)
        pod.close()
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: Dict[Tuple[str, str], List[Dict[str, float]]], opts: argparse.Namespace) -> None:
    print(f"dnsperf -c 4 -q 50 -l {opts.seconds:g}, {opts.rounds} rounds, medians{', -Q runs at SCHED_FIFO' if opts.rt else ''}; "
          f"load average {os.getloadavg()[0]:.1f}; pycni-dns from {opts.bin}"
          f"{f', serverProcesses {opts.processes}' if opts.processes else ''}\n")
    print(f"{'scenario':<40}{'pycni-dns':>12}{'dnsmasq':>12}{'ratio':>8}{'lost':>12}")
    for label, _, rate in SCENARIOS:
        key = "latency" if rate else "qps"
        ours = [r[key] for r in results[(label, "pycni-dns")]]
        theirs = [r[key] for r in results[(label, "dnsmasq")]]
        scale, unit = (1e6, " us") if rate else (1, "")
        lost = (sum(r["lost"] for r in results[(label, "pycni-dns")]),
                sum(r["lost"] for r in results[(label, "dnsmasq")]))
        print(f"{label:<40}{statistics.median(ours) * scale:>9.0f}{unit:<3}{statistics.median(theirs) * scale:>9.0f}"
              f"{unit:<3}{statistics.median(ours) / statistics.median(theirs):>7.2f}x{lost[0]:>6.0f}/{lost[1]:<5.0f}")
        print(f"{'':<40}{'runs: ' + ' '.join(f'{v * scale:.0f}' for v in ours)}  |  "
              f"{' '.join(f'{v * scale:.0f}' for v in theirs)}")
        cpu_ours = statistics.median(r["cpu"] for r in results[(label, "pycni-dns")]) * 1e6
        cpu_theirs = statistics.median(r["cpu"] for r in results[(label, "dnsmasq")]) * 1e6
        print(f"{'  CPU per query':<40}{cpu_ours:>9.1f} us{cpu_theirs:>9.1f} us{cpu_ours / cpu_theirs:>7.2f}x")


if __name__ == "__main__":
    main()
