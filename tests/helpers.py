"""Shared test helpers: unique names, network namespaces, running built plugins like a runtime."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_BIN = Path("/usr/lib/cni")
NODE_PYTHON = "/usr/bin/python3"
# What a container runtime gives a plugin: a bare environment, run from "/".
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Other CPythons (3.8-3.13) for the version tests: found by path, not on PATH (CI runs with RUNTIME_PATH).
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")) / "versions"


def pyenv_prefixes(minor: str) -> List[Path]:
    """pyenv's installs of CPython `minor` ("3.8"), oldest patch first (self-contained prefixes)."""
    found = [p for p in PYENV_VERSIONS.glob(f"{minor}.*")
             if p.name[len(minor) + 1:].isdigit() and (p / "bin" / "python3").exists()]
    return sorted(found, key=lambda p: int(p.name[len(minor) + 1:]))


def other_python(minor: str) -> str:
    """A CPython `minor` binary: pyenv's newest, else /usr/bin or /usr/local/bin; skips the test when absent."""
    prefixes = pyenv_prefixes(minor)
    if prefixes:
        return str(prefixes[-1] / "bin" / "python3")
    for directory in ("/usr/bin", "/usr/local/bin"):
        if os.access(f"{directory}/python{minor}", os.X_OK):
            return f"{directory}/python{minor}"
    import pytest

    pytest.skip(f"no CPython {minor} on this machine (looked in {PYENV_VERSIONS}/{minor}.*, "
                f"/usr/bin, /usr/local/bin)")


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "", interval: float = 0.05) -> Any:
    """Poll `check` until it returns something true (returned), failing the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
    """Send `sig` to a still-running process, wait, kill it if it does not exit; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def probe(port: int, path: str, host: str = "127.0.0.1", timeout: float = 5.0) -> Tuple[int, str]:
    """GET a health endpoint (/healthz, /readyz, /metrics) as a kubelet probe or a scraper does:
    (status, body); (0, "") when nothing answers (not started yet, or gone)."""
    import requests

    try:
        resp = requests.get(f"http://{host}:{port}{path}", timeout=timeout)
    except requests.RequestException:
        return 0, ""
    return resp.status_code, resp.text


def stat_fields(pid: object) -> List[str]:
    """/proc/<pid>/stat after the command name: [0] the state, [1] the parent pid, [19] the start time
    (fields 3, 4 and 22 of proc(5)). OSError when there is no such process."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def log_events(path: Path, event: Optional[str] = None) -> List[Dict[str, Any]]:
    """The JSON lines of a plugin or server event log (none when it was never written), of one event if named."""
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if event is None or r.get("event") == event]


def unique(prefix: str = "t") -> str:
    """A short unique name, safe as a netns, link (<= 15 chars with prefix <= 6) or network name."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def sh(*cmd: str, check: bool = True, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def in_netns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def link_exists(name: str, ns: Optional[str] = None) -> bool:
    cmd = ("ip", "link", "show", "dev", name)
    proc = in_netns(ns, *cmd, check=False) if ns else sh(*cmd, check=False)
    return proc.returncode == 0


def plugin_env(command: str, netns: str = "", container_id: str = "", ifname: str = "eth0",
               args: str = "", cni_path: str = "", extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    env = {"CNI_COMMAND": command, "PATH": RUNTIME_PATH}
    for key, value in (("CNI_NETNS", netns), ("CNI_CONTAINERID", container_id), ("CNI_IFNAME", ifname),
                       ("CNI_ARGS", args), ("CNI_PATH", cni_path)):
        if value:
            env[key] = value
    for key in ("PYCNI_CACHE_DIR", "PYCNI_SERVER_SOCKET"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def exec_plugin(binary: os.PathLike, env: Mapping[str, str], stdin: Any,
                netns: Optional[str] = None, timeout: float = 120) -> Tuple[Any, int, str]:
    """Exec a plugin binary as a runtime would (inside `netns` when given: its host side is that
    namespace); returns (parsed stdout or None, exit code, stderr)."""
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.run(prefix + [str(binary)], input=data, env=dict(env), cwd="/",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out = proc.stdout.decode()
    try:
        parsed = json.loads(out) if out.strip() else None
    except ValueError:
        raise AssertionError(f"plugin printed non-JSON on stdout: {out!r}; stderr: {proc.stderr.decode()}")
    return parsed, proc.returncode, proc.stderr.decode()


def start_node_server(socket_path: Path, *args: str, python: str = sys.executable,
                      env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
    """Start pycni-server (`python -m`, extra `args`) on `socket_path`; return once it answers there."""
    from pycni.plugins.server.node import health

    def inode() -> int:
        try:
            return socket_path.stat().st_ino
        except OSError:
            return 0

    previous = inode()  # a server being replaced still answers until the new one takes the path
    proc = subprocess.Popen([python, "-m", "pycni.plugins.server.node", "--socket", str(socket_path), *args],
                            env=None if env is None else dict(env), stderr=subprocess.DEVNULL)
    for _ in range(200):
        if inode() not in (0, previous) and health(str(socket_path), timeout=0.5):
            return proc
        if proc.poll() is not None:
            raise RuntimeError("pycni-server exited at start")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("pycni-server did not answer")
