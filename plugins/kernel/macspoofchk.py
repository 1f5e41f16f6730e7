"""MAC spoof check (bridge `macspoofchk`): frames entering the bridge from a container's host veth
must carry the container's MAC. One bridge-family prerouting chain per attachment in
`bridge pycni`, named and removed like the masquerade chains (masquerade.NftTagged)."""
from __future__ import annotations

from pycni.plugins.kernel.attachment import Tag
from pycni.plugins.kernel.masquerade import TABLE, NftTagged


class MacSpoofCheck(NftTagged):
    family = "bridge"
    key = "macspoofchk"

    def setup_script(self, tag: Tag, host_ifname: str, mac: str) -> str:
        chain, comment = self.chain(tag), tag.describe(120)
        lines = self._head(tag, "type filter hook prerouting priority -300")
        lines.append(f'add rule bridge {TABLE} {chain} iifname "{host_ifname}" ether saddr != {mac} drop '
                     f'comment "{comment}"')
        return "\n".join(lines) + "\n"

    def setup(self, tag: Tag, host_ifname: str, mac: str) -> None:
        self._apply(self.setup_script(tag, host_ifname, mac), "add MAC spoof check")
