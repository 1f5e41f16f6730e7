"""Benchmark pycni-bridge against the reference bridge: `python3 bench/bridge.py [runs]` (as root, build first).

One ADD+DEL cycle (bridge + host-local, each plugin exec'ed as a runtime would,
with /usr/bin/python3 for ours) per sample, ours and the reference's
interleaved in the same run, with and without ipMasq. Everything happens in a
private "node" netns this process enters, so the host is untouched.
Rows: pycni-bridge + pycni-host-local (when it works), pycni-bridge + the
reference host-local (the bridge plugin alone compared), reference + reference.
Note: the reference bridge here (v1.1.1) masquerades with iptables(-nft); ours with nftables.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, REFERENCE_BIN, require_built  # noqa: E402
from plugin_bench import bench_node, compare, cycle_fn, flavours  # noqa: E402


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    require_built("pycni-bridge", "pycni-host-local")
    cni_path = f"{DIST_BIN}:{REFERENCE_BIN}"
    with bench_node("b") as (tag, containers, tmp, ours_ipam):
        for masq in (False, True):
            fns = {}
            for i, (label, binary, btype, itype) in enumerate(flavours("bridge", ours_ipam)):
                conf = {"cniVersion": "1.0.0", "name": f"bench{i}", "type": btype, "bridge": f"bb{tag}{i}",
                        "isGateway": True, "ipMasq": masq,
                        "ipam": {"type": itype, "dataDir": f"{tmp}/ipam", "subnet": f"10.9{i}.0.0/16"}}
                fns[label] = cycle_fn(binary, conf, containers[i], cni_path, f"bench{i}")
            compare(f"ADD+DEL bridge (isGateway, ipMasq={masq})", fns, runs, "reference bridge + host-local")


if __name__ == "__main__":
    main()
