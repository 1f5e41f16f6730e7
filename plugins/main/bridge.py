"""pycni-bridge: containers on a Linux bridge through veth pairs (the reference `bridge` plugin's keys).

ADD, in order: IPAM (so a failing IPAM leaves nothing behind), the bridge
(created once, MAC pinned), the veth pair in one netlink batch (peer made
directly inside the container's netns under CNI_IFNAME, host end attached,
up, tagged with an alias naming the attachment), the container side
(sysctls, link up, addresses with IFA_F_NODAD, routes), the bridge's gateway
address, forwarding, masquerade. Any failure after IPAM undoes it all.
The alias and the masquerade chain names are derived from network +
container + ifname (attachment.Tag), so DEL and GC need nothing else.
"""
from __future__ import annotations

import errno
import ipaddress
import os

from pycni.plugins.kernel.attachment import Tag, parse_prefix
from pycni.plugins.core.config import NetConf
from pycni.plugins.core.errors import INTERNAL, INVALID_CONFIG, NOT_AVAILABLE, CNIError
from pycni.plugins.main.attach import LiveAttachment, Rollback, container_netns, refuse_live_attachment
from pycni.plugins.main.linkconf import bool_key, ifname_key, int_key, mac_value, mtu_key, netlink_failure
from pycni.plugins.core.plugin import Context, Plugin
from pycni.plugins.core.record import Record
from pycni.plugins.core.result import Interface, IPConfig, Result, Route

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import List, Optional, Tuple

HOST_VETH_PREFIX = "veth"
# The ifalias of every bridge pycni-bridge creates: only such a bridge (with no ports left) gives
# up its gateway address to another one, and only such a bridge is removed by a node uninstall.
BRIDGE_ALIAS = "pycni-bridge"
ALIAS_LIMIT = 250


class BridgeConfig(Record):
    __slots__ = ("bridge", "is_gateway", "is_default_gateway", "force_address", "ip_masq", "ip_masq_backend",
                 "mtu", "hairpin", "promisc", "vlan", "vlan_trunk", "preserve_default_vlan", "enable_dad",
                 "macspoofchk", "disable_container_interface", "port_isolation")
    _defaults = {"bridge": "cni0", "is_gateway": False, "is_default_gateway": False, "force_address": False,
                 "ip_masq": False, "ip_masq_backend": "nftables", "mtu": 0, "hairpin": False, "promisc": False,
                 "vlan": 0, "vlan_trunk": list, "preserve_default_vlan": True, "enable_dad": False,
                 "macspoofchk": False, "disable_container_interface": False, "port_isolation": False}
    bridge: str
    is_gateway: bool
    is_default_gateway: bool
    force_address: bool
    ip_masq: bool
    ip_masq_backend: str
    mtu: int
    hairpin: bool
    promisc: bool
    vlan: int
    vlan_trunk: List[Tuple[int, int]]
    preserve_default_vlan: bool
    enable_dad: bool
    macspoofchk: bool
    disable_container_interface: bool
    port_isolation: bool

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.vlan or self.vlan_trunk)


