"""pycni-server and netns paths it cannot see: declined, so the client runs the request itself (issue 19)."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from helpers import exec_plugin, link_exists, plugin_env, sh, start_node_server, stop_process, unique
from pycni.plugins.core.buildinfo import own_code_id
from pycni.plugins.server import wire

# Each test starts its own server (a plain one, or one in a private mount namespace).
pytestmark = pytest.mark.standalone_only


@pytest.fixture
def server(tmp_path: Path):
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path)
    yield path
    stop_process(proc)


def test_a_netns_path_the_server_cannot_open_is_declined(server: Path, tmp_path: Path) -> None:
    """Old code ran the ADD and answered the plugin's "failed to open netns" error."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "PATH": os.environ["PATH"],
           "CNI_NETNS": str(tmp_path / "no-such-netns")}
    stdin = b'{"cniVersion":"1.0.0","name":"n","type":"pycni-bridge","bridge":"x"}'
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server))
        sock.sendall(wire.encode_request("pycni-bridge", own_code_id(), env, stdin))
        assert wire.read_response(sock) == (wire.DECLINED, b"")


def test_netns_hidden_from_the_server_still_gets_its_pod_networked(bin_dir: Path, tmp_path: Path,
                                                                   make_netns) -> None:
    """The issue's node: the server's mounts do not show the runtime's netns (here: a tmpfs over
    /run/netns in the server's own mount namespace); the ADD succeeds in-process, not with an error."""
    wrapper = tmp_path / "hidden-netns-python"
    wrapper.write_text('#!/bin/sh\nexec unshare -m --propagation private sh -c '
                       '\'mount -t tmpfs none /run/netns && exec "$0" "$@"\' ' + sys.executable + ' "$@"\n')
    wrapper.chmod(0o755)
    path = tmp_path / "srv" / "server.sock"
    proc = start_node_server(path, python=str(wrapper))
    pod, bridge = make_netns("hn"), unique("hnb")
    conf = {"cniVersion": "1.0.0", "name": "hidden", "type": "pycni-bridge", "bridge": bridge,
            "ipam": {"type": "pycni-host-local", "subnet": "10.231.7.0/24", "dataDir": str(tmp_path / "ipam")}}
    try:
        env = plugin_env("ADD", f"/run/netns/{pod}", "c1", cni_path=str(bin_dir), extra={"PYCNI_SERVER_SOCKET": str(path)})
        out, rc, err = exec_plugin(bin_dir / "pycni-bridge", env, conf)
        assert rc == 0, (out, err)
        assert out["ips"][0]["address"].startswith("10.231.7.")
        assert link_exists("eth0", pod)
        env = plugin_env("DEL", f"/run/netns/{pod}", "c1", cni_path=str(bin_dir), extra={"PYCNI_SERVER_SOCKET": str(path)})
        assert exec_plugin(bin_dir / "pycni-bridge", env, conf)[1] == 0
    finally:
        stop_process(proc)
        sh("ip", "link", "del", bridge, check=False)
