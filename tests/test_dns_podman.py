"""podman (CNI backend) with reference bridge + pycni-dns: one container resolves another by name and alias."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from dns_helpers import free_subnet, kill_servers, server_pids
from helpers import sh, unique

pytestmark = [pytest.mark.kernel, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")]

RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nproc=1000:1000", "--ulimit", "nofile=1000:1000"]


def test_podman_containers_resolve_by_name(bin_dir, tmp_path: Path):
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox (static) is needed to build the test image")
    network, bridge, subnet = unique("pm"), unique("pmb"), free_subnet()
    gateway = str(subnet.network_address + 1)
    state = tmp_path / "dns"
    (tmp_path / "net").mkdir()
    conflist = {"cniVersion": "1.0.0", "name": network, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]], "dataDir": str(tmp_path / "ipam")}},
        {"type": "pycni-dns", "stateDir": str(state), "upstreams": [], "capabilities": {"aliases": True}}]}
    (tmp_path / "net" / f"{network}.conflist").write_text(json.dumps(conflist))
    (tmp_path / "containers.conf").write_text(
        f'[network]\nnetwork_backend="cni"\ncni_plugin_dirs=["{bin_dir}","/usr/lib/cni"]\n'
        f'network_config_dir="{tmp_path / "net"}"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(tmp_path / "containers.conf")}
    short = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))  # podman wants a runroot under 50 characters
    podman = ["podman", "--root", str(short / "root"), "--runroot", str(short / "run"),
              "--storage-driver", "vfs", "--network-backend", "cni", "--network-config-dir", str(tmp_path / "net"),
              "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(podman + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=120)
        assert not check or proc.returncode == 0, (args, proc.stdout.decode(), proc.stderr.decode())
        return proc

    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "nslookup", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    image = f"localhost/{unique('bb')}:1"
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE, check=True).stdout
    proc = subprocess.run(podman + ["import", "-", image], input=tar, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    bob = unique("bob")
    try:
        run("run", "-d", "--name", bob, "--network", network, "--network-alias", "bobby", *RUN_FLAGS,
            image, "sleep", "300")
        bob_ip = run("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}",
                     bob).stdout.decode().strip()
        out = run("run", "--rm", "--network", network, *RUN_FLAGS, image, "sh", "-c",
                  f"cat /etc/resolv.conf; nslookup {bob}; nslookup bobby.dns.pycni {gateway}").stdout.decode()
        assert f"nameserver {gateway}" in out and "dns.pycni" in out, out
        assert out.count(f"Address: {bob_ip}") == 2, out
        assert len(server_pids(state)) == 1
        run("rm", "-f", "-t", "0", bob)
        assert server_pids(state) == [], "the last container's DEL stops the network's server"
    finally:
        run("rm", "-a", "-f", "-t", "0", check=False)
        run("rmi", "-a", "-f", check=False)
        kill_servers(state)
        sh("ip", "link", "del", bridge, check=False)
        shutil.rmtree(short, ignore_errors=True)
