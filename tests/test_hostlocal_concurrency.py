"""pycni-host-local under concurrency and crashes: many real processes on one store, and kill -9."""
from __future__ import annotations

import ipaddress
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import REFERENCE_BIN, plugin_env
from hostlocal_helpers import FAKE_NETNS, OURS, REFERENCE, Net, addresses, dumps, parallel

pytestmark = pytest.mark.slow


@pytest.fixture
def hl(bin_dir: Path) -> Path:
    return bin_dir / OURS


def _ip(result: dict) -> str:
    return addresses(result)[0].split("/")[0]


def test_200_parallel_adds_get_distinct_addresses(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.80.0.0/24"}]]})
    results = parallel(lambda i: net.call(hl, "ADD", f"p{i}"), range(200))
    failed = [(out, err) for out, rc, err in results if rc != 0]
    assert not failed, failed[:3]
    ips = [_ip(out) for out, _, _ in results]
    assert len(set(ips)) == 200
    assert "10.80.0.1" not in ips and "10.80.0.0" not in ips and "10.80.0.255" not in ips
    leases = net.leases()
    assert {ip: leases[ip] for ip in ips} == {ip: f"p{i}\r\neth0".encode() for i, ip in enumerate(ips)}
    assert len(leases) == 200


def test_300_parallel_adds_on_a_pool_of_250(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.81.0.0/24", "rangeStart": "10.81.0.2",
                                               "rangeEnd": "10.81.0.251"}]]})
    results = parallel(lambda i: net.call(hl, "ADD", f"q{i}"), range(300))
    ok = [out for out, rc, _ in results if rc == 0]
    errors = [out for out, rc, _ in results if rc != 0]
    assert len(ok) == 250 and len(errors) == 50
    assert len({_ip(out) for out in ok}) == 250
    for out in errors:  # clean spec errors: JSON with a code and a message
        assert out["code"] == 11 and "no IP addresses available" in out["msg"], out
    assert len(net.leases()) == 250


def test_100_parallel_dels_leave_the_store_empty(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.82.0.0/24"}], [{"subnet": "fd82::/64"}]]})
    assert all(rc == 0 for _, rc, _ in parallel(lambda i: net.call(hl, "ADD", f"d{i}"), range(100)))
    assert len(net.leases()) == 200
    results = parallel(lambda i: net.call(hl, "DEL", f"d{i}"), range(100))
    assert [rc for _, rc, _ in results] == [0] * 100
    assert sorted(p.name for p in net.dir.iterdir()) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]


