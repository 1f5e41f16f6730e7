"""Helpers for the pycni-host-local tests: configs and calls to our zipapp or the reference binary."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from helpers import REFERENCE_BIN, exec_plugin, plugin_env, unique

OURS = "pycni-host-local"
REFERENCE = REFERENCE_BIN / "host-local"
FAKE_NETNS = "/var/run/netns/hostlocal-test-none"  # host-local never enters the netns
WORKERS = 32


class Net:
    """One test network: a unique name and its own dataDir."""

    def __init__(self, data_dir: Path, ipam: Optional[Dict[str, Any]] = None, version: str = "1.0.0",
                 name: Optional[str] = None) -> None:
        self.name = unique("hl") if name is None else name
        self.data_dir = data_dir
        self.version = version
        self.ipam = {"type": "host-local", "dataDir": str(data_dir),
                     "ranges": [[{"subnet": "10.77.0.0/24"}]], **(ipam or {})}

    @property
    def dir(self) -> Path:
        return self.data_dir / self.name

    def conf(self, version: Optional[str] = None, **top: Any) -> Dict[str, Any]:
        return {"cniVersion": version or self.version, "name": self.name, "type": "bridge",
                "ipam": dict(self.ipam), **top}

    def leases(self) -> Dict[str, bytes]:
        """Reservation files: address -> exact content."""
        if not self.dir.exists():
            return {}
        return {p.name: p.read_bytes() for p in self.dir.iterdir()
                if p.is_file() and p.name != "lock" and not p.name.startswith("last_reserved_ip.")}

    def call(self, binary: Path, command: str, cid: str = "", ifname: str = "eth0", cni_args: str = "",
             conf: Optional[Dict[str, Any]] = None, **top: Any) -> Tuple[Any, int, str]:
        env = plugin_env(command, netns=FAKE_NETNS if command in ("ADD", "CHECK") else "",
                         container_id=cid, ifname=ifname if cid else "", args=cni_args, cni_path=str(REFERENCE_BIN))
        return exec_plugin(binary, env, conf if conf is not None else self.conf(**top))


def addresses(result: Dict[str, Any]) -> List[str]:
    return [ip["address"] for ip in result["ips"]]


def parallel(fn: Callable[[Any], Any], items: Iterable[Any]) -> List[Any]:
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(fn, items))


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
