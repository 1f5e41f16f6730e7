"""Prove that every plugin binary a conflist names runs on this node, the way the runtime runs it.

The zipapps are run by the node's own `python3`: a node without one, or with one
older than 3.9, would take our conflist and then fail every pod. So before a
conflist is written (and again whenever a binary changed), each binary it names
is executed as the runtime would: resolved through the HOST's root filesystem
(chroot into the host root the chart mounts read-only at /host/root; needs only
CAP_SYS_CHROOT), as root, with the runtime's bare environment, `CNI_COMMAND=VERSION`
and the config's `cniVersion` on stdin. It must answer a VERSION object whose
`supportedVersions` lists that version. A pass is remembered per file identity
(inode, size, times) and cniVersion; a failure is tried again at every sync.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .log import Log

# systemd's default PATH: what containerd / CRI-O (and so the plugins they exec) get on a stock node
RUNTIME_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOST_ROOT = "/host/root"
COMMON_HOST_BIN_DIRS = ("/opt/cni/bin",)
_MARK = "pycni-installer-exec"
_OUTPUT_LIMIT = 4096

# Run by the installer's own interpreter (-I -S): chroot into the host root (unless it is "/"),
# then exec the plugin by its host path, so the kernel resolves its #! line inside the host. The
# environment comes as JSON: Python's own startup may add LC_CTYPE to os.environ (PEP 538).
_EXEC_HELPER = r"""
import json, os, sys
root, argv, env = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
path = argv[0]
def fail(code, text):
    sys.stderr.write("%s: %s\n" % (MARK, text))
    sys.exit(code)
if root != "/":
    try:
        os.chroot(root)
    except OSError as e:
        fail(126, "chroot into %s failed: %s (the installer needs CAP_SYS_CHROOT)" % (root, e.strerror))
os.chdir("/")
try:
    os.execve(path, argv, env)
except OSError as e:
    why = e.strerror
    try:
        if e.errno == 13 and os.statvfs(path).f_flag & os.ST_NOEXEC:
            why += " (%s is on a noexec mount)" % os.path.dirname(path)
    except OSError:
        pass
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        first = b""
    if e.errno == 2 and first.startswith(b"#!"):
        why += " (its interpreter %s is missing on the node)" % first[2:].decode(errors="replace").strip()
    fail(127, "cannot execute %s: %s" % (path, why))
""".replace("MARK", repr(_MARK))


class SetupError(Exception):
    """The check cannot be made as configured (e.g. no host root in a pod)."""


@dataclass(frozen=True)
class Outcome:
    plugin: str
    ok: bool
    message: str  # failure reason (without the plugin name), "" when ok


@dataclass
class Report:
    outcomes: List[Outcome] = field(default_factory=list)
    ran: List[str] = field(default_factory=list)  # plugins actually executed this time (not cached)
    where: str = ""  # host bin dir (and root), for messages

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    def reason(self) -> str:
        """Failures grouped by message: "pycni-bridge, pycni-dns: python3 not found ... ; x: ..."."""
        groups: Dict[str, List[str]] = {}
        for o in self.outcomes:
            if not o.ok:
                groups.setdefault(o.message, []).append(o.plugin)
        return "; ".join(f"{', '.join(names)}: {msg}" for msg, names in groups.items())


def conflist_binaries(conflist: Dict[str, Any]) -> List[str]:
    """Every binary a runtime may exec for this conflist: each `type` and delegated `ipam.type`, in order."""
    names: List[str] = []
    for plugin in conflist.get("plugins") or []:
        ipam = plugin.get("ipam")
        for name in (plugin.get("type"), ipam.get("type") if isinstance(ipam, dict) else None):
            if isinstance(name, str) and name and name not in names:
                names.append(name)
    return names


def resolve_root(configured: str, explicit: bool, in_pod: bool) -> Path:
    """The host root to chroot into; "/" = none. A missing default means we run on the node itself,
    except in a pod, where "/" would check the installer's image instead of the node."""
    root = Path(configured or "/")
    if root == Path("/") or root.is_dir():
        return root
    if explicit:
        raise SetupError(f"host root {root} does not exist (set --host-root / PYCNI_HOST_ROOT to the "
                         f"host's / as mounted in this container, or \"/\" on the node itself)")
    if in_pod:
        raise SetupError(f"host root {root} is not mounted: cannot prove the plugins run on the node "
                         f"(mount the host's / read-only at {root}, or set PYCNI_HOST_ROOT)")
    return Path("/")


def _identity(path: Path) -> Optional[Tuple[int, ...]]:
    try:
        st = os.stat(str(path))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _inside(root: Path, host_path: str) -> Path:
    return root / host_path.lstrip("/") if root != Path("/") else Path(host_path)


def locate_bin_dir(root: Path, bin_dir: Path, configured: str) -> str:
    """The bin dir's path as the host (the runtime) sees it: the configured one (trusted: a host
    path may be an absolute symlink, which only resolves inside the chroot), else the first
    candidate that is the very same directory (device and inode) as ours, seen through the host root."""
    if configured:
        return configured
    if root == Path("/"):
        return str(bin_dir)
    mine = _identity(bin_dir)
    if mine is None:
        raise SetupError(f"bin dir {bin_dir} does not exist")
    candidates = []
    try:
        candidates.append("/" + str(bin_dir.relative_to(root)))
    except ValueError:
        pass
    text = str(bin_dir)
    if text.startswith("/host/"):
        candidates.append(text[len("/host"):])
    candidates.extend(COMMON_HOST_BIN_DIRS)
    for candidate in candidates:
        theirs = _identity(_inside(root, candidate))
        if theirs is not None and theirs[:2] == mine[:2]:
            return candidate
    raise SetupError(f"cannot find bin dir {bin_dir} inside host root {root} (tried {', '.join(candidates)}); "
                     f"set --host-bin-dir / PYCNI_HOST_BIN_DIR to its path on the host")


