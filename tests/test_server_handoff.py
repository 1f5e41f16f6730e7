"""The sh handoff (issue 21): a zipapp hands its request to pycni-server from its sh prelude,
with no Python start (zipapp/prelude.sh, plugins/server/handoff.py).

Real servers and real execs of the built zipapps. What is checked is the protocol's promises:
a request the server did not take runs in-process exactly once; one it took never runs
in-process; a killed client or server leaves no file, no sleep and no lease behind; the
environment and stdin reach the plugin byte for byte; anything but pipes runs in-process.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from helpers import alive, exec_plugin, start_node_server, stat_fields, unique, wait_until
from pycni.plugins.server.handoff import SUFFIX, handoff_supported
from server_helpers import host_local, host_local_conf, host_local_env, status

pytestmark = pytest.mark.skipif(not handoff_supported(), reason="no pidfd_open in this Python")

SUBNET = "10.234.0.0/24"
# A watchdog time no other test uses, to find the sleeps of this module's clients.
MARK = "7.25"


def spool(path: Path) -> Path:
    return Path(str(path) + SUFFIX)


def spool_files(path: Path) -> List[str]:
    """What the spool holds beside its FIFO and server file: answer files of clients."""
    return sorted(set(os.listdir(spool(path))) - {"requests", "server"})


def server_pid(path: Path) -> int:
    return int((spool(path) / "server").read_text().split()[0])


def workers_of(pid: int) -> List[int]:
    found = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and stat_fields(entry.name)[1] == str(pid):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def start_time(pid: int) -> str:
    return stat_fields(pid)[19]


def watchdogs() -> List[int]:
    """Live `sleep MARK` processes: watchdogs of this module's clients."""
    found = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and open(f"/proc/{entry.name}/cmdline", "rb").read() == b"sleep\0" + MARK.encode() + b"\0":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def leases(data_dir: Path) -> Dict[str, str]:
    """host-local's leases: address file name -> the container id in it."""
    store = data_dir / "reuse"
    return {p.name: p.read_text().split()[0] for p in store.iterdir()
            if p.is_file() and p.name[0].isdigit()} if store.is_dir() else {}


