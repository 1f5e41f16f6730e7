"""The plugin table: every pycni plugin binary is one row here.

The dispatcher (`load`), zipapp/build.py (which binaries to build, what each
carries) and the node server's warm-up all read it: adding a plugin is one
module exposing `PLUGIN` (a `core.plugin.Plugin`) plus one row.

This module imports nothing of pycni at module level: zipapp/build.py loads it
by path, without an installed pycni. Plugin modules are imported only when a
verb needs them.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from pycni.plugins.core.plugin import Plugin

# (binary, module exposing PLUGIN, libraries beyond the standard library its zipapp carries)
PLUGINS = (
    # netlink through kernel/netlink.py: pyroute2's import alone costs 140-450 ms per exec
    ("pycni-bridge", "pycni.plugins.main.bridge", ()),
    ("pycni-macvlan", "pycni.plugins.main.macvlan", ()),
    ("pycni-host-local", "pycni.plugins.ipam.hostlocal.plugin", ()),
    ("pycni-dns", "pycni.plugins.meta.dns.plugin", ("dnslib",)),
    ("pycni-loopback", "pycni.plugins.main.loopback", ()),
)
PLUGIN_MODULES = {name: module for name, module, _ in PLUGINS}
VENDORED = {name: libraries for name, _, libraries in PLUGINS}


def load(name: str) -> Plugin:
    """The plugin object (a `Plugin`) for a binary name such as `pycni-bridge`."""
    module_name = PLUGIN_MODULES.get(name)
    if module_name is None:
        from pycni.plugins.core.errors import INVALID_CONFIG, CNIError

        raise CNIError(INVALID_CONFIG, f"unknown pycni plugin {name!r}")
    import importlib

    return importlib.import_module(module_name).PLUGIN