def parse_vlan_trunk(value) -> List[Tuple[int, int]]:
    """`vlanTrunk`: [{"id": N} | {"minID": A, "maxID": B}] -> [(low, high)], each 1..4094."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CNIError(INVALID_CONFIG, f"vlanTrunk: expected a list, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise CNIError(INVALID_CONFIG, f"vlanTrunk: invalid entry {item!r}")
        ids = {k: item[k] for k in ("id", "minID", "maxID") if item.get(k) is not None}
        for key, vid in ids.items():
            if isinstance(vid, bool) or not isinstance(vid, int) or not 1 <= vid <= 4094:
                raise CNIError(INVALID_CONFIG, f"vlanTrunk: invalid VLAN ID {vid!r} in {key} (must be 1..4094)")
        if "id" in ids:
            out.append((ids["id"], ids["id"]))
        if "minID" in ids or "maxID" in ids:
            if "minID" not in ids or "maxID" not in ids:
                raise CNIError(INVALID_CONFIG, f"vlanTrunk: minID and maxID go together: {item!r}")
            if ids["minID"] > ids["maxID"]:
                raise CNIError(INVALID_CONFIG, f"vlanTrunk: minID {ids['minID']} is above maxID {ids['maxID']}")
            out.append((ids["minID"], ids["maxID"]))
        if not ids:
            raise CNIError(INVALID_CONFIG, f"vlanTrunk: entry {item!r} has no id or minID/maxID")
    return out


def load_bridge_config(conf: NetConf) -> BridgeConfig:
    cfg = BridgeConfig(
        bridge=ifname_key(conf, "bridge", "cni0"),
        is_gateway=bool_key(conf, "isGateway"),
        is_default_gateway=bool_key(conf, "isDefaultGateway"),
        force_address=bool_key(conf, "forceAddress"),
        ip_masq=bool_key(conf, "ipMasq"),
        ip_masq_backend=conf.get("ipMasqBackend", str, "") or "nftables",
        mtu=mtu_key(conf),
        hairpin=bool_key(conf, "hairpinMode"),
        promisc=bool_key(conf, "promiscMode"),
        vlan=int_key(conf, "vlan", 0, 4094),
        vlan_trunk=parse_vlan_trunk(conf.raw.get("vlanTrunk")),
        preserve_default_vlan=bool_key(conf, "preserveDefaultVlan", True),
        enable_dad=bool_key(conf, "enabledad"),
        macspoofchk=bool_key(conf, "macspoofchk"),
        disable_container_interface=bool_key(conf, "disableContainerInterface"),
        port_isolation=bool_key(conf, "portIsolation"),
    )
    if not cfg.bridge:
        raise CNIError(INVALID_CONFIG, "bridge: interface name is empty")
    if cfg.is_default_gateway:
        cfg.is_gateway = True
    if cfg.hairpin and cfg.promisc:
        raise CNIError(INVALID_CONFIG, "hairpinMode and promiscMode cannot both be set")
    if cfg.ip_masq_backend not in ("nftables", "iptables"):
        raise CNIError(INVALID_CONFIG, f"ipMasqBackend: must be nftables or iptables, got {cfg.ip_masq_backend!r}")
    if cfg.vlan and cfg.vlan_trunk:
        raise CNIError(INVALID_CONFIG, "vlan and vlanTrunk cannot both be set")
    return cfg


def requested_mac(ctx: Context) -> Optional[str]:
    """CNI_ARGS MAC < args.cni.mac < runtimeConfig.mac."""
    mac = mac_value("CNI_ARGS MAC", ctx.inv.args.get("MAC"))
    mac = mac_value("args.cni.mac", ctx.conf.args.mac) or mac
    return mac_value("runtimeConfig.mac", ctx.conf.runtime_config.mac) or mac


def calc_gateways(result: Result, cfg: BridgeConfig) -> List[IPConfig]:
    """Point ips at the container interface; with isGateway fill missing gateways (subnet + 1) and,
    with isDefaultGateway, add a default route per family. Returns the gateways for the bridge."""
    gateways: List[IPConfig] = []
    for ip in result.ips:
        ip.interface = 2
        if not cfg.is_gateway:
            continue
        if ip.gateway is None:
            ip.gateway = ip.address.network.network_address + 1
        if not any(g.address.version == ip.address.version for g in gateways):
            gw_if = ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}")
            gateways.append(IPConfig(address=gw_if, gateway=ip.gateway))
        if cfg.is_default_gateway:
            for route in result.routes:
                if route.dst.prefixlen == 0 and route.dst.version == ip.address.version:
                    raise CNIError(INVALID_CONFIG, f"isDefaultGateway ineffective because IPAM sets default route "
                                                   f"via {route.gw}")
    if cfg.is_default_gateway:
        for gw in gateways:
            dst = ipaddress.ip_network("0.0.0.0/0" if gw.address.version == 4 else "::/0")
            result.routes.append(Route(dst=dst, gw=gw.gateway))
    return gateways


class Bridge(Plugin):
    name = "pycni-bridge"
    known_args = frozenset({"MAC", "IP"})

    def load_config(self, conf: NetConf) -> BridgeConfig:
        return load_bridge_config(conf)

    def warm_up(self) -> None:
        """For a warm server process: import what the verbs import lazily."""
        import ctypes  # noqa: F401  (netlink's setns on Python < 3.12)

        from pycni.plugins.kernel import ifconfig, macspoofchk, masquerade, netlink  # noqa: F401

    # ------------------------------------------------------------ ADD

    def add(self, ctx: Context) -> Result:
        from pycni.plugins.kernel import netlink as nl

        cfg: BridgeConfig = ctx.config
        mac = requested_mac(ctx)
        tag = Tag(ctx.conf.name, ctx.inv.container_id, ctx.inv.ifname)
        netns = container_netns(ctx.inv.netns)
        undo = Rollback(ctx.log)
        host = nl.RtSocket()
        try:
            refuse_live_attachment(netns, ctx.inv.ifname)
            br = self._ensure_bridge(host, cfg)
            result = ctx.ipam.add() if ctx.ipam else Result()
            if ctx.ipam:
                undo.created("ipam", ctx.ipam.delete)
                if not result.ips:
                    raise CNIError(INTERNAL, "IPAM plugin returned missing IP config")
            gateways = calc_gateways(result, cfg)
            host_name, host_mac, cont = self._make_veth(host, netns, br, cfg, mac, tag, ctx.inv.ifname)
            undo.created("veth", lambda: host.delete_link(name=host_name), host_name)
            # Read the bridge again: a bridge whose last port left has MAC 00:00:00:00:00:00 until a port
            # joins, so its MAC from before attaching can be unusable (reference: "could not set bridge's mac").
            br = host.link(index=br.index) or br
            self._setup_container(netns, cont.index, result, cfg, ctx.inv.ifname)
            if gateways:
                br = self._ensure_gateways(host, br, gateways, cfg, ctx.log)
                self._enable_forwarding(gateways)
            if cfg.ip_masq or cfg.macspoofchk:  # the rules are named by the tag: no live attachment has them
                undo.created("host rules", lambda: self._rules_teardown(cfg, tag))
            if cfg.ip_masq and result.ips:
                from pycni.plugins.kernel.masquerade import backend

                backend(cfg.ip_masq_backend).setup(tag, [ip.address for ip in result.ips])
            if cfg.macspoofchk:
                from pycni.plugins.kernel.macspoofchk import MacSpoofCheck

                MacSpoofCheck().setup(tag, host_name, cont.mac)
        except BaseException as exc:
            if undo.steps and (isinstance(exc, LiveAttachment) or self._live_elsewhere(host, tag, undo)):
                undo.disown("ipam")  # the lease IPAM answered with is the live attachment's
                undo.disown("host rules")
            undo.run()
            raise
        finally:
            netns.close()
            host.close()
        result.interfaces = [
            Interface(name=br.name, mac=br.mac),
            Interface(name=host_name, mac=host_mac),
            Interface(name=ctx.inv.ifname, mac=cont.mac, sandbox=ctx.inv.netns),
        ]
        return result

    def _ensure_bridge(self, host, cfg: BridgeConfig):
        """The bridge link, created (up, MAC pinned, accept_ra off) when missing; code 7 if the name is taken."""
        from pycni.plugins.kernel import netlink as nl

        br = host.link(cfg.bridge)
        if br is None:
            data = nl.nla_u8(nl.IFLA_BR_VLAN_FILTERING, 1) if cfg.vlan_filtering else b""
            attrs = nl.link_attrs(name=cfg.bridge, mtu=cfg.mtu, mac=nl.random_mac()) + nl.linkinfo("bridge", data)
            flags = nl.IFF_UP | (nl.IFF_PROMISC if cfg.promisc else 0)
            try:
                host.batch([nl.create_request(f"create bridge {cfg.bridge}", attrs, flags),
                            nl.change_request(f"mark bridge {cfg.bridge}", 0,
                                              nl.link_attrs(name=cfg.bridge, alias=BRIDGE_ALIAS))],
                           tolerate=(errno.EEXIST,))
            except nl.NetlinkError as exc:
                raise netlink_failure(f"failed to create bridge {cfg.bridge}", exc) from None
            nl.write_sysctl(f"net/ipv6/conf/{cfg.bridge}/accept_ra", "0")
            br = host.link(cfg.bridge)
            if br is None:
                raise CNIError(INTERNAL, f"bridge {cfg.bridge} vanished right after it was created")
        if br.kind != "bridge":
            raise CNIError(INVALID_CONFIG, f"bridge: {cfg.bridge!r} already exists but is not a bridge (it is a "
                                           f"{br.kind or 'device'} link)")
        want_flags = nl.IFF_UP | (nl.IFF_PROMISC if cfg.promisc else 0)
        filtering = br.info_data.get(nl.IFLA_BR_VLAN_FILTERING, b"\0")[:1] == b"\1"
        if (br.flags & want_flags) != want_flags or (cfg.vlan_filtering and not filtering):
            extra = nl.linkinfo("bridge", nl.nla_u8(nl.IFLA_BR_VLAN_FILTERING, 1)) \
                if cfg.vlan_filtering and not filtering else b""
            try:
                host.batch([nl.change_request(f"set up bridge {cfg.bridge}", br.index, extra, set_flags=want_flags)])
            except nl.NetlinkError as exc:
                raise netlink_failure(f"failed to set up bridge {cfg.bridge}", exc) from None
        return br

    def _make_veth(self, host, netns, br, cfg: BridgeConfig, mac: Optional[str], tag: Tag, ifname: str):
        """One batch: the pair (peer inside the netns as `ifname`), then the host end's alias and port flags."""
        from pycni.plugins.kernel import netlink as nl

        host_mac = nl.random_mac()
        port = nl.bridge_port_data(hairpin=True if cfg.hairpin else None,
                                   isolated=True if cfg.port_isolation else None)
        for _attempt in range(5):
            host_name = HOST_VETH_PREFIX + os.urandom(4).hex()
            peer = nl.ifinfomsg() + nl.link_attrs(name=ifname, mtu=cfg.mtu, mac=mac or "", netns_fd=netns.fd)
            attrs = nl.link_attrs(name=host_name, mtu=cfg.mtu, mac=host_mac, master=br.index)
            attrs += nl.linkinfo("veth", nl.nla(nl.VETH_INFO_PEER, peer))
            requests = [
                nl.create_request(f"create veth {host_name}", attrs, nl.IFF_UP),
                nl.change_request(f"configure {host_name}", 0,
                                  nl.link_attrs(name=host_name, alias=tag.describe(ALIAS_LIMIT)) + port),
            ]
            try:
                host.batch(requests)
            except nl.NetlinkError as exc:
                if exc.errno == errno.EEXIST:
                    refuse_live_attachment(netns, ifname)  # the container side exists: a live attachment
                    continue  # else the host name is taken: try the next
                host.delete_link(name=host_name)
                raise netlink_failure("failed to create veth pair", exc) from None
            break
        else:
            raise CNIError(INTERNAL, "could not find a free host veth name")
        try:
            cont_sock = netns.socket()
            try:
                cont = cont_sock.link(ifname)
            finally:
                cont_sock.close()
            if cont is None:
                raise CNIError(INTERNAL, f"container interface {ifname!r} missing right after creating it")
            if cfg.vlan_filtering:
                hv = host.link(host_name)
                try:
                    host.batch(nl.port_vlan_requests(hv.index, cfg.vlan, cfg.vlan_trunk, cfg.preserve_default_vlan))
                except nl.NetlinkError as exc:
                    raise netlink_failure(f"failed to set VLANs on {host_name}", exc) from None
        except BaseException:
            host.delete_link(name=host_name)
            raise
        return host_name, host_mac, cont

    @staticmethod
    def _live_elsewhere(host, tag: Tag, undo: Rollback) -> bool:
        """On the failure path only (a link dump costs): is this attachment live in another netns, i.e. does a
        host veth carry its tag that this call did not create? (A runtime that reuses a container ID.)"""
        ours = undo.names("veth")
        try:
            return any(link.alias.split(" ", 1)[0] == tag.prefix and link.name not in ours for link in host.links())
        except OSError:
            return True  # cannot tell: keep the lease rather than free a live one (DEL still releases it)

    def _setup_container(self, netns, index: int, result: Result, cfg: BridgeConfig, ifname: str) -> None:
        from pycni.plugins.kernel import ifconfig
        from pycni.plugins.kernel import netlink as nl

        with netns.entered():
            nl.write_sysctl(f"net/ipv4/conf/{ifname}/arp_notify", "1")
            if not cfg.enable_dad:
                nl.write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
            sock = nl.RtSocket()
        try:
            if not cfg.disable_container_interface:
                ifconfig.configure(sock, result, index, 2, nodad=not cfg.enable_dad)
        finally:
            sock.close()

    @staticmethod
    def _take_gateway(host, br, want, log) -> list:
        """Requests moving `want` (a gateway to add to `br`) off any other link that holds it (same
        address, or another address of the same subnet: its route would win over ours). Allowed only
        from a bridge we made (BRIDGE_ALIAS) with no ports left: a bridge renamed in the config leaves
        one behind. Anything else fails the ADD, naming the link."""
        from pycni.plugins.kernel import netlink as nl

        requests = []
        links = None
        for addr in host.addresses(family=2 if want.version == 4 else 10):
            if addr.index == br.index or addr.scope != nl.RT_SCOPE_UNIVERSE or not addr.address:
                continue
            cur = ipaddress.ip_interface(f"{addr.address}/{addr.prefixlen}")
            if cur.ip != want.ip and cur.network != want.network:
                continue
            links = links if links is not None else host.links()
            other = next((link for link in links if link.index == addr.index), None)
            name = other.name if other is not None else f"index {addr.index}"
            ports = [link.name for link in links if link.master == addr.index]
            if other is None or other.kind != "bridge" or other.alias != BRIDGE_ALIAS or ports:
                why = (f"it still has ports ({', '.join(sorted(ports)[:5])})" if ports and other is not None
                       and other.alias == BRIDGE_ALIAS else "it was not created by pycni-bridge")
                raise CNIError(INTERNAL, f"gateway {want} for bridge {br.name!r}: link {name!r} already has "
                                         f"{cur}, and its route would take the pods' traffic; {why}, so it is "
                                         f"left alone: remove {cur} from {name}, or configure bridge {name!r}")
            log.event("gateway_taken_over", address=str(cur), from_link=name, bridge=br.name)
            requests.append(nl.addr_request(nl.RTM_DELADDR, addr.index, str(cur.ip), cur.network.prefixlen))
        return requests

    def _ensure_gateways(self, host, br, gateways: List[IPConfig], cfg: BridgeConfig, log):
        """Each gateway address on the bridge (as the reference's ensureAddr), then pin the bridge MAC."""
        from pycni.plugins.kernel import netlink as nl

        have = [a for a in host.addresses(index=br.index) if a.scope == nl.RT_SCOPE_UNIVERSE]
        requests = []
        for gw in gateways:
            want = gw.address
            present = False
            others = []
            for addr in have:
                cur = ipaddress.ip_interface(f"{addr.address}/{addr.prefixlen}")
                if cur.version != want.version:
                    continue
                if cur == want:
                    present = True
                    continue
                # The reference refuses any second IPv4 subnet; we allow non-overlapping ones in both
                # families, so a pod CIDR change adds a gateway and running pods keep theirs.
                if want.ip in cur.network or cur.ip in want.network:
                    if not cfg.force_address:
                        raise CNIError(INTERNAL, f"{br.name!r} already has an IP address different from {want}")
                    requests.append(nl.addr_request(nl.RTM_DELADDR, br.index, str(cur.ip), cur.network.prefixlen))
                else:
                    others.append(str(cur))
            if not present:
                if others:
                    log.event("bridge_other_subnet", bridge=br.name, adding=str(want), existing=others,
                              note="joining a bridge that already carries another subnet")
                requests.extend(self._take_gateway(host, br, want, log))
                requests.append(nl.addr_request(nl.RTM_NEWADDR, br.index, str(want.ip), want.network.prefixlen,
                                                nodad=not cfg.enable_dad and want.version == 6))
        if requests:
            # Setting the MAC to itself pins it: the bridge then stops following its lowest port MAC.
            if br.mac and br.mac != "00:00:00:00:00:00":
                requests.append(nl.change_request(f"pin MAC of {br.name}", br.index, nl.link_attrs(mac=br.mac)))
            try:
                host.batch(requests, tolerate=(errno.EEXIST,))
            except nl.NetlinkError as exc:
                raise netlink_failure(f"failed to set gateway address on {br.name}", exc) from None
        return br

    @staticmethod
    def _enable_forwarding(gateways: List[IPConfig]) -> None:
        from pycni.plugins.kernel import netlink as nl

        for gw in gateways:
            if gw.address.version == 4:
                nl.write_sysctl("net/ipv4/ip_forward", "1")
            else:
                nl.write_sysctl("net/ipv6/conf/all/forwarding", "1")

    @staticmethod
    def _rules_teardown(cfg: BridgeConfig, tag: Tag) -> None:
        if cfg.ip_masq:
            from pycni.plugins.kernel.masquerade import backend

            backend(cfg.ip_masq_backend).teardown(tag)
        if cfg.macspoofchk:
            from pycni.plugins.kernel.macspoofchk import MacSpoofCheck

            MacSpoofCheck().teardown(tag)

    # ------------------------------------------------------------ DEL

    def delete(self, ctx: Context) -> None:
        from pycni.plugins.kernel import netlink as nl

        cfg: BridgeConfig = ctx.config
        tag = Tag(ctx.conf.name, ctx.inv.container_id, ctx.inv.ifname)
        ipam_error: Optional[CNIError] = None
        if ctx.ipam:
            try:
                ctx.ipam.delete()
            except CNIError as exc:  # still remove the veth and rules; report the IPAM failure after
                ipam_error = exc
        gone = False
        netns = nl.open_netns(ctx.inv.netns)
        if netns is not None:
            try:
                sock = netns.socket()
                try:
                    link = sock.link(ctx.inv.ifname)
                    if link is not None and link.kind == "veth":
                        gone = sock.delete_link(index=link.index)
                finally:
                    sock.close()
            except OSError as exc:
                ctx.log.event("netns_unusable", netns=ctx.inv.netns, error=str(exc))
            finally:
                netns.close()
        if not gone:  # no netns (or no interface in it): find our host veth by its alias
            with nl.RtSocket() as host:
                for link in host.links():
                    if link.alias.startswith(tag.prefix + " ") or link.alias == tag.prefix:
                        host.delete_link(index=link.index)
        self._rules_teardown(cfg, tag)
        if ipam_error is not None:
            raise ipam_error

    # ------------------------------------------------------------ CHECK

    def check(self, ctx: Context) -> None:
        from pycni.plugins.kernel import ifconfig
        from pycni.plugins.kernel import netlink as nl

        cfg: BridgeConfig = ctx.config
        prev = ctx.conf.prev_result
        ifname = ctx.inv.ifname
        position, expected = ifconfig.container_interface(prev, ifname)
        with container_netns(ctx.inv.netns) as netns:
            sock = netns.socket()
            try:
                cont = sock.link(ifname)
                if cont is None:
                    raise CNIError(INTERNAL, f"container interface {ifname!r} not found in {ctx.inv.netns}")
                if cont.kind != "veth":
                    raise CNIError(INTERNAL, f"container interface {ifname!r} is a {cont.kind or 'device'}, not a veth")
                if expected.mac and cont.mac.lower() != expected.mac.lower():
                    raise CNIError(INTERNAL, f"{ifname} has MAC {cont.mac}, expected {expected.mac}")
                if not cfg.disable_container_interface:
                    ifconfig.check(sock, prev, cont.index, ifname, position)
            finally:
                sock.close()
        with nl.RtSocket() as host:
            br = host.link(cfg.bridge)
            if br is None or br.kind != "bridge":
                raise CNIError(INTERNAL, f"bridge {cfg.bridge!r} not found")
            tag = Tag(ctx.conf.name, ctx.inv.container_id, ifname)
            mine = [link for link in host.links() if link.alias.startswith(tag.prefix)]
            if not mine:
                raise CNIError(INTERNAL, f"host veth of {ifname!r} not found")
            if mine[0].master != br.index:
                raise CNIError(INTERNAL, f"host veth {mine[0].name} is not attached to bridge {cfg.bridge}")
        if ctx.ipam:
            ctx.ipam.check()

    # ------------------------------------------------------------ STATUS and GC

    def status(self, ctx: Context) -> None:
        from pycni.plugins.kernel import netlink as nl

        cfg: BridgeConfig = ctx.config
        with nl.RtSocket() as host:
            link = host.link(cfg.bridge)
        if link is not None and link.kind != "bridge":
            raise CNIError(NOT_AVAILABLE, f"bridge name {cfg.bridge!r} is taken by a {link.kind or 'non-bridge'} "
                                          f"link")
        if ctx.ipam:
            ctx.ipam.status()

    def gc(self, ctx: Context) -> None:
        from pycni.plugins.kernel import netlink as nl

        cfg: BridgeConfig = ctx.config
        net = Tag(ctx.conf.name, "", "").net
        valid = {Tag(ctx.conf.name, a.container_id, a.ifname).attachment for a in ctx.conf.valid_attachments}

        def keep(link_net: str, attachment: str) -> bool:
            return link_net != net or attachment in valid

        with nl.RtSocket() as host:
            for link in host.links():
                tags = parse_prefix(link.alias)
                if tags and not keep(*tags):
                    ctx.log.event("gc_veth", link=link.name, alias=link.alias)
                    host.delete_link(index=link.index)
        from pycni.plugins.kernel.macspoofchk import MacSpoofCheck
        from pycni.plugins.kernel.masquerade import backend

        for wanted, make in ((cfg.ip_masq, lambda: backend(cfg.ip_masq_backend)), (cfg.macspoofchk, MacSpoofCheck)):
            try:
                removed = make().remove_where(keep)
            except CNIError:
                if wanted:
                    raise
                removed = []  # no tool for it on this node, and the config does not ask for it
            if removed:
                ctx.log.event("gc_rules", chains=removed)
        if ctx.ipam:
            ctx.ipam.gc()


PLUGIN = Bridge()
