"""core/registry.py, the one plugin table, and what reads it."""
from __future__ import annotations

import json
import subprocess
import sys

from pycni.plugins.core.plugin import Plugin
from pycni.plugins.core.registry import PLUGIN_MODULES, PLUGINS, VENDORED, load


def test_every_row_names_a_plugin_of_that_name() -> None:
    assert len({name for name, _, _ in PLUGINS}) == len(PLUGINS) == len(PLUGIN_MODULES) == len(VENDORED)
    for name in PLUGIN_MODULES:
        plugin = load(name)
        assert isinstance(plugin, Plugin) and plugin.name == name


def test_warm_up_loads_every_plugin_and_what_its_verbs_import_lazily() -> None:
    """What the node server runs before forking workers: afterwards a request imports nothing new."""
    code = ("import json, sys; from pycni.plugins.core.dispatch import warm_up; warm_up(); "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE).stdout))
    assert set(PLUGIN_MODULES.values()) <= loaded
    lazy = {"json", "pycni.plugins.core.delegate", "pycni.plugins.kernel.netlink", "pycni.plugins.kernel.masquerade",
            "pycni.plugins.kernel.ifconfig", "pycni.plugins.meta.dns.daemon"}
    assert lazy <= loaded, lazy - loaded
