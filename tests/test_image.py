"""The image: built with podman from images/Containerfile and run against temp host dirs.

No registry is reachable here, so the base image is made locally by tools/make-base-image.sh
(debootstrap of a minimal Debian with python3, `podman import`ed; kept in podman's store, so
only the first run pays for it). Each container runs with the security settings of its
container in the chart's DaemonSet (read from charts/pycni.yaml): the installer, whose
binaries are exec'd by the host's /usr/bin/python3 as a node's runtime would; and
pycni-server, which answers the zipapps on the host through its socket.
"""
from __future__ import annotations

import fcntl
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from helpers import ROOT, exec_plugin, in_netns, log_events, plugin_env, unique

# Packaging does not change with the node server: run once, not again in the with-server pass.
pytestmark = [pytest.mark.slow, pytest.mark.standalone_only]

BASE_IMAGE = "localhost/pycni-base:bookworm"
# PYCNI_TEST_IMAGE: another tag, for builds of different trees on one machine (e.g. worktrees)
IMAGE = os.environ.get("PYCNI_TEST_IMAGE") or "localhost/pycni-installer:test"
BUILD_CACHE = IMAGE.rsplit(":", 1)[0] + ":build-cache" + ("" if IMAGE.endswith(":test") else "-" + IMAGE.rsplit(":", 1)[1])
PODMAN = ["podman", "--runtime", "runc"]
RUN = PODMAN + ["run", "--rm", "--ulimit", "nproc=1000:1000", "--ulimit", "nofile=1000:1000"]
ZIPAPPS = ["pycni-bridge", "pycni-dns", "pycni-host-local", "pycni-loopback", "pycni-macvlan"]
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


def chart_pod(manifest: str) -> Dict[str, Any]:
    """The DaemonSet's pod spec in a rendered chart."""
    (ds,) = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "DaemonSet"]
    return ds["spec"]["template"]["spec"]


def container(pod: Dict[str, Any], name: str) -> Dict[str, Any]:
    (ctr,) = [c for c in pod["containers"] if c["name"] == name]
    return ctr


def security_flags(ctr: Dict[str, Any]) -> List[str]:
    """podman run flags equal to a container's securityContext."""
    sc = ctr["securityContext"]
    flags = ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    if sc["readOnlyRootFilesystem"]:
        flags.append("--read-only")
    if sc["privileged"]:
        return flags + ["--privileged"]
    if not sc["allowPrivilegeEscalation"]:
        flags += ["--security-opt", "no-new-privileges"]
    flags += [f"--cap-drop={cap}" for cap in sc["capabilities"]["drop"]]
    flags += [f"--cap-add={cap}" for cap in sc["capabilities"].get("add", [])]
    return flags


