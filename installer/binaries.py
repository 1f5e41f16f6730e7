"""Copy the plugin zipapps into the host's CNI bin dir, never exposing a partial file.

A runtime may exec a plugin at any moment: each copy goes to a temp file in the
same directory, is fsynced and chmod 0755, then renamed over the old one. A
process already running the old file keeps its inode; a new exec sees the new
file, whole. Identical files are not touched at all (compared by sha256).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

# Plugins also installed under the name runtimes exec them by, but only where that name is free
# (or holds what we wrote): containerd and CRI-O run `loopback` for every pod sandbox.
ALIASES = {"pycni-loopback": "loopback"}

from .fsutil import HashCache, atomic_write, sha256
from .log import Log


class BinaryError(Exception):
    pass


@dataclass(frozen=True)
class BinaryResult:
    installed: Dict[str, str]  # name -> sha256 of the file now in the bin dir
    copied: List[str]  # names written this time


def source_binaries(source_dir: Path) -> List[Path]:
    """The plugin files shipped in the image: every regular, non-hidden file of the source dir."""
    try:
        files = sorted(p for p in source_dir.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError as exc:
        raise BinaryError(f"cannot read source dir {source_dir}: {exc.strerror}") from None
    if not files:
        raise BinaryError(f"no plugin binaries in source dir {source_dir}")
    return files


class BinaryInstaller:
    def __init__(self, source_dir: Path, bin_dir: Path, log: Log,
                 written: Callable[[Path], Optional[str]] = lambda path: None) -> None:
        self.source_dir = source_dir
        self.bin_dir = bin_dir
        self.log = log
        self.hashes = HashCache()
        self.written = written  # path -> sha256 we last wrote there (the state manifest), None if never
        self._foreign: set = set()  # alias targets reported as not ours

    def _alias_free(self, target: Path) -> bool:
        """An alias is written only over nothing or over what we wrote: never over another package's file."""
        have = self.hashes.digest(target)
        if have is None and not os.path.lexists(str(target)):
            return True
        if have is not None and have == self.written(target):
            return True
        if target not in self._foreign:
            self._foreign.add(target)
            self.log.info("binary_alias_kept", file=str(target),
                          why="the node already has this plugin from another package: left as it is")
        return False

    def sync(self, why: str) -> BinaryResult:
        """Make every binary in the bin dir identical to its source; copy only what differs."""
        if not self.bin_dir.is_dir():
            raise BinaryError(f"host bin dir {self.bin_dir} does not exist")
        installed: Dict[str, str] = {}
        copied: List[str] = []
        jobs = []
        for source in source_binaries(self.source_dir):
            jobs.append((source, self.bin_dir / source.name))
            alias = ALIASES.get(source.name)
            if alias and self._alias_free(self.bin_dir / alias):
                jobs.append((source, self.bin_dir / alias))
        for source, target in jobs:
            want = self.hashes.digest(source)
            if want is None:
                raise BinaryError(f"cannot read {source}")
            have = self.hashes.digest(target)
            if have == want and os.access(str(target), os.X_OK) and target.is_file():
                installed[target.name] = want
                continue
            data = source.read_bytes()  # hash what we write, not what we read earlier
            try:
                atomic_write(target, data, 0o755)
            except OSError as exc:
                raise BinaryError(f"cannot install {target}: {exc}") from None
            digest = sha256(data)
            installed[target.name] = digest
            copied.append(target.name)
            self.log.info("binary_installed", file=str(target), sha256=digest, size=len(data),
                          why=f"{why}: {'not on the host' if have is None else 'differs from the image'}")
        return BinaryResult(installed, copied)
