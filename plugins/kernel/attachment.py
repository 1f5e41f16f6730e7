"""Stable tags naming one attachment (network + container + ifname), so DEL and GC can find
host-side state (the host veth, masquerade chains) from the container ID alone."""
from __future__ import annotations

from pycni.plugins.core.record import FrozenRecord

try:  # the bare SHA-256 module: `hashlib` loads OpenSSL, ~5-20 ms on every plugin exec
    from _sha256 import sha256  # CPython <= 3.11
except ImportError:
    try:
        from _sha2 import sha256  # CPython >= 3.12
    except ImportError:
        from hashlib import sha256


def _digest(*parts: str) -> str:
    return sha256("\0".join(parts).encode()).hexdigest()


class Tag(FrozenRecord):
    __slots__ = ("network", "container_id", "ifname")
    network: str
    container_id: str
    ifname: str

    @property
    def net(self) -> str:
        """8 hex digits naming the network."""
        return _digest(self.network)[:8]

    @property
    def attachment(self) -> str:
        """16 hex digits naming network + container + ifname."""
        return _digest(self.network, self.container_id, self.ifname)[:16]

    @property
    def prefix(self) -> str:
        """`pycni:<net>:<attachment>`: what DEL matches on (aliases, comments)."""
        return f"pycni:{self.net}:{self.attachment}"

    def describe(self, limit: int) -> str:
        """The prefix plus who it belongs to, for humans, cut to `limit` characters."""
        return f"{self.prefix} {self.network} {self.ifname} {self.container_id}"[:limit]


def network_prefix(network: str) -> str:
    """`pycni:<net>:`: what GC matches on to find this network's attachments."""
    return f"pycni:{_digest(network)[:8]}:"


def parse_prefix(text: str):
    """(net, attachment) from a `pycni:<net>:<attachment>...` string, or None."""
    if not text.startswith("pycni:"):
        return None
    parts = text.split(" ", 1)[0].split(":")
    if len(parts) != 3 or len(parts[1]) != 8 or len(parts[2]) != 16:
        return None
    return parts[1], parts[2]
