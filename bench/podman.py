"""`podman run --rm <image> true` on a pycni network vs the same on the reference plugins.

    python3 bench/podman.py [--runs 10]

Both networks are bridge + host-local with isGateway and ipMasq; pycni's runs
standalone and, when pycni-server can start, through the node server too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import DIST_BIN, REFERENCE_BIN, report, require_built, start_node_server, time_runs  # noqa: E402
from podman_helpers import Podman  # noqa: E402


def network(name: str, bridge: str, subnet: str, data_dir: Path, ours: bool) -> dict:
    prefix = "pycni-" if ours else ""
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": f"{prefix}bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
         "ipam": {"type": f"{prefix}host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    require_built("pycni-bridge", "pycni-host-local")
    work = Path(tempfile.mkdtemp(prefix="pycni-bench-podman-"))
    podman = Podman(work, [DIST_BIN, REFERENCE_BIN], work / "net")
    tag = uuid.uuid4().hex[:6]
    nets = {"reference": (f"bref{tag}", f"bpr{tag}", "10.231.0.0/24", False),
            "pycni": (f"bpy{tag}", f"bpp{tag}", "10.232.0.0/24", True)}
    for name, bridge, subnet, ours in nets.values():
        (podman.network_dir / f"{name}.conflist").write_text(
            json.dumps(network(name, bridge, subnet, work / "ipam", ours)))
    socket_path = work / "server" / "server.sock"
    server = start_node_server(work, socket_path)
    try:
        image = podman.import_busybox()
        rows = {}
        for label, (name, *_rest) in nets.items():
            rows[label] = time_runs(lambda n=name: podman.run("--rm", "--network", n, image, "true"), runs)
        podman.env["PYCNI_SERVER_SOCKET"] = str(socket_path)
        rows["pycni + server"] = time_runs(lambda: podman.run("--rm", "--network", nets["pycni"][0], image, "true"),
                                           runs)
        report("podman run --rm busybox true (bridge + host-local, ipMasq)", rows, baseline="reference")
    finally:
        server.terminate()
        server.wait()
        podman.cleanup()
        for _name, bridge, *_ in nets.values():
            subprocess.run(["ip", "link", "del", bridge], stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
