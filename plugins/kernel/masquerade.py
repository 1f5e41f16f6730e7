"""Masquerade for one attachment's addresses, findable again by container ID alone.

nftables (default): table `inet pycni`; one postrouting NAT base chain per
attachment, named `pycni-<net>-<attachment>` (see attachment.Tag), so ADD is
one `nft -f -` transaction and DEL is one too, without listing handles first:
`add chain` (a no-op when present) + `delete chain` succeeds whether or not it
was there. GC lists the table once and deletes the chains of this network
whose attachment is not valid any more.

iptables (`ipMasqBackend: iptables`): a chain `PYCNI-<attachment>` in the nat
table, jumped to from POSTROUTING; every rule carries the tag in a comment.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

from pycni.plugins.kernel.attachment import Tag
from pycni.plugins.core.errors import INTERNAL, INVALID_CONFIG, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Callable, Iterable, List, Optional, Sequence, Set, Tuple
    from pycni.plugins.core.result import IPInterface

TABLE = "pycni"
_TAG_RE = re.compile(r"pycni:([0-9a-f]{8}):([0-9a-f]{16})")
_NFT_CHAIN_RE = re.compile(r"^pycni-([0-9a-f]{8})-([0-9a-f]{16})$")
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin")


def find_tool(name: str) -> Optional[str]:
    """The tool from the usual system directories (runtimes give plugins a bare PATH)."""
    for directory in os.environ.get("PATH", "").split(":") + list(_SBIN):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _run(argv: List[str], script: str = "") -> Tuple[int, str, str]:
    proc = subprocess.run(argv, input=script.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def _multicast(ip: IPInterface) -> str:
    return "224.0.0.0/4" if ip.version == 4 else "ff00::/8"


class NftTagged:
    """Per-attachment base chains `pycni-<net>-<attachment>` in table `<family> pycni` (the `nft` command)."""

    family = "inet"

    def __init__(self) -> None:
        nft = find_tool("nft")
        if nft is None:
            raise CNIError(INVALID_CONFIG, f"{self.key}: needs nftables but no `nft` command was found")
        self.nft = nft

    key = "ipMasqBackend"

    @staticmethod
    def chain(tag: Tag) -> str:
        return f"pycni-{tag.net}-{tag.attachment}"

    def _head(self, tag: Tag, hook: str) -> List[str]:
        chain, comment = self.chain(tag), tag.describe(120)
        return [
            f"table {self.family} {TABLE} {{}}",
            f'add chain {self.family} {TABLE} {chain} {{ {hook}; policy accept; comment "{comment}"; }}',
            f"flush chain {self.family} {TABLE} {chain}",
        ]

    def _apply(self, script: str, what: str) -> None:
        code, _out, err = _run([self.nft, "-f", "-"], script)
        if code != 0:
            raise CNIError(INTERNAL, f"nftables: failed to {what}: {err.strip()}")

    def _delete_script(self, chains: Iterable[str]) -> str:
        lines = [f"table {self.family} {TABLE} {{}}"]
        for chain in chains:
            lines += [f"add chain {self.family} {TABLE} {chain}", f"delete chain {self.family} {TABLE} {chain}"]
        return "\n".join(lines) + "\n"

    def teardown(self, tag: Tag) -> None:
        """Remove the attachment's chain; fine when it is not there (one transaction, no listing first)."""
        self._apply(self._delete_script([self.chain(tag)]), f"remove {self.family} {TABLE} rules")

    def chains(self) -> List[Tuple[str, str, str]]:
        """(chain, net tag, attachment tag) of every pycni chain of this family."""
        code, out, err = _run([self.nft, "-j", "list", "table", self.family, TABLE])
        if code != 0:
            if "No such file" in err:
                return []
            raise CNIError(INTERNAL, f"nftables: failed to list table {self.family} {TABLE}: {err.strip()}")
        found = []
        for item in json.loads(out).get("nftables", []):
            name = item.get("chain", {}).get("name", "")
            match = _NFT_CHAIN_RE.match(name)
            if match:
                found.append((name, match.group(1), match.group(2)))
        return found

    def remove_where(self, keep: Callable[[str, str], bool]) -> List[str]:
        """Delete every pycni chain whose (net, attachment) `keep` rejects; return their names."""
        doomed = [name for name, net, att in self.chains() if not keep(net, att)]
        if doomed:
            self._apply(self._delete_script(doomed), "remove stale rules")
        return doomed


