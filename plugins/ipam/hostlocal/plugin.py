"""pycni-host-local: the reference host-local IPAM's config and store, without its defects.

Differences from the reference: a repeated ADD for the same (container, ifname)
returns what it holds; DEL reads an index instead of every lease; CHECK looks
at the interface too; STATUS and GC work. See hostlocal_store for the files.
"""
from __future__ import annotations

import ipaddress

from pycni.plugins.core.config import NetConf
from pycni.plugins.core.errors import INVALID_CONFIG, NOT_AVAILABLE, TRY_AGAIN_LATER, UNKNOWN_CONTAINER, CNIError
from pycni.plugins.ipam.hostlocal.config import HostLocalConfig, IPRange, RangeSet, load, read_resolv_conf, requested_addresses
from pycni.plugins.ipam.hostlocal.store import Store
from pycni.plugins.core.plugin import Context, Plugin
from pycni.plugins.core.result import DNS, IPConfig, Result

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set
    from pycni.plugins.core.result import IPAddress
    from pycni.plugins.ipam.hostlocal.store import Owner

CHECK_MISMATCH = 100  # plugin-specific: prevResult names an address this attachment does not hold
RESCAN_AFTER_COLLISIONS = 32  # then skip taken addresses by name instead of trying each


def _ip_config(r: IPRange, ip: IPAddress) -> IPConfig:
    return IPConfig(address=r.interface(ip), gateway=r.gateway)


def _place_requests(sets: List[RangeSet], requested: List[IPAddress]) -> Dict[int, IPAddress]:
    """Which range set each requested address belongs to; code 7 when one cannot be granted by config."""
    wanted: Dict[int, IPAddress] = {}
    for ip in requested:
        index = next((i for i, s in enumerate(sets) if s.range_for(ip)), None)
        if index is None:
            ranges = "; ".join(s.describe() for s in sets)
            raise CNIError(INVALID_CONFIG, f"requested IP {ip} is not in any range set ({ranges})")
        if index in wanted:
            raise CNIError(INVALID_CONFIG, f"requested IPs {wanted[index]} and {ip} are both in range set {index}; "
                                           "one address per range set")
        r = sets[index].range_for(ip)
        assert r is not None
        if int(ip) in r.excluded():
            raise CNIError(INVALID_CONFIG, f"requested IP {ip} is the network, broadcast or gateway address of {r.subnet}")
        wanted[index] = ip
    return wanted


class _Allocation:
    """One ADD under the store lock: what the attachment holds, what it newly took."""

    def __init__(self, store: Store, cid: str, ifname: str) -> None:
        self.store = store
        self.cid = cid
        self.ifname = ifname
        self.held = [ipaddress.ip_address(ip) for ip in store.held(cid, ifname)]
        self.new: List[IPAddress] = []

    def take(self, index: int, rset: RangeSet, want: Optional[IPAddress]) -> IPConfig:
        mine = [ip for ip in self.held if rset.range_for(ip)]
        if mine:  # a repeated ADD: answer with what is already held
            if want is not None and want not in mine:
                raise CNIError(INVALID_CONFIG, f"{self.cid}/{self.ifname} already holds {mine[0]} in range set "
                                               f"{index}; cannot also take requested {want}")
            ip = want or mine[0]
            return _ip_config(rset.range_for(ip), ip)  # type: ignore[arg-type]
        if want is not None:
            if not self.store.reserve(want, self.cid, self.ifname):
                owner = self.store.owner(str(want))
                holder = f" (held by {owner[0]})" if owner else ""
                raise CNIError(TRY_AGAIN_LATER, f"requested IP address {want} is not available in range set "
                                                f"{index} ({rset.describe()}){holder}")
            return self._taken(index, rset, want)
        last_text = self.store.last_reserved(index)
        try:
            last: Optional[IPAddress] = ipaddress.ip_address(last_text) if last_text else None
        except ValueError:
            last = None
        taken: Optional[Set[str]] = None
        collisions = 0
        for ip, _ in rset.candidates(last):
            if taken is not None and str(ip) in taken:
                continue
            if self.store.reserve(ip, self.cid, self.ifname):
                return self._taken(index, rset, ip)
            collisions += 1
            if collisions == RESCAN_AFTER_COLLISIONS:
                taken = self.store.names()
        raise CNIError(TRY_AGAIN_LATER, f"no IP addresses available in range set {index}: {rset.describe()}")

    def _taken(self, index: int, rset: RangeSet, ip: IPAddress) -> IPConfig:
        self.new.append(ip)
        self.store.set_last_reserved(index, ip)
        return _ip_config(rset.range_for(ip), ip)  # type: ignore[arg-type]

    def rollback(self) -> None:
        for ip in self.new:
            self.store.release(str(ip), (self.cid, self.ifname))
        self.new = []


