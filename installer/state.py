"""The manifest of what this installer put on the host, so `uninstall` removes exactly that.

Kept beside the binaries as `.pycni-installer.state` (a dotfile in the bin dir:
no runtime reads it, and writing it does not trigger a conf dir reload).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .fsutil import atomic_write, read_bytes

STATE_NAME = ".pycni-installer.state"


class Manifest:
    def __init__(self, bin_dir: Path) -> None:
        self.path = bin_dir / STATE_NAME
        self.data = self._load()

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

    def record_files(self, section: str, files: Dict[str, str]) -> None:
        self.data = self._load()  # another installer (a rolling update's overlap) may have written it
        if any(self.data[section].get(k) != v for k, v in files.items()):
            self.data[section].update(files)
            self._save()

    def record_moved(self, conf_dir: Path, moved: List[Tuple[str, str]]) -> None:
        if moved:
            self.data = self._load()
            self.data["moved_aside"].extend([str(conf_dir), a, b] for a, b in moved)
            self._save()

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
