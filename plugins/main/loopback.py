"""pycni-loopback: `lo` up in the container's netns, nothing else (the reference `loopback` plugin).

containerd and CRI-O exec a plugin named `loopback` from the CNI bin dir for every pod
sandbox, outside any conflist; the installer puts this one there under that name when the
node has none (installer/binaries.py). ADD answers as the reference does: the
prevResult when chained, else `lo` with its addresses. DEL sets `lo` down and never fails
on a namespace that is gone; CHECK wants `lo` up; STATUS and GC have nothing to do.
"""
from __future__ import annotations

import ipaddress

from pycni.plugins.core.errors import INTERNAL, CNIError
from pycni.plugins.core.plugin import Context, Plugin
from pycni.plugins.core.result import Interface, IPConfig, Result

LO = "lo"
LO_MAC = "00:00:00:00:00:00"


def _netns_failure(path: str, exc: OSError) -> CNIError:
    return CNIError(INTERNAL, f"failed to open netns {path!r}: {exc.strerror}")


class Loopback(Plugin):
    name = "pycni-loopback"
    delegates_ipam = False  # no IPAM: an `ipam` key is ignored, as by the reference

    def warm_up(self) -> None:
        """For a warm server process: import what the verbs import lazily."""
        import ctypes  # noqa: F401  (netlink's setns on Python < 3.12)

        from pycni.plugins.kernel import netlink  # noqa: F401

    @staticmethod
    def _set_lo(path: str, up: bool):
        """Set `lo` up or down in the netns at `path`; the link after the change."""
        from pycni.plugins.kernel import netlink as nl

        try:
            netns = nl.Netns(path)
        except OSError as exc:
            raise _netns_failure(path, exc) from None
        with netns, netns.socket() as sock:
            link = sock.link(LO)
            if link is None:
                raise CNIError(INTERNAL, f"no {LO} in {path}")
            set_flags, clear_flags = (nl.IFF_UP, 0) if up else (0, nl.IFF_UP)
            try:
                sock.batch([nl.change_request(f"set {LO} {'up' if up else 'down'}", link.index,
                                              set_flags=set_flags, clear_flags=clear_flags)])
            except nl.NetlinkError as exc:
                raise CNIError(INTERNAL, f"failed to set {LO} {'up' if up else 'down'}: {exc}") from None
            addrs = [ipaddress.ip_interface(f"{a.address}/{a.prefixlen}")
                     for a in sock.addresses(index=link.index) if a.address]
        return addrs

    def add(self, ctx: Context) -> Result:
        addrs = self._set_lo(ctx.inv.netns, True)
        if ctx.conf.prev_result is not None:
            return ctx.conf.prev_result  # chained: pass the previous result through
        return Result(interfaces=[Interface(name=LO, mac=LO_MAC, sandbox=ctx.inv.netns)],
                      ips=[IPConfig(address=a, interface=0) for a in addrs])

    def delete(self, ctx: Context) -> None:
        from pycni.plugins.kernel import netlink as nl

        netns = nl.open_netns(ctx.inv.netns)
        if netns is None:  # gone (or none given): nothing to undo
            return
        netns.close()
        try:
            self._set_lo(ctx.inv.netns, False)
        except CNIError as err:
            ctx.log.event("netns_unusable", netns=ctx.inv.netns, error=err.msg)

    def check(self, ctx: Context) -> None:
        from pycni.plugins.kernel import netlink as nl

        try:
            netns = nl.Netns(ctx.inv.netns)
        except OSError as exc:
            raise _netns_failure(ctx.inv.netns, exc) from None
        with netns, netns.socket() as sock:
            link = sock.link(LO)
            if link is None or not link.up:
                raise CNIError(INTERNAL, f"{LO} is not up in {ctx.inv.netns}")

    def status(self, ctx: Context) -> None:
        pass

    def gc(self, ctx: Context) -> None:
        pass


PLUGIN = Loopback()
