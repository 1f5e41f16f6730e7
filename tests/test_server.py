"""The node server: same answers as an exec, isolation, fallbacks, hostile input, clean restarts."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import exec_plugin, link_exists, plugin_env, sh, start_node_server, unique
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
def server(tmp_path: Path):
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path)
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


def test_other_builds_are_declined_and_run_in_process(bin_dir: Path, server, tmp_path: Path) -> None:
    path, _ = server
    other = restamped(bin_dir / "pycni-host-local", tmp_path / "pycni-host-local", "x" * 20)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(wire.encode_request("pycni-host-local", "x" * 20, {"CNI_COMMAND": "ADD"}, b""))
        assert wire.read_response(sock) == (wire.DECLINED, b"")
    out, rc, _ = exec_plugin(other, plugin_env("ADD", "/x", "c", extra={"PYCNI_SERVER_SOCKET": str(path)}), b"")
    assert rc == 1 and out["code"] == 6


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
    assert answer in (b"", wire.encode_response(wire.DECLINED, b""))
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


def test_restart_takes_over_the_socket_path(server) -> None:
    path, proc = server
    second = start_node_server(path)
    try:
        assert health(str(path)).startswith("ok served=")
        proc.terminate()
        proc.wait(timeout=30)
        assert path.exists() and health(str(path))  # the old server did not unlink the new one's socket
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
