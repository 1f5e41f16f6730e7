"""Converge this node's kernel state on the desired one: add what is missing, remove what is stale.

Only the agent's own entries are ever removed (routes with protocol PROTO, the VXLAN device
with the agent's alias and the entries on it). One pass, `sync()`, runs at start, after
every Node/ConfigMap event and at every resync; it is idempotent, so a restarted agent
simply converges on the same state.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Tuple

from pycni.installer.log import Log
from pycni.installer.network import NetworkConfig, vxlan_mtu

from .desired import Desired, compute, underlay_ip
from .health import AgentStatus
from .kernel import Kernel, KernelError, RouteState, VxlanLink
from .masq import NatPolicy, ruleset
from .nodes import NodeInfo


def _fields(entry) -> object:
    return dict(entry.__dict__) if hasattr(entry, "__dict__") else entry


class SyncError(Exception):
    """The pass could not even compute the desired state (e.g. our own Node is unknown)."""


class Reconciler:
    def __init__(self, node_name: str, kernel: Kernel, nat: Optional[NatPolicy], annotator, status: AgentStatus,
                 log: Log) -> None:
        self.node_name = node_name
        self.kernel = kernel
        self.nat = nat
        self.annotator = annotator  # VtepAnnotator or None (no API: tests of the kernel side)
        self.status = status
        self.log = log
        self._reported: Dict[str, str] = {}
        self._conflicts: Dict[str, int] = {}
        self._devices: set = set()  # VXLAN device names this process used (a renamed device is removed)
        self.errors: List[Tuple[str, str]] = []

    # ---- helpers ---------------------------------------------------------------------------
    def _error(self, stage: str, exc: Exception) -> None:
        self.errors.append((stage, str(exc)))
        self.status.count("sync_errors", stage)
        self.log.error("sync_error", stage=stage, why=str(exc))

    def _changed(self, kind: str, action: str, **fields) -> None:
        self.status.count("changes", (kind, action))
        self.log.info(f"{kind}_{action}", **fields)

    def _report(self, desired: Desired) -> None:
        """Log unreachable / pending nodes when that set changes (not at every pass)."""
        now = {n: f"unreachable: {r}" for n, r in desired.unreachable.items()}
        now.update({n: f"pending: {r}" for n, r in desired.pending.items() if n not in now})
        for name, why in sorted(now.items()):
            if self._reported.get(name) != why:
                (self.log.warning if why.startswith("unreachable") else self.log.info)(
                    "node_unreachable" if why.startswith("unreachable") else "node_pending",
                    node=name, why=why.split(": ", 1)[1])
        for name in sorted(set(self._reported) - set(now)):
            self.log.info("node_reachable", node=name)
        self._reported = now

    # ---- the VXLAN device ------------------------------------------------------------------
    def _vxlan(self, config: NetworkConfig, local: NodeInfo) -> Tuple[VxlanLink, int]:
        vx = config.vxlan
        family = 4 if underlay_ip(local, 4) else 6
        local_ip = underlay_ip(local, family)
        if local_ip is None:
            raise SyncError(f"Node {local.name} has no InternalIP: no VXLAN underlay address")
        owner = self.kernel.address_owner(local_ip)
        if owner is None:
            raise SyncError(f"InternalIP {local_ip} of Node {local.name} is on no interface of this host")
        underlay_index, underlay_name, underlay_mtu = owner
        mtu = vx.mtu or vxlan_mtu(underlay_mtu, family)
        link = self.kernel.vxlan_link(vx.device)
        if link is not None and not link.ours:
            raise SyncError(f"a link named {vx.device} exists and is not the agent's (kind {link.kind or '?'}, "
                            f"alias {link.alias!r}): choose another vxlan.device")
        if link is not None and (link.vni, link.port, link.local, link.link) != (vx.vni, vx.port, local_ip,
                                                                                 underlay_index):
            self.log.info("vxlan_recreate", device=vx.device, why="VNI, port, local address or underlay changed")
            self.kernel.delete_link(link.index)
            link = None
        if link is None:
            self.kernel.create_vxlan(vx.device, vx.vni, vx.port, local_ip, underlay_index, mtu)
            self._changed("vxlan_device", "added", device=vx.device, vni=vx.vni, port=vx.port, local=local_ip,
                          underlay=underlay_name, mtu=mtu)
        elif link.mtu != mtu or not link.up:
            self.kernel.set_mtu_up(link.index, mtu)
        self._devices.add(vx.device)
        link = self.kernel.vxlan_link(vx.device)
        assert link is not None
        return link, family

    def _remove_devices(self, keep: Optional[str], config: NetworkConfig) -> None:
        for name in sorted(self._devices | {config.vxlan.device}):
            if name == keep:
                continue
            link = self.kernel.vxlan_link(name)
            if link is not None and link.ours:
                self.kernel.delete_link(link.index)
                self._changed("vxlan_device", "removed", device=name)
            self._devices.discard(name)

    def _converge_set(self, kind: str, current: set, desired: set, apply) -> None:
        """Remove what is no longer desired, then add what is missing; one failure stops no other."""
        for entries, present, what in ((current - desired, False, "removed"), (desired - current, True, "added")):
            for entry in sorted(entries, key=str):
                try:
                    apply(entry, present)
                    self._changed(kind, what, entry=_fields(entry))
                except KernelError as exc:
                    self._error(kind, exc)

    # ---- routes ----------------------------------------------------------------------------
    def _routes(self, desired: Desired) -> Tuple[int, int]:
        """(routes we hold afterwards, prefixes held by someone else)."""
        owned, foreign = self.kernel.main_routes()
        indexes = {link.get("ifname"): link["index"] for link in self.kernel.ipr.get_links()}
        by_dst: Dict[str, List[RouteState]] = defaultdict(list)
        for route in owned:
            by_dst[route.dst].append(route)
        conflicts = 0
        held = 0
        for dst, spec in desired.routes.items():
            if dst in foreign:
                conflicts += 1
                if self._conflicts.get(dst) != foreign[dst]:
                    self.log.warning("route_conflict", dst=dst, proto=foreign[dst],
                                     why="another route for this prefix exists: left alone, not routed by pycni")
                self._conflicts[dst] = foreign[dst]
                continue
            oif = indexes.get(spec.ifname)
            if oif is None:
                self._error("routes", KernelError(f"route {dst}: no interface {spec.ifname}"))
                continue
            mine = by_dst.pop(dst, [])
            good = [r for r in mine if r.matches(spec, oif)]
            for route in mine:
                if good and route is good[0]:
                    continue
                if not good and route.priority == 0:
                    continue  # replaced below, in one step (no moment without a route)
                self._delete(route)
            if not good:
                try:
                    self.kernel.replace_route(spec, oif)
                    self._changed("route", "set", dst=dst, via=spec.gateway, dev=spec.ifname, onlink=spec.onlink)
                except KernelError as exc:
                    self._error("routes", exc)
                    continue
            held += 1
        for routes in by_dst.values():
            for route in routes:
                self._delete(route)
        return held, conflicts

    def _delete(self, route: RouteState) -> None:
        try:
            self.kernel.delete_route(route)
            self._changed("route", "removed", dst=route.dst, via=route.gateway, priority=route.priority)
        except KernelError as exc:
            self._error("routes", exc)

    # ---- one pass --------------------------------------------------------------------------
    def sync(self, config: NetworkConfig, nodes: Mapping[str, NodeInfo], trigger: str) -> bool:
        """Converge once; True when everything we wanted to program is programmed."""
        started = time.monotonic()
        self.errors = []
        self.status.count("syncs", trigger)
        local = nodes.get(self.node_name)
        try:
            if local is None:
                raise SyncError(f"own Node {self.node_name} not found in the API")
            link, family = None, 4
            if config.backend == "vxlan":
                link, family = self._vxlan(config, local)
                if self.annotator is not None:
                    self.annotator.publish(link.mac, local.vtep_mac)
            elif self.annotator is not None:
                self.annotator.publish(None, local.vtep_mac)
        except Exception as exc:  # SyncError, KernelError, API errors
            self._error("setup", exc)
            self.status.update(reason=str(exc), last_duration=time.monotonic() - started)
            return False
        device = config.vxlan.device
        desired = compute(self.node_name, nodes, config.backend,
                          self.kernel.subnets(exclude={device}), device, family)
        self._report(desired)
        fdb = neigh = 0
        if link is not None:
            self._converge_set("vtep_address", self.kernel.addresses(link.index), set(desired.vtep_addresses),
                               lambda cidr, add: self.kernel.set_address(link.index, cidr, add))
            self._converge_set("neighbour", self.kernel.neighbours(link.index), desired.neighbours,
                               lambda e, add: self.kernel.set_neighbour(link.index, e, add))
            self._converge_set("fdb", self.kernel.fdb(link.index), desired.fdb,
                               lambda e, add: self.kernel.set_fdb(link.index, e, add))
            fdb, neigh = len(desired.fdb), len(desired.neighbours)
        routes, conflicts = self._routes(desired)
        try:
            self._remove_devices(device if link is not None else None, config)
        except KernelError as exc:
            self._error("vxlan_device", exc)
        if self.nat is not None:
            cluster = list(config.cluster_cidrs or desired.cluster_cidrs)
            try:
                if self.nat.apply(ruleset(cluster, local.pod_cidrs, config.masquerade), force=trigger == "resync"):
                    self.log.debug("nat_policy_applied", cluster_cidrs=cluster)
            except Exception as exc:
                self._error("nat", exc)
        ok = not self.errors
        fields = dict(backend=config.backend, routes=routes, fdb=fdb, neighbours=neigh, nodes=len(nodes),
                      unreachable=dict(desired.unreachable), pending=dict(desired.pending), conflicts=conflicts,
                      last_duration=time.monotonic() - started)
        if ok:
            fields.update(synced_once=True, last_success=time.time(), reason="ok")
        else:
            fields.update(reason="; ".join(f"{s}: {m}" for s, m in self.errors[:3]))
        self.status.update(**fields)
        return ok
