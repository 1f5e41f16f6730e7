"""pycni-server: a warm node process that runs CNI requests handed over by the thin zipapps.

The plugin code (and pyroute2) is imported once here; each request runs in a
worker forked from this warm process, so netns switches, crashes and leaked
state of one request never touch another or the server. The result is the
same bytes and exit code an exec of the zipapp would have produced.

    pycni-server [--socket /run/pycni/server.sock] [--max-workers 64]
    pycni-server health [--socket ...]      (exit 0 when the server answers)
"""
from __future__ import annotations

import argparse
import errno
import gc
import os
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Callable, Dict, Mapping, Optional, Tuple

from . import wire
from .buildinfo import own_code_id
from .invoke import run_binary

HEALTH_PLUGIN = "pycni-server-health"
REQUEST_TIMEOUT_SECONDS = 10.0  # for reading a request; running it has the plugins' own bounds


class SameBuildRunner:
    """IPAM delegation that runs a pycni plugin of this very code in-process instead of exec'ing it.

    Only when the delegate binary is a pycni zipapp stamped with our code id:
    then the in-process run is the same code on the same env and stdin, and
    its stdout and exit code are those of the exec. Anything else is exec'd.
    """

    def __init__(self, code_id: str) -> None:
        self.code_id = code_id
        self._seen: Dict[Tuple[int, int, int, int], Optional[str]] = {}

    def plugin_of(self, binary: str) -> Optional[str]:
        try:
            st = os.stat(binary)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in self._seen:
            self._seen[key] = _stamped_plugin(binary, self.code_id)
        return self._seen[key]

    def __call__(self, binary: str, environ: Mapping[str, str], stdin: bytes) -> Tuple[bytes, int]:
        plugin = self.plugin_of(binary)
        if plugin is None:
            return run_binary(binary, environ, stdin)
        return run_request(plugin, environ, stdin, self)


def _stamped_plugin(binary: str, code_id: str) -> Optional[str]:
    """The plugin name when `binary` is a pycni zipapp built from code `code_id`."""
    import re
    import zipfile

    try:
        with zipfile.ZipFile(binary) as zf:
            launcher = zf.read("_pycni_launch.py").decode()
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
    plugin = re.search(r'^PLUGIN = "([^"]+)"$', launcher, re.M)
    stamp = re.search(r'^CODE_ID = "([^"]+)"$', launcher, re.M)
    if plugin and stamp and stamp.group(1) == code_id:
        return plugin.group(1)
    return None


def run_request(plugin: str, environ: Mapping[str, str], stdin: bytes,
                runner: Optional[Callable] = None) -> Tuple[bytes, int]:
    from .dispatch import run
    from .registry import load

    return run(lambda: load(plugin), environ, stdin, runner)


def warm_up() -> None:
    """Import every plugin and what its verbs import lazily, so forked workers start warm."""
    from . import registry

    for name in registry.PLUGIN_MODULES:
        plugin = registry.load(name)
        warm = getattr(plugin, "warm_up", None)
        if callable(warm):
            warm()


def _peer(conn: socket.socket) -> Tuple[int, int]:
    """(pid, uid) of the client; pid is 0 when it lives outside our pid namespace."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _in_other_netns(pid: int) -> bool:
    """Whether a client we can see runs in another network namespace than ours.

    Its request must then run where it is (in-process), as an exec would: a
    plugin started inside some namespace works on that namespace's host side.
    Clients we cannot see (another pid namespace, e.g. the host seen from the
    server's container) reached our socket on the host and are served.
    """
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


class Server:
    def __init__(self, socket_path: str, max_workers: int = 64) -> None:
        self.socket_path = socket_path
        self.max_workers = max_workers
        self.code_id = own_code_id()
        self.workers: Dict[int, float] = {}
        self.stopping = False
        self.served = 0
        self.socket_inode = 0

    # -- the parent: accept, fork, reap ---------------------------------------

    def listen(self) -> socket.socket:
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # root only: the socket runs code as root
        tmp = f"{self.socket_path}.{os.getpid()}.tmp"
        with _suppress_missing():
            os.unlink(tmp)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(tmp)
        os.chmod(tmp, 0o600)
        listener.listen(128)
        self.socket_inode = os.stat(tmp).st_ino
        os.replace(tmp, self.socket_path)  # a restart takes over the path atomically
        return listener

    def serve_forever(self) -> None:
        warm_up()
        listener = self.listen()
        listener.setblocking(False)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        gc.freeze()  # keep the warm heap shared with the forked workers
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        print(f"pycni-server: listening on {self.socket_path} (code {self.code_id})", file=sys.stderr, flush=True)
        while not self.stopping:
            self._reap()
            if len(self.workers) >= self.max_workers:
                time.sleep(0.001)
                continue
            if selector.select(timeout=0.5):
                self._accept_all(listener)
        self._drain(listener)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _drain(self, listener: socket.socket) -> None:
        """On stop: unlink first (new clients run in-process), then serve what is already queued."""
        with _suppress_missing():
            if os.stat(self.socket_path).st_ino == self.socket_inode:  # not a newer server's socket
                os.unlink(self.socket_path)
        listener.setblocking(False)
        self._accept_all(listener)
        listener.close()
        while self.workers:
            self._reap(block=True)

    def _accept_all(self, listener: socket.socket) -> None:
        while len(self.workers) < self.max_workers:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._fork_worker(conn, listener)

    def _fork_worker(self, conn: socket.socket, listener: socket.socket) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                listener.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.chdir("/")
                self.handle(conn)
                code = 0
            finally:
                os._exit(code)
        conn.close()
        self.workers[pid] = time.monotonic()
        self.served += 1

    def _reap(self, block: bool = False) -> None:
        while self.workers:
            try:
                pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            self.workers.pop(pid, None)
            if block:
                return

    # -- the worker: one request ------------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT_SECONDS)
        try:
            pid, uid = _peer(conn)
            if uid != os.geteuid():
                return  # only the server's own user (root) may have requests run
            plugin, code_id, environ, stdin = wire.read_request(conn)
        except (OSError, wire.WireError, UnicodeDecodeError, struct.error):
            return  # malformed or hostile: drop it; the server itself never sees it
        if plugin == HEALTH_PLUGIN:
            conn.sendall(wire.encode_response(0, f"ok served={self.served} workers={len(self.workers)}\n".encode()))
            return
        from .registry import PLUGIN_MODULES

        if code_id != self.code_id or plugin not in PLUGIN_MODULES or (pid and _in_other_netns(pid)):
            conn.sendall(wire.encode_response(wire.DECLINED, b""))
            return
        conn.settimeout(None)
        stdout, code = run_request(plugin, environ, stdin, SameBuildRunner(self.code_id))
        conn.sendall(wire.encode_response(code, stdout))


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, OSError) and getattr(value, "errno", None) == errno.ENOENT


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


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="pycni-server", description="Warm node server for the pycni plugins.")
    parser.add_argument("action", nargs="?", choices=["serve", "health"], default="serve")
    parser.add_argument("--socket", default=os.environ.get(wire.SOCKET_ENV) or wire.DEFAULT_SOCKET)
    parser.add_argument("--max-workers", type=int, default=int(os.environ.get("PYCNI_SERVER_MAX_WORKERS", "64")))
    opts = parser.parse_args(argv)
    if opts.action == "health":
        ok = health(opts.socket)
        print(ok or f"pycni-server not answering on {opts.socket}")
        sys.exit(0 if ok else 1)
    Server(opts.socket, opts.max_workers).serve_forever()


if __name__ == "__main__":
    main()
