"""podman (CNI backend) with reference bridge + pycni-dns: one container resolves another by name and alias."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dns_helpers import free_subnet, kill_servers, server_pids
from helpers import REFERENCE_BIN, sh, unique
from podman_helpers import Podman

pytestmark = [pytest.mark.kernel, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")]


def test_podman_containers_resolve_by_name(bin_dir, tmp_path: Path):
    network, bridge, subnet = unique("pm"), unique("pmb"), free_subnet()
    gateway = str(subnet.network_address + 1)
    state = tmp_path / "dns"
    podman = Podman(tmp_path, [bin_dir, REFERENCE_BIN], tmp_path / "net")
    conflist = {"cniVersion": "1.0.0", "name": network, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]], "dataDir": str(tmp_path / "ipam")}},
        {"type": "pycni-dns", "stateDir": str(state), "upstreams": [], "capabilities": {"aliases": True}}]}
    (podman.network_dir / f"{network}.conflist").write_text(json.dumps(conflist))
    bob = unique("bob")
    try:
        image = podman.import_busybox()
        podman.run("-d", "--name", bob, "--network", network, "--network-alias", "bobby", image, "sleep", "300")
        bob_ip = podman.ip_of(bob, network)
        out = podman.run("--rm", "--network", network, image, "sh", "-c",
                         f"cat /etc/resolv.conf; nslookup {bob}; nslookup bobby.dns.pycni {gateway}").stdout.decode()
        assert f"nameserver {gateway}" in out and "dns.pycni" in out, out
        assert out.count(f"Address: {bob_ip}") == 2, out
        assert len(server_pids(state)) == 1
        podman("rm", "-f", "-t", "0", bob)
        assert server_pids(state) == [], "the last container's DEL stops the network's server"
    finally:
        podman.cleanup()
        kill_servers(state)
        sh("ip", "link", "del", bridge, check=False)
