"""The installer proves the plugins run on the node before any conflist reaches it (installer/nodecheck.py).

Fake host roots are real directory trees with read-only bind mounts: one with no python3 at all
(/bin/sh is busybox), one whose /usr/bin/python3 is pyenv's Python 3.8; and the real root "/".
The installer runs as a real process, chroots into the fake root and execs the installed zipapps
there, exactly as it would into the host root the DaemonSet mounts at /host/root."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from helpers import PYENV_VERSIONS, pyenv_prefixes, unique
from k8s_fake_api import FakeKubeAPI
from test_installer_e2e import CONF, CM, KEY, NS, Host, Installer, kubelet_update, run_once, wait_for

from pycni.installer.log import Log
from pycni.installer.nodecheck import RUNTIME_PATH, NodeChecker, SetupError, judge, locate_bin_dir, resolve_root
from pycni.installer.settings import parse

QUIET = Log("error")
PY38 = pyenv_prefixes("3.8")  # a self-contained prefix: bound into a fake host root
BUSYBOX = Path("/bin/busybox")
REFERENCE_PORTMAP = Path("/usr/lib/cni/portmap")  # a Go reference plugin an admin might chain
NEED_PY39 = "pycni plugins need CPython >= 3.9 on the node"
NO_PYTHON = f"python3 not found on PATH ({RUNTIME_PATH}) - {NEED_PY39}"
PLUGINS = ("pycni-bridge", "pycni-host-local", "pycni-dns", "portmap")
OLD_CONFLIST = b'{"cniVersion": "1.0.0", "name": "old", "plugins": [{"type": "pycni-bridge"}]}\n'


def template(version: str = "1.0.0") -> str:
    return json.dumps({"cniVersion": version, "name": "pycni", "plugins": [
        {"type": "pycni-bridge", "bridge": "cni-nc", "ipam": {"type": "pycni-host-local",
                                                               "ranges": [[{"subnet": "10.78.0.0/24"}]]}},
        {"type": "pycni-dns", "domainName": "__NODE_NAME__.pycni.test"},
        {"type": "portmap", "capabilities": {"portMappings": True}}]})


def py38_message() -> str:
    return f"{NEED_PY39}; /usr/bin/python3 is Python {PY38[-1].name}"


# ---- fake host roots ---------------------------------------------------------------------------
def mounts_under(path: Path) -> List[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [p for p in points if p.startswith(prefix)]


class FakeRoot:
    """A host root in a temp dir: busybox as /bin/sh, the host's libraries bound read-only, and
    optionally pyenv's Python 3.8 as /usr/bin/python3. `close()` unmounts and only then deletes."""

    def __init__(self, base: Path, python38: bool) -> None:
        self.base = base
        self.path = base / "root"
        self.mounts: List[Path] = []
        (self.path / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, self.path / "bin" / "sh")
        for d in ("usr/bin", "opt/cni/bin", "etc/cni/net.d"):
            (self.path / d).mkdir(parents=True, exist_ok=True)
        for src in ("/lib", "/lib64", "/dev", "/proc"):
            self.bind(src)
        if python38:
            self.bind("/usr/lib")
            self.bind(str(PY38[-1]))
            os.symlink(f"{PY38[-1]}/bin/python3.8", self.path / "usr/bin/python3")

    def bind(self, src: str, read_only: bool = True) -> Path:
        target = self.path / src.lstrip("/")
        if os.path.isdir(src):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.touch()
        subprocess.run(["mount", "-o", "bind,ro" if read_only else "bind", src, str(target)], check=True)
        self.mounts.append(target)
        return target

    def close(self) -> None:
        for target in reversed(self.mounts):
            if subprocess.run(["umount", str(target)]).returncode != 0:
                subprocess.run(["umount", "-l", str(target)])
        left = mounts_under(self.base)
        if left:  # never delete through a live bind mount of the host's /lib
            raise RuntimeError(f"mounts left under {self.base}: {left}")
        shutil.rmtree(self.path)


