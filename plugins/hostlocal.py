"""pycni-host-local (not yet implemented: answers VERSION only)."""
from .plugin import Plugin


class _Unimplemented(Plugin):
    name = "pycni-host-local"


PLUGIN = _Unimplemented()
