"""The node server: same answers as an exec, isolation, fallbacks, hostile input, clean restarts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import List

import pytest

from burst_helpers import conflist, run_burst, runner_for
from helpers import alive, exec_plugin, link_exists, plugin_env, sh, start_node_server, unique
from pycni.plugins.server import wire
from pycni.plugins.core.buildinfo import own_code_id
from pycni.plugins.server.node import health
from pycni.plugins.core.samebuild import SameBuildRunner

REQUESTS = [  # (command, stdin) pairs whose answers do not depend on the machine
    ("ADD", b""), ("ADD", b"nope"), ("ADD", b'{"cniVersion":"0.4.0","name":"n"}'),
    ("DEL", b'{"cniVersion":"9.0.0","name":"n","type":"x"}'),
    ("STATUS", b'{"cniVersion":"1.0.0","name":"n","type":"pycni-host-local"}'),
    ("BOGUS", b"{}"),
]


@pytest.fixture
def server(tmp_path: Path, request):
    """A server (indirect parameter: its extra command-line args)."""
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path, *getattr(request, "param", ()))
    yield path, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def restamped(src: Path, dst: Path, code_id: str) -> Path:
    """A copy of a zipapp that claims to be built from other code."""
    import zipfile

    data = src.read_bytes()
    prelude = data[:data.index(b"PK\x03\x04")].replace(own_code_id().encode(), code_id.encode())
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst.with_suffix(".zip"), "w") as new:
        for info in old.infolist():
            body = old.read(info)
            if info.filename == "_pycni_launch.py":
                body = body.replace(own_code_id().encode(), code_id.encode())
            new.writestr(info, body)
    dst.write_bytes(prelude + dst.with_suffix(".zip").read_bytes())
    dst.chmod(0o755)
    return dst


def served(path: Path) -> int:
    status = health(str(path))
    assert status, "server not answering"
    return int(status.split("served=")[1].split()[0])


def call(bin_dir: Path, plugin: str, command: str, stdin: bytes, socket_path: str):
    env = plugin_env(command, "/var/run/netns/none", "ctr1", extra={"PYCNI_SERVER_SOCKET": socket_path})
    return exec_plugin(bin_dir / plugin, env, stdin)


@pytest.mark.parametrize("server", [(), ("--no-handoff",)], indirect=True, ids=["handoff", "socket"])
@pytest.mark.parametrize("command,stdin", REQUESTS)
def test_answers_are_those_of_an_exec(bin_dir: Path, server, command: str, stdin: bytes) -> None:
    path, _ = server
    before = served(path)
    for plugin in ("pycni-bridge", "pycni-host-local"):
        via_server = call(bin_dir, plugin, command, stdin, str(path))
        standalone = call(bin_dir, plugin, command, stdin, "off")
        assert via_server[:2] == standalone[:2]
    assert served(path) - before == 2  # both requests went through the server


def test_socket_dir_and_socket_are_root_only(server) -> None:
    path, _ = server
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_a_socket_in_a_shared_sticky_dir_leaves_that_dir_alone(tmp_path: Path) -> None:
    """--socket /tmp/x.sock once made /tmp 0700 (other users could no longer use /tmp): the server
    makes its own dir root-only, never a shared sticky one."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    proc = start_node_server(shared / "s.sock")
    try:
        assert shared.stat().st_mode & 0o7777 == 0o1777
        assert (shared / "s.sock").stat().st_mode & 0o777 == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("server", [(), ("--no-handoff",)], indirect=True, ids=["handoff", "socket"])
def test_other_builds_are_declined_and_run_in_process(bin_dir: Path, server, tmp_path: Path) -> None:
    path, _ = server
    other = restamped(bin_dir / "pycni-host-local", tmp_path / "pycni-host-local", "x" * 20)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(wire.encode_request("pycni-host-local", "x" * 20, {"CNI_COMMAND": "ADD"}, b""))
        assert wire.read_response(sock) == (wire.DECLINED, b"")
    out, rc, _ = exec_plugin(other, plugin_env("ADD", "/x", "c", extra={"PYCNI_SERVER_SOCKET": str(path)}), b"")
    assert rc == 1 and out["code"] == 6


