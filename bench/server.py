"""The node server's fast path: bridge + host-local ADD+DEL with and without pycni-server,
against the Go reference plugins, all driven libcni-style (ChainRunner) in one run.

    python3 bench/server.py [--runs 15] [--cycles 10000] [--concurrent 50]

Also: the thin client's peak RSS, the server's RSS at rest and after --cycles
ADD+DEL requests, and --concurrent simultaneous ADDs through the server.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, REFERENCE_BIN, report, require_built, time_runs  # noqa: E402

from pycni.plugins import wire  # noqa: E402
from pycni.plugins.buildinfo import own_code_id  # noqa: E402
from pycni.plugins.chain import Attachment, ChainRunner, NetworkList  # noqa: E402
from pycni.plugins.server import health  # noqa: E402


def conflist(kind: str, bridge: str, subnet: str, data_dir: str, masq: bool) -> NetworkList:
    ipam_type = "host-local" if kind == "reference" else "pycni-host-local"
    plugin = "bridge" if kind == "reference" else "pycni-bridge"
    conf = {"cniVersion": "1.0.0", "name": f"bench-{kind}-{int(masq)}", "plugins": [
        {"type": plugin, "bridge": bridge, "isGateway": True, "ipMasq": masq,
         "ipam": {"type": ipam_type, "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}}]}
    return NetworkList.parse(json.dumps(conf).encode())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0



def start_server(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pycni.plugins.server", "--socket", str(path)],
                            stderr=subprocess.DEVNULL)
    for _ in range(400):
        if path.exists() and health(str(path)):
            return proc
        time.sleep(0.05)
    raise SystemExit("bench: pycni-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cycles", type=int, default=1000, help="ADD+DEL requests for the memory check")
    parser.add_argument("--concurrent", type=int, default=50)
    opts = parser.parse_args()
    require_built("pycni-bridge", "pycni-host-local")
    work = Path(tempfile.mkdtemp(prefix="pycni-bench-"))
    sock = work / "server.sock"
    netns = f"bsrv{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    server = start_server(sock)
    bridges = []
    try:
        base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        cni_path = [str(DIST_BIN), str(REFERENCE_BIN)]
        runners = {
            "reference": ChainRunner(cni_path, str(work / "cache"), dict(base_env, PYCNI_SERVER_SOCKET="off")),
            "pycni standalone": ChainRunner(cni_path, str(work / "cache"), dict(base_env, PYCNI_SERVER_SOCKET="off")),
            "pycni + server": ChainRunner(cni_path, str(work / "cache"), dict(base_env, PYCNI_SERVER_SOCKET=str(sock))),
        }
        for masq in (True, False):
            rows = {}
            for i, (name, runner) in enumerate(runners.items()):
                bridge = f"bb{uuid.uuid4().hex[:8]}"
                bridges.append(bridge)
                net = conflist("reference" if name == "reference" else "pycni", bridge, f"10.{200 + i}.{int(masq)}.0/24",
                               str(work / "ipam"), masq)
                att = Attachment(container_id=f"c{i}", netns=f"/var/run/netns/{netns}", ifname="eth0")

                def cycle(runner=runner, net=net, att=att) -> None:
                    runner.add(net, att)
                    runner.delete(net, att)
                rows[name] = time_runs(cycle, opts.runs)
            report(f"bridge + host-local ADD+DEL, isGateway, ipMasq={masq}", rows, baseline="reference")

        # Thin client peak memory: one ADD through the server, measured by GNU time.
        env = dict(base_env, CNI_COMMAND="VERSION", PYCNI_SERVER_SOCKET=str(sock))
        peak = subprocess.run(["/usr/bin/time", "-f", "%M", str(DIST_BIN / "pycni-host-local")], env=dict(
            env, CNI_COMMAND="DEL", CNI_CONTAINERID="none", CNI_IFNAME="eth0"),
            input=json.dumps({"cniVersion": "1.0.0", "name": "memnet", "type": "pycni-host-local",
                              "ipam": {"subnet": "10.99.0.0/24", "dataDir": str(work / "ipam")}}).encode(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        print(f"\n== thin client peak RSS (DEL via server): {peak.stderr.decode().strip().splitlines()[-1]} KiB")

        # Server memory at rest and after many requests (host-local ADD+DEL sent straight to the socket).
        code_id = own_code_id()
        ipam_conf = json.dumps({"cniVersion": "1.0.0", "name": "memnet", "type": "pycni-host-local",
                                "ipam": {"subnet": "10.99.0.0/16", "dataDir": str(work / "ipam")}}).encode()

        def request(command: str, cid: str) -> int:
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
                   "PATH": base_env["PATH"]}
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(wire.encode_request("pycni-host-local", code_id, env, ipam_conf))
                return wire.read_response(s)[0]

        rest = rss_kib(server.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda i: (request("ADD", f"m{i}"), request("DEL", f"m{i}")), range(opts.cycles)))
        elapsed = time.perf_counter() - start
        failures = sum(1 for a, d in codes if a or d)
        print(f"== server RSS at rest {rest} KiB; after {opts.cycles} ADD+DEL cycles {rss_kib(server.pid)} KiB "
              f"({elapsed:.1f} s, {failures} failures)")

        # Concurrent ADDs through the server vs the reference.
        for name in ("reference", "pycni + server"):
            bridge = f"bc{uuid.uuid4().hex[:8]}"
            bridges.append(bridge)
            net = conflist("reference" if name == "reference" else "pycni", bridge, "10.210.0.0/24",
                           str(work / f"ipam-{name[0]}"), False)
            namespaces = [f"{netns}c{i}" for i in range(opts.concurrent)]
            for ns in namespaces:
                subprocess.run(["ip", "netns", "add", ns], check=True)
            atts = [Attachment(container_id=ns, netns=f"/var/run/netns/{ns}") for ns in namespaces]
            start = time.perf_counter()
            with ThreadPoolExecutor(opts.concurrent) as pool:
                results = list(pool.map(lambda a: runners[name].add(net, a), atts))
            wall = time.perf_counter() - start
            addresses = {r["ips"][0]["address"] for r in results}
            print(f"== {opts.concurrent} concurrent ADDs, {name}: {wall * 1000:.0f} ms wall, "
                  f"{len(addresses)} distinct addresses")
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda a: runners[name].delete(net, a), atts))
            for ns in namespaces:
                subprocess.run(["ip", "netns", "del", ns])
    finally:
        server.terminate()
        server.wait()
        subprocess.run(["ip", "netns", "del", netns])
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
