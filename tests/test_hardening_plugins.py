"""Issue 17 items 1-4: retried, malformed and hostile requests to the built plugins (exec'd zipapps, real kernel).

1. a repeated ADD of a live attachment must not free its lease (nor its rules);
2. a CNI_NETNS that is not a network namespace is refused before anything, without blocking, and DEL of it
   still cleans the host side;
3. GC without cni.dev/valid-attachments is code 7 and deletes nothing;
4. JSON nested absurdly deep is code 6; an over-long container ID is refused at ADD, and a long one another
   plugin leased is released at DEL.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from helpers import in_netns, netns_path, plugin_env, unique
from kernel_plugins import Node, node  # noqa: F401

pytestmark = pytest.mark.kernel

NO_NETNS = "/var/run/netns/hardening-none"  # host-local never opens it
HUNG = 20.0  # seconds: far above any real ADD/DEL, well below "forever"


def two_address_ipam(node: Node, prefix: str) -> Dict[str, Any]:
    return {"type": "pycni-host-local", "dataDir": str(node.data_dir),
            "ranges": [[{"subnet": f"{prefix}.0/24", "rangeStart": f"{prefix}.2", "rangeEnd": f"{prefix}.3"}]]}


def make_master(node: Node) -> None:
    node.sh("ip", "link", "add", "m0", "type", "veth", "peer", "name", "m0p")
    node.sh("ip", "link", "set", "m0", "up")
    node.sh("ip", "link", "set", "m0p", "up")


def conf_for(kind: str, node: Node, **keys: Any) -> Dict[str, Any]:
    """A bridge (with masquerade, so rules are at stake too) or macvlan config on a 2-address range."""
    if kind == "bridge":
        conf = {"cniVersion": "1.1.0", "name": unique("hb"), "type": "pycni-bridge", "bridge": unique("br"),
                "isGateway": True, "ipMasq": True, "ipam": two_address_ipam(node, "10.171.0")}
    else:
        make_master(node)
        conf = {"cniVersion": "1.1.0", "name": unique("hm"), "type": "pycni-macvlan", "master": "m0",
                "ipam": two_address_ipam(node, "10.172.0")}
    conf.update(keys)
    return conf


def run_raw(node: Node, command: str, conf: Any, netns_path_: str, container_id: str = "c1",
            ifname: str = "eth0", timeout: float = HUNG) -> Tuple[Any, int]:
    """Exec a plugin with CNI_NETNS set verbatim (not a name under /var/run/netns); fails on a hang."""
    env = plugin_env(command, netns=netns_path_, container_id=container_id, ifname=ifname, cni_path=node.cni_path)
    binary = node.plugin(conf["type"] if isinstance(conf, dict) else "pycni-bridge")
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    try:
        proc = subprocess.run(["ip", "netns", "exec", node.name, binary], input=data, env=env, cwd="/",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} with CNI_NETNS={netns_path_} did not return within {timeout}s")
    out = proc.stdout.decode()
    return (json.loads(out) if out.strip() else None), proc.returncode


def masq_chains(node: Node, container_id: str) -> list:
    return [l for l in node.ruleset().splitlines() if "pycni:" in l and l.rstrip().rstrip('"').endswith(container_id)]


def lease_owners(node: Node, network: str) -> Dict[str, str]:
    return {ip: (node.data_dir / network / ip).read_bytes().decode().split("\r\n")[0] for ip in node.leases(network)}


# ---------------------------------------------------------------- 1. a retried ADD frees a live lease

@pytest.mark.parametrize("kind", ["bridge", "macvlan"])
def test_repeated_add_of_a_live_attachment_keeps_its_lease(node, make_netns, kind):
    conf = conf_for(kind, node)
    c1, c2, c3 = make_netns("h1"), make_netns("h2"), make_netns("h3")
    first = node.ok("ADD", conf, c1, container_id="c1")
    mine = first["ips"][0]["address"]
    chains_before = masq_chains(node, "c1")

    again, rc, _ = node.run("ADD", conf, c1, container_id="c1")
    assert rc != 0 and "already exists" in again["msg"], again
    assert lease_owners(node, conf["name"]) == {mine.split("/")[0]: "c1"}, "the retried ADD released c1's lease"
    assert in_netns(c1, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout.decode().count(mine) == 1
    assert masq_chains(node, "c1") == chains_before, "the retried ADD removed c1's masquerade rules"

    second = node.ok("ADD", conf, c2, container_id="c2")
    assert second["ips"][0]["address"] != mine
    third, rc3, _ = node.run("ADD", conf, c3, container_id="c3")  # the range holds two addresses: both taken
    assert rc3 != 0, f"c3 got {third['ips'][0]['address']} while c1 still uses {mine}"
    assert third["code"] == 11
    node.ok("CHECK", dict(conf, prevResult=first), c1, container_id="c1")
    for cid, ns in (("c1", c1), ("c2", c2), ("c3", c3)):
        node.ok("DEL", conf, ns, container_id=cid)
    assert node.leases(conf["name"]) == []


def test_failed_add_of_a_container_id_live_in_another_netns_keeps_the_lease(node, make_netns):
    """A runtime reusing a live container ID with another netns: IPAM answers with the live lease; when the
    ADD then fails, its rollback must not release that lease (the bridge sees the live host veth's tag)."""
    conf = conf_for("bridge", node)
    c1, c2, c3 = make_netns("h1"), make_netns("h2"), make_netns("h3")
    first = node.ok("ADD", conf, c1, container_id="c1")
    mine = first["ips"][0]["address"].split("/")[0]
    failing = dict(conf, isDefaultGateway=True, ipam=dict(conf["ipam"], routes=[{"dst": "0.0.0.0/0"}]))
    out, rc, _ = node.run("ADD", failing, c2, container_id="c1")  # fails after IPAM: "isDefaultGateway ineffective"
    assert rc != 0 and out["code"] == 7, out
    assert lease_owners(node, conf["name"]) == {mine: "c1"}, "the failed ADD released the live lease"
    assert masq_chains(node, "c1"), "the failed ADD removed the live attachment's masquerade rules"
    node.ok("ADD", conf, c3, container_id="c3")
    assert set(lease_owners(node, conf["name"]).values()) == {"c1", "c3"}


@pytest.mark.parametrize("kind", ["bridge", "macvlan"])
def test_add_onto_an_existing_interface_is_refused_before_ipam_runs(node, make_netns, kind):
    """The container already has an interface under CNI_IFNAME (live or foreign): nothing, IPAM included,
    is run (the IPAM named here does not exist: reaching it would be a different error)."""
    conf = conf_for(kind, node, ipam={"type": "no-such-ipam"})
    c1 = make_netns("h1")
    in_netns(c1, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    out, rc, _ = node.run("ADD", conf, c1, container_id="c1")
    assert rc != 0 and "already exists" in out["msg"], out
    assert in_netns(c1, "ip", "link", "show", "dev", "eth0", check=False).returncode == 0
    assert kind != "bridge" or node.veths() == []


# ---------------------------------------------------------------- 2. CNI_NETNS that is not a network namespace

NOT_NETNS = ["fifo", "file", "directory", "/dev/null", "/proc/self/ns/uts", "socket", "symlink-loop"]


def not_a_netns(kind: str, tmp_path: Path) -> str:
    if kind.startswith("/"):
        return kind
    path = tmp_path / f"ns-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "file":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "socket":
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    return str(path)


@pytest.mark.parametrize("kind", ["bridge", "macvlan"])
@pytest.mark.parametrize("what", NOT_NETNS)
def test_add_refuses_a_netns_path_that_is_not_one_before_ipam(node, tmp_path, kind, what):
    conf = conf_for(kind, node)
    path = not_a_netns(what, tmp_path)
    out, rc = run_raw(node, "ADD", conf, path)
    assert rc != 0 and out["code"] == 4, out
    assert "CNI_NETNS" in out["msg"] and path in out["msg"], out
    assert "not a network namespace" in out["msg"] or "cannot open" in out["msg"], out
    assert node.leases(conf["name"]) == []
    assert sorted(node.veths()) == ([] if kind == "bridge" else ["m0", "m0p"])
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": path}], "ips": []}
    out, rc = run_raw(node, "CHECK", dict(conf, prevResult=prev), path)
    assert rc != 0 and out["code"] == 4, out
    out, rc = run_raw(node, "DEL", conf, path)
    assert rc == 0, out


@pytest.mark.parametrize("kind", ["bridge", "macvlan"])
@pytest.mark.parametrize("what", ["fifo", "file", "/dev/null", "symlink-loop"])
def test_del_with_a_netns_path_that_is_not_one_cleans_the_host_side(node, make_netns, tmp_path, kind, what):
    conf = conf_for(kind, node)
    c1 = make_netns("h1")
    node.ok("ADD", conf, c1, container_id="c1")
    assert node.leases(conf["name"]) and (kind != "bridge" or masq_chains(node, "c1"))
    out, rc = run_raw(node, "DEL", conf, not_a_netns(what, tmp_path))
    assert rc == 0, out
    assert node.leases(conf["name"]) == []
    if kind == "bridge":
        assert masq_chains(node, "c1") == []
        assert node.veths() == [], "the host veth stayed"


# ---------------------------------------------------------------- 3. GC without cni.dev/valid-attachments

@pytest.mark.parametrize("kind", ["bridge", "macvlan"])
def test_gc_without_valid_attachments_is_code_7_and_deletes_nothing(node, make_netns, kind):
    conf = conf_for(kind, node)
    c1 = make_netns("h1")
    node.ok("ADD", conf, c1, container_id="c1")
    before = (node.leases(conf["name"]), node.veths(), masq_chains(node, "c1"))
    for gc_conf in (conf, dict(conf, **{"cni.dev/valid-attachments": None})):
        out, rc = run_raw(node, "GC", gc_conf, "")
        assert rc != 0 and out["code"] == 7 and "cni.dev/valid-attachments" in out["msg"], out
        assert (node.leases(conf["name"]), node.veths(), masq_chains(node, "c1")) == before
    # the explicit empty list keeps its meaning: nothing is live
    node.ok("GC", dict(conf, **{"cni.dev/valid-attachments": []}))
    assert node.leases(conf["name"]) == [] and masq_chains(node, "c1") == []
    if kind == "bridge":
        assert node.veths() == []


@pytest.mark.parametrize("plugin", ["pycni-host-local", "pycni-dns"])
def test_gc_without_valid_attachments_refused_by_every_plugin(node, plugin):
    conf = {"cniVersion": "1.1.0", "name": unique("hg"), "type": plugin,
            "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "10.173.0.0/24"}]],
                     "dataDir": str(node.data_dir)}}
    if plugin == "pycni-host-local":
        assert run_raw(node, "ADD", conf, NO_NETNS)[1] == 0
    out, rc = run_raw(node, "GC", conf, "")
    assert rc != 0 and out["code"] == 7 and "cni.dev/valid-attachments" in out["msg"], out
    if plugin == "pycni-host-local":
        assert len(node.leases(conf["name"])) == 1


# ---------------------------------------------------------------- 4. JSON depth and container ID length

DEEP = 100_000


@pytest.mark.parametrize("plugin", ["pycni-bridge", "pycni-macvlan", "pycni-host-local", "pycni-dns"])
@pytest.mark.parametrize("shape", ["bare", "in-args", "in-prevResult", "just-decodable"])
def test_deeply_nested_json_is_a_decode_failure(node, make_netns, plugin, shape):
    ns = make_netns("hj")
    top = {"cniVersion": "1.1.0", "name": unique("hd"), "type": plugin}
    if shape == "bare":
        data = b"[" * DEEP + b"]" * DEEP
    elif shape == "just-decodable":  # json.loads takes it; anything recursive afterwards would not
        data = json.dumps(top)[:-1].encode() + b', "args": ' + b"[" * 900 + b"]" * 900 + b"}"
    else:
        key = "args" if shape == "in-args" else "prevResult"
        data = json.dumps(top)[:-1].encode() + f', "{key}": '.encode() + b"[" * DEEP + b"]" * DEEP + b"}"
    out, rc = _run_type(node, plugin, data, netns_path(ns))
    assert rc != 0 and out["code"] == 6, out
    assert "nested" in out["msg"], out


def _run_type(node: Node, plugin: str, data: bytes, ns: str) -> Tuple[Any, int]:
    env = plugin_env("ADD", netns=ns, container_id="c1", cni_path=node.cni_path)
    proc = subprocess.run(["ip", "netns", "exec", node.name, node.plugin(plugin)], input=data, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, cwd="/")
    return json.loads(proc.stdout), proc.returncode


def test_deeply_nested_output_of_a_delegated_ipam_is_a_decode_failure(node, make_netns, tmp_path):
    """The IPAM's stdout is untrusted input too (its success output and its error output)."""
    ns = make_netns("hj")
    fake = tmp_path / "deep-ipam"
    fake.write_text("#!/bin/sh\ncat >/dev/null\n"
                    f"python3 -c 'import sys; sys.stdout.write(\"[\" * {DEEP} + \"]\" * {DEEP})'\n"
                    'exit "${DEEP_EXIT:-0}"\n')
    fake.chmod(0o755)
    conf = {"cniVersion": "1.1.0", "name": unique("hd"), "type": "pycni-bridge", "bridge": unique("br"),
            "ipam": {"type": "deep-ipam"}}
    for code in ("0", "1"):
        env = plugin_env("ADD", netns=netns_path(ns), container_id="c1",
                         cni_path=f"{tmp_path}:{node.cni_path}", extra={"DEEP_EXIT": code})
        proc = subprocess.run(["ip", "netns", "exec", node.name, node.plugin("pycni-bridge")],
                              input=json.dumps(conf).encode(), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60, cwd="/")
        out = json.loads(proc.stdout)
        assert proc.returncode != 0 and "RecursionError" not in out["msg"], (code, out)
        assert out["code"] == 6 if code == "0" else "failed with exit code 1" in out["msg"], out


LONG_ID = "c" + "x" * (70 * 1024)


@pytest.mark.parametrize("plugin", ["pycni-host-local", "pycni-bridge"])
def test_over_long_container_id_is_refused_at_add_and_nothing_is_leased(node, make_netns, plugin):
    ns = make_netns("hl")
    ipam = {"type": "pycni-host-local", "dataDir": str(node.data_dir), "ranges": [[{"subnet": "10.174.0.0/24"}]]}
    conf: Dict[str, Any] = {"cniVersion": "1.1.0", "name": unique("hi"), "type": plugin, "ipam": ipam}
    if plugin == "pycni-bridge":
        conf["bridge"] = unique("br")
    out, rc = run_raw(node, "ADD", conf, netns_path(ns), container_id=LONG_ID)
    assert rc != 0 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"], out
    assert node.leases(conf["name"]) == []
    out, rc = run_raw(node, "DEL", conf, netns_path(ns), container_id=LONG_ID)
    assert rc == 0, out
    node.ok("ADD", conf, ns, container_id="c" + "x" * 1023)  # the bound itself is accepted
    node.ok("DEL", conf, ns, container_id="c" + "x" * 1023)
    assert node.leases(conf["name"]) == []


def test_del_releases_a_long_container_id_lease_written_by_another_plugin(node):
    """The store reads whole lease files: one the reference host-local wrote for a >64 KiB ID is released."""
    conf = {"cniVersion": "1.1.0", "name": unique("hi"), "type": "pycni-host-local",
            "ipam": {"type": "pycni-host-local", "dataDir": str(node.data_dir),
                     "ranges": [[{"subnet": "10.175.0.0/24"}]]}}
    assert run_raw(node, "ADD", conf, NO_NETNS, container_id="warmup")[1] == 0  # makes the store and its index
    assert run_raw(node, "DEL", conf, NO_NETNS, container_id="warmup")[1] == 0
    lease = node.data_dir / conf["name"] / "10.175.0.9"
    lease.write_bytes(LONG_ID.encode() + b"\r\neth0")
    (node.data_dir / conf["name"] / "last_reserved_ip.0").write_bytes(b"10.175.0.9")  # as the reference does
    out, rc = run_raw(node, "DEL", conf, "", container_id=LONG_ID)
    assert rc == 0, out
    assert not lease.exists(), "the lease of the long container ID stayed"
