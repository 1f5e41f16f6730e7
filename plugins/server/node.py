"""pycni-server: a warm node process that runs CNI requests handed over by the thin zipapps.

The plugin code is imported once here; each request runs in a worker forked
from this warm process, so netns switches, crashes and leaked state of one
request never touch another or the server. A few workers are forked ahead of
requests and wait in accept() with their memory already their own, so a
request starts at once. Each worker serves one connection and exits.

    pycni-server [--socket /run/pycni/server.sock] [--max-workers 64] [--idle-workers 2]
    pycni-server health [--socket ...]      (exit 0 when the server answers)
"""
from __future__ import annotations

import argparse
import gc
import os
import select
import selectors
import signal
import socket
import struct
import sys
from contextlib import suppress
from typing import Callable, Dict, Optional

from pycni.plugins.server import wire
from pycni.plugins.core.buildinfo import own_code_id
from pycni.plugins.core.dispatch import warm_up
from pycni.plugins.server.memory import SharedCounters, madvise_function, own_private_pages
from pycni.plugins.server.request import HEALTH_PLUGIN, serve_connection

PID = struct.Struct("i")


def check_sysctl_root() -> None:
    """Refuse to start when PYCNI_PROC_SYS names a dir without the host's net sysctls in it.

    Plugins skip sysctls that are not there (an interface without IPv6, say), so a
    missing mount would otherwise quietly leave every pod without its sysctls.
    """
    from pycni.plugins.kernel.netlink import PROC_SYS

    if not os.path.isfile(os.path.join(PROC_SYS, "net", "ipv4", "ip_forward")):
        raise SystemExit(f"pycni-server: no net sysctls under {PROC_SYS} (PYCNI_PROC_SYS): "
                         "mount the host's /proc/sys/net there")


