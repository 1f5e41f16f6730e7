"""`make demo` (tools/demo.py): the story works and cleans up, also when interrupted."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, sh

pytestmark = [pytest.mark.kernel, pytest.mark.standalone_only]


def demo_leftovers(output: str) -> list:
    suffix = output.split("pod web-")[1].split(":")[0] if "pod web-" in output else None
    if suffix is None:
        return []
    netns = sh("ip", "netns", "list").stdout.decode()
    left = [n for n in (f"web-{suffix}", f"db-{suffix}") if n in netns]
    left += [p for p in Path("/etc/netns").glob(f"*-{suffix}")] if Path("/etc/netns").exists() else []
    if Path(f"/sys/class/net/pycdemo{suffix}").exists():
        left.append(f"pycdemo{suffix}")
    return left


def test_demo_runs_and_cleans_up(bin_dir: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--bin", str(bin_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 received" in proc.stdout and "two pods had working networking" in proc.stdout
    assert "clean: no namespace" in proc.stdout and demo_leftovers(proc.stdout) == []


def test_interrupted_demo_still_cleans_up(bin_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "tools" / "demo.py"), "--bin", str(bin_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "pod db-" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    seen += out
    assert "interrupted" in seen and "clean: no namespace" in seen, seen
    assert demo_leftovers(seen) == []