@contextmanager
def store_locked(data_dir: Path) -> Iterator[None]:
    """Hold host-local's store lock: a request through the server then waits in its worker."""
    with open(data_dir / "reuse" / "lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def spawn(bin_dir: Path, env: Dict[str, str], stdin: bytes) -> subprocess.Popen:
    proc = subprocess.Popen([str(bin_dir / "pycni-host-local")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    proc.stdin = None  # written: communicate() only reads
    return proc


def finish(proc: subprocess.Popen, timeout: float = 60) -> Tuple[dict, int, float]:
    """(stdout parsed, exit code, seconds it took from now)."""
    started = time.monotonic()
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out) if out.strip() else None, proc.returncode, time.monotonic() - started


@pytest.fixture
def setup(bin_dir: Path, tmp_path: Path, start_server, make_netns):
    """A server, a netns, host-local's store made by a first ADD (its lock file exists then)."""
    def make(*args: str):
        path = start_server(*args)
        netns = make_netns()
        call = host_local(bin_dir, path, netns, tmp_path / "ipam", SUBNET)
        assert call("ADD", "first")[1] == 0
        # Its worker says READY after the answer: "busy" counts only what a test starts from here on.
        wait_until(lambda: status(path)["busy"] == 0, what="the first request's worker idle again")
        return path, netns, call

    return make


def test_requests_are_handed_over_and_the_spool_is_left_clean(setup) -> None:
    path, _, call = setup()
    before = status(path)
    results = [call("ADD", f"h{i}") for i in range(5)] + [call("DEL", f"h{i}") for i in range(5)]
    assert [rc for _, rc in results] == [0] * 10
    assert len({out["ips"][0]["address"] for out, _ in results[:5]}) == 5
    after = status(path)
    assert after["handed"] - before["handed"] == 10  # none of them came over the socket
    assert after["served"] - before["served"] == 10
    wait_until(lambda: spool_files(path) == [], what="answer files removed as their clients exit")


def test_a_request_the_server_did_not_take_runs_in_process_once(bin_dir: Path, tmp_path: Path, setup) -> None:
    """A stopped server never takes the request: at the accept deadline the client takes it back
    (creates the answer file first) and runs it itself; the server, resumed, leaves it alone."""
    path, netns, _ = setup()
    before = status(path)
    server = server_pid(path)
    os.kill(server, signal.SIGSTOP)
    try:
        env = host_local_env(path, netns, "ADD", "late", PYCNI_SERVER_ACCEPT_TIMEOUT="0.5")
        out, rc, _ = exec_plugin(bin_dir / "pycni-host-local", env, host_local_conf(tmp_path / "ipam", SUBNET))
    finally:
        os.kill(server, signal.SIGCONT)
    assert rc == 0, out
    assert list(leases(tmp_path / "ipam").values()).count("late") == 1
    wait_until(lambda: spool_files(path) == [], what="the server removes the file of a request taken back")
    after = status(path)
    assert after["handed"] == before["handed"]  # it did not run it a second time
    assert list(leases(tmp_path / "ipam").values()).count("late") == 1


@pytest.mark.parametrize("restart", [False, True], ids=["server-gone", "server-restarted"])
def test_a_taken_request_is_never_run_in_process(bin_dir: Path, tmp_path: Path, setup, restart: bool) -> None:
    """The server took the request, then died with it: at its accept deadline the client finds the
    request taken and that server gone, and says code 11 (it may have run) at once, well before its
    60 s answer deadline; it never runs the request itself. The dead server's file goes with the
    next server: at its start, or in its sweep once the client exited."""
    path, netns, _ = setup()
    env = host_local_env(path, netns, "ADD", "orphan", PYCNI_SERVER_ACCEPT_TIMEOUT="1", PYCNI_SERVER_TIMEOUT="60")
    with store_locked(tmp_path / "ipam"):
        client = spawn(bin_dir, env, host_local_conf(tmp_path / "ipam", SUBNET))
        wait_until(lambda: status(path)["busy"] == 1, what="the request running in a worker")
        server = server_pid(path)
        for pid in workers_of(server) + [server]:
            os.kill(pid, signal.SIGKILL)
        successor = start_node_server(path) if restart else None  # on the dead server's path
        out, rc, took = finish(client)
    assert (rc, out["code"]) == (1, 11), out
    assert took < 30
    assert "orphan" not in leases(tmp_path / "ipam").values()  # killed in the worker, never run in-process
    if successor is None:
        assert len(spool_files(path)) == 1  # the dead server's take of the request
        successor = start_node_server(path)
    wait_until(lambda: spool_files(path) == [], what="the answer file removed")
    successor.terminate()
    successor.wait(timeout=30)


def test_a_new_server_answers_the_wait_line_of_a_request_it_does_not_know(setup) -> None:
    """A client whose request a previous server took, and that saw a live server when it looked,
    waits on a second watchdog: the server it finds answers that `wait` line at once (kills the
    watchdog), and removes the answer file when the client exits."""
    path, _, _ = setup()
    client = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE)
    try:
        assert client.stdout is not None
        watchdog = int(client.stdout.readline())
        start = start_time(client.pid)
        (spool(path) / f"{client.pid}.{start}").touch()  # what the previous server's take left
        with open(spool(path) / "requests", "w") as fifo:
            fifo.write(f"{client.pid} {start} {watchdog} wait\n")
        assert client.wait(timeout=20) == 0  # its watchdog killed: `wait` returned
    finally:
        client.kill()
        client.wait()
    wait_until(lambda: spool_files(path) == [], what="the answer file removed as the client exits")


def test_a_client_killed_while_queued_leaves_nothing(bin_dir: Path, tmp_path: Path, setup) -> None:
    """A runtime kills a plugin whose request waits for a worker: the request is dropped (no lease),
    its answer file removed and its watchdog sleep killed."""
    path, netns, _ = setup("--max-workers", "1")
    conf = host_local_conf(tmp_path / "ipam", SUBNET)
    with store_locked(tmp_path / "ipam"):
        first = spawn(bin_dir, host_local_env(path, netns, "ADD", "running"), conf)
        wait_until(lambda: status(path)["busy"] == 1, what="the first request in the only worker")
        queued = spawn(bin_dir, host_local_env(path, netns, "ADD", "killed", PYCNI_SERVER_ACCEPT_TIMEOUT=MARK), conf)
        wait_until(lambda: status(path)["queued"] == 1, what="the second request queued")
        assert len(watchdogs()) == 1
        queued.kill()
        queued.wait()
        wait_until(lambda: spool_files(path) == [f for f in spool_files(path) if not f.startswith(f"{queued.pid}.")],
                   what="the killed client's answer file removed")
        wait_until(lambda: watchdogs() == [], what="the killed client's watchdog killed")
    out, rc, _ = finish(first)
    assert rc == 0, out
    wait_until(lambda: status(path)["busy"] == 0 and status(path)["queued"] == 0)
    assert sorted(leases(tmp_path / "ipam").values()) == ["first", "running"]
    wait_until(lambda: spool_files(path) == [], what="nothing left in the spool")


HOSTILE = [
    {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=$(touch /tmp/pwned);X=`id`;Y='\"\\"},
    {"CNI_ARGS": "K8S_POD_NAMESPACE=ns\nCNI_COMMAND=DEL", "CNI_IFNAME": "eth0"},
    {"CNI_IFNAME": "e'$(id)\"", "CNI_ARGS": "A=\u00e9\u2603"},
    {"CNI_CONTAINERID": "a b;c", "CNI_PATH": "/nonexistent:$(id)"},
]


@pytest.mark.parametrize("extra", HOSTILE, ids=["shell", "newline", "ifname", "containerid"])
def test_the_environment_reaches_the_plugin_byte_for_byte(bin_dir: Path, tmp_path: Path, setup,
                                                           extra: Dict[str, str]) -> None:
    """Hostile values pass through /proc/<pid>/environ as they are: the answer is the in-process one."""
    path, netns, _ = setup()
    conf = host_local_conf(tmp_path / "ipam", SUBNET)
    answers = []
    for socket_path in (str(path), "off"):
        env = dict(host_local_env(path, netns, "DEL", "hostile"), PYCNI_SERVER_SOCKET=socket_path, **extra)
        before = status(path)["handed"]
        out, rc, _ = exec_plugin(bin_dir / "pycni-host-local", env, conf)
        answers.append((out, rc))
        assert status(path)["handed"] - before == (1 if socket_path != "off" else 0)
    assert answers[0] == answers[1]
    assert not Path("/tmp/pwned").exists()


def test_non_utf8_environment_and_a_large_stdin(bin_dir: Path, tmp_path: Path, setup) -> None:
    path, netns, _ = setup()
    conf = json.loads(host_local_conf(tmp_path / "ipam", SUBNET))
    conf["padding"] = "x" * 300_000  # beyond a pipe's buffer: read as the runtime writes it
    answers = []
    for socket_path in (str(path), "off"):
        env = {k.encode(): v.encode() for k, v in host_local_env(path, netns, "ADD", "bytes").items()}
        env[b"PYCNI_SERVER_SOCKET"] = socket_path.encode()
        env[b"CNI_ARGS"] = b"K8S_POD_NAME=\xff\xfe"
        proc = subprocess.run([str(bin_dir / "pycni-host-local")], env=env, input=json.dumps(conf).encode(),
                              capture_output=True, timeout=60)
        answers.append((json.loads(proc.stdout), proc.returncode))
    assert answers[0][1] == 0 and answers[1][1] == 0
    assert answers[0] == answers[1]  # the same lease: the second ADD of the same container is idempotent


def test_files_and_terminals_are_not_handed_over(bin_dir: Path, tmp_path: Path, setup) -> None:
    """stdin from a file or stdout to a file: the server declines before touching either, and the
    client runs the request in-process, where it reads and writes them as they are."""
    path, netns, _ = setup()
    (tmp_path / "conf.json").write_bytes(host_local_conf(tmp_path / "ipam", SUBNET))
    env = host_local_env(path, netns, "ADD", "files")
    before = status(path)
    with open(tmp_path / "conf.json", "rb") as stdin, open(tmp_path / "out.json", "wb") as stdout:
        rc = subprocess.run([str(bin_dir / "pycni-host-local")], env=env, stdin=stdin, stdout=stdout,
                            timeout=60).returncode
    assert rc == 0
    assert json.loads((tmp_path / "out.json").read_bytes())["ips"][0]["address"].startswith("10.234.0.")
    after = status(path)
    assert (after["served"] - before["served"], after["handed"] - before["handed"]) == (1, 0)  # declined
    assert after["queued"] == after["busy"] == 0
    wait_until(lambda: spool_files(path) == [])


def test_a_spool_not_ours_or_a_dead_servers_is_passed_by(bin_dir: Path, tmp_path: Path, setup) -> None:
    """The client checks the spool's owner and that the server in it runs; otherwise the Python
    client goes over the socket, at once."""
    path, _, call = setup()
    (spool(path) / "server").rename(spool(path) / "server.real")
    try:
        (spool(path) / "server").write_text("1 12345\n")  # pid 1, but not its start time
        before = status(path)
        assert call("DEL", "x")[1] == 0
        after = status(path)
        assert (after["served"] - before["served"], after["handed"] - before["handed"]) == (1, 0)
        (spool(path) / "server.real").rename(spool(path) / "server")
        os.chown(spool(path), 65534, 65534)
        before = status(path)
        assert call("DEL", "x")[1] == 0
        after = status(path)
        assert (after["served"] - before["served"], after["handed"] - before["handed"]) == (1, 0)
    finally:
        os.chown(spool(path), 0, 0)
        if (spool(path) / "server.real").exists():
            (spool(path) / "server.real").rename(spool(path) / "server")
    before = status(path)
    assert call("DEL", "x")[1] == 0
    assert status(path)["handed"] - before["handed"] == 1


def test_files_of_gone_clients_are_swept_while_live_ones_stay(setup) -> None:
    """A running server removes answer files nobody will remove (a previous server's takes whose
    clients are gone) every few seconds, and never the file of a live process."""
    path, _, _ = setup()
    live = subprocess.Popen(["sleep", "60"])
    try:
        live_name = f"{live.pid}.{start_time(live.pid)}"
        for name in ("4194303.1", live_name):
            (spool(path) / name).touch()
        wait_until(lambda: spool_files(path) == [live_name], timeout=20, what="the gone client's file swept")
    finally:
        live.kill()
        live.wait()
    wait_until(lambda: spool_files(path) == [], timeout=20, what="the file swept once its process is gone")


def test_lines_naming_other_processes_are_ignored(tmp_path: Path, setup) -> None:
    """A line for another user's process, or with a start time that is not the process's, is
    not taken: no answer file, nothing signalled."""
    path, _, call = setup()
    victim = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                               "sleep", "60"])
    mine = subprocess.Popen(["sleep", "60"])
    try:
        wait_until(lambda: open(f"/proc/{victim.pid}/cmdline", "rb").read().startswith(b"sleep\0"),
                   what="setpriv's exec of sleep, as nobody")
        start, own_start = start_time(victim.pid), start_time(mine.pid)
        before = status(path)
        with open(spool(path) / "requests", "w") as fifo:
            fifo.write(f"{victim.pid} {start} {victim.pid} pycni-host-local x\n")
            fifo.write(f"{mine.pid} {int(own_start) + 1} {mine.pid} pycni-host-local x\n")
            fifo.write(f"{mine.pid} {own_start} {'9' * 20} pycni-host-local x\n")  # no such pid
            fifo.write(f"{'9' * 20} {own_start} {mine.pid} wait\n")
            fifo.write("garbage\n" + "9" * 4000 + "\n" + "\xff\xfe 1 2 3\n")
        assert call("DEL", "after")[1] == 0  # handed over after those lines: the server read them first
        assert status(path)["handed"] == before["handed"] + 1
        wait_until(lambda: spool_files(path) == [], what="only that request's file, gone as it exits")
        assert alive(victim.pid) and alive(mine.pid)
    finally:
        for proc in (victim, mine):
            proc.kill()
            proc.wait()


