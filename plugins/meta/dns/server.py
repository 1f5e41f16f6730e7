"""The pycni-dns server for one network: `main([netdir, ready_fd])`, started by dns_daemon.

Serves UDP and TCP on the listen addresses in records.json: A, AAAA and PTR for the
registered names (relative and under the domain), NXDOMAIN (authoritative, with an
SOA) for other names inside the domain, and forwards everything else to the upstreams
(relayed as-is except that the AA bit is cleared). Malformed queries get FORMERR when
a header can be read, otherwise they are dropped; nothing a client sends ends the loop.

Record changes are picked up by a stat() of records.json before each answer (cheap):
the file is replaced by rename, so the table swaps from one complete snapshot to the
next, with no window where an existing name is unknown. When the network has no
entries left the server exits (after taking the store's lock, so it never races an ADD).
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

from dnslib import AAAA, DNSRecord, PTR, QTYPE, RCODE, RR, SOA, A, DNSLabel

from pycni.plugins.meta.dns.records import LOCK, PIDFILE, RECORDS, Table, parse_hostport, read_records

UDP_MAX = 512
EDNS_MAX = 1232
FORWARD_TIMEOUT = 2.0
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CLIENTS = 64
MAX_PENDING_FORWARDS = 512
REPLY_CACHE_SIZE = 4096
HOUSEKEEPING_SECONDS = 0.5
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


class Settings:
    """The server section of records.json, as the server uses it."""

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.domain = str(raw.get("domain") or "dns.pycni").lower().strip(".")
        self.ttl = int(raw.get("ttl", 60))
        self.listen = [str(a) for a in raw.get("listen") or []]
        self.port = int(raw.get("port", 53))
        self.upstreams = [parse_hostport(str(u)) for u in raw.get("upstreams") or []]


class Resolver:
    """Turns a query into a reply from the current table, or says it must be forwarded."""

    def __init__(self, records_path: str) -> None:
        self.records_path = records_path
        self._stamp: Optional[Tuple[int, int, int, int]] = None
        self._reload_lock = threading.Lock()
        self.table = Table({}, {}, 0)
        self.settings = Settings({})
        # Local answers by query bytes after the ID; belongs to one table snapshot (swapped with it).
        self.replies: Dict[Tuple[bytes, bool], bytes] = {}
        self.refresh()

    def _current_stamp(self) -> Optional[Tuple[int, int, int, int]]:
        try:
            st = os.stat(self.records_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)

    def refresh(self) -> None:
        """Swap in the records file's content if it changed since the last look."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        with self._reload_lock:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return
            records = read_records(self.records_path)
            settings = Settings(records.server) if records.server else self.settings
            table = Table.build(records)
            self.settings, self.table, self.replies, self._stamp = settings, table, {}, stamp

    def resolve(self, data: bytes, udp: bool) -> Tuple[Optional[bytes], bool]:
        """(reply bytes or None, True when the query is to be forwarded instead)."""
        data = bytes(data)
        self.refresh()
        replies = self.replies
        cached = replies.get((data[2:], udp))
        if cached is not None:
            return data[:2] + cached, False
        reply, forward = self._resolve(data, udp)
        if reply is not None and not forward and len(data) >= 12:
            if len(replies) >= REPLY_CACHE_SIZE:
                replies.clear()
            replies[(data[2:], udp)] = reply[2:]
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
        if len(request.questions) != 1:
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
            return None, True
        if qname == domain or qname.endswith("." + domain):
            relative = qname[: -len(domain) - 1] if qname != domain else ""
            inside = True
        else:
            relative, inside = qname, False
        addrs = table.names.get(relative) if relative else None
        if addrs is None:
            if not inside:
                return None, True
            reply = request.reply(ra=1, aa=1)
            if not relative and question.qtype in (QTYPE.SOA, QTYPE.ANY):
                reply.add_answer(self._soa(settings))
                return self._pack(request, reply, RCODE.NOERROR, udp), False
            reply.add_auth(self._soa(settings))
            return self._pack(request, reply, RCODE.NOERROR if not relative else RCODE.NXDOMAIN, udp), False
        reply = request.reply(ra=1, aa=1)
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