class Server:
    """The parent: keeps `idle_workers` forked workers waiting, reaps them, drains on SIGTERM.

    It never reads a request itself, so no input can crash it. With
    idle_workers=0 it accepts and forks a worker per connection instead.
    """

    def __init__(self, socket_path: str, max_workers: int = 64, idle_workers: int = 2) -> None:
        self.socket_path = socket_path
        self.max_workers = max(1, max_workers)
        self.idle_target = max(0, min(idle_workers, self.max_workers))
        self.code_id = own_code_id()
        self.netns = wire.own_netns()  # requests from clients elsewhere are declined
        self.workers: Dict[int, bool] = {}  # pid -> still idle
        self.counters = SharedCounters()
        self.stopping = False
        self.socket_inode = 0
        self.madvise: Optional[Callable[[int, int, int], int]] = None
        # A worker writes its pid to `taken` when it accepted a connection; idle workers
        # exit when `stop` reads end-of-file (the server closed it, or died).
        self.taken_r, self.taken_w = os.pipe()
        self.stop_r, self.stop_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()  # signal wake-ups (SIGCHLD, SIGTERM)

    # -- the parent -------------------------------------------------------------

    def listen(self) -> socket.socket:
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # root only: the socket runs code as root
        tmp = f"{self.socket_path}.{os.getpid()}.tmp"
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(tmp)
        os.chmod(tmp, 0o600)
        listener.listen(128)
        self.socket_inode = os.stat(tmp).st_ino
        os.replace(tmp, self.socket_path)  # a restart takes over the path atomically
        return listener

    def serve_forever(self) -> None:
        check_sysctl_root()
        warm_up()  # every plugin of the table and what its verbs import lazily: forked workers start warm
        self.madvise = madvise_function()
        listener = self.listen()
        listener.setblocking(False)  # shared with the workers: accept never blocks anyone
        for fd in (self.wake_r, self.wake_w, self.taken_r):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        gc.freeze()  # keep the warm heap out of the collector: shared with the workers
        selector = selectors.DefaultSelector()
        selector.register(self.wake_r, selectors.EVENT_READ)
        selector.register(self.taken_r, selectors.EVENT_READ)
        if not self.idle_target:
            selector.register(listener, selectors.EVENT_READ)
        print(f"pycni-server: listening on {self.socket_path} (code {self.code_id}, "
              f"{self.idle_target} idle workers)", file=sys.stderr, flush=True)
        while not self.stopping:
            self._reap()
            while self._should_fork_idle():
                self._fork(self._wait_for_connection, listener)
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj == self.taken_r:
                    self._note_taken()
                elif key.fileobj == self.wake_r:
                    _read_all(self.wake_r)
                else:
                    self._accept_all(listener)
        self._drain(listener)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _should_fork_idle(self) -> bool:
        """Below the idle target, fork another, but not beside a running request while one
        idle worker is still there: forking and copying pages would slow that request (2 cores)."""
        idle = sum(1 for is_idle in self.workers.values() if is_idle)
        busy = len(self.workers) - idle
        return (not self.stopping and idle < self.idle_target and len(self.workers) < self.max_workers
                and (idle == 0 or busy == 0))

    def _note_taken(self) -> None:
        data = _read_all(self.taken_r)
        for (pid,) in PID.iter_unpack(data[:len(data) - len(data) % PID.size]):
            if pid in self.workers:
                self.workers[pid] = False

    def _drain(self, listener: socket.socket) -> None:
        """On stop: unlink first (new clients run in-process), then serve what is already queued."""
        with suppress(FileNotFoundError):
            if os.stat(self.socket_path).st_ino == self.socket_inode:  # not a newer server's socket
                os.unlink(self.socket_path)
        os.close(self.stop_w)  # idle workers leave; one that took a connection finishes it
        self.stop_w = -1
        while not self._accept_all(listener):  # every worker busy, clients still queued
            self._reap(block=True)
        listener.close()  # the path is gone: nothing new can have queued
        while self.workers:
            self._reap(block=True)

    def _accept_all(self, listener: socket.socket) -> bool:
        """Fork a worker for each queued connection; False when it stopped at max_workers (more may wait)."""
        while len(self.workers) < self.max_workers:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            self._fork(self._serve, conn, idle=False)
            conn.close()
        return False

    def _fork(self, work, arg, idle: bool = True) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._become_worker()
                work(arg)
                code = 0
            finally:
                os._exit(code)
        self.workers[pid] = idle
        self.counters.set("workers", len(self.workers))

    def _reap(self, block: bool = False) -> None:
        before = len(self.workers)
        while self.workers:
            try:
                pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                break
            if pid == 0:
                break
            self.workers.pop(pid, None)
            if block:
                break
        if len(self.workers) != before:
            self.counters.set("workers", len(self.workers))

    # -- a worker ---------------------------------------------------------------

    def _become_worker(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self.taken_r, self.wake_r, self.wake_w):
            os.close(fd)
        if self.stop_w >= 0:
            os.close(self.stop_w)  # the server must hold the only copy: its close is the stop signal
        os.chdir("/")

    def _wait_for_connection(self, listener: socket.socket) -> None:
        """An idle worker: own its memory, then take one connection, unless the server stops first."""
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(self.stop_r, select.POLLIN)
        if not poller.poll(0):  # in a burst, serve at once: copying pages up front only pays when idle
            own_private_pages(self.madvise)
        while True:
            events = poller.poll()
            if any(fd == self.stop_r for fd, _ in events):
                return  # the server stops (or died): leave what is queued to it
            try:
                conn, _ = listener.accept()
                break
            except (BlockingIOError, InterruptedError):
                continue  # another idle worker was quicker
        os.write(self.taken_w, PID.pack(os.getpid()))
        listener.close()
        self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        os.close(self.stop_r)
        os.close(self.taken_w)
        conn.setblocking(True)
        serve_connection(conn, self.code_id, self.netns, self.counters)


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


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="pycni-server", description="Warm node server for the pycni plugins.")
    parser.add_argument("action", nargs="?", choices=["serve", "health"], default="serve")
    parser.add_argument("--socket", default=os.environ.get(wire.SOCKET_ENV) or wire.DEFAULT_SOCKET)
    parser.add_argument("--max-workers", type=int, default=_env_int("PYCNI_SERVER_MAX_WORKERS", 64),
                        help="requests served at once; more wait in the socket's backlog")
    parser.add_argument("--idle-workers", type=int, default=_env_int("PYCNI_SERVER_IDLE_WORKERS", 2),
                        help="workers forked ahead of requests (0: fork one per connection)")
    opts = parser.parse_args(argv)
    if opts.action == "health":
        ok = health(opts.socket)
        print(ok or f"pycni-server not answering on {opts.socket}")
        sys.exit(0 if ok else 1)
    Server(opts.socket, opts.max_workers, opts.idle_workers).serve_forever()


if __name__ == "__main__":
    main()
