"""The one-file executables: any CPython >= 3.9, runtime-like conditions, a safe bytecode cache."""
from __future__ import annotations

import os
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from helpers import ROOT, RUNTIME_PATH, other_python
from pycni.plugins.server import wire
from pycni.plugins.core.versions import SUPPORTED_VERSIONS

PLUGINS = ["pycni-bridge", "pycni-macvlan", "pycni-host-local", "pycni-dns", "pycni-loopback"]


def version_call(python: str, binary: Path, cache: Path, cwd: str = "/", extra_env=None):
    env = {"CNI_COMMAND": "VERSION", "PATH": RUNTIME_PATH, "PYCNI_CACHE_DIR": str(cache), **(extra_env or {})}
    return subprocess.run([python, str(binary)], env=env, cwd=cwd, input=b"",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


@pytest.mark.parametrize("minor", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_version_under_every_supported_python(bin_dir: Path, tmp_path: Path, minor: str) -> None:
    python = other_python(minor)
    tmp_path.chmod(0o755)
    for plugin in PLUGINS:
        for _ in range(2):  # first run unpacks and compiles, second uses the cache
            proc = version_call(python, bin_dir / plugin, tmp_path)
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)
    tag = "cpython-3" + minor.split(".")[1]
    assert len(list(tmp_path.glob(f"*-{tag}"))) == len(PLUGINS)


def test_old_python_gets_a_clear_message(bin_dir: Path, tmp_path: Path) -> None:
    python = other_python("3.8")
    proc = version_call(python, bin_dir / "pycni-bridge", tmp_path)
    assert proc.returncode == 1
    assert b"need CPython >= 3.9" in proc.stderr and b"3.8" in proc.stderr
    assert b"Traceback" not in proc.stderr and json.loads(proc.stdout)["code"] == 999


def test_runs_executable_directly_from_readonly_cwd_without_home(bin_dir: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    cache = tmp_path / "cache"
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=False)
    try:
        env = {"CNI_COMMAND": "VERSION", "PATH": RUNTIME_PATH, "PYCNI_CACHE_DIR": str(cache)}
        proc = subprocess.run([str(bin_dir / "pycni-host-local")], env=env, cwd=str(ro), input=b"",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_concurrent_first_runs_share_one_complete_cache(bin_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def call(_):
        return version_call("/usr/bin/python3", bin_dir / "pycni-bridge", cache)

    with ThreadPoolExecutor(16) as pool:
        procs = list(pool.map(call, range(16)))
    assert all(p.returncode == 0 and json.loads(p.stdout)["cniVersion"] for p in procs), procs
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")  # no temp dirs left behind
    unpacked = cache / entries[0]
    assert (unpacked / "pycni" / "plugins" / "__pycache__").is_dir()
    assert list((unpacked / "pycni").rglob("*.pyc")), "the payload is byte-compiled"


def test_untrusted_cache_dir_is_not_used(bin_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)  # writable by anybody: code planted there must never run
    proc = version_call("/usr/bin/python3", bin_dir / "pycni-host-local", cache)
    assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.1.0"
    assert list(cache.iterdir()) == []


def test_a_new_build_gets_its_own_cache_and_reproducible_builds_are_identical(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "a", tmp_path / "b"
    for out in (out1, out2):
        subprocess.run([sys.executable, str(ROOT / "zipapp" / "build.py"), "--out", str(out), "pycni-host-local"],
                       check=True, stdout=subprocess.DEVNULL)
    assert (out1 / "pycni-host-local").read_bytes() == (out2 / "pycni-host-local").read_bytes()
    with zipfile.ZipFile(out1 / "pycni-host-local") as zf:  # the comparison covered the launcher's bytecode
        assert f"{cache_tag(sys.executable)}/_pycni_client.pyc" in zf.namelist()
    # A changed payload (another build) must not reuse the old build's cache.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "plugins", src / "plugins")
    shutil.copytree(ROOT / "zipapp", src / "zipapp")
    changed = src / "plugins" / "core" / "versions.py"  # issue 18 moved it from plugins/
    changed.write_text(changed.read_text() + "\n# changed\n")
    subprocess.run([sys.executable, str(src / "zipapp" / "build.py"), "--out", str(out2), "pycni-host-local"],
                   check=True, stdout=subprocess.DEVNULL)
    cache = tmp_path / "cache"
    for out in (out1, out2):
        assert version_call("/usr/bin/python3", out / "pycni-host-local", cache).returncode == 0
    assert len(list(cache.iterdir())) == 2


ECHO_PLUGIN = """
from pycni.plugins.core.plugin import Plugin
from pycni.plugins.core.result import Interface, Result


class Echo(Plugin):
    name = "pycni-echo"
    delegates_ipam = False

    def add(self, ctx):
        return Result(interfaces=[Interface(ctx.inv.ifname)])


PLUGIN = Echo()
"""


def test_a_new_plugin_is_one_module_plus_one_row_of_the_plugin_table(tmp_path: Path) -> None:
    """core/registry.py is the one plugin table: build.py builds a plugin added there and its binary runs it."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "plugins", src / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "zipapp", src / "zipapp", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "plugins" / "main" / "echo.py").write_text(ECHO_PLUGIN)
    registry = src / "plugins" / "core" / "registry.py"
    text = registry.read_text()
    assert "\nPLUGINS = (\n" in text
    registry.write_text(text.replace("\nPLUGINS = (\n", '\nPLUGINS = (\n    ("pycni-echo", "pycni.plugins.main.echo", ()),\n'))
    out = tmp_path / "bin"
    # Run from a directory without pycni on the path: the build loads the table by path.
    subprocess.run(["/usr/bin/python3", "-I", str(src / "zipapp" / "build.py"), "--out", str(out), "pycni-echo"],
                   check=True, stdout=subprocess.DEVNULL, cwd="/")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth7",
           "CNI_PATH": str(out), "PATH": RUNTIME_PATH, "PYCNI_CACHE_DIR": str(tmp_path / "cache"),
           wire.SOCKET_ENV: str(tmp_path / "no-server.sock")}
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "pycni-echo"}
    proc = subprocess.run([str(out / "pycni-echo")], env=env, input=json.dumps(conf).encode(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout)["interfaces"] == [{"name": "eth7"}]


def test_version_imports_only_the_dispatch_core(bin_dir: Path, tmp_path: Path) -> None:
    """VERSION is the most frequent call: no json, typing, netlink or plugin module on its path."""
    env = {"CNI_COMMAND": "VERSION", "PATH": RUNTIME_PATH, "PYCNI_CACHE_DIR": str(tmp_path)}
    for plugin in PLUGINS:
        proc = subprocess.run(["/usr/bin/python3", "-X", "importtime", str(bin_dir / plugin)], env=env,
                              input=b"", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.returncode == 0
        imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
        assert "pycni.plugins.core.dispatch" in imported
        heavy = {"json", "typing", "dataclasses", "subprocess", "socket", "pycni.plugins.kernel.netlink",
                 "pycni.plugins.core.config", "pycni.plugins." + plugin.split("-", 1)[1].replace("-", "")}
        assert not imported & heavy, imported & heavy


def test_add_imports_no_typing_or_dataclasses(bin_dir: Path, tmp_path: Path) -> None:
    """The types are for the checker only: an ADD (the exec a pod start waits for) loads neither module.

    Each plugin's ADD runs far enough to import its plugin module and what its verb imports
    (bridge and macvlan then fail on the missing netns, which is fine here).
    """
    conf = {"cniVersion": "1.1.0", "name": "imports", "ipam": {"type": "pycni-host-local", "subnet": "10.250.0.0/24",
                                                               "dataDir": str(tmp_path / "ipam")},
            "dataDir": str(tmp_path / "ipam"), "subnet": "10.250.0.0/24", "stateDir": str(tmp_path / "dns")}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "imports", "CNI_NETNS": str(tmp_path / "no-netns"),
           "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir), "PATH": RUNTIME_PATH, "PYCNI_CACHE_DIR": str(tmp_path),
           wire.SOCKET_ENV: str(tmp_path / "no-server.sock")}
    for plugin in PLUGINS:
        stdin = json.dumps(dict(conf, type=plugin, ipam=conf["ipam"] if plugin != "pycni-host-local" else
                                {k: v for k, v in conf["ipam"].items() if k != "type"})).encode()
        proc = subprocess.run(["/usr/bin/python3", "-X", "importtime", str(bin_dir / plugin)], env=env,
                              input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
        # The verb ran: ADD answered, failed on the netns or said what the plugin wants (-X importtime
        # does not list the plugin module itself: registry.load imports it through importlib).
        assert "pycni.plugins.core.plugin" in imported, (plugin, proc.stdout)
        assert proc.returncode == 0 or b"netns" in proc.stdout or plugin.encode() in proc.stdout, proc.stdout
        assert not imported & {"typing", "dataclasses"}, (plugin, imported & {"typing", "dataclasses"})


def test_replacing_the_file_mid_start_with_another_layout_is_harmless(bin_dir: Path, tmp_path: Path) -> None:
    """An installer renames new builds over the file while runtimes exec it: every start must still work."""
    import threading
    import time

    builds = [bin_dir / "pycni-host-local", bin_dir / "pycni-dns"]  # two different zip layouts
    target = tmp_path / "plugin"
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "PATH": RUNTIME_PATH, "PYCNI_CACHE_DIR": os.environ["PYCNI_CACHE_DIR"], "PYCNI_SERVER_SOCKET": "off"}
    stop = time.monotonic() + 6
    failures: list = []
    runs = [0]

    def swap() -> None:
        i = 0
        while time.monotonic() < stop:
            tmp = tmp_path / f".plugin.{i}"
            # `cp` writes the temp file: were it open for writing in this process, a runner forked
            # meanwhile would inherit the fd and exec would see ETXTBSY, which no installer causes.
            subprocess.run(["cp", str(builds[i % 2]), str(tmp)], check=True)
            tmp.chmod(0o755)
            os.replace(tmp, target)
            i += 1

    def run() -> None:
        while time.monotonic() < stop:
            try:
                proc = subprocess.run([str(target)], env=env, input=b"[]", stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
                ok = proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6
                detail = (proc.returncode, proc.stdout[-200:], proc.stderr[-300:])
            except (OSError, ValueError) as exc:
                ok, detail = False, repr(exc)
            runs[0] += 1
            if not ok:
                failures.append(detail)

    shutil.copyfile(builds[0], target)
    target.chmod(0o755)
    for build in builds:  # warm both caches: this is about the zip reads, not first-run unpacking
        subprocess.run([str(build)], env=env, input=b"[]", stdout=subprocess.DEVNULL)
    threads = [threading.Thread(target=swap)] + [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs[0] >= 10 and not failures, failures[:3]


def test_old_builds_are_pruned_after_a_week_new_ones_kept(bin_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    tag = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True).stdout.strip()
    week_old, recent, other_plugin, other_python = (
        cache / f"pycni-host-local-{'a' * 20}-{tag}", cache / f"pycni-host-local-{'b' * 20}-{tag}",
        cache / f"pycni-dns-{'c' * 20}-{tag}", cache / f"pycni-host-local-{'d' * 20}-cpython-399")
    for d in (week_old, recent, other_plugin, other_python):
        d.mkdir()
        if d is not recent:
            os.utime(d, (0, 0))
    assert version_call("/usr/bin/python3", bin_dir / "pycni-host-local", cache).returncode == 0
    left = {p.name for p in cache.iterdir()}
    assert week_old.name not in left and {recent.name, other_plugin.name, other_python.name} <= left
    assert len(left) == 4  # the three kept plus the new build


# -- the thin client: hands the request to a node server and compiles nothing ---------------------

THIN_MODULES = ("_pycni_launch", "_pycni_client", "_pycni_wire")  # what every exec imports from the archive
SERVER_ANSWER = b'{"cniVersion": "1.1.0", "interfaces": [], "ips": [], "from": "fake server"}\n'


def cache_tag(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print(sys.implementation.cache_tag)"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def fake_server() -> Iterator[Tuple[str, Dict]]:
    """A node server stand-in: answers every request at once with state["answer"] = (exit code, stdout)."""
    directory = tempfile.mkdtemp(prefix="pycni-fake-", dir="/tmp")  # short: unix socket paths are limited
    path = os.path.join(directory, "server.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    state: Dict = {"answer": (0, SERVER_ANSWER), "requests": 0}

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(wire.ACCEPTED)
                    wire.read_request(conn)
                    state["requests"] += 1
                    conn.sendall(wire.encode_response(*state["answer"]))
                except (OSError, wire.WireError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, state
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def thin_call(binary: Path, python: str, tmp_path: Path, socket_path: str, cache: Path,
              stdin: bytes = b"{}") -> Tuple[subprocess.CompletedProcess, Dict[str, List[str]]]:
    """ADD through the zipapp's own prelude, with `python3` on PATH being `python -vv`.

    Returns the process and, per launcher module, the archive files zipimport tried
    for it in order: it stops at the first it could load.
    """
    wrapper_dir = tmp_path / "python-vv"
    wrapper_dir.mkdir(exist_ok=True)
    wrapper = wrapper_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec {python} -vv "$@"\n')
    wrapper.chmod(0o755)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none",
           "CNI_IFNAME": "eth0", "PATH": f"{wrapper_dir}:{RUNTIME_PATH}", "PYCNI_CACHE_DIR": str(cache),
           "PYCNI_SERVER_SOCKET": socket_path}
    proc = subprocess.run([str(binary)], env=env, input=stdin, cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    tried: Dict[str, List[str]] = {m: [] for m in THIN_MODULES}
    for line in proc.stderr.decode(errors="replace").splitlines():
        if line.startswith("# trying /proc/self/fd/9/"):
            name = line.split()[-1]
            module = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            if module in tried:
                tried[module].append(name[len("/proc/self/fd/9/"):])
    return proc, tried


def warm_cache(binary: Path, cache: Path) -> None:
    assert version_call("/usr/bin/python3", binary, cache).returncode == 0
    assert [p for p in cache.iterdir() if not p.name.startswith(".")], "VERSION unpacked the payload"


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache-dir", "warm-cache-dir"])
@pytest.mark.parametrize("python", ["/usr/bin/python3", "3.9", "3.13"])
def test_thin_client_runs_the_archives_bytecode_and_compiles_nothing(
        bin_dir: Path, tmp_path: Path, fake_server, python: str, cached: bool) -> None:
    python = python if python.startswith("/") else other_python(python)
    tag = cache_tag(python)
    socket_path, state = fake_server
    cache = tmp_path / "cache"
    if cached:
        warm_cache(bin_dir / "pycni-bridge", cache)
    proc, tried = thin_call(bin_dir / "pycni-bridge", python, tmp_path, socket_path, cache)
    assert (proc.returncode, proc.stdout) == (0, SERVER_ANSWER), proc.stderr[-2000:]
    assert state["requests"] == 1
    for module, names in tried.items():
        # A missing pyc would show as tries at the archive's root, a rejected one as a try of the .py.
        assert names and set(names) == {f"{tag}/{module}.pyc"}, (module, names)
    if not cached:
        assert not cache.exists(), "the thin path unpacks nothing"


def test_interpreter_without_bytecode_runs_from_source_via_server_and_in_process(
        tmp_path: Path, fake_server) -> None:
    """A build that made bytecode only for /usr/bin/python3, run by another minor version."""
    python = other_python("3.12")
    out = tmp_path / "bin"
    subprocess.run([sys.executable, str(ROOT / "zipapp" / "build.py"), "--out", str(out),
                    "--python", "/usr/bin/python3", "pycni-host-local"], check=True, stdout=subprocess.DEVNULL)
    binary = out / "pycni-host-local"
    with zipfile.ZipFile(binary) as zf:
        folders = {n.split("/")[0] for n in zf.namelist() if n.endswith(".pyc")}
    assert folders == {cache_tag("/usr/bin/python3")} and cache_tag(python) not in folders
    socket_path, state = fake_server
    cache = tmp_path / "cache"
    # Through the server: the launcher modules come from the sources at the archive's root.
    proc, tried = thin_call(binary, python, tmp_path, socket_path, cache)
    assert (proc.returncode, proc.stdout) == (0, SERVER_ANSWER), proc.stderr[-2000:]
    for module, names in tried.items():
        assert names and names[-1] == f"{module}.py", (module, names)
    # The server declines: the plugin runs in-process (a list is no network config: code 6).
    state["answer"] = (wire.DECLINED, b"")
    proc, _ = thin_call(binary, python, tmp_path, socket_path, cache, stdin=b"[]")
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6, proc.stderr[-2000:]
    assert state["requests"] == 2
    # No server at all: in-process too, now from the cache the previous run unpacked.
    proc, _ = thin_call(binary, python, tmp_path, str(tmp_path / "no.sock"), cache, stdin=b"[]")
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6, proc.stderr[-2000:]
    entries = [p.name for p in cache.iterdir()]
    assert len(entries) == 1 and entries[0].endswith("-" + cache_tag(python)), entries


def test_bytecode_the_interpreter_rejects_falls_back_to_the_source_beside_it(
        bin_dir: Path, tmp_path: Path, fake_server) -> None:
    """Same cache tag, other magic number (a pre-release): zipimport must not fail the import."""
    tag = cache_tag("/usr/bin/python3")
    src = bin_dir / "pycni-bridge"
    data = src.read_bytes()
    prelude = data[:data.index(b"PK\x03\x04")]
    rebuilt = tmp_path / "rebuilt.zip"
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(rebuilt, "w") as new:
        for info in old.infolist():
            body = old.read(info)
            if info.filename.startswith(f"{tag}/") and info.filename.endswith(".pyc"):
                body = b"\x00\x00\r\n" + body[4:]  # a magic number no interpreter has
            new.writestr(info, body)
    binary = tmp_path / "pycni-bridge"
    binary.write_bytes(prelude + rebuilt.read_bytes())
    binary.chmod(0o755)
    socket_path, _ = fake_server
    proc, tried = thin_call(binary, "/usr/bin/python3", tmp_path, socket_path, tmp_path / "cache")
    assert (proc.returncode, proc.stdout) == (0, SERVER_ANSWER), proc.stderr[-2000:]
    for module, names in tried.items():
        assert names[-1] == f"{tag}/{module}.py", (module, names)
