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

import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, REFERENCE_BIN, as_json, exec_plugin, report, require_built, runtime_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def enter_netns(name: str) -> None:
    import ctypes

    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
        sys.exit("setns failed")
    os.close(fd)


def cycle_fn(binary: Path, conf: dict, netns: str, cni_path: str, cid: str):
    stdin = as_json(conf)
    add = runtime_env("ADD", containerid=cid, netns=f"/var/run/netns/{netns}", ifname="eth0", path=cni_path)
    dele = dict(add, CNI_COMMAND="DEL")

    def run() -> None:
        exec_plugin(binary, add, stdin)
        exec_plugin(binary, dele, stdin)

    return run


def timed(fn) -> Tuple[float, float]:
    """(wall ms, children's user+sys CPU ms) of one call: CPU time holds up better on a loaded machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    fn()
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, used


def ipam_works(binary: Path, data_dir: str) -> bool:
    conf = {"cniVersion": "1.1.0", "name": "probe", "type": "pycni-host-local",
            "ipam": {"type": "pycni-host-local", "dataDir": data_dir, "subnet": "10.99.0.0/24"}}
    proc = subprocess.run([str(binary)], input=as_json(conf), env=runtime_env("STATUS", path=str(DIST_BIN)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc.returncode == 0


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    require_built("pycni-bridge", "pycni-host-local")
    tag = uuid.uuid4().hex[:6]
    node, containers = f"bn{tag}", [f"bc{tag}{i}" for i in range(3)]
    tmp = tempfile.mkdtemp(prefix="pycni-bench-")
    os.environ.setdefault("PYCNI_CACHE_DIR", tmp + "/cache")
    os.makedirs(os.environ["PYCNI_CACHE_DIR"], mode=0o755, exist_ok=True)
    for ns in [node] + containers:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        enter_netns(node)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        ours_ipam = ipam_works(DIST_BIN / "pycni-host-local", tmp + "/probe")
        cni_path = f"{DIST_BIN}:{REFERENCE_BIN}"
        for masq in (False, True):
            rows: Dict[str, List[float]] = {}
            cpu: Dict[str, List[float]] = {}
            fns = {}
            flavours = [("reference bridge + host-local", REFERENCE_BIN / "bridge", "bridge", "host-local"),
                        ("pycni-bridge + reference host-local", DIST_BIN / "pycni-bridge", "pycni-bridge", "host-local")]
            if ours_ipam:
                flavours.append(("pycni-bridge + pycni-host-local", DIST_BIN / "pycni-bridge", "pycni-bridge",
                                 "pycni-host-local"))
            for i, (label, binary, btype, itype) in enumerate(flavours):
                conf = {"cniVersion": "1.0.0", "name": f"bench{i}", "type": btype, "bridge": f"bb{tag}{i}",
                        "isGateway": True, "ipMasq": masq,
                        "ipam": {"type": itype, "dataDir": f"{tmp}/ipam", "subnet": f"10.9{i}.0.0/16"}}
                fns[label] = cycle_fn(binary, conf, containers[i], cni_path, f"bench{i}")
                fns[label]()  # warm-up: creates the bridge, unpacks the zipapp cache
                fns[label]()
                rows[label], cpu[label] = [], []
            for _ in range(runs):  # interleaved, so drift hits every row alike
                for label, fn in fns.items():
                    wall, used = timed(fn)
                    rows[label].append(wall)
                    cpu[label].append(used)
            base = "reference bridge + host-local"
            report(f"ADD+DEL bridge (isGateway, ipMasq={masq}): wall time", rows, baseline=base)
            report(f"ADD+DEL bridge (isGateway, ipMasq={masq}): CPU time of the processes (user+sys)", cpu,
                   baseline=base)
        if not ours_ipam:
            print("note: pycni-host-local did not answer STATUS; rows use the reference host-local")
    finally:
        for ns in [node] + containers:
            subprocess.run(["ip", "netns", "del", ns])
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
