"""What bridge and macvlan share around one ADD: the container netns, the live-attachment guard, the rollback.

A repeated ADD of a live attachment (same CNI_CONTAINERID + CNI_IFNAME, its
interface present in the netns) is refused before IPAM or anything else
runs, as the reference does: the delegated IPAM answers a repeat with the
live lease, so an ADD that went on and then failed used to release that
lease in its rollback, and the next container got the address the live one
still used. Refusing (rather than answering with the live result) is chosen
because the live attachment's result cannot be verified against this
request (requested MAC/IPs, config changes) without its prevResult.

`Rollback` records each step this call made, at the moment it is made, and
undoes exactly those, newest first: a step this call did not make (a link
that already existed, a lease this call did not create) is never undone.
"""
from __future__ import annotations

from pycni.plugins.core.errors import INTERNAL, INVALID_ENVIRONMENT, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Callable, List, Tuple

    from pycni.plugins.core.log import EventLog
    from pycni.plugins.kernel.netlink import Netns


def container_netns(path: str) -> Netns:
    """The ADD/CHECK netns; code 4 naming CNI_NETNS when it is missing, unreadable or not a network namespace
    (checked without blocking, before anything is changed)."""
    from pycni.plugins.kernel import netlink as nl
    from pycni.plugins.kernel.nsfs import NotANetns

    try:
        return nl.Netns(path)
    except NotANetns as exc:
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_NETNS: {exc.strerror}") from None
    except OSError as exc:
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_NETNS {path!r}: cannot open the network namespace: "
                                            f"{exc.strerror or exc}") from None


class LiveAttachment(CNIError):
    """The container interface exists already: what IPAM answered may be the live attachment's lease."""

    def __init__(self, ifname: str, where: str) -> None:
        super().__init__(INTERNAL, f"container interface {ifname!r} already exists in {where}: the attachment is "
                                   f"live (a repeated ADD changes nothing; DEL it first)")


def refuse_live_attachment(netns: Netns, ifname: str) -> None:
    """Raise LiveAttachment, having touched nothing, when `ifname` already exists in the container's netns."""
    sock = netns.socket()
    try:
        present = sock.link(ifname) is not None
    finally:
        sock.close()
    if present:
        raise LiveAttachment(ifname, netns.path)


class Rollback:
    """The undo steps of what this call created, run newest first on failure (errors logged, not raised)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.steps: List[Tuple[str, Callable[[], object], str]] = []

    def created(self, what: str, undo: Callable[[], object], name: str = "") -> None:
        """Record a step just made; `name` is what it made (a link name), for `names`."""
        self.steps.append((what, undo, name))

    def names(self, what: str) -> List[str]:
        return [step[2] for step in self.steps if step[0] == what]

    def disown(self, what: str) -> None:
        """Forget a step: what it made turned out to belong to someone else."""
        self.steps = [step for step in self.steps if step[0] != what]

    def run(self) -> None:
        while self.steps:
            what, undo, _name = self.steps.pop()
            try:
                undo()
            except Exception as exc:  # keep undoing; the caller reports the original failure
                self.log.error("rollback_failed", step=what, error=str(exc))