class NftMasquerade(NftTagged):
    """The nftables masquerade backend: one NAT postrouting chain per attachment in `inet pycni`."""

    def setup_script(self, tag: Tag, ips: Sequence[IPInterface]) -> str:
        chain, comment = self.chain(tag), tag.describe(120)
        lines = self._head(tag, "type nat hook postrouting priority srcnat")
        for ip in ips:
            fam = "ip" if ip.version == 4 else "ip6"
            src = ip.ip
            lines.append(f'add rule inet {TABLE} {chain} {fam} saddr {src} {fam} daddr {ip.network} accept '
                         f'comment "{comment}"')
            lines.append(f'add rule inet {TABLE} {chain} {fam} saddr {src} {fam} daddr != {_multicast(ip)} '
                         f'masquerade comment "{comment}"')
        return "\n".join(lines) + "\n"

    def setup(self, tag: Tag, ips: Sequence[IPInterface]) -> None:
        self._apply(self.setup_script(tag, ips), "add masquerade rules")


class IptablesMasquerade:
    """The iptables backend: `iptables-restore --noflush` per address family."""

    def __init__(self) -> None:
        self.tools = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}
        if find_tool("iptables-restore") is None:
            raise CNIError(INVALID_CONFIG, "ipMasqBackend: iptables requested but no `iptables-restore` found")

    @staticmethod
    def chain(tag: Tag) -> str:
        return f"PYCNI-{tag.attachment}"

    def _restore(self, version: int, script: str, what: str) -> None:
        tool = find_tool(self.tools[version][1])
        if tool is None:
            raise CNIError(INTERNAL, f"{self.tools[version][1]} not found")
        code, _out, err = _run([tool, "-w", "--noflush"], script)
        if code != 0:
            raise CNIError(INTERNAL, f"iptables: failed to {what}: {err.strip()}")

    def setup(self, tag: Tag, ips: Sequence[IPInterface]) -> None:
        chain, comment = self.chain(tag), tag.describe(250)
        for version in (4, 6):
            mine = [ip for ip in ips if ip.version == version]
            if not mine:
                continue
            lines = ["*nat", f":{chain} - [0:0]"]
            for ip in mine:
                lines.append(f'-A {chain} -d {ip.network} -m comment --comment "{comment}" -j ACCEPT')
                lines.append(f'-A {chain} ! -d {_multicast(ip)} -m comment --comment "{comment}" -j MASQUERADE')
                lines.append(f'-A POSTROUTING -s {ip.ip} -m comment --comment "{comment}" -j {chain}')
            self._restore(version, "\n".join(lines + ["COMMIT", ""]), "add masquerade rules")

    def remove_where(self, keep: Callable[[str, str], bool]) -> List[str]:
        removed: List[str] = []
        for version in (4, 6):
            tool = find_tool(self.tools[version][0])
            if tool is None:
                continue
            code, out, _err = _run([tool, "-w", "-t", "nat", "-S"])
            if code != 0:
                continue
            doomed: Set[str] = set()
            jumps = []
            for line in out.splitlines():
                match = _TAG_RE.search(line)
                if match and not keep(match.group(1), match.group(2)):
                    doomed.add(f"PYCNI-{match.group(2)}")
                    if line.startswith("-A POSTROUTING "):
                        jumps.append("-D" + line[2:])
            chains = [c for c in doomed if f"-N {c}" in out.splitlines()]
            if not jumps and not chains:
                continue
            lines = ["*nat"] + jumps + [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains] + ["COMMIT", ""]
            self._restore(version, "\n".join(lines), "remove masquerade rules")
            removed += sorted(chains)
        return removed

    def teardown(self, tag: Tag) -> None:
        self.remove_where(lambda net, att: not (net == tag.net and att == tag.attachment))


def backend(name: str):
    """The masquerade backend for `ipMasqBackend` (validated by the plugin's config)."""
    return IptablesMasquerade() if name == "iptables" else NftMasquerade()