@pytest.mark.parametrize("server", [(), ("--no-handoff",)], indirect=True, ids=["handoff", "socket"])
def test_clients_in_another_netns_run_in_process(bin_dir: Path, server, make_netns) -> None:
    """A plugin exec'd inside some namespace works on that namespace's host side, as an exec would."""
    path, _ = server
    node, pod = make_netns("sn"), make_netns("sp")
    bridge = unique("sbr")
    conf = {"cniVersion": "1.0.0", "name": "srvnet", "type": "pycni-bridge", "bridge": bridge, "ipam": {}}
    env = plugin_env("ADD", f"/var/run/netns/{pod}", "ctr1", extra={"PYCNI_SERVER_SOCKET": str(path)})
    try:
        proc = subprocess.run(["ip", "netns", "exec", node, str(bin_dir / "pycni-bridge")],
                              input=json.dumps(conf).encode(), env=env, stdout=subprocess.PIPE)
        assert proc.returncode == 0, proc.stdout
        assert link_exists(bridge, node) and not link_exists(bridge)
    finally:
        sh("ip", "link", "del", bridge, check=False)


def test_requests_naming_another_or_no_netns_are_declined(server) -> None:
    """The client names its netns itself: an unprivileged server may not read other processes' /proc."""
    path, _ = server
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]}
    answers = {}
    for netns in (None, "1", ""):  # None: this process's own netns
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(wire.encode_request("pycni-host-local", own_code_id(), env, b"", netns=netns))
            answers[netns] = wire.read_response(sock)[0]
    assert answers == {None: 0, "1": wire.DECLINED, "": wire.DECLINED}


