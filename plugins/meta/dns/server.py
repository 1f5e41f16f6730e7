"""The pycni-dns server for one network: `main([netdir, ready_fd])`, started by dns_daemon.

Serves UDP and TCP on the listen addresses in records.json, to clients inside the
network's subnets and the node itself only (others are dropped: see `Clients`).
Under the network's domain it answers A, AAAA and PTR from the registered names and
NXDOMAIN (authoritative, with an SOA) for the rest; PTR of the network's registered
addresses too. Everything else, including any name outside the domain however a pod
or alias is named, is forwarded to the upstreams (relayed as-is except that the ID is
restored and the AA bit cleared). Malformed queries get FORMERR when a header can be
read, otherwise they are dropped; nothing a client sends ends the loop.

Speed: the answer to a query depends only on its bytes after the ID, so answers are
kept per query (for the current table snapshot) and a repeated query costs a dict
lookup and an ID patch. Record changes are seen through the store's generation
counter, which the server maps into memory and compares per query (no syscall):
records.json is replaced by rename, so the table swaps from one complete snapshot to
the next, with no window where an existing name is unknown. Forwarding uses one
long-lived socket per upstream with an ID map (see `Forwarder`). When the network
has no entries left the server exits (after taking the store's lock, so it never
races an ADD).
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import mmap
import os
import random
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from dnslib import AAAA, DNSRecord, PTR, QTYPE, RCODE, RR, SOA, A, DNSLabel

from pycni.plugins.meta.dns.records import (
    GENERATION, GENERATION_SIZE, LOCK, MAX_SERVER_PROCESSES, PIDFILE, RECORDS, Table, parse_hostport, read_records,
)

UDP_MAX = 512
EDNS_MAX = 1232
RECV_MAX = 4096  # a bigger UDP query is no query of ours: it arrives cut and gets FORMERR
FORWARD_TIMEOUT = 2.0
TCP_CONNECTION_DEADLINE = 10.0  # a TCP client's whole connection, however it trickles
MAX_TCP_CLIENTS = 64
MAX_PENDING_FORWARDS = 1024
REPLY_CACHE_SIZE = 4096
CLIENT_CACHE_SIZE = 4096
HOUSEKEEPING_SECONDS = 0.5
BIND_RETRY_SECONDS = 2.0  # a previous server's processes may still be going away
PR_SET_PDEATHSIG = 1
FORWARD = b""  # in Resolver's answer caches: "forward this query" (no reply is empty)
IP_FREEBIND = 15
IPV6_FREEBIND = 78


def header_only_reply(data: bytes, rcode: int) -> Optional[bytes]:
    """A reply echoing only the ID, opcode and RD bit: for queries too broken to parse."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:  # a response, never answer it (no loops)
        return None
    out_flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | (rcode & 0xF)
    return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)


def servfail(data: bytes) -> Optional[bytes]:
    """SERVFAIL echoing the question (no upstream answered, or there is none)."""
    try:
        reply = DNSRecord.parse(data).reply(ra=1, aa=0)
        reply.header.rcode = RCODE.SERVFAIL
        reply.header.ad = 0
        return reply.pack()
    except Exception:
        return header_only_reply(data, RCODE.SERVFAIL)


def _reverse_to_ip(qname: str) -> Optional[str]:
    """'5.2.1.10.in-addr.arpa' -> '10.1.2.5' (and ip6.arpa nibbles), or None."""
    try:
        if qname.endswith(".in-addr.arpa"):
            parts = qname[: -len(".in-addr.arpa")].split(".")
            if len(parts) != 4:
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        if qname.endswith(".ip6.arpa"):
            nibbles = qname[: -len(".ip6.arpa")].split(".")
            if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
                return None
            return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
    except ValueError:
        return None
    return None


def _wire_name_ok(label: DNSLabel) -> bool:
    """RFC 1035 limits: labels of 1-63 octets, 255 octets in all (dnslib parses longer ones)."""
    parts = label.label
    return all(0 < len(p) <= 63 for p in parts) and sum(len(p) + 1 for p in parts) + 1 <= 255


