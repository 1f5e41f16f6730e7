"""pycni-host-local vs the reference host-local, as executables, in the same run.

    python3 zipapp/build.py && python3 bench/hostlocal.py [--runs N] [--scale-runs M]

1. ADD+DEL of one container on an empty store (median over --runs pairs).
2. Allocating address N with N-1 already held (N = 100, 1000, 10000): the store
   is pre-populated with lease files directly. ADD and DEL are timed apart.
   For pycni the first operation on a store it did not write walks it once and
   builds its index ("first op"); later operations read the index only.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DIST_BIN, REFERENCE_BIN, exec_plugin, median, report, require_built,  # noqa: E402
                    runtime_env, time_runs)

OURS = DIST_BIN / "pycni-host-local"
REFERENCE = REFERENCE_BIN / "host-local"
SUBNET = ipaddress.ip_network("10.200.0.0/16")


def conf(data_dir: Path, name: str) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": name, "type": "bridge",
                       "ipam": {"type": "host-local", "dataDir": str(data_dir),
                                "ranges": [[{"subnet": str(SUBNET)}]]}}).encode()


def call(binary: Path, command: str, cid: str, stdin: bytes) -> float:
    env = runtime_env(command, containerid=cid, netns="/var/run/netns/bench", ifname="eth0", path=str(REFERENCE_BIN))
    start = time.perf_counter()
    exec_plugin(binary, env, stdin)
    return (time.perf_counter() - start) * 1000


def add_del(work: Path, runs: int) -> Dict[str, List[float]]:
    """ADD+DEL pairs, ours and the reference alternating so that machine load hits both alike."""
    rows: Dict[str, List[float]] = {"reference host-local": [], "pycni-host-local": []}
    version = runtime_env("VERSION")
    floor: List[float] = []
    for i in range(-2, runs):  # two warm-up rounds (the zipapp unpacks its cache once)
        for label, binary in (("reference host-local", REFERENCE), ("pycni-host-local", OURS)):
            stdin = conf(work / binary.name, "bench")
            pair = call(binary, "ADD", f"c{i}", stdin) + call(binary, "DEL", f"c{i}", stdin)
            if i >= 0:
                rows[label].append(pair)
        if i >= 0:
            floor.append(sum(time_runs(lambda: exec_plugin(OURS, version, b"{}"), 2, warmup=0)))
    rows["floor: pycni-host-local VERSION x2"] = floor
    return rows


def populate(net_dir: Path, held: int) -> None:
    """held leases from the start of the range, as sequential allocation leaves them."""
    net_dir.mkdir(parents=True)
    first = int(SUBNET.network_address) + 2  # .0.1 is the gateway
    last = None
    for i in range(held):
        last = ipaddress.ip_address(first + i)
        (net_dir / str(last)).write_bytes(f"pre{i}\r\neth0".encode())
    (net_dir / "last_reserved_ip.0").write_bytes(str(last).encode())


def scaling(work: Path, n: int, runs: int) -> Dict[str, Dict[str, List[float]]]:
    """ADD and DEL timed apart on a store holding n-1 leases; both plugins alternate."""
    plugins = {"reference": REFERENCE, "pycni": OURS}
    stdins = {}
    rows: Dict[str, Dict[str, List[float]]] = {}
    for label, binary in plugins.items():
        data = work / f"{label}-{n}"
        populate(data / "bench", n - 1)
        stdins[label] = conf(data, "bench")
        rows[label] = {"first op": [call(binary, "ADD", "first", stdins[label])], "ADD": [], "DEL": []}
        call(binary, "DEL", "first", stdins[label])
    for i in range(runs):
        for label, binary in plugins.items():
            rows[label]["ADD"].append(call(binary, "ADD", f"n{i}", stdins[label]))
            rows[label]["DEL"].append(call(binary, "DEL", f"n{i}", stdins[label]))
    for label in plugins:
        shutil.rmtree(work / f"{label}-{n}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--scale-runs", type=int, default=10)
    args = parser.parse_args()
    require_built("pycni-host-local")
    with tempfile.TemporaryDirectory(prefix="bench-hostlocal-") as tmp:
        work = Path(tmp)
        report("ADD+DEL of one container (ms per pair)", add_del(work, args.runs), baseline="reference host-local")
        table = []
        for n in (100, 1000, 10000):
            both = scaling(work, n, args.scale_runs)
            ref, ours = both["reference"], both["pycni"]
            report(f"address N={n} with N-1 held: ADD", {"reference host-local": ref["ADD"],
                                                         "pycni-host-local": ours["ADD"]},
                   baseline="reference host-local")
            table.append((n, ref, ours))
        print("\n== summary: medians in ms (pycni 'first op' = walk + index build after a switch)")
        print(f"  {'N':>6} | {'ref ADD':>8} {'ref DEL':>8} | {'ours ADD':>8} {'ours DEL':>8} {'ours 1st':>8}")
        for n, ref, ours in table:
            print(f"  {n:>6} | {median(ref['ADD']):8.1f} {median(ref['DEL']):8.1f} | "
                  f"{median(ours['ADD']):8.1f} {median(ours['DEL']):8.1f} {ours['first op'][0]:8.1f}")


if __name__ == "__main__":
    main()
