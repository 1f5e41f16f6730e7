"""pycni-installer as a real process (`python -m pycni.installer`) against temp dirs standing in for
the host's /opt/cni/bin and /etc/cni/net.d, a kubelet-style ConfigMap volume, and the in-test
Kubernetes API server (tests/k8s_fake_api.py) spoken to by the real `kubernetes` client."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from helpers import ROOT, probe
from helpers import stop_process
from helpers import wait_until as wait_for
from k8s_fake_api import FakeKubeAPI

NS, CM, KEY = "kube-system", "pycni-config", "conflist.yaml"
CONF = "10-pycni.conflist"

# A template using every placeholder; pycni-bridge + pycni-host-local + pycni-dns.
TEMPLATE = """\
cniVersion: 1.0.0
name: pycni
plugins:
  - type: pycni-bridge
    bridge: BRIDGE
    isGateway: true
    mtu: __MTU__
    ipam:
      type: pycni-host-local
      ranges: "__POD_CIDR_RANGES__"
  - type: pycni-dns
    domainName: __NODE_NAME__.pycni.test
"""
# No podCIDR placeholders: renders without any API (volume mode, --once on a bare node).
STATIC_TEMPLATE = """\
{"cniVersion": "1.0.0", "name": "pycni", "plugins": [
  {"type": "pycni-bridge", "bridge": "BRIDGE", "mtu": __MTU__,
   "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]]}},
  {"type": "pycni-dns", "domainName": "__NODE_NAME__.pycni.test"}]}
"""


def template(bridge: str = "cni0", text: str = TEMPLATE) -> str:
    return text.replace("BRIDGE", bridge)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def kubelet_update(volume: Path, files: Dict[str, str]) -> bool:
    """What kubelet's AtomicWriter does to a ConfigMap volume; False when the content is identical."""
    data = volume / "..data"
    if data.is_symlink() and all((data / k).is_file() and (data / k).read_text() == v for k, v in files.items()) \
            and sorted(p.name for p in data.iterdir()) == sorted(files):
        return False
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    new_dir = volume / f"..{stamp}.{random.randint(10**8, 10**9 - 1)}"
    new_dir.mkdir()
    for key, value in files.items():
        (new_dir / key).write_text(value)
        (new_dir / key).chmod(0o644)
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(new_dir.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", data)  # the atomic step
    for key in files:
        if not (volume / key).is_symlink():
            os.symlink(f"..data/{key}", volume / key)
    for entry in volume.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if old:
        shutil.rmtree(volume / old)
    return True


class Host:
    """Temp dirs standing in for the node: image source dir, host bin dir, host conf dir, the volume."""

    def __init__(self, root: Path, source: Path) -> None:
        self.root = root
        self.src = source
        self.bin = root / "opt-cni-bin"
        self.net = root / "etc-cni-net.d"
        self.volume = root / "configmap-volume"
        for d in (self.bin, self.net, self.volume):
            d.mkdir()

    @property
    def conflist(self) -> Path:
        return self.net / CONF

    def args(self, *extra: str) -> List[str]:
        return ["--source-dir", str(self.src), "--bin-dir", str(self.bin), "--conf-dir", str(self.net), *extra]

    def snapshot(self) -> Dict[str, Tuple[int, int, int]]:
        """(inode, mtime_ns, ctime_ns) of every file we may have written."""
        out = {}
        for d in (self.bin, self.net):
            for p in sorted(d.iterdir()):
                st = p.stat()
                out[str(p)] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        return out


class Installer:
    """`python -m pycni.installer ...` as a child process, with its health endpoint and JSON log."""

    def __init__(self, host: Host, args: List[str], kubeconfig: Optional[Path] = None) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "PYCNI_"))}
        env["KUBECONFIG"] = str(kubeconfig) if kubeconfig else str(host.root / "no-kubeconfig")
        self.log_path = host.root / f"installer-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pycni.installer", *host.args(*args), "--listen", f"127.0.0.1:{self.port}"],
            env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=self._log)

    def get(self, path: str) -> Tuple[int, str]:
        return probe(self.port, path)

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(lambda: self.ready() or self._dead(), timeout, "installer ready")
        assert self.proc.poll() is None, self.logs_text()

    def _dead(self) -> bool:
        return self.proc.poll() is not None

    def metrics(self) -> Dict[str, float]:
        code, body = self.get("/metrics")
        assert code == 200
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def events(self) -> List[Dict[str, Any]]:
        """The JSON lines logged so far: the installer may be mid-write, so the last line counts once it ends."""
        complete = self.log_path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.startswith("{")]

    def logs_text(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        code = stop_process(self.proc, sig)
        self._log.close()
        return code


@pytest.fixture
def host(tmp_path: Path, bin_dir: Path) -> Host:
    return Host(tmp_path, bin_dir)


@pytest.fixture
def start(host: Host) -> Iterator[Callable[..., Installer]]:
    started: List[Installer] = []

    def make(*args: str, kubeconfig: Optional[Path] = None) -> Installer:
        inst = Installer(host, list(args), kubeconfig)
        started.append(inst)
        return inst

    yield make
    for inst in started:
        inst.stop(signal.SIGKILL)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Tuple[FakeKubeAPI, Path]]:
    with FakeKubeAPI() as fake:
        yield fake, fake.write_kubeconfig(tmp_path / "kubeconfig")


