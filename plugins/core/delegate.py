"""IPAM delegation: run the `ipam.type` plugin with our environment and stdin."""
from __future__ import annotations

from pycni.plugins.core.env import Invocation
from pycni.plugins.core.invoke import decode_output, execute, find_plugin
from pycni.plugins.core.result import Result

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Mapping, Optional
    from pycni.plugins.core.invoke import Runner


class IpamDelegate:
    """Runs the IPAM plugin named by the config for one invocation."""

    def __init__(self, ipam_type: str, inv: Invocation, stdin: bytes, runner: Optional[Runner] = None) -> None:
        self.ipam_type = ipam_type
        self.inv = inv
        self.stdin = stdin
        self.runner = runner

    def _run(self, command: str) -> bytes:
        binary = find_plugin(self.ipam_type, self.inv.path)
        environ: Mapping[str, str] = {**self.inv.environ, "CNI_COMMAND": command}
        return execute(binary, environ, self.stdin, self.runner)

    def add(self) -> Result:
        return Result.from_dict(decode_output(self.ipam_type, self._run("ADD")))

    def delete(self) -> None:
        self._run("DEL")

    def check(self) -> None:
        self._run("CHECK")

    def status(self) -> None:
        self._run("STATUS")

    def gc(self) -> None:
        self._run("GC")
