"""pycni-agent: time from a Node's creation to a working cross-node ping; CPU and memory with 1,000 Nodes.

Real kernel, simulated nodes (network namespaces, see tests/agent_cluster.py), the in-test
API server. Only 3-4 nodes are real; the 1,000-Node part adds synthetic Node objects whose
InternalIPs share node1's segment, so node1's agent really programs ~1,000 routes (host-gw)
or ~1,000 routes + FDB + neighbour entries (vxlan). No Go reference exists for this
component (flanneld is not installed here), so the figures are absolute.
Run: python3 zipapp/build.py && python3 bench/agent.py
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from agent_cluster import Cluster, wait_until  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
VXLAN = "backend: vxlan\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def rss_mib(pid: int) -> tuple:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def ping_fast(c: Cluster, pod, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", pod["ns"], "ping", "-c1", "-W", "0.1", ip],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def node_to_ping(config: str, runs: int) -> list:
    """Seconds from creating Node 4 (its agent already waiting) to pod1 -> pod4 answering."""
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(Path(tmp), ROOT / "dist" / "bin", resync=30)
        try:
            c.start(config)
            nodes = [c.add_node(i) for i in (1, 2, 3)]
            new = c.add_node(4, register=False)
            for node in nodes + [new]:
                c.add_pod(node)
            for node in nodes:
                c.start_agent(node, wait_ready=False)
            c.start_agent(new, wait_ready=False)
            for node in nodes:
                wait_until(lambda: c.ready(node), 60)
            pod1, pod4 = nodes[0].pods[0], new.pods[0]
            print(f"  ({config.strip()}: agent RSS with 3 Nodes {rss_mib(nodes[0].agent.pid)[0]:.1f} MiB)")
            times = []
            for _ in range(runs):
                start = time.monotonic()
                c.register(new)
                wait_until(lambda: ping_fast(c, pod1, pod4["ip"]), 30, 0.0)
                times.append(time.monotonic() - start)
                c.api.delete("nodes", new.name)
                wait_until(lambda: new.pod_cidr not in c.route_map(nodes[0]), 30)
                time.sleep(0.5)
            return times
        finally:
            c.close()


def thousand_nodes(config: str, total: int = 1000) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(Path(tmp), ROOT / "dist" / "bin", resync=5)
        try:
            c.start(config)
            nodes = [c.add_node(i) for i in (1, 2, 3)]
            # a /20 on node1's segment for the synthetic nodes' InternalIPs
            subprocess.run(["ip", "-n", nodes[0].ns, "addr", "add", "100.64.0.1/20", "dev", "eth0"], check=True)
            for i in range(4, total + 1):
                ip = f"100.64.{i // 250}.{i % 250 + 2}"
                meta = {"name": f"synthetic-{i}"}
                if config == VXLAN:
                    meta["annotations"] = {"pycni.dev/vtep-mac": "02:%02x:%02x:00:00:01" % (i // 256, i % 256)}
                c.api.put("nodes", {"metadata": meta,
                                    "spec": {"podCIDR": f"10.{128 + i // 256}.{i % 256}.0/24",
                                             "podCIDRs": [f"10.{128 + i // 256}.{i % 256}.0/24"]},
                                    "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
            start = time.monotonic()
            proc = c.start_agent(nodes[0], wait_ready=False)
            wait_until(lambda: c.ready(nodes[0]), 120, 0.05)
            ready_s = time.monotonic() - start
            wait_until(lambda: len(c.routes(nodes[0])) >= total - 1, 60)
            out = {"routes": len(c.routes(nodes[0])), "ready_s": ready_s, "cpu_at_ready_s": cpu_seconds(proc.pid),
                   "fdb": c.metrics(nodes[0]).get("pycni_agent_fdb_entries", 0)}
            cpu0 = cpu_seconds(proc.pid)
            time.sleep(20)  # 4 periodic resyncs, nothing changes
            out["idle_cpu_per_resync_s"] = (cpu_seconds(proc.pid) - cpu0) / 4
            out["resync_duration_s"] = c.metrics(nodes[0])["pycni_agent_last_sync_duration_seconds"]
            # churn: 100 Nodes change their InternalIP at once
            cpu0, start = cpu_seconds(proc.pid), time.monotonic()
            for i in range(4, 104):
                def move(obj, i=i):
                    obj["status"]["addresses"][0]["address"] = f"100.64.15.{i}"
                c.update_node(f"synthetic-{i}", move)
            def moved() -> int:
                if config == VXLAN:
                    return sum(1 for e in c.fdb(nodes[0]) if " dst 100.64.15." in e)
                return sum(1 for r in c.routes(nodes[0]) if r.get("gateway", "").startswith("100.64.15."))
            wait_until(lambda: moved() == 100, 60, 0.05)
            out["churn_100_s"] = time.monotonic() - start
            out["churn_cpu_s"] = cpu_seconds(proc.pid) - cpu0
            out["rss_mib"], out["peak_rss_mib"] = rss_mib(proc.pid)
            return out
        finally:
            c.close()


def main() -> None:
    if not (ROOT / "dist" / "bin" / "pycni-bridge").exists():
        sys.exit("build the zipapps first: python3 zipapp/build.py")
    os.environ.setdefault("PYCNI_CACHE_DIR", tempfile.mkdtemp(prefix="pycni-bench-cache-"))
    runs = int(os.environ.get("RUNS", "5"))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, config in (("host-gw", "backend: host-gw\n"), ("vxlan", VXLAN)):
        times = node_to_ping(config, runs)
        print(f"{name}: Node created -> cross-node ping answers: median {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={len(times)})")
    for name, config in (("host-gw", "backend: host-gw\n"), ("vxlan", VXLAN)):
        r = thousand_nodes(config)
        print(f"{name}, 1,000 Nodes: {r['routes']} routes, {r['fdb']:.0f} FDB entries; ready after "
              f"{r['ready_s']:.2f} s (CPU {r['cpu_at_ready_s']:.2f} s incl. interpreter start); idle resync "
              f"{r['resync_duration_s'] * 1000:.0f} ms wall, {r['idle_cpu_per_resync_s'] * 1000:.0f} ms CPU; "
              f"100 Nodes moved -> converged in {r['churn_100_s']:.2f} s ({r['churn_cpu_s']:.2f} s CPU); "
              f"RSS {r['rss_mib']:.1f} MiB (peak {r['peak_rss_mib']:.1f} MiB)")


if __name__ == "__main__":
    main()