def test_no_listener_behind_the_socket_path_means_in_process(bin_dir: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # bound, never listening: connect is refused
        out, rc, _ = call(bin_dir, "pycni-host-local", "ADD", b"[]", str(stale))
    assert rc == 1 and out["code"] == 6


def test_connection_lost_after_sending_is_try_again_later_and_not_rerun(bin_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "flaky.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    received = []

    def accept_then_drop() -> None:
        conn, _ = listener.accept()
        conn.sendall(wire.ACCEPTED)
        received.append(wire.read_request(conn))
        conn.close()

    thread = threading.Thread(target=accept_then_drop)
    thread.start()
    stdin = b'{"cniVersion":"0.4.0","name":"n","type":"pycni-host-local","ipam":{"subnet":"10.1.0.0/24"}}'
    log = tmp_path / "log"
    env = plugin_env("ADD", "/x", "c1", extra={"PYCNI_SERVER_SOCKET": str(path), "PYCNI_LOG_FILE": str(log)})
    out, rc, _ = exec_plugin(bin_dir / "pycni-host-local", env, stdin)
    thread.join()
    listener.close()
    assert rc == 1 and out == {"cniVersion": "0.4.0", "code": 11, "msg": out["msg"]} and "try again" in out["msg"]
    assert received and received[0][0] == "pycni-host-local" and received[0][3] == stdin
    assert not log.exists()  # the plugin never ran in-process


@pytest.mark.parametrize("payload", [
    b"", b"GET / HTTP/1.0\r\n\r\n", wire.MAGIC + b"\xff" * 10,
    wire.MAGIC + wire.REQUEST_HEADER.pack(10, 2**31, 0),
    wire.MAGIC + wire.REQUEST_HEADER.pack(3, 0, 0) + b"\xff\xfe\xfd",
    wire.MAGIC + wire.REQUEST_HEADER.pack(5, 3, 0) + b"a\0b\0c" + b"x=y",
    wire.encode_request("pycni-nope", own_code_id(), {}, b"{}"),
    os.urandom(4096),
], ids=["empty", "http", "garbage-header", "huge-env", "bad-utf8-meta", "bad-meta", "unknown-plugin", "random"])
def test_hostile_requests_do_not_hurt_the_server(server, payload: bytes) -> None:
    path, proc = server
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""  # dropped with the rest unread
    assert answer in (b"", wire.ACCEPTED, wire.ACCEPTED + wire.encode_response(wire.DECLINED, b""))
    assert proc.poll() is None and health(str(path))


def test_half_sent_request_times_out_without_blocking_others(server) -> None:
    path, _ = server
    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(str(path))
        slow.sendall(wire.MAGIC)  # and never the rest
        start = time.monotonic()
        assert health(str(path))
        assert time.monotonic() - start < 2


def test_same_build_ipam_delegate_runs_in_process(bin_dir: Path, tmp_path: Path) -> None:
    runner = SameBuildRunner(own_code_id())
    assert runner.plugin_of(str(bin_dir / "pycni-host-local")) == "pycni-host-local"
    assert runner.plugin_of("/usr/lib/cni/host-local") is None
    other = restamped(bin_dir / "pycni-host-local", tmp_path / "other", "y" * 20)
    assert runner.plugin_of(str(other)) is None
    env = plugin_env("ADD", "/x", "c1")
    assert runner(str(bin_dir / "pycni-host-local"), env, b"[]") == \
        (subprocess.run([str(bin_dir / "pycni-host-local")], input=b"[]", env=env, stdout=subprocess.PIPE).stdout, 1)


def test_sigterm_drains_then_clients_fall_back(bin_dir: Path, server) -> None:
    path, proc = server
    proc.terminate()
    proc.wait(timeout=30)
    assert not path.exists()
    out, rc, _ = call(bin_dir, "pycni-host-local", "ADD", b"[]", str(path))
    assert rc == 1 and out["code"] == 6


def test_sigterm_serves_requests_queued_behind_busy_workers(bin_dir: Path, tmp_path: Path) -> None:
    """A request waiting in the backlog while every worker is busy is still answered on stop."""
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path, "--max-workers", "1", "--idle-workers", "1")
    try:
        with socket.socket(socket.AF_UNIX) as busy, socket.socket(socket.AF_UNIX) as queued:
            busy.connect(str(path))
            busy.sendall(wire.MAGIC)  # the only worker now waits for the rest of this request
            time.sleep(0.5)
            queued.connect(str(path))  # no worker free: it waits in the backlog
            queued.settimeout(30)
            env = {"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]}
            queued.sendall(wire.encode_request("pycni-host-local", own_code_id(), env, b""))
            queued.shutdown(socket.SHUT_WR)
            proc.terminate()
            time.sleep(0.5)
            busy.close()  # the busy worker gives up on its request and exits
            code, out = wire.read_response(queued)
        assert code == 0 and json.loads(out)["supportedVersions"], out
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_server_on_a_live_socket_refuses_to_start(server) -> None:
    """Two servers on one path would each think they serve the node; the first keeps it."""
    path, proc = server
    inode = path.stat().st_ino
    second = subprocess.Popen([sys.executable, "-m", "pycni.plugins.server.node", "--socket", str(path)],
                              stderr=subprocess.PIPE)
    try:
        _, err = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode != 0 and b"another server listens on" in err
    assert path.stat().st_ino == inode and proc.poll() is None and health(str(path))


def test_a_dead_servers_stale_socket_is_taken_over(server) -> None:
    path, proc = server
    proc.kill()  # no drain: the socket file stays, nobody listens
    proc.wait(timeout=30)
    assert path.exists() and not health(str(path), timeout=1)
    second = start_node_server(path)
    try:
        assert health(str(path)).startswith("ok served=")
    finally:
        second.terminate()
        second.wait(timeout=30)


def test_a_sysctl_root_without_sysctls_stops_the_server_at_start(tmp_path: Path) -> None:
    """A forgotten /proc/sys/net mount must not leave pods quietly without their sysctls."""
    env = dict(os.environ, PYCNI_PROC_SYS=str(tmp_path / "empty"))
    proc = subprocess.run([sys.executable, "-m", "pycni.plugins.server.node", "--socket", str(tmp_path / "s.sock")],
                          env=env, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode != 0 and b"no net sysctls under" in proc.stderr
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("same_build", [True, False], ids=["same-build", "other-build"])
def test_standalone_plugin_runs_a_same_build_ipam_in_process(bin_dir: Path, tmp_path: Path, make_netns,
                                                              same_build: bool) -> None:
    """Without a server too: an IPAM zipapp stamped with our code id runs in the plugin's own
    process (one interpreter start saved); any other is exec'd."""
    cni_bin = tmp_path / "bin"
    cni_bin.mkdir()
    shutil.copy(bin_dir / "pycni-bridge", cni_bin)
    if same_build:
        shutil.copy(bin_dir / "pycni-host-local", cni_bin)
    else:
        restamped(bin_dir / "pycni-host-local", cni_bin / "pycni-host-local", "z" * 20)
    netns, bridge, log = make_netns("sb"), unique("sbb"), tmp_path / "events"
    conf = {"cniVersion": "1.0.0", "name": "sbnet", "type": "pycni-bridge", "bridge": bridge,
            "ipam": {"type": "pycni-host-local", "subnet": "10.229.0.0/24", "dataDir": str(tmp_path / "ipam")}}
    try:
        for command in ("ADD", "DEL"):
            env = plugin_env(command, f"/var/run/netns/{netns}", "c1", cni_path=str(cni_bin),
                             extra={"PYCNI_SERVER_SOCKET": "off", "PYCNI_LOG_FILE": str(log)})
            out, rc, err = exec_plugin(cni_bin / "pycni-bridge", env, conf)
            assert rc == 0, (out, err)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert {r["event"] for r in records} >= {"reserved", "released", "done"}, records
        # in-process: one process per call (ADD, DEL) logs for both plugins; exec'd: two per call
        assert len({r["pid"] for r in records}) == (2 if same_build else 4), records
    finally:
        sh("ip", "link", "del", bridge, check=False)


# -- deadlines (issue 17, item 9) and who may listen (item 10) -----------------------------------

SLOW_IPAM = """#!/bin/sh
echo $$ >> {pids}
exec sleep {seconds}
"""


def slow_ipam_bin(bin_dir: Path, tmp_path: Path, seconds: int) -> Path:
    """A CNI bin dir with pycni-bridge and an IPAM delegate `slow-ipam` that sleeps (recording its pid)."""
    cni_bin = tmp_path / "slowbin"
    cni_bin.mkdir()
    shutil.copy(bin_dir / "pycni-bridge", cni_bin)
    script = cni_bin / "slow-ipam"
    script.write_text(SLOW_IPAM.format(pids=tmp_path / "slow.pids", seconds=seconds))
    script.chmod(0o755)
    return cni_bin


def bridge_with_slow_ipam(cni_bin: Path, netns: str, bridge: str, container_id: str,
                          socket_path: Path) -> subprocess.Popen:
    """Start a bridge ADD through the server whose IPAM delegate is the slow one; stdin already sent."""
    conf = {"cniVersion": "1.0.0", "name": "slownet", "type": "pycni-bridge", "bridge": bridge,
            "ipam": {"type": "slow-ipam"}}
    env = plugin_env("ADD", f"/var/run/netns/{netns}", container_id, cni_path=str(cni_bin),
                     extra={"PYCNI_SERVER_SOCKET": str(socket_path)})
    proc = subprocess.Popen([str(cni_bin / "pycni-bridge")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return proc


def test_a_request_past_the_run_deadline_is_killed_and_answered_try_again(bin_dir: Path, tmp_path: Path,
                                                                          make_netns) -> None:
    """Requests that never end (here: an IPAM delegate that hangs) must not wedge the workers or the
    drain: each is killed with what it exec'd at --run-timeout and its client gets CNI code 11."""
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path, "--max-workers", "2", "--idle-workers", "1", "--run-timeout", "2")
    cni_bin, netns, bridge = slow_ipam_bin(bin_dir, tmp_path, 300), make_netns("sd"), unique("sdb")
    try:
        start = time.monotonic()
        calls = [bridge_with_slow_ipam(cni_bin, netns, bridge, f"c{i}", path) for i in range(3)]
        answers = []
        for call_proc in calls:
            out = call_proc.stdout.read()
            call_proc.wait(timeout=60)
            answers.append((call_proc.returncode, json.loads(out)))
        assert time.monotonic() - start < 30
        assert all(rc == 1 and out["code"] == 11 and "run deadline" in out["msg"] for rc, out in answers), answers
        pids = [int(p) for p in (tmp_path / "slow.pids").read_text().split()]
        assert len(pids) == 3 and not any(alive(p) for p in pids)  # what the workers exec'd is gone too
        assert health(str(path))
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pids_file = tmp_path / "slow.pids"  # when the server failed to kill them, the test must still
        for pid in (pids_file.read_text().split() if pids_file.exists() else []):
            with suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "link", "del", bridge, check=False)


def test_a_request_whose_client_left_is_not_run(bin_dir: Path, tmp_path: Path, make_netns) -> None:
    """A request queued behind a busy worker whose client then gave up must not allocate anything."""
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path, "--max-workers", "1", "--idle-workers", "1")
    cni_bin, netns, bridge = slow_ipam_bin(bin_dir, tmp_path, 3), make_netns("sg"), unique("sgb")
    data_dir = tmp_path / "leases"
    try:
        busy = bridge_with_slow_ipam(cni_bin, netns, bridge, "busy", path)
        time.sleep(1)  # the only worker now waits for the slow delegate
        conf = {"cniVersion": "1.0.0", "name": "gonenet", "type": "pycni-host-local",
                "ipam": {"type": "pycni-host-local", "subnet": "10.231.0.0/24", "dataDir": str(data_dir)}}
        env = plugin_env("ADD", f"/var/run/netns/{netns}", "gone", cni_path=str(cni_bin))
        with socket.socket(socket.AF_UNIX) as gone:
            gone.connect(str(path))
            gone.sendall(wire.encode_request("pycni-host-local", own_code_id(), env, json.dumps(conf).encode()))
            time.sleep(0.5)
        busy.stdout.read()
        busy.wait(timeout=60)
        time.sleep(2)  # a worker that ran it would have written its lease by now
        assert health(str(path))
        assert not data_dir.exists() or not [p for p in data_dir.rglob("*") if p.name.startswith("10.")]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        sh("ip", "link", "del", bridge, check=False)


def test_idle_and_trickling_connections_never_starve_requests(bin_dir: Path, tmp_path: Path) -> None:
    """Slowloris: ten times more silent or byte-every-half-second connections than workers; requests
    still go through, and each such connection is dropped at the total read deadline."""
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path, "--max-workers", "4", "--read-timeout", "3")
    stop = threading.Event()
    payload = wire.encode_request("pycni-host-local", own_code_id(), {}, b"")
    try:
        with ExitStack() as stack:
            conns = [stack.enter_context(socket.socket(socket.AF_UNIX)) for _ in range(40)]
            for conn in conns:
                conn.connect(str(path))

            def trickle() -> None:
                for i in range(len(payload)):
                    for conn in conns[::2]:
                        with suppress(OSError):
                            conn.send(payload[i:i + 1])
                    if stop.wait(0.5):
                        return

            thread = threading.Thread(target=trickle, daemon=True)
            thread.start()
            time.sleep(1)
            start = time.monotonic()
            assert health(str(path), timeout=3), "health starved"
            out, rc, _ = call(bin_dir, "pycni-host-local", "VERSION", b'{"cniVersion":"1.0.0"}', str(path))
            assert rc == 0 and "supportedVersions" in out and time.monotonic() - start < 10
            for conn in conns:  # each dropped at the read deadline, trickling or not
                conn.settimeout(15)
                assert conn.recv(100) in (b"", wire.ACCEPTED)
                assert conn.recv(100) == b""
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=30)