def judge(stdout: bytes, stderr: bytes, rc: int, version: str, plugin: str) -> str:
    """"" when the answer is a valid VERSION object listing `version`, else what went wrong."""
    text = stdout.decode(errors="replace").strip()
    try:
        answer = json.loads(text) if text else None
    except ValueError:
        answer = None
    if isinstance(answer, dict) and rc == 0 and "code" not in answer:
        supported = answer.get("supportedVersions")
        if not isinstance(answer.get("cniVersion"), str) or not isinstance(supported, list) \
                or not all(isinstance(v, str) for v in supported):
            return f"answered VERSION with an invalid object: {text[:200]}"
        if version not in supported:
            return f"does not support cniVersion {version} (it supports {', '.join(supported) or 'none'})"
        return ""
    if isinstance(answer, dict) and isinstance(answer.get("msg"), str) and answer["msg"]:
        message = answer["msg"] + (f": {answer['details']}" if answer.get("details") else "")
    else:
        lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
        message = lines[-1] if lines else (f"unexpected output {text[:200]!r}" if text else "no output")
        if rc != 0 and not lines:
            message = f"exit status {rc}, {message}"
    message = message.replace(f"{_MARK}: ", "")
    return message[len(plugin) + 2:] if message.startswith(f"{plugin}: ") else message


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the check and its whole group (in its own session): a child may still hold our pipes."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


class NodeChecker:
    def __init__(self, bin_dir: Path, host_root: str, host_root_explicit: bool, host_bin_dir: str,
                 in_pod: bool, timeout: float, log: Log, runtime_path: str = RUNTIME_PATH) -> None:
        self.bin_dir = bin_dir
        self.runtime_path = runtime_path
        self.configured = (host_root, host_root_explicit, host_bin_dir, in_pod)
        self.timeout = timeout
        self.log = log
        self._view: Optional[Tuple[Path, str]] = None
        self._passed: set = set()

    def view(self) -> Tuple[Path, str]:
        """(host root, host bin dir); resolved on first use, a SetupError is retried next time."""
        if self._view is None:
            host_root, explicit, host_bin_dir, in_pod = self.configured
            root = resolve_root(host_root, explicit, in_pod)
            self._view = (root, locate_bin_dir(root, self.bin_dir, host_bin_dir))
            self.log.info("node_check_view", host_root=str(root), host_bin_dir=self._view[1],
                          chroot=root != Path("/"),
                          note=None if root != Path("/") or explicit or host_root == "/"
                          else f"{host_root} does not exist: running on the node itself, no chroot")
        return self._view

    def run_version(self, root: Path, host_path: str, version: str) -> Tuple[int, bytes, bytes]:
        """(exit status, stdout, stderr) of `CNI_COMMAND=VERSION host_path` run inside the host root."""
        stdin = json.dumps({"cniVersion": version}).encode()
        return self.run_in_root(root, [host_path], stdin, {"CNI_COMMAND": "VERSION"})

    def run_in_root(self, root: Path, argv: List[str], stdin: bytes,
                    extra_env: Optional[Dict[str, str]] = None, what: str = "VERSION") -> Tuple[int, bytes, bytes]:
        """(exit status, stdout, stderr) of `argv` (host paths) run inside the host root, as the runtime runs it."""
        env = {"PATH": self.runtime_path, **(extra_env or {})}
        if os.environ.get("PYCNI_CACHE_DIR"):  # only where the launcher keeps its byte-code cache
            env["PYCNI_CACHE_DIR"] = os.environ["PYCNI_CACHE_DIR"]
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _EXEC_HELPER, str(root), json.dumps(argv),
                                 json.dumps(env)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd="/", start_new_session=True)
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return 124, b"", f"no answer to {what} within {self.timeout:g}s".encode()
        except BaseException:  # a stop (SIGTERM raises in here) or a bug: the check must not outlive us
            _kill_group(proc)
            raise
        return proc.returncode, out[:_OUTPUT_LIMIT], err[-_OUTPUT_LIMIT:]

    def check(self, plugins: List[str], version: str) -> Report:
        try:
            root, host_bin = self.view()
        except SetupError as exc:
            return Report([Outcome(p, False, str(exc)) for p in plugins], [], "")
        report = Report(where=host_bin if root == Path("/") else f"{host_bin} under host root {root}")
        for plugin in plugins:
            key = (plugin, _identity(self.bin_dir / plugin), version)
            if key in self._passed:
                report.outcomes.append(Outcome(plugin, True, ""))
                continue
            host_path = f"{host_bin.rstrip('/')}/{plugin}"
            rc, out, err = self.run_version(root, host_path, version)
            problem = judge(out, err, rc, version, plugin)
            report.ran.append(plugin)
            report.outcomes.append(Outcome(plugin, not problem, problem))
            if not problem and key[1] is not None:
                self._passed.add(key)
            emit = self.log.warning if problem else self.log.info
            emit("binary_checked", plugin=plugin, file=host_path, host_root=str(root), cni_version=version,
                 ok=not problem, why=problem or None)
        return report