def test_a_stopping_server_finishes_what_it_took_and_withdraws_the_spool(bin_dir: Path, tmp_path: Path,
                                                                        setup) -> None:
    path, netns, _ = setup()
    with store_locked(tmp_path / "ipam"):
        client = spawn(bin_dir, host_local_env(path, netns, "ADD", "drained"), host_local_conf(tmp_path / "ipam", SUBNET))
        wait_until(lambda: status(path)["busy"] == 1, what="the request running")
        server = server_pid(path)
        os.kill(server, signal.SIGTERM)
        wait_until(lambda: not (spool(path) / "server").exists() and not (spool(path) / "requests").exists(),
                   what="new clients pass the spool by")
    out, rc, _ = finish(client)
    assert rc == 0 and out["ips"], out
    wait_until(lambda: not alive(server), what="the server exits once drained")


@pytest.fixture
def server_under(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start servers whose Python runs under a wrapper command (what a runtime imposes: capabilities, limits)."""
    procs: List[subprocess.Popen] = []

    def start(*wrapper: str) -> Path:
        script = tmp_path / unique("python-under")
        script.write_text(f'#!/bin/sh\nexec {" ".join(map(shlex.quote, wrapper))} {sys.executable} "$@"\n')
        script.chmod(0o755)
        path = tmp_path / unique("srv") / "server.sock"
        procs.append(start_node_server(path, python=str(script)))
        return path

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("ptrace", [True, False], ids=["chart-caps", "without-SYS_PTRACE"])
def test_the_charts_capabilities_suffice(bin_dir: Path, tmp_path: Path, make_netns, server_under,
                                         ptrace: bool) -> None:
    """The chart's unprivileged server has NET_ADMIN, SYS_ADMIN, NET_BIND_SERVICE and SYS_PTRACE,
    which reading a root client's /proc/<pid>/environ and fds takes (its capabilities are more
    than the server's). Without SYS_PTRACE the server declines and the client runs in-process."""
    caps = "-all,+net_admin,+sys_admin,+net_bind_service" + (",+sys_ptrace" if ptrace else "")
    path = server_under("setpriv", "--bounding-set", caps)
    call = host_local(bin_dir, path, make_netns(), tmp_path / "ipam", SUBNET)
    before = status(path)
    out, rc = call("ADD", "caps")
    assert rc == 0 and out["ips"], out
    after = status(path)
    assert (after["served"] - before["served"], after["handed"] - before["handed"]) == (1, 1 if ptrace else 0)
    # Without it the server withdraws the spool: the next request comes over the socket.
    assert (spool(path) / "server").exists() is ptrace
    assert call("DEL", "caps")[1] == 0
    assert status(path)["served"] - after["served"] == 1


def test_the_server_raises_its_soft_descriptor_limit(server_under) -> None:
    """A burst holds a few descriptors per request in flight; a runtime may start the container
    with a soft limit of 1024: the server lifts it to the hard limit."""
    path = server_under("prlimit", "--nofile=1024:8192")
    limits = Path(f"/proc/{server_pid(path)}/limits").read_text().splitlines()
    assert [line.split()[3:5] for line in limits if line.startswith("Max open files")] == [["8192", "8192"]]
