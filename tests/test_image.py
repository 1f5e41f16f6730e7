"""The installer image: built with podman from images/Containerfile and run against temp host dirs.

No registry is reachable here, so the base image is made locally by tools/make-base-image.sh
(debootstrap of a minimal Debian with python3, `podman import`ed; kept in podman's store, so
only the first run pays for it). The container runs with the security settings of the chart's
DaemonSet (read from charts/pycni.yaml), and the binaries it installs are exec'd by the host's
/usr/bin/python3 as a node's runtime would.
"""
from __future__ import annotations

import fcntl
import http.client
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import yaml

from helpers import ROOT, exec_plugin, plugin_env, unique

# Packaging does not change with the node server: run once, not again in the with-server pass.
pytestmark = [pytest.mark.slow, pytest.mark.standalone_only]

BASE_IMAGE = "localhost/pycni-base:bookworm"
IMAGE = "localhost/pycni-installer:test"
BUILD_CACHE = "localhost/pycni-installer:build-cache"
PODMAN = ["podman", "--runtime", "runc"]
RUN = PODMAN + ["run", "--rm", "--ulimit", "nproc=1000:1000", "--ulimit", "nofile=1000:1000"]
ZIPAPPS = ["pycni-bridge", "pycni-dns", "pycni-host-local", "pycni-macvlan"]
# pytest-xdist workers building at once take turns on a lock on the Containerfile itself.
LOCK = ROOT / "images" / "Containerfile"

