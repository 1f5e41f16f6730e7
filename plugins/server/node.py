"""pycni-server: a warm node process that runs CNI requests handed over by the thin zipapps.

The plugin code is imported once here; requests run in workers forked from
this warm process, so a crash or a netns switch never touches the server. A few
workers are forked ahead of requests and wait with their memory already their
own, so a request starts at once. A worker serves requests one after another
(a fork per request cost more CPU than the request) as long as each left its
process as it found it (reuse.py); otherwise, and after its quota, it exits and
a fresh one is forked. Workers beyond the idle target retire after a while idle.

Requests come over the socket from the zipapps' Python thin client, or, without a Python
start, handed over by their sh prelude through a spool beside the socket (handoff.py).
The server itself accepts and reads every request (without blocking, each
connection against a total read deadline), so connections that trickle or
idle cost a descriptor, never a worker; only a whole request goes to a worker,
and a worker past the run deadline is killed (its client gets code 11).

    pycni-server [--socket /run/pycni/server.sock] [--max-workers 0 (4/CPU)] [--idle-workers 2]
                 [--requests-per-worker 100] [--read-timeout 5] [--run-timeout 20] [--no-handoff]
    pycni-server health [--socket ...]      (exit 0 when the server answers)
"""
from __future__ import annotations

import argparse
import array
import errno
import gc
import os
import resource
import select
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from collections import deque
from contextlib import suppress
from typing import Callable, Deque, Dict, List, Mapping, Optional, Tuple

from pycni.plugins.server import wire
from pycni.plugins.core.buildinfo import own_code_id
from pycni.plugins.core.dispatch import warm_up
from pycni.plugins.server import reuse
from pycni.plugins.server.handoff import Handoffs, Spool, handoff_supported
from pycni.plugins.server.memory import madvise_function, own_private_pages
from pycni.plugins.server.request import HEALTH_PLUGIN, client_gone, declines, serve_request

READ_TIMEOUT = 5.0  # seconds from accept to a whole request (clients send it at once)
RUN_TIMEOUT = 20.0  # seconds a request may run: below the pod's 30 s grace period, so a drain ends
MAX_READING = 512  # connections read at once; more wait in the socket's backlog
CHANNEL_TIMEOUT = 5.0  # handing a request to an idle worker
REQUESTS_PER_WORKER = 100  # then the worker exits and a fresh one is forked
IDLE_LINGER = 2.0  # seconds a worker beyond the idle target waits for another request, then retires
READY = b"R"  # worker -> server on its channel: answered, state unchanged, ready for another
# An idle worker copies its pages (~10 ms of CPU) only after idling this long: the youngest idle
# worker gets the next request, and back-to-back requests (ADD then DEL) then skip the copy.
POPULATE_AFTER = 0.05


def raise_descriptor_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: a burst holds a few descriptors per request in
    flight (socket or handoff), and some runtimes start containers with a soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # the kernel's nr_open default
    if soft != resource.RLIM_INFINITY and soft < target:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def check_sysctl_root() -> None:
    """Refuse to start when PYCNI_PROC_SYS names a dir without the host's net sysctls in it.

    Plugins skip sysctls that are not there (an interface without IPv6, say), so a
    missing mount would otherwise quietly leave every pod without its sysctls.
    """
    from pycni.plugins.kernel.netlink import PROC_SYS

    if not os.path.isfile(os.path.join(PROC_SYS, "net", "ipv4", "ip_forward")):
        raise SystemExit(f"pycni-server: no net sysctls under {PROC_SYS} (PYCNI_PROC_SYS): "
                         "mount the host's /proc/sys/net there")


class Reading:
    """A connection the server accepted and reads, up to its deadline."""

    __slots__ = ("conn", "data", "size", "deadline")

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn, self.data, self.size, self.deadline = conn, bytearray(), 0, deadline


class Worker:
    """A forked worker: idle (waiting on `channel` for a request) or running one for `conn`."""

    __slots__ = ("channel", "conn", "deadline", "idle_since")

    def __init__(self, channel: socket.socket, now: float) -> None:
        self.channel: Optional[socket.socket] = channel
        self.conn: Optional[socket.socket] = None
        self.deadline = float("inf")
        self.idle_since = now

    @property
    def idle(self) -> bool:
        return self.channel is not None and self.conn is None

    def done(self, now: float) -> None:
        """Its request is answered (or given up): the worker is idle again."""
        if self.conn is not None:
            self.conn.close()
        self.conn, self.deadline, self.idle_since = None, float("inf"), now


