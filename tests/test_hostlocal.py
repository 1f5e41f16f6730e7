"""pycni-host-local as a runtime runs it: the built zipapp exec'd with a dataDir in a temp dir."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import unique
from hostlocal_helpers import OURS, REFERENCE, Net, addresses


@pytest.fixture
def hl(bin_dir: Path) -> Path:
    return bin_dir / OURS


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path / "data")


def test_dual_stack_add_writes_reference_store(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]],
                                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.77.0.9"}]})
    result, rc, err = net.call(hl, "ADD", "c1")
    assert rc == 0, (result, err)
    assert result["ips"] == [{"address": "10.77.0.2/24", "gateway": "10.77.0.1"},
                             {"address": "fd77::2/64", "gateway": "fd77::1"}]
    assert result["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.77.0.9"}]
    assert "interfaces" not in result and result["cniVersion"] == "1.0.0"
    assert net.leases() == {"10.77.0.2": b"c1\r\neth0", "fd77::2": b"c1\r\neth0"}
    assert (net.dir / "last_reserved_ip.0").read_bytes() == b"10.77.0.2"
    assert (net.dir / "last_reserved_ip.1").read_bytes() == b"fd77::2"
    assert (net.dir / "lock").exists()


def test_repeated_add_returns_what_is_held(hl: Path, net: Net) -> None:
    first, rc, _ = net.call(hl, "ADD", "c1")
    again, rc2, err = net.call(hl, "ADD", "c1")
    assert rc == rc2 == 0, err
    assert again == first
    other_if, rc3, _ = net.call(hl, "ADD", "c1", ifname="net1")
    assert rc3 == 0 and addresses(other_if) != addresses(first)
    assert len(net.leases()) == 2


def test_round_robin_after_last_reserved_and_wraps(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.77.0.0/29"}]]})  # .2-.6 usable, .1 gateway
    got = [addresses(net.call(hl, "ADD", f"c{i}")[0]) for i in range(3)]
    assert got == [["10.77.0.2/29"], ["10.77.0.3/29"], ["10.77.0.4/29"]]
    assert net.call(hl, "DEL", "c0")[1] == 0
    assert addresses(net.call(hl, "ADD", "c3")[0]) == ["10.77.0.5/29"]  # not the freed .2
    assert addresses(net.call(hl, "ADD", "c4")[0]) == ["10.77.0.6/29"]
    assert addresses(net.call(hl, "ADD", "c5")[0]) == ["10.77.0.2/29"]  # wrapped around
    out, rc, _ = net.call(hl, "ADD", "c6")
    assert rc != 0 and out["code"] == 11 and "no IP addresses available" in out["msg"]


def test_del_releases_and_may_repeat(hl: Path, net: Net) -> None:
    net.call(hl, "ADD", "c1")
    net.call(hl, "ADD", "c2")
    assert net.call(hl, "DEL", "c1") == (None, 0, "")
    assert net.call(hl, "DEL", "c1")[1] == 0  # the runtime's second DEL
    assert net.call(hl, "DEL", "never-added")[1] == 0
    assert net.leases() == {"10.77.0.3": b"c2\r\neth0"}


def test_del_without_index_finds_leases_by_walking(hl: Path, net: Net) -> None:
    """What a crash between the lease and the index write leaves: the lease is still found."""
    net.call(hl, "ADD", "c1")
    state = net.data_dir / ".pycni-hostlocal" / net.name
    for path in (state / "index").iterdir():
        path.unlink()
    (state / "clean").unlink()
    (state / "tmp-999-1").write_bytes(b"c1\r\neth0")  # a crashed writer's temporary file
    assert net.call(hl, "DEL", "c1")[1] == 0
    assert net.leases() == {}
    assert not (state / "tmp-999-1").exists()


def test_old_form_lease_without_ifname_is_read(hl: Path, net: Net) -> None:
    net.dir.mkdir(parents=True)
    (net.dir / "10.77.0.2").write_bytes(b"oldctr")
    new, rc, _ = net.call(hl, "ADD", "c1")
    assert rc == 0 and addresses(new) == ["10.77.0.3/24"]
    assert addresses(net.call(hl, "ADD", "oldctr")[0]) == ["10.77.0.2/24"]  # it already holds .2
    assert net.call(hl, "DEL", "oldctr")[1] == 0
    assert net.leases() == {"10.77.0.3": b"c1\r\neth0"}


@pytest.mark.parametrize("source", ["runtimeConfig", "args", "CNI_ARGS"])
def test_requested_address_is_granted(hl: Path, net: Net, source: str) -> None:
    top, cni_args = {}, ""
    if source == "runtimeConfig":
        top = {"runtimeConfig": {"ips": ["10.77.0.50/24"]}}
    elif source == "args":
        top = {"args": {"cni": {"ips": ["10.77.0.50"]}}}
    else:
        cni_args = "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.77.0.50"
    out, rc, err = net.call(hl, "ADD", "c1", cni_args=cni_args, **top)
    assert rc == 0, (out, err)
    assert addresses(out) == ["10.77.0.50/24"]
    assert net.leases() == {"10.77.0.50": b"c1\r\neth0"}


def test_args_win_over_cni_args(hl: Path, net: Net) -> None:
    out, rc, err = net.call(hl, "ADD", "c1", cni_args="IP=10.77.0.50", args={"cni": {"ips": ["10.77.0.60"]}})
    assert rc == 0, (out, err)
    assert addresses(out) == ["10.77.0.60/24"]


def test_ip_arg_is_known_without_ignore_unknown(hl: Path, net: Net) -> None:
    out, rc, _ = net.call(hl, "ADD", "c1", cni_args="IP=10.77.0.60")
    assert rc == 0 and addresses(out) == ["10.77.0.60/24"]
    out, rc, _ = net.call(hl, "ADD", "c2", cni_args="FOO=1")
    assert rc != 0 and out["code"] == 4


def test_requested_address_not_granted_allocates_nothing(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]})
    assert net.call(hl, "ADD", "holder", cni_args="IP=fd77::9")[1] == 0
    before = net.leases()
    out, rc, _ = net.call(hl, "ADD", "c1", runtimeConfig={"ips": ["10.77.0.9/24", "fd77::9/64"]})
    assert rc != 0 and out["code"] == 11 and "fd77::9" in out["msg"]
    assert net.leases() == before  # the v4 address taken first was rolled back
    for ips, code, word in ((["10.88.0.1"], 7, "not in any range set"), (["10.77.0.1"], 7, "gateway"),
                            (["10.77.0.5", "10.77.0.6"], 7, "both in range set"), (["bogus"], 7, "bogus")):
        out, rc, _ = net.call(hl, "ADD", "c2", args={"cni": {"ips": ips}})
        assert rc != 0 and out["code"] == code and word in out["msg"], out
    assert net.leases() == before


def test_runtime_ip_ranges_add_a_range_set_first(hl: Path, net: Net) -> None:
    out, rc, err = net.call(hl, "ADD", "c1", runtimeConfig={"ipRanges": [[{"subnet": "fd78::/120"}]]})
    assert rc == 0, (out, err)
    assert addresses(out) == ["fd78::2/120", "10.77.0.2/24"]


def test_legacy_single_range_keys(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": None, "subnet": "10.79.0.0/16", "rangeStart": "10.79.3.10",
                                  "rangeEnd": "10.79.3.11", "gateway": "10.79.0.254"})
    out, rc, err = net.call(hl, "ADD", "c1")
    assert rc == 0, (out, err)
    assert out["ips"] == [{"address": "10.79.3.10/16", "gateway": "10.79.0.254"}]
    assert addresses(net.call(hl, "ADD", "c2")[0]) == ["10.79.3.11/16"]
    assert net.call(hl, "ADD", "c3")[0]["code"] == 11


def test_gateway_network_and_broadcast_are_never_given(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.77.0.0/30", "rangeStart": "10.77.0.0",
                                               "rangeEnd": "10.77.0.3", "gateway": "10.77.0.2"}]]})
    assert addresses(net.call(hl, "ADD", "c1")[0]) == ["10.77.0.1/30"]
    assert net.call(hl, "ADD", "c2")[0]["code"] == 11


def test_resolv_conf_fills_dns(hl: Path, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.org\n"
                      "search a.example b.example\noptions ndots:2 edns0\n")
    net = Net(tmp_path / "data", {"resolvConf": str(resolv)})
    out, rc, _ = net.call(hl, "ADD", "c1")
    assert rc == 0
    assert out["dns"] == {"nameservers": ["10.0.0.53", "fd00::53"], "domain": "example.org",
                          "search": ["a.example", "b.example"], "options": ["ndots:2", "edns0"]}


@pytest.mark.parametrize("version,has_version", [("0.3.0", True), ("0.3.1", True), ("0.4.0", True),
                                                 ("1.0.0", False), ("1.1.0", False)])
def test_result_version_conversion(hl: Path, tmp_path: Path, version: str, has_version: bool) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]},
              version=version)
    out, rc, err = net.call(hl, "ADD", "c1")
    assert rc == 0, (out, err)
    assert out["cniVersion"] == version
    if has_version:
        assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    else:
        assert all("version" not in ip for ip in out["ips"])


def test_check(hl: Path, net: Net) -> None:
    out, _, _ = net.call(hl, "ADD", "c1")
    assert net.call(hl, "CHECK", "c1", prevResult=out) == (None, 0, "")
    forged = dict(out, ips=[{"address": "10.77.0.99/24", "gateway": "10.77.0.1"}])
    res, rc, _ = net.call(hl, "CHECK", "c1", prevResult=forged)
    assert rc != 0 and res["code"] == 100 and "10.77.0.99" in res["msg"]
    res, rc, _ = net.call(hl, "CHECK", "c1", ifname="net1", prevResult=out)
    assert rc != 0 and res["code"] == 3
    res, rc, _ = net.call(hl, "CHECK", "c1", conf=net.conf(version="0.3.1"))
    assert rc != 0 and res["code"] == 1


def test_status(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.77.0.0/29"}]]}, version="1.1.0")
    assert net.call(hl, "STATUS") == (None, 0, "")
    for i in range(5):
        assert net.call(hl, "ADD", f"c{i}")[1] == 0
    out, rc, _ = net.call(hl, "STATUS")
    assert rc != 0 and out["code"] == 50 and "exhausted" in out["msg"]
    net.call(hl, "DEL", "c3")
    assert net.call(hl, "STATUS")[1] == 0
    blocker = tmp_path / "afile"
    blocker.write_text("")
    broken = Net(blocker / "sub", version="1.1.0")  # dataDir below a regular file: unusable
    out, rc, _ = broken.call(hl, "STATUS")
    assert rc != 0 and out["code"] == 50 and "unusable" in out["msg"]


def test_gc_releases_everything_not_valid(hl: Path, net: Net) -> None:
    for cid in ("keep", "drop1", "drop2"):
        assert net.call(hl, "ADD", cid)[1] == 0
    net.call(hl, "ADD", "keep", ifname="net1")
    (net.dir / "10.77.0.200").write_bytes(b"")  # a crashed writer's empty lease
    (net.dir / "10.77.0.201").write_bytes(b"oldkeep")  # old form, container still valid
    conf = net.conf(version="1.1.0")
    conf["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"},
                                         {"containerID": "oldkeep", "ifname": "eth0"}]
    assert net.call(hl, "GC", conf=conf) == (None, 0, "")
    assert net.leases() == {"10.77.0.2": b"keep\r\neth0", "10.77.0.201": b"oldkeep"}
    older = net.conf(version="1.1.0")
    older["cni.dev/attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
    assert net.call(hl, "GC", conf=older)[1] == 0
    assert net.leases() == {"10.77.0.2": b"keep\r\neth0"}
    # the index was rebuilt: a later ADD of a released attachment gets a fresh lease
    assert addresses(net.call(hl, "ADD", "drop1")[0]) == ["10.77.0.6/24"]


# ---------------------------------------------------------------- switching with the reference


def test_reference_leases_are_seen_and_released_by_ours(hl: Path, net: Net) -> None:
    ref, rc, err = net.call(REFERENCE, "ADD", "refctr")
    assert rc == 0, (ref, err)
    ours, rc, _ = net.call(hl, "ADD", "ourctr")
    assert rc == 0 and addresses(ours) != addresses(ref)
    assert net.call(hl, "CHECK", "refctr", prevResult=ref)[1] == 0
    again, rc, _ = net.call(hl, "ADD", "refctr")  # held already: the same address back
    assert addresses(again) == addresses(ref)
    assert net.call(hl, "DEL", "refctr")[1] == 0
    assert list(net.leases()) == [addresses(ours)[0].split("/")[0]]


def test_our_leases_are_seen_and_released_by_reference(hl: Path, tmp_path: Path) -> None:
    net = Net(tmp_path / "data", {"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]})
    ours, rc, _ = net.call(hl, "ADD", "ourctr")
    assert rc == 0
    assert net.call(REFERENCE, "CHECK", "ourctr")[1] == 0
    ref, rc, err = net.call(REFERENCE, "ADD", "refctr")
    assert rc == 0 and addresses(ref) != addresses(ours), err
    assert net.call(REFERENCE, "DEL", "ourctr")[1] == 0
    assert sorted(net.leases()) == sorted(ip.split("/")[0] for ip in addresses(ref))
    # back to ours: it must see the reference's lease and not hand it out again
    nxt, rc, _ = net.call(hl, "ADD", "next")
    assert rc == 0 and not set(addresses(nxt)) & set(addresses(ref) + addresses(ours))
    assert net.call(hl, "DEL", "refctr")[1] == 0
    assert sorted(net.leases()) == sorted(ip.split("/")[0] for ip in addresses(nxt))


def test_address_reused_by_reference_is_not_released_for_old_owner(hl: Path, net: Net) -> None:
    """Our index says A held .2; the reference released it and gave it to B: DEL A must spare it."""
    assert addresses(net.call(hl, "ADD", "A")[0]) == ["10.77.0.2/24"]
    assert net.call(REFERENCE, "DEL", "A")[1] == 0
    assert net.call(REFERENCE, "ADD", "B", cni_args="IgnoreUnknown=1;IP=10.77.0.2")[1] == 0
    assert net.call(hl, "DEL", "A")[1] == 0
    assert net.leases() == {"10.77.0.2": b"B\r\neth0"}
    assert net.call(hl, "DEL", "B")[1] == 0
    assert net.leases() == {}


# ---------------------------------------------------------------- malformed config and path safety


def _ranges(*ranges: dict) -> dict:
    return {"ranges": [list(ranges)]}


MALFORMED = [
    ({"ranges": None}, "no IP ranges"),
    ({"ranges": "10.0.0.0/24"}, "10.0.0.0/24"),
    ({"ranges": [[]]}, "ranges[0]"),
    (_ranges({"rangeStart": "10.0.0.5"}), "subnet"),
    (_ranges({"subnet": "10.0.0.0/33"}), "10.0.0.0/33"),
    (_ranges({"subnet": "banana"}), "banana"),
    (_ranges({"subnet": "10.0.0.1/24"}), "10.0.0.1/24"),
    (_ranges({"subnet": "10.0.0.0/31"}), "10.0.0.0/31"),
    (_ranges({"subnet": "10.0.0.0/32"}), "10.0.0.0/32"),
    (_ranges({"subnet": "fd00::/127"}), "fd00::/127"),
    (_ranges({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}), "10.0.1.5"),
    (_ranges({"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"}), "10.0.1.5"),
    (_ranges({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.5"}), "10.0.0.9"),
    (_ranges({"subnet": "10.0.0.0/24", "rangeStart": "fd00::1"}), "fd00::1"),
    (_ranges({"subnet": "10.0.0.0/24", "gateway": "nope"}), "nope"),
    (_ranges({"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}), "mixed address families"),
    (_ranges({"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}), "overlap"),
    ({"ranges": [[{"subnet": "10.0.0.0/16"}], [{"subnet": "10.0.5.0/24"}]]}, "overlaps"),
    ({"ranges": None, "rangeStart": "10.0.0.2"}, "without `subnet`"),
    ({"routes": [{"dst": "nowhere"}]}, "nowhere"),
    ({"routes": [{"gw": "10.0.0.1"}]}, "routes[0]"),
    ({"dataDir": "relative/dir"}, "relative/dir"),
    ({"dataDir": 5}, "dataDir"),
    ({"resolvConf": "/nonexistent/resolv.conf"}, "/nonexistent/resolv.conf"),
]


@pytest.mark.parametrize("ipam,needle", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_malformed_config_is_code_7_naming_the_value(hl: Path, tmp_path: Path, ipam: dict, needle: str) -> None:
    net = Net(tmp_path / "data", ipam)
    out, rc, err = net.call(hl, "ADD", "c1")
    assert rc != 0 and out["code"] == 7, (out, err)
    assert needle in out["msg"]
    assert not net.dir.exists() or net.leases() == {}


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "x" * 300, ""])
def test_unsafe_network_names_are_rejected(hl: Path, tmp_path: Path, name: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    net = Net(data, name=name)
    out, rc, _ = net.call(hl, "ADD", "c1")
    assert rc != 0 and out["code"] == 7
    assert list(tmp_path.iterdir()) == [data] and list(data.iterdir()) == []


def test_symlinked_network_dir_is_refused(hl: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    net = Net(data)
    os.symlink(outside, net.dir)
    out, rc, _ = net.call(hl, "ADD", "c1")
    assert rc != 0 and out["code"] == 7 and "outside dataDir" in out["msg"]
    assert list(outside.iterdir()) == []
    os.unlink(net.dir)
    os.symlink(outside, data / ".pycni-hostlocal")
    out, rc, _ = net.call(hl, "ADD", "c1")
    assert rc != 0 and out["code"] == 7
    assert list(outside.iterdir()) == []


def test_error_json_on_bad_input(hl: Path, net: Net) -> None:
    out, rc, _ = net.call(hl, "ADD", "c1", conf=b"{not json")  # type: ignore[arg-type]
    assert rc != 0 and out["code"] == 6
    conf = net.conf()
    del conf["ipam"]
    out, rc, _ = net.call(hl, "ADD", "c1", conf=conf)
    assert rc != 0 and out["code"] == 7 and "ipam" in out["msg"]
    assert json.loads(json.dumps(out))  # plain JSON, never a traceback


def test_version_command(hl: Path) -> None:
    net = Net(Path("/nonexistent"), name=unique("hl"))
    out, rc, _ = net.call(hl, "VERSION", conf={"cniVersion": "1.0.0"})
    assert rc == 0 and "1.1.0" in out["supportedVersions"]
