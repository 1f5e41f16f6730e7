"""pycni-macvlan (not yet implemented: answers VERSION only)."""
from .plugin import Plugin


class _Unimplemented(Plugin):
    name = "pycni-macvlan"


PLUGIN = _Unimplemented()