class RootedHost(Host):
    """The e2e Host, but with the bin and conf dirs inside a host root (as /opt/cni/bin, /etc/cni/net.d)."""

    def __init__(self, base: Path, source: Path, root: Path) -> None:
        self.root, self.src, self.host_root = base, source, root
        self.bin, self.net = root / "opt/cni/bin", root / "etc/cni/net.d"
        self.volume = base / "configmap-volume"
        self.volume.mkdir()

    def args(self, *extra: str) -> List[str]:
        return [*super().args(*extra), "--host-root", str(self.host_root)]


@pytest.fixture(params=["no-python3", "python3.8"])
def bad_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tuple[FakeRoot, str]]:
    if request.param == "python3.8" and not PY38:
        pytest.skip(f"no pyenv CPython 3.8 (looked in {PYENV_VERSIONS}/3.8.*)")
    root = FakeRoot(tmp_path / unique("fr"), python38=request.param == "python3.8")
    try:
        yield root, (NO_PYTHON if request.param == "no-python3" else py38_message())
    finally:
        root.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Tuple[FakeKubeAPI, Path]]:
    with FakeKubeAPI() as fake:
        yield fake, fake.write_kubeconfig(tmp_path / "kubeconfig")


def rooted_host(tmp_path: Path, source: Path, root: FakeRoot) -> RootedHost:
    host = RootedHost(tmp_path, source, root.path)
    shutil.copy(REFERENCE_PORTMAP, host.bin / "portmap")
    return host


def start(host: Host, args: List[str], kubeconfig: Optional[Path], started: List[Installer]) -> Installer:
    inst = Installer(host, args, kubeconfig)
    started.append(inst)
    return inst


def events_on(fake: FakeKubeAPI, kind: str) -> List[dict]:
    return [e for e in fake.list("events", NS) if e["involvedObject"]["kind"] == kind]


# ---- the installer refuses a node that cannot run the plugins ----------------------------------
def test_bad_node_refuses_keeps_conflist_reports_everywhere(tmp_path: Path, bin_dir: Path,
                                                            bad_root: Tuple[FakeRoot, str],
                                                            api: Tuple[FakeKubeAPI, Path]) -> None:
    root, message = bad_root
    fake, kubeconfig = api
    host = rooted_host(tmp_path, bin_dir, root)
    host.conflist.write_bytes(OLD_CONFLIST)
    before = host.conflist.stat()
    pod = fake.put("pods", {"metadata": {"namespace": NS, "name": "pycni-abcde"}, "spec": {"nodeName": "node-nc"}})
    fake.put_configmap(NS, CM, {KEY: template()})
    started: List[Installer] = []
    try:
        inst = start(host, ["--configmap", f"{NS}/{CM}", "--config-dir", "", "--node-name", "node-nc",
                            "--pod-name", "pycni-abcde", "--pod-namespace", NS,
                            "--pod-uid", pod["metadata"]["uid"], "--resync-seconds", "0.3"], kubeconfig, started)
        wait_for(lambda: message in inst.get("/readyz")[1], 20, f"/readyz naming {message!r}")
        code, body = inst.get("/readyz")
        assert code == 503 and "no conflist written (the existing one stays)" in body, body
        assert "/opt/cni/bin under host root" in body, body

        m = inst.metrics()
        for plugin in ("pycni-bridge", "pycni-host-local", "pycni-dns"):
            assert m[f'pycni_installer_binary_check_ok{{plugin="{plugin}"}}'] == 0, plugin
            assert m[f'pycni_installer_binary_check_failures_total{{plugin="{plugin}"}}'] >= 1
        # the same chroot runs the admin's (dynamically linked) Go plugin fine: the check itself works
        assert m['pycni_installer_binary_check_ok{plugin="portmap"}'] == 1
        assert m["pycni_installer_ready"] == 0

        for kind, name in (("Pod", "pycni-abcde"), ("ConfigMap", CM)):
            event = wait_for(lambda: events_on(fake, kind), 5, f"an Event on the {kind}")[0]
            assert event["involvedObject"]["name"] == name and event["reason"] == "BinaryCheckFailed"
            assert event["message"].startswith("node node-nc: ") and message in event["message"], event
            assert event["type"] == "Warning"
        assert events_on(fake, "Pod")[0]["involvedObject"]["uid"] == pod["metadata"]["uid"]
        assert [e for e in inst.events() if e["event"] == "binary_check_failed" and message in e["why"]]

        time.sleep(1.0)  # a few resyncs: each re-checks (the node may get fixed), none writes or re-posts
        runs = [e for e in inst.events() if e["event"] == "binary_checked" and e["plugin"] == "pycni-bridge"]
        assert len(runs) >= 2 and not any(e["ok"] for e in runs)
        assert len(events_on(fake, "Pod")) == 1 and len(events_on(fake, "ConfigMap")) == 1
        after = host.conflist.stat()
        assert host.conflist.read_bytes() == OLD_CONFLIST
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert sorted(p.name for p in host.net.iterdir()) == [CONF], "nothing else written"
        assert not [e for e in inst.events() if e["event"] == "conflist_written"]
        assert all((host.bin / p.name).read_bytes() == p.read_bytes() for p in bin_dir.iterdir()), \
            "the binaries themselves go in (first), so they can be checked where the runtime finds them"
    finally:
        for inst in started:
            inst.stop()


