"""Starting, finding and stopping a network's DNS server process; probing it with a query.

The server is this same code: the plugin re-execs its own interpreter (`sys.executable`)
with `-c BOOT`, passing the current `sys.path` on the command line. In a zipapp run
`sys.path[0]` is the unpacked payload dir (or `<archive>/payload`), which holds
`pycni.plugins` and the vendored dnslib; from a source checkout or an installed package
the same list finds them too. Nothing depends on environment variables, so the server's
environment can be empty and no `PYTHONPATH` leaks into it.

Detaching: fork, setsid, fork again, stdio on /dev/null, cwd /, then exec. The server
is in its own session and process group (not the runtime's), reparented to init (or
the nearest subreaper) when the plugin exits. It reports 'ready <pid>' or 'error: …'
on a pipe once its sockets are bound, so ADD fails with the real reason (address in
use, …) instead of timing out.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
import time

from pycni.plugins.meta.dns.records import NetworkStore
from pycni.plugins.core.errors import IO_FAILURE, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import List, Optional

    from dnslib import DNSRecord

BOOT = ("import os, sys; sys.path[0:0] = [p for p in sys.argv[1].split(os.pathsep) if p]; "
        "from pycni.plugins.meta.dns.server import main; rc = main(sys.argv[2:]); os._exit(rc)")
MARKER = b"pycni.plugins.meta.dns.server"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _is_our_server(pid: int, netdir: str) -> bool:
    """Alive and really our server for this network (a recycled pid is not)."""
    args = _cmdline(pid).split(b"\0")
    return any(MARKER in a for a in args) and os.fsencode(netdir) in args


def server_pid(store: NetworkStore) -> Optional[int]:
    """The pid of the network's running server, or None (a stale pidfile counts as None)."""
    try:
        with open(store.pid_path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _is_our_server(pid, store.dir) else None


def start(store: NetworkStore) -> int:
    """Start the server detached; returns its pid once it is bound and serving. Hold the lock."""
    try:
        os.unlink(store.pid_path)  # stale: its process is gone (callers checked server_pid)
    except OSError:
        pass
    read_end, write_end = os.pipe()
    paths = os.pathsep.join(_usable_elsewhere(p) for p in sys.path if isinstance(p, str) and p)
    argv = [sys.executable, "-c", BOOT, paths, store.dir, str(write_end)]
    child = os.fork()
    if child == 0:  # first child: new session, fork again so the server is no session leader
        try:
            os.setsid()
            if os.fork() == 0:
                _exec_server(argv, read_end, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    try:
        message = _read_message(read_end, START_TIMEOUT)
    finally:
        os.close(read_end)
    if message.startswith("ready "):
        return int(message.split()[1])
    if not message:
        message = "server exited without saying why"
    raise CNIError(IO_FAILURE, f"pycni-dns server for network {store.network!r} did not start: {message}")


def _usable_elsewhere(path: str) -> str:
    """A sys.path entry the server process can use too.

    A zipapp run without a usable cache imports from /proc/self/fd/9/payload (the
    prelude pins the archive on fd 9), which means nothing in another process:
    name the archive file itself instead.
    """
    prefix = "/proc/self/fd/"
    if not path.startswith(prefix):
        return path
    fd, sep, rest = path[len(prefix):].partition("/")
    try:
        return os.readlink(prefix + fd) + sep + rest
    except OSError:
        return path


def _exec_server(argv: List[str], read_end: int, write_end: int) -> None:
    try:
        os.close(read_end)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir("/")
        os.umask(0o022)
        os.closerange(3, write_end)
        os.closerange(write_end + 1, 65536)
        os.set_inheritable(write_end, True)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execve(argv[0], argv, {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        os._exit(127)


def _read_message(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timed out waiting for it to bind"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def stop(store: NetworkStore) -> None:
    """Stop the network's server if it runs and remove its pidfile. Hold the lock."""
    pid = server_pid(store)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while _is_our_server(pid, store.dir) and time.monotonic() < deadline:
            time.sleep(0.005)
        if _is_our_server(pid, store.dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        os.unlink(store.pid_path)
    except OSError:
        pass


def query(host: str, port: int, name: str, qtype: str = "A", timeout: float = 1.0,
          tries: int = 2) -> Optional[DNSRecord]:
    """Ask the server one question over UDP; the parsed reply (a dnslib DNSRecord) or None."""
    from dnslib import DNSRecord  # only CHECK and STATUS need dnslib in the plugin

    request = DNSRecord.question(name, qtype)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(tries):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
                sock.send(request.pack())
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    data = sock.recv(65535)
                    if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == request.header.id:
                        return DNSRecord.parse(data)
            except (OSError, ValueError):
                continue
            except Exception:
                continue
    return None
