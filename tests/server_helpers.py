"""Helpers for the node server's tiers: its health counters, host-local requests through it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Tuple

from helpers import exec_plugin, plugin_env
from pycni.plugins.server.node import health


def status(path: Path) -> Dict[str, int]:
    """The health line's counters: served, workers, busy, forked, queued, reading, handed."""
    line = health(str(path))
    assert line and line.startswith("ok "), line
    return {k: int(v) for k, v in (field.split("=") for field in line.split()[1:])}


def host_local_conf(data_dir: Path, subnet: str) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "name": "reuse", "type": "bridge",
                       "ipam": {"type": "pycni-host-local", "dataDir": str(data_dir),
                                "ranges": [[{"subnet": subnet}]]}}).encode()


def host_local_env(path: Path, netns: str, command: str, cid: str, **extra: str) -> Dict[str, str]:
    """The environment of a host-local request through the server at `path` (extra: more variables)."""
    return plugin_env(command, f"/var/run/netns/{netns}", cid, extra={"PYCNI_SERVER_SOCKET": str(path), **extra})


def host_local(bin_dir: Path, path: Path, netns: str, data_dir: Path, subnet: str
               ) -> Callable[[str, str], Tuple[dict, int]]:
    """One host-local ADD or DEL through the server at `path` for container `cid`."""
    conf = host_local_conf(data_dir, subnet)

    def call(command: str, cid: str) -> Tuple[dict, int]:
        out, rc, _ = exec_plugin(bin_dir / "pycni-host-local", host_local_env(path, netns, command, cid), conf)
        return out, rc

    return call
