"""`pycni-installer uninstall`: remove exactly what the manifest says we wrote, restore what we moved.

A file whose content is no longer what we wrote (someone replaced it) is left alone.
Never run on SIGTERM: a rolling update and an uninstall look the same to a pod.
With --node (the chart's uninstall mode) the node's pycni state goes too (cleanup.py); with
--idle the process then waits for SIGTERM, a DaemonSet pod that stays Running (and Ready).
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import List

from .cleanup import NodeCleanup, installed_conflists
from .fsutil import HashCache
from .log import Log
from .runtime import remove_runtime
from .settings import Settings
from .state import Manifest
from .writer import ConfWriter


def remove_files(settings: Settings, manifest: Manifest, log: Log) -> int:
    """Remove our files (conflists first: they name the binaries); the number kept because changed."""
    hashes = HashCache()
    kept = 0
    for section in ("conflists", "binaries"):
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
    return kept


def uninstall(settings: Settings, log: Log) -> int:
    manifest = Manifest(settings.bin_dir)
    code = 0
    if not manifest.path.exists():
        log.info("uninstall_nothing", why=f"no manifest {manifest.path}: no files installed by pycni-installer")
    if settings.node_cleanup:
        # The conflists name the bridges and stores to clean: kept in the manifest until the node is
        # clean, so a cleanup retried after a failure still knows them.
        conflists: List[bytes] = manifest.keep_cleanup_input(installed_conflists(iter(manifest.data["conflists"])))
    kept = remove_files(settings, manifest, log) if manifest.path.exists() else 0
    if settings.node_cleanup and not NodeCleanup(log).run(conflists):
        code = 1
        log.error("uninstall_incomplete", why="node cleanup failed (see cleanup_failed); will retry")
    if code == 0:
        manifest.remove()
    log.info("uninstall_done", kept=kept, node=settings.node_cleanup, ok=code == 0)
    if code == 0 and settings.idle:
        idle(settings.done_marker, log)
    return code


def idle(marker: str, log: Log) -> None:
    """Mark the node done (the readiness probe reads the marker) and wait for SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    Path(marker).write_text("pycni uninstalled from this node\n")
    log.info("uninstall_idle", marker=marker, why="a DaemonSet pod must keep running; delete the DaemonSet now")
    stop.wait()
