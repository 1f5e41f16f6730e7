"""Benchmark pycni-macvlan against the reference macvlan: `python3 bench/macvlan.py [runs]` (as root, build first).

ADD+DEL cycles (macvlan + host-local, exec'ed as a runtime would), ours and the
reference's interleaved in one run, inside a private "node" netns whose master
is one end of a veth pair (this kernel has no dummy links).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plugin_bench import bench_node, compare, cycle_fn, flavours  # noqa: E402
from common import DIST_BIN, REFERENCE_BIN, require_built  # noqa: E402


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    require_built("pycni-macvlan", "pycni-host-local")
    cni_path = f"{DIST_BIN}:{REFERENCE_BIN}"
    with bench_node("m") as (_tag, containers, tmp, ours_ipam):
        for cmd in (["link", "add", "m0", "type", "veth", "peer", "name", "m0p"],
                    ["link", "set", "m0", "up"], ["link", "set", "m0p", "up"]):
            subprocess.run(["ip"] + cmd, check=True)
        fns = {}
        for i, (label, binary, mtype, itype) in enumerate(flavours("macvlan", ours_ipam)):
            conf = {"cniVersion": "1.0.0", "name": f"mbench{i}", "type": mtype, "master": "m0",
                    "ipam": {"type": itype, "dataDir": f"{tmp}/ipam", "subnet": f"10.8{i}.0.0/16"}}
            fns[label] = cycle_fn(binary, conf, containers[i], cni_path, f"mbench{i}")
        compare("ADD+DEL macvlan", fns, runs, "reference macvlan + host-local")


if __name__ == "__main__":
    main()
