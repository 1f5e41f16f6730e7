"""pycni-dns: a chained plugin that gives a network's containers a DNS server knowing their names.

Config keys (besides the standard ones):
  domainName       the network's DNS domain (default "dns.pycni", as dnsname's "dns.podman")
  upstreams        servers for names outside the domain: "ip", "ip:port", "[ip6]:port"
                   (default: the nameservers of `resolvConf`, minus our own listen addresses)
  resolvConf       where default upstreams come from (default /etc/resolv.conf)
  listenAddresses  where the server listens (default: the gateway addresses in prevResult,
                   i.e. the addresses an isGateway bridge holds)
  port             the server's port (default 53; other ports are for tests)
  ttl              TTL of the answers, seconds (default 60)
  stateDir         where records live (default /run/pycni/dns; tmpfs, so reboots start clean)
  serverProcesses  processes answering UDP on the shared port (SO_REUSEPORT; default: 2 from
                   4 CPUs up, else 1; at most 16); read when the network's server starts

Names registered for an attachment: CNI_ARGS K8S_POD_NAME (podman: the container name),
`<pod>.<namespace>` when K8S_POD_NAMESPACE is set, and runtimeConfig.aliases (a list,
or podman's map keyed by network name). Each is served under the domain only; who
answers for a name claimed twice is the authority model of records.py (docs/dns.md).
"""
from __future__ import annotations

import ipaddress
from pycni.plugins.core.record import FrozenRecord

from pycni.plugins.meta.dns.records import (DEFAULT_STATE_DIR, MAX_SERVER_PROCESSES, Entry, NetworkStore,
                                            dns_name_problem, normalize_name, parse_hostport)
from pycni.plugins.core.errors import INVALID_CONFIG, NOT_AVAILABLE, UNKNOWN_CONTAINER, CNIError
from pycni.plugins.core.plugin import Context, Plugin
from pycni.plugins.core.result import Result

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import List, Optional, Tuple

    from pycni.plugins.meta.dns.records import Records

DEFAULT_DOMAIN = "dns.pycni"
DEFAULT_TTL = 60
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
PROBE_NAME = "_pycni-probe"


class DnsConfig(FrozenRecord):
    __slots__ = ("domain", "upstreams", "resolv_conf", "listen", "port", "ttl", "state_dir", "processes")
    domain: str
    upstreams: Optional[List[str]]  # None: from resolv.conf at ADD
    resolv_conf: str
    listen: Optional[List[str]]  # None: gateways of prevResult
    port: int
    ttl: int
    state_dir: str
    processes: int  # 0: the server's default


def _addresses(key: str, values: List[str], allow_port: bool) -> List[str]:
    out = []
    for value in values:
        host = value
        if allow_port:
            try:
                host, port = parse_hostport(value)
                if not 0 < port < 65536:
                    raise ValueError
            except ValueError:
                raise CNIError(INVALID_CONFIG, f"{key}: invalid address {value!r}") from None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise CNIError(INVALID_CONFIG, f"{key}: invalid IP address {value!r}") from None
        out.append(value)
    return out


def _str_list(conf, key: str) -> Optional[List[str]]:
    value = conf.get(key, list, None)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise CNIError(INVALID_CONFIG, f"{key}: expected a list of strings, got {value!r}")
    return value


def resolv_conf_nameservers(path: str) -> List[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1].split("%")[0])
    return out