@pytest.fixture(scope="module")
def chart_security_flags() -> List[str]:
    """podman run flags equal to the installer container's securityContext in charts/pycni.yaml."""
    pod = chart_pod((ROOT / "charts" / "pycni.yaml").read_text())
    ctr = container(pod, "installer")
    flags = security_flags(ctr)
    assert not ctr["securityContext"]["privileged"]
    # The chart's writable emptyDir mounts, and the node check's read-only host root.
    volumes = {v["name"]: v for v in pod["volumes"]}
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
    """Entrypoint, zipapps in /opt/pycni/bin, the installer importable, the commands of every
    container of the chart, nft and iptables; no pip, no compilers."""
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    assert info["Config"]["Entrypoint"] == ["pycni-installer"]
    script = (
        "import json, os, shutil, subprocess, sys\n"
        "import pycni.installer.main, kubernetes, yaml\n"
        "import pycni.agent.kernel, pycni.agent.masq, pycni.plugins.server.node, pyroute2\n"
        "print(json.dumps(sorted(os.listdir('/opt/pycni/bin'))))\n"
        "print(open('/opt/pycni/python/pycni-bundle.json').read().strip())\n"
        "print(json.dumps([shutil.which(c) for c in COMMANDS]))\n"
        "print(json.dumps([c for c in ('gcc', 'cc', 'pip', 'pip3') if shutil.which(c)]))\n"
        "print(os.readlink('/var/run'))\n"
        "print(subprocess.run([sys.executable, '-m', 'pip', '--version'], capture_output=True).returncode)\n"
        "print(subprocess.run([sys.executable, '-m', 'pycni.installer', '--help'], capture_output=True).returncode)\n"
        "for argv in (['nft', '--version'], ['iptables-restore', '--version'], ['pycni-server', '--help'],\n"
        "             ['pycni-agent', '--help'], ['pycni-installer', '--help'], ['pycni', '--help']):\n"
        "    proc = subprocess.run(argv, capture_output=True, text=True)\n"
        "    print(json.dumps([argv[0], proc.returncode, proc.stdout.splitlines()[:1]]))\n"
    )
    commands = ["pycni-installer", "pycni-server", "pycni-agent", "pycni", "nft", "iptables", "iptables-restore"]
    script = f"COMMANDS = {commands!r}\n" + script
    proc = subprocess.run(RUN + ["--network", "none", "--read-only", "--entrypoint", "python3", image, "-c", script],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listing, bundle, paths, tools, var_run, pip_rc, module_rc, *runs = proc.stdout.splitlines()
    # the chart mounts the host's /run/netns once: runtimes' /var/run/netns paths resolve through this
    assert var_run in ("/run", "../run"), var_run
    assert json.loads(listing) == ZIPAPPS
    assert json.loads(bundle)["python"].startswith("3."), bundle
    found = dict(zip(commands, json.loads(paths)))
    assert found == {
        "pycni-installer": "/usr/local/bin/pycni-installer", "pycni-server": "/usr/local/bin/pycni-server",
        "pycni-agent": "/usr/local/bin/pycni-agent", "pycni": "/usr/local/bin/pycni",
        "nft": "/usr/sbin/nft", "iptables": "/usr/sbin/iptables", "iptables-restore": "/usr/sbin/iptables-restore"}
    assert json.loads(tools) == []
    assert pip_rc != "0", "pip must not be in the runtime image"
    assert module_rc == "0", "python3 -m pycni.installer must work"
    ran = {name: (rc, first) for name, rc, first in map(json.loads, runs)}
    assert all(rc == 0 for rc, _ in ran.values()), ran
    assert ran["nft"][1][0].startswith("nftables v"), ran
    assert ran["pycni-agent"][1][0].startswith("usage: pycni-agent"), ran
    assert ran["pycni-server"][1][0].startswith("usage: pycni-server"), ran


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
    runtime = [json.loads(line) for line in log.splitlines() if '"runtime_checked"' in line]
    assert runtime and runtime[0]["ok"], log  # the image's CPython bundle ran on the host, through its loader
    assert (host_dirs["bin"] / ".pycni-python" / "current" / "pycni-bundle.json").is_file()

    for name in ZIPAPPS:
        path = host_dirs["bin"] / name
        assert path.is_file() and os.access(path, os.X_OK), name
    conflist = json.loads((host_dirs["conf"] / "10-pycni.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["pycni-bridge", "pycni-dns"]
    assert conflist["plugins"][0]["mtu"] == 1400
    stamp = (host_dirs["conf"] / "10-pycni.conflist").stat().st_mtime_ns

    # The installed files work on the host: exec'd through the bundle beside them.
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


# ---- pycni-server: the chart's node server container, answering the zipapps on the host ----

RUN_DIR = "/run/pycni"  # the socket dir inside (PYCNI_SERVER_SOCKET in the chart)
PROC_SYS_NET = "/host/proc/sys/net"  # the host's /proc/sys/net inside, writable (PYCNI_PROC_SYS)


def helm_render(*args: str) -> str:
    """The chart rendered with helm (tools/install-helm.sh, cached) and extra values."""
    helm = subprocess.run(["bash", str(ROOT / "tools" / "install-helm.sh")], env=dict(os.environ, PYTHON=sys.executable), stdout=subprocess.PIPE,
                          text=True, check=True).stdout.strip().splitlines()[-1]
    return subprocess.run([helm, "template", "pycni", str(ROOT / "charts" / "pycni"), "-n", "kube-system",
                           *args], stdout=subprocess.PIPE, text=True, check=True).stdout


def server_flags(pod: Dict[str, Any], stand_ins: Dict[str, Path]) -> List[str]:
    """podman run flags for the chart's pycni-server container: host namespaces, security,
    env and every hostPath mount. `stand_ins` replaces a node path by a temp dir, mounted at the
    temp dir's own path (requests name host paths), except the socket dir, which stays at
    /run/pycni inside (the host's own /run/pycni is left alone). The host's /proc/sys/net is
    mounted where the chart puts it (it is no directory a request names)."""
    ctr = container(pod, "pycni-server")
    flags = ["--network", "host"] if pod["hostNetwork"] else []
    if pod.get("hostPID"):
        flags += ["--pid", "host"]
    flags += security_flags(ctr)
    flags += [f"--env={e['name']}={e['value']}" for e in ctr["env"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in ctr["volumeMounts"]:
        host = volumes[mount["name"]]["hostPath"]["path"]
        source = stand_ins.get(host, Path(host))
        if mount["mountPath"] == PROC_SYS_NET:
            assert host == "/proc/sys/net"
            target = PROC_SYS_NET
        else:
            assert mount["mountPath"] == host, "the server sees host paths at the same paths"
            target = RUN_DIR if host == RUN_DIR else str(source)
            source.mkdir(parents=True, exist_ok=True)  # hostPath type DirectoryOrCreate
        options = ["ro"] if mount.get("readOnly") else []
        options += {"HostToContainer": ["rslave"], "Bidirectional": ["rshared"]}.get(
            mount.get("mountPropagation", ""), [])
        flags += ["-v", f"{source}:{target}" + (":" + ",".join(options) if options else "")]
    return ["--entrypoint", ctr["command"][0], *flags]


def served(sock: Path, counter: str = "served") -> int:
    from pycni.plugins.server.node import health

    status = health(str(sock))
    assert status, f"pycni-server not answering on {sock}"
    return int(status.split(f"{counter}=")[1].split()[0])


class ServerContainer:
    """pycni-server from the image, run as the chart's container with temp dirs for node paths."""

    def __init__(self, image: str, pod: Dict[str, Any], tmp: Path, bin_dir: Path, name: str) -> None:
        self.name = name
        self.run_dir = tmp / "run-pycni"           # /run/pycni inside
        self.state_dir = tmp / "var-lib-cni"       # stands in for /var/lib/cni
        self.sock = self.run_dir / "server.sock"
        stand_ins = {RUN_DIR: self.run_dir, "/var/lib/cni": self.state_dir, "/opt/cni/bin": bin_dir}
        start = podman("run", "-d", "--name", name, "--ulimit", "nproc=1000:1000", "--ulimit", "nofile=1000:1000",
                       *server_flags(pod, stand_ins), image, timeout=120)
        assert start.returncode == 0, start.stderr
        deadline = time.monotonic() + 30
        from pycni.plugins.server.node import health

        while not (self.sock.exists() and health(str(self.sock), timeout=1)):
            assert time.monotonic() < deadline, f"server never answered: {self.logs()}"
            time.sleep(0.1)

    def logs(self) -> str:
        proc = podman("logs", self.name, timeout=60)
        return proc.stdout + proc.stderr

    def call(self, binary: Path, command: str, conf: Dict[str, Any], container_id: str, netns: str = "",
             **extra: str) -> tuple:
        """Exec a zipapp on the host, pointed at this server's socket."""
        env = plugin_env(command, netns=netns, container_id=container_id, cni_path=str(binary.parent),
                         extra={"PYCNI_SERVER_SOCKET": str(self.sock), **extra})
        return exec_plugin(binary, env, conf)


def hostlocal_conf(name: str, state_dir: Path, subnet: str, plugin: str = "pycni-host-local",
                   **keys: Any) -> Dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": name, "type": plugin, **keys,
            "ipam": {"type": "pycni-host-local", "dataDir": str(state_dir / "networks"),
                     "ranges": [[{"subnet": subnet}]]}}


def test_image_server_answers_host_zipapps(image: str, bin_dir: Path, make_netns, host_links: List[str],
                                           tmp_path: Path, container_name: str) -> None:
    """The chart's pycni-server container answers the zipapps on the host: its probe works, an
    IPAM ADD and a bridge ADD (with nftables masquerade, into a netns made after the container
    started) run inside it, DEL too; SIGTERM unlinks the socket and the zipapps run in-process."""
    from pycni.plugins.core.buildinfo import own_code_id

    pod = chart_pod((ROOT / "charts" / "pycni.yaml").read_text())
    ctr = container(pod, "pycni-server")
    image_code = subprocess.run(RUN + ["--network", "none", "--entrypoint", "python3", image, "-c",
                                       "from pycni.plugins.core.buildinfo import own_code_id; print(own_code_id())"],
                                stdout=subprocess.PIPE, text=True, timeout=60).stdout.strip()
    assert image_code == own_code_id(), "image and zipapps built from different plugin code: the server declines"
    srv = ServerContainer(image, pod, tmp_path, bin_dir, container_name)

    probe = ctr["livenessProbe"]["exec"]["command"]
    assert probe == ctr["readinessProbe"]["exec"]["command"]
    answer = podman("exec", container_name, *probe, timeout=60)
    assert answer.returncode == 0 and answer.stdout.startswith("ok served="), answer.stdout + answer.stderr

    # IPAM: the store lands in the dataDir (same path inside and out); the event log names a
    # path only the container resolves into run_dir: the request ran in the server.
    # (the netns is made after the container started: HostToContainer propagation)
    ns = make_netns("img")
    netns = f"/run/netns/{ns}"
    log_name = unique("ev") + ".log"
    inside_log = {"PYCNI_LOG_FILE": f"{RUN_DIR}/{log_name}"}
    net = unique("img")
    conf = hostlocal_conf(net, srv.state_dir, "10.231.7.0/24")
    before, handed = served(srv.sock), served(srv.sock, "handed")
    result, rc, err = srv.call(bin_dir / "pycni-host-local", "ADD", conf, "ctr-a", netns, **inside_log)
    assert rc == 0, (result, err)
    assert [ip["address"] for ip in result["ips"]] == ["10.231.7.2/24"]
    assert (srv.state_dir / "networks" / net / "10.231.7.2").is_file()
    assert served(srv.sock) > before  # (whether health calls count is the server's business)
    assert served(srv.sock, "handed") == handed + 1  # by the sh handoff, with the chart's capabilities
    assert [e["event"] for e in log_events(srv.run_dir / log_name) if e["container"] == "ctr-a"] == ["reserved", "added"]
    assert not (Path(RUN_DIR) / log_name).exists()

    # bridge + host-local: links and sysctls in the pod's netns, nftables on the host.
    bridge = unique("ib")
    host_links.append(bridge)
    bconf = hostlocal_conf(unique("imb"), srv.state_dir, "10.231.8.0/24", plugin="pycni-bridge",
                           bridge=bridge, isGateway=True, ipMasq=True)
    result, rc, err = srv.call(bin_dir / "pycni-bridge", "ADD", bconf, "ctr-b", netns, **inside_log)
    assert rc == 0, (result, err, srv.logs())
    assert [ip["address"] for ip in result["ips"]] == ["10.231.8.2/24"]
    assert "10.231.8.2/24" in in_netns(ns, "ip", "-o", "addr", "show", "dev", "eth0").stdout.decode()
    assert any(e["event"] == "added" and e["container"] == "ctr-b" for e in log_events(srv.run_dir / log_name))
    ruleset = subprocess.run(["nft", "list", "ruleset"], stdout=subprocess.PIPE, text=True).stdout
    assert "10.231.8.2" in ruleset, "masquerade rules written by nft inside the container"
    result, rc, err = srv.call(bin_dir / "pycni-bridge", "DEL", bconf, "ctr-b", netns)
    assert rc == 0, (result, err)
    assert "10.231.8.2" not in subprocess.run(["nft", "list", "ruleset"], stdout=subprocess.PIPE, text=True).stdout
    assert not (srv.state_dir / "networks" / bconf["name"] / "10.231.8.2").exists()

    # Restart story: SIGTERM unlinks the socket first, the server exits 0; the zipapps then run
    # in-process (same store, next address).
    stop = podman("stop", "-t", "20", container_name, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert podman("inspect", "-f", "{{.State.ExitCode}}", container_name).stdout.strip() == "0", srv.logs()
    assert not srv.sock.exists()
    result, rc, err = srv.call(bin_dir / "pycni-host-local", "ADD", conf, "ctr-c", netns)
    assert rc == 0, (result, err)
    assert [ip["address"] for ip in result["ips"]] == ["10.231.7.3/24"]


def without_proc_sys_mount(pod: Dict[str, Any]) -> Dict[str, Any]:
    """The pod with pycni-server as unprivileged but without the host's /proc/sys/net mount (and
    its PYCNI_PROC_SYS): sysctls then go to the runtime's read-only /proc/sys."""
    pod = json.loads(json.dumps(pod))
    ctr = container(pod, "pycni-server")
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["mountPath"] != PROC_SYS_NET]
    ctr["env"] = [e for e in ctr["env"] if e["name"] != "PYCNI_PROC_SYS"]
    return pod


def sysctl(ns: str, path: str) -> str:
    """A /proc/sys/net value in netns `ns` ("" for the host's)."""
    if not ns:
        return Path("/proc/sys", path).read_text().strip()
    return in_netns(ns, "cat", f"/proc/sys/{path}").stdout.decode().strip()


@pytest.mark.parametrize("proc_sys_mount", [True, False], ids=["chart", "no-proc-sys-mount"])
def test_image_server_unprivileged_writes_sysctls(proc_sys_mount: bool, image: str, bin_dir: Path, make_netns,
                                                  host_links: List[str], tmp_path: Path,
                                                  container_name: str) -> None:
    """The chart's default (unprivileged) pycni-server writes the bridge's sysctls through the
    host's /proc/sys/net mounted at /host/proc/sys/net, each in its netns: the pod's (after
    setns) and the host's; pycni-dns binds port 53 with its capabilities. Without that mount the
    sysctls hit the runtime's read-only /proc/sys and the bridge ADD fails with EROFS."""
    pod = chart_pod((ROOT / "charts" / "pycni.yaml").read_text())
    sc = container(pod, "pycni-server")["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    if not proc_sys_mount:
        pod = without_proc_sys_mount(pod)
    srv = ServerContainer(image, pod, tmp_path, bin_dir, container_name)
    ns = make_netns("ims")
    netns = f"/run/netns/{ns}"
    bridge = unique("is")
    host_links.append(bridge)
    subnet = "10.231.9.0/24" if proc_sys_mount else "10.231.10.0/24"
    bconf = hostlocal_conf(unique("ims"), srv.state_dir, subnet, plugin="pycni-bridge",
                           bridge=bridge, isGateway=True)
    # a log path only the container resolves into run_dir: its events show the ADD ran there
    log_name = unique("ev") + ".log"
    try:
        result, rc, err = srv.call(bin_dir / "pycni-bridge", "ADD", bconf, "ctr-s", netns,
                                   PYCNI_LOG_FILE=f"{RUN_DIR}/{log_name}")
        assert log_events(srv.run_dir / log_name), ("the ADD did not run in the server", result, err)
        if not proc_sys_mount:
            assert rc != 0 and "Read-only file system" in result["msg"] and "/proc/sys/" in result["msg"], result
            return
        assert rc == 0, (result, err, srv.logs())
        # the pod's netns (defaults 0 and 1 there), the host's (a new link's default is 1)
        assert (sysctl(ns, "net/ipv4/conf/eth0/arp_notify"), sysctl(ns, "net/ipv6/conf/eth0/accept_dad")) == ("1", "0")
        assert sysctl("", f"net/ipv6/conf/{bridge}/accept_ra") == "0"

        # pycni-dns from inside the server: its DNS server listens on the gateway, port 53.
        gateway = result["ips"][0]["gateway"]
        dconf = {"cniVersion": "1.0.0", "name": bconf["name"], "type": "pycni-dns", "prevResult": result}
        dns_result, rc, err = srv.call(bin_dir / "pycni-dns", "ADD", dconf, "ctr-s", netns,
                                       CNI_ARGS="K8S_POD_NAME=web")
        assert rc == 0, (dns_result, err, srv.logs())
        answer = in_netns(ns, "dig", "+time=2", "+tries=2", "+short", f"@{gateway}", "web.dns.pycni")
        assert answer.stdout.decode().split() == [result["ips"][0]["address"].split("/")[0]]
        result, rc, err = srv.call(bin_dir / "pycni-dns", "DEL", dconf, "ctr-s", netns)
        assert rc == 0, (result, err)
    finally:
        srv.call(bin_dir / "pycni-bridge", "DEL", bconf, "ctr-s", netns)


# ---- pycni-agent: the chart's node agent container, in a "node" netns with an in-test API ----

FAKE_API = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from k8s_fake_api import FakeKubeAPI

api = FakeKubeAPI().start()
for name, cidr, ip in (("node-a", "10.232.1.0/24", "192.168.231.1"), ("node-b", "10.232.2.0/24", "192.168.231.2")):
    api.put("nodes", {"metadata": {"name": name}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                      "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
api.put_configmap("kube-system", "pycni-config", {"network.yaml": Path(sys.argv[3]).read_text()})
api.write_kubeconfig(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()  # serve until the test closes stdin
"""


def test_image_agent_converges_in_a_node_netns(image: str, make_netns, tmp_path: Path, container_name: str) -> None:
    """The chart's pycni-agent container (its env, capabilities, read-only root) in a netns standing in
    for a node, fed by an in-test API with the chart's default network.yaml: ready after its first
    sync, the host-gw route to the other node programmed, its nftables table written; SIGTERM
    leaves both in place."""
    manifest = (ROOT / "charts" / "pycni.yaml").read_text()
    pod = chart_pod(manifest)
    ctr = container(pod, "pycni-agent")
    (cm,) = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "ConfigMap"]
    ns = make_netns("ag")
    # the node's underlay: a veth pair inside the netns (no dummy module here)
    in_netns(ns, "ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
    in_netns(ns, "ip", "addr", "add", "192.168.231.1/24", "dev", "under0")
    for link in ("under0", "under1"):
        in_netns(ns, "ip", "link", "set", link, "up")
    kubeconfig, network = tmp_path / "kubeconfig", tmp_path / "network.yaml"
    network.write_text(cm["data"]["network.yaml"])
    api = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", FAKE_API, str(kubeconfig),
                            str(ROOT / "tests"), str(network)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        assert api.stdout
        assert api.stdout.readline().strip() == "ready"
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        env.update(NODE_NAME="node-a", PYCNI_NODE_NAME="node-a", KUBECONFIG="/etc/pycni-test/kubeconfig")
        port = ctr["readinessProbe"]["httpGet"]["port"]
        assert env["PYCNI_AGENT_LISTEN"] == f"0.0.0.0:{port}" and env["PYCNI_CONFIGMAP"] == "kube-system/pycni-config"
        tmpfs = [m["mountPath"] for m in ctr["volumeMounts"]]
        assert tmpfs == ["/tmp"]
        start = podman("run", "-d", "--name", container_name, "--network", f"ns:/run/netns/{ns}",
                       "--ulimit", "nproc=1000:1000", "--ulimit", "nofile=1000:1000", *security_flags(ctr),
                       "--tmpfs", "/tmp", "-v", f"{kubeconfig}:/etc/pycni-test/kubeconfig:ro",
                       *[f"--env={k}={v}" for k, v in env.items()], "--entrypoint", ctr["command"][0], image)
        assert start.returncode == 0, start.stderr
        probe = ("import sys, urllib.request\n"
                 "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)\n"
                 "except Exception as exc:\n    print(getattr(exc, 'code', 0))\n")
        deadline = time.monotonic() + 30
        while True:
            status = in_netns(ns, sys.executable, "-c", probe, f"http://127.0.0.1:{port}/readyz").stdout.decode()
            if status.strip() == "200":
                break
            assert time.monotonic() < deadline, podman("logs", container_name).stderr
            time.sleep(0.2)
        routes = in_netns(ns, "ip", "route", "show", "proto", "156").stdout.decode()
        assert "10.232.2.0/24 via 192.168.231.2" in routes, routes
        assert in_netns(ns, "nft", "list", "table", "inet", "pycni-agent", check=False).returncode == 0

        stop = podman("stop", "-t", "20", container_name, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert podman("inspect", "-f", "{{.State.ExitCode}}", container_name).stdout.strip() == "0"
        assert routes == in_netns(ns, "ip", "route", "show", "proto", "156").stdout.decode()
    finally:
        if api.stdin:
            api.stdin.close()
        api.wait(timeout=30)


def test_image_uninstall_mode_cleans_a_node_netns(image: str, chart_security_flags: List[str],
                                                  host_dirs: Dict[str, Path], make_netns, tmp_path: Path,
                                                  container_name: str) -> None:
    """charts/pycni-uninstall.yaml's container (its command, capabilities, read-only root, mounts) in a
    netns standing in for a node: after an install (`--once`) and the agent's kernel state, it removes
    the files, the `inet pycni-agent` table and the agent's route, turns Ready (its probe), idles, and
    exits 0 on SIGTERM."""
    install = subprocess.run(RUN + ["--network", "none", *chart_security_flags, *mounts(host_dirs), image, "--once"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    assert (host_dirs["bin"] / "loopback").is_file() and (host_dirs["conf"] / "10-pycni.conflist").is_file()
    ns = make_netns("ui")
    in_netns(ns, "ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
    in_netns(ns, "ip", "addr", "add", "192.168.232.1/24", "dev", "under0")
    in_netns(ns, "ip", "link", "set", "under0", "up")
    in_netns(ns, "ip", "route", "add", "10.232.7.0/24", "via", "192.168.232.2", "proto", "156")
    in_netns(ns, "nft", "add table inet pycni-agent; add chain inet pycni-agent post "
             "{ type nat hook postrouting priority 100; }; add rule inet pycni-agent post masquerade")

    pod = chart_pod((ROOT / "charts" / "pycni-uninstall.yaml").read_text())
    ctr = container(pod, "uninstall")
    stand_ins = {"/opt/cni/bin": host_dirs["bin"], "/etc/cni/net.d": host_dirs["conf"],
                 "/var/lib/cni": tmp_path / "var-lib-cni", "/run/pycni": tmp_path / "run-pycni"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    flags = ["--network", f"ns:/run/netns/{ns}", "--pid", "host"] if pod["hostPID"] else []
    for mount in ctr["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            flags += ["--tmpfs", mount["mountPath"]]
            continue
        source = stand_ins[volume["hostPath"]["path"]]
        source.mkdir(exist_ok=True)
        flags += ["-v", f"{source}:{mount['mountPath']}"]
    env = [f"--env={e['name']}={e['value']}" for e in ctr["env"]]
    start = podman("run", "-d", "--name", container_name, "--ulimit", "nproc=1000:1000", "--ulimit",
                   "nofile=1000:1000", *security_flags(ctr), *flags, *env, "--entrypoint", ctr["command"][0],
                   image, *ctr["command"][1:], timeout=120)
    assert start.returncode == 0, start.stderr
    probe = ctr["readinessProbe"]["exec"]["command"]
    deadline = time.monotonic() + 60
    while podman("exec", container_name, *probe, timeout=30).returncode != 0:
        assert time.monotonic() < deadline, podman("logs", container_name).stderr
        time.sleep(0.5)
    assert sorted(p.name for p in host_dirs["bin"].iterdir()) == []
    assert sorted(p.name for p in host_dirs["conf"].iterdir()) == []
    assert in_netns(ns, "nft", "list", "table", "inet", "pycni-agent", check=False).returncode != 0
    assert "10.232.7.0" not in in_netns(ns, "ip", "route", "show").stdout.decode()
    stop = podman("stop", "-t", "20", container_name, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert podman("inspect", "-f", "{{.State.ExitCode}}", container_name).stdout.strip() == "0"
