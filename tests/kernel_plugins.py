"""Helpers for the bridge/macvlan kernel tests: each test gets its own "node" netns, in which the
plugins run (so bridges, host veths, nftables tables and sysctls stay private to the test)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from helpers import REFERENCE_BIN, exec_plugin, in_netns, netns_path, plugin_env, sh


class Node:
    """A netns standing in for the host; plugins are exec'ed inside it with `ip netns exec`."""

    def __init__(self, name: str, bin_dir: Path, data_dir: Path) -> None:
        self.name = name
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.cni_path = f"{bin_dir}:{REFERENCE_BIN}"

    def plugin(self, binary: str) -> str:
        if binary.startswith("pycni-"):
            return str(self.bin_dir / binary)
        return str(REFERENCE_BIN / binary)

    def run(self, command: str, conf: Dict[str, Any], netns: str = "", container_id: str = "c1",
            ifname: str = "eth0", args: str = "", binary: Optional[str] = None) -> Tuple[Any, int, str]:
        env = plugin_env(command, netns=netns_path(netns) if netns else "", container_id=container_id,
                         ifname=ifname, args=args, cni_path=self.cni_path)
        return exec_plugin(self.plugin(binary or conf["type"]), env, conf, netns=self.name)

    def ok(self, command: str, conf: Dict[str, Any], netns: str = "", **kw: Any) -> Any:
        out, rc, err = self.run(command, conf, netns, **kw)
        assert rc == 0, f"{command} failed: {out} {err}"
        return out

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return in_netns(self.name, *cmd, check=check)

    def links(self) -> List[Dict[str, Any]]:
        return json.loads(self.sh("ip", "-j", "-d", "link", "show").stdout)

    def veths(self) -> List[str]:
        return [l["ifname"] for l in self.links() if l.get("linkinfo", {}).get("info_kind") == "veth"]

    def ruleset(self) -> str:
        return self.sh("nft", "list", "ruleset").stdout.decode()

    def read(self, path: str) -> str:
        return self.sh("cat", path).stdout.decode().strip()

    def leases(self, network: str) -> List[str]:
        """Addresses host-local holds for `network` (files named by address)."""
        folder = self.data_dir / network
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir()
                      if not p.name.startswith(("last_reserved_ip", "lock", ".")) and p.is_file()
                      and ("." in p.name or ":" in p.name))


def link_json(ns: str, name: str) -> Dict[str, Any]:
    return json.loads(in_netns(ns, "ip", "-j", "-d", "link", "show", "dev", name).stdout)[0]


def addrs(ns: str, name: str) -> List[Dict[str, Any]]:
    return json.loads(in_netns(ns, "ip", "-j", "addr", "show", "dev", name).stdout)[0]["addr_info"]


def ping(ns: str, address: str, count: int = 1) -> bool:
    cmd = ["ping", "-c", str(count), "-W", "2", address]
    return in_netns(ns, *cmd, check=False).returncode == 0


def host_local(data_dir: Path, *subnets: str, plugin: str = "host-local") -> Dict[str, Any]:
    return {"type": plugin, "dataDir": str(data_dir), "ranges": [[{"subnet": s}] for s in subnets]}


def shape(result: Dict[str, Any]) -> Dict[str, Any]:
    """What must match between our result and the reference's: keys, interface layout, ips[].interface."""
    return {
        "keys": sorted(result),
        "interfaces": [(sorted(i), bool(i.get("sandbox"))) for i in result.get("interfaces", [])],
        "ips": [(sorted(i), i.get("interface")) for i in result.get("ips", [])],
        "routes": sorted(r["dst"] for r in result.get("routes", [])),
    }


def reference_missing(name: str) -> bool:
    return not os.access(REFERENCE_BIN / name, os.X_OK)


def kernel_supports_vlan_filtering() -> bool:
    name = f"vf{os.getpid() % 100000}"
    ok = sh("ip", "link", "add", name, "type", "bridge", "vlan_filtering", "1", check=False).returncode == 0
    sh("ip", "link", "del", name, check=False)
    return ok


import pytest  # noqa: E402


@pytest.fixture
def node(make_netns, bin_dir: Path, tmp_path: Path) -> Node:
    """A fresh "host" netns with the built plugins (deleted, with everything in it, after the test)."""
    return Node(make_netns("nd"), bin_dir, tmp_path / "ipam")
