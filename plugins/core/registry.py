"""Which module implements which plugin binary. Modules are imported only when a verb needs them."""
from __future__ import annotations

import importlib

from pycni.plugins.core.errors import INVALID_CONFIG, CNIError

PLUGIN_MODULES = {
    "pycni-bridge": "pycni.plugins.main.bridge",
    "pycni-macvlan": "pycni.plugins.main.macvlan",
    "pycni-host-local": "pycni.plugins.ipam.hostlocal.plugin",
    "pycni-dns": "pycni.plugins.meta.dns.plugin",
    "pycni-loopback": "pycni.plugins.main.loopback",
}


def load(name: str):
    """The plugin object (a `Plugin`) for a binary name such as `pycni-bridge`."""
    module_name = PLUGIN_MODULES.get(name)
    if module_name is None:
        raise CNIError(INVALID_CONFIG, f"unknown pycni plugin {name!r}")
    return importlib.import_module(module_name).PLUGIN
