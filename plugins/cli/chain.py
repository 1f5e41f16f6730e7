"""Running a conflist the way libcni does: per-plugin config injection, chain order, result cache.

Used by the `pycni` command; knows nothing of Kubernetes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pycni.plugins.core.config import decode_json_object, network_name_problem
from pycni.plugins.core.errors import INVALID_CONFIG, CNIError
from pycni.plugins.core.invoke import decode_output, execute, find_plugin
from pycni.plugins.core.versions import at_least, negotiate

if TYPE_CHECKING:
    from pycni.plugins.core.invoke import Runner

DEFAULT_CACHE_DIR = "/var/lib/cni"


@dataclass
class NetworkList:
    """A parsed conflist (a single-plugin .conf is read as a list of one)."""

    name: str
    cni_version: str
    plugins: List[Dict[str, Any]]
    disable_check: bool
    raw: bytes

    @classmethod
    def parse(cls, data: bytes) -> "NetworkList":
        obj = decode_json_object(data)
        plugins = obj.get("plugins")
        if plugins is None and "type" in obj:
            plugins = [{k: v for k, v in obj.items() if k not in ("name", "cniVersion", "cniVersions")}]
        if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) for p in plugins):
            raise CNIError(INVALID_CONFIG, "conflist: `plugins` must be a non-empty list of objects")
        problem = network_name_problem(obj.get("name"))
        if problem:
            raise CNIError(INVALID_CONFIG, f"conflist: {problem}")
        for plugin in plugins:
            if not isinstance(plugin.get("type"), str) or not plugin["type"]:
                raise CNIError(INVALID_CONFIG, f"conflist: plugin without a type: {plugin}")
        return cls(
            name=obj["name"],
            cni_version=negotiate(obj.get("cniVersion"), obj.get("cniVersions")),
            plugins=plugins,
            disable_check=str(obj.get("disableCheck", "")).lower() == "true",
            raw=data,
        )


@dataclass
class Attachment:
    """The runtime side of one attachment: which container, interface, netns, args, capabilities."""

    container_id: str
    ifname: str = "eth0"
    netns: str = ""
    cni_args: str = ""
    capabilities: Dict[str, Any] = field(default_factory=dict)


class ChainRunner:
    def __init__(self, cni_path: Sequence[str], cache_dir: str = DEFAULT_CACHE_DIR,
                 environ: Optional[Mapping[str, str]] = None, runner: Optional[Runner] = None) -> None:
        self.cni_path = list(cni_path)
        self.cache_dir = cache_dir
        self.environ = dict(os.environ if environ is None else environ)
        self.runner = runner

    # -- per-plugin plumbing ------------------------------------------------

    def _plugin_config(self, net: NetworkList, plugin: Dict[str, Any], att: Optional[Attachment],
                       prev_result: Optional[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None) -> bytes:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        declared = plugin.get("capabilities") or {}
        if att is not None and isinstance(declared, dict):
            runtime_config = {k: att.capabilities[k] for k, on in declared.items() if on and k in att.capabilities}
            if runtime_config:
                conf["runtimeConfig"] = runtime_config
        if prev_result is not None:
            conf["prevResult"] = prev_result
        conf.update(extra or {})
        return json.dumps(conf).encode()

    def _env(self, command: str, att: Optional[Attachment]) -> Dict[str, str]:
        env = dict(self.environ)
        env.update({"CNI_COMMAND": command, "CNI_PATH": ":".join(self.cni_path)})
        for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"):
            env.pop(key, None)
        if att is not None:
            env.update({"CNI_CONTAINERID": att.container_id, "CNI_IFNAME": att.ifname,
                        "CNI_NETNS": att.netns, "CNI_ARGS": att.cni_args})
        return env

    def _exec(self, command: str, net: NetworkList, plugin: Dict[str, Any], att: Optional[Attachment],
              prev_result: Optional[Dict[str, Any]], extra: Optional[Dict[str, Any]] = None) -> bytes:
        binary = find_plugin(plugin["type"], self.cni_path)
        stdin = self._plugin_config(net, plugin, att, prev_result, extra)
        return execute(binary, self._env(command, att), stdin, self.runner)

    # -- the result cache (libcni's layout) ---------------------------------

    def cache_path(self, net: NetworkList, att: Attachment) -> str:
        return os.path.join(self.cache_dir, "results", f"{net.name}-{att.container_id}-{att.ifname}")

    def cached_result(self, net: NetworkList, att: Attachment) -> Optional[Dict[str, Any]]:
        try:
            with open(self.cache_path(net, att), "rb") as f:
                return json.load(f).get("result")
        except (OSError, ValueError):
            return None

    def _write_cache(self, net: NetworkList, att: Attachment, result: Dict[str, Any]) -> None:
        path = self.cache_path(net, att)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        entry = {
            "kind": "cniCacheV1", "containerId": att.container_id, "ifName": att.ifname,
            "networkName": net.name, "config": base64.b64encode(net.raw).decode(),
            "cniArgs": [kv.split("=", 1) for kv in att.cni_args.split(";") if "=" in kv],
            "capabilityArgs": att.capabilities, "result": result,
        }
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)

    def cached_attachments(self, net: NetworkList) -> List[Tuple[str, str]]:
        results = os.path.join(self.cache_dir, "results")
        out = []
        for name in sorted(os.listdir(results)) if os.path.isdir(results) else []:
            try:
                with open(os.path.join(results, name)) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            if entry.get("networkName") == net.name:
                out.append((entry.get("containerId", ""), entry.get("ifName", "")))
        return out

    # -- verbs --------------------------------------------------------------

    def add(self, net: NetworkList, att: Attachment) -> Dict[str, Any]:
        result: Optional[Dict[str, Any]] = None
        for plugin in net.plugins:
            result = decode_output(plugin["type"], self._exec("ADD", net, plugin, att, result))
        assert result is not None
        self._write_cache(net, att, result)
        return result

    def check(self, net: NetworkList, att: Attachment) -> None:
        if not at_least(net.cni_version, "0.4.0"):
            raise CNIError(INVALID_CONFIG, f"CHECK needs cniVersion 0.4.0 or newer, conflist has {net.cni_version}")
        if net.disable_check:
            return
        cached = self.cached_result(net, att)
        if cached is None:
            raise CNIError(INVALID_CONFIG, f"no cached result for {net.name}/{att.container_id}/{att.ifname}")
        for plugin in net.plugins:
            self._exec("CHECK", net, plugin, att, cached)

    def delete(self, net: NetworkList, att: Attachment) -> None:
        cached = self.cached_result(net, att) if at_least(net.cni_version, "0.4.0") else None
        for plugin in reversed(net.plugins):
            self._exec("DEL", net, plugin, att, cached)
        try:
            os.unlink(self.cache_path(net, att))
        except FileNotFoundError:
            pass

    def status(self, net: NetworkList) -> None:
        self._require_1_1(net, "STATUS")
        for plugin in net.plugins:
            self._exec("STATUS", net, plugin, None, None)

    def gc(self, net: NetworkList, valid: Sequence[Tuple[str, str]]) -> List[CNIError]:
        """GC every plugin, carrying on past errors (the spec says so); returns the errors."""
        self._require_1_1(net, "GC")
        attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
        errors = []
        for plugin in net.plugins:
            try:
                self._exec("GC", net, plugin, None, None, {"cni.dev/valid-attachments": attachments})
            except CNIError as err:
                errors.append(err)
        return errors

    @staticmethod
    def _require_1_1(net: NetworkList, verb: str) -> None:
        if not at_least(net.cni_version, "1.1.0"):
            raise CNIError(INVALID_CONFIG, f"{verb} needs cniVersion 1.1.0, conflist has {net.cni_version}")


def default_container_id(netns: str) -> str:
    """Like cnitool: a stable ID derived from the netns path."""
    return hashlib.sha512(netns.encode()).hexdigest()[:16]