def run_once(host: Host, *args: str, kubeconfig: Optional[Path] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "PYCNI_"))}
    env["KUBECONFIG"] = str(kubeconfig or host.root / "no-kubeconfig")
    return subprocess.run([sys.executable, "-m", "pycni.installer", "--once", *host.args(*args)],
                          env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


def conflist(host: Host) -> Dict[str, Any]:
    return json.loads(host.conflist.read_text())


def api_args(node: str, *extra: str) -> List[str]:
    return ["--configmap", f"{NS}/{CM}", "--config-dir", "", "--node-name", node, *extra]


# ---------------------------------------------------------------------------------------------
def test_first_install_then_restart_writes_nothing(host: Host, start: Callable[..., Installer]) -> None:
    kubelet_update(host.volume, {KEY: template(text=STATIC_TEMPLATE)})
    args = ("--config-dir", str(host.volume), "--node-name", "node-a", "--mtu", "1442")
    first = run_once(host, *args)
    assert first.returncode == 0, first.stderr.decode()
    for src in host.src.iterdir():
        installed = host.bin / src.name
        assert installed.read_bytes() == src.read_bytes()
        assert installed.stat().st_mode & 0o777 == 0o755
    conf = conflist(host)
    assert conf["plugins"][0]["mtu"] == 1442 and conf["plugins"][1]["domainName"] == "node-a.pycni.test"
    assert not [p for p in host.net.iterdir() if p.name != CONF], "temp files left in the conf dir"
    events = [json.loads(line) for line in first.stderr.decode().splitlines()]
    written = [e for e in events if e["event"] in ("binary_installed", "conflist_written")]
    # every zipapp, pycni-loopback once more as `loopback` (the bin dir had none), the conflist
    assert (host.bin / "loopback").read_bytes() == (host.src / "pycni-loopback").read_bytes()
    assert len(written) == len(list(host.src.iterdir())) + 2 and all(e.get("file") for e in written)

    before = host.snapshot()
    again = run_once(host, *args)
    assert again.returncode == 0, again.stderr.decode()
    inst = start(*args, "--resync-seconds", "0.2")
    inst.wait_ready()
    time.sleep(0.6)  # a few resyncs
    assert inst.stop() == 0
    assert host.snapshot() == before, "a restart with nothing changed must write nothing"
    assert not [e for e in inst.events() if e["event"] in ("binary_installed", "conflist_written")]


def test_api_edit_reaches_the_file_within_2s(host: Host, start: Callable[..., Installer],
                                             api: Tuple[FakeKubeAPI, Path]) -> None:
    fake, kubeconfig = api
    fake.put_node("node-b", ["10.244.3.0/24", "fd00:10:244:3::/64"])
    fake.put_configmap(NS, CM, {KEY: template("cni0")})
    inst = start(*api_args("node-b"), kubeconfig=kubeconfig)
    inst.wait_ready()
    conf = conflist(host)
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]
    assert isinstance(conf["plugins"][0]["mtu"], int)
    assert fake.requests_for("configmaps", watch=True)[0].query["fieldSelector"] == f"metadata.name={CM}"
    assert fake.requests_for("configmaps")[0].headers.get("authorization") == "Bearer fake-token"
    delays = []
    for bridge in ("br-one", "br-two", "br-three"):
        t0 = time.monotonic()
        fake.put_configmap(NS, CM, {KEY: template(bridge)})
        wait_for(lambda: host.conflist.exists() and conflist(host)["plugins"][0]["bridge"] == bridge, 5,
                 f"bridge {bridge} in the conflist")
        delays.append(time.monotonic() - t0)
    assert max(delays) < 2.0, delays
    digest = hashlib.sha256(host.conflist.read_bytes()).hexdigest()
    wait_for(lambda: inst.metrics().get(f'pycni_installer_config_info{{sha256="{digest}"}}') == 1, 5, "hash metric")
    m = inst.metrics()
    assert m['pycni_installer_syncs_total{result="written"}'] >= 4
    assert m["pycni_installer_last_successful_sync_timestamp_seconds"] > time.time() - 60
    assert m["pycni_installer_ready"] == 1


