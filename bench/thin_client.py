"""Thin client cost: one zipapp exec handing its request to a node server that answers at once.

`python3 bench/thin_client.py [--runs N] [--bin DIR]` (build first: make zipapps).

A fake server on a unix socket in /tmp answers every request immediately, so
the figures are the client's own cost: interpreter start, the launcher, the
wire round trip. Compared in the same run with a bare `python3 -I -S -c pass`
(the floor any Python client pays) and the Go reference bridge answering
VERSION (an exec that does no work), with the build's cache dir present
(warm) and absent (a node where the server always answers never unpacks).
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, NODE_PYTHON, REFERENCE_BIN, median, report, require_built, runtime_env, time_runs  # noqa: E402

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
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
