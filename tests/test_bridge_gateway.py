"""pycni-bridge and a gateway address another link holds (issue 19 item 5): a bridge renamed in the
config (cni0 -> pycni0) leaves the old one with the gateway, whose route then wins.

Everything runs in a private "node" namespace (the plugin exec'd inside it): host links stay untouched.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from helpers import exec_plugin, in_netns, log_events, netns_path, plugin_env, unique

SUBNET = "10.232.9.0/24"
GATEWAY = "10.232.9.1"


def conf(bridge: str, tmp_path: Path, subnet: str = SUBNET) -> Dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "gwnet", "type": "pycni-bridge", "bridge": bridge, "isGateway": True,
            "ipam": {"type": "pycni-host-local", "subnet": subnet, "dataDir": str(tmp_path / "ipam")}}


def run(bin_dir: Path, node: str, command: str, pod: str, container: str, config: Dict[str, Any],
        log: Path) -> Any:
    env = plugin_env(command, netns_path(pod), container, cni_path=str(bin_dir),
                     extra={"PYCNI_SERVER_SOCKET": "off", "PYCNI_LOG_FILE": str(log)})
    return exec_plugin(bin_dir / "pycni-bridge", env, config, netns=node)


def addresses(node: str, link: str) -> List[str]:
    out = json.loads(in_netns(node, "ip", "-j", "-4", "addr", "show", "dev", link).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"]] if out else []


@pytest.fixture
def node(make_netns) -> str:
    return make_netns("gwn")


def test_renamed_bridge_takes_the_gateway_from_the_old_empty_one(bin_dir: Path, node: str, make_netns,
                                                                  tmp_path: Path) -> None:
    """Old code: the new bridge got the gateway too, the old one kept it and its route: the pod
    could not reach its gateway."""
    old, new, log = unique("gwo"), unique("gwb"), tmp_path / "events"
    pod1, pod2 = make_netns("gp"), make_netns("gp")
    assert run(bin_dir, node, "ADD", pod1, "c1", conf(old, tmp_path), log)[1] == 0
    assert run(bin_dir, node, "DEL", pod1, "c1", conf(old, tmp_path), log)[1] == 0
    assert addresses(node, old) == [f"{GATEWAY}/24"]  # the old bridge keeps its gateway, no ports left
    out, rc, err = run(bin_dir, node, "ADD", pod2, "c2", conf(new, tmp_path), log)
    assert rc == 0, (out, err)
    assert addresses(node, old) == [] and addresses(node, new) == [f"{GATEWAY}/24"]
    assert in_netns(pod2, "ping", "-c1", "-W3", GATEWAY, check=False).returncode == 0
    (taken,) = log_events(log, "gateway_taken_over")
    assert taken["from_link"] == old and taken["bridge"] == new


@pytest.mark.parametrize("holder", ["pycni-bridge-with-pods", "foreign-bridge"])
def test_a_gateway_held_elsewhere_fails_add_naming_the_link(holder: str, bin_dir: Path, node: str, make_netns,
                                                            tmp_path: Path) -> None:
    old, new, log = unique("gwo"), unique("gwb"), tmp_path / "events"
    pod1, pod2 = make_netns("gp"), make_netns("gp")
    if holder == "foreign-bridge":
        in_netns(node, "ip", "link", "add", old, "type", "bridge")
        in_netns(node, "ip", "addr", "add", f"{GATEWAY}/24", "dev", old)
        why = "not created by pycni-bridge"
    else:
        assert run(bin_dir, node, "ADD", pod1, "c1", conf(old, tmp_path), log)[1] == 0
        why = "still has ports"
    out, rc, _ = run(bin_dir, node, "ADD", pod2, "c2", conf(new, tmp_path), log)
    assert rc != 0 and repr(old) in out["msg"] and why in out["msg"], out
    assert addresses(node, old) == [f"{GATEWAY}/24"]  # left alone
    assert json.loads(in_netns(pod2, "ip", "-j", "link", "show").stdout)[0]["ifname"] == "lo"
    assert len(json.loads(in_netns(pod2, "ip", "-j", "link", "show").stdout)) == 1  # nothing left in the pod
    assert not [p for p in (tmp_path / "ipam" / "gwnet").iterdir() if p.name[0].isdigit() and "c2" in p.read_text()]


def test_joining_a_bridge_with_another_subnet_is_logged(bin_dir: Path, node: str, make_netns,
                                                        tmp_path: Path) -> None:
    bridge, log = unique("gws"), tmp_path / "events"
    pod1, pod2 = make_netns("gp"), make_netns("gp")
    assert run(bin_dir, node, "ADD", pod1, "c1", conf(bridge, tmp_path, "10.233.1.0/24"), log)[1] == 0
    assert not log_events(log, "bridge_other_subnet")
    assert run(bin_dir, node, "ADD", pod2, "c2", conf(bridge, tmp_path, "10.233.2.0/24"), log)[1] == 0
    (logged,) = log_events(log, "bridge_other_subnet")
    assert logged["bridge"] == bridge and logged["adding"] == "10.233.2.1/24"
    assert logged["existing"] == ["10.233.1.1/24"]