class Server:
    """The parent: accepts and reads requests, hands each whole one to a worker, enforces the
    deadlines, keeps `idle_workers` forked workers waiting, drains on SIGTERM.

    It never runs a request itself, and reading one is bounded byte-counting,
    so no input can crash it. With idle_workers=0 it forks workers only when requests come.
    """

    def __init__(self, socket_path: str, max_workers: int = 64, idle_workers: int = 2,
                 read_timeout: float = READ_TIMEOUT, run_timeout: float = RUN_TIMEOUT,
                 requests_per_worker: int = REQUESTS_PER_WORKER, handoff: bool = True) -> None:
        self.socket_path = socket_path
        self.max_workers = max(1, max_workers)
        self.idle_target = max(0, min(idle_workers, self.max_workers))
        self.requests_per_worker = max(1, requests_per_worker)
        self.handoff = handoff and handoff_supported()
        self.read_timeout = read_timeout
        self.run_timeout = run_timeout
        self.code_id = own_code_id()
        self.netns = wire.own_netns()  # requests from clients elsewhere are declined
        self.workers: Dict[int, Worker] = {}
        self.reading: Dict[int, Reading] = {}  # by descriptor
        self.queue: Deque[Tuple[socket.socket, bytes]] = deque()  # whole requests waiting for a worker
        self.served = 0
        self.forked = 0
        self.stopping = False
        self.exit_code = 0
        self.listener: Optional[socket.socket] = None
        self.handoffs: Optional[Handoffs] = None  # requests the zipapps' sh prelude hands over
        self.listening = False
        self.socket_inode = 0
        self.checked_at = 0.0
        self.madvise: Optional[Callable[[int, int, int], int]] = None
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()  # signal wake-ups (SIGCHLD, SIGTERM)

    # -- the socket -------------------------------------------------------------

    def listen(self) -> socket.socket:
        """Bind the socket path, unless a live server listens there: two servers on one path would
        each think they serve the node, and a takeover would make the old one's restarts take it back."""
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Root only: the socket runs code as root. Not a shared sticky dir such as /tmp, whose mode
        # others rely on (the socket's own 0600 and the peer check guard a socket there).
        if not os.stat(directory).st_mode & stat.S_ISVTX:
            os.chmod(directory, 0o700)
        if _listening(self.socket_path):
            raise SystemExit(f"pycni-server: another server listens on {self.socket_path}: not starting")
        tmp = f"{self.socket_path}.{os.getpid()}.tmp"
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(tmp)
        os.chmod(tmp, 0o600)
        listener.listen(4096)  # the kernel caps it (somaxconn); a burst of pods connects at once
        self.socket_inode = os.stat(tmp).st_ino
        os.replace(tmp, self.socket_path)  # a restart after a crash takes over a stale path atomically
        return listener

    def _socket_replaced(self, now: float) -> bool:
        """Once a second: the path no longer names our socket (removed, or a racing server's)."""
        if now - self.checked_at < 1.0:
            return False
        self.checked_at = now
        try:
            return os.stat(self.socket_path).st_ino != self.socket_inode
        except OSError:
            return True

    # -- the parent -------------------------------------------------------------

    def serve_forever(self) -> int:
        check_sysctl_root()
        raise_descriptor_limit()
        warm_up()  # every plugin of the table and what its verbs import lazily: forked workers start warm
        self.madvise = madvise_function()
        self.listener = self.listen()
        self.listener.setblocking(False)
        if self.handoff:
            self.handoffs = self._open_spool()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        gc.freeze()  # keep the warm heap out of the collector: shared with the workers
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self._listen_for_more()
        print(f"pycni-server: listening on {self.socket_path} (code {self.code_id}, "
              f"{self.idle_target} idle workers)", file=sys.stderr, flush=True)
        while True:
            self._reap()
            now = time.monotonic()
            self._expire(now)
            self._dispatch(now)
            self._retire_lingering(now)
            if self.stopping:
                self._stop_listening()
                if not (self.reading or self.queue or any(w.conn for w in self.workers.values())
                        or (self.handoffs and self.handoffs.in_flight())):
                    break
            elif self._socket_replaced(now):
                print(f"pycni-server: {self.socket_path} is no longer this server's socket: stopping",
                      file=sys.stderr, flush=True)
                self.stopping, self.exit_code = True, 1
                continue
            while self._should_fork_idle():
                self._fork(now)
            for key, _ in self.selector.select(timeout=self._timeout(now)):
                if key.fileobj is self.listener:
                    self._accept_all()
                elif key.fileobj == self.wake_r:
                    _read_all(self.wake_r)
                elif isinstance(key.data, Worker):
                    self._heard_from(key.data, time.monotonic())
                elif callable(key.data):  # a handed-over request's descriptor, or the spool's FIFO
                    key.data()
                else:
                    self._read_more(key.data)
        self._finish()
        return self.exit_code

    def _open_spool(self) -> Optional[Handoffs]:
        """The sh handoff's spool beside the socket; without it every request comes over the socket."""
        spool = Spool(self.socket_path)
        try:
            spool.open()
        except OSError as e:
            print(f"pycni-server: no sh handoff: {e}", file=sys.stderr, flush=True)
            return None
        return Handoffs(spool, self.selector, self._queue_handed_over, self._declines, self.read_timeout)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _timeout(self, now: float) -> float:
        deadlines = [r.deadline for r in self.reading.values()]
        deadlines += [w.deadline for w in self.workers.values() if w.conn is not None]
        deadlines += self.handoffs.deadlines() if self.handoffs else []
        return max(0.0, min([1.0] + [d - now for d in deadlines]))

    def _should_fork_idle(self) -> bool:
        """Below the idle target, fork another, but only at rest (no request running or waiting).

        An idle worker copies all its pages (~9 MiB, ~10 ms of CPU) so that a lone request
        starts at once; beside running requests that copy would slow them (2 cores), and in
        a burst it is waste: the next request is already there, and a worker forked with it
        copies only the pages it touches.
        """
        idle = sum(1 for w in self.workers.values() if w.idle)
        return (not self.stopping and not self.queue and idle == len(self.workers) and idle < self.idle_target
                and len(self.workers) < self.max_workers)

    def _listen_for_more(self) -> None:
        """Accept while fewer than MAX_READING connections are being read; the rest wait in the backlog."""
        listener = self.listener
        want = listener is not None and len(self.reading) < MAX_READING
        if want != self.listening and listener is not None:
            if want:
                self.selector.register(listener, selectors.EVENT_READ)
            else:
                self.selector.unregister(listener)
            self.listening = want

    def _accept_all(self) -> None:
        while self.listener is not None and (len(self.reading) < MAX_READING or self.stopping):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            self._take(conn)
        self._listen_for_more()

    def _take(self, conn: socket.socket) -> None:
        """Accept a connection from our own user (root) only; tell the client it may send."""
        conn.setblocking(False)
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, wire.CREDS.size)
            if wire.CREDS.unpack(creds)[1] != os.geteuid():
                raise PermissionError("peer is not our user")
            conn.send(wire.ACCEPTED)
        except OSError:
            conn.close()
            return
        reading = Reading(conn, time.monotonic() + self.read_timeout)
        self.reading[conn.fileno()] = reading
        self.selector.register(conn, selectors.EVENT_READ, reading)

    def _read_more(self, reading: Reading) -> None:
        chunk = wire.recv_nowait(reading.conn)
        if chunk is None:
            return
        if not chunk:  # the client left before sending a whole request
            self._forget(reading, close=True)
            return
        reading.data += chunk
        try:
            if not reading.size and len(reading.data) >= wire.HEAD_SIZE:
                reading.size = wire.request_size(bytes(reading.data[:wire.HEAD_SIZE]))
        except (wire.WireError, struct.error):
            self._forget(reading, close=True)
            return
        if reading.size and len(reading.data) >= reading.size:
            self._forget(reading, close=False)
            self._handle(reading.conn, bytes(reading.data[:reading.size]))

    def _forget(self, reading: Reading, close: bool) -> None:
        self.selector.unregister(reading.conn)
        del self.reading[reading.conn.fileno()]
        if close:
            reading.conn.close()
        self._listen_for_more()

    def _handle(self, conn: socket.socket, data: bytes) -> None:
        """Answer health and declined requests here; queue the rest for a worker."""
        try:
            plugin, client_code_id, environ, _, client_netns = wire.decode_request(data)
        except (wire.WireError, UnicodeDecodeError):
            conn.close()
            return
        if plugin == HEALTH_PLUGIN:
            busy = sum(1 for w in self.workers.values() if w.conn is not None)
            taken, handed = (self.handoffs.taken, self.handoffs.sent) if self.handoffs else (0, 0)
            status = (f"ok served={self.served + taken} workers={len(self.workers)} busy={busy} "
                      f"forked={self.forked} queued={len(self.queue)} reading={len(self.reading)} handed={handed}\n")
            _answer(conn, 0, status.encode())
            return
        self.served += 1
        if declines(plugin, client_code_id, client_netns, environ, self.code_id, self.netns):
            _answer(conn, wire.DECLINED, b"")
            return
        self.queue.append((conn, data))

    def _queue_handed_over(self, conn: socket.socket, data: bytes) -> None:
        """A request the sh prelude handed over (handoff.py), read and checked: a worker runs it as any other,
        starting now (a burst's other lines wait in the FIFO meanwhile)."""
        self.queue.append((conn, data))
        self._dispatch(time.monotonic())

    def _declines(self, plugin: str, client_code_id: str, client_netns: str, environ: Mapping[str, str]) -> bool:
        return declines(plugin, client_code_id, client_netns, environ, self.code_id, self.netns)

    def _dispatch(self, now: float) -> None:
        """Give queued requests to idle workers, or fork workers for them, up to max_workers."""
        while self.queue:
            idle = max((pid for pid, w in self.workers.items() if w.idle),  # the last to finish: its pages are warm
                       key=lambda pid: self.workers[pid].idle_since, default=None)
            if idle is None and len(self.workers) >= self.max_workers:
                return
            conn, data = self.queue.popleft()
            if client_gone(conn):
                conn.close()  # it gave up waiting: nobody would get the answer
                continue
            if idle is None:
                idle = self._fork(now)  # it reads the request at once: no page copying ahead
            if not self._hand_over(self.workers[idle], conn, data):
                self.queue.appendleft((conn, data))
                continue
            self.workers[idle].conn, self.workers[idle].deadline = conn, now + self.run_timeout

    def _hand_over(self, worker: Worker, conn: socket.socket, data: bytes) -> bool:
        """Send the request and its connection to an idle worker; False when that worker is gone."""
        assert worker.channel is not None
        try:
            fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))]
            sent = worker.channel.sendmsg([data], fds)
            worker.channel.sendall(data[sent:])
            return True
        except OSError:
            self._retire(worker)  # it died (reaped soon); its request goes to another
            return False

    def _heard_from(self, worker: Worker, now: float) -> None:
        """READY: its request is answered and it can take another; end of file: it is leaving."""
        try:
            said = worker.channel.recv(64) if worker.channel is not None else b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            said = b""
        if said.endswith(READY):
            worker.done(now)
        else:
            self._retire(worker)

    def _retire(self, worker: Worker) -> None:
        """Close its channel: an idle worker reads end of file and exits; a busy one exits after its request."""
        if worker.channel is not None:
            self.selector.unregister(worker.channel)
            worker.channel.close()
            worker.channel = None

    def _retire_lingering(self, now: float) -> None:
        """Workers idle beyond the idle target (what a burst left) exit after IDLE_LINGER."""
        idle = sorted((w for w in self.workers.values() if w.idle), key=lambda w: w.idle_since)
        for worker in idle[:max(0, len(idle) - self.idle_target)]:
            if now - worker.idle_since >= IDLE_LINGER:
                self._retire(worker)

    def _expire(self, now: float) -> None:
        """Drop connections past the read deadline; kill workers past the run deadline."""
        for reading in [r for r in self.reading.values() if now >= r.deadline]:
            self._forget(reading, close=True)
        if self.handoffs:
            self.handoffs.expire(now)
            self.handoffs.sweep_now_and_then(now)
        for pid, worker in self.workers.items():
            if worker.conn is not None and now >= worker.deadline:
                for kill in (os.killpg, os.kill):  # the worker's group: with what it exec'd
                    with suppress(OSError):
                        kill(pid, signal.SIGKILL)
                print(f"pycni-server: killed worker {pid}: its request ran past {self.run_timeout:g} s",
                      file=sys.stderr, flush=True)
                _answer(worker.conn, wire.TIMED_OUT, b"")
                worker.done(now)
                self._retire(worker)

    def _stop_listening(self) -> None:
        """On stop: unlink first (new clients run in-process), then take what already queued."""
        if self.listener is None:
            return
        if self.handoffs:
            self.handoffs.withdraw()
            self.handoffs.read_requests()
        with suppress(FileNotFoundError):
            if os.stat(self.socket_path).st_ino == self.socket_inode:  # not a newer server's socket
                os.unlink(self.socket_path)
        self._accept_all()  # nothing new can queue: the path is gone
        if self.listening:
            self.selector.unregister(self.listener)
            self.listening = False
        self.listener.close()
        self.listener = None

    def _finish(self) -> None:
        for worker in self.workers.values():
            self._retire(worker)  # idle workers read end-of-file and leave
        while self.workers:
            self._reap(block=True)
        if self.handoffs:
            self.handoffs.spool.close()
        self.selector.close()

    def _fork(self, now: float) -> int:
        """Fork a worker, idle until the server hands it a request on its channel."""
        channel, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                channel.close()  # the server must hold the only copy: its close is the worker's stop
                self._become_worker(keep=(child_end,))
                self._serve_requests(child_end)
                code = 0
            except (OSError, wire.WireError, UnicodeDecodeError):
                pass  # the client left, or sent garbage
            except Exception:  # a bug: say where, the client reads end-of-file (code 11)
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        with suppress(OSError):
            os.setpgid(pid, pid)  # as the worker does: a kill takes what it exec'd too
        child_end.close()
        channel.settimeout(CHANNEL_TIMEOUT)
        self.workers[pid] = worker = Worker(channel, now)
        self.selector.register(channel, selectors.EVENT_READ, worker)
        self.forked += 1
        return pid

    def _reap(self, block: bool = False) -> None:
        while self.workers:
            try:
                pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                for worker in self.workers.values():
                    self._gone(worker)
                self.workers.clear()
                break
            if pid == 0:
                break
            gone: Optional[Worker] = self.workers.pop(pid, None)
            if gone is not None:
                self._gone(gone)
            if block:
                break

    def _gone(self, worker: Worker) -> None:
        """A worker exited: a client it did not answer reads end of file (code 11)."""
        self._retire(worker)
        worker.done(0.0)

    # -- a worker ---------------------------------------------------------------

    def _become_worker(self, keep: tuple) -> None:
        """Drop the parent's state: other clients' connections must see end-of-file when their
        worker dies, and idle workers' end-of-file is their stop signal."""
        with suppress(OSError):
            os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.selector.close()
        if self.handoffs:
            self.handoffs.close_in_worker()
        kept = {id(obj) for obj in keep}
        socks: List[Optional[socket.socket]] = [self.listener]
        socks += [r.conn for r in self.reading.values()] + [conn for conn, _ in self.queue]
        for worker in self.workers.values():
            socks += [worker.channel, worker.conn]
        for sock in socks:
            if sock is not None and id(sock) not in kept:
                sock.close()
        os.chdir("/")

    def _serve_requests(self, channel: socket.socket) -> None:
        """A worker: serve the requests the server hands over, while each leaves this process as
        it found it, up to its quota; return on end of file (the server retires it, or stops)."""
        if not select.select([channel], [], [], POPULATE_AFTER)[0]:  # a request soon after: serve it at once
            own_private_pages(self.madvise)
        state, resident = reuse.snapshot(), reuse.resident_bytes()
        for served in range(1, self.requests_per_worker + 1):
            request = _receive(channel)
            if request is None:
                return
            conn, data = request
            with conn:
                serve_request(conn, data, self.code_id)
            if served == self.requests_per_worker:
                return  # no READY: the server must not hand a request to a worker on its way out
            why = reuse.changed(state, resident)
            if why is not None:
                print(f"pycni-server: worker {os.getpid()} exits: {why}", file=sys.stderr, flush=True)
                return
            channel.sendall(READY)