def test_once_on_a_bad_node_exits_nonzero_with_the_reason(tmp_path: Path, bin_dir: Path,
                                                         bad_root: Tuple[FakeRoot, str]) -> None:
    root, message = bad_root
    host = rooted_host(tmp_path, bin_dir, root)
    host.conflist.write_bytes(OLD_CONFLIST)
    inode = host.conflist.stat().st_ino
    kubelet_update(host.volume, {KEY: template()})
    t0 = time.monotonic()
    proc = run_once(host, "--config-dir", str(host.volume), "--node-name", "node-once")
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert time.monotonic() - t0 < 30, "--once must not wait out its timeout on a node that cannot run the plugins"
    failed = [json.loads(line) for line in stderr.splitlines() if '"once_failed"' in line]
    assert failed and message in failed[0]["why"] and "no conflist written" in failed[0]["why"], stderr
    assert host.conflist.read_bytes() == OLD_CONFLIST and host.conflist.stat().st_ino == inode


@pytest.mark.skipif(not PY38, reason=f"no pyenv CPython 3.8 (looked in {PYENV_VERSIONS}/3.8.*)")
def test_fixing_the_node_lets_the_conflist_in(tmp_path: Path, bin_dir: Path) -> None:
    """After python3 >= 3.9 appears on the node, the next resync passes the check and writes."""
    root = FakeRoot(tmp_path / unique("fr"), python38=True)
    started: List[Installer] = []
    try:
        host = rooted_host(tmp_path, bin_dir, root)
        kubelet_update(host.volume, {KEY: template()})
        inst = start(host, ["--config-dir", str(host.volume), "--node-name", "node-fix", "--resync-seconds", "0.3"],
                     None, started)
        wait_for(lambda: py38_message() in inst.get("/readyz")[1], 20, "the 3.8 refusal")
        assert not host.conflist.exists()
        real = os.path.realpath("/usr/bin/python3")  # the Debian CPython (its stdlib is under /usr/lib)
        root.bind(real)
        os.unlink(root.path / "usr/bin/python3")
        os.symlink(real, root.path / "usr/bin/python3")
        inst.wait_ready(timeout=30)
        assert json.loads(host.conflist.read_bytes())["plugins"][2]["type"] == "portmap"
        assert inst.metrics()['pycni_installer_binary_check_ok{plugin="pycni-bridge"}'] == 1
    finally:
        for inst in started:
            inst.stop()
        root.close()


