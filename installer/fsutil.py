"""Atomic file replacement in one directory: temp file, fsync, chmod, rename, fsync the directory."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Optional, Tuple


def temp_name(target: Path) -> Path:
    """`.NAME.tmp-PID` beside the target: a dotfile whose name does NOT end in .conf/.conflist/.json,
    so a runtime watching the directory never picks up a half-written file."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, data: bytes, mode: int) -> None:
    """Replace `target` with `data` so that any reader sees either the old or the new file, whole."""
    tmp = temp_name(target)
    try:
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # umask must not decide
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(str(tmp), str(target))
    except BaseException:
        try:
            os.unlink(str(tmp))
        except OSError:
            pass
        raise
    fsync_dir(target.parent)


def read_bytes(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


class HashCache:
    """sha256 of files, recomputed only when the file's identity (inode, size, times) changed."""

    def __init__(self) -> None:
        self._cache: Dict[str, Tuple[Tuple[int, ...], str]] = {}

    def digest(self, path: Path) -> Optional[str]:
        try:
            st = os.stat(str(path))
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._cache.get(str(path))
        if hit and hit[0] == key:
            return hit[1]
        h = hashlib.sha256()
        try:
            with open(str(path), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return None
        self._cache[str(path)] = (key, h.hexdigest())
        return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