def _receive(channel: socket.socket) -> Optional[Tuple[socket.socket, bytes]]:
    """The next request the server hands over: its connection and its bytes; None at end of file."""
    chunk, ancdata, _, _ = channel.recvmsg(1 << 16, socket.CMSG_SPACE(struct.calcsize("i")))
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if not fds:
        return None  # end of file: the server retires this worker, stops, or died
    conn = socket.socket(fileno=fds[0])
    for extra in fds[1:]:
        os.close(extra)
    try:  # the rest of it: the server sends one whole request, then waits for READY
        head = chunk + wire.recv_exactly(channel, max(0, wire.HEAD_SIZE - len(chunk)))
        return conn, head + wire.recv_exactly(channel, max(0, wire.request_size(head) - len(head)))
    except (OSError, wire.WireError):
        conn.close()
        raise


def _listening(path: str) -> bool:
    """A server accepts (or queues) connections on `path`; False for no file or a stale one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError as e:
            return e.errno in (errno.EAGAIN, None)  # a full backlog or a slow accept: alive
        return True


def _answer(conn: socket.socket, code: int, stdout: bytes) -> None:
    """A short answer from the server itself (it fits the socket buffer), then close."""
    with suppress(OSError):
        conn.send(wire.encode_response(code, stdout))
    conn.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def health(socket_path: str, timeout: float = 3.0) -> Optional[str]:
    """The server's status line ("ok served=N workers=M") when it answers, else None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(wire.encode_request(HEALTH_PLUGIN, "", {}, b""))
            code, out = wire.read_response(sock)
    except (OSError, wire.WireError):
        return None
    return out.decode().strip() if code == 0 and out.startswith(b"ok") else None


