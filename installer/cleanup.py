"""`pycni-installer uninstall --node`: what pycni leaves on a node outside the CNI dirs, removed.

Run by the chart's uninstall mode on every node, after the files (conflist first: no new pod is
networked while this runs), and after `pycni-agent cleanup` (agent/cleanup.py: the agent's nft
table, routes and VXLAN device; the agent sits above the installer, so its state is its own to
remove). Each step touches only what pycni made and says what it kept and why:
- pycni-bridge: each bridge the conflist names that pycni-bridge created (its ifalias) and that has
  no ports left, which takes its gateway addresses with it; a bridge with pods still on it stays;
- pycni-host-local: the network's store (dataDir/<network> and its index, dataDir/.pycni-hostlocal/<network>);
- pycni-dns: the network's DNS server is stopped and its state dir removed.
The conflist is read before it is removed: it names the bridges, stores and state dirs.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import suppress
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .log import Log


def conflist_plugins(raw: Optional[bytes]) -> Tuple[str, List[Dict[str, Any]]]:
    """(network name, plugin objects) of a conflist's bytes; ("", []) when unreadable."""
    try:
        conf = json.loads(raw or b"")
    except ValueError:
        return "", []
    if not isinstance(conf, dict) or not isinstance(conf.get("plugins"), list):
        return "", []
    return str(conf.get("name") or ""), [p for p in conf["plugins"] if isinstance(p, dict)]


def _ipam(plugin: Dict[str, Any]) -> Dict[str, Any]:
    ipam = plugin.get("ipam")
    return ipam if isinstance(ipam, dict) else {}


class Steps:
    """Cleanup steps that each log their failure and let the others run."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.failed: List[str] = []

    def _step(self, what: str, func: Any, *args: Any) -> None:
        """Run one step; a failure is logged and counted, and the other steps still run."""
        try:
            func(*args)
        except Exception as exc:
            self.failed.append(what)
            self.log.error("cleanup_failed", step=what, why=f"{type(exc).__name__}: {exc}")



class NodeCleanup(Steps):
    def run(self, conflists: List[bytes]) -> bool:
        """Clean the node; True when every step worked."""
        for raw in conflists:
            network, plugins = conflist_plugins(raw)
            for plugin in plugins:
                kind = plugin.get("type")
                if kind == "pycni-bridge":
                    self._step(f"bridge of {network}", self.bridge, str(plugin.get("bridge") or "cni0"))
                if _ipam(plugin).get("type") == "pycni-host-local" and network:
                    self._step(f"IPAM store of {network}", self.ipam_store, _ipam(plugin), network)
                if kind == "pycni-dns" and network:
                    self._step(f"DNS of {network}", self.dns, plugin, network)
        return not self.failed

    def bridge(self, name: str) -> None:
        from pycni.plugins.kernel import netlink as nl
        from pycni.plugins.main.bridge import BRIDGE_ALIAS

        with nl.RtSocket() as sock:
            link = sock.link(name)
            if link is None:
                return
            ports = [p.name for p in sock.links() if p.master == link.index]
            if link.kind != "bridge" or link.alias != BRIDGE_ALIAS:
                self.log.warning("cleanup_kept", what=f"bridge {name}", why="not created by pycni-bridge")
            elif ports:
                self.log.warning("cleanup_kept", what=f"bridge {name}",
                                 why=f"pods still attached ({', '.join(sorted(ports)[:5])}): delete them first")
            else:
                sock.delete_link(index=link.index)
                self.log.info("cleanup_removed", what=f"bridge {name} (and its gateway addresses)")

    def ipam_store(self, ipam: Dict[str, Any], network: str) -> None:
        from pycni.plugins.ipam.hostlocal.config import DEFAULT_DATA_DIR
        from pycni.plugins.ipam.hostlocal.store import Store

        store = Store(str(ipam.get("dataDir") or DEFAULT_DATA_DIR), network)  # no I/O; refuses a bad name
        self.remove_dir(store.dir, "ipam_store")
        self.remove_dir(store.state_dir, "ipam_store")
        with suppress(OSError):  # the index dir of all networks, once the last is gone
            os.rmdir(os.path.dirname(store.state_dir))

    def remove_dir(self, path: str, what: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
            self.log.info("cleanup_removed", what=f"{what} {path}")

    def dns(self, plugin: Dict[str, Any], network: str) -> None:
        from pycni.plugins.meta.dns import daemon
        from pycni.plugins.meta.dns.records import DEFAULT_STATE_DIR, NetworkStore

        store = NetworkStore(str(plugin.get("stateDir") or DEFAULT_STATE_DIR), network)
        if not store.exists():
            return
        with store.locked():
            daemon.stop(store)
        self.remove_dir(store.dir, "dns_state")


def installed_conflists(paths: Iterator[str]) -> List[bytes]:
    """The bytes of each conflist we wrote that is still there (read before the files go)."""
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except OSError:
            pass
    return out