class Forwarder:
    """Relays a query to the upstreams in order; returns the upstream's reply (AA cleared)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def forward(self, data: bytes, tcp: bool) -> Optional[bytes]:
        qid = data[:2]
        for host, port in self.resolver.settings.upstreams:
            reply = None
            try:
                reply = self._udp(host, port, data)
                if reply is not None and tcp and reply[2] & 0x02:  # truncated: a TCP client gets it whole
                    reply = self._tcp(host, port, data)
            except (OSError, ValueError):
                reply = None
            if reply is not None and len(reply) >= 12:
                return qid + bytes([reply[2] & ~0x04]) + reply[3:]
        return servfail(data)

    @staticmethod
    def _udp(host: str, port: int, data: bytes) -> Optional[bytes]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        new_id = random.getrandbits(16)
        query = struct.pack("!H", new_id) + data[2:]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            sock.sendall(query)
            deadline = time.monotonic() + FORWARD_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                try:
                    reply = sock.recv(65535)
                except socket.timeout:
                    return None
                if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == new_id and reply[2] & 0x80:
                    return reply

    @staticmethod
    def _tcp(host: str, port: int, data: bytes) -> Optional[bytes]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(FORWARD_TIMEOUT)
            sock.connect((host, port))
            sock.sendall(struct.pack("!H", len(data)) + data)
            length = struct.unpack("!H", _recv_exact(sock, 2))[0]
            return _recv_exact(sock, length)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _bind(family: int, kind: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:  # not for UDP: there it would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        self.forwarder = Forwarder(self.resolver)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fwd")
        self.pending = threading.BoundedSemaphore(MAX_PENDING_FORWARDS)
        self.tcp_slots = threading.BoundedSemaphore(MAX_TCP_CLIENTS)
        self.selector = selectors.DefaultSelector()
        self.sockets: List[socket.socket] = []

    def bind(self) -> None:
        settings = self.resolver.settings
        if not settings.listen:
            raise OSError("no listen addresses in records")
        for host in settings.listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            for kind, handler in ((socket.SOCK_DGRAM, self._on_udp), (socket.SOCK_STREAM, self._on_accept)):
                try:
                    sock = _bind(family, kind, host, settings.port)
                except OSError as exc:
                    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
                    raise OSError(f"cannot bind {proto} {host} port {settings.port}: {exc}") from None
                self.sockets.append(sock)
                self.selector.register(sock, selectors.EVENT_READ, handler)

    # --- UDP -------------------------------------------------------------------------------
    def _on_udp(self, sock: socket.socket) -> None:
        for _ in range(64):  # drain a batch, then let other sockets have a turn
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                reply, forward = self.resolver.resolve(data, udp=True)
                if forward:
                    self._forward_udp(sock, data, addr)
                elif reply is not None:
                    sock.sendto(reply, addr)
            except Exception:
                continue  # one bad packet never stops the server

    def _forward_udp(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        if not self.pending.acquire(blocking=False):
            return  # overloaded: drop, the client retries

        def job() -> None:
            try:
                reply = self.forwarder.forward(data, tcp=False)
                if reply is not None:
                    sock.sendto(reply, addr)
            except Exception:
                pass
            finally:
                self.pending.release()

        self.pool.submit(job)

    # --- TCP -------------------------------------------------------------------------------
    def _on_accept(self, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        if not self.tcp_slots.acquire(blocking=False):
            conn.close()
            return
        threading.Thread(target=self._tcp_client, args=(conn,), daemon=True).start()

    def _tcp_client(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(TCP_IDLE_TIMEOUT)
            while True:
                length = struct.unpack("!H", _recv_exact(conn, 2))[0]
                data = _recv_exact(conn, length)
                reply, forward = self.resolver.resolve(data, udp=False)
                if forward:
                    reply = self.forwarder.forward(data, tcp=True)
                if reply is None:
                    return  # nothing sensible to say: drop the connection
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except Exception:
            pass
        finally:
            conn.close()
            self.tcp_slots.release()

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
        next_check = 0.0
        while True:
            try:
                for key, _ in self.selector.select(timeout=HOUSEKEEPING_SECONDS):
                    key.data(key.fileobj)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + HOUSEKEEPING_SECONDS
                    if self._should_exit():
                        return
            except Exception:
                time.sleep(0.01)  # never die on a surprise; avoid a hot loop if it repeats


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
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
