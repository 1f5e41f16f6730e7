"""Benchmark pycni-loopback against the reference loopback: `python3 bench/loopback.py [runs]` (as root, build first).

ADD+DEL cycles on one fresh pod namespace each, exec'ed as a runtime would (standalone: no
node server), ours and the reference's interleaved in one run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plugin_bench import bench_node, compare, cycle_fn  # noqa: E402
from common import DIST_BIN, REFERENCE_BIN, require_built  # noqa: E402


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    require_built("pycni-loopback")
    os.environ["PYCNI_SERVER_SOCKET"] = "off"
    with bench_node("l", containers=2) as (_tag, containers, _tmp, _ours_ipam):
        conf = {"cniVersion": "1.0.0", "name": "lobench", "type": "loopback"}
        fns = {"reference loopback": cycle_fn(REFERENCE_BIN / "loopback", conf, containers[0], str(REFERENCE_BIN), "l0"),
               "pycni-loopback": cycle_fn(DIST_BIN / "pycni-loopback", conf, containers[1], str(DIST_BIN), "l1")}
        compare("ADD+DEL loopback", fns, runs, "reference loopback")


if __name__ == "__main__":
    main()
