"""What the plugin benchmarks share: a private node netns, ADD+DEL cycles, interleaved timing."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, REFERENCE_BIN, as_json, exec_plugin, report, runtime_env, time_interleaved  # noqa: E402


def enter_netns(name: str) -> None:
    import ctypes

    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
        sys.exit("setns failed")
    os.close(fd)


def flavours(plugin: str, ours_ipam: bool) -> List[Tuple[str, Path, str, str]]:
    """(label, binary, type, IPAM type) rows: the reference pair, ours with the reference
    host-local (the plugin alone compared) and, when it works, ours with pycni-host-local."""
    ours = f"pycni-{plugin}"
    rows = [(f"reference {plugin} + host-local", REFERENCE_BIN / plugin, plugin, "host-local"),
            (f"{ours} + reference host-local", DIST_BIN / ours, ours, "host-local")]
    if ours_ipam:
        rows.append((f"{ours} + pycni-host-local", DIST_BIN / ours, ours, "pycni-host-local"))
    return rows


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


@contextmanager
def bench_node(prefix: str, containers: int = 3) -> Iterator[Tuple[str, List[str], str, bool]]:
    """Enter a private "node" netns; yield (tag, container netns names, temp dir, pycni-host-local works)."""
    tag = uuid.uuid4().hex[:6]
    node, names = f"{prefix}n{tag}", [f"{prefix}c{tag}{i}" for i in range(containers)]
    tmp = tempfile.mkdtemp(prefix="pycni-bench-")
    os.environ.setdefault("PYCNI_CACHE_DIR", tmp + "/cache")
    os.makedirs(os.environ["PYCNI_CACHE_DIR"], mode=0o755, exist_ok=True)
    for ns in [node] + names:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        enter_netns(node)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        ours_ipam = ipam_works(DIST_BIN / "pycni-host-local", tmp + "/probe")
        yield tag, names, tmp, ours_ipam
        if not ours_ipam:
            print("note: pycni-host-local did not answer STATUS; rows use the reference host-local")
    finally:
        for ns in [node] + names:
            subprocess.run(["ip", "netns", "del", ns])
        subprocess.run(["rm", "-rf", tmp])


def compare(title: str, fns: Dict[str, Callable[[], None]], runs: int, baseline: str) -> None:
    """Warm each cycle twice (creates the bridge, unpacks the zipapp cache), then time them
    interleaved; print wall and CPU."""
    samples = time_interleaved(fns, runs, measure=timed)
    report(f"{title}: wall time", {label: [w for w, _ in s] for label, s in samples.items()}, baseline=baseline)
    report(f"{title}: CPU time of the processes (user+sys)", {label: [c for _, c in s] for label, s in samples.items()},
           baseline=baseline)
