"""The conf dir side: write our conflist atomically, and (exclusive mode) move other configs aside.

Runtimes load every `.conf`/`.conflist`/`.json` file of the directory (dotfiles
too) and containerd reloads on each write event, so a temp file must not end in
those extensions, and the directory itself is never deleted or renamed.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from .fsutil import atomic_write, fsync_dir, read_bytes
from .log import Log

CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
ASIDE_SUFFIX = ".pycni-aside"


class ConfWriter:
    def __init__(self, conf_dir: Path, conf_name: str, log: Log) -> None:
        self.conf_dir = conf_dir
        self.path = conf_dir / conf_name
        self.log = log

    def current(self) -> Optional[bytes]:
        return read_bytes(self.path)

    def write(self, data: bytes, why: str) -> bool:
        """Write `data` unless the file already holds exactly it; True when written."""
        if self.current() == data:
            return False
        self.conf_dir.mkdir(parents=True, exist_ok=True)  # created if absent, never removed
        atomic_write(self.path, data, 0o644)
        self.log.info("conflist_written", file=str(self.path), why=why, size=len(data))
        return True

    def others(self) -> List[Path]:
        """Config files a runtime would consider besides ours."""
        try:
            entries = sorted(self.conf_dir.iterdir())
        except OSError:
            return []
        return [p for p in entries if p.name.endswith(CONFIG_SUFFIXES) and p != self.path
                and (p.is_file() or p.is_symlink())]

    def move_aside_others(self) -> List[Tuple[str, str]]:
        """Exclusive mode: rename every other config to NAME.pycni-aside (restorable); returns (from, to)."""
        moved: List[Tuple[str, str]] = []
        for path in self.others():
            target = path.with_name(path.name + ASIDE_SUFFIX)
            n = 1
            while target.exists() or target.is_symlink():
                target = path.with_name(f"{path.name}{ASIDE_SUFFIX}.{n}")
                n += 1
            path.rename(target)
            moved.append((path.name, target.name))
            self.log.info("config_moved_aside", file=str(path), to=str(target), why="exclusive mode")
        if moved:
            fsync_dir(self.conf_dir)
        return moved

    def restore(self, moved: List[Tuple[str, str]]) -> None:
        for original, aside in moved:
            src, dst = self.conf_dir / aside, self.conf_dir / original
            if not (src.exists() or src.is_symlink()):
                self.log.warning("restore_skipped", file=str(src), why="no longer there")
            elif dst.exists() or dst.is_symlink():
                self.log.warning("restore_skipped", file=str(src), why=f"{dst} exists again")
            else:
                src.rename(dst)
                self.log.info("config_restored", file=str(dst), source=str(src))