class Settings:
    """The server section of records.json, as the server uses it."""

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.domain = str(raw.get("domain") or "dns.pycni").lower().strip(".")
        self.ttl = int(raw.get("ttl", 60))
        self.listen = [str(a) for a in raw.get("listen") or []]
        self.port = int(raw.get("port", 53))
        self.upstreams = [parse_hostport(str(u)) for u in raw.get("upstreams") or []]
        processes = int(raw.get("processes") or 0) or default_processes()
        self.processes = max(1, min(MAX_SERVER_PROCESSES, processes))
        self.subnets = []
        for text in raw.get("subnets") or []:
            try:
                self.subnets.append(ipaddress.ip_network(str(text), strict=False))
            except ValueError:
                continue


def default_processes() -> int:
    """Two processes from 4 CPUs up, else one. On 2 CPUs a second process gave no steady gain
    (bench/dns.py: max qps within run-to-run noise) and made forwarding slower (1.21-1.24x of
    dnsmasq's latency against 1.02-1.08x)."""
    return 2 if (os.cpu_count() or 1) >= 4 else 1


class Generation:
    """The store's change counter, mapped read-only: a change costs no syscall to notice."""

    def __init__(self, path: str) -> None:
        self.map: Optional[mmap.mmap] = None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                if os.fstat(fd).st_size < GENERATION_SIZE:
                    os.pwrite(fd, bytes(GENERATION_SIZE), 0)
                self.map = mmap.mmap(fd, GENERATION_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
        except (OSError, ValueError):
            self.map = None  # the periodic stat in housekeeping still sees changes

    def read(self) -> bytes:
        return self.map[:GENERATION_SIZE] if self.map is not None else b""


class Resolver:
    """Turns a query into a reply from the current table, or says it must be forwarded."""

    def __init__(self, records_path: str, generation: Optional[Generation] = None) -> None:
        self.records_path = records_path
        self.generation = generation or Generation(os.path.join(os.path.dirname(records_path), GENERATION))
        self.seen_generation = b"?"
        self._stamp: Optional[Tuple[int, int, int, int]] = None
        self._reload_lock = threading.Lock()
        self.table = Table({}, {}, 0)
        self.settings = Settings({})
        # Answers (or FORWARD) by query bytes after the ID, over UDP and over TCP (UDP ones may be
        # truncated); they belong to one table snapshot and are swapped with it.
        self.udp_replies: Dict[bytes, bytes] = {}
        self.tcp_replies: Dict[bytes, bytes] = {}
        self.on_swap: Optional[Callable[[], None]] = None  # called after a new table is in place
        self.refresh()

    def _current_stamp(self) -> Optional[Tuple[int, int, int, int]]:
        try:
            st = os.stat(self.records_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)

    def changed(self) -> bool:
        """Cheap: has a writer counted a change since the last refresh?"""
        return self.generation.read() != self.seen_generation

    def refresh(self) -> None:
        """Swap in the records file's content if it changed since the last look."""
        with self._reload_lock:
            self.seen_generation = self.generation.read()  # before reading: a later change is seen next time
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return
            records = read_records(self.records_path)
            settings = Settings(records.server) if records.server else self.settings
            table = Table.build(records)
            self.settings, self.table, self._stamp = settings, table, stamp
            self.udp_replies, self.tcp_replies = {}, {}
        if self.on_swap is not None:
            self.on_swap()

    def resolve(self, data: bytes, udp: bool) -> Tuple[Optional[bytes], bool]:
        """(reply bytes or None, True when the query is to be forwarded instead)."""
        data = bytes(data)
        if self.changed():
            self.refresh()
        replies = self.udp_replies if udp else self.tcp_replies
        key = data[2:]
        cached = replies.get(key)
        if cached is not None:
            return (None, True) if cached is FORWARD else (data[:2] + cached, False)
        try:
            reply, forward = self._resolve(data, udp)
        except Exception:  # a reply we cannot build is a failure of ours, never silence
            return header_only_reply(data, RCODE.SERVFAIL), False
        if (reply is not None or forward) and len(data) >= 12:
            if len(replies) >= REPLY_CACHE_SIZE:
                replies.clear()
            replies[key] = FORWARD if forward or reply is None else reply[2:]
        return reply, forward

    def _resolve(self, data: bytes, udp: bool) -> Tuple[Optional[bytes], bool]:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return header_only_reply(data, RCODE.FORMERR), False
        header = request.header
        if header.qr:
            return None, False
        if header.opcode != 0:
            return self._pack(request, request.reply(ra=1, aa=0), RCODE.NOTIMP, udp), False
        if len(request.questions) != 1 or not _wire_name_ok(request.questions[0].qname):
            return header_only_reply(data, RCODE.FORMERR), False
        question = request.questions[0]
        qname = str(question.qname).lower().rstrip(".")
        if question.qclass not in (1, 255):  # only IN (and ANY) is ours
            return None, True
        table, settings = self.table, self.settings
        domain = settings.domain
        if question.qtype == QTYPE.PTR:
            ip = _reverse_to_ip(qname)
            if ip is not None and ip in table.ptr:
                reply = request.reply(ra=1, aa=1)
                for name in table.ptr[ip]:
                    reply.add_answer(RR(question.qname, QTYPE.PTR, ttl=settings.ttl,
                                        rdata=PTR(DNSLabel(f"{name}.{domain}."))))
                return self._pack(request, reply, RCODE.NOERROR, udp), False
        if qname == domain:
            relative = ""
        elif qname.endswith("." + domain):
            relative = qname[: -len(domain) - 1]
        else:  # outside the domain nothing is ours, whatever a pod or an alias is called
            return None, True
        addrs = table.names.get(relative) if relative else None
        reply = request.reply(ra=1, aa=1)
        if addrs is None:
            if not relative and question.qtype in (QTYPE.SOA, QTYPE.ANY):
                reply.add_answer(self._soa(settings))
                return self._pack(request, reply, RCODE.NOERROR, udp), False
            reply.add_auth(self._soa(settings))
            return self._pack(request, reply, RCODE.NOERROR if not relative else RCODE.NXDOMAIN, udp), False
        qtype = question.qtype
        if qtype in (QTYPE.A, QTYPE.ANY):
            for ip in addrs[0]:
                reply.add_answer(RR(question.qname, QTYPE.A, ttl=settings.ttl, rdata=A(ip)))
        if qtype in (QTYPE.AAAA, QTYPE.ANY):
            for ip in addrs[1]:
                reply.add_answer(RR(question.qname, QTYPE.AAAA, ttl=settings.ttl, rdata=AAAA(ip)))
        if not reply.rr:
            reply.add_auth(self._soa(settings))  # NODATA
        return self._pack(request, reply, RCODE.NOERROR, udp), False

    @staticmethod
    def _soa(settings: Settings) -> RR:
        domain = settings.domain
        return RR(f"{domain}.", QTYPE.SOA, ttl=settings.ttl,
                  rdata=SOA(f"ns.{domain}.", f"hostmaster.{domain}.", (1, 3600, 600, 86400, settings.ttl)))

    @staticmethod
    def _pack(request: DNSRecord, reply: DNSRecord, rcode: int, udp: bool) -> bytes:
        reply.header.rcode = rcode
        reply.header.ad = 0  # we validate nothing
        data = reply.pack()
        if udp:
            limit = UDP_MAX
            for rr in request.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(UDP_MAX, min(int(rr.rclass), EDNS_MAX))
            if len(data) > limit:
                truncated = request.reply(ra=1, aa=reply.header.aa)
                truncated.header.tc = 1
                truncated.header.rcode = rcode
                data = truncated.pack()
        return data


class Clients:
    """Who may ask: addresses inside the network's subnets, and the node itself.

    The server listens on the bridge's address, which anything routed to the node can
    reach (other nodes, traffic through pycni-agent): without this it would be an open
    resolver. Outsiders are dropped, not answered REFUSED: a UDP source can be forged,
    and silence reflects nothing at a victim; a TCP outsider is closed at accept.
    "The node itself" is any address the kernel takes as local (bind() succeeds without
    FREEBIND); decisions are cached per source address.
    """

    def __init__(self) -> None:
        self.decisions: Dict[str, bool] = {}
        self.subnets: List[Any] = []

    def update(self, settings: Settings, table: Table) -> None:
        subnets = list(settings.subnets)
        for text in table.ptr:  # registered addresses count even if their subnet was not recorded
            subnets.append(ipaddress.ip_network(text))
        self.subnets = subnets
        self.decisions.clear()  # in place: the UDP loops hold this dict

    def allowed(self, host: str) -> bool:
        decision = self.decisions.get(host)
        if decision is None:
            decision = self._decide(host)
            if len(self.decisions) >= CLIENT_CACHE_SIZE:
                self.decisions.clear()
            self.decisions[host] = decision
        return decision

    def _decide(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if addr.is_loopback or any(addr in net for net in self.subnets):
            return True
        return _is_local_address(addr)


def _is_local_address(addr: Any) -> bool:
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(addr), 0))
        return True
    except OSError:
        return False


