"""`pycni-installer uninstall`: remove exactly what the manifest says we wrote, restore what we moved.

A file whose content is no longer what we wrote (someone replaced it) is left alone.
Never run on SIGTERM: a rolling update and an uninstall look the same to a pod.
"""
from __future__ import annotations

from pathlib import Path

from .fsutil import HashCache
from .log import Log
from .runtime import remove_runtime
from .settings import Settings
from .state import Manifest
from .writer import ConfWriter


def uninstall(settings: Settings, log: Log) -> int:
    manifest = Manifest(settings.bin_dir)
    if not manifest.path.exists():
        log.info("uninstall_nothing", why=f"no manifest {manifest.path}: nothing was installed by pycni-installer")
        return 0
    hashes = HashCache()
    kept = 0
    for section in ("conflists", "binaries"):  # the config first: it names the binaries
        for name, digest in sorted(manifest.data[section].items()):
            path = Path(name)
            have = hashes.digest(path)
            if have is None:
                log.info("uninstall_absent", file=name)
            elif have != digest:
                kept += 1
                log.warning("uninstall_kept", file=name, why="content changed since pycni-installer wrote it")
            else:
                path.unlink()
                log.info("uninstall_removed", file=name)
    remove_runtime(settings.bin_dir, sorted(manifest.data["runtime"].values()), log)  # after the binaries using it
    for conf_dir, original, aside in manifest.data["moved_aside"]:
        ConfWriter(Path(conf_dir), settings.conf_name, log).restore([(original, aside)])
    manifest.remove()
    log.info("uninstall_done", kept=kept)
    return 0