def test_kubelet_volume_update_propagates(host: Host, start: Callable[..., Installer]) -> None:
    kubelet_update(host.volume, {KEY: template("cni0", STATIC_TEMPLATE), "other-key": "x"})
    inst = start("--config-dir", str(host.volume), "--node-name", "node-c")
    inst.wait_ready()
    assert conflist(host)["plugins"][0]["bridge"] == "cni0"
    assert not kubelet_update(host.volume, {KEY: template("cni0", STATIC_TEMPLATE), "other-key": "x"})
    for bridge in ("br-vol1", "br-vol2"):
        t0 = time.monotonic()
        assert kubelet_update(host.volume, {KEY: template(bridge, STATIC_TEMPLATE)})  # also drops other-key
        wait_for(lambda: conflist(host)["plugins"][0]["bridge"] == bridge, 5, f"{bridge} from the volume")
        assert time.monotonic() - t0 < 2.0
    assert not (host.volume / "other-key").exists()
    assert len([p for p in host.volume.iterdir() if p.name.startswith("..2")]) == 1


def test_invalid_configs_are_rejected_and_the_old_file_kept(host: Host, start: Callable[..., Installer],
                                                            api: Tuple[FakeKubeAPI, Path]) -> None:
    fake, kubeconfig = api
    fake.put_node("node-d", ["10.244.4.0/24"])
    fake.put_configmap(NS, CM, {KEY: template("cni-good")})
    inst = start(*api_args("node-d"), kubeconfig=kubeconfig)
    inst.wait_ready()
    good = host.conflist.read_bytes()
    bad_plugin_conf = template("cni-good").replace("    isGateway: true\n", "    isGateway: true\n    args: 5\n")
    cases = [
        ("parse", '{"cniVersion": "1.0.0", "name": "pycni", "plugins": [', "not valid JSON"),
        ("missing_plugin", template("cni-good").replace("type: pycni-dns", "type: no-such-plugin"),
         "'no-such-plugin' is not an executable"),
        ("shape", template("cni-good").replace("cniVersion: 1.0.0", "cniVersion: 9.9.9"), "unsupported cniVersion"),
        ("shape", template("cni-good").replace("name: pycni", "name: bad/name"), "invalid network name"),
        ("plugin_config", bad_plugin_conf, "plugins[0] (pycni-bridge): args: expected dict"),
    ]
    from pycni.plugins.ipam.hostlocal.plugin import PLUGIN as hostlocal
    from pycni.plugins.core.plugin import Plugin

    if type(hostlocal).load_config is not Plugin.load_config:  # host-local's own checks exist
        cases.append(("plugin_config", template("cni-good").replace(
            '"__POD_CIDR_RANGES__"', '[[{"subnet": "10.1.2.0/33"}]]'), "10.1.2.0/33"))
    for n, (kind, text, reason) in enumerate(cases, 1):
        fake.put_configmap(NS, CM, {KEY: text})
        wait_for(lambda: inst.get("/readyz")[0] == 503, 5, f"{kind} rejection on /readyz")
        code, body = inst.get("/readyz")
        assert reason in body and kind in body, body
        assert host.conflist.read_bytes() == good, "the last good file must stay"
        m = inst.metrics()
        assert m[f'pycni_installer_rejections_total{{kind="{kind}"}}'] >= 1
        assert [k for k in m if k.startswith("pycni_installer_config_rejected{") and reason.replace('"', '\\"') in k]
        assert m["pycni_installer_ready"] == 0
        events = wait_for(lambda: [e for e in fake.list("events", NS) if reason in e["message"]], 5,
                          f"an Event for {kind}")
        event = events[0]
        assert event["involvedObject"]["kind"] == "ConfigMap" and event["involvedObject"]["name"] == CM
        assert event["involvedObject"]["uid"] == fake.get("configmaps", CM, NS)["metadata"]["uid"]
        assert event["reason"] == "ConfigRejected" and event["type"] == "Warning"
        assert "node node-d" in event["message"] and event["source"]["host"] == "node-d"
        assert [e for e in inst.events() if e["event"] == "config_rejected" and reason in e["why"]]
        # back to a good config: ready again
        fake.put_configmap(NS, CM, {KEY: template(f"cni-ok{n}")})
        wait_for(inst.ready, 5, "ready after a good config")
        fake.put_configmap(NS, CM, {KEY: template("cni-good")})
        wait_for(lambda: host.conflist.read_bytes() == good, 5, "good config back")
    assert len(fake.list("events", NS)) == len(cases), "one Event per rejected input, not one per resync"


