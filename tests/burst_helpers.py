"""Pod bursts (issue 21): N pods at once, each in its own new netns, a libcni-style ADD of
bridge + host-local, then DEL of all; what failed, which addresses were handed out twice, what
was left behind. Shared by the correctness test (tests/test_server.py) and bench/burst.py.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from pycni.plugins.cli.chain import Attachment, ChainRunner, NetworkList


def conflist(reference: bool, bridge: str, subnet: str, data_dir: str, masq: bool) -> NetworkList:
    """bridge + host-local (the Go reference's or pycni's), gateway on the bridge."""
    kind = "reference" if reference else "pycni"
    conf = {"cniVersion": "1.0.0", "name": f"burst-{kind}-{bridge}", "plugins": [
        {"type": "bridge" if reference else "pycni-bridge", "bridge": bridge, "isGateway": True, "ipMasq": masq,
         "ipam": {"type": "host-local" if reference else "pycni-host-local", "ranges": [[{"subnet": subnet}]],
                  "dataDir": data_dir}}]}
    return NetworkList.parse(json.dumps(conf).encode())


@dataclass
class Burst:
    """One burst's outcome; times in seconds."""

    add_wall: float = 0.0
    add_latencies: List[float] = field(default_factory=list)
    del_wall: float = 0.0
    failures: List[str] = field(default_factory=list)
    duplicates: List[str] = field(default_factory=list)
    leftovers: List[str] = field(default_factory=list)

    @property
    def add_p95(self) -> float:
        ordered = sorted(self.add_latencies)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0

    @property
    def clean(self) -> bool:
        return not (self.failures or self.duplicates or self.leftovers)


def _ip_batch(commands: List[str]) -> None:
    subprocess.run(["ip", "-batch", "-"], input="\n".join(commands).encode(), check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _all_at_once(pods: int, work, timeout: float) -> tuple:
    """work(i) for every pod from its own thread, all released together; (wall, [seconds or error])."""
    gate = threading.Event()
    outcome: List[object] = [None] * pods

    def one(i: int) -> None:
        gate.wait()
        start = time.perf_counter()
        try:
            work(i)
            outcome[i] = time.perf_counter() - start
        except Exception as e:  # a failed pod is a figure, not a crash of the burst
            outcome[i] = f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(pods) as pool:
        futures = [pool.submit(one, i) for i in range(pods)]
        time.sleep(0.05)  # every thread parked at the gate
        start = time.perf_counter()
        gate.set()
        for future in futures:
            future.result(timeout=timeout)
        wall = time.perf_counter() - start
    return wall, outcome


def leftovers(net: NetworkList, bridge: str, data_dir: str, prefix: str) -> List[str]:
    """Leases, veths on the bridge and masquerade rules naming the burst's containers, after DEL."""
    left = [f"lease {p.name}" for p in (Path(data_dir) / net.name).glob("*") if p.name[0].isdigit()]
    links = subprocess.run(["ip", "-o", "link", "show", "master", bridge], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL).stdout.decode()
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if line.strip()]
    for argv in (["nft", "list", "ruleset"], ["iptables-save", "-t", "nat"]):
        try:
            out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode()
        except FileNotFoundError:
            continue
        left += [f"{argv[0]}: {line.strip()}" for line in out.splitlines() if prefix in line]
    return left


def run_burst(runner: ChainRunner, net: NetworkList, bridge: str, data_dir: str, pods: int, prefix: str,
              timeout: float = 300) -> Burst:
    """ADD `pods` pods at once (each its own new netns named prefix+i), then DEL them all at once."""
    names = [f"{prefix}{i}" for i in range(pods)]
    _ip_batch([f"netns add {name}" for name in names])
    atts = [Attachment(container_id=name, netns=f"/var/run/netns/{name}") for name in names]
    burst = Burst()
    results: Dict[int, dict] = {}
    try:
        def add(i: int) -> None:
            results[i] = runner.add(net, atts[i])

        burst.add_wall, outcome = _all_at_once(pods, add, timeout)
        burst.add_latencies = [o for o in outcome if isinstance(o, float)]
        burst.failures = [f"ADD {names[i]}: {o}" for i, o in enumerate(outcome) if not isinstance(o, float)]
        owners: Dict[str, str] = {}
        for i, result in results.items():
            for ip in result.get("ips", []):
                if ip["address"] in owners:
                    burst.duplicates.append(f"{ip['address']}: {owners[ip['address']]} and {names[i]}")
                owners[ip["address"]] = names[i]
        burst.del_wall, outcome = _all_at_once(pods, lambda i: runner.delete(net, atts[i]), timeout)
        burst.failures += [f"DEL {names[i]}: {o}" for i, o in enumerate(outcome) if not isinstance(o, float)]
        burst.leftovers = leftovers(net, bridge, data_dir, prefix)
    finally:
        _ip_batch([f"netns del {name}" for name in names])
    return burst


def runner_for(cni_path: List[str], cache_dir: str, socket_path: Optional[str]) -> ChainRunner:
    """A libcni-style runner whose plugins use the node server at `socket_path` (None: none)."""
    return ChainRunner(cni_path, cache_dir, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                             "PYCNI_SERVER_SOCKET": socket_path or "off"})
