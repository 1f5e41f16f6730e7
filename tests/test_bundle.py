"""The CPython bundle (installer/bundle.py, installer/runtime.py): nodes without python3 run the plugins.

The bundle is built here from Debian's /usr/bin/python3 (the image builds it from its own).
Fake host roots as in test_installer_nodecheck.py: a root with nothing but a static busybox
as /bin/sh (no libc, no loader, no python3) gets the bundle from a real installer process, the
node check passes, and a real bridge + host-local ADD/DEL runs there (chroot, a test netns).
"""
from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from helpers import NODE_PYTHON, alive, RUNTIME_PATH, ROOT, netns_path, other_python, sh, unique
from test_installer_e2e import KEY, kubelet_update, run_once
from test_installer_nodecheck import BUSYBOX, QUIET, FakeRoot, RootedHost

from pycni.installer.bundle import ID_FILE, build, command, disk_usage, tree_id, zipapp_code_path
from pycni.installer.nodecheck import NodeChecker
from pycni.installer.runtime import CURRENT, RUNTIME_DIR, RuntimeInstaller, in_use_by_process
from pycni.installer.state import STATE_NAME

NOT_CARRIED = ("test", "tkinter", "idlelib", "ensurepip", "lib2to3", "pydoc_data", "unittest", "distutils")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, bin_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "python"
    build(NODE_PYTHON, out, zipapp_code_path(bin_dir / "pycni-dns"))
    return out


class BareRoot(FakeRoot):
    """A host root with a static busybox as /bin/sh and nothing else: no /lib, no loader, no python3."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.path = base / "root"
        self.mounts: List[Path] = []
        (self.path / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, self.path / "bin" / "sh")
        for d in ("opt/cni/bin", "etc/cni/net.d"):
            (self.path / d).mkdir(parents=True, exist_ok=True)
        self.bind("/dev")
        self.bind("/proc", read_only=False)  # the bridge writes /proc/sys/net (of the netns it runs in)

    def noexec_bin_dir(self) -> None:
        target = self.path / "opt/cni/bin"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs", str(target)], check=True)
        self.mounts.append(target)


@pytest.fixture
def bare_root(tmp_path: Path) -> Iterator[BareRoot]:
    root = BareRoot(tmp_path / unique("br"))
    try:
        yield root
    finally:
        root.close()


def template(*plugins: str) -> str:
    chain: List[Dict[str, object]] = [{"type": "pycni-bridge", "bridge": "cni-bb", "ipam": {
        "type": "pycni-host-local", "ranges": [[{"subnet": "10.79.0.0/24"}]]}}]
    chain += [{"type": p} for p in plugins]
    return json.dumps({"cniVersion": "1.0.0", "name": "pycni", "plugins": chain})


def install(tmp_path: Path, bin_dir: Path, root: FakeRoot, bundle: Path, text: str) -> \
        "tuple[RootedHost, subprocess.CompletedProcess]":
    host = RootedHost(tmp_path, bin_dir, root.path)
    kubelet_update(host.volume, {KEY: text})
    proc = run_once(host, "--config-dir", str(host.volume), "--node-name", "node-b", "--runtime-bundle", str(bundle))
    return host, proc


def once_failure(proc: subprocess.CompletedProcess) -> str:
    lines = [json.loads(ln) for ln in proc.stderr.decode().splitlines() if '"once_failed"' in ln]
    assert proc.returncode == 1 and lines, proc.stderr.decode()
    return lines[0]["why"]


def chroot_plugin(root: Path, plugin: str, env: Dict[str, str], stdin: bytes, netns: str = "") -> \
        "tuple[dict, int, str]":
    """Exec /opt/cni/bin/<plugin> inside the root as a runtime would (bare env, from /), in `netns` if given."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.run(prefix + ["chroot", str(root), f"/opt/cni/bin/{plugin}"], input=stdin,
                          env={"PATH": RUNTIME_PATH, **env}, cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)
    out = proc.stdout.decode()
    return (json.loads(out) if out.strip() else {}), proc.returncode, proc.stderr.decode()


