"""pycni-macvlan: a macvlan on a master link, inside the container (the reference `macvlan` plugin's keys).

The macvlan is created by one RTM_NEWLINK that carries IFLA_NET_NS_FD, so the
kernel makes it directly inside the container's netns under CNI_IFNAME: it
never exists in the host namespace, not even under a temporary name, so it
cannot collide with host links (what the reference's temp name + move +
rename achieves in three steps).
"""
from __future__ import annotations

import errno

from pycni.plugins.core.config import NetConf
from pycni.plugins.core.errors import INTERNAL, INVALID_CONFIG, NOT_AVAILABLE, CNIError
from pycni.plugins.main.attach import LiveAttachment, Rollback, container_netns, refuse_live_attachment
from pycni.plugins.main.linkconf import bool_key, ifname_key, int_key, mac_value, mtu_key, netlink_failure
from pycni.plugins.core.plugin import Context, Plugin
from pycni.plugins.core.record import Record
from pycni.plugins.core.result import Interface, Result

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Optional

MODES = ("bridge", "private", "vepa", "passthru")


class MacvlanConfig(Record):
    __slots__ = ("master", "mode", "mtu", "mac", "bcqueuelen", "link_in_container")
    _defaults = {"master": "", "mode": "bridge", "mtu": 0, "mac": None, "bcqueuelen": None, "link_in_container": False}
    master: str
    mode: str
    mtu: int
    mac: Optional[str]
    bcqueuelen: Optional[int]
    link_in_container: bool


def load_macvlan_config(conf: NetConf) -> MacvlanConfig:
    mode = conf.get("mode", str, "") or "bridge"
    if mode not in MODES:
        raise CNIError(INVALID_CONFIG, f"mode: unknown macvlan mode {mode!r} (one of {', '.join(MODES)})")
    bcq = conf.raw.get("bcqueuelen")
    return MacvlanConfig(
        master=ifname_key(conf, "master"),
        mode=mode,
        mtu=mtu_key(conf),
        mac=mac_value("mac", conf.raw.get("mac")),
        bcqueuelen=int_key(conf, "bcqueuelen", 0, 2 ** 32 - 1) if bcq is not None else None,
        link_in_container=bool_key(conf, "linkInContainer"),
    )


def default_route_link(sock) -> str:
    """The name of the link holding the IPv4 (else IPv6) default route of the main table."""
    from pycni.plugins.kernel import netlink as nl

    for family in (2, 10):
        for route in sock.routes(family):
            if route.table == nl.RT_TABLE_MAIN and route.dst.endswith("/0") and route.oif:
                link = sock.link(index=route.oif)
                if link is not None:
                    return link.name
    raise CNIError(INVALID_CONFIG, "master: not set and there is no default route to take it from")