def default_max_workers() -> int:
    """Four per usable CPU, 8 to 64. Requests are CPU work (netlink, the plugin code) with short
    waits (locks, the kernel): beyond a few per core they only take turns, each costing a fork
    and its copied pages; a 50-pod burst on 2 CPUs took 1.4x the reference's wall time with
    8 workers and 1.7x with 64."""
    return max(8, min(64, 4 * len(os.sched_getaffinity(0))))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _env_seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="pycni-server", description="Warm node server for the pycni plugins.")
    parser.add_argument("action", nargs="?", choices=["serve", "health"], default="serve")
    parser.add_argument("--socket", default=os.environ.get(wire.SOCKET_ENV) or wire.DEFAULT_SOCKET)
    parser.add_argument("--max-workers", type=int, default=_env_int("PYCNI_SERVER_MAX_WORKERS", 0),
                        help="requests run at once; more wait, read, in the server "
                             "(0: four per CPU this server may use, 8 to 64)")
    parser.add_argument("--idle-workers", type=int, default=_env_int("PYCNI_SERVER_IDLE_WORKERS", 2),
                        help="workers forked ahead of requests and kept after a burst")
    parser.add_argument("--requests-per-worker", type=int,
                        default=_env_int("PYCNI_SERVER_REQUESTS_PER_WORKER", REQUESTS_PER_WORKER),
                        help="requests a worker serves before a fresh one replaces it (1: a fork per request)")
    parser.add_argument("--read-timeout", type=float, default=_env_seconds("PYCNI_SERVER_READ_TIMEOUT", READ_TIMEOUT),
                        help="seconds from accepting a connection to having its whole request; then it is dropped")
    parser.add_argument("--run-timeout", type=float, default=_env_seconds("PYCNI_SERVER_RUN_TIMEOUT", RUN_TIMEOUT),
                        help="seconds a request may run; then its worker (and what it exec'd) is killed "
                             "and the client answers CNI code 11")
    parser.add_argument("--no-handoff", action="store_true", default=os.environ.get("PYCNI_SERVER_HANDOFF") == "off",
                        help="no spool for the zipapps' sh handoff (handoff.py): every request comes over the "
                             "socket, from a Python start")
    opts = parser.parse_args(argv)
    if opts.action == "health":
        ok = health(opts.socket)
        print(ok or f"pycni-server not answering on {opts.socket}")
        sys.exit(0 if ok else 1)
    server = Server(opts.socket, opts.max_workers or default_max_workers(), opts.idle_workers,
                    opts.read_timeout, opts.run_timeout, opts.requests_per_worker, not opts.no_handoff)
    sys.exit(server.serve_forever())


if __name__ == "__main__":
    main()