def test_ours_and_reference_in_parallel_share_the_lock(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.83.0.0/24"}]]})
    jobs = [(hl if i % 2 else REFERENCE, f"m{i}") for i in range(60)]
    results = parallel(lambda job: net.call(job[0], "ADD", job[1]), jobs)
    assert all(rc == 0 for _, rc, _ in results), [r for r in results if r[1]][:2]
    assert len({_ip(out) for out, _, _ in results}) == 60
    # each DEL by the other plugin than the one that allocated
    results = parallel(lambda job: net.call(REFERENCE if job[0] == hl else hl, "DEL", job[1]), jobs)
    assert all(rc == 0 for _, rc, _ in results)
    assert net.leases() == {}


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_sigkill_of_the_lock_holder_frees_the_store(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data")
    net.dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(net.dir / "lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        done: list = []
        worker = threading.Thread(target=lambda: done.append(net.call(hl, "ADD", "waiter")))
        worker.start()
        worker.join(1.5)
        assert not done, "ADD must wait for the lock"
        holder.send_signal(signal.SIGKILL)
        worker.join(60)
        assert done and done[0][1] == 0 and addresses(done[0][0]) == ["10.77.0.2/24"]
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_storm_mid_add_leaves_complete_or_reclaimable_leases(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.84.0.0/24"}], [{"subnet": "fd84::/64"}]]})
    conf = dumps(net.conf()).encode()
    rng = random.Random(1234)
    cids = [f"k{i}" for i in range(40)]
    procs = []
    for cid in cids:
        env = plugin_env("ADD", netns=FAKE_NETNS, container_id=cid, cni_path=str(REFERENCE_BIN))
        procs.append(subprocess.Popen([str(hl)], env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd="/"))
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(conf)
        proc.stdin.close()
    start = time.monotonic()
    schedule = sorted((rng.uniform(0.02, 0.8), i) for i in range(len(procs)))
    for at, i in schedule:  # kill each at a random moment of its life, many while holding the lock
        time.sleep(max(0.0, start + at - time.monotonic()))
        procs[i].send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait()
    # No reader ever sees a half-written lease: every file names a launched attachment, whole.
    leases = net.leases()
    valid = {f"{cid}\r\neth0".encode() for cid in cids}
    assert all(content in valid for content in leases.values()), leases
    per_owner: dict = {}
    for ip, content in leases.items():
        per_owner.setdefault((content, ipaddress.ip_address(ip).version), []).append(ip)
    assert all(len(v) == 1 for v in per_owner.values()), per_owner
    # A runtime retries: ADD then gives every container its lease (the held one if it survived).
    retried = parallel(lambda cid: net.call(hl, "ADD", cid), cids)
    assert all(rc == 0 for _, rc, _ in retried)
    for (out, _, _), cid in zip(retried, cids):
        for ip in addresses(out):
            assert net.leases()[ip.split("/")[0]] == f"{cid}\r\neth0".encode()
    assert len(net.leases()) == 80
    # GC with nothing valid reclaims everything, temporary files included.
    gc = net.conf(version="1.1.0")
    gc["cni.dev/valid-attachments"] = []
    assert net.call(hl, "GC", conf=gc)[1] == 0
    assert net.leases() == {}
    state = net.data_dir / ".pycni-hostlocal" / net.name
    assert [p.name for p in state.iterdir() if p.name.startswith("tmp-")] == []
    assert net.call(hl, "ADD", "after")[1] == 0


def test_kill_after_lease_before_index_is_found_by_del_and_gc(hl: Path, tmp_path: Path) -> None:
    """The states a kill between the steps of ADD can leave, built by hand, all recover."""
    net = Net(tmp_path / "data")
    assert net.call(hl, "ADD", "a")[1] == 0
    assert net.call(hl, "ADD", "b")[1] == 0
    state = net.data_dir / ".pycni-hostlocal" / net.name
    (state / "clean").unlink()  # killed mid-operation: the marker is gone
    for shard in (state / "index").iterdir():  # ... before b's index entry was written
        shard.write_text("".join(line + "\n" for line in shard.read_text().splitlines()
                                 if not line.startswith("b:eth0 ")))
    (net.dir / "10.77.0.9").write_bytes(b"")  # a reference-style O_EXCL create that never got its content
    assert net.call(hl, "ADD", "c")[1] == 0
    assert net.call(hl, "DEL", "b")[1] == 0
    assert sorted(net.leases()) == ["10.77.0.2", "10.77.0.4", "10.77.0.9"]
    gc = net.conf(version="1.1.0")
    gc["cni.dev/valid-attachments"] = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "c", "ifname": "eth0"}]
    assert net.call(hl, "GC", conf=gc)[1] == 0
    assert sorted(net.leases()) == ["10.77.0.2", "10.77.0.4"]


# Kill points inside one dual-stack ADD on a clean store, in syscall order: unlink(clean marker),
# link(v4 lease), rename(last_reserved_ip.0), link(v6 lease), rename(last_reserved_ip.1),
# rename(index shard), unlink(lease temp), rename(clean marker).
KILL_POINTS = ["unlink:when=1", "link:when=1", "rename:when=1", "link:when=2", "rename:when=2",
               "rename:when=3", "unlink:when=2", "rename:when=4"]


@pytest.mark.standalone_only  # strace follows the plugin process itself, not a node server's worker
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to kill at an exact syscall")
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_each_step_of_add_recovers(hl: Path, tmp_path: Path, point: str) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.85.0.0/24"}], [{"subnet": "fd85::/64"}]]})
    other, rc, _ = net.call(hl, "ADD", "other")  # a clean store with a neighbour
    assert rc == 0
    env = plugin_env("ADD", netns=FAKE_NETNS, container_id="victim", cni_path=str(REFERENCE_BIN))
    syscall, when = point.split(":")
    proc = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                           "-e", f"inject={syscall}:signal=KILL:{when}", str(hl)],
                          input=dumps(net.conf()).encode(), env=env, stdout=subprocess.PIPE, timeout=120)
    assert proc.returncode != 0 and proc.stdout == b""  # killed before it could answer
    leases = net.leases()
    assert set(leases.values()) <= {b"other\r\neth0", b"victim\r\neth0"}  # nothing half-written
    # The runtime's retry gets one address per range set, reusing what the killed ADD left.
    retry, rc, err = net.call(hl, "ADD", "victim")
    assert rc == 0, (retry, err)
    mine = sorted(ip for ip, owner in net.leases().items() if owner == b"victim\r\neth0")
    assert mine == sorted(a.split("/")[0] for a in addresses(retry)) and len(mine) == 2
    assert not set(addresses(retry)) & set(addresses(other))
    assert net.call(hl, "DEL", "victim")[1] == 0
    assert set(net.leases().values()) == {b"other\r\neth0"} and len(net.leases()) == 2
    state = net.data_dir / ".pycni-hostlocal" / net.name
    assert [p.name for p in state.iterdir() if p.name.startswith("tmp-")] == []


def _lease_opens(net: Net, hl: Path, command: str, cid: str, trace: Path) -> int:
    """How many lease files one call opens (strace): the cost the reference pays on every release."""
    env = plugin_env(command, netns=FAKE_NETNS if command == "ADD" else "", container_id=cid,
                     cni_path=str(REFERENCE_BIN))
    proc = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=openat,open", str(hl)],
                          input=dumps(net.conf()).encode(), env=env, stdout=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stdout
    prefix = f'"{net.dir}/'
    return sum(1 for line in trace.read_text().splitlines()
               if prefix in line and "/lock" not in line and "last_reserved_ip" not in line)


@pytest.mark.standalone_only  # strace follows the plugin process itself, not a node server's worker
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count opened files")
def test_del_reads_the_index_not_every_lease(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data")
    assert all(rc == 0 for _, rc, _ in parallel(lambda i: net.call(hl, "ADD", f"w{i}"), range(40)))
    trace = tmp_path / "trace"
    assert _lease_opens(net, hl, "DEL", "w7", trace) <= 1  # its own lease, verified before unlink
    assert _lease_opens(net, hl, "DEL", "w7", trace) == 0  # the runtime's second DEL
    assert _lease_opens(net, hl, "ADD", "new", trace) == 0  # not held yet: nothing to read
    # After the reference wrote to the store, the next call walks it once, then is cheap again.
    assert net.call(REFERENCE, "ADD", "ref")[1] == 0
    assert _lease_opens(net, hl, "DEL", "w8", trace) >= 40
    assert _lease_opens(net, hl, "DEL", "ref", trace) <= 1
    assert sorted(net.leases().values()).count(b"ref\r\neth0") == 0
