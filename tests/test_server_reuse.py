"""pycni-server's workers serve requests one after another (issue 21), and only while each
request leaves the worker's process as it found it (plugins/server/reuse.py)."""
from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server_helpers import host_local, status
from pycni.plugins.server.node import IDLE_LINGER, default_max_workers


def test_one_worker_serves_requests_one_after_another(bin_dir: Path, tmp_path: Path, start_server,
                                                      make_netns) -> None:
    path = start_server("--idle-workers", "1")
    call = host_local(bin_dir, path, make_netns(), tmp_path / "ipam", "10.231.0.0/24")
    before = status(path)
    addresses = []
    for i in range(12):
        out, rc = call("ADD", f"c{i}")
        assert rc == 0, out
        addresses.append(out["ips"][0]["address"])
        out, rc = call("DEL", f"c{i}")
        assert rc == 0, out
    after = status(path)
    assert after["served"] - before["served"] >= 24
    assert after["forked"] - before["forked"] <= 1, (before, after)  # was one fork per request
    assert len(set(addresses)) == 12  # host-local hands out addresses round-robin, as the reference's
    assert not list((tmp_path / "ipam" / "reuse").glob("10.*"))  # and each DEL freed its lease


@pytest.mark.parametrize("quota", ["1", "2"])
def test_workers_at_their_quota_never_lose_a_request(bin_dir: Path, tmp_path: Path, start_server,
                                                     make_netns, quota: str) -> None:
    """A worker leaving at its quota must not be handed another request first: 60 concurrent ADDs
    with a quota of 1 and 2 all succeed, with distinct addresses, and a fresh fork per quota."""
    path = start_server("--requests-per-worker", quota, "--max-workers", "4")
    call = host_local(bin_dir, path, make_netns(), tmp_path / "ipam", "10.232.0.0/24")
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: call("ADD", f"q{i}"), range(60)))
    assert [out for out, rc in results if rc != 0] == []
    assert len({out["ips"][0]["address"] for out, _ in results}) == 60
    assert status(path)["forked"] >= 60 // int(quota)  # counting the workers forked ahead


def test_a_burst_is_capped_and_its_workers_retire_to_the_idle_target(bin_dir: Path, tmp_path: Path, start_server,
                                                                      make_netns) -> None:
    """With the chart's default cap (PYCNI_SERVER_MAX_WORKERS=0: four per CPU, 8 to 64), requests
    held up on host-local's lock occupy that many workers and the rest wait, read, in the server;
    after the burst the extra workers retire to the idle target."""
    path = start_server("--idle-workers", "2", PYCNI_SERVER_MAX_WORKERS="0")
    call = host_local(bin_dir, path, make_netns(), tmp_path / "ipam", "10.233.0.0/22")
    assert call("ADD", "first")[1] == 0  # makes the store, and its lock file
    cap, clients = default_max_workers(), default_max_workers() + 6
    with open(tmp_path / "ipam" / "reuse" / "lock") as lock, ThreadPoolExecutor(clients) as pool:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = [pool.submit(call, "ADD", f"b{i}") for i in range(clients)]
        deadline = time.monotonic() + 30
        while status(path)["queued"] < clients - cap and time.monotonic() < deadline:
            time.sleep(0.05)
        held = status(path)
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert all(r.result()[1] == 0 for r in results)
    assert held["busy"] == held["workers"] == cap and held["queued"] == clients - cap, held
    deadline = time.monotonic() + IDLE_LINGER + 10
    while status(path)["workers"] > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status(path)["workers"] == 2


# What a request could leave behind in a worker, each done to a process that took its snapshot
# first; reuse.changed must name it (the worker then exits instead of serving another request).
CHANGES = {
    "nothing": "pass",
    "netns": "import ctypes; f = open('/var/run/netns/' + NETNS); "
             "assert ctypes.CDLL(None, use_errno=True).setns(f.fileno(), 0x40000000) == 0",
    "fds": "keep = open('/dev/null')",
    "cwd": "os.chdir('/tmp')",
    "environ": "os.environ['PYCNI_LEFT'] = '1'",
    "threads": "import threading; threading.Thread(target=time.sleep, args=(5,), daemon=True).start()",
    "child": "import subprocess; child = subprocess.Popen(['sleep', '5'])",
    "memory": "hog = bytearray(80 << 20); hog[::4096] = b'x' * len(hog[::4096])",
}
CHECK = """
import os, sys, time
from pycni.plugins.server import reuse
NETNS = sys.argv[2]
state, resident = reuse.snapshot(), reuse.resident_bytes()
exec(sys.argv[1])
print(reuse.changed(state, resident))
"""


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_a_request_left_in_the_worker_is_seen(make_netns, change: str) -> None:
    netns = make_netns() if change == "netns" else ""
    out = subprocess.run([sys.executable, "-c", CHECK, CHANGES[change], netns], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    verdict = out.stdout.strip()
    if change == "nothing":
        assert verdict == "None"
    else:
        assert change in verdict, verdict