class HostLocal(Plugin):
    name = "pycni-host-local"
    delegates_ipam = False  # `ipam` is this plugin's own config
    known_args = frozenset({"IP"})

    def load_config(self, conf: NetConf) -> HostLocalConfig:
        return load(conf)

    def add(self, ctx: Context) -> Result:
        cfg: HostLocalConfig = ctx.config
        sets = cfg.range_sets
        wanted = _place_requests(sets, requested_addresses(ctx.conf, ctx.inv.args.get("IP")))
        dns = read_resolv_conf(cfg.resolv_conf) if cfg.resolv_conf else DNS()
        with Store(cfg.data_dir, cfg.network) as store:
            store.prepare(len(sets), ctx.inv.container_id, ctx.inv.ifname)
            alloc = _Allocation(store, ctx.inv.container_id, ctx.inv.ifname)
            try:
                ips = [alloc.take(i, s, wanted.get(i)) for i, s in enumerate(sets)]
            except CNIError:
                alloc.rollback()  # every requested address granted, or nothing kept
                store.finish()
                raise
            store.finish()
        if alloc.new:
            ctx.log.event("reserved", ips=[str(ip) for ip in alloc.new])
        return Result(ips=ips, routes=list(cfg.routes), dns=dns)

    def delete(self, ctx: Context) -> None:
        cfg: HostLocalConfig = ctx.config
        cid, ifname = ctx.inv.container_id, ctx.inv.ifname
        with Store(cfg.data_dir, cfg.network) as store:
            store.prepare(len(cfg.range_sets), cid, ifname)
            released = []
            for ip in store.held(cid, ifname):
                store.release(ip, store.owner(ip))
                released.append(ip)
            store.finish()
        if released:
            ctx.log.event("released", ips=released)

    def check(self, ctx: Context) -> None:
        cfg: HostLocalConfig = ctx.config
        cid, ifname = ctx.inv.container_id, ctx.inv.ifname
        with Store(cfg.data_dir, cfg.network) as store:
            store.prepare(len(cfg.range_sets), cid, ifname)
            held = {ipaddress.ip_address(ip) for ip in store.held(cid, ifname)}
            store.finish()
        if not held:
            raise CNIError(UNKNOWN_CONTAINER, f"host-local: no address is held by {cid}/{ifname} in network {cfg.network}")
        prev = ctx.conf.prev_result
        for ipc in prev.ips if prev else []:
            ip = ipc.address.ip
            if any(s.range_for(ip) for s in cfg.range_sets) and ip not in held:
                raise CNIError(CHECK_MISMATCH, f"host-local: {ip} from prevResult is not held by {cid}/{ifname} "
                                               f"(it holds {', '.join(sorted(map(str, held)))})")

    def status(self, ctx: Context) -> None:
        cfg: HostLocalConfig = ctx.config
        try:
            with Store(cfg.data_dir, cfg.network) as store:
                store.probe()
                names = store.names()
        except (OSError, CNIError) as exc:  # cannot create, lock, write, or refused (a symlink)
            msg = exc.msg if isinstance(exc, CNIError) else f"{exc.strerror or exc}"
            raise CNIError(NOT_AVAILABLE, f"host-local store {cfg.data_dir}/{cfg.network} is unusable: {msg}") from None
        taken = _count_taken(names, cfg.range_sets)
        for i, (rset, used) in enumerate(zip(cfg.range_sets, taken)):
            if used >= rset.capacity():
                raise CNIError(NOT_AVAILABLE, f"range set {i} ({rset.describe()}) is exhausted: "
                                              f"{used} of {rset.capacity()} addresses in use")

    def gc(self, ctx: Context) -> None:
        cfg: HostLocalConfig = ctx.config
        valid = ctx.conf.valid_attachments
        pairs = {(a.container_id, a.ifname) for a in valid}
        cids = {a.container_id for a in valid}

        def keep(owner: Optional[Owner]) -> bool:
            if owner is None:
                return False  # empty or garbage file: a crashed writer's leftover
            return owner[0] in cids if owner[1] is None else owner in pairs

        with Store(cfg.data_dir, cfg.network) as store:
            store.prepare(len(cfg.range_sets), rebuild=True)
            released = []
            for ip, owner in sorted(store.reservations().items()):
                if not keep(owner):
                    store.release(ip, owner)
                    released.append(ip)
            store.finish()
        if released:
            ctx.log.event("gc_released", ips=released)


def _count_taken(names: Set[str], sets: List[RangeSet]) -> List[int]:
    """How many allocatable addresses of each range set have a lease file."""
    counts = [0] * len(sets)
    for name in names:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            continue
        for i, rset in enumerate(sets):
            r = rset.range_for(ip)
            if r is not None and int(ip) not in r.excluded():
                counts[i] += 1
                break
    return counts


PLUGIN = HostLocal()