# ---- the bundle itself ---------------------------------------------------------------------
def test_bundle_is_self_contained_and_small(bundle: Path, tmp_path: Path) -> None:
    meta = json.loads((bundle / ID_FILE).read_text())
    assert meta["id"] == tree_id(bundle) and meta["machine"] == os.uname().machine
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    for lib in ("lib/ld.so", "lib/libc.so.6", "bin/python3.bin", "bin/python3", "lib/python3.11/os.pyc",
                "lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so"):
        assert lib in names, lib
    assert not [n for n in names if n.endswith(".py")], "byte-compiled, no sources"
    stdlib = [n.split("/", 2)[2] for n in names if n.startswith("lib/python3.11/")]
    assert not [n for n in stdlib if n.split("/")[0].split(".")[0] in NOT_CARRIED], stdlib
    # every library the interpreter and its extension modules load resolves inside the bundle
    elf = [bundle / "bin/python3.bin", *(bundle / "lib/python3.11/lib-dynload").iterdir()]
    for path in elf:
        listing = sh(str(bundle / "lib/ld.so"), "--inhibit-cache", "--library-path", str(bundle / "lib"),
                     "--list", str(path)).stdout.decode()
        resolved = [ln.split("=>")[1].split("(")[0].strip() for ln in listing.splitlines() if "=>" in ln]
        assert all(r.startswith(f"{bundle}/lib/") for r in resolved), listing
        assert resolved or path.name != "python3.bin", listing
    # it sees only itself: prefix, sys.path; with an empty environment
    proc = subprocess.run(command(bundle, "-I", "-S", "-c", "import sys, json, ctypes, socket, select; "
                                  "print(json.dumps([sys.prefix, sys.executable, sys.path]))"),
                          env={}, stdout=subprocess.PIPE, check=True)
    prefix, executable, path = json.loads(proc.stdout)
    assert prefix == str(bundle) and executable == f"{bundle}/bin/python3"
    assert path and all(p.startswith(f"{bundle}/lib/") for p in path), path
    tarball = tmp_path / "bundle.tar.gz"
    sh("tar", "czf", str(tarball), "-C", str(bundle.parent), bundle.name)
    on_disk, packed = disk_usage(bundle), tarball.stat().st_size
    print(f"bundle: {on_disk / 2**20:.1f} MiB on disk, {packed / 2**20:.1f} MiB as .tar.gz, {len(names)} files")
    assert on_disk < 16 * 2**20 and packed < 7 * 2**20, (on_disk, packed)


def test_builds_are_reproducible(bundle: Path, bin_dir: Path, tmp_path: Path) -> None:
    again = build(NODE_PYTHON, tmp_path / "again", zipapp_code_path(bin_dir / "pycni-dns"))
    assert again["id"] == json.loads((bundle / ID_FILE).read_text())["id"], "same input, same version dir"


