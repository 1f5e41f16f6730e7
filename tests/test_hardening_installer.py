"""Issue 17 items 11-12: hostile ConfigMaps and settings for pycni-installer.

11. YAML alias bombs are refused, the rendered conflist is capped at 1 MiB, a sync pass that runs long makes
    /healthz and /readyz fail, and SIGTERM ends `--once` in the middle of a pass;
12. --conf-name refuses hidden names and control characters; a bin dir that cannot hold the state manifest
    fails `--once` (exit non-zero) instead of leaving `uninstall` blind.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest

from helpers import ROOT, alive, wait_until
from test_installer_e2e import STATIC_TEMPLATE, Host, Installer, host, run_once, start, template  # noqa: F401

from pycni.installer.network import ConfigError, parse_network_config
from pycni.installer.render import NodeFacts, TemplateError, parse_template, render
from pycni.installer.settings import parse

# Each level repeats the previous one nine times: 9**6 strings from ~300 bytes (the 51 MB conflist).
LEVELS = ["a", "b", "c", "d", "e", "f"]


def alias_bomb(levels: int = 6) -> str:
    lines = ['cniVersion: 1.0.0', 'name: bomb', 'plugins:', '- type: pycni-bridge', '  ipam: {}',
             '  x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


FACTS = NodeFacts("node-1", ["10.77.0.0/24"], 1500)


@pytest.mark.parametrize("text", [
    alias_bomb(6),  # 51 MB rendered
    alias_bomb(8),  # the "busy for 13 minutes" class
    "cniVersion: 1.0.0\nname: m\nbase: &b {type: pycni-bridge}\nplugins:\n- <<: *b\n  bridge: x\n",  # merge key
    "cniVersion: 1.0.0\nname: &n m\nplugins:\n- type: *n\n",  # one harmless-looking alias
])
def test_yaml_aliases_are_refused_quickly(text: str) -> None:
    parse_template("a: 1\n")  # imports done
    started = time.monotonic()
    with pytest.raises(TemplateError, match="aliases"):
        parse_template(text)
    assert time.monotonic() - started < 10.0  # (a loaded CI machine) -- before: minutes, or a 51 MB conflist
    assert len(text) < 600


def test_network_yaml_aliases_are_refused() -> None:
    with pytest.raises(ConfigError, match="aliases"):
        parse_network_config("backend: &b vxlan\nvxlan: {device: *b}\n")


def test_rendered_conflist_and_template_are_capped_at_1_mib() -> None:
    # no alias: 40,000 short strings, each growing by a 253-character node name -> ~10 MiB
    template_obj = {"cniVersion": "1.0.0", "name": "big",
                    "plugins": [{"type": "pycni-bridge", "junk": ["__NODE_NAME__"] * 40_000}]}
    assert len(json.dumps(template_obj)) < 1024 * 1024
    with pytest.raises(TemplateError, match="1048576-byte"):
        render(template_obj, NodeFacts("n" * 253, None, 1500))
    with pytest.raises(TemplateError, match="1048576-byte"):
        parse_template('{"cniVersion": "1.0.0", "name": "x", "pad": "' + "y" * (1024 * 1024) + '"}')


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 2000)),
                                  "{\"a\": " * 900 + "1" + "}" * 900])
def test_deeply_nested_templates_are_a_parse_rejection(text: str) -> None:
    with pytest.raises(TemplateError):
        render(parse_template(text), FACTS)


def test_once_refuses_an_alias_bomb_and_writes_nothing(host: Host) -> None:
    (host.volume / "conflist.yaml").write_text(alias_bomb(6))
    started = time.monotonic()
    proc = run_once(host, "--config-dir", str(host.volume), "--once-timeout", "5")
    assert proc.returncode != 0, proc.stderr.decode()[-2000:]
    assert time.monotonic() - started < 30
    assert not host.conflist.exists()
    assert b"aliases" in proc.stderr


def _hanging_binary_config(host: Host) -> str:
    """A conflist whose plugin binary never answers the VERSION check: the sync pass takes as long as the
    check timeout allows (a stand-in for any pass that does not end). Returns the hang's sleep argument,
    unique to this test, to find the process by."""
    seconds = f"300.{random.randrange(10**6):06d}"
    hang = host.bin / "hang-plugin"
    hang.write_text(f"#!/bin/sh\nexec sleep {seconds}\n")
    hang.chmod(0o755)
    (host.volume / "conflist.yaml").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "hang", "plugins": [{"type": "hang-plugin"}]}))
    return seconds


def _hangs_running(seconds: str) -> List[int]:
    """Live (not zombie) processes running the hang of _hanging_binary_config."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry.name}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if seconds.encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_health_fails_while_a_sync_pass_is_stuck(host: Host, start: Callable[..., Installer]) -> None:
    hang = _hanging_binary_config(host)
    inst = start("--config-dir", str(host.volume), "--binary-check-timeout", "120", "--sync-stuck-seconds", "1")
    wait_until(lambda: inst.get("/healthz")[0] == 503, 20, "/healthz failing while the pass is stuck")
    code, body = inst.get("/readyz")
    assert code == 503 and "sync pass has been running" in body, body
    assert _hangs_running(hang)
    assert inst.stop() == 0  # and SIGTERM ends it now, not after the 120 s check
    wait_until(lambda: not _hangs_running(hang), 10, "the stuck check killed with the installer")


def test_sigterm_ends_once_in_the_middle_of_a_pass(host: Host) -> None:
    hang = _hanging_binary_config(host)
    log = host.root / "once.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pycni.installer", "--once", *host.args(
            "--config-dir", str(host.volume), "--binary-check-timeout", "120")], cwd=str(ROOT),
            stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: b"hang-plugin" in log.read_bytes() or b"binaries_installed" in log.read_bytes()
                       or (host.bin / "pycni-bridge").exists(), 20, "installer started its pass")
            wait_until(lambda: _hangs_running(hang), 20, "the pass stuck in the check")
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc != 0, log.read_text()[-2000:]
    wait_until(lambda: not _hangs_running(hang), 10, "the stuck check killed with the installer")


# ---------------------------------------------------------------- 12

@pytest.mark.parametrize("name", [".conflist", "..conflist", ".hidden.conflist", "a\x01b.conflist", "a\nb.conflist",
                                  "a b.conflist", "-x.conflist", "x.conf", "../x.conflist", "x" * 300 + ".conflist"])
def test_conf_name_refuses_hidden_and_control_character_names(name: str) -> None:
    with pytest.raises(ValueError, match="--conf-name"):
        parse([f"--conf-name={name}"], {})


@pytest.mark.parametrize("name", ["10-pycni.conflist", "99_my.net.conflist", "Z.conflist"])
def test_conf_name_accepts_ordinary_names(name: str) -> None:
    assert parse([f"--conf-name={name}"], {}).conf_name == name


def test_once_fails_when_the_bin_dir_cannot_hold_the_state_manifest(host: Host) -> None:
    (host.bin / ".pycni-installer.state").mkdir()  # the name is taken: the manifest cannot be written
    (host.volume / "conflist.yaml").write_text(template(text=STATIC_TEMPLATE))
    proc = run_once(host, "--config-dir", str(host.volume), "--node-name", "n1", "--once-timeout", "5")
    assert proc.returncode != 0, proc.stderr.decode()[-2000:]
    assert b"manifest" in proc.stderr
    # and a second run, with every file already in place, does not turn it into a success
    proc = run_once(host, "--config-dir", str(host.volume), "--node-name", "n1", "--once-timeout", "5")
    assert proc.returncode != 0, proc.stderr.decode()[-2000:]
