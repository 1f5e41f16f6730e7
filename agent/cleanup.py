"""`pycni-agent cleanup`: the agent's node state removed, for the chart's uninstall mode.

What the agent made and nothing else: its nftables table `inet pycni-agent`, its routes
(protocol 156) and its VXLAN device (the link carrying the agent's alias). A plain exit of the
agent keeps all of them on purpose (a restarting agent must not cut pods off); this is the
explicit act. The installer's `uninstall --node` removes the rest (installer/cleanup.py).
"""
from __future__ import annotations

import subprocess

from pycni.installer.cleanup import Steps
from pycni.plugins.kernel.masquerade import find_tool

from .masq import TABLE


class AgentCleanup(Steps):
    def run(self) -> bool:
        """Remove the agent's state; True when every step worked (idempotent: gone is fine)."""
        self._step("agent nftables", self.table)
        self._step("agent routes and VXLAN device", self.links)
        return not self.failed

    def table(self) -> None:
        nft = find_tool("nft")
        if nft is None:
            self.log.warning("cleanup_kept", what=f"nft table inet {TABLE}", why="no nft command here")
            return
        if subprocess.run([nft, "list", "table", "inet", TABLE], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode != 0:
            return  # not there
        proc = subprocess.run([nft, "delete", "table", "inet", TABLE], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"nft delete table inet {TABLE}: {proc.stderr.decode(errors='replace').strip()}")
        self.log.info("cleanup_removed", what=f"nft table inet {TABLE}")

    def links(self) -> None:
        from .kernel import ALIAS, Kernel

        kernel = Kernel()
        try:
            owned, _ = kernel.main_routes()
            for route in owned:
                kernel.delete_route(route)
                self.log.info("cleanup_removed", what=f"route {route.dst} (pycni-agent)")
            for link in kernel.ipr.get_links():
                if link.get("ifalias") != ALIAS:
                    continue
                device = kernel.vxlan_link(link.get("ifname"))
                if device is not None and device.ours:  # the agent's own test: a VXLAN device with its alias
                    kernel.delete_link(device.index)
                    self.log.info("cleanup_removed", what=f"VXLAN device {link.get('ifname')}")
        finally:
            kernel.close()