@pytest.mark.parametrize("minor", ["3.9", "3.13"])
def test_bundles_of_other_cpythons_run_the_plugins(minor: str, tmp_path: Path, bin_dir: Path) -> None:
    """The module set is computed per interpreter (3.13's collections.abc is an alias file, 3.12 has
    _sha2, 3.9 links libpython): a bundle of each runs pycni-host-local ADD/DEL beside the zipapp."""
    python = other_python(minor)  # the newest patch release; skips when there is none
    bins = tmp_path / "bin"
    bins.mkdir()
    shutil.copy(bin_dir / "pycni-host-local", bins / "pycni-host-local")
    meta = build(python, bins / RUNTIME_DIR / "new", zipapp_code_path(bin_dir / "pycni-dns"))
    (bins / RUNTIME_DIR / "new").rename(bins / RUNTIME_DIR / str(meta["id"]))
    os.symlink(str(meta["id"]), bins / RUNTIME_DIR / CURRENT)
    conf = json.dumps({"cniVersion": "1.0.0", "name": "other", "type": "bridge", "ipam": {
        "type": "pycni-host-local", "dataDir": str(tmp_path / "leases"),
        "ranges": [[{"subnet": "10.79.9.0/24"}]]}}).encode()
    env = {"PATH": RUNTIME_PATH, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0",
           "PYCNI_CACHE_DIR": str(tmp_path / "cache"), "PYCNI_SERVER_SOCKET": "off"}
    for command_name in ("ADD", "DEL"):
        proc = subprocess.run([str(bins / "pycni-host-local")], input=conf, env=dict(env, CNI_COMMAND=command_name),
                              cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        if command_name == "ADD":
            assert json.loads(proc.stdout)["ips"][0]["address"] == "10.79.9.2/24"
    assert f"-{meta['python'].rsplit('.', 1)[0].replace('.', '')}" in "".join(os.listdir(tmp_path / "cache")), \
        "the payload was unpacked by the bundle's interpreter (its cache tag)"


# ---- the prelude: bundle, else python3, else the message ------------------------------------
def test_prelude_prefers_the_bundle_beside_it_then_python3(tmp_path: Path, bin_dir: Path) -> None:
    """A fake bundle whose loader is a script answering VERSION with a marker version: the prelude
    must run it rather than the node's python3, and fall back once it is gone or not executable."""
    bins = tmp_path / "bin"
    bins.mkdir()
    shutil.copy(bin_dir / "pycni-host-local", bins / "pycni-host-local")
    loader = bins / RUNTIME_DIR / "v1" / "lib" / "ld.so"
    loader.parent.mkdir(parents=True)
    argv = tmp_path / "argv"
    loader.write_text(f"#!/bin/sh\necho \"$*\" > {argv}\n"
                      "echo '{\"cniVersion\": \"1.1.0\", \"supportedVersions\": [\"9.9.9\"]}'\n")
    loader.chmod(0o755)
    os.symlink("v1", bins / RUNTIME_DIR / CURRENT)

    def version() -> dict:
        proc = subprocess.run([str(bins / "pycni-host-local")], input=b'{"cniVersion": "1.0.0"}',
                              env={"PATH": RUNTIME_PATH, "CNI_COMMAND": "VERSION"}, stdout=subprocess.PIPE,
                              check=True)
        return json.loads(proc.stdout)

    answer = version()
    assert answer["supportedVersions"] == ["9.9.9"], "the bundle beside the zipapp comes first"
    assert f"--library-path {bins}/{RUNTIME_DIR}/current/lib" in argv.read_text()
    assert f"{bins}/{RUNTIME_DIR}/current/bin/python3.bin -I -S -c" in argv.read_text()
    loader.chmod(0o644)
    assert "1.0.0" in version()["supportedVersions"], "a bundle that cannot run: the node's python3"
    shutil.rmtree(bins / RUNTIME_DIR)
    assert "1.0.0" in version()["supportedVersions"], "a zipapp dropped by hand: the node's python3, as before"


# ---- acceptance: a root with no libc and no python3 ----------------------------------------
def test_bare_root_gets_the_bundle_passes_the_check_and_runs_add_del(tmp_path: Path, bin_dir: Path, bundle: Path,
                                                                     bare_root: BareRoot, make_netns) -> None:
    root = bare_root.path
    assert not [d for d in ("lib", "lib64", "usr/lib", "usr/bin/python3") if (root / d).exists()]
    host, proc = install(tmp_path, bin_dir, bare_root, bundle, template("pycni-dns"))
    assert proc.returncode == 0, proc.stderr.decode()
    version = json.loads((bundle / ID_FILE).read_text())["id"]
    base = host.bin / RUNTIME_DIR
    assert os.readlink(base / CURRENT) == version and tree_id(base / version) == version
    events = [json.loads(ln) for ln in proc.stderr.decode().splitlines()]
    checked = {e["plugin"]: e["ok"] for e in events if e.get("event") == "binary_checked"}
    assert checked == {"pycni-bridge": True, "pycni-host-local": True, "pycni-dns": True}, checked
    assert [e for e in events if e.get("event") == "runtime_checked" and e["ok"]]
    manifest = json.loads((host.bin / STATE_NAME).read_text())
    assert manifest["runtime"] == {str(base / version): version}
    assert json.loads(host.conflist.read_text())["plugins"][0]["type"] == "pycni-bridge"

    # a real ADD and DEL of pycni-bridge + pycni-host-local inside the root (its own netns as the host)
    hostns, cns = make_netns("bh"), make_netns("bc")
    (root / netns_path(cns).lstrip("/")).parent.mkdir(parents=True)
    bare_root.bind(netns_path(cns))
    conf = json.dumps({"cniVersion": "1.0.0", "name": "bare", "type": "pycni-bridge", "bridge": "cni-bare",
                       "isGateway": True, "ipam": {"type": "pycni-host-local",
                                                   "ranges": [[{"subnet": "10.79.3.0/24"}]]}}).encode()
    env = {"CNI_CONTAINERID": "bare1", "CNI_NETNS": netns_path(cns), "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    result, rc, err = chroot_plugin(root, "pycni-bridge", dict(env, CNI_COMMAND="ADD"), conf, hostns)
    assert rc == 0, (result, err)
    assert result["ips"][0]["address"] == "10.79.3.2/24", result
    assert "10.79.3.2/24" in sh("ip", "-n", cns, "addr", "show", "eth0").stdout.decode()
    assert (root / "var/lib/cni/networks/bare/10.79.3.2").exists(), "host-local ran in the root too"

    # pycni-dns chained after it: its server re-execs its interpreter (sys.executable: the bundle's wrapper)
    dns_conf = json.dumps({"cniVersion": "1.0.0", "name": "bare", "type": "pycni-dns", "upstreams": ["192.0.2.53"],
                           "prevResult": result}).encode()
    dns, rc, err = chroot_plugin(root, "pycni-dns", dict(env, CNI_COMMAND="ADD"), dns_conf, hostns)
    assert rc == 0 and dns["dns"]["nameservers"] == ["10.79.3.1"], (dns, err)
    pid = int(next((root / "run").rglob("*.pid")).read_text())
    try:  # the server runs chrooted in the bare root: deleting namespaces would not stop it
        assert f"/{RUNTIME_DIR}/{version}/lib/libc.so.6" in Path(f"/proc/{pid}/maps").read_text(), \
            "the DNS server runs on the bundle (and so keeps its version from being collected)"
        _, rc, err = chroot_plugin(root, "pycni-dns", dict(env, CNI_COMMAND="DEL"), dns_conf, hostns)
        assert rc == 0, err
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the last DEL stops the server"
    finally:
        if alive(pid):  # only when the test failed before the DEL stopped it
            os.kill(pid, signal.SIGKILL)
    for _ in range(2):  # DEL, and again: idempotent
        result, rc, err = chroot_plugin(root, "pycni-bridge", dict(env, CNI_COMMAND="DEL"), conf, hostns)
        assert rc == 0 and not result, (result, err)
    assert sh("ip", "-n", cns, "link", "show", "eth0", check=False).returncode != 0
    assert not (root / "var/lib/cni/networks/bare/10.79.3.2").exists()

    # uninstall removes the bundle with the binaries
    env_un = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "PYCNI_"))}
    un = subprocess.run([sys.executable, "-m", "pycni.installer", "uninstall", *host.args()], env=env_un,
                        cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert un.returncode == 0, un.stderr.decode()
    assert not base.exists() and not (host.bin / "pycni-bridge").exists()


def test_debian_python_root_still_works(tmp_path: Path, bin_dir: Path, bundle: Path) -> None:
    """With the node's own python3 the bundle is installed too (and preferred); a zipapp dropped by hand
    elsewhere on that node runs with the node's python3, as before."""
    root = FakeRoot(tmp_path / unique("dr"), python38=False)
    try:
        real = os.path.realpath(NODE_PYTHON)
        root.bind("/usr/lib")
        root.bind(real)
        if not (root.path / "usr/bin/python3").exists():
            os.symlink(real, root.path / "usr/bin/python3")
        host, proc = install(tmp_path, bin_dir, root, bundle, template())
        assert proc.returncode == 0, proc.stderr.decode()
        assert (host.bin / RUNTIME_DIR / CURRENT).is_symlink()
        by_hand = root.path / "opt/by-hand"
        by_hand.mkdir()
        shutil.copy(bin_dir / "pycni-host-local", by_hand / "pycni-host-local")
        proc = subprocess.run(["chroot", str(root.path), "/opt/by-hand/pycni-host-local"], cwd="/",
                              input=b'{"cniVersion": "1.0.0"}', stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={"PATH": RUNTIME_PATH, "CNI_COMMAND": "VERSION"})
        assert proc.returncode == 0 and "1.0.0" in json.loads(proc.stdout)["supportedVersions"], proc.stderr
    finally:
        root.close()


# ---- refusals with the reason ----------------------------------------------------------------
def test_noexec_bin_dir_is_refused_with_that_reason(tmp_path: Path, bin_dir: Path, bundle: Path,
                                                   bare_root: BareRoot) -> None:
    bare_root.noexec_bin_dir()
    host, proc = install(tmp_path, bin_dir, bare_root, bundle, template())
    why = once_failure(proc)
    # the node's path (issue 19: the bin dir as the node names it), and why nothing there can run
    assert "plugin 'pycni-bridge' is not an executable in /opt/cni/bin (the bin dir is on a noexec mount)" in why, why
    checked = [json.loads(ln) for ln in proc.stderr.decode().splitlines() if '"runtime_checked"' in ln]
    assert "Permission denied (/opt/cni/bin/.pycni-python/" in checked[0]["why"], checked
    assert "is on a noexec mount)" in checked[0]["why"], checked
    assert not (host.bin / RUNTIME_DIR / CURRENT).exists() and not host.conflist.exists()


def test_wrong_architecture_bundle_is_refused_with_that_reason(tmp_path: Path, bin_dir: Path, bundle: Path,
                                                              bare_root: BareRoot) -> None:
    foreign = tmp_path / "foreign"
    shutil.copytree(bundle, foreign)
    loader = foreign / "lib/ld.so"
    data = bytearray(loader.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine: EM_AARCH64 -- an arm64 node's bundle
    loader.write_bytes(bytes(data))
    meta = json.loads((foreign / ID_FILE).read_text())
    meta.update(id=tree_id(foreign), machine="aarch64")
    (foreign / ID_FILE).write_text(json.dumps(meta))
    host, proc = install(tmp_path, bin_dir, bare_root, foreign, template())
    why = once_failure(proc)
    assert "python3 not found on PATH" in why, why
    assert "the bundled CPython 3.11.2 (aarch64) does not run here" in why and "Exec format error" in why, why
    assert not (host.bin / RUNTIME_DIR / CURRENT).exists(), "current never names a bundle that failed here"


def test_root_without_bin_sh_is_refused_with_that_reason(tmp_path: Path, bin_dir: Path, bundle: Path,
                                                         bare_root: BareRoot) -> None:
    """Bottlerocket and Talos ship no shell at all: the zipapps' `#!/bin/sh` cannot start, bundle or not."""
    os.unlink(bare_root.path / "bin/sh")
    host, proc = install(tmp_path, bin_dir, bare_root, bundle, template())
    why = once_failure(proc)
    assert "cannot execute /opt/cni/bin/pycni-bridge: No such file or directory (its interpreter /bin/sh is " \
           "missing on the node)" in why, why
    assert (host.bin / RUNTIME_DIR / CURRENT).is_symlink(), "the bundle itself runs there (no shell needed)"


def test_a_full_bin_dir_reports_and_leaves_nothing(tmp_path: Path, bundle: Path) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(bins))
    try:
        result = RuntimeInstaller(bundle, bins, NodeChecker(bins, "/", True, "", False, 30, QUIET), QUIET).sync("t")
        assert result.installed is None and result.current is None
        assert "cannot install the CPython bundle" in result.problem and "No space left" in result.problem, result
        assert list((bins / RUNTIME_DIR).iterdir()) == [], "no partial copy left behind"
    finally:
        sh("umount", str(bins))


# ---- old versions go once nothing uses them --------------------------------------------------
def variant(bundle: Path, where: Path) -> Path:
    """A copy of the bundle with an id of its own (no other test or benchmark process maps it)."""
    shutil.copytree(bundle, where)
    (where / "lib/python3.11/pycni-marker.txt").write_text(f"{unique()}\n")
    (where / ID_FILE).write_text(json.dumps(dict(json.loads((bundle / ID_FILE).read_text()), id=tree_id(where))))
    return where


def test_old_versions_are_removed_once_unused(tmp_path: Path, bundle: Path) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    bundle, second = variant(bundle, tmp_path / "first"), variant(bundle, tmp_path / "second")
    first_id = json.loads((bundle / ID_FILE).read_text())["id"]
    second_id = json.loads((second / ID_FILE).read_text())["id"]
    checker = NodeChecker(bins, "/", True, "", False, 30, QUIET)
    first = RuntimeInstaller(bundle, bins, checker, QUIET, retire_seconds=0)
    assert first.sync("t").current == first_id
    base = bins / RUNTIME_DIR
    user = subprocess.Popen(command(base / CURRENT, "-I", "-S", "-c", "import sys, time; print('up', flush=True); "
                                    "time.sleep(60)"), stdout=subprocess.PIPE)
    try:
        assert user.stdout is not None and user.stdout.readline() == b"up\n"
        assert in_use_by_process(first_id) == user.pid
        graceful = RuntimeInstaller(second, bins, checker, QUIET)  # default grace: 10 minutes
        assert graceful.sync("t").current == second_id and os.readlink(base / CURRENT) == second_id
        assert (base / first_id).is_dir(), "just retired: calls that resolved `current` before may still run"
        eager = RuntimeInstaller(second, bins, checker, QUIET, retire_seconds=0)
        assert eager.collect() == [] and (base / first_id).is_dir(), "a process maps files from it: kept"
    finally:
        user.kill()
        user.wait()
    stale = base / ".0123.tmp-1-abcd"  # a crashed installer's half copy
    (stale / "lib").mkdir(parents=True)
    os.utime(stale, (0, 0))
    assert sorted(eager.collect()) == [stale.name, first_id] and not (base / first_id).exists()
    assert sorted(p.name for p in base.iterdir()) == sorted([CURRENT, second_id])
