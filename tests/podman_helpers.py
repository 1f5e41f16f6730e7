"""A throwaway podman (CNI backend) for tests: its own storage, plugin dirs and network config dir.

podman 4.3 on this VM needs runc and low ulimits (crun and higher limits fail here);
no registry is reachable, so the image is a busybox-static rootfs made with `podman import`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional

RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nproc=1000:1000", "--ulimit", "nofile=1000:1000"]
APPLETS = ("sh", "sleep", "nslookup", "cat", "ping", "ip", "true", "hostname")


class Podman:
    def __init__(self, workdir: Path, plugin_dirs: Iterable[Path], network_dir: Path) -> None:
        self.workdir = workdir
        self.network_dir = network_dir
        network_dir.mkdir(parents=True, exist_ok=True)
        dirs = ", ".join(f'"{d}"' for d in plugin_dirs)
        conf = workdir / "containers.conf"
        conf.write_text(f'[network]\nnetwork_backend="cni"\ncni_plugin_dirs=[{dirs}]\n'
                        f'network_config_dir="{network_dir}"\n[engine]\nruntime="runc"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.short = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))  # podman wants a short runroot
        self.base = ["podman", "--root", str(self.short / "root"), "--runroot", str(self.short / "run"),
                     "--storage-driver", "vfs", "--network-backend", "cni", "--network-config-dir",
                     str(network_dir), "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        self.image = ""

    def __call__(self, *args: str, check: bool = True, input: Optional[bytes] = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.base + list(args), env=self.env, input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
        assert not check or proc.returncode == 0, (args, proc.stdout.decode(), proc.stderr.decode())
        return proc

    def import_busybox(self, name: str = "localhost/pycni-busybox:1") -> str:
        busybox = shutil.which("busybox")
        assert busybox, "busybox (static) is needed to build the test image"
        rootfs = self.workdir / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "etc").mkdir()
        shutil.copy(busybox, rootfs / "bin" / "busybox")
        for applet in APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE, check=True).stdout
        self("import", "-", name, input=tar)
        self.image = name
        return name

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`podman run` with the flags this VM needs; args are podman-run options, image and command."""
        return self("run", *RUN_FLAGS, *args, check=check)

    def ip_of(self, container: str, network: str) -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        return self("inspect", "-f", fmt, container).stdout.decode().strip()

    def containers(self) -> List[str]:
        return self("ps", "-a", "-q").stdout.decode().split()

    def cleanup(self) -> None:
        self("rm", "-a", "-f", "-t", "0", check=False)
        self("rmi", "-a", "-f", check=False)
        shutil.rmtree(self.short, ignore_errors=True)
