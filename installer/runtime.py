"""Install the image's CPython bundle (installer/bundle.py) into the node's CNI bin dir.

Layout in the bin dir (the one directory every CNI may write on every node OS):

    .pycni-python/<bundle id>/   one directory per bundle version (content hash), never changed once there
    .pycni-python/current        symlink to the version the zipapps' prelude uses

A version is copied to a temp dir and renamed into place whole; `current` is a
new symlink renamed over the old one, and only ever names a version that was just
run on this node, through the host root, the way a plugin runs it (chroot, its
own loader). When that run fails (wrong architecture, a noexec bin dir, ...)
`current` is removed: the zipapps fall back to the node's python3, and the
node check reports both reasons.

An old version is removed once nothing uses it: it stopped being `current` at
least RETIRE_SECONDS ago (a plugin call resolves `current` once, at exec, and
runs for seconds; the grace covers calls still importing modules from it), and no
process maps a file from it (/proc/*/maps: the installer runs with hostPID, so a
long-running pycni-dns server started from it keeps it alive).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .bundle import ID_FILE, command
from .fsutil import fsync_dir
from .log import Log
from .nodecheck import NodeChecker, SetupError

RUNTIME_DIR = ".pycni-python"
CURRENT = "current"
RETIRE_SECONDS = 600.0
# What the check run imports: the extension modules and libraries a plugin's ADD needs.
_PROBE = "import ctypes, json, socket, hashlib, select; print('pycni-bundle-ok')"


@dataclass(frozen=True)
class RuntimeResult:
    installed: Optional[str]  # the image's bundle id, now in the bin dir; None = the image has none
    current: Optional[str]  # the bundle id `current` names, None when there is none
    problem: str  # why the bundle cannot be used on this node, "" when it can (or when there is no bundle)


def read_meta(bundle: Path) -> Optional[Dict[str, object]]:
    try:
        meta = json.loads((bundle / ID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("id"), str) else None


def _temp_name(name: str) -> str:
    """A dot name no other installer picks: two pods of a rolling update may both be pid 1."""
    return f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"


def in_use_by_process(version: str, proc: Path = Path("/proc")) -> Optional[int]:
    """The pid of a visible process that maps a file of this version, else None."""
    needle = f"/{RUNTIME_DIR}/{version}/"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "maps").read_text(errors="replace"):
                return int(entry.name)
        except OSError:
            continue  # gone, or not ours to read
    return None


class RuntimeInstaller:
    def __init__(self, source: Optional[Path], bin_dir: Path, checker: NodeChecker, log: Log,
                 retire_seconds: float = RETIRE_SECONDS) -> None:
        self.source = source
        self.base = bin_dir / RUNTIME_DIR
        self.checker = checker
        self.log = log
        self.retire_seconds = retire_seconds
        self._verified: Dict[str, str] = {}  # version -> "" (runs) ; failures are not kept: tried again
        self._absent_logged = False

    def current(self) -> Optional[str]:
        try:
            return os.readlink(str(self.base / CURRENT))
        except OSError:
            return None

    def sync(self, why: str) -> RuntimeResult:
        """Install the image's bundle (if any), prove it runs here, point `current` at it, collect old ones."""
        meta = read_meta(self.source) if self.source is not None else None
        if meta is None:
            if not self._absent_logged:
                self._absent_logged = True
                self.log.info("runtime_bundle_absent", source=str(self.source),
                              why="no CPython bundle in this image: the plugins use the node's python3")
            return RuntimeResult(None, None, "")
        version = str(meta["id"])
        target = self.base / version
        if read_meta(target) is None:
            try:
                self._copy(target, version, why)
            except OSError as exc:  # e.g. a full bin dir: the node's python3 may still do; the check decides
                self.log.error("runtime_install_failed", dir=str(target), why=str(exc))
                return RuntimeResult(None, self.current(), f"cannot install the CPython bundle into {target}: {exc}")
        problem = self._verify(version, meta)
        if problem:
            self._unlink_current()
        else:
            self._switch(version)
        self.collect(keep=version)
        return RuntimeResult(version, None if problem else version, problem)

    def _copy(self, target: Path, version: str, why: str) -> None:
        assert self.source is not None
        self.base.mkdir(mode=0o755, exist_ok=True)
        tmp = self.base / _temp_name(version)
        try:
            shutil.copytree(self.source, tmp, symlinks=True)
            for path in sorted(tmp.rglob("*"), reverse=True):  # on disk before the rename makes it visible
                if path.is_file() and not path.is_symlink():
                    fd = os.open(str(path), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists() and read_meta(target) is None:  # half-made (no id file): never named by `current`
            shutil.rmtree(target)
        try:
            os.rename(str(tmp), str(target))
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if read_meta(target) is None:
                raise
            return  # another installer (a rolling update's overlap) put the same version there first
        fsync_dir(self.base)
        self.log.info("runtime_installed", dir=str(target), why=why)

    def _verify(self, version: str, meta: Dict[str, object]) -> str:
        if version in self._verified:
            return ""
        try:
            root, host_bin = self.checker.view()
        except SetupError as exc:
            return str(exc)
        host_dir = f"{host_bin.rstrip('/')}/{RUNTIME_DIR}/{version}"
        rc, out, err = self.checker.run_in_root(root, command(host_dir, "-I", "-S", "-c", _PROBE), b"",
                                                  what="a start of the bundled CPython")
        if rc == 0 and out.strip() == b"pycni-bundle-ok":
            self._verified[version] = ""
            self.log.info("runtime_checked", dir=host_dir, ok=True, python=meta.get("python"))
            return ""
        lines = [ln.strip() for ln in (err or out).decode(errors="replace").splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {rc}, no output"
        problem = (f"the bundled CPython {meta.get('python')} ({meta.get('machine')}) does not run here: "
                   f"{detail.replace('pycni-installer-exec: ', '')}")
        self.log.warning("runtime_checked", dir=host_dir, ok=False, why=problem)
        return problem

    def _switch(self, version: str) -> None:
        old = self.current()
        if old == version:
            return
        link = self.base / _temp_name(CURRENT)
        os.symlink(version, str(link))
        os.rename(str(link), str(self.base / CURRENT))
        fsync_dir(self.base)
        if old:
            self._retire(old)
        self.log.info("runtime_current", version=version, previous=old)

    def _unlink_current(self) -> None:
        old = self.current()
        if old is not None:
            os.unlink(str(self.base / CURRENT))
            self._retire(old)
            self.log.warning("runtime_current_removed", previous=old,
                             why="the bundle does not run on this node: the plugins use the node's python3")

    def _retire(self, version: str) -> None:
        """Stamp the time a version stopped being current: its mtime (nothing else changes it)."""
        try:
            os.utime(str(self.base / version))
        except OSError:
            pass

    def collect(self, keep: str = "") -> List[str]:
        """Remove versions (and stale temp dirs) nothing uses any more, except `keep` (the image's own,
        even when it did not run here: no copying it again every time); returns their names."""
        current = self.current()
        removed: List[str] = []
        try:
            entries = list(self.base.iterdir())
        except OSError:
            return removed
        now = time.time()
        for entry in entries:
            if entry.name in (CURRENT, current, keep):
                continue
            try:
                age = now - entry.lstat().st_mtime
            except OSError:
                continue
            temp = entry.name.startswith(".")  # a crashed installer's copy or link
            if age < self.retire_seconds or not (temp or entry.is_dir()):
                continue
            pid = None if temp else in_use_by_process(entry.name)
            if pid is not None:
                self.log.info("runtime_kept", dir=str(entry), why=f"process {pid} runs from it")
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
            removed.append(entry.name)
            self.log.info("runtime_removed", dir=str(entry), retired_seconds=round(age))
        return removed


def remove_runtime(bin_dir: Path, versions: List[str], log: Log) -> None:
    """`uninstall`: the `current` link, the versions the manifest names, then the directory if left empty."""
    base = bin_dir / RUNTIME_DIR
    try:
        os.unlink(str(base / CURRENT))
    except FileNotFoundError:
        pass
    for version in versions:
        if (base / version).is_dir():
            shutil.rmtree(base / version, ignore_errors=True)
            log.info("uninstall_removed", file=str(base / version))
    try:
        base.rmdir()
    except OSError:
        pass