class Forwarder:
    """Relays queries to the upstreams over one long-lived UDP socket per upstream.

    Each forwarded query gets a fresh random ID on the upstream socket (mapped back to
    the client's); a reply is taken only from the upstream it was sent to, with a known
    ID and the same question. A query the first upstream does not answer in
    FORWARD_TIMEOUT goes to the next; after the last, the client gets SERVFAIL. Each
    upstream socket has a thread blocked in recv(), so a reply is relayed as soon as it
    arrives. (A TCP client that gets a truncated reply asks over TCP itself: see Server.)
    """

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.lock = threading.Lock()
        self.sockets: Dict[Tuple[str, int], socket.socket] = {}
        self.pending: "OrderedDict[Tuple[Tuple[str, int], int], list]" = OrderedDict()

    def _socket(self, upstream: Tuple[str, int]) -> socket.socket:
        sock = self.sockets.get(upstream)
        if sock is None:
            family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect(upstream)
            self.sockets[upstream] = sock
            threading.Thread(target=self._reply_loop, args=(sock, upstream), daemon=True).start()
        return sock

    def forward(self, data: bytes, tcp: bool, deliver: Callable[[Optional[bytes]], None]) -> None:
        """Send `data` upstream; `deliver(reply)` is called once (from the serving thread)."""
        self._send(data, tcp, deliver, 0)

    def _send(self, data: bytes, tcp: bool, deliver: Callable[[Optional[bytes]], None], index: int) -> None:
        upstreams = self.resolver.settings.upstreams
        while index < len(upstreams):
            upstream = upstreams[index]
            with self.lock:
                if len(self.pending) >= MAX_PENDING_FORWARDS:
                    deliver(None)  # overloaded: drop, the client retries
                    return
                try:
                    sock = self._socket(upstream)
                except OSError:
                    index += 1
                    continue
                for _ in range(16):
                    new_id = random.getrandbits(16)
                    if (upstream, new_id) not in self.pending:
                        break
                else:
                    deliver(None)
                    return
                self.pending[(upstream, new_id)] = [time.monotonic() + FORWARD_TIMEOUT, data, tcp, deliver, index]
            try:
                sock.send(struct.pack("!H", new_id) + data[2:])
                return
            except OSError:
                with self.lock:
                    self.pending.pop((upstream, new_id), None)
                index += 1
        deliver(servfail(data))

    def _reply_loop(self, sock: socket.socket, upstream: Tuple[str, int]) -> None:
        recv, pending, lock = sock.recv, self.pending, self.lock
        while self.sockets.get(upstream) is sock:
            try:
                reply = recv(65535)
            except OSError:  # an ICMP error (upstream down): its queries time out and move on
                continue
            if len(reply) < 12 or not reply[2] & 0x80:
                continue
            key = (upstream, (reply[0] << 8) | reply[1])
            with lock:
                job = pending.get(key)
                if job is None or not _same_question(job[1], reply):
                    continue
                del pending[key]
            data, deliver = job[1], job[3]
            try:
                deliver(data[:2] + bytes([reply[2] & ~0x04]) + reply[3:])
            except Exception:
                pass

    def expire(self) -> float:
        """Move on from upstreams that did not answer in time; seconds until the next deadline."""
        now = time.monotonic()
        late = []
        with self.lock:
            while self.pending:
                key, job = next(iter(self.pending.items()))
                if job[0] > now:
                    break
                del self.pending[key]
                late.append(job)
            nearest = next(iter(self.pending.values()))[0] - now if self.pending else HOUSEKEEPING_SECONDS
        for _, data, tcp, deliver, index in late:
            self._send(data, tcp, deliver, index + 1)
        return max(0.0, nearest)

    def close_stale(self) -> None:
        """Close sockets of upstreams no longer configured."""
        wanted = set(self.resolver.settings.upstreams)
        with self.lock:
            for upstream in [u for u in self.sockets if u not in wanted]:
                sock = self.sockets.pop(upstream)
                _shutdown(sock)  # wakes its thread, which sees it is no longer wanted
                sock.close()


