"""Source NAT policy of the pod network, in the agent's own nftables table `inet pycni-agent`.

pycni-bridge's `ipMasq` masquerades everything a pod sends outside its OWN subnet (the
node's podCIDR), which would also hide pod addresses from pods on other nodes. NAT base
chains on one hook all run in priority order until one of them sets up a NAT binding,
and an `accept` does not stop the next chain; so the agent's chain at `srcnat - 10`
gives pod-to-pod traffic a null binding (`snat to <its own source>`): the connection is
NATed "to itself", and the bridge's masquerade chain is never consulted for it. With
`masquerade: true` the agent also masquerades what leaves the cluster pod network from
this node's podCIDRs (bridge `ipMasq` can then be off; with both on the result is the same).

The table is replaced as a whole in one `nft -f` transaction whenever its content changes
(and at every resync), so it never holds stale sets.
"""
from __future__ import annotations

import ipaddress
import subprocess
from typing import Iterable, List, Optional

from pycni.plugins.kernel.masquerade import find_tool

TABLE = "pycni-agent"
_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


def _by_family(cidrs: Iterable[str], family: int) -> List[str]:
    return [c for c in cidrs if ipaddress.ip_network(c, strict=False).version == family]


def ruleset(cluster_cidrs: Iterable[str], local_cidrs: Iterable[str], masquerade: bool) -> str:
    """The `nft -f` script that (re)creates the table; pure, so it can be compared and tested."""
    cluster, local = list(cluster_cidrs), list(local_cidrs)
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    keep: List[str] = []
    masq: List[str] = []
    for family in (4, 6):
        members = _by_family(cluster, family)
        if not members:
            continue
        fam = "ip" if family == 4 else "ip6"
        lines.append(f"  set pods{family} {{ type {'ipv4_addr' if family == 4 else 'ipv6_addr'}; "
                     f"flags interval; auto-merge; elements = {{ {', '.join(members)} }} }}")
        keep.append(f'    {fam} saddr @pods{family} {fam} daddr @pods{family} snat {fam} to {fam} saddr '
                    f'comment "pod to pod keeps its source"')
        mine = _by_family(local, family)
        if masquerade and mine:
            masq.append(f'    {fam} saddr {{ {", ".join(mine)} }} {fam} daddr != @pods{family} '
                        f'{fam} daddr != {_MULTICAST[family]} masquerade comment "leaving the pod network"')
    if keep:
        lines.append("  chain keep-pod-source {")
        lines.append("    type nat hook postrouting priority srcnat - 10; policy accept;")
        lines += keep
        lines.append("  }")
    if masq:
        lines.append("  chain masquerade-out {")
        lines.append("    type nat hook postrouting priority srcnat + 10; policy accept;")
        lines += masq
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


class NatPolicy:
    def __init__(self) -> None:
        self.nft: Optional[str] = find_tool("nft")
        self.applied: Optional[str] = None

    def apply(self, script: str, force: bool = False) -> bool:
        """Install `script` unless it is what we installed last (force: at resync). True if applied."""
        if script == self.applied and not force:
            return False
        if self.nft is None:
            raise RuntimeError("no `nft` command found: cannot install the pod network's NAT policy")
        proc = subprocess.run([self.nft, "-f", "-"], input=script.encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        if proc.returncode != 0:
            self.applied = None
            raise RuntimeError(f"nftables: {proc.stderr.decode(errors='replace').strip()}")
        self.applied = script
        return True
