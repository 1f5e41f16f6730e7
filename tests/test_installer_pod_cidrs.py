"""--pod-cidrs: the podCIDR placeholders on a node without Kubernetes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pycni.installer.settings import parse

TEMPLATE = "cniVersion: 1.1.0\nname: t\nplugins:\n- type: pycni-host-local\n  ipam: {ranges: __POD_CIDR_RANGES__}\n"


def test_once_renders_the_given_pod_cidrs_without_any_api(bin_dir: Path, tmp_path: Path) -> None:
    for d in ("cfg", "bin", "net"):
        (tmp_path / d).mkdir()
    (tmp_path / "cfg" / "conflist.yaml").write_text(TEMPLATE)
    proc = subprocess.run([sys.executable, "-m", "pycni.installer", "--once", "--source-dir", str(bin_dir),
                           "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "net"),
                           "--config-dir", str(tmp_path / "cfg"), "--node-name", "n1", "--listen", "off",
                           "--pod-cidrs", "10.9.0.0/24, fd00:9::/64"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    conf = json.loads((tmp_path / "net" / "10-pycni.conflist").read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/64"}]]


@pytest.mark.parametrize("bad", ["10.9.0.0/33", "nope", "10.9.0.1/24x"])
def test_bad_pod_cidrs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="--pod-cidrs"):
        parse(["--pod-cidrs", bad], {})


@pytest.mark.parametrize("network_yaml,expect", [
    (None, 1380), ("backend: host-gw\n", 1380), ("backend: vxlan\n", 1330),
    ("backend: vxlan\nvxlan: {mtu: 1300}\n", 1300), ("backend: bogus\n", 1380),
])
def test_mtu_placeholder_accounts_for_the_vxlan_overlay(bin_dir: Path, tmp_path: Path, netns: str,
                                                        network_yaml, expect) -> None:
    """In a namespace whose default-route interface has MTU 1380, as a node's would."""
    for cmd in (["link", "add", "v0", "mtu", "1380", "type", "veth", "peer", "name", "v1"],
                ["link", "set", "v0", "up"], ["addr", "add", "192.0.2.1/24", "dev", "v0"],
                ["route", "add", "default", "via", "192.0.2.2", "dev", "v0", "onlink"]):
        subprocess.run(["ip", "-n", netns, *cmd], check=True)
    for d in ("cfg", "bin", "net"):
        (tmp_path / d).mkdir()
    (tmp_path / "cfg" / "conflist.yaml").write_text(
        "cniVersion: 1.0.0\nname: t\nplugins:\n- type: pycni-bridge\n  mtu: __MTU__\n  ipam: {}\n")
    if network_yaml is not None:
        (tmp_path / "cfg" / "network.yaml").write_text(network_yaml)
    env = {"PATH": "/usr/bin:/bin", "PYCNI_HOST_ROOT": "/", "PYCNI_CACHE_DIR": os.environ["PYCNI_CACHE_DIR"]}
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "pycni.installer", "--once",
                           "--source-dir", str(bin_dir), "--bin-dir", str(tmp_path / "bin"),
                           "--conf-dir", str(tmp_path / "net"), "--config-dir", str(tmp_path / "cfg"),
                           "--listen", "off"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    conf = json.loads((tmp_path / "net" / "10-pycni.conflist").read_text())
    assert conf["plugins"][0]["mtu"] == expect