def test_late_pod_cidr(host: Host, start: Callable[..., Installer], api: Tuple[FakeKubeAPI, Path]) -> None:
    fake, kubeconfig = api
    fake.put_configmap(NS, CM, {KEY: template()})
    inst = start(*api_args("node-e"), kubeconfig=kubeconfig)
    wait_for(lambda: "waiting for node node-e to be registered" in inst.get("/readyz")[1], 20, "wait for registration")
    fake.put_node("node-e")  # registered, no podCIDR yet
    wait_for(lambda: "waiting for node node-e to get a podCIDR" in inst.get("/readyz")[1], 5, "wait for podCIDR")
    assert inst.get("/readyz")[0] == 503 and not host.conflist.exists()
    assert all((host.bin / p.name).exists() for p in host.src.iterdir()), "binaries go in first"
    t0 = time.monotonic()
    fake.put_node("node-e", ["10.244.9.0/24"])
    wait_for(host.conflist.exists, 5, "conflist once the podCIDR arrives")
    assert time.monotonic() - t0 < 2.0
    assert conflist(host)["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.9.0/24"}]]
    wait_for(inst.ready, 5, "ready")


def test_watch_drop_and_410_gone_are_recovered(host: Host, start: Callable[..., Installer],
                                              api: Tuple[FakeKubeAPI, Path]) -> None:
    fake, kubeconfig = api
    fake.put_node("node-f", ["10.244.5.0/24"])
    fake.put_configmap(NS, CM, {KEY: template("br-0")})
    inst = start(*api_args("node-f"), kubeconfig=kubeconfig)
    inst.wait_ready()
    fake.wait_for_watch("configmaps")

    def lists() -> int:
        return len(fake.requests_for("configmaps", watch=False))

    def edit_arrives(bridge: str) -> None:
        t0 = time.monotonic()
        fake.put_configmap(NS, CM, {KEY: template(bridge)})
        wait_for(lambda: conflist(host)["plugins"][0]["bridge"] == bridge, 5, bridge)
        assert time.monotonic() - t0 < 2.0

    # 1. connection cut mid-stream: watch again from the last resourceVersion, no relist
    listed = lists()
    watched_rv = fake.resource_version
    assert fake.drop_watches() >= 1
    edit_arrives("br-1")
    assert lists() == listed
    rewatch = fake.requests_for("configmaps", watch=True)[-1]
    assert int(rewatch.query["resourceVersion"]) == watched_rv
    # 2. the last resourceVersion was compacted away: 410 Gone in the stream -> list again
    fake.wait_for_watch("configmaps")
    fake.put_configmap(NS, "unrelated", {"x": "1"})  # moves the global resourceVersion on
    fake.compact()
    fake.drop_watches()
    edit_arrives("br-2")
    assert lists() == listed + 1
    assert [e for e in inst.events() if e["event"] == "watch_expired"]
    # 3. bookmarks move the resourceVersion on, so a compaction after one costs no relist
    fake.wait_for_watch("configmaps")
    fake.put_configmap(NS, "unrelated", {"x": "2"})
    fake.send_bookmarks()
    time.sleep(0.3)
    fake.compact()
    fake.drop_watches()
    edit_arrives("br-3")
    assert lists() == listed + 1
    m = inst.metrics()
    assert m['pycni_installer_watch_restarts_total{source="configmap",cause="gone"}'] == 1
    assert m['pycni_installer_watch_restarts_total{source="configmap",cause="dropped"}'] >= 1


