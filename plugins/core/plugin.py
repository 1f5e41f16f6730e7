"""What a pycni plugin is: a config loader and one method per verb."""
from __future__ import annotations

from pycni.plugins.core.config import NetConf
from pycni.plugins.core.env import Invocation
from pycni.plugins.core.log import EventLog
from pycni.plugins.core.record import Record
from pycni.plugins.core.result import Result

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from pycni.plugins.core.delegate import IpamDelegate  # imports subprocess: only plugins that delegate pay for it
    from typing import Any, FrozenSet, Optional


class Context(Record):
    """Everything one invocation knows; passed to the plugin's verb methods."""

    __slots__ = ("inv", "conf", "config", "stdin", "log", "ipam")
    inv: Invocation
    conf: NetConf
    config: Any  # the plugin's own typed config, from Plugin.load_config
    stdin: bytes
    log: EventLog
    ipam: Optional[IpamDelegate]


class Plugin:
    """Base class: plugins override what they do; STATUS and GC forward to IPAM by default."""

    name = "pycni"
    # False for IPAM plugins, whose `ipam` key is their own config rather than a delegate.
    delegates_ipam = True
    # CNI_ARGS keys this plugin (or its IPAM delegate) understands, beyond the Kubernetes ones.
    known_args: FrozenSet[str] = frozenset()

    def warm_up(self) -> None:
        """Import what the verbs import lazily: the node server calls it once, before forking workers."""

    def load_config(self, conf: NetConf) -> Any:
        """Decode and check the plugin's own keys; raise CNIError(7) naming a bad key."""
        return conf

    def add(self, ctx: Context) -> Result:
        raise NotImplementedError

    def delete(self, ctx: Context) -> None:
        raise NotImplementedError

    def check(self, ctx: Context) -> None:
        raise NotImplementedError

    def status(self, ctx: Context) -> None:
        if ctx.ipam:
            ctx.ipam.status()

    def gc(self, ctx: Context) -> None:
        if ctx.ipam:
            ctx.ipam.gc()