def test_client_runs_in_process_when_no_server_accepts_in_time(bin_dir: Path, tmp_path: Path) -> None:
    """A listener that never accepts (a hung server): connect() lands in the backlog; the client
    sends nothing and runs the request itself at the accept deadline."""
    path = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(8)
        start = time.monotonic()
        env = plugin_env("ADD", "/x", "c1",
                         extra={"PYCNI_SERVER_SOCKET": str(path), "PYCNI_SERVER_ACCEPT_TIMEOUT": "1"})
        out, rc, _ = exec_plugin(bin_dir / "pycni-host-local", env, b"[]", timeout=30)
        assert rc == 1 and out["code"] == 6  # the in-process answer
        assert time.monotonic() - start < 15
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(100) == b""  # nothing was sent to it


def test_client_answers_try_again_when_the_server_does_not_answer_in_time(bin_dir: Path, tmp_path: Path) -> None:
    """Once sent, a request is never run in-process (it may run there): no answer in time is code 11."""
    path = tmp_path / "mute.sock"
    got: List[tuple] = []
    done = threading.Event()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(8)

        def accept_and_keep_quiet() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(wire.ACCEPTED)
                got.append(wire.read_request(conn))
                done.wait(60)  # never answer while the client waits

        thread = threading.Thread(target=accept_and_keep_quiet, daemon=True)
        thread.start()
        log = tmp_path / "log"
        env = plugin_env("ADD", "/x", "c1", extra={"PYCNI_SERVER_SOCKET": str(path), "PYCNI_SERVER_TIMEOUT": "1",
                                                   "PYCNI_LOG_FILE": str(log)})
        stdin = b'{"cniVersion":"0.4.0","name":"n","type":"pycni-host-local","ipam":{"subnet":"10.1.0.0/24"}}'
        try:
            out, rc, _ = exec_plugin(bin_dir / "pycni-host-local", env, stdin, timeout=20)
        finally:
            done.set()
            thread.join(timeout=30)
    assert rc == 1 and out["code"] == 11 and out["cniVersion"] == "0.4.0"
    assert got and got[0][3] == stdin and not log.exists()


