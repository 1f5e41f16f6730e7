"""Config checks and helpers shared by the link-making plugins (bridge, macvlan)."""
from __future__ import annotations

import re

from pycni.plugins.core.config import NetConf
from pycni.plugins.core.env import interface_name_problem
from pycni.plugins.core.errors import INTERNAL, INVALID_CONFIG, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Any, Optional

_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
MTU_MIN, MTU_MAX = 68, 65535


def bool_key(conf: NetConf, key: str, default: bool = False) -> bool:
    """A boolean key; "true"/"false" strings are accepted too (the reference's docs show them)."""
    value = conf.raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise CNIError(INVALID_CONFIG, f"{key}: expected a boolean, got {value!r}")
    return value


def int_key(conf: NetConf, key: str, low: int, high: int, default: int = 0) -> int:
    value = conf.get(key, int, default)
    if not low <= value <= high:
        raise CNIError(INVALID_CONFIG, f"{key}: {value} is out of range ({low}..{high})")
    return value


def mtu_key(conf: NetConf, key: str = "mtu") -> int:
    value = conf.get(key, int, 0)
    if value != 0 and not MTU_MIN <= value <= MTU_MAX:
        raise CNIError(INVALID_CONFIG, f"{key}: {value} is out of range (0 for the default, or {MTU_MIN}..{MTU_MAX})")
    return value


def ifname_key(conf: NetConf, key: str, default: str = "") -> str:
    value = conf.get(key, str, default)
    if value or not default:
        problem = interface_name_problem(value) if value else ""
        if problem:
            raise CNIError(INVALID_CONFIG, f"{key}: interface name {value!r} {problem}")
    return value


def mac_value(where: str, value: Any) -> Optional[str]:
    """A unicast MAC in lower case, or None for none; code 7 naming `where` when malformed."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _MAC.match(value):
        raise CNIError(INVALID_CONFIG, f"{where}: invalid MAC address {value!r}")
    if int(value[:2], 16) & 1:
        raise CNIError(INVALID_CONFIG, f"{where}: {value!r} is a multicast MAC address")
    return value.lower()


def netlink_failure(what: str, exc: OSError) -> CNIError:
    return CNIError(INTERNAL, f"{what}: {exc.strerror or exc}")
