"""The node server's fast path: bridge + host-local ADD+DEL with and without pycni-server,
against the Go reference plugins, all driven libcni-style (ChainRunner) in one run.

    python3 bench/server.py [--runs 15] [--cycles 10000] [--concurrent 50]

Rows take turns run by run (drift hits them alike): the reference, pycni standalone,
pycni through a server with its default pool of idle workers, and through one that forks
a worker per connection (--idle-workers 0). Both servers run on /usr/bin/python3, as the
image runs them. Also: the thin client's peak RSS, the server's and its idle workers'
memory at rest and after --cycles ADD+DEL requests, and --concurrent simultaneous ADDs.
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
from common import DIST_BIN, REFERENCE_BIN, report, require_built, run_dir, start_node_server, time_interleaved  # noqa: E402
from burst_helpers import conflist, run_burst, runner_for  # noqa: E402  (tests/, put on sys.path by common)

from pycni.plugins.server import wire  # noqa: E402
from pycni.plugins.core.buildinfo import own_code_id  # noqa: E402
from pycni.plugins.cli.chain import Attachment  # noqa: E402


def memory_kib(pid: int) -> dict:
    """Rss, Pss and private (unshared) memory of one process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def server_memory(server: subprocess.Popen) -> str:
    """The server's memory and its idle workers' (children): what the node pays for the warm pool."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    parent = memory_kib(server.pid)
    workers = [memory_kib(int(pid)) for pid in children]
    total_pss = parent["pss"] + sum(w["pss"] for w in workers)
    return (f"server RSS {parent['rss']} KiB; {len(workers)} idle workers, private "
            f"{'/'.join(str(w['private']) for w in workers)} KiB; PSS of all {total_pss} KiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cycles", type=int, default=10000, help="ADD+DEL requests for the memory check")
    parser.add_argument("--concurrent", type=int, default=50)
    opts = parser.parse_args()
    require_built("pycni-bridge", "pycni-host-local")
    work = Path(tempfile.mkdtemp(prefix="pycni-bench-"))
    run = run_dir()
    sock = run / "server.sock"
    netns = f"bsrv{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    server = start_node_server(work, sock)
    forking = start_node_server(work, run / "forking.sock", "--idle-workers", "0", "--requests-per-worker", "1")
    bridges = []
    try:
        base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # the runners' too (burst_helpers.runner_for)
        cni_path, cache = [str(DIST_BIN), str(REFERENCE_BIN)], str(work / "cache")
        runners = {
            "reference": runner_for(cni_path, cache, None),
            "pycni standalone": runner_for(cni_path, cache, None),
            "pycni + server": runner_for(cni_path, cache, str(sock)),
            "pycni + server, fork per request": runner_for(cni_path, cache, str(run / "forking.sock")),
        }
        for masq in (True, False):
            cycles = {}
            for i, (name, runner) in enumerate(runners.items()):
                bridge = f"bb{uuid.uuid4().hex[:8]}"
                bridges.append(bridge)
                net = conflist(name == "reference", bridge, f"10.{200 + i}.{int(masq)}.0/24", str(work / "ipam"), masq)
                att = Attachment(container_id=f"c{i}", netns=f"/var/run/netns/{netns}", ifname="eth0")

                def cycle(runner=runner, net=net, att=att) -> None:
                    runner.add(net, att)
                    runner.delete(net, att)
                cycles[name] = cycle
            report(f"bridge + host-local ADD+DEL, isGateway, ipMasq={masq}",
                   time_interleaved(cycles, opts.runs), baseline="reference")

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
            # a real netns path: the server declines (runs nothing) a request whose netns it cannot open
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{netns}",
                   "CNI_IFNAME": "eth0",
                   "PATH": base_env["PATH"]}
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(wire.encode_request("pycni-host-local", code_id, env, ipam_conf))
                return wire.read_response(s)[0]

        time.sleep(0.5)  # idle workers replaced and settled
        rest = server_memory(server)
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda i: (request("ADD", f"m{i}"), request("DEL", f"m{i}")), range(opts.cycles)))
        elapsed = time.perf_counter() - start
        failures = sum(1 for a, d in codes if a or d)
        time.sleep(0.5)
        print(f"== at rest: {rest}\n== after {opts.cycles} ADD+DEL cycles ({elapsed:.1f} s, {failures} failures): "
              f"{server_memory(server)}")

        # Concurrent ADDs through the server vs the reference.
        for index, name in enumerate(("reference", "pycni + server")):
            bridge = f"bc{uuid.uuid4().hex[:8]}"
            bridges.append(bridge)
            # a subnet each: the reference's bridge keeps its gateway address, which pycni-bridge
            # rightly refuses to share with a bridge of its own (issue 19)
            data_dir = str(work / f"ipam-{name[0]}")
            net = conflist(name == "reference", bridge, f"10.{210 + index}.0.0/24", data_dir, False)
            burst = run_burst(runners[name], net, bridge, data_dir, opts.concurrent, f"{netns}c")  # removes its netns
            print(f"== {opts.concurrent} concurrent ADDs, {name}: {burst.add_wall * 1000:.0f} ms wall, "
                  f"{len(burst.failures)} failures, {len(burst.duplicates)} duplicate addresses, "
                  f"{len(burst.leftovers)} leftovers")
    finally:
        for proc in (server, forking):
            proc.terminate()
            proc.wait()
        subprocess.run(["ip", "netns", "del", netns])
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", str(work), str(run)])


if __name__ == "__main__":
    main()