class Macvlan(Plugin):
    name = "pycni-macvlan"
    known_args = frozenset({"MAC", "IP"})

    def load_config(self, conf: NetConf) -> MacvlanConfig:
        return load_macvlan_config(conf)

    def warm_up(self) -> None:
        """For a warm server process: import what the verbs import lazily."""
        import ctypes  # noqa: F401  (netlink's setns on Python < 3.12)

        from pycni.plugins.kernel import ifconfig, netlink  # noqa: F401

    @staticmethod
    def _mac(ctx: Context) -> Optional[str]:
        """config `mac` < CNI_ARGS MAC < runtimeConfig.mac (the reference's order)."""
        mac = mac_value("CNI_ARGS MAC", ctx.inv.args.get("MAC")) or ctx.config.mac
        return mac_value("runtimeConfig.mac", ctx.conf.runtime_config.mac) or mac

    def _master(self, sock, cfg: MacvlanConfig):
        name = cfg.master or default_route_link(sock)
        link = sock.link(name)
        if link is None:
            where = " in the container's netns" if cfg.link_in_container else ""
            raise CNIError(INVALID_CONFIG, f"master: link {name!r} not found{where}")
        return link

    # ------------------------------------------------------------ ADD

    def add(self, ctx: Context) -> Result:
        from pycni.plugins.kernel import ifconfig
        from pycni.plugins.kernel import netlink as nl

        cfg: MacvlanConfig = ctx.config
        ifname = ctx.inv.ifname
        mac = self._mac(ctx)
        netns = container_netns(ctx.inv.netns)
        undo = Rollback(ctx.log)
        cont = where = None
        try:
            refuse_live_attachment(netns, ifname)
            cont = netns.socket()
            where = cont if cfg.link_in_container else nl.RtSocket()
            master = self._master(where, cfg)
            if cfg.mtu and cfg.mtu > master.mtu:
                raise CNIError(INVALID_CONFIG, f"mtu: {cfg.mtu} is above the MTU {master.mtu} of master "
                                               f"{master.name}")
            result = ctx.ipam.add() if ctx.ipam else Result()
            if ctx.ipam:
                undo.created("ipam", ctx.ipam.delete)
                if not result.ips:
                    raise CNIError(INTERNAL, "IPAM plugin returned missing IP config")
            data = nl.nla_u32(nl.IFLA_MACVLAN_MODE, nl.MACVLAN_MODES[cfg.mode])
            if cfg.bcqueuelen is not None:
                data += nl.nla_u32(nl.IFLA_MACVLAN_BC_QUEUE_LEN, cfg.bcqueuelen)
            attrs = nl.link_attrs(name=ifname, mtu=cfg.mtu, mac=mac or "", parent=master.index,
                                  netns_fd=-1 if cfg.link_in_container else netns.fd)
            try:
                where.batch([nl.create_request(f"create macvlan {ifname}", attrs + nl.linkinfo("macvlan", data))])
            except nl.NetlinkError as exc:
                if exc.errno == errno.EEXIST:
                    raise LiveAttachment(ifname, ctx.inv.netns) from None
                raise netlink_failure(f"failed to create macvlan on {master.name}", exc) from None
            undo.created("link", lambda: cont.delete_link(name=ifname))
            link = cont.link(ifname)
            if link is None:
                raise CNIError(INTERNAL, f"macvlan {ifname!r} missing right after creating it")
            with netns.entered():
                nl.write_sysctl(f"net/ipv4/conf/{ifname}/arp_notify", "1")
                nl.write_sysctl(f"net/ipv6/conf/{ifname}/ndisc_notify", "1")
            for ip in result.ips:
                ip.interface = 0
            ifconfig.configure(cont, result, link.index, 0, nodad=False)
        except BaseException as exc:
            if isinstance(exc, LiveAttachment):  # appeared after our check: the lease may be the live one's
                undo.disown("ipam")
            undo.run()
            raise
        finally:
            netns.close()
            if where is not None and where is not cont:
                where.close()
            if cont is not None:
                cont.close()
        result.interfaces = [Interface(name=ifname, mac=link.mac, sandbox=ctx.inv.netns)]
        return result

    # ------------------------------------------------------------ DEL

    def delete(self, ctx: Context) -> None:
        from pycni.plugins.kernel import netlink as nl

        if ctx.ipam:
            ctx.ipam.delete()
        netns = nl.open_netns(ctx.inv.netns)
        if netns is None:
            return
        try:
            with netns.socket() as sock:
                link = sock.link(ctx.inv.ifname)
                if link is not None and link.kind == "macvlan":
                    sock.delete_link(index=link.index)
        except OSError as exc:
            ctx.log.event("netns_unusable", netns=ctx.inv.netns, error=str(exc))
        finally:
            netns.close()

    # ------------------------------------------------------------ CHECK, STATUS

    def check(self, ctx: Context) -> None:
        from pycni.plugins.kernel import ifconfig
        from pycni.plugins.kernel import netlink as nl

        cfg: MacvlanConfig = ctx.config
        prev = ctx.conf.prev_result
        ifname = ctx.inv.ifname
        position, expected = ifconfig.container_interface(prev, ifname)
        netns = container_netns(ctx.inv.netns)
        with netns, netns.socket() as sock:
            link = sock.link(ifname)
            if link is None or link.kind != "macvlan":
                raise CNIError(INTERNAL, f"macvlan {ifname!r} not found in {ctx.inv.netns}")
            mode = link.info_data.get(nl.IFLA_MACVLAN_MODE)
            want = nl.MACVLAN_MODES[cfg.mode]
            if mode is not None and int.from_bytes(mode[:4], "little") != want:
                raise CNIError(INTERNAL, f"{ifname} is not in macvlan mode {cfg.mode}")
            if expected.mac and link.mac.lower() != expected.mac.lower():
                raise CNIError(INTERNAL, f"{ifname} has MAC {link.mac}, expected {expected.mac}")
            ifconfig.check(sock, prev, link.index, ifname, position)
        if ctx.ipam:
            ctx.ipam.check()

    def status(self, ctx: Context) -> None:
        """Code 50 when the master is missing or down (the reference only forwards to IPAM)."""
        from pycni.plugins.kernel import netlink as nl

        cfg: MacvlanConfig = ctx.config
        if not cfg.link_in_container:  # otherwise the master lives in containers we cannot see here
            with nl.RtSocket() as sock:
                try:
                    master = self._master(sock, cfg)
                except CNIError as exc:
                    raise CNIError(NOT_AVAILABLE, exc.msg) from None
            if not master.up:
                raise CNIError(NOT_AVAILABLE, f"master {master.name!r} is down")
        if ctx.ipam:
            ctx.ipam.status()


PLUGIN = Macvlan()
