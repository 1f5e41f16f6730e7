"""The pieces `make demo` stands up on this machine in place of a Kubernetes node.

A kubelet-style ConfigMap volume, the installer as a child process (its health endpoint
and JSON log), and the sweep that finds what the demo left behind. tools/demo.py tells
the story with them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple


class ConfigMapVolume:
    """A ConfigMap volume as kubelet's AtomicWriter keeps it: `KEY -> ..data/KEY`, `..data -> ..<stamp>`.

    An update writes a new `..<stamp>` dir, points a `..data_tmp` symlink at it and renames
    that over `..data` (the one atomic step), then removes the old dir.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.path.mkdir(parents=True)
        self._serial = 0

    def publish(self, text: str) -> float:
        """Swap in `text` as the key's content; returns the monotonic time of the atomic rename."""
        self._serial += 1
        data = self.path / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        new = self.path / time.strftime(f"..%Y_%m_%d_%H_%M_%S.{os.getpid()}{self._serial:03d}", time.gmtime())
        new.mkdir()
        (new / self.key).write_text(text)
        os.symlink(new.name, self.path / "..data_tmp")
        swapped = time.monotonic()
        os.rename(self.path / "..data_tmp", data)
        if not (self.path / self.key).is_symlink():
            os.symlink(f"..data/{self.key}", self.path / self.key)
        if old:
            shutil.rmtree(self.path / old)
        return swapped

    def text(self) -> str:
        return (self.path / self.key).read_text()

    def layout(self) -> str:
        return f"{self.key} -> ..data/{self.key}, ..data -> {os.readlink(self.path / '..data')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InstallerProcess:
    """`python -m pycni.installer` in its own session (a terminal's Ctrl-C reaches only the demo)."""

    def __init__(self, args: List[str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "PYCNI_"))}
        env["KUBECONFIG"] = str(log_path.parent / "no-kubeconfig")  # volume mode: no API at all
        self.argv = [sys.executable, "-m", "pycni.installer", "run", *args,
                     "--listen", f"127.0.0.1:{self.port}"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)

    def readyz(self) -> Tuple[int, str]:
        """(status, body) of GET /readyz; (0, why) while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as resp:
                return resp.status, resp.read().decode().strip()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode().strip()
        except OSError as exc:
            return 0, str(exc)

    def events(self, name: Optional[str] = None) -> List[Dict[str, object]]:
        """The installer's JSON log lines (all, or those with event `name`)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                out.append(record)
        return out

    def wait(self, what: str, done, timeout: float = 20.0):
        """Poll `done()` until truthy; fail with the installer's last log lines if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = done()
            if value:
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        tail = "\n".join(json.dumps(e) for e in self.events()[-5:])
        raise SystemExit(f"demo: installer: {what} did not happen (exit code {self.proc.poll()})\n{tail}")

    def stop(self) -> Optional[int]:
        """SIGTERM (the installer leaves the node's files in place), SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def processes_mentioning(text: str) -> List[int]:
    """Pids whose command line holds `text` (a unique temp path: only what the demo started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def kill_all(pids: List[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def nft_chains(prefix: str) -> List[str]:
    """Chains of the shared `inet pycni` table whose name starts with `prefix`."""
    proc = subprocess.run(["nft", "-j", "list", "table", "inet", "pycni"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        return []
    items = json.loads(proc.stdout).get("nftables", [])
    return [i["chain"]["name"] for i in items if i.get("chain", {}).get("name", "").startswith(prefix)]


def delete_nft_chains(chains: List[str]) -> None:
    script = "".join(f"delete chain inet pycni {c}\n" for c in chains)
    subprocess.run(["nft", "-f", "-"], input=script, text=True, stderr=subprocess.DEVNULL)