def test_real_root_installs(tmp_path: Path, bin_dir: Path, api: Tuple[FakeKubeAPI, Path]) -> None:
    fake, kubeconfig = api
    host = Host(tmp_path, bin_dir)
    shutil.copy(REFERENCE_PORTMAP, host.bin / "portmap")
    fake.put_configmap(NS, CM, {KEY: template()})
    started: List[Installer] = []
    try:
        inst = start(host, ["--configmap", f"{NS}/{CM}", "--config-dir", "", "--node-name", "node-real",
                            "--pod-name", "pycni-real", "--pod-namespace", NS, "--host-root", "/"], kubeconfig,
                     started)
        inst.wait_ready()
        assert json.loads(host.conflist.read_bytes())["name"] == "pycni"
        m = inst.metrics()
        for plugin in PLUGINS:
            assert m[f'pycni_installer_binary_check_ok{{plugin="{plugin}"}}'] == 1, plugin
        checked = {e["plugin"]: e for e in inst.events() if e["event"] == "binary_checked"}
        assert sorted(checked) == sorted(PLUGINS)
        assert all(e["ok"] and e["file"] == str(host.bin / p) for p, e in checked.items()), checked
        assert not fake.list("events", NS)
    finally:
        for inst in started:
            inst.stop()


# ---- the check's parts, in-process -------------------------------------------------------------
SCRIPT = """#!/bin/sh
echo run >> {log}
env > {log}.env
pwd > {log}.pwd
cat > {log}.stdin
echo '{{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}}'
"""


def test_checker_runs_as_the_runtime_caches_passes_rechecks_changes(tmp_path: Path) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    log = tmp_path / "runs"
    plugin = bins / "fake-plugin"
    plugin.write_text(SCRIPT.format(log=log))
    plugin.chmod(0o755)
    checker = NodeChecker(bins, "/", True, "", False, 10, QUIET)

    report = checker.check(["fake-plugin"], "1.0.0")
    assert report.ok and report.ran == ["fake-plugin"]
    env = dict(line.split("=", 1) for line in Path(f"{log}.env").read_text().splitlines() if "=" in line)
    assert env["PATH"] == RUNTIME_PATH and env["CNI_COMMAND"] == "VERSION"
    assert not {k for k in env if k.startswith(("KUBE", "HOME", "PYTHON", "CNI_NETNS"))}, env
    assert set(env) <= {"PATH", "CNI_COMMAND", "PYCNI_CACHE_DIR", "PWD", "SHLVL", "_", "OLDPWD"}, env
    assert Path(f"{log}.pwd").read_text().strip() == "/"
    assert json.loads(Path(f"{log}.stdin").read_text()) == {"cniVersion": "1.0.0"}

    assert checker.check(["fake-plugin"], "1.0.0").ran == [], "a pass is remembered for the same file"
    plugin.write_text(SCRIPT.format(log=log) + "\n")  # a binary update: checked again
    assert checker.check(["fake-plugin"], "1.0.0").ran == ["fake-plugin"]

    bad = checker.check(["fake-plugin"], "1.1.0")
    assert not bad.ok and bad.reason() == "fake-plugin: does not support cniVersion 1.1.0 (it supports 0.4.0, 1.0.0)"
    checker.check(["fake-plugin"], "1.1.0")
    assert len(log.read_text().splitlines()) == 4, "failures are never remembered: each sync tries again"

    # a runtime whose unit sets PATH (e.g. python3 in /opt/bin on Flatcar): --runtime-path
    NodeChecker(bins, "/", True, "", False, 10, QUIET, runtime_path="/opt/bin:/usr/bin:/bin").check(["fake-plugin"],
                                                                                                 "1.0.0")
    assert "PATH=/opt/bin:/usr/bin:/bin\n" in Path(f"{log}.env").read_text()


