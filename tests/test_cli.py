"""The `pycni` command runs conflists like libcni, with the reference plugins as well as ours."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REFERENCE_BIN, in_netns, link_exists, sh, unique

PYCNI = [sys.executable, "-m", "pycni.plugins.cli.command"]


def pycni(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PYCNI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check:
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def reference_conflist(tmp_path: Path):
    bridge = unique("rb")
    conf = {
        "cniVersion": "1.0.0", "name": unique("net"),
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True,
                     "ipam": {"type": "host-local", "subnet": "10.123.7.0/24", "dataDir": str(tmp_path / "ipam")}}],
    }
    path = tmp_path / "net.conflist"
    path.write_text(json.dumps(conf))
    yield path, conf, bridge
    sh("ip", "link", "del", bridge, check=False)


def test_reference_bridge_and_host_local_add_check_del(reference_conflist, netns: str, tmp_path: Path) -> None:
    path, conf, bridge = reference_conflist
    common = ["--cni-path", str(REFERENCE_BIN), "--cache-dir", str(tmp_path / "cache"), "--container-id", "ctr1"]
    result = json.loads(pycni("add", str(path), netns, *common).stdout)
    assert result["cniVersion"] == "1.0.0"
    assert result["ips"][0]["address"].startswith("10.123.7.") and result["ips"][0]["interface"] == 2
    assert [i["name"] for i in result["interfaces"]][0] == bridge
    cache = tmp_path / "cache" / "results" / f"{conf['name']}-ctr1-eth0"
    assert json.loads(cache.read_text())["result"] == result
    addr = in_netns(netns, "ip", "-j", "addr", "show", "eth0").stdout
    assert result["ips"][0]["address"].split("/")[0] in addr.decode()
    assert in_netns(netns, "ping", "-c1", "-W2", "10.123.7.1").returncode == 0
    pycni("check", str(path), netns, *common)
    # CHECK must fail when someone removed the container's address.
    in_netns(netns, "ip", "addr", "flush", "dev", "eth0")
    failed = pycni("check", str(path), netns, *common, check=False)
    assert failed.returncode == 1 and "code" in json.loads(failed.stdout)
    pycni("del", str(path), netns, *common)
    pycni("del", str(path), netns, *common)  # DEL twice is fine
    assert not cache.exists() and not link_exists("eth0", netns)
    assert [p.name for p in (tmp_path / "ipam" / conf["name"]).iterdir() if p.name[0].isdigit()] == []


def test_capabilities_and_prev_result_injection(tmp_path: Path) -> None:
    """A recording plugin shows what each plugin of the chain receives."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "calls"
    script = ("#!/bin/sh\nin=$(cat)\nprintf '%s\\n' \"$CNI_COMMAND $in\" >> " + str(record) + "\n"
              "if [ \"$CNI_COMMAND\" = ADD ]; then printf '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.9.9.9/24\"}]}'; fi\n")
    for name in ("rec1", "rec2"):
        (bindir / name).write_text(script)
        (bindir / name).chmod(0o755)
    conf = {"cniVersion": "1.0.0", "name": "capnet", "plugins": [
        {"type": "rec1", "capabilities": {"ips": True, "mac": False}},
        {"type": "rec2", "capabilities": {"portMappings": True}, "extra": 1}]}
    path = tmp_path / "c.conflist"
    path.write_text(json.dumps(conf))
    caps = json.dumps({"ips": ["10.9.9.9/24"], "mac": "aa:bb:cc:dd:ee:ff"})
    common = ["--cni-path", str(bindir), "--cache-dir", str(tmp_path / "cache")]
    pycni("add", str(path), "/var/run/netns/none", "--cap", caps, *common)
    pycni("del", str(path), "/var/run/netns/none", *common)
    calls = [(line.split(" ", 1)[0], json.loads(line.split(" ", 1)[1])) for line in record.read_text().splitlines()]
    assert [c[0] for c in calls] == ["ADD", "ADD", "DEL", "DEL"]
    add1, add2, del2, del1 = (c[1] for c in calls)
    assert add1["runtimeConfig"] == {"ips": ["10.9.9.9/24"]} and "capabilities" not in add1
    assert "prevResult" not in add1 and add2["prevResult"]["ips"][0]["address"] == "10.9.9.9/24"
    assert "runtimeConfig" not in add2 and add2["extra"] == 1 and add2["name"] == "capnet"
    assert del2["type"] == "rec2" and del1["type"] == "rec1"  # reverse order
    assert del1["prevResult"]["ips"][0]["address"] == "10.9.9.9/24"


def test_gc_and_status_send_valid_attachments(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "calls"
    (bindir / "rec").write_text(f"#!/bin/sh\ncat >> {record}\necho >> {record}\n")
    (bindir / "rec").chmod(0o755)
    path = tmp_path / "c.conflist"
    path.write_text(json.dumps({"cniVersion": "1.1.0", "name": "gcnet", "plugins": [{"type": "rec"}]}))
    common = ["--cni-path", str(bindir), "--cache-dir", str(tmp_path / "cache")]
    pycni("gc", str(path), "--valid", "c1:eth0", "--valid", "c2:net1", *common)
    pycni("status", str(path), *common)
    gc, status = [json.loads(line) for line in record.read_text().splitlines() if line]
    assert gc["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"},
                                               {"containerID": "c2", "ifname": "net1"}]
    assert "cni.dev/valid-attachments" not in status
    old = tmp_path / "old.conflist"
    old.write_text(json.dumps({"cniVersion": "1.0.0", "name": "gcnet", "plugins": [{"type": "rec"}]}))
    assert pycni("gc", str(old), *common, check=False).returncode == 1


def test_plugin_errors_are_passed_through(tmp_path: Path) -> None:
    path = tmp_path / "c.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "missing"}]}))
    proc = pycni("add", str(path), "x", "--cni-path", str(tmp_path), "--cache-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 7 and "missing" in proc.stdout
