"""Thin client cost: one zipapp exec handing its request to a node server.

`python3 bench/thin_client.py [--runs N] [--bin DIR]` (build first: make zipapps).

1. The Python thin client: a fake server on a unix socket in /tmp answers every
   request immediately, so the figures are the client's own cost: interpreter
   start, the launcher, the wire round trip. Compared in the same run with a bare
   `python3 -I -S -c pass` (the floor any Python client pays) and the Go reference
   bridge answering VERSION (an exec that does no work), with the build's cache dir
   present (warm) and absent (a node where the server always answers never unpacks).
2. The sh handoff against the Python client, both to a real pycni-server (one with
   --no-handoff for the Python client) running host-local STATUS, a request that
   does almost nothing: wall time and the CPU the exec'd processes used (the sh,
   its watchdog sleep, or Python), per call.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DIST_BIN, NODE_PYTHON, REFERENCE_BIN, median, report, require_built, runtime_env,  # noqa: E402
                    run_dir, start_node_server, time_runs)

from pycni.plugins.server import wire  # noqa: E402

ANSWER = b'{"cniVersion": "1.1.0", "interfaces": [], "ips": []}\n'
STDIN = b'{"cniVersion": "1.1.0", "name": "bench", "type": "pycni-bridge"}'


def serve(listener: socket.socket) -> None:
    """Answer every request with ANSWER and exit code 0, without looking at it."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # listener closed: the benchmark is over
        with conn:
            try:
                conn.sendall(wire.ACCEPTED)
                wire.read_request(conn)
                conn.sendall(wire.encode_response(0, ANSWER))
            except (OSError, wire.WireError):
                pass


def run(argv: list, env: dict, expect: bytes) -> None:
    proc = subprocess.run(argv, input=STDIN, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0 or not proc.stdout.startswith(expect):
        raise RuntimeError(f"{argv[0]} failed: {proc.returncode} {proc.stdout!r} {proc.stderr[-500:]!r}")


def thin_rows(binary: Path, label: str, sock_path: Path, work: Path) -> Dict[str, Callable[[], None]]:
    """The thin client of `binary` with this build's cache dir unpacked (warm) and absent."""
    warm, cold = work / f"{label}-warm-cache", work / f"{label}-no-cache"
    warm.mkdir(mode=0o755)
    warm.chmod(0o755)
    run([str(binary)], {**runtime_env("VERSION"), "PYCNI_CACHE_DIR": str(warm)}, b"{")  # VERSION unpacks
    add = runtime_env("ADD", containerid="c1", netns="/var/run/netns/none", ifname="eth0")
    add["PYCNI_SERVER_SOCKET"] = str(sock_path)
    return {
        f"{label} thin client, warm cache dir": lambda: run([str(binary)], {**add, "PYCNI_CACHE_DIR": str(warm)}, ANSWER),
        f"{label} thin client, no cache dir": lambda: run([str(binary)], {**add, "PYCNI_CACHE_DIR": str(cold)}, ANSWER),
    }


def cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def handoff_rows(binary: Path, work: Path, runs: int) -> None:
    """Section 2: the sh handoff and the Python client against real servers, interleaved."""
    conf = json.dumps({"cniVersion": "1.1.0", "name": "bench", "type": "bridge", "ipam": {
        "type": "pycni-host-local", "dataDir": str(work / "ipam"), "ranges": [[{"subnet": "10.249.0.0/24"}]]}}).encode()
    run = run_dir()
    servers = {"sh handoff": (run / "handoff.sock", ()), "Python thin client": (run / "python.sock", ("--no-handoff",))}
    procs = [start_node_server(work, sock, *args) for sock, args in servers.values()]
    try:
        walls: Dict[str, List[float]] = {name: [] for name in servers}
        cpus: Dict[str, List[float]] = {name: [] for name in servers}
        for i in range(runs + 2):
            for name, (sock, _) in servers.items():
                env = {**runtime_env("STATUS"), "PYCNI_SERVER_SOCKET": str(sock)}
                before = cpu_ms()
                started = time.perf_counter()
                proc = subprocess.run([str(binary)], input=conf, env=env, cwd="/", capture_output=True)
                wall = (time.perf_counter() - started) * 1000
                if proc.returncode != 0:
                    raise RuntimeError(f"STATUS via {name} failed: {proc.stdout!r} {proc.stderr[-300:]!r}")
                if i >= 2:  # the first two warm up
                    walls[name].append(wall)
                    cpus[name].append(cpu_ms() - before)
        report("host-local STATUS through a real pycni-server: wall time per exec", walls, baseline="Python thin client")
        for name in servers:
            print(f"  {name:<42} CPU of the exec'd processes: median {median(cpus[name]):.2f} ms")
        print(f"  CPU ratio: x{median(cpus['sh handoff']) / median(cpus['Python thin client']):.2f} "
              f"sh handoff vs Python thin client")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--bin", default=str(DIST_BIN), help="directory of built zipapps")
    parser.add_argument("--compare", metavar="DIR", help="another build's directory, timed in the same run")
    args = parser.parse_args()
    if args.bin == str(DIST_BIN):
        require_built("pycni-bridge")
    work = Path(tempfile.mkdtemp(prefix="pycni-thin-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock_path = work / "server.sock"
        listener.bind(str(sock_path))
        listener.listen(64)
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        floor = "python3 -I -S -c pass"
        rows = {floor: lambda: run([NODE_PYTHON, "-I", "-S", "-c", "pass"], {}, b"")}
        rows.update(thin_rows(Path(args.bin) / "pycni-bridge", "this build:", sock_path, work))
        if args.compare:
            rows.update(thin_rows(Path(args.compare) / "pycni-bridge", "compared:", sock_path, work))
        go = "Go bridge VERSION"
        rows[go] = lambda: run([str(REFERENCE_BIN / "bridge")], runtime_env("VERSION"), b"{")
        times: Dict[str, List[float]] = {name: [] for name in rows}
        for fn in rows.values():
            fn()  # warm up
        for _ in range(args.runs):  # interleaved, so drift on a shared machine hits every row alike
            for name, fn in rows.items():
                times[name] += time_runs(fn, 1, warmup=0)
        report("thin client round trip (fake server answering at once)", times, baseline=floor)
        for name in rows:
            if "thin client" in name:
                print(f"  {name}: +{median(times[name]) - median(times[floor]):.2f} ms over bare python3, "
                      f"x{median(times[name]) / median(times[go]):.2f} vs {go}")
        if any(p.name.endswith("no-cache") for p in work.iterdir()):
            print("  note: a thin client created its cache dir; the thin path should unpack nothing")
        if args.bin == str(DIST_BIN):
            require_built("pycni-host-local")
            handoff_rows(Path(args.bin) / "pycni-host-local", work, args.runs)
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
