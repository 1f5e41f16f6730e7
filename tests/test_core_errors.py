"""Every bad input gets the spec's error object with the right code and never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import exec_plugin, plugin_env
from pycni.plugins.core import dispatch
from pycni.plugins.core.errors import CNIError
from pycni.plugins.core.plugin import Plugin
from pycni.plugins.core.result import IPConfig, Result

GOOD = {"cniVersion": "1.0.0", "name": "net1", "type": "pycni-test"}


class EchoPlugin(Plugin):
    """A plugin whose ADD returns a fixed result and whose other verbs misbehave on request."""

    name = "pycni-test"
    known_args = frozenset({"IP"})

    def add(self, ctx):
        if ctx.conf.raw.get("crash"):
            raise KeyError("boom")
        if ctx.conf.raw.get("fail"):
            raise CNIError(11, "busy, try later", "details here")
        import ipaddress
        return Result(ips=[IPConfig(ipaddress.ip_interface("10.1.2.3/24"))])

    def delete(self, ctx):
        return None


def run(env: dict, stdin) -> tuple:
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    out, code = dispatch.run(lambda: EchoPlugin(), env, data)
    return (json.loads(out) if out else None), code


ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"}


@pytest.mark.parametrize("stdin,code", [
    (b"", 6), (b"not json", 6), (b"[1,2]", 6), (b'"str"', 6), (b"\xff\xfe", 6),
    ({"cniVersion": "1.0.0", "name": "n"}, 7),
    ({"cniVersion": "9.9.9", "name": "n", "type": "t"}, 1),
    ({"cniVersion": "0.2.0", "name": "n", "type": "t"}, 1),
    ({"name": "n", "type": "t"}, 1),
    ({"cniVersion": 1, "name": "n", "type": "t"}, 6),
    ({"cniVersions": "1.0.0", "name": "n", "type": "t"}, 6),
    ({"cniVersions": ["7.0.0"], "name": "n", "type": "t"}, 1),
    ({"cniVersion": "1.0.0", "name": "../etc", "type": "t"}, 7),
    ({"cniVersion": "1.0.0", "name": "-x", "type": "t"}, 7),
    ({"cniVersion": "1.0.0", "name": "a/b", "type": "t"}, 7),
    ({"cniVersion": "1.0.0", "name": "", "type": "t"}, 7),
    ({"cniVersion": "1.0.0", "name": 5, "type": "t"}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "type": 3}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "type": "t", "runtimeConfig": []}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "type": "t", "ipam": "host-local"}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "type": "t", "args": {"cni": []}}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "type": "t", "prevResult": {"ips": 4}}, 6),
])
def test_malformed_config(stdin, code: int) -> None:
    out, rc = run(ADD_ENV, stdin)
    assert rc == 1 and out["code"] == code, out
    assert out["msg"] and "Traceback" not in json.dumps(out)


@pytest.mark.parametrize("env,code,named", [
    ({}, 4, "CNI_COMMAND"),
    ({"CNI_COMMAND": "BOGUS"}, 4, "CNI_COMMAND"),
    ({"CNI_COMMAND": "ADD", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}, 4, "CNI_CONTAINERID"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}, 4, "CNI_NETNS"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x"}, 4, "CNI_IFNAME"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c"}, 4, "CNI_IFNAME"),
    ({"CNI_COMMAND": "GC"}, 4, "CNI_PATH"),
    (dict(ADD_ENV, CNI_IFNAME="a" * 16), 4, "CNI_IFNAME"),
    (dict(ADD_ENV, CNI_IFNAME="a/b"), 4, "CNI_IFNAME"),
    (dict(ADD_ENV, CNI_CONTAINERID="../x"), 4, "CNI_CONTAINERID"),
    (dict(ADD_ENV, CNI_ARGS="FOO=bar"), 4, "FOO"),
    (dict(ADD_ENV, CNI_ARGS="garbage"), 4, "CNI_ARGS"),
])
def test_bad_environment(env: dict, code: int, named: str) -> None:
    out, rc = run(env, GOOD)
    assert rc == 1 and out["code"] == code and named in out["msg"], out


def test_unknown_args_pass_with_ignore_unknown_and_kubernetes_keys_are_known() -> None:
    args = "K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns;K8S_POD_UID=u;K8S_POD_INFRA_CONTAINER_ID=c;IP=10.1.2.3"
    assert run(dict(ADD_ENV, CNI_ARGS=args), GOOD)[1] == 0
    assert run(dict(ADD_ENV, CNI_ARGS="IgnoreUnknown=1;FOO=bar"), GOOD)[1] == 0


@pytest.mark.parametrize("verb,version,code", [
    ("STATUS", "1.0.0", 1), ("GC", "0.4.0", 1), ("CHECK", "0.3.1", 1), ("CHECK", "0.3.0", 1),
])
def test_verbs_newer_than_the_config_version(verb: str, version: str, code: int) -> None:
    env = dict(ADD_ENV, CNI_COMMAND=verb, CNI_PATH="/nonexistent")
    out, rc = run(env, dict(GOOD, cniVersion=version))
    assert rc == 1 and out["code"] == code and out["cniVersion"] == version


def test_plugin_errors_and_crashes_become_error_objects() -> None:
    out, rc = run(ADD_ENV, dict(GOOD, fail=True))
    assert (rc, out) == (1, {"cniVersion": "1.0.0", "code": 11, "msg": "busy, try later", "details": "details here"})
    out, rc = run(ADD_ENV, dict(GOOD, crash=True))
    assert rc == 1 and out["code"] == 999 and "KeyError" in out["msg"]


def test_result_printed_at_the_config_version() -> None:
    out, rc = run(ADD_ENV, dict(GOOD, cniVersion="0.3.1"))
    assert rc == 0 and out == {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.2.3/24"}], "dns": {}}


def test_unimplemented_verb_is_an_error_not_a_crash() -> None:
    out, rc = run(dict(ADD_ENV, CNI_COMMAND="CHECK"), GOOD)
    assert rc == 1 and out["code"] == 4


def test_log_file_gets_one_json_line_per_event(tmp_path: Path) -> None:
    log = tmp_path / "plugin.log"
    run(ADD_ENV, dict(GOOD, logFile=str(log), fail=True))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and lines[-1]["event"] == "failed" and lines[-1]["code"] == 11
    assert lines[-1]["network"] == "net1" and lines[-1]["container"] == "c1"


@pytest.mark.parametrize("plugin", ["pycni-bridge", "pycni-macvlan", "pycni-host-local", "pycni-dns"])
@pytest.mark.parametrize("stdin,code", [(b"", 6), (b"{", 6), (b"[]", 6), (b'{"cniVersion":"1.0.0","name":"n"}', 7),
                                        (b'{"cniVersion":"5.0.0","name":"n","type":"x"}', 1),
                                        (b'{"cniVersion":"1.0.0","name":"b@d","type":"x"}', 7)])
def test_built_zipapps_reject_malformed_stdin(bin_dir: Path, plugin: str, stdin: bytes, code: int) -> None:
    out, rc, err = exec_plugin(bin_dir / plugin, plugin_env("ADD", "/var/run/netns/none", "c1"), stdin)
    assert rc != 0 and out["code"] == code
    assert "Traceback" not in err
