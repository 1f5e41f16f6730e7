"""The CNI_* environment of one invocation, validated per verb as the spec's table says."""
from __future__ import annotations

import re
from pycni.plugins.core.record import FrozenRecord

from pycni.plugins.core.cni_args import CniArgs
from pycni.plugins.core.errors import INVALID_ENVIRONMENT, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Dict, Mapping, Tuple

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# Variables each verb cannot do without (CNI_COMMAND is checked first for all).
REQUIRED: Dict[str, Tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# The spec sets no length; runtimes use 64 hex digits. A bound keeps every store that records the ID
# (host-local lease files, the DNS records, rule comments) within sane sizes; DEL accepts any length
# so whatever another plugin recorded can still be released.
CONTAINER_ID_MAX = 1024
_BAD_IFNAME_CHARS = re.compile(r"[/:\s]")
IFNAME_MAX = 15


def interface_name_problem(name: str) -> str:
    """Why `name` cannot be a Linux interface name, or '' when it can."""
    if not name:
        return "is empty"
    if len(name) > IFNAME_MAX:
        return f"is longer than {IFNAME_MAX} characters"
    if name in (".", ".."):
        return "is '.' or '..'"
    if _BAD_IFNAME_CHARS.search(name):
        return "contains '/', ':' or whitespace"
    return ""


class Invocation(FrozenRecord):
    """What the runtime told us through the environment."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "environ")
    command: str
    container_id: str
    netns: str
    ifname: str
    args: CniArgs
    path: Tuple[str, ...]
    environ: Mapping[str, str]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Invocation":
        command = environ.get("CNI_COMMAND", "")
        if not command:
            raise CNIError(INVALID_ENVIRONMENT, "required env variable CNI_COMMAND is missing")
        if command not in COMMANDS:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_COMMAND: unknown command {command!r}")
        missing = [name for name in REQUIRED[command] if not environ.get(name)]
        if missing:
            raise CNIError(INVALID_ENVIRONMENT, "required env variables missing: " + ", ".join(missing))
        container_id = environ.get("CNI_CONTAINERID", "")
        if container_id and command == "ADD" and len(container_id) > CONTAINER_ID_MAX:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID is {len(container_id)} characters long; "
                                                f"at most {CONTAINER_ID_MAX} are accepted at ADD")
        if container_id and not _CONTAINER_ID.match(container_id):
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {container_id!r} is not a valid container ID")
        ifname = environ.get("CNI_IFNAME", "")
        if ifname:
            problem = interface_name_problem(ifname)
            if problem:
                raise CNIError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} {problem}")
        return cls(
            command=command,
            container_id=container_id,
            netns=environ.get("CNI_NETNS", ""),
            ifname=ifname,
            args=CniArgs.parse(environ.get("CNI_ARGS", "")),
            path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
            environ=environ,
        )
