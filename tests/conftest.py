"""Fixtures shared by every tier: built zipapps, network namespaces that always get removed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import ROOT, sh, start_node_server, unique  # noqa: E402


@pytest.fixture(scope="session")
def plugin_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private bytecode cache for the zipapps this session runs."""
    path = tmp_path_factory.mktemp("pycni-cache")
    path.chmod(0o755)
    os.environ["PYCNI_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def node_server_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Optional[Path]]:
    """With PYCNI_TEST_WITH_SERVER=1 every plugin exec of the session goes through a node server."""
    if os.environ.get("PYCNI_TEST_WITH_SERVER") != "1":
        os.environ["PYCNI_SERVER_SOCKET"] = "off"  # never use a server some other process runs
        yield None
        return
    socket_path = tmp_path_factory.mktemp("server") / "server.sock"
    proc = start_node_server(socket_path)
    os.environ["PYCNI_SERVER_SOCKET"] = str(socket_path)
    yield socket_path
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory: pytest.TempPathFactory, plugin_cache_dir: Path) -> Path:
    """The four zipapps, freshly built from this tree. With PYCNI_TEST_WITH_BUNDLE=1 the CPython bundle
    (installer/bundle.py, from /usr/bin/python3) sits beside them, as the installer lays it out, and runs them."""
    out = tmp_path_factory.mktemp("bin")
    subprocess.run([sys.executable, str(ROOT / "zipapp" / "build.py"), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    if os.environ.get("PYCNI_TEST_WITH_BUNDLE") == "1":
        from pycni.installer.bundle import build, zipapp_code_path

        meta = build("/usr/bin/python3", out / ".pycni-python" / "new", zipapp_code_path(out / "pycni-dns"))
        (out / ".pycni-python" / "new").rename(out / ".pycni-python" / str(meta["id"]))
        (out / ".pycni-python" / "current").symlink_to(str(meta["id"]))
    return out


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start pycni-servers (extra command-line args, extra environment) on fresh socket paths; stop them after."""
    procs: List[subprocess.Popen] = []

    def start(*args: str, **environ: str) -> Path:
        path = tmp_path / unique("srv") / "server.sock"
        procs.append(start_node_server(path, *args, env=dict(os.environ, **environ)))
        return path

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Factory for uniquely named network namespaces, deleted after the test (with their links)."""
    made: List[str] = []

    def make(prefix: str = "pt") -> str:
        name = unique(prefix)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        made.append(name)
        return name

    yield make
    for name in made:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


@pytest.fixture
def host_links() -> Iterator[List[str]]:
    """Names of host links a test creates; each is deleted afterwards if still there."""
    names: List[str] = []
    yield names
    for name in names:
        sh("ip", "link", "del", name, check=False)