CONFLIST = """\
cniVersion: 1.0.0
name: pycni
plugins:
  - type: pycni-bridge
    bridge: cni0
    isGateway: true
    ipMasq: true
    mtu: __MTU__
    ipam:
      type: pycni-host-local
      ranges: [[{subnet: 10.99.0.0/24}]]
  - type: pycni-dns
"""


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(PODMAN + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def _image_id(ref: str) -> str:
    proc = podman("image", "inspect", "--format", "{{.Id}}", ref, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def build_image() -> None:
    """Build IMAGE (and tag its build stage, so its dependency layer stays cached), then drop the
    images these tags pointed at before, with their now unused layers."""
    before = {tag: _image_id(tag) for tag in (IMAGE, BUILD_CACHE)}
    common = ["build", "--network", "host", "-f", str(ROOT / "images" / "Containerfile"),
              "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    for extra in (["-t", IMAGE], ["--target", "build", "-t", BUILD_CACHE]):
        proc = podman(*common, *extra, str(ROOT))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for tag, old in before.items():
        if old and old != _image_id(tag):
            podman("rmi", old, timeout=120)  # fails harmlessly while a container still uses it


@pytest.fixture(scope="session")
def image() -> str:
    """The installer image, built from this tree (layers cached by podman between runs)."""
    # (tools/make-base-image.sh installs debootstrap itself when it is missing)
    assert subprocess.run(["which", "podman", "runc"], stdout=subprocess.DEVNULL).returncode == 0, (
        "podman and runc are needed (apt-get install podman runc)")
    with LOCK.open() as lock:  # pytest-xdist workers: build one at a time (the second is cached)
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = subprocess.run(["bash", str(ROOT / "tools" / "make-base-image.sh"), BASE_IMAGE],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
        assert base.returncode == 0, base.stdout
        build_image()
    return IMAGE


@pytest.fixture(scope="module")
def chart_security_flags() -> List[str]:
    """podman run flags equal to the container securityContext in charts/pycni.yaml."""
    docs = [d for d in yaml.safe_load_all((ROOT / "charts" / "pycni.yaml").read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    ctr = ds["spec"]["template"]["spec"]["containers"][0]
    sc = ctr["securityContext"]
    flags = ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    if sc["readOnlyRootFilesystem"]:
        flags.append("--read-only")
    if not sc["allowPrivilegeEscalation"]:
        flags += ["--security-opt", "no-new-privileges"]
    flags += [f"--cap-drop={cap}" for cap in sc["capabilities"]["drop"]]
    flags += [f"--cap-add={cap}" for cap in sc["capabilities"].get("add", [])]
    assert not sc["privileged"]
    # The chart's writable emptyDir mounts, and the node check's read-only host root.
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    for mount in ctr["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            flags += ["--tmpfs", mount["mountPath"]]
        elif volume.get("hostPath", {}).get("path") == "/":
            assert mount["readOnly"] is True
            flags += ["-v", f"/:{mount['mountPath']}:ro"]
    assert "-v" in flags, "the chart no longer mounts the host root: update this test"
    return flags


@pytest.fixture
def host_dirs(tmp_path: Path) -> Dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("bin", "conf", "config")}
    for path in dirs.values():
        path.mkdir()
        path.chmod(0o755)
    (dirs["config"] / "conflist.yaml").write_text(CONFLIST)
    return dirs


def mounts(dirs: Dict[str, Path]) -> List[str]:
    """The temp dirs as the node's CNI dirs and the ConfigMap volume; PYCNI_HOST_BIN_DIR tells the
    node check where the bin dir is on the host (on a node it finds /opt/cni/bin by itself)."""
    return ["-v", f"{dirs['bin']}:/host/opt/cni/bin", "-v", f"{dirs['conf']}:/host/etc/cni/net.d",
            "-v", f"{dirs['config']}:/etc/pycni/config:ro", "-e", f"PYCNI_HOST_BIN_DIR={dirs['bin']}",
            "-e", "PYCNI_NODE_NAME=node-a", "-e", "PYCNI_MTU=1400"]


def test_image_contents(image: str) -> None:
    """Entrypoint, zipapps in /opt/pycni/bin, the installer importable; no pip, no compilers."""
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    assert info["Config"]["Entrypoint"] == ["pycni-installer"]
    script = (
        "import json, os, shutil, subprocess, sys\n"
        "import pycni.installer.main, kubernetes, yaml\n"
        "print(json.dumps(sorted(os.listdir('/opt/pycni/bin'))))\n"
        "print(shutil.which('pycni-installer'))\n"
        "print(json.dumps([c for c in ('gcc', 'cc', 'pip', 'pip3') if shutil.which(c)]))\n"
        "print(subprocess.run([sys.executable, '-m', 'pip', '--version'], capture_output=True).returncode)\n"
        "print(subprocess.run([sys.executable, '-m', 'pycni.installer', '--help'], capture_output=True).returncode)\n"
    )
    proc = subprocess.run(RUN + ["--network", "none", "--entrypoint", "python3", image, "-c", script],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listing, entry, tools, pip_rc, module_rc = proc.stdout.splitlines()
    assert json.loads(listing) == ZIPAPPS
    assert entry == "/usr/local/bin/pycni-installer"
    assert json.loads(tools) == []
    assert pip_rc != "0", "pip must not be in the runtime image"
    assert module_rc == "0", "python3 -m pycni.installer must work"


def test_image_once_installs_into_host_dirs(image: str, chart_security_flags: List[str],
                                            host_dirs: Dict[str, Path], plugin_cache_dir: Path) -> None:
    """`--once` with the chart's security settings: binaries and conflist land on the 'host',
    after the node check ran them chrooted into the host's / (with the host's python3)."""
    cmd = RUN + ["--network", "none", *chart_security_flags, *mounts(host_dirs), image, "--once"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stdout + proc.stderr
    checked = [json.loads(line) for line in log.splitlines() if '"binary_checked"' in line]
    assert checked and all(e["ok"] and e["host_root"] == "/host/root" for e in checked), log

    for name in ZIPAPPS:
        path = host_dirs["bin"] / name
        assert path.is_file() and os.access(path, os.X_OK), name
    conflist = json.loads((host_dirs["conf"] / "10-pycni.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["pycni-bridge", "pycni-dns"]
    assert conflist["plugins"][0]["mtu"] == 1400
    stamp = (host_dirs["conf"] / "10-pycni.conflist").stat().st_mtime_ns

    # The installed files work on the host: exec'd by /usr/bin/python3 (plugin_env puts /usr/bin first).
    for name in ZIPAPPS:
        result, rc, err = exec_plugin(host_dirs["bin"] / name, plugin_env("VERSION"), {"cniVersion": "1.0.0"})
        assert rc == 0, f"{name}: {err}"
        assert "1.0.0" in result["supportedVersions"], result

    again = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (host_dirs["conf"] / "10-pycni.conflist").stat().st_mtime_ns == stamp, "unchanged config rewritten"


def test_image_node_check_needs_sys_chroot(image: str, chart_security_flags: List[str],
                                           host_dirs: Dict[str, Path]) -> None:
    """Negative control: without the one capability the chart adds, the node check cannot run
    the plugins, so `--once` fails and writes no conflist."""
    flags = [f for f in chart_security_flags if f != "--cap-add=SYS_CHROOT"]
    assert len(flags) == len(chart_security_flags) - 1
    proc = subprocess.run(RUN + ["--network", "none", *flags, *mounts(host_dirs), image, "--once"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "CAP_SYS_CHROOT" in proc.stdout + proc.stderr
    assert not (host_dirs["conf"] / "10-pycni.conflist").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def container_name() -> Iterator[str]:
    name = unique("pycni-img")
    yield name
    podman("rm", "-f", "-t", "0", name, timeout=60)


def test_image_daemon_serves_probes_and_keeps_files_on_stop(
        image: str, chart_security_flags: List[str], host_dirs: Dict[str, Path], container_name: str) -> None:
    """The endpoints the chart's probes use answer; SIGTERM (podman stop) leaves the files in place."""
    port = _free_port()
    start = podman("run", "-d", "--name", container_name, "--network", "host",
                   "--ulimit", "nproc=1000:1000", "--ulimit", "nofile=1000:1000",
                   *chart_security_flags, *mounts(host_dirs),
                   "-e", f"PYCNI_LISTEN=127.0.0.1:{port}", image, timeout=120)
    assert start.returncode == 0, start.stderr
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        try:
            status = (_get(port, "/healthz"), _get(port, "/readyz"))
            if status[1][0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    logs = podman("logs", container_name).stdout
    assert status is not None, f"installer never listened on {port}: {logs}"
    assert status[0][0] == 200, status
    assert status[1][0] == 200, f"/readyz: {status[1]} {logs}"
    metrics_status, metrics = _get(port, "/metrics")
    assert metrics_status == 200 and "pycni" in metrics

    stop = podman("stop", "-t", "20", container_name, timeout=60)
    assert stop.returncode == 0, stop.stderr
    code = podman("inspect", "-f", "{{.State.ExitCode}}", container_name).stdout.strip()
    assert code == "0", f"exit code {code}: {podman('logs', container_name).stdout}"
    assert (host_dirs["conf"] / "10-pycni.conflist").is_file()
    assert all((host_dirs["bin"] / name).is_file() for name in ZIPAPPS)