def _same_question(query: bytes, reply: bytes) -> bool:
    """The reply's question section starts like the query's (counts and name, type, class)."""
    end = query.find(b"\x00", 12)
    if end < 0 or end + 5 > len(query):
        return False
    return reply[4:6] == query[4:6] and reply[12:end + 5].lower() == query[12:end + 5].lower()


def _tcp_exchange(upstream: Tuple[str, int], data: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(FORWARD_TIMEOUT)
        sock.connect(upstream)
        sock.sendall(struct.pack("!H", len(data)) + data)
        length = struct.unpack("!H", _recv_exact(sock, 2))[0]
        return _recv_exact(sock, length)


def _bind_udp_group(family: int, host: str, port: int, count: int) -> List[socket.socket]:
    """`count` UDP sockets sharing host:port (SO_REUSEPORT), one per server process.

    SO_REUSEPORT alone would let a second server (another network given the same
    address) silently share the port: an exclusive bind is tried first, so a port
    anyone holds, with or without SO_REUSEPORT, fails the start. EADDRINUSE is
    retried for a moment: the processes of a server that just stopped may still be
    closing their sockets.
    """
    deadline = time.monotonic() + BIND_RETRY_SECONDS
    while True:
        try:
            _bind(family, socket.SOCK_DGRAM, host, port).close()
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    group: List[socket.socket] = []
    try:
        for _ in range(count):
            group.append(_bind(family, socket.SOCK_DGRAM, host, port, reuseport=count > 1))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


def _recv_until(sock: socket.socket, n: int, deadline: float) -> bytes:
    """Exactly n bytes, all of them before `deadline` (a total, not a per-recv, limit)."""
    buf = b""
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("connection deadline passed")
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _shutdown(conn: socket.socket) -> None:
    """Wake the connection's thread out of recv(); it closes the socket itself."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _bind(family: int, kind: int, host: str, port: int, reuseport: bool = False) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:  # not for UDP: there it would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:  # the bridge's address may not be usable yet (IPv6 DAD): bind anyway
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        except OSError:
            pass
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


class Server:
    def __init__(self, netdir: str) -> None:
        self.netdir = netdir
        self.resolver = Resolver(os.path.join(netdir, RECORDS))
        self.selector = selectors.DefaultSelector()  # TCP accepts; UDP sockets have a thread each
        self.forwarder = Forwarder(self.resolver)
        self.clients = Clients()
        self.resolver.on_swap = self._sync_clients
        self._sync_clients()
        self.tcp_lock = threading.Lock()
        self.tcp_conns: "OrderedDict[socket.socket, float]" = OrderedDict()  # oldest first
        self.sockets: List[socket.socket] = []  # this process's: UDP (one per address) and TCP
        self.worker_sockets: List[List[socket.socket]] = []  # per worker process to start: its UDP sockets
        self.workers: List[int] = []

    def bind(self) -> None:
        settings = self.resolver.settings
        if not settings.listen:
            raise OSError("no listen addresses in records")
        self.worker_sockets = [[] for _ in range(settings.processes - 1)]
        for host in settings.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                group = _bind_udp_group(family, host, settings.port, settings.processes)
            except OSError as exc:
                raise OSError(f"cannot bind udp {host} port {settings.port}: {exc}") from None
            self.sockets.append(group[0])
            for worker, sock in zip(self.worker_sockets, group[1:]):
                worker.append(sock)
            try:
                sock = _bind(family, socket.SOCK_STREAM, host, settings.port)
            except OSError as exc:
                raise OSError(f"cannot bind tcp {host} port {settings.port}: {exc}") from None
            self.sockets.append(sock)
            self.selector.register(sock, selectors.EVENT_READ, self._on_accept)

    # --- worker processes (UDP only) ---------------------------------------------------------
    def start_workers(self) -> None:
        """Fork one process per extra UDP socket group: each answers what the kernel hashes to
        its socket (by client address and port). Call before any thread starts."""
        death_pipes: List[int] = []
        for socks in self.worker_sockets:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                for fd in death_pipes + [write_end]:
                    os.close(fd)
                for other in self.worker_sockets:  # later workers' sockets are theirs, not ours
                    if other is not socks:
                        for sock in other:
                            sock.close()
                self._worker(socks, read_end)  # never returns
            os.close(read_end)
            death_pipes.append(write_end)  # held open until this process is gone
            self.workers.append(pid)
            for sock in socks:
                sock.close()  # the worker's now: a copy here would keep it alive if the worker died
        self.worker_sockets = []

    def _worker(self, socks: List[socket.socket], death_fd: int) -> None:
        """A worker: UDP loops over its sockets until the parent server is gone."""
        try:
            _die_with_parent()
            for sock in self.sockets:
                sock.close()
            self.selector.close()
            self.sockets = socks
            for sock in socks:
                threading.Thread(target=self._udp_loop, args=(sock,), daemon=True).start()
            timeout = HOUSEKEEPING_SECONDS
            while not select.select([death_fd], [], [], timeout)[0]:
                timeout = min(HOUSEKEEPING_SECONDS, self.forwarder.expire())
        finally:
            os._exit(0)

    def stop_workers(self) -> None:
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        self.workers = []

    def _sync_clients(self) -> None:
        self.clients.update(self.resolver.settings, self.resolver.table)

    # --- UDP -------------------------------------------------------------------------------
    @staticmethod
    def _udp_deliverer(sendto: Callable[[bytes, Any], int], addr: Any) -> Callable[[Optional[bytes]], None]:
        """What a forwarded UDP query's upstream reply goes through: back to the client that asked."""
        def deliver(reply: Optional[bytes]) -> None:
            if reply is not None:
                sendto(reply, addr)
        return deliver

    def _udp_loop(self, sock: socket.socket) -> None:
        """The hot path, one thread per UDP socket blocked in recvfrom (two syscalls a query):
        a repeated query from a known client costs two dict lookups and an ID patch. Queries
        land in one preallocated buffer (no 4 KiB allocation per packet)."""
        resolver, clients = self.resolver, self.clients
        generation, decisions = resolver.generation, clients.decisions  # both updated in place
        sock.setblocking(True)
        recvfrom_into, sendto = sock.recvfrom_into, sock.sendto
        buf = bytearray(RECV_MAX)
        view = memoryview(buf)
        while True:
            try:
                n, addr = recvfrom_into(buf)
            except OSError:  # a transient error (ICMP from a previous send, ...)
                continue
            try:
                if generation.read() != resolver.seen_generation:
                    resolver.refresh()
                allowed = decisions.get(addr[0])
                if allowed is None:
                    allowed = clients.allowed(addr[0])
                if not allowed:
                    continue
                cached = resolver.udp_replies.get(bytes(view[2:n]))
                if cached:
                    sendto(buf[:2] + cached, addr)
                    continue
                data = bytes(view[:n])
                reply, forward = (None, True) if cached is FORWARD else resolver.resolve(data, udp=True)
                if forward:
                    self.forwarder.forward(data, False, self._udp_deliverer(sendto, addr))
                elif reply is not None:
                    sendto(reply, addr)
            except Exception:
                continue  # one bad packet never stops the server

    # --- TCP -------------------------------------------------------------------------------
    def _on_accept(self, sock: socket.socket) -> None:
        try:
            conn, addr = sock.accept()
        except OSError:
            return
        if not self.clients.allowed(addr[0]):
            conn.close()
            return
        with self.tcp_lock:
            if len(self.tcp_conns) >= MAX_TCP_CLIENTS:  # full: the oldest connection makes room
                oldest = next(iter(self.tcp_conns))
                del self.tcp_conns[oldest]
                _shutdown(oldest)
            self.tcp_conns[conn] = time.monotonic() + TCP_CONNECTION_DEADLINE
        threading.Thread(target=self._tcp_client, args=(conn,), daemon=True).start()

    def _tcp_client(self, conn: socket.socket) -> None:
        """One TCP client, until it closes, errs, or its connection deadline passes."""
        deadline = time.monotonic() + TCP_CONNECTION_DEADLINE
        try:
            conn.setblocking(True)
            while True:
                length = struct.unpack("!H", _recv_until(conn, 2, deadline))[0]
                data = _recv_until(conn, length, deadline)
                reply, forward = self.resolver.resolve(data, udp=False)
                if forward:
                    reply = self._forward_and_wait(data, deadline)
                if reply is None:
                    return  # nothing sensible to say: drop the connection
                conn.settimeout(max(0.001, deadline - time.monotonic()))
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except Exception:
            pass
        finally:
            with self.tcp_lock:
                self.tcp_conns.pop(conn, None)
            conn.close()

    def _forward_and_wait(self, data: bytes, deadline: float) -> Optional[bytes]:
        done = threading.Event()
        box: List[Optional[bytes]] = [None]

        def deliver(reply: Optional[bytes]) -> None:
            box[0] = reply
            done.set()

        self.forwarder.forward(data, True, deliver)
        done.wait(max(0.0, deadline - time.monotonic()))
        reply = box[0]
        if reply is not None and reply[2] & 0x02:  # truncated: a TCP client gets it whole, over TCP
            for upstream in self.resolver.settings.upstreams:
                try:
                    whole = _tcp_exchange(upstream, data)
                except (OSError, ValueError, struct.error):
                    continue
                return data[:2] + bytes([whole[2] & ~0x04]) + whole[3:]
        return reply

    # --- lifecycle -----------------------------------------------------------------------
    def _should_exit(self) -> bool:
        """No entries left: confirm under the store's lock (an ADD may be writing right now)."""
        self.resolver.refresh()
        if self.resolver.table.count:
            return False
        try:
            fd = os.open(os.path.join(self.netdir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return True  # the directory is gone
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.resolver.refresh()
        if self.resolver.table.count:
            os.close(fd)
            return False
        self._remove_pidfile()
        self._lock_fd = fd  # held until the process exits
        return True

    def _remove_pidfile(self) -> None:
        path = os.path.join(self.netdir, PIDFILE)
        try:
            with open(path) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(path)
        except OSError:
            pass

    def write_pidfile(self) -> None:
        path = os.path.join(self.netdir, PIDFILE)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)

    def serve(self) -> None:
        self.start_workers()
        for sock in self.sockets:
            if sock.type == socket.SOCK_DGRAM:
                threading.Thread(target=self._udp_loop, args=(sock,), daemon=True).start()
        next_check = 0.0
        timeout = HOUSEKEEPING_SECONDS
        while True:
            try:
                for key, _ in self.selector.select(timeout=timeout):
                    key.data(key.fileobj)
                timeout = min(HOUSEKEEPING_SECONDS, self.forwarder.expire())
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + HOUSEKEEPING_SECONDS
                    self._expire_tcp(now)
                    self.forwarder.close_stale()
                    if self._should_exit():
                        return
            except Exception:
                time.sleep(0.01)  # never die on a surprise; avoid a hot loop if it repeats

    def _expire_tcp(self, now: float) -> None:
        """Belt and braces for the per-connection deadline: wake threads past theirs."""
        with self.tcp_lock:
            late = [conn for conn, deadline in self.tcp_conns.items() if deadline + 1.0 < now]
        for conn in late:
            _shutdown(conn)


def main(argv: List[str]) -> int:
    """argv: [netdir, ready_fd]. Writes 'ready' or 'error: …' to ready_fd once bound."""
    netdir = argv[0]
    ready_fd = int(argv[1]) if len(argv) > 1 else -1

    def tell(message: str) -> None:
        if ready_fd >= 0:
            try:
                os.write(ready_fd, message.encode() + b"\n")
                os.close(ready_fd)
            except OSError:
                pass

    try:
        server = Server(netdir)
        server.bind()
        server.write_pidfile()
    except Exception as exc:
        tell(f"error: {exc}")
        return 1
    tell(f"ready {os.getpid()}")
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so that the workers are reaped first
    try:
        server.serve()
    finally:
        server.stop_workers()
    return 0


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _die_with_parent() -> None:
    """The kernel kills this process when its parent (the server) dies, even by SIGKILL."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the death pipe still ends it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