def test_settings() -> None:
    s = parse([], {})
    assert (s.host_root, s.host_root_explicit, s.host_bin_dir, s.in_pod) == ("/host/root", False, "", False)
    assert s.runtime_path == RUNTIME_PATH and s.binary_check_timeout == 30
    env = {"PYCNI_HOST_ROOT": "/", "PYCNI_POD_NAME": "p", "PYCNI_POD_NAMESPACE": "ns", "PYCNI_POD_UID": "u",
           "KUBERNETES_SERVICE_HOST": "10.0.0.1", "PYCNI_HOST_BIN_DIR": "/usr/libexec/cni"}
    s = parse([], env)
    assert (s.host_root, s.host_root_explicit, s.in_pod, s.host_bin_dir) == ("/", True, True, "/usr/libexec/cni")
    assert (s.pod_name, s.pod_namespace, s.pod_uid) == ("p", "ns", "u")
    assert parse(["--host-root", "/mnt/host"], env).host_root == "/mnt/host"
    with pytest.raises(ValueError):
        parse(["--binary-check-timeout", "0"], {})


def test_checker_timeout_and_exec_failures(tmp_path: Path) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "slow").write_text("#!/bin/sh\nsleep 20\n")
    (bins / "no-interp").write_text("#!/no/such/interpreter\n")
    (bins / "crash").write_text("#!/bin/sh\necho 'boom: it broke' >&2\nexit 3\n")
    for p in bins.iterdir():
        p.chmod(0o755)
    checker = NodeChecker(bins, "/", True, "", False, 0.5, QUIET)
    t0 = time.monotonic()
    report = checker.check(["slow", "no-interp", "crash"], "1.0.0")
    assert time.monotonic() - t0 < 5, "a hung plugin (and its children) is killed at the timeout"
    by = {o.plugin: o.message for o in report.outcomes}
    assert by["slow"] == "no answer to VERSION within 0.5s"
    assert "its interpreter /no/such/interpreter is missing on the node" in by["no-interp"]
    assert by["crash"] == "boom: it broke"


def test_judge() -> None:
    ok = b'{"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}'
    assert judge(ok, b"", 0, "1.1.0", "p") == ""
    assert judge(ok, b"", 0, "0.4.0", "p") == "does not support cniVersion 0.4.0 (it supports 1.0.0, 1.1.0)"
    assert judge(b'{"cniVersion": "1.0.0"}', b"", 0, "1.0.0", "p").startswith("answered VERSION with an invalid")
    err = b'{"cniVersion": "1.1.0", "code": 999, "msg": "p: python3 not found", "details": "d"}'
    assert judge(err, b"p: python3 not found\n", 1, "1.0.0", "p") == "python3 not found: d"
    assert judge(b"", b"", 1, "1.0.0", "p") == "exit status 1, no output"
    assert judge(b"Traceback", b"", 0, "1.0.0", "p") == "unexpected output 'Traceback'"


def test_host_root_and_bin_dir_resolution(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert resolve_root(missing, False, False) == Path("/"), "on the node itself: no chroot"
    with pytest.raises(SetupError, match="is not mounted"):
        resolve_root(missing, False, True)  # in a pod, "/" would check the image, not the node
    with pytest.raises(SetupError, match="does not exist"):
        resolve_root(missing, True, False)
    root = tmp_path / "root"
    (root / "opt/cni/bin").mkdir(parents=True)
    assert resolve_root(str(root), True, True) == root
    assert locate_bin_dir(root, root / "opt/cni/bin", "") == "/opt/cni/bin"
    assert locate_bin_dir(Path("/"), tmp_path, "") == str(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(SetupError, match="cannot find bin dir"):
        locate_bin_dir(root, other, "")
    assert locate_bin_dir(root, other, "/usr/libexec/cni") == "/usr/libexec/cni", "given by hand: trusted"

    checker = NodeChecker(root / "opt/cni/bin", missing, False, "", True, 5, QUIET)
    report = checker.check(["pycni-bridge"], "1.0.0")
    assert not report.ok and "is not mounted" in report.reason()
