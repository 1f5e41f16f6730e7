"""`make demo` (tools/demo.py) the way a new user runs it, and interrupted.

The stock path: a fresh `git clone` of this tree's HEAD, then `make demo` with PATH limited to
the system directories (Debian's python3 only). A clone making its venv from nothing takes
3-6 minutes on this machine (pip's downloads; the registry's answers are not cacheable, so a
shared PIP_CACHE_DIR saves nothing). So when this session runs in a venv of Debian's python3
(as `make test` does), the clone gets a hard-linked copy of it as its .venv (a plain copy
of its 320 MB took 45 s here): `make demo` then runs
tools/install-deps.sh for real (it finds the venv installed for another tree and runs
`pip install -e .[test]` into it for the clone, ~30 s), builds the zipapps and runs the demo.
Otherwise the clone makes its own venv from nothing, as a user's first run does.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from helpers import ROOT, RUNTIME_PATH, sh

pytestmark = [pytest.mark.kernel, pytest.mark.standalone_only]

STEPS = ["==> 1. ", "==> 2. ", "==> 3. ", "==> 4. ", "==> 5. "]


def user_env(tmpdir: Path) -> Dict[str, str]:
    """A login shell's environment with only the system PATH: no pyenv, no venv, our own TMPDIR."""
    keep = ("HOME", "LANG", "TERM", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
    env.update(PATH=RUNTIME_PATH, TMPDIR=str(tmpdir))
    return env


def work_dir(output: str) -> Path:
    match = re.search(r"pycni demo: a node in (\S+),", output)
    assert match, output
    return Path(match.group(1))


def leftovers(output: str, tmpdir: Path) -> List[str]:
    """What of the demo is still on the machine, looked up independently of the demo's own check."""
    work = work_dir(output)
    suffix = work.name.split("-")[2]
    network = f"pycni-demo-{suffix}"
    left = [n for n in sh("ip", "netns", "list").stdout.decode().split() if n.endswith(f"-{suffix}")]
    left += [str(p) for p in Path("/etc/netns").glob(f"*-{suffix}")] if Path("/etc/netns").exists() else []
    left += [line for line in sh("ip", "-o", "link", "show").stdout.decode().splitlines() if suffix in line]
    ruleset = sh("nft", "list", "ruleset").stdout.decode()
    net_tag = hashlib.sha256(network.encode()).hexdigest()[:8]
    left += [f"nft: {network}"] if network in ruleset or f"pycni-{net_tag}-" in ruleset else []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(work).encode() in (entry / "cmdline").read_bytes():
                left.append(f"process {entry.name}")
        except OSError:
            pass
    left += [str(p) for p in tmpdir.glob("pycni-demo-*")]
    return left


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh clone of this tree's HEAD (committed work only, as a user gets it)."""
    path = tmp_path_factory.mktemp("clone") / "pycni"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(path)], check=True)
    if sys.prefix != sys.base_prefix and sys.base_prefix == "/usr":  # a venv of Debian's python3
        seed_venv(Path(sys.prefix), path / ".venv")
    yield path


def seed_venv(venv: Path, target: Path) -> None:
    """A copy of `venv` (hard links: seconds instead of a minute for its ~25000 files).

    Safe for the original: pip and Python replace files (unlink/rename, new inodes), never write
    into them, and the one file install-deps.sh rewrites in place, its stamp, is unlinked first.
    """
    if subprocess.run(["cp", "-al", str(venv), str(target)], stderr=subprocess.DEVNULL).returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(venv, target, symlinks=True)
    (target / ".pycni-installed").unlink(missing_ok=True)


def make_demo(clone: Path, tmpdir: Path) -> Tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(["make", "demo"], cwd=clone, env=user_env(tmpdir), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    return proc, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone the tree")
def test_make_demo_in_a_fresh_clone_with_the_system_path(clone: Path, tmp_path: Path) -> None:
    proc, took = make_demo(clone, tmp_path)
    out = proc.stdout
    print(f"make demo in a fresh clone: {took:.1f} s")
    assert proc.returncode == 0, out
    # the stock path: the clone's .venv of Debian's python3, pycni installed into it from the clone
    assert "install-deps: pip install -e .[test] into .venv" in out, out
    assert (clone / ".venv" / "bin" / "python").resolve().parent == Path("/usr/bin")
    assert str(clone) in subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c",
                                         "import pycni.installer; print(pycni.installer.__file__)"],
                                        stdout=subprocess.PIPE, text=True, env=user_env(tmp_path)).stdout
    demo = out[out.index("pycni demo: a node in"):]
    assert [s for s in STEPS if s in demo] == STEPS, demo
    step = {n: demo.split(STEPS[n])[1].split("\n==> ")[0] for n in range(5)}
    # 1. installed into the node bin dir, rendered from the template's placeholders
    assert re.search(r"installed .*opt-cni-bin: .*pycni-bridge pycni-dns pycni-host-local", step[0]), step[0]
    assert "__MTU__" in step[0] and "__POD_CIDR_RANGES__" in step[0] and "__NODE_NAME__" in step[0]
    subnet = re.search(r"pod network (\S+)", demo).group(1)
    assert f'ranges [[{{"subnet": "{subnet}"}}]]' in step[0] and "domainName demo-node.pycni" in step[0], step[0]
    assert "/readyz     200 ok" in step[0]
    # 2. two pods by name through pycni-dns
    assert step[1].count("eth0 " + subnet.rsplit(".", 1)[0]) == 2, step[1]
    assert re.search(r"PING db-\w+\.demo-node\.pycni", step[1]) and "2 received" in step[1], step[1]
    # 3. the edit reached the node file, with its delay
    assert "mtu 1280" not in step[0] and re.search(r"-> 1280, .* rewritten \d+ ms after the swap", step[2]), step[2]
    # 4. the invalid edit refused: /readyz and the log give the reason, the file stays
    assert "/readyz     503 config rejected (missing_plugin)" in step[3] and "log         config_rejected" in step[3]
    assert "node file   unchanged, byte for byte" in step[3], step[3]
    # 5. everything removed
    assert "DEL         web-" in step[4] and "removed 7 files the installer wrote" in step[4], step[4]
    assert "left        nothing" in step[4] and "==> done in" in demo
    assert leftovers(demo, tmp_path) == []


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_demo_still_cleans_up(bin_dir: Path, tmp_path: Path, how: str) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group) or SIGTERM to the demo, mid-story."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "tools" / "demo.py"), "--bin", str(bin_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "pod web " not in seen and proc.poll() is None and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert "pod web " in seen, seen  # the installer runs, one pod is up, the second is being added
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    seen += out
    assert proc.returncode == 130, seen
    assert "interrupted" in seen and "left        nothing" in seen, seen
    assert "==> 3. " not in seen
    assert leftovers(seen, tmp_path) == []
