"""The manifest of what this installer put on the host, so `uninstall` removes exactly that.

Kept beside the binaries as `.pycni-installer.state` (a dotfile in the bin dir:
no runtime reads it, and writing it does not trigger a conf dir reload).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from .fsutil import atomic_write, read_bytes

STATE_NAME = ".pycni-installer.state"


class Manifest:
    """What was recorded, plus what is still to record: `flush` raises OSError while the bin dir cannot hold
    the file, and keeps the entries for the next try (a write that failed once is never forgotten)."""

    def __init__(self, bin_dir: Path) -> None:
        self.path = bin_dir / STATE_NAME
        self.data = self._load()
        self.pending: Dict[str, Dict[str, str]] = {"binaries": {}, "conflists": {}, "runtime": {}}
        self.pending_moved: List[List[str]] = []

    def _load(self) -> Dict[str, Any]:
        raw = read_bytes(self.path)
        data: Dict[str, Any] = {}
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = {}
        data.setdefault("version", 1)
        data.setdefault("binaries", {})  # file path -> sha256 we wrote
        data.setdefault("conflists", {})  # file path -> sha256 we wrote
        data.setdefault("runtime", {})  # bundle version dir -> bundle id (runtime.py)
        data.setdefault("moved_aside", [])  # [conf dir, original name, aside name]
        return data

    def _save(self) -> None:
        blob = (json.dumps(self.data, indent=1, sort_keys=True) + "\n").encode()
        if read_bytes(self.path) != blob:
            atomic_write(self.path, blob, 0o644)

    def flush(self) -> None:
        """Write the pending entries (OSError, entries kept, when the file cannot be written)."""
        if not any(self.pending.values()) and not self.pending_moved:
            return
        self.data = self._load()  # another installer (a rolling update's overlap) may have written it
        changed = bool(self.pending_moved)
        for section, files in self.pending.items():
            if any(self.data[section].get(k) != v for k, v in files.items()):
                self.data[section].update(files)
                changed = True
        self.data["moved_aside"].extend(self.pending_moved)
        if changed:
            self._save()
        self.pending = {"binaries": {}, "conflists": {}, "runtime": {}}
        self.pending_moved = []

    def record(self, section: str, files: Dict[str, str]) -> None:
        """Record `files` in `section` now (OSError, kept pending, when the file cannot be written)."""
        self.pending[section].update(files)
        self.flush()

    def keep_cleanup_input(self, conflists: List[bytes]) -> List[bytes]:
        """The conflists a node cleanup works from: those given, saved here (while the manifest
        exists) so that a retry after their files are gone still has them; else the saved ones."""
        saved = [c.encode() for c in self.data.get("cleanup_conflists", [])]
        if conflists and self.path.exists():
            self.data["cleanup_conflists"] = [c.decode(errors="replace") for c in conflists]
            self._save()
        return conflists or saved

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
