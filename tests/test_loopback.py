"""pycni-loopback, the `loopback` runtimes exec for every pod sandbox: lo up, nothing else (issue 19 item 3).

Every verb is compared with the reference loopback plugin in /usr/lib/cni on real namespaces.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from helpers import REFERENCE_BIN, exec_plugin, in_netns, netns_path, plugin_env, sh, unique

# 1.0.0: the reference here predates 1.1.0
CONF = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}


@pytest.fixture
def fresh_netns() -> Iterator[callable]:
    """Namespaces as a runtime makes them: lo still down."""
    made = []

    def make() -> str:
        name = unique("lo")
        sh("ip", "netns", "add", name)
        made.append(name)
        return name

    yield make
    for name in made:
        sh("ip", "netns", "del", name, check=False)


def lo_up(ns: str) -> bool:
    out = in_netns(ns, "ip", "-j", "link", "show", "dev", "lo").stdout
    return "UP" in json.loads(out)[0]["flags"]


def call(binary: Path, command: str, ns: str, conf=CONF):
    env = plugin_env(command, netns_path(ns) if ns else "", "ctr-lo", ifname="lo", cni_path=str(REFERENCE_BIN))
    return exec_plugin(binary, env, conf)


@pytest.mark.parametrize("binary", ["pycni", "reference"])
def test_add_check_del_as_the_reference(binary: str, bin_dir: Path, fresh_netns) -> None:
    plugin = bin_dir / "pycni-loopback" if binary == "pycni" else REFERENCE_BIN / "loopback"
    ns = fresh_netns()
    assert not lo_up(ns)
    out, rc, err = call(plugin, "ADD", ns)
    assert rc == 0, (out, err)
    assert lo_up(ns)
    assert out["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": netns_path(ns)}]
    assert {ip["address"] for ip in out["ips"]} == {"127.0.0.1/8", "::1/128"}
    assert all(ip["interface"] == 0 for ip in out["ips"])
    assert call(plugin, "CHECK", ns, {**CONF, "prevResult": out})[1] == 0
    assert call(plugin, "DEL", ns)[1] == 0
    assert not lo_up(ns)
    out, rc, _ = call(plugin, "CHECK", ns, {**CONF, "prevResult": out})
    assert rc != 0 and out["code"]  # lo down: CHECK fails with a CNI error
    sh("ip", "netns", "del", ns)
    assert call(plugin, "DEL", ns)[1] == 0  # idempotent: the namespace is gone
    assert call(plugin, "DEL", "")[1] == 0  # no CNI_NETNS at all


def test_same_answers_as_the_reference(bin_dir: Path, fresh_netns) -> None:
    """The same parsed answers on ADD and chained ADD (the prevResult passed through); STATUS
    and GC (1.1.0, which this reference predates) succeed with nothing to do."""
    chained = {**CONF, "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.1.2/24"}]}}
    for conf in (CONF, chained):
        answers = []
        for plugin in (bin_dir / "pycni-loopback", REFERENCE_BIN / "loopback"):
            out, rc, _ = call(plugin, "ADD", fresh_netns(), conf)
            answers.append((rc, {k: v for k, v in out.items() if k != "interfaces"}))
        assert answers[0] == answers[1]
    for command in ("STATUS", "GC"):
        env = plugin_env(command, cni_path=str(REFERENCE_BIN))
        conf = {**CONF, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}  # GC must name the live ones
        assert exec_plugin(bin_dir / "pycni-loopback", env, conf)[:2] == (None, 0)
