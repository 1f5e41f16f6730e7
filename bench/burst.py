"""Pod bursts (issue 21): N pods at once, each in its own new netns, a libcni-style ADD of
bridge + host-local and then DEL of all, through pycni-server, pycni standalone and the Go
reference plugins, in one run.

    python3 bench/burst.py [--pods 50,200] [--rounds 2] [--masq off,on] [--variants]

Contenders take turns burst by burst (drift hits them alike; the order rotates each round);
each row shows the best of the rounds: ADD wall time, p95 and median per-pod ADD latency,
DEL wall time, and the ratios to the reference; then failures, duplicate addresses and
leftovers (leases, veths, masquerade rules) summed over all rounds. Two servers always run:
the default, where the zipapps' sh prelude hands requests over (no Python start), and one with
--no-handoff, where each exec starts Python's thin client. --variants adds servers
with other pool settings (where the time goes: the worker cap, workers forked ahead).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, REFERENCE_BIN, require_built, run_dir, start_node_server  # noqa: E402
from burst_helpers import Burst, conflist, run_burst, runner_for  # noqa: E402  (tests/, put on sys.path by common)

SERVERS: Dict[str, Tuple[str, ...]] = {  # always run: the default server, and without the sh handoff
    "pycni + server": (),
    "pycni + server, Python client only": ("--no-handoff",),
}
VARIANTS = {  # server command-line variants for --variants
    "pycni + server, --max-workers 8": ("--max-workers", "8"),
    "pycni + server, --max-workers 256": ("--max-workers", "256"),
    "pycni + server, --idle-workers 0": ("--idle-workers", "0"),
    "pycni + server, --idle-workers 16": ("--idle-workers", "16"),
    "pycni + server, a fork per request": ("--requests-per-worker", "1"),
    "pycni + server, --max-workers 4": ("--max-workers", "4"),
}


def cpu_seconds(server_pid: int = 0) -> float:
    """CPU time of this process's exited children (the plugins and thin clients), or of a server
    and its workers, exited or live: on 2 busy cores, a burst's wall time is about its CPU time / 2."""
    if not server_pid:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    ticks = 0
    for entry in os.scandir("/proc"):  # the server (with its exited workers) and its live workers
        try:
            fields = open(f"/proc/{entry.name}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if entry.name == str(server_pid):
            ticks += sum(int(f) for f in fields[11:15])
        elif fields[1] == str(server_pid):
            ticks += sum(int(f) for f in fields[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def summary(name: str, bursts: List[Burst], reference: List[Burst], cpu: List[Tuple[float, float]]) -> str:
    wall, p95 = min(b.add_wall for b in bursts), min(b.add_p95 for b in bursts)
    med = min(statistics.median(b.add_latencies) for b in bursts if b.add_latencies) if any(
        b.add_latencies for b in bursts) else 0.0
    dele = min(b.del_wall for b in bursts)
    ratio = ""
    if reference is not bursts:
        ref_wall, ref_p95 = min(b.add_wall for b in reference), min(b.add_p95 for b in reference)
        ratio = f"  x{wall / ref_wall:.2f} wall, x{p95 / ref_p95:.2f} p95 vs reference"
    fails = sum(len(b.failures) for b in bursts)
    dups = sum(len(b.duplicates) for b in bursts)
    left = sum(len(b.leftovers) for b in bursts)
    pods = len(bursts[0].add_latencies) or 1
    client, server = (min(c[i] for c in cpu) * 1000 / pods for i in (0, 1))
    return (f"  {name:<36} ADD wall {wall * 1000:7.0f} ms  p95 {p95 * 1000:7.0f}  median {med * 1000:7.0f}  "
            f"DEL wall {dele * 1000:7.0f}  CPU/pod ADD+DEL: exec'd {client:5.1f} ms, server {server:5.1f} ms  "
            f"failures {fails} duplicates {dups} leftovers {left}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", default="50,200")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--masq", default="off,on")
    parser.add_argument("--variants", action="store_true", help="also servers with other pool settings")
    opts = parser.parse_args()
    require_built("pycni-bridge", "pycni-host-local")
    work = Path(tempfile.mkdtemp(prefix="pycni-burst-"))
    cni_path = [str(DIST_BIN), str(REFERENCE_BIN)]
    setups = dict(SERVERS, **(VARIANTS if opts.variants else {}))
    run = run_dir()
    servers = {name: start_node_server(work, run / f"s{i}.sock", *args) for i, (name, args) in enumerate(setups.items())}
    runners = {"reference": runner_for(cni_path, str(work / "cache"), None),
               "pycni standalone": runner_for(cni_path, str(work / "cache"), None)}
    for i, name in enumerate(servers):
        runners[name] = runner_for(cni_path, str(work / "cache"), str(run / f"s{i}.sock"))
    tag = uuid.uuid4().hex[:4]
    try:
        for pods in (int(p) for p in opts.pods.split(",")):
            for masq in (m == "on" for m in opts.masq.split(",")):
                results: Dict[str, List[Burst]] = {name: [] for name in runners}
                cpu: Dict[str, List[Tuple[float, float]]] = {name: [] for name in runners}
                order: List[Tuple[str, object]] = list(runners.items())
                for rnd in range(opts.rounds):
                    for k, (name, runner) in enumerate(order[rnd % len(order):] + order[:rnd % len(order)]):
                        bridge = f"bu{tag}{rnd}{k:02d}"
                        data_dir = str(work / f"ipam-{bridge}")
                        net = conflist(name == "reference", bridge, f"10.{120 + k}.0.0/16", data_dir, masq)
                        pid = servers[name].pid if name in servers else 0
                        before = (cpu_seconds(), cpu_seconds(pid) if pid else 0.0)
                        try:
                            results[name].append(run_burst(runner, net, bridge, data_dir, pods, f"b{tag}{rnd}{k:02d}x"))
                            cpu[name].append((cpu_seconds() - before[0], (cpu_seconds(pid) if pid else 0.0) - before[1]))
                        finally:
                            subprocess.run(["ip", "link", "del", bridge], stderr=subprocess.DEVNULL)
                print(f"\n== {pods} pods at once, bridge + host-local, ipMasq={masq}, best of {opts.rounds} rounds")
                for name, bursts in results.items():
                    print(summary(name, bursts, results["reference"], cpu[name]))
                    for burst in bursts:
                        for problem in (burst.failures + burst.duplicates + burst.leftovers)[:3]:
                            print(f"      {problem}")
                sys.stdout.flush()
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait()
        subprocess.run(["rm", "-rf", str(work), str(run)])


if __name__ == "__main__":
    main()
