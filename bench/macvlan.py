"""Benchmark pycni-macvlan against the reference macvlan: `python3 bench/macvlan.py [runs]` (as root, build first).

ADD+DEL cycles (macvlan + host-local, exec'ed as a runtime would), ours and the
reference's interleaved in one run, inside a private "node" netns whose master
is one end of a veth pair (this kernel has no dummy links).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bridge import cycle_fn, enter_netns, ipam_works, timed  # noqa: E402
from common import DIST_BIN, REFERENCE_BIN, report, require_built  # noqa: E402


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    require_built("pycni-macvlan", "pycni-host-local")
    tag = uuid.uuid4().hex[:6]
    node, containers = f"mn{tag}", [f"mc{tag}{i}" for i in range(3)]
    tmp = tempfile.mkdtemp(prefix="pycni-bench-")
    os.environ.setdefault("PYCNI_CACHE_DIR", tmp + "/cache")
    os.makedirs(os.environ["PYCNI_CACHE_DIR"], mode=0o755, exist_ok=True)
    for ns in [node] + containers:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        enter_netns(node)
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "m0", "type", "veth", "peer", "name", "m0p"],
                    ["link", "set", "m0", "up"], ["link", "set", "m0p", "up"]):
            subprocess.run(["ip"] + cmd, check=True)
        ours_ipam = ipam_works(DIST_BIN / "pycni-host-local", tmp + "/probe")
        cni_path = f"{DIST_BIN}:{REFERENCE_BIN}"
        flavours = [("reference macvlan + host-local", REFERENCE_BIN / "macvlan", "macvlan", "host-local"),
                    ("pycni-macvlan + reference host-local", DIST_BIN / "pycni-macvlan", "pycni-macvlan",
                     "host-local")]
        if ours_ipam:
            flavours.append(("pycni-macvlan + pycni-host-local", DIST_BIN / "pycni-macvlan", "pycni-macvlan",
                             "pycni-host-local"))
        fns = {}
        rows: Dict[str, List[float]] = {}
        cpu: Dict[str, List[float]] = {}
        for i, (label, binary, mtype, itype) in enumerate(flavours):
            conf = {"cniVersion": "1.0.0", "name": f"mbench{i}", "type": mtype, "master": "m0",
                    "ipam": {"type": itype, "dataDir": f"{tmp}/ipam", "subnet": f"10.8{i}.0.0/16"}}
            fns[label] = cycle_fn(binary, conf, containers[i], cni_path, f"mbench{i}")
            fns[label]()
            fns[label]()
            rows[label], cpu[label] = [], []
        for _ in range(runs):
            for label, fn in fns.items():
                wall, used = timed(fn)
                rows[label].append(wall)
                cpu[label].append(used)
        base = "reference macvlan + host-local"
        report("ADD+DEL macvlan: wall time", rows, baseline=base)
        report("ADD+DEL macvlan: CPU time of the processes (user+sys)", cpu, baseline=base)
        if not ours_ipam:
            print("note: pycni-host-local did not answer STATUS; rows use the reference host-local")
    finally:
        for ns in [node] + containers:
            subprocess.run(["ip", "netns", "del", ns])
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
