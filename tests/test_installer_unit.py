"""pycni-installer's parts in-process: binaries, render, validate, writer, volume and API sources,
health, settings, and the fake API server itself (driven by the real `kubernetes` client)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import pytest

from helpers import exec_plugin, plugin_env
from k8s_fake_api import FakeKubeAPI
from test_installer_e2e import kubelet_update, wait_for

from pycni.installer import mtu as mtu_mod
from pycni.installer.binaries import BinaryError, BinaryInstaller
from pycni.installer.health import Status
from pycni.installer.kube import api_client
from pycni.installer.log import Log
from pycni.installer.nodes import NodeSource
from pycni.installer.render import NodeFacts, TemplateError, WaitingForNode, parse_template, render
from pycni.installer.settings import parse
from pycni.installer.source_api import ConfigMapSource
from pycni.installer.source_volume import VolumeSource
from pycni.installer.validate import ValidationError, validate
from pycni.installer.writer import ConfWriter

QUIET = Log("error")


# ---- binaries ----------------------------------------------------------------------------------
def with_zip_comment(zipapp: bytes, comment: bytes) -> bytes:
    """A distinct but equally valid zipapp: the same archive with a comment in its end record."""
    assert zipapp[-22:-18] == b"PK\x05\x06" and zipapp[-2:] == b"\0\0", "expected an archive without comment"
    return zipapp[:-2] + len(comment).to_bytes(2, "little") + comment


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


EXEC_LOOP = """
import json, os, subprocess, sys
target, stop_file, stop_at_first = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
execs, failures = 0, []
progress = os.path.join(os.path.dirname(stop_file), "execs-%d" % os.getpid())
while not os.path.exists(stop_file):
    try:
        proc = subprocess.run([target], input=b"", stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        out = json.loads(proc.stdout)
        if proc.returncode != 0 or "1.1.0" not in out.get("supportedVersions", []):
            failures.append("rc=%s out=%r err=%r" % (proc.returncode, out, proc.stderr[-300:]))
    except Exception as exc:  # non-JSON stdout, exec failure (ENOENT, ETXTBSY...)
        failures.append("%s: %s" % (type(exc).__name__, exc))
    execs += 1
    with open(progress, "w") as f:
        f.write(str(execs))
    if failures and stop_at_first:
        open(stop_file, "w").close()
print(json.dumps({"execs": execs, "failures": failures}))
"""


def _exec_while_replacing(tmp_path: Path, bin_dir: Path, install: Callable[[Path, Path], int],
                          seconds: float, stop_at_first_failure: bool = False,
                          min_execs: int = 0, min_copies: int = 0) -> Tuple[int, int, List[str]]:
    """Two threads exec the installed plugin (CNI_COMMAND=VERSION) in a loop while `install` keeps
    copying a source that alternates between two builds, for `seconds` and at least `min_execs`
    execs and `min_copies` copies (a loaded machine is slow at either; capped at 60 s).
    Returns (execs, copies, failures)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    original = (bin_dir / "pycni-host-local").read_bytes()
    variant = with_zip_comment(original, b"pycni installer test variant")
    (src / "pycni-host-local").write_bytes(original)
    (src / "pycni-host-local").chmod(0o755)
    install(src, dst)
    target = dst / "pycni-host-local"
    # The exec loops run in another process, as a runtime does: forked children of this process
    # could inherit the installer's temp file open for writing, and exec'ing it would then fail
    # with ETXTBSY for a reason no node has.
    stop_file = tmp_path / "stop"
    loops = [subprocess.Popen([sys.executable, "-c", EXEC_LOOP, str(target), str(stop_file),
                               "1" if stop_at_first_failure else "0"],
                              env=plugin_env("VERSION"), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    copies, n = 0, 0
    deadline, cap = time.monotonic() + seconds, time.monotonic() + 60

    def execs_so_far() -> int:
        return sum(int(f.read_text() or 0) for f in tmp_path.glob("execs-*"))

    try:
        while (time.monotonic() < deadline or execs_so_far() < min_execs or copies < min_copies) \
                and time.monotonic() < cap \
                and not stop_file.exists():
            _replace(src / "pycni-host-local", variant if n % 2 == 0 else original)
            n += 1
            copies += install(src, dst)
    finally:
        stop_file.touch()
        results = [json.loads(loop.communicate(timeout=120)[0]) for loop in loops]
    execs = sum(r["execs"] for r in results)
    failures = [f for r in results for f in r["failures"]]
    assert target.read_bytes() in (original, variant)
    return execs, copies, failures


def test_binary_replaced_while_being_executed(tmp_path: Path, bin_dir: Path) -> None:
    variant = with_zip_comment((bin_dir / "pycni-host-local").read_bytes(), b"x")
    probe = tmp_path / "probe"
    probe.write_bytes(variant)
    probe.chmod(0o755)
    out, rc, _ = exec_plugin(probe, plugin_env("VERSION"), b"")
    assert rc == 0 and out["cniVersion"], "the variant build must itself be a working plugin"

    installer = BinaryInstaller(tmp_path / "src", tmp_path / "dst", QUIET)
    execs, copies, failures = _exec_while_replacing(
        tmp_path, bin_dir, lambda s, d: len(installer.sync("test").copied),
        seconds=4.0, min_execs=40, min_copies=200)
    assert not failures, failures[:3]
    # Counts, not a ratio of the two loops' speeds: that ratio is the machine's load, not the installer.
    assert execs >= 40 and copies >= 200, (execs, copies)
    assert not [p for p in (tmp_path / "dst").iterdir() if p.name.startswith(".") and "tmp" in p.name]


def test_exec_loop_catches_an_in_place_copy(tmp_path: Path, bin_dir: Path) -> None:
    """The harness above can fail: an in-place copy (what the installer must not do) is caught."""

    def naive(src: Path, dst: Path) -> int:
        try:
            shutil.copyfile(src / "pycni-host-local", dst / "pycni-host-local")
        except OSError as exc:  # the kernel refused to open it for writing mid-exec: try again
            if exc.errno != errno.ETXTBSY:
                raise
            return 0
        os.chmod(dst / "pycni-host-local", 0o755)
        return 1

    _, _, failures = _exec_while_replacing(tmp_path, bin_dir, naive, seconds=15.0, stop_at_first_failure=True)
    assert failures


def test_binaries_skip_identical_and_fix_modes(tmp_path: Path, bin_dir: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    installer = BinaryInstaller(bin_dir, dst, QUIET)
    # pycni-loopback also as `loopback`, the name runtimes exec (the bin dir had none)
    assert sorted(installer.sync("t").copied) == sorted([p.name for p in bin_dir.iterdir()] + ["loopback"])
    inodes = {p.name: p.stat().st_ino for p in dst.iterdir()}
    assert installer.sync("t").copied == [] and BinaryInstaller(bin_dir, dst, QUIET).sync("t").copied == []
    assert {p.name: p.stat().st_ino for p in dst.iterdir()} == inodes
    os.chmod(dst / "pycni-dns", 0o644)
    assert installer.sync("t").copied == ["pycni-dns"] and (dst / "pycni-dns").stat().st_mode & 0o777 == 0o755
    (tmp_path / "empty").mkdir()
    with pytest.raises(BinaryError, match="no plugin binaries"):
        BinaryInstaller(tmp_path / "empty", dst, QUIET).sync("t")
    with pytest.raises(BinaryError, match="does not exist"):
        BinaryInstaller(bin_dir, tmp_path / "missing", QUIET).sync("t")


# ---- render ------------------------------------------------------------------------------------
TEMPLATE = """
cniVersion: 1.0.0
name: net-__NODE_NAME__
plugins:
  - type: pycni-bridge
    mtu: __MTU__
    note: "v4 __POD_CIDR_V4__ v6 __POD_CIDR_V6__ mtu __MTU__"
    ipam: {type: pycni-host-local, ranges: "__POD_CIDR_RANGES__"}
"""


def test_render_every_placeholder() -> None:
    facts = NodeFacts("node-1", ["10.244.1.0/24", "fd00:1::/64"], 1450)
    out = json.loads(render(parse_template(TEMPLATE), facts))
    plugin = out["plugins"][0]
    assert out["name"] == "net-node-1"
    assert plugin["mtu"] == 1450
    assert plugin["note"] == "v4 10.244.1.0/24 v6 fd00:1::/64 mtu 1450"
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]]
    assert render(parse_template(TEMPLATE), facts) == render(parse_template(TEMPLATE), facts)
    json_template = '{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x", "mtu": __MTU__}]}'
    assert json.loads(render(parse_template(json_template), facts))["plugins"][0]["mtu"] == 1450


def test_render_errors_and_waiting() -> None:
    with pytest.raises(WaitingForNode, match="node-1 to get a podCIDR"):
        render(parse_template(TEMPLATE), NodeFacts("node-1", [], 1500))
    with pytest.raises(TemplateError, match="no IPv6 podCIDR"):
        render(parse_template(TEMPLATE), NodeFacts("node-1", ["10.0.0.0/24"], 1500))
    with pytest.raises(TemplateError, match="no node name"):
        render(parse_template(TEMPLATE), NodeFacts("", None, 1500))
    with pytest.raises(TemplateError, match="whole JSON value"):
        render(parse_template('{"a": "x__POD_CIDR_RANGES__"}'), NodeFacts("n", ["10.0.0.0/24"], 1500))
    with pytest.raises(TemplateError) as err:
        parse_template('{"name": "x",')
    assert err.value.kind == "parse" and "not valid JSON" in str(err.value)
    with pytest.raises(TemplateError, match="not valid YAML"):
        parse_template("a: [b\nc: }")
    with pytest.raises(TemplateError, match="JSON cannot represent"):
        render(parse_template("when: 2024-01-01"), NodeFacts("n", None, 1500))


def test_mtu_from_default_route(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "ethA\t00000000\t0102000A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n"
        "ethB\t00000000\t0102000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "ethC\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n")
    assert mtu_mod.default_route_interface(proc) == "ethB"
    (proc / "route").write_text("Iface\tDestination\n")
    (proc / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth6\n")
    assert mtu_mod.default_route_interface(proc) == "eth6"
    sysnet = tmp_path / "sys"
    (sysnet / "eth6").mkdir(parents=True)
    (sysnet / "eth6" / "mtu").write_text("9000\n")
    assert mtu_mod.interface_mtu("eth6", sysnet) == 9000
    mtu, source = mtu_mod.host_mtu()
    assert 68 <= mtu <= 65536 and source


# ---- validate ----------------------------------------------------------------------------------
def _conflist(**over: Any) -> bytes:
    conf = {"cniVersion": "1.0.0", "name": "pycni", "plugins": [
        {"type": "pycni-bridge", "bridge": "cni0", "ipam": {"type": "pycni-host-local",
                                                          "ranges": [[{"subnet": "10.9.0.0/24"}]]}},
        {"type": "pycni-dns"}]}
    conf.update(over)
    return json.dumps(conf).encode()


@pytest.mark.parametrize("data,kind,message", [
    (b"{", "parse", "not valid JSON"),
    (b"[]", "shape", "must be a JSON object"),
    (json.dumps({"cniVersion": "1.0.0", "name": "x", "type": "bridge"}).encode(), "shape", "not a conflist"),
    (_conflist(name=""), "shape", "network name is missing"),
    (_conflist(name="a b"), "shape", "invalid network name"),
    (_conflist(cniVersion="0.2.0"), "shape", "unsupported cniVersion"),
    (_conflist(plugins=[]), "shape", "non-empty"),
    (_conflist(plugins=[{"bridge": "x"}]), "shape", "has no \"type\""),
    (_conflist(plugins=[{"type": "nope"}]), "missing_plugin", "'nope' is not an executable"),
    (_conflist(plugins=[{"type": "pycni-bridge", "ipam": {"type": "host-local"}}]), "missing_plugin",
     "'host-local' is not an executable"),
    (_conflist(plugins=[{"type": "pycni-bridge", "ipam": "x"}]), "plugin_config", "ipam: expected dict"),
    (_conflist(plugins=[{"type": "pycni-dns", "runtimeConfig": []}]), "plugin_config", "runtimeConfig"),
])
def test_validate_rejects(bin_dir: Path, data: bytes, kind: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate(data, bin_dir)
    assert err.value.kind == kind and message in err.value.message, err.value.message


def test_validate_accepts_and_runs_plugin_checks(bin_dir: Path, tmp_path: Path) -> None:
    assert validate(_conflist(), bin_dir)["name"] == "pycni"
    not_executable = tmp_path / "bin"
    shutil.copytree(bin_dir, not_executable)
    os.chmod(not_executable / "pycni-dns", 0o644)
    with pytest.raises(ValidationError, match="pycni-dns"):
        validate(_conflist(), not_executable)
    from pycni.plugins.ipam.hostlocal.plugin import PLUGIN as hostlocal
    from pycni.plugins.core.plugin import Plugin

    if type(hostlocal).load_config is not Plugin.load_config:  # host-local's own checks are in
        bad = _conflist(plugins=[{"type": "pycni-bridge", "ipam": {"type": "pycni-host-local",
                                                                   "ranges": [[{"subnet": "10.1.2.0/33"}]]}}])
        with pytest.raises(ValidationError, match="10.1.2.0/33"):
            validate(bad, bin_dir)


# ---- writer ------------------------------------------------------------------------------------
def test_writer_atomic_skip_and_exclusive(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    writer = ConfWriter(conf_dir, "10-pycni.conflist", QUIET)
    assert writer.write(b"one", "t") and writer.path.read_bytes() == b"one"
    ino = writer.path.stat().st_ino
    assert not writer.write(b"one", "t") and writer.path.stat().st_ino == ino
    assert writer.write(b"two", "t") and writer.path.stat().st_ino != ino
    assert writer.path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-pycni.conflist"]
    for name in ("00-a.conf", ".hidden.json", "99-b.conflist", "notes.txt"):
        (conf_dir / name).write_text(name)
    (conf_dir / "00-a.conf.pycni-aside").write_text("an older aside file")
    moved = writer.move_aside_others()
    assert sorted(moved) == [(".hidden.json", ".hidden.json.pycni-aside"), ("00-a.conf", "00-a.conf.pycni-aside.1"),
                             ("99-b.conflist", "99-b.conflist.pycni-aside")]
    assert [p.name for p in writer.others()] == []
    writer.restore(moved)
    for name in ("00-a.conf", ".hidden.json", "99-b.conflist", "notes.txt"):
        assert (conf_dir / name).read_text() == name
    assert (conf_dir / "00-a.conf.pycni-aside").read_text() == "an older aside file"


# ---- settings ----------------------------------------------------------------------------------
def test_settings_env_and_flags() -> None:
    s = parse([], {})
    assert (str(s.source_dir), str(s.bin_dir), str(s.conf_dir), s.conf_name) == \
        ("/opt/pycni/bin", "/host/opt/cni/bin", "/host/etc/cni/net.d", "10-pycni.conflist")
    assert str(s.config_dir) == "/etc/pycni/config" and s.config_key == "conflist.yaml"
    assert s.configmap is None and not s.watch_api and s.listen == ("0.0.0.0", 9765)
    assert (s.resync_seconds, s.exclusive, s.mtu, s.log_level, s.command, s.once) == (60, False, 0, "info", "run", False)
    env = {"PYCNI_CONFIGMAP": "kube-system/pycni", "NODE_NAME": "n1", "PYCNI_EXCLUSIVE": "true",
           "PYCNI_CONFIG_DIR": "", "PYCNI_MTU": "1400", "PYCNI_LISTEN": "127.0.0.1:1234"}
    s = parse([], env)
    assert s.configmap == ("kube-system", "pycni") and s.watch_api and s.node_name == "n1" and s.exclusive
    assert s.config_dir is None and s.mtu == 1400 and s.listen == ("127.0.0.1", 1234)
    s = parse(["uninstall", "--no-watch-api", "--node-name", "n2", "--listen", "off"], {**env, "PYCNI_NODE_NAME": "n3"})
    assert s.command == "uninstall" and not s.watch_api and s.node_name == "n2" and s.listen is None
    assert parse([], {**env, "PYCNI_NODE_NAME": "n3"}).node_name == "n3"
    for bad in (["--configmap", "noslash"], ["--watch-api"], ["--conf-name", "x.conf"], ["--resync-seconds", "0"]):
        with pytest.raises(ValueError):
            parse(bad, {})
    with pytest.raises(ValueError):
        parse([], {"PYCNI_EXCLUSIVE": "maybe"})


# ---- health ------------------------------------------------------------------------------------
METRIC_LINE = re.compile(r'^[a-z_]+(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+]+$')


def test_health_status_and_metrics_format() -> None:
    status = Status()
    assert status.ready() == (False, "starting")
    status.update(binaries_ok=True, config_ok=True, config_hash="ab" * 32, last_success=1700000000.5)
    assert status.ready() == (True, "ok")
    status.update(rejection=("plugin_config", 'plugins[0]: bad "value"\nsecond line'))
    ok, reason = status.ready()
    assert not ok and "plugin_config" in reason and "bad" in reason
    status.count("syncs", "written")
    status.count("rejections", "plugin_config")
    status.count("watch_restarts", ("configmap", "gone"))
    text = status.metrics()
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or METRIC_LINE.match(line), line
    assert 'pycni_installer_syncs_total{result="written"} 1' in text
    assert "pycni_installer_last_successful_sync_timestamp_seconds 1700000000.500" in text
    assert f'pycni_installer_config_info{{sha256="{"ab" * 32}"}} 1' in text
    assert 'reason="plugins[0]: bad \\"value\\"\\nsecond line"} 1' in text
    assert 'pycni_installer_watch_restarts_total{source="configmap",cause="gone"} 1' in text



def _series(text: str) -> dict:
    """metric family -> set of its sample label sets ("" = unlabelled)."""
    out: dict = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, _, labelled = line.split(" ")[0].partition("{")
            out.setdefault(name, set()).add(labelled)
    return out


def _populated_status() -> Status:
    status = Status()
    status.update(rejection=("plugin_config", "bad"), config_hash="ab" * 32, binary_checks={"pycni-bridge": 1})
    for counter, label in (("syncs", "written"), ("rejections", "plugin_config"), ("binary_check_failures", "x"),
                           ("watch_restarts", ("configmap", "gone"))):
        status.count(counter, label)
    return status


def _populated_agent_status() -> Any:
    from pycni.agent.health import AgentStatus

    status = AgentStatus()
    status.update(backend="vxlan", unreachable={"node3": "no InternalIP"})
    for counter, label in (("syncs", "start"), ("sync_errors", "routes"), ("changes", ("route", "add")),
                           ("watch_restarts", "gone")):
        status.count(counter, label)
    return status


@pytest.mark.parametrize("populated", [_populated_status, _populated_agent_status], ids=["installer", "agent"])
def test_labelled_metric_families_have_no_placeholder_series(populated: Callable[[], Any]) -> None:
    """A family that is labelled once it has samples has no unlabelled `{"": 0}` series before: it would
    vanish at the first real sample (Prometheus sees one series go stale and another appear). A real
    label set at 0 (`syncs_total{result="written"} 0`) stays and is fine."""
    full = populated()
    fresh = _series(type(full)().metrics())
    labelled = {name for name, label_sets in _series(full.metrics()).items() if label_sets != {""}}
    assert labelled, "the populated status has labelled families"
    placeholders = sorted(name for name in labelled if "" in fresh.get(name, ()))
    assert not placeholders, f"labelled families with a series before their first sample: {placeholders}"


# ---- the volume source -------------------------------------------------------------------------
@pytest.mark.parametrize("inotify", [True, False])
def test_volume_source_follows_kubelet_updates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inotify: bool) -> None:
    if not inotify:  # the polling fallback
        import pycni.installer.source_volume as sv

        def no_inotify() -> None:
            raise OSError("inotify disabled by the test")

        monkeypatch.setattr(sv, "Inotify", no_inotify)
    volume = tmp_path / "vol"
    volume.mkdir()
    kubelet_update(volume, {"conflist.yaml": "one"})
    seen: List[Optional[str]] = []
    stop = threading.Event()
    source = VolumeSource(volume, "conflist.yaml", QUIET, lambda: seen.append(source.text()), stop,
                          poll_seconds=0.1).start()
    try:
        time.sleep(0.2)
        for text in ("two", "three"):
            t0 = time.monotonic()
            kubelet_update(volume, {"conflist.yaml": text})
            wait_for(lambda: seen and seen[-1] == text, 3, text)
            assert time.monotonic() - t0 < (0.5 if inotify else 1.5)
        kubelet_update(volume, {"other": "x"})  # the key removed
        wait_for(lambda: seen[-1] is None, 3, "key removed")
    finally:
        stop.set()
        source.thread.join(timeout=10)


# ---- API sources against the fake server -------------------------------------------------------
@pytest.fixture
def fake_api(tmp_path: Path) -> Any:
    with FakeKubeAPI(bookmark_interval=0.2) as fake:
        fake.kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        yield fake


def test_configmap_and_node_sources(fake_api: FakeKubeAPI) -> None:
    client = api_client({"KUBECONFIG": str(fake_api.kubeconfig)})
    stop = threading.Event()
    wakes: List[int] = []
    restarts: List[str] = []
    fake_api.put_configmap("ns", "other", {"k": "wrong one"})
    cm = ConfigMapSource(client, "ns", "cm", "k", QUIET, lambda: wakes.append(1), stop, 300, restarts.append).start()
    node = NodeSource(client, "n1", QUIET, lambda: wakes.append(1), stop, 300, restarts.append).start()
    try:
        wait_for(lambda: cm.synced and node.synced, 10, "first lists")
        assert cm.text() is None and node.known_cidrs() == [] and not node.exists
        fake_api.put_configmap("ns", "cm", {"k": "v1"})
        wait_for(lambda: cm.text() == "v1", 3, "ADDED")
        fake_api.put_node("n2", ["10.0.2.0/24"])
        fake_api.put_node("n1", ["10.0.1.0/24"])
        wait_for(lambda: node.known_cidrs() == ["10.0.1.0/24"], 3, "node podCIDR")
        assert cm.involved_object()["uid"] == fake_api.get("configmaps", "cm", "ns")["metadata"]["uid"]
        time.sleep(0.5)  # bookmarks flow (every 0.2 s) and move the resourceVersion on
        fake_api.put_configmap("ns", "other", {"k": "x"})
        time.sleep(0.4)
        fake_api.compact()
        fake_api.drop_watches()
        fake_api.delete("configmaps", "cm", "ns")
        wait_for(lambda: cm.text() is None and cm.obj is None, 3, "DELETED")
        assert "gone" not in restarts and "dropped" in restarts
    finally:
        stop.set()
        fake_api.drop_watches()


def test_fake_api_speaks_the_watch_protocol(fake_api: FakeKubeAPI) -> None:
    """The fake's protocol as the real client sees it: lists, field selectors, replay, 410, bookmarks."""
    from kubernetes import client as k8s, watch

    core = k8s.CoreV1Api(api_client({"KUBECONFIG": str(fake_api.kubeconfig)}))
    fake_api.put_configmap("ns", "a", {"x": "1"})
    fake_api.put_configmap("ns", "b", {"x": "1"})
    listed = core.list_namespaced_config_map("ns", field_selector="metadata.name=a")
    assert [i.metadata.name for i in listed.items] == ["a"] and listed.metadata.resource_version == "102"
    fake_api.put_configmap("ns", "a", {"x": "2"})
    fake_api.put_configmap("ns", "b", {"x": "2"})
    events = [(e["type"], e["raw_object"]["metadata"]["resourceVersion"]) for e in watch.Watch().stream(
        core.list_namespaced_config_map, "ns", field_selector="metadata.name=a", resource_version="102",
        allow_watch_bookmarks=True, timeout_seconds=1)]
    assert events[0] == ("MODIFIED", "103") and {t for t, _ in events[1:]} <= {"BOOKMARK"} and len(events) > 1
    assert [e["type"] for e in watch.Watch().stream(core.list_namespaced_config_map, "ns",
                                                    timeout_seconds=1)] == ["ADDED", "ADDED"]
    fake_api.compact()
    with pytest.raises(k8s.exceptions.ApiException) as err:
        list(watch.Watch().stream(core.list_namespaced_config_map, "ns", resource_version="102", timeout_seconds=1))
    assert err.value.status == 410
    with pytest.raises(k8s.exceptions.ApiException) as err:
        core.read_namespaced_config_map("nope", "ns")
    assert err.value.status == 404
    body = {"metadata": {"generateName": "a."}, "involvedObject": {"kind": "ConfigMap", "name": "a"}, "reason": "R"}
    created = core.create_namespaced_event("ns", body)
    assert created.metadata.name.startswith("a.") and created.metadata.namespace == "ns"