LISTENER_AS_NOBODY = r"""
import socket, sys
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(8)
print("ready", flush=True)
conn, _ = listener.accept()
conn.settimeout(20)
data = b""
try:
    conn.sendall(b"\x06")
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError:
    pass
print(len(data), flush=True)
"""


def test_client_sends_nothing_to_a_listener_that_is_not_root(bin_dir: Path) -> None:
    """Env and config go only to a root (or same-user) listener; anyone else's gets nothing and the
    request runs in-process."""
    directory = tempfile.mkdtemp(prefix="pycni-nobody-", dir="/tmp")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "s.sock")
    listener = subprocess.Popen([sys.executable, "-c", LISTENER_AS_NOBODY, path], user=65534, group=65534,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        env = plugin_env("ADD", "/x", "c1", extra={"PYCNI_SERVER_SOCKET": path})
        out, rc, err = exec_plugin(bin_dir / "pycni-host-local", env, b"[]", timeout=30)
        assert rc == 1 and out["code"] == 6 and "not served by root" in err
        received, _ = listener.communicate(timeout=30)
        assert received.strip() == "0"
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
        shutil.rmtree(directory, ignore_errors=True)


# -- bursts (issue 21): correctness under the benchmark's load, not timed ------------------------

@pytest.mark.parametrize("via_server,masq,subnet", [(True, False, "10.247.1.0/24"), (True, True, "10.247.2.0/24"),
                                                    (False, False, "10.247.3.0/24")],
                         ids=["server", "server-masq", "standalone"])
def test_a_burst_of_pods_gets_distinct_addresses_and_leaves_nothing(bin_dir: Path, tmp_path: Path, server,
                                                                     via_server: bool, masq: bool, subnet: str) -> None:
    """50 pods at once, each its own new netns, bridge + host-local ADD then DEL (as bench/burst.py):
    every call succeeds, no address is handed out twice, no lease, veth or masquerade rule is left."""
    path, _ = server
    bridge, prefix, data_dir = unique("bpb"), unique("bp"), str(tmp_path / "ipam")
    # a subnet per case: cases run in parallel, and pycni-bridge refuses a gateway another bridge holds
    net = conflist(False, bridge, subnet, data_dir, masq)
    runner = runner_for([str(bin_dir)], str(tmp_path / "cache"), str(path) if via_server else None)
    before = served(path)
    try:
        burst = run_burst(runner, net, bridge, data_dir, 50, prefix)
    finally:
        sh("ip", "link", "del", bridge, check=False)
    assert burst.clean and len(burst.add_latencies) == 50, (burst.failures, burst.duplicates, burst.leftovers)
    assert served(path) - before == (100 if via_server else 0)  # each ADD and DEL (IPAM runs inside), or none


def test_client_waits_out_a_full_backlog(bin_dir: Path, tmp_path: Path) -> None:
    """In a burst the server's backlog can be full for a moment: connect() with a timeout fails at
    once there (EAGAIN); the client must wait for the server (up to its accept deadline), not run
    the request in-process."""
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX) as listener, ExitStack() as stack:
        listener.bind(str(path))
        listener.listen(0)
        fillers = 0
        while True:  # fill the backlog
            filler = stack.enter_context(socket.socket(socket.AF_UNIX))
            filler.setblocking(False)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                break
            fillers += 1

        def serve_after_a_while() -> None:
            time.sleep(1)
            for _ in range(fillers):
                listener.accept()[0].close()  # queued first
            conn, _ = listener.accept()
            with conn:
                conn.sendall(wire.ACCEPTED)
                wire.read_request(conn)
                conn.sendall(wire.encode_response(0, b'{"served": true}\n'))

        thread = threading.Thread(target=serve_after_a_while, daemon=True)
        thread.start()
        env = plugin_env("ADD", "/x", "c1", extra={"PYCNI_SERVER_SOCKET": str(path)})
        out, rc, _ = exec_plugin(bin_dir / "pycni-host-local", env, b"[]", timeout=30)
        thread.join(timeout=30)
    assert rc == 0 and out == {"served": True}