def test_library_warnings_are_json_lines(host: Host, start: Callable[..., Installer], tmp_path: Path) -> None:
    """An API server that refuses connections makes urllib3 (under the kubernetes client) log its
    "Retrying ..." warnings: they come out as JSON lines of the installer's log, like its own events
    (before, Python's last-resort handler printed them as plain text)."""
    with FakeKubeAPI() as gone:
        kubeconfig = gone.write_kubeconfig(tmp_path / "kubeconfig-refused")
    inst = start(*api_args("node-l"), kubeconfig=kubeconfig)
    wait_for(lambda: any(e["event"] == "watch_dropped" for e in inst.events()), 20, "a failed watch")
    inst.stop()
    lines = inst.logs_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines), inst.logs_text()
    retries = [json.loads(line) for line in lines if '"urllib3.' in line]
    assert retries and all(e["level"] == "warning" and e["event"] == "log" and e["logger"].startswith("urllib3.")
                           and "Retrying" in e["message"] for e in retries), retries


def test_resync_restores_deleted_conflist_and_binary(host: Host, start: Callable[..., Installer]) -> None:
    kubelet_update(host.volume, {KEY: template(text=STATIC_TEMPLATE)})
    inst = start("--config-dir", str(host.volume), "--node-name", "node-g", "--resync-seconds", "0.3")
    inst.wait_ready()
    good = host.conflist.read_bytes()
    host.conflist.unlink()
    (host.bin / "pycni-bridge").write_bytes(b"#!/bin/sh\nexit 1\n")
    wait_for(lambda: host.conflist.exists() and host.conflist.read_bytes() == good, 3, "conflist restored")
    wait_for(lambda: (host.bin / "pycni-bridge").read_bytes() == (host.src / "pycni-bridge").read_bytes(), 3,
             "binary restored")
    logged = wait_for(lambda: [e for e in inst.events() if e["event"] == "conflist_written"
                               and e["why"].startswith("resync")], 3, "the repair logged")
    assert logged[-1]["file"] == str(host.conflist)


def test_sigterm_leaves_files_and_uninstall_removes_only_ours(host: Host, start: Callable[..., Installer]) -> None:
    foreign = {host.bin / "bridge": b"#!/bin/sh\n", host.bin / "pycni-custom": b"#!/bin/sh\n",
               host.net / "05-other.conflist": b'{"name": "other"}', host.net / "notes.txt": b"keep"}
    for path, data in foreign.items():
        path.write_bytes(data)
    kubelet_update(host.volume, {KEY: template(text=STATIC_TEMPLATE)})
    inst = start("--config-dir", str(host.volume), "--node-name", "node-h", "--exclusive")
    inst.wait_ready()
    assert not (host.net / "05-other.conflist").exists()
    assert (host.net / "05-other.conflist.pycni-aside").read_bytes() == foreign[host.net / "05-other.conflist"]
    before = host.snapshot()
    assert inst.stop(signal.SIGTERM) == 0
    assert host.snapshot() == before, "SIGTERM must leave every file in place"
    assert [e for e in inst.events() if e["event"] == "stopping"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYCNI_")}
    proc = subprocess.run([sys.executable, "-m", "pycni.installer", "uninstall", *host.args()],
                          env=env, cwd=str(ROOT), stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    left = sorted(p.name for d in (host.bin, host.net) for p in d.iterdir())
    assert left == sorted(p.name for p in foreign), left
    for path, data in foreign.items():
        assert path.read_bytes() == data