class DnsPlugin(Plugin):
    name = "pycni-dns"
    delegates_ipam = False

    def warm_up(self) -> None:
        """For a warm server process: import what the verbs import lazily."""
        from pycni.plugins.meta.dns import daemon as dns_daemon  # noqa: F401

    def load_config(self, conf) -> DnsConfig:
        domain = conf.get("domainName", str, DEFAULT_DOMAIN).strip().lower().rstrip(".")
        problem = dns_name_problem(domain)
        if problem:
            raise CNIError(INVALID_CONFIG, f"domainName: {domain!r} {problem}")
        upstreams = _str_list(conf, "upstreams")
        if upstreams is not None:
            _addresses("upstreams", upstreams, allow_port=True)
        listen = _str_list(conf, "listenAddresses")
        if listen is not None:
            _addresses("listenAddresses", listen, allow_port=False)
            listen = [str(ipaddress.ip_address(a)) for a in listen]
        port = conf.get("port", int, 53)
        if not 0 < port < 65536:
            raise CNIError(INVALID_CONFIG, f"port: must be 1-65535, got {port}")
        ttl = conf.get("ttl", int, DEFAULT_TTL)
        if not 0 <= ttl <= 2**31 - 1:
            raise CNIError(INVALID_CONFIG, f"ttl: must be 0 or more seconds, got {ttl}")
        state_dir = conf.get("stateDir", str, DEFAULT_STATE_DIR)
        resolv_conf = conf.get("resolvConf", str, DEFAULT_RESOLV_CONF)
        processes = conf.get("serverProcesses", int, 0)
        if not 0 <= processes <= MAX_SERVER_PROCESSES:
            raise CNIError(INVALID_CONFIG, f"serverProcesses: must be 1-{MAX_SERVER_PROCESSES} "
                           f"(0: the default), got {processes}")
        return DnsConfig(domain, upstreams, resolv_conf, listen, port, ttl, state_dir, processes)

    # --- helpers -------------------------------------------------------------------------
    @staticmethod
    def _store(ctx: Context) -> NetworkStore:
        return NetworkStore(ctx.config.state_dir, ctx.conf.name)

    @staticmethod
    def _prev(ctx: Context) -> Result:
        if ctx.conf.prev_result is None:
            raise CNIError(INVALID_CONFIG, "pycni-dns is a chained plugin: prevResult is required "
                           "(put it after pycni-bridge in a conflist)")
        return ctx.conf.prev_result

    @staticmethod
    def _container_ips(prev: Result) -> List[str]:
        """Addresses on the container's interfaces (those with a sandbox), else all of them."""
        sandboxed = {i for i, iface in enumerate(prev.interfaces) if iface.sandbox}
        ips = [ip for ip in prev.ips if ip.interface is None or not sandboxed or ip.interface in sandboxed]
        return [str(ip.address.ip) for ip in ips]

    @staticmethod
    def _listen(config: DnsConfig, prev: Result) -> List[str]:
        if config.listen is not None:
            return list(config.listen)
        out: List[str] = []
        for ip in prev.ips:
            if ip.gateway is not None and str(ip.gateway) not in out:
                out.append(str(ip.gateway))
        return out

    @staticmethod
    def _names(ctx: Context) -> Tuple[List[str], List[str]]:
        """(every name this attachment claims, the namespace-qualified ones among them).

        A name the server cannot serve (not a DNS name) is skipped and logged, except an
        alias, which the runtime's config asked for explicitly: that is a config error.
        With a namespace, a pod name holding a dot is only registered qualified: bare, it
        would read as another namespace's `<pod>.<namespace>`.
        """
        domain = ctx.config.domain
        names: List[str] = []
        qualified: List[str] = []

        def add(name: str, strict: bool, is_qualified: bool = False) -> None:
            name = normalize_name(name, domain)
            problem = dns_name_problem(name)
            if problem:
                if strict:
                    raise CNIError(INVALID_CONFIG, f"runtimeConfig.aliases: name {name!r} {problem}")
                ctx.log.event("dns_name_skipped", dns_name=name, reason=problem)
                return
            if name not in names:
                names.append(name)
            if is_qualified and name not in qualified:
                qualified.append(name)

        pod, namespace = ctx.inv.args.pod_name, ctx.inv.args.pod_namespace
        if pod:
            if namespace and "." in pod:
                ctx.log.event("dns_name_skipped", dns_name=pod,
                              reason="a pod name with a dot is served only as <pod>.<namespace>")
            else:
                add(pod, strict=False)
            if namespace:
                add(f"{pod}.{namespace}", strict=False, is_qualified=True)
        aliases = ctx.conf.runtime_config.aliases
        if isinstance(aliases, dict):  # podman: {network name: [names]}
            aliases = aliases.get(ctx.conf.name)
        if aliases is not None:
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise CNIError(INVALID_CONFIG, f"runtimeConfig.aliases: expected a list of names, got {aliases!r}")
            for alias in aliases:
                add(alias, strict=True)
        return names, qualified

    @staticmethod
    def _subnets(known: List[str], prev: Result) -> List[str]:
        """The network's subnets (its clients), the ones of this attachment added."""
        out = [str(s) for s in known]
        for ip in prev.ips:
            net = str(ip.address.network)
            if net not in out:
                out.append(net)
        return out

    @staticmethod
    def _log_conflicts(ctx: Context, records: Records, entry: Entry) -> None:
        for name, owner, others in records.conflicts(entry):
            ctx.log.event("dns_name_conflict", dns_name=name, owner=owner.container_id,
                          qualified=name in owner.qualified, others=[e.container_id for e in others])

    def _upstreams(self, config: DnsConfig, listen: List[str]) -> List[str]:
        if config.upstreams is not None:
            return list(config.upstreams)
        own = set(listen)
        return [ns for ns in resolv_conf_nameservers(config.resolv_conf) if ns not in own]

    # --- verbs ---------------------------------------------------------------------------
    def add(self, ctx: Context) -> Result:
        from pycni.plugins.meta.dns import daemon as dns_daemon

        prev = self._prev(ctx)
        config: DnsConfig = ctx.config
        listen = self._listen(config, prev)
        if not listen:
            raise CNIError(INVALID_CONFIG, "listenAddresses: none given and prevResult has no gateway "
                           "address (use a bridge with isGateway, or set listenAddresses)")
        names, qualified = self._names(ctx)
        entry = Entry(ctx.inv.container_id, ctx.inv.ifname, names, self._container_ips(prev), qualified=qualified)
        store = self._store(ctx)
        with store.locked():
            records = store.load()
            running = dns_daemon.server_pid(store)
            subnets = records.server.get("subnets") or []
            if running is None or not records.server:
                records.server = {"domain": config.domain, "ttl": config.ttl, "listen": listen,
                                  "port": config.port, "upstreams": self._upstreams(config, listen),
                                  "processes": config.processes}
            else:  # a running server keeps its sockets; domain, ttl and upstreams follow the config
                records.server.update({"domain": config.domain, "ttl": config.ttl,
                                       "upstreams": self._upstreams(config, records.server.get("listen", listen))})
            records.server["subnets"] = self._subnets(subnets, prev)
            records.put(entry)
            self._log_conflicts(ctx, records, entry)
            store.save(records)
            if running is None:
                try:
                    running = dns_daemon.start(store)
                except CNIError:
                    records.remove(entry.container_id, entry.ifname)
                    store.save(records)
                    raise
            listen = list(records.server.get("listen", listen))
        ctx.log.event("dns_registered", names=entry.names, ips=entry.ips, server_pid=running)
        result = Result(interfaces=prev.interfaces, ips=prev.ips, routes=prev.routes, dns=prev.dns)
        result.dns.nameservers = listen + [n for n in prev.dns.nameservers if n not in listen]
        result.dns.search = [config.domain] + [s for s in prev.dns.search if s != config.domain]
        return result

    def delete(self, ctx: Context) -> None:
        store = self._store(ctx)
        if not store.exists():
            return
        self._drop(ctx, store, lambda records: records.remove(ctx.inv.container_id, ctx.inv.ifname))

    def gc(self, ctx: Context) -> None:
        store = self._store(ctx)
        if not store.exists():
            return
        keep = [(a.container_id, a.ifname) for a in ctx.conf.valid_attachments]

        def drop(records) -> bool:
            dropped = records.keep_only(keep)
            if dropped:
                ctx.log.event("dns_gc", dropped=[e.container_id for e in dropped])
            return bool(dropped)

        self._drop(ctx, store, drop)

    @staticmethod
    def _drop(ctx: Context, store: NetworkStore, change) -> None:
        """Apply `change` to the records; when none are left, stop the server."""
        from pycni.plugins.meta.dns import daemon as dns_daemon

        with store.locked():
            records = store.load()
            changed = change(records)
            if changed:
                store.save(records)
            if not records.entries:
                dns_daemon.stop(store)
                store.save(records)  # removes a leftover records file

    def _server_address(self, ctx: Context, store: NetworkStore) -> Tuple[str, int, dict]:
        records = store.load()
        server = records.server
        listen = server.get("listen") or []
        return (listen[0] if listen else ""), int(server.get("port", ctx.config.port)), server

    def check(self, ctx: Context) -> None:
        from pycni.plugins.meta.dns import daemon as dns_daemon
        from dnslib import QTYPE

        self._prev(ctx)
        store = self._store(ctx)
        records = store.load()
        entry = records.find(ctx.inv.container_id, ctx.inv.ifname)
        if entry is None:
            raise CNIError(UNKNOWN_CONTAINER, f"pycni-dns: no records for container {ctx.inv.container_id} "
                           f"on network {ctx.conf.name!r}")
        host, port, server = self._server_address(ctx, store)
        if dns_daemon.server_pid(store) is None:
            raise CNIError(NOT_AVAILABLE, f"pycni-dns: no server running for network {ctx.conf.name!r}")
        domain = server.get("domain", ctx.config.domain)
        name = f"{entry.names[0]}.{domain}." if entry.names else f"{PROBE_NAME}.{domain}."
        reply = dns_daemon.query(host, port, name)
        if reply is None:
            raise CNIError(NOT_AVAILABLE, f"pycni-dns: server for network {ctx.conf.name!r} at {host} "
                           f"port {port} does not answer")
        if entry.names:
            got = {str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A}
            want = {ip for ip in entry.ips if ":" not in ip}
            if got != want:
                raise CNIError(NOT_AVAILABLE, f"pycni-dns: {name} resolves to {sorted(got)}, expected {sorted(want)}")

    def status(self, ctx: Context) -> None:
        from pycni.plugins.meta.dns import daemon as dns_daemon

        store = self._store(ctx)
        if not store.exists() or not store.load().entries:
            return  # nothing registered yet: the first ADD starts the server
        host, port, server = self._server_address(ctx, store)
        domain = server.get("domain", ctx.config.domain)
        if dns_daemon.server_pid(store) is None or dns_daemon.query(host, port, f"{PROBE_NAME}.{domain}.") is None:
            raise CNIError(NOT_AVAILABLE, f"pycni-dns: the server for network {ctx.conf.name!r} "
                           f"({host} port {port}) is not answering")


PLUGIN = DnsPlugin()
