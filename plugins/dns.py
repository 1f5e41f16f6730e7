"""pycni-dns (not yet implemented: answers VERSION only)."""
from .plugin import Plugin


class _Unimplemented(Plugin):
    name = "pycni-dns"


PLUGIN = _Unimplemented()
