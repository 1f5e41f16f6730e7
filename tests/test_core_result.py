"""Result conversion between every supported version, in both directions."""
from __future__ import annotations

import itertools

import pytest

from pycni.plugins.core.errors import CNIError
from pycni.plugins.core.result import Result
from pycni.plugins.core.versions import SUPPORTED_VERSIONS

FULL_1_1 = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "br0", "mac": "aa:bb:cc:dd:ee:01", "mtu": 1400},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/x",
         "socketPath": "/run/vhost.sock", "pciID": "0000:00:1f.6"},
    ],
    "ips": [
        {"interface": 1, "address": "10.0.0.5/24", "gateway": "10.0.0.1"},
        {"interface": 1, "address": "fd00::5/64", "gateway": "fd00::1"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1300, "advmss": 1260,
                "priority": 10, "table": 100, "scope": 0}],
    "dns": {"nameservers": ["10.0.0.1"], "domain": "example", "search": ["a.example"], "options": ["ndots:2"]},
}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_output_carries_exactly_the_fields_of_its_version(version: str) -> None:
    out = Result.from_dict(FULL_1_1).to_dict(version)
    assert out["cniVersion"] == version
    has_ip_version = version in ("0.3.0", "0.3.1", "0.4.0")
    assert [("version" in ip) for ip in out["ips"]] == [has_ip_version] * 2
    if has_ip_version:
        assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    new_fields = version == "1.1.0"
    assert ("mtu" in out["interfaces"][0]) is new_fields
    assert ("socketPath" in out["interfaces"][1]) is new_fields
    assert ("pciID" in out["interfaces"][1]) is new_fields
    assert all((k in out["routes"][0]) is new_fields for k in ("mtu", "advmss", "priority", "table", "scope"))
    assert out["interfaces"][1]["sandbox"] == "/var/run/netns/x"
    assert out["ips"][0]["interface"] == 1 and out["ips"][1]["gateway"] == "fd00::1"
    assert out["dns"] == FULL_1_1["dns"]


@pytest.mark.parametrize("src,dst", list(itertools.product(SUPPORTED_VERSIONS, repeat=2)))
def test_reading_any_version_and_printing_any_other(src: str, dst: str) -> None:
    printed_at_src = Result.from_dict(FULL_1_1).to_dict(src)
    again = Result.from_dict(printed_at_src).to_dict(dst)
    direct = Result.from_dict(FULL_1_1).to_dict(src if src < dst else dst)
    # Fields lost going down to `src` stay lost; otherwise the result is unchanged.
    expect = dict(direct, cniVersion=dst)
    if dst in ("0.3.0", "0.3.1", "0.4.0") and "version" not in expect["ips"][0]:
        expect["ips"] = [dict(ip, version=v) for ip, v in zip(expect["ips"], ("4", "6"))]
    if dst not in ("0.3.0", "0.3.1", "0.4.0"):
        expect["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in expect["ips"]]
    assert again == expect


@pytest.mark.parametrize("bad", [
    [], "x", {"cniVersion": "0.9.9"}, {"ips": "nope"}, {"ips": [{"address": "300.1.1.1/24"}]},
    {"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]}, {"routes": [{"gw": "10.0.0.1"}]},
    {"interfaces": [{"name": 5}]}, {"dns": {"nameservers": "10.0.0.1"}},
    {"routes": [{"dst": "0.0.0.0/0", "mtu": "1500"}]},
])
def test_malformed_results_are_decode_errors(bad) -> None:
    with pytest.raises(CNIError) as info:
        Result.from_dict(bad)
    assert info.value.code in (1, 6)
