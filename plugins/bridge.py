"""pycni-bridge (not yet implemented: answers VERSION only)."""
from .plugin import Plugin


class _Unimplemented(Plugin):
    name = "pycni-bridge"


PLUGIN = _Unimplemented()
