"""Check a rendered conflist before it may reach the node: what a runtime and each plugin would check.

An invalid file in the conf dir makes containerd report the node NotReady (and
CRI-O skip to another network), so nothing is written unless this passes:
JSON object; conflist `name` a valid network name; a supported `cniVersion`;
non-empty `plugins`, each with a `type`; every `type` (and delegated `ipam.type`)
an executable in the host bin dir; every pycni plugin's own `load_config`
(the very code the plugin runs on ADD) accepts its config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

from pycni.plugins.core.config import network_name_problem
from pycni.plugins.core.versions import SUPPORTED_VERSIONS

PYCNI_PREFIX = "pycni-"


class ValidationError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # short, fixed vocabulary: a metrics label
        self.message = message


def _executable(bin_dir: Path, name: str) -> bool:
    if not name or "/" in name or name in (".", ".."):
        return False
    path = bin_dir / name
    return path.is_file() and os.access(str(path), os.X_OK)


def _noexec(bin_dir: Path) -> str:
    """Why nothing there can run although the files are there: a noexec mount (the runtime could not exec them)."""
    try:
        return " (the bin dir is on a noexec mount)" if os.statvfs(str(bin_dir)).f_flag & os.ST_NOEXEC else ""
    except OSError:
        return ""


def _plugin_conf(conflist: Dict[str, Any], plugin: Dict[str, Any]) -> bytes:
    """The config a runtime hands this plugin: its own object plus the list's name and cniVersion."""
    conf = dict(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    return json.dumps(conf).encode()


def _check_pycni(where: str, conflist: Dict[str, Any], plugin: Dict[str, Any]) -> None:
    """Run the pycni plugin's (and its pycni IPAM delegate's) own config check, in-process."""
    from pycni.plugins.core.config import parse_netconf
    from pycni.plugins.core.errors import CNIError
    from pycni.plugins.core.registry import load

    try:
        conf = parse_netconf(_plugin_conf(conflist, plugin))
        delegates = True
        if conf.type.startswith(PYCNI_PREFIX):
            implementation = load(conf.type)
            implementation.load_config(conf)
            delegates = implementation.delegates_ipam
        if delegates and conf.ipam_type.startswith(PYCNI_PREFIX):
            load(conf.ipam_type).load_config(conf)  # the delegate gets the same stdin
    except CNIError as err:
        raise ValidationError("plugin_config", f"{where}: {err.msg}") from None
    except Exception as exc:  # a plugin bug must reject the config, not kill the installer
        raise ValidationError("plugin_config", f"{where}: config check failed: {type(exc).__name__}: {exc}") from None


def validate(rendered: bytes, bin_dir: Path, node_bin_dir: str = "") -> Dict[str, Any]:
    """The parsed conflist, or ValidationError saying what is wrong and where.

    `node_bin_dir`: the bin dir's path on the node (e.g. /opt/cni/bin for our /host/opt/cni/bin),
    the one messages name: an admin reading an Event looks there, not inside our container.
    """
    try:
        conflist = json.loads(rendered)
    except ValueError as exc:
        raise ValidationError("parse", f"rendered config is not valid JSON: {exc}") from None
    if not isinstance(conflist, dict):
        raise ValidationError("shape", f"config must be a JSON object (a conflist), got {type(conflist).__name__}")
    if "plugins" not in conflist:
        raise ValidationError("shape", "config is not a conflist: it has no \"plugins\" list")
    problem = network_name_problem(conflist.get("name"))
    if problem:
        raise ValidationError("shape", f"conflist: {problem}")
    version = conflist.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise ValidationError("shape", f"conflist: unsupported cniVersion {version!r} "
                                       f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
    plugins = conflist["plugins"]
    if not isinstance(plugins, list) or not plugins:
        raise ValidationError("shape", "conflist: \"plugins\" must be a non-empty list")
    missing: List[str] = []
    for index, plugin in enumerate(plugins):
        where = f"plugins[{index}]"
        if not isinstance(plugin, dict):
            raise ValidationError("shape", f"{where}: must be an object")
        kind = plugin.get("type")
        if not isinstance(kind, str) or not kind:
            raise ValidationError("shape", f"{where}: has no \"type\"")
        where = f"{where} ({kind})"
        ipam = plugin.get("ipam")
        ipam_type = ipam.get("type") if isinstance(ipam, dict) else None
        for needed in (kind, ipam_type):
            if needed is not None and not _executable(bin_dir, needed if isinstance(needed, str) else ""):
                missing.append(f"{where}: plugin {needed!r} is not an executable in "
                               f"{node_bin_dir or bin_dir}{_noexec(bin_dir)}")
        if not missing and (kind.startswith(PYCNI_PREFIX) or str(ipam_type).startswith(PYCNI_PREFIX)):
            _check_pycni(where, conflist, plugin)
    if missing:
        raise ValidationError("missing_plugin", "; ".join(missing))
    return conflist
