"""The network configuration a plugin reads on stdin, decoded and checked."""
from __future__ import annotations

import re

from pycni.plugins.core.jsonio import loads
from pycni.plugins.core.record import FrozenRecord, Record

from pycni.plugins.core.errors import DECODE_FAILURE, INVALID_CONFIG, CNIError
from pycni.plugins.core.result import Result
from pycni.plugins.core.versions import negotiate

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    import builtins
    from typing import Any, Dict, List, Optional

NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NETWORK_NAME_MAX = 255  # it becomes a directory name in several stores


def network_name_problem(name: Any) -> str:
    """Why `name` cannot be a network name ('' when it can). Also keeps it safe as a path part."""
    if not isinstance(name, str) or not name:
        return "network name is missing"
    if len(name) > NETWORK_NAME_MAX:
        return f"network name is longer than {NETWORK_NAME_MAX} characters"
    if not NETWORK_NAME.match(name) or name in (".", ".."):
        return f"invalid network name {name!r}: must start with a letter or digit, then letters, digits, '_', '.', '-'"
    return ""


def _typed(raw: Dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CNIError(INVALID_CONFIG, f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _str_list(where: str, value: Any) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CNIError(INVALID_CONFIG, f"{where}: expected a list of strings, got {value!r}")
    return list(value)


class RuntimeConfig(FrozenRecord):
    """Capability arguments the runtime filled in (CONVENTIONS.md)."""

    __slots__ = ("raw",)
    _defaults = {"raw": dict}
    raw: Dict[str, Any]

    @property
    def ips(self) -> List[str]:
        return _str_list("runtimeConfig.ips", self.raw.get("ips"))

    @property
    def mac(self) -> Optional[str]:
        return _typed(self.raw, "mac", str, None) or None

    @property
    def ip_ranges(self) -> List[Any]:
        return _typed(self.raw, "ipRanges", list, [])

    @property
    def aliases(self) -> Any:
        """A list of names, or podman's map from network name to names."""
        return self.raw.get("aliases")


class CniConfigArgs(FrozenRecord):
    """The `args.cni` object of the config (CONVENTIONS.md)."""

    __slots__ = ("raw",)
    _defaults = {"raw": dict}
    raw: Dict[str, Any]

    @property
    def ips(self) -> List[str]:
        return _str_list("args.cni.ips", self.raw.get("ips"))

    @property
    def mac(self) -> Optional[str]:
        return _typed(self.raw, "mac", str, None) or None

    @property
    def labels(self) -> List[Dict[str, Any]]:
        return _typed(self.raw, "labels", list, [])


class Attachment(FrozenRecord):
    __slots__ = ("container_id", "ifname")
    container_id: str
    ifname: str


class NetConf(Record):
    """A plugin's config object, as injected by the runtime."""

    __slots__ = ("raw", "cni_version", "name", "type", "runtime_config", "args", "ipam", "prev_result")
    raw: Dict[str, Any]
    cni_version: str
    name: str
    type: str
    runtime_config: RuntimeConfig
    args: CniConfigArgs
    ipam: Dict[str, Any]
    prev_result: Optional[Result]

    def get(self, key: str, kind: builtins.type, default: Any = None) -> Any:  # `type` is a field here
        """A plugin-specific key, type-checked (code 7 naming the key when wrong)."""
        return _typed(self.raw, key, kind, default)

    @property
    def ipam_type(self) -> str:
        return self.ipam.get("type", "") if isinstance(self.ipam.get("type"), str) else ""

    @property
    def valid_attachments(self) -> List[Attachment]:
        """GC's `cni.dev/valid-attachments` (older libcni: `cni.dev/attachments`). Without it GC has no way to
        tell live from stale: code 7, so nothing is deleted (an explicit [] means "none is live")."""
        items = self.raw.get("cni.dev/valid-attachments", self.raw.get("cni.dev/attachments"))
        if items is None:
            raise CNIError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments (the list of live attachments); "
                                           "it is missing, so nothing is deleted")
        if not isinstance(items, list):
            raise CNIError(INVALID_CONFIG, "cni.dev/valid-attachments: expected a list")
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
                raise CNIError(INVALID_CONFIG, f"cni.dev/valid-attachments: invalid entry {item!r}")
            out.append(Attachment(item["containerID"], str(item.get("ifname", ""))))
        return out


def decode_json_object(stdin: bytes) -> Dict[str, Any]:
    try:
        raw = loads(stdin)
    except ValueError as exc:  # UnicodeDecodeError and TooDeep are ValueErrors
        raise CNIError(DECODE_FAILURE, f"failed to decode network config: {exc}") from None
    if not isinstance(raw, dict):
        raise CNIError(DECODE_FAILURE, f"network config must be a JSON object, got {type(raw).__name__}")
    return raw


def parse_netconf(stdin: bytes) -> NetConf:
    raw = decode_json_object(stdin)
    cni_versions = raw.get("cniVersions")
    if cni_versions is not None and not isinstance(cni_versions, list):
        raise CNIError(DECODE_FAILURE, f"cniVersions must be a list, got {cni_versions!r}")
    cni_version = raw.get("cniVersion")
    if cni_version is not None and not isinstance(cni_version, str):
        raise CNIError(DECODE_FAILURE, f"cniVersion must be a string, got {cni_version!r}")
    version = negotiate(cni_version, cni_versions)
    problem = network_name_problem(raw.get("name"))
    if problem:
        raise CNIError(INVALID_CONFIG, problem)
    plugin_type = raw.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CNIError(INVALID_CONFIG, "network config has no plugin type")
    runtime_config = _typed(raw, "runtimeConfig", dict, {})
    args = _typed(raw, "args", dict, {})
    cni_args = args.get("cni")
    cni_args = {} if cni_args is None else cni_args
    if not isinstance(cni_args, dict):
        raise CNIError(INVALID_CONFIG, f"args.cni: expected object, got {cni_args!r}")
    ipam = _typed(raw, "ipam", dict, {})
    prev = raw.get("prevResult")
    return NetConf(
        raw=raw,
        cni_version=version,
        name=raw["name"],
        type=plugin_type,
        runtime_config=RuntimeConfig(runtime_config),
        args=CniConfigArgs(cni_args),
        ipam=ipam,
        prev_result=Result.from_dict(prev) if prev else None,
    )
