"""The conflist template from the mounted ConfigMap volume (the fallback when the API may not be read).

kubelet updates such a volume by writing a new `..<timestamp>` dir and renaming a
`..data_tmp` symlink over `..data`; each key is a fixed symlink `KEY -> ..data/KEY`.
An inotify watch on the key file dies at the first update, so we watch the
directory (inotify through libc, no dependency) and re-read the key through its
symlink on any event; without inotify we poll.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import threading
from pathlib import Path
from typing import Callable, Optional

from .log import Log

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED = 0x400, 0x800, 0x8000
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
              | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)


class Inotify:
    """A directory watch; `wait(timeout)` is True when something happened in the directory."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.watching = False

    def watch(self, path: Path) -> bool:
        self.watching = self._add(self.fd, os.fsencode(str(path)), WATCH_MASK) >= 0
        return self.watching

    def wait(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        # IN_IGNORED: the watched directory went away; re-arm later
        offset = 0
        while offset + 16 <= len(data):
            mask = int.from_bytes(data[offset + 4:offset + 8], "little")
            length = int.from_bytes(data[offset + 12:offset + 16], "little")
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                self.watching = False
            offset += 16 + length
        return True

    def close(self) -> None:
        os.close(self.fd)


class VolumeSource:
    def __init__(self, config_dir: Path, key: str, log: Log, notify: Callable[[], None],
                 stop: threading.Event, poll_seconds: float = 1.0) -> None:
        self.config_dir, self.key = config_dir, key
        self.log = log
        self.notify = notify
        self.stop = stop
        self.poll_seconds = poll_seconds
        self._last: Optional[str] = self.text()
        self.thread = threading.Thread(target=self._run, name="volume watch", daemon=True)

    @property
    def label(self) -> str:
        return f"volume {self.config_dir}/{self.key}"

    def text(self, key: Optional[str] = None) -> Optional[str]:
        try:
            return (self.config_dir / (key or self.key)).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def start(self) -> "VolumeSource":
        self.thread.start()
        return self

    def _check(self) -> None:
        text = self.text()
        if text != self._last:
            self._last = text
            self.log.info("volume_changed", source=self.label, present=text is not None)
            self.notify()

    def _run(self) -> None:
        try:
            inotify: Optional[Inotify] = Inotify()
        except (OSError, AttributeError) as exc:
            self.log.warning("inotify_unavailable", why=str(exc), poll_seconds=self.poll_seconds)
            inotify = None
        try:
            while not self.stop.is_set():
                if inotify is not None and not inotify.watching:
                    inotify.watch(self.config_dir)  # fails while the dir is absent: poll meanwhile
                if inotify is not None and inotify.watching:
                    # kubelet's swap is several steps: let it settle, then read through ..data
                    if inotify.wait(1.0):
                        self.stop.wait(0.02)
                        inotify.wait(0)
                else:
                    self.stop.wait(self.poll_seconds)
                self._check()
        finally:
            if inotify is not None:
                inotify.close()
