"""The node server's side of the sh handoff: requests a zipapp hands over before any Python starts.

A Python start costs ~13 ms of CPU; the zipapp's sh prelude (zipapp/prelude.sh) hands a request
over for ~2 ms. sh cannot speak to a socket, so the two meet in a spool, <socket>.handoff/,
that only root can reach:

  requests       a FIFO. A client writes one line, shorter than PIPE_BUF so lines never mix:
                 "<pid> <starttime> <watchdog pid> <plugin> <code id>". A client whose accept
                 deadline passed after the server took its request sends "<pid> <starttime>
                 <new watchdog pid> wait".
  server         "<pid> <starttime>" of the live server: a client checks it before writing,
                 so a spool that a dead server left behind costs nothing.
  <pid>.<start>  the request's answer file. Whoever creates it first owns the request: the
                 server when it takes the request (O_EXCL), or the client when it takes the
                 request back at its accept deadline (sh's noclobber) and runs it in-process.
                 The server writes the exit code into it, or D (declined: the client runs it
                 in-process, its stdin untouched).

The client keeps copies of its stdin and stdout as fds 3 and 4 (STDIN_COPY, STDOUT_COPY): its
shell swaps fd 1 for a moment while it writes the FIFO line, and the server may look right then.
The server reads the client's environment and stdin from /proc through one /proc/<pid>
directory descriptor, which stays bound to that process even if its pid is reused; writes the
result into the client's stdout pipe; then kills the watchdog sleep the client waits on,
through a pidfd, so a reused pid is never hit. The request runs in a worker just like a socket
client's: the worker gets one end of a socketpair, and the server relays its answer.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import stat
import sys
import time
from contextlib import contextmanager, suppress
from typing import Callable, Container, Dict, Iterator, List, Mapping, Optional, Tuple

from pycni.plugins.server import wire

SUFFIX = ".handoff"  # the spool beside the socket; zipapp/prelude.sh names it too
STDIN_COPY, STDOUT_COPY = 3, 4  # the client's copies of its fds 0 and 1 (zipapp/prelude.sh)
MAX_LINE = 512
PID_LIMIT = 1 << 22  # the kernel's pid_max can be at most 4194304
MAX_IN_FLIGHT = 256  # taken and not yet answered; beyond, requests wait in the FIFO (~5 fds each)
READ_SIZE = 4096  # FIFO bytes read at once: ~60 lines
SWEEP_EVERY = 5.0  # seconds between looks for answer files nobody will remove
WRITE_TIMEOUT = 5.0  # seconds for the client's runtime to take the result out of the stdout pipe
LOST = "lost the request in the pycni node server after taking it; try again later"
STDIN_UNREAD = "the pycni node server could not read the request's stdin in time; try again later"

Key = Tuple[int, int]  # (pid, starttime): one process, for this boot
Enqueue = Callable[[socket.socket, bytes], None]
Declines = Callable[[str, str, str, Mapping[str, str]], bool]  # plugin, code id, client netns, environ


def handoff_supported() -> bool:
    """Python >= 3.9 on Linux >= 5.3: pidfds, which the handoff signals through."""
    if not (hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def _read_file(name: str, dir_fd: Optional[int] = None, limit: int = 1 << 16) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@contextmanager
def proc_dir(pid: object) -> Iterator[int]:
    """A descriptor of /proc/<pid>: what is read through it is that process's, even once its pid is reused."""
    fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def proc_stat(proc: int) -> Tuple[int, int]:
    """(parent pid, start time in clock ticks since boot) of the process behind a /proc/<pid> descriptor."""
    fields = _read_file("stat", proc).rpartition(b")")[2].split()
    return int(fields[1]), int(fields[19])  # fields 4 and 22 of proc(5); sh takes ${20} after the ") "


def own_start() -> int:
    with proc_dir("self") as proc:
        return proc_stat(proc)[1]


def _euid(proc: int) -> int:
    """The effective uid from status: the owner of /proc/<pid> is root for a non-dumpable process."""
    for line in _read_file("status", proc).splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[2])
    return -1


def _environ(proc: int) -> Optional[Dict[str, str]]:
    """The environment the client was exec'd with; None when it is too large to hand over."""
    raw = _read_file("environ", proc, wire.MAX_ENV)
    return wire.decode_environ(raw, strict=False) if len(raw) <= wire.MAX_ENV else None


def _open_pipe(proc: int, fd: int, flags: int) -> Optional[int]:
    """The client's descriptor `fd` opened anew, when it is a pipe; None when it is anything else."""
    name = f"fd/{fd}"
    try:
        if not stat.S_ISFIFO(os.stat(name, dir_fd=proc).st_mode):
            return None
    except FileNotFoundError:
        return None
    return os.open(name, flags | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=proc)


def _stdin(proc: int) -> Tuple[bool, Optional[int]]:
    """(can hand over, pipe to read or None for an empty stdin). A closed stdin or /dev/null read as
    empty, as the Python client reads them; a file or a terminal runs in-process, where it is read as it is."""
    try:
        mode = os.stat(f"fd/{STDIN_COPY}", dir_fd=proc)
    except FileNotFoundError:
        return True, None
    if stat.S_ISCHR(mode.st_mode) and mode.st_rdev == os.stat("/dev/null").st_rdev:
        return True, None
    pipe = _open_pipe(proc, STDIN_COPY, os.O_RDONLY)
    return pipe is not None, pipe


class Handoff:
    """One handed-over request, from its take to its client's exit."""

    def __init__(self, key: Key, spool: str) -> None:
        self.key = key
        self.answer_path = f"{spool}/{key[0]}.{key[1]}"
        self.pidfd = -1  # the client; readable once it exits
        self.watchdog = -1  # pidfd of the sleep the client waits on
        self.stdin = -1
        self.stdout = -1
        self.relay: Optional[socket.socket] = None  # the server's end of the worker's socketpair
        self.plugin = self.code_id = ""
        self.environ: Dict[str, str] = {}
        self.netns = ""
        self.request = bytearray()  # stdin as read so far
        self.response = bytearray()  # from the worker
        self.result = b""  # what is left to write into the client's stdout
        self.code: Optional[str] = None  # what goes into the answer file, once the result is written
        self.answered = False
        self.deadline = float("inf")

    def kill_watchdog(self) -> None:
        if self.watchdog >= 0:
            with suppress(OSError):
                signal.pidfd_send_signal(self.watchdog, signal.SIGKILL)
            os.close(self.watchdog)
            self.watchdog = -1

    def close_fds(self) -> None:
        """Close what this server holds for it (a forked worker does this for every handoff)."""
        for name in ("pidfd", "watchdog", "stdin", "stdout"):
            fd = getattr(self, name)
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)
        if self.relay is not None:
            self.relay.close()
            self.relay = None


class Spool:
    """The spool directory, its FIFO and its `server` file, for one server."""

    def __init__(self, socket_path: str) -> None:
        self.path = socket_path + SUFFIX
        self.fifo = f"{self.path}/requests"
        self.fd = -1
        self.fifo_inode = 0
        self.partial = b""

    def open(self) -> None:
        """Make the spool (root only), drop what dead clients left, and announce this server."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        info = os.lstat(self.path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise PermissionError(f"{self.path} is not a directory of this server's user")
        os.chmod(self.path, 0o700)
        self.sweep()
        tmp = f"{self.fifo}.{os.getpid()}.tmp"
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        os.mkfifo(tmp, 0o600)
        # Read and write: the FIFO never reads end of file, and a client's open never waits.
        self.fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.fifo_inode = os.fstat(self.fd).st_ino
        os.replace(tmp, self.fifo)
        self._write_atomically("server", f"{os.getpid()} {own_start()}\n")

    def sweep(self, known: Container[str] = ()) -> None:
        """Remove answer files whose client is gone (a client still waiting keeps its own); `known`:
        names this server tracks itself."""
        for name in os.listdir(self.path):
            pid, dot, start = name.partition(".")
            if not (dot and pid.isdigit() and start.isdigit()) or name in known:
                continue
            try:
                with proc_dir(pid) as proc:
                    alive = proc_stat(proc)[1] == int(start)
            except (OSError, ValueError, IndexError):
                alive = False
            if not alive:
                _remove(f"{self.path}/{name}")

    def _write_atomically(self, name: str, text: str) -> None:
        tmp = f"{self.path}/{name}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, f"{self.path}/{name}")

    def lines(self) -> List[str]:
        """Whole lines from one read of up to READ_SIZE bytes (the selector reports the rest, so the
        in-flight cap holds within a read's worth); an overlong line (no client writes one) is dropped."""
        data = self.partial
        try:
            data += os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            pass
        *whole, self.partial = data.split(b"\n")
        if len(self.partial) > MAX_LINE:
            self.partial = b""
        return [line.decode("ascii", "replace") for line in whole if 0 < len(line) <= MAX_LINE]

    def withdraw(self) -> None:
        """New clients pass by (on stop): remove the `server` file and the FIFO's name, if still ours.
        The descriptor stays open for the lines already written."""
        with suppress(FileNotFoundError):
            os.unlink(f"{self.path}/server")
        with suppress(FileNotFoundError):
            if os.stat(self.fifo).st_ino == self.fifo_inode:
                os.unlink(self.fifo)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Handoffs:
    """Every handed-over request in flight: takes them from the spool's lines, reads their stdin,
    queues them for a worker (through `enqueue`), relays the answer, and cleans up when the client exits."""

    def __init__(self, spool: Spool, selector: selectors.BaseSelector, enqueue: Enqueue, declines: Declines,
                 read_timeout: float) -> None:
        self.spool = spool
        self.selector = selector
        self.enqueue = enqueue
        self.declines = declines
        self.read_timeout = read_timeout
        self.clients: Dict[Key, Handoff] = {}
        self.taken = 0  # requests taken over, declined ones included (as the server counts socket requests)
        self.sent = 0  # of those, the ones sent to a worker
        self.euid = os.geteuid()
        self.withdrawn = False
        self.swept_at = time.monotonic()
        self.listening = False
        self._listen()

    # -- the FIFO ----------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(1 for h in self.clients.values() if not h.answered)

    def _listen(self) -> None:
        """Read the FIFO while fewer than MAX_IN_FLIGHT requests are in flight; the rest wait in it."""
        want = self.spool.fd >= 0 and self.in_flight() < MAX_IN_FLIGHT
        if want != self.listening:
            if want:
                self.selector.register(self.spool.fd, selectors.EVENT_READ, self.read_requests)
            else:
                self.selector.unregister(self.spool.fd)
            self.listening = want

    def read_requests(self) -> None:
        for line in self.spool.lines():
            fields = line.split()
            if not (len(fields) in (4, 5) and all(f.isdigit() and len(f) <= 20 for f in fields[:3])):
                continue  # no client writes that
            pid, start, watchdog = (int(f) for f in fields[:3])
            if not (0 < pid < PID_LIMIT and 0 < watchdog < PID_LIMIT):
                continue
            try:
                if len(fields) == 5:
                    self._take(pid, start, watchdog, fields[3], fields[4])
                elif fields[3] == "wait":
                    self._rewatch((pid, start), watchdog)
            except Exception as e:  # noqa: BLE001 - a bug here must not take the node's server down
                print(f"pycni-server: handoff line {line!r}: {e!r}", file=sys.stderr, flush=True)
        self._listen()

    # -- taking a request ----------------------------------------------------------

    def _take(self, pid: int, start: int, watchdog: int, plugin: str, code_id: str) -> None:
        """Own the request unless its client took it back; then decline it, or read its stdin."""
        key = (pid, start)
        if key in self.clients:
            return  # a repeated line: that request is taken already
        try:
            with proc_dir(pid) as proc:
                handoff = self._bind(key, proc)
                if handoff is not None:
                    self._take_bound(handoff, proc, watchdog, plugin, code_id)
        except OSError:  # no /proc/<pid>: the client is gone (it took the request back, or was killed)
            _remove(f"{self.spool.path}/{pid}.{start}")

    def _bind(self, key: Key, proc: int) -> Optional[Handoff]:
        """A Handoff holding a pidfd of the client `key` (its /proc dir: `proc`), when that process is
        still it and runs as our user; else None, and the answer file of a client that is gone is removed."""
        handoff = Handoff(key, self.spool.path)
        try:
            handoff.pidfd = os.pidfd_open(key[0])
            started = proc_stat(proc)[1]
            if started == key[1] and _euid(proc) == self.euid:
                return handoff
        except (OSError, ValueError, IndexError):
            started = key[1]
        handoff.close_fds()  # not that client (its pid reused), or not our user: not ours to run
        if started != key[1]:
            _remove(handoff.answer_path)
        return None

    def _track(self, handoff: Handoff) -> None:
        self.clients[handoff.key] = handoff
        self.selector.register(handoff.pidfd, selectors.EVENT_READ, lambda: self._gone(handoff))

    def _take_bound(self, handoff: Handoff, proc: int, watchdog: int, plugin: str, code_id: str) -> None:
        key = handoff.key
        try:
            handoff.watchdog = _watchdog(key[0], watchdog)
            try:
                os.close(os.open(handoff.answer_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except FileExistsError:  # the client took it back at its accept deadline and runs it itself
                handoff.close_fds()
                _remove(handoff.answer_path)
                return
            self._track(handoff)
            self.taken += 1
            self._prepare(handoff, proc, plugin, code_id)
        except (OSError, ValueError, IndexError) as e:
            if isinstance(e, PermissionError):
                self._withdraw_for_good(e)
            if key not in self.clients:
                handoff.close_fds()
            elif not handoff.request:  # nothing of its stdin consumed: it may still run in-process
                self._finish(handoff, wire.DECLINED, b"")
            elif not handoff.answered:
                self._finish(handoff, 1, wire.try_again_later(bytes(handoff.request), f"{LOST} ({e})"))

    def _prepare(self, handoff: Handoff, proc: int, plugin: str, code_id: str) -> None:
        environ = _environ(proc)
        handoff.plugin, handoff.code_id = plugin, code_id
        handoff.netns = str(os.stat("ns/net", dir_fd=proc).st_ino)
        stdout = _open_pipe(proc, STDOUT_COPY, os.O_WRONLY)
        if stdout is not None:
            handoff.stdout = stdout
        readable, stdin = _stdin(proc) if stdout is not None else (False, None)
        if stdin is not None:
            handoff.stdin = stdin
        if environ is None or not readable or self.declines(plugin, code_id, handoff.netns, environ):
            if stdin is not None:
                os.close(stdin)
                handoff.stdin = -1
            self._finish(handoff, wire.DECLINED, b"")
            return
        handoff.environ = environ
        if stdin is None:
            self._send(handoff)
            return
        handoff.deadline = time.monotonic() + self.read_timeout
        self.selector.register(stdin, selectors.EVENT_READ, lambda: self._read_stdin(handoff))
        self._read_stdin(handoff)  # the runtime wrote it before exec, as a rule: no wait for the selector

    def _withdraw_for_good(self, error: OSError) -> None:
        """This server may not read its clients' /proc (no SYS_PTRACE, or a security module says
        no): new clients use the socket instead; what is in the FIFO is declined as it comes."""
        if not self.withdrawn:
            self.withdrawn = True
            self.spool.withdraw()
            print(f"pycni-server: no sh handoff: {error} (the chart's unprivileged server needs SYS_PTRACE); "
                  "the zipapps use the socket", file=sys.stderr, flush=True)

    def _rewatch(self, key: Key, watchdog: int) -> None:
        """The client waits on a new watchdog (its accept deadline passed): kill it once answered.
        A request this server does not know (a server before it took it) is answered at once, so
        the client says that it may have run; its answer file goes when the client exits."""
        handoff = self.clients.get(key)
        if handoff is None:
            handoff = self._adopt(key)
            if handoff is None:
                return
        if handoff.watchdog >= 0:
            os.close(handoff.watchdog)
        handoff.watchdog = _watchdog(key[0], watchdog)
        if handoff.answered:
            handoff.kill_watchdog()

    def _adopt(self, key: Key) -> Optional[Handoff]:
        """A live client of ours whose request a previous server took: answered, with nothing to say."""
        try:
            with proc_dir(key[0]) as proc:
                handoff = self._bind(key, proc)
        except OSError:
            return None
        if handoff is not None:
            handoff.answered = True
            self._track(handoff)
        return handoff

    # -- the request's way through ---------------------------------------------------

    def _read_stdin(self, handoff: Handoff) -> None:
        """Read what the pipe holds; at end of file, send the request on."""
        while True:
            try:
                chunk = os.read(handoff.stdin, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return  # the runtime writes more later
            except OSError:
                chunk = b""
            if not chunk:
                break
            handoff.request += chunk
            if len(handoff.request) > wire.MAX_STDIN:
                self._stdin_done(handoff)
                self._finish(handoff, 1, wire.try_again_later(b"", STDIN_UNREAD))
                return
        self._stdin_done(handoff)
        try:
            self._send(handoff)
        except OSError as e:  # out of descriptors, say: stdin is read, so never in-process now
            self._finish(handoff, 1, wire.try_again_later(bytes(handoff.request), f"{LOST} ({e})"))

    def _stdin_done(self, handoff: Handoff) -> None:
        self.selector.unregister(handoff.stdin)
        os.close(handoff.stdin)
        handoff.stdin, handoff.deadline = -1, float("inf")

    def _send(self, handoff: Handoff) -> None:
        """Queue it for a worker, as a socket client's request, and wait for the answer on the relay."""
        relay, conn = socket.socketpair()
        relay.setblocking(False)
        handoff.relay = relay
        self.selector.register(relay, selectors.EVENT_READ, lambda: self._read_answer(handoff))
        self.sent += 1
        data = wire.encode_request(handoff.plugin, handoff.code_id, handoff.environ, bytes(handoff.request),
                                   netns=handoff.netns)
        self.enqueue(conn, data)

    def _read_answer(self, handoff: Handoff) -> None:
        assert handoff.relay is not None
        chunk = wire.recv_nowait(handoff.relay)
        if chunk is None:
            return
        handoff.response += chunk
        size = wire.RESPONSE_HEADER.size
        code, length = wire.RESPONSE_HEADER.unpack(handoff.response[:size]) if len(handoff.response) >= size else (0, -1)
        whole = length >= 0 and len(handoff.response) >= size + length
        if not (chunk and not whole):
            stdin = bytes(handoff.request)
            if not whole:
                self._finish(handoff, 1, wire.try_again_later(stdin, LOST))  # the worker died
            elif code == wire.TIMED_OUT:
                self._finish(handoff, 1, wire.try_again_later(stdin, wire.STOPPED))
            else:
                self._finish(handoff, code, bytes(handoff.response[size:size + length]))

    def _finish(self, handoff: Handoff, code: int, result: bytes) -> None:
        """Write the result into the client's stdout, then the exit code (or D) into its answer file,
        then release the client by killing its watchdog."""
        if handoff.relay is not None:
            self.selector.unregister(handoff.relay)
            handoff.relay.close()
            handoff.relay = None
        handoff.answered = True
        handoff.code = "D" if code == wire.DECLINED else str(code)
        handoff.result = result
        handoff.deadline = time.monotonic() + WRITE_TIMEOUT
        self._write_result(handoff, registered=False)
        self._listen()

    def _write_result(self, handoff: Handoff, registered: bool = True) -> None:
        while handoff.result and handoff.stdout >= 0:
            try:
                handoff.result = handoff.result[os.write(handoff.stdout, handoff.result):]
            except (BlockingIOError, InterruptedError):
                if not registered:  # the runtime reads slowly: write the rest as it does
                    self.selector.register(handoff.stdout, selectors.EVENT_WRITE, lambda: self._write_result(handoff))
                return
            except OSError:  # EPIPE: nobody reads it any more
                break
        if registered:
            self.selector.unregister(handoff.stdout)
        self._release(handoff)

    def _release(self, handoff: Handoff) -> None:
        if handoff.stdout >= 0:
            os.close(handoff.stdout)
            handoff.stdout = -1
        handoff.deadline = float("inf")
        with suppress(OSError):
            with open(handoff.answer_path, "w") as f:
                f.write(f"{handoff.code}\n")
        handoff.kill_watchdog()

    def _gone(self, handoff: Handoff) -> None:
        """Its client exited (or was killed): a request not yet run is dropped, as is a socket client's
        that hung up (the worker sees its end of the relay closed)."""
        for fd in (handoff.pidfd, handoff.stdin, handoff.stdout, handoff.relay):
            if fd is not None and fd != -1:
                with suppress(KeyError):
                    self.selector.unregister(fd)
        handoff.kill_watchdog()
        handoff.close_fds()
        _remove(handoff.answer_path)
        del self.clients[handoff.key]
        self._listen()

    # -- deadlines and stopping -----------------------------------------------------

    def deadlines(self) -> List[float]:
        return [h.deadline for h in self.clients.values() if h.deadline != float("inf")]

    def sweep_now_and_then(self, now: float) -> None:
        """Every SWEEP_EVERY seconds, remove answer files of clients that are gone and that this
        server does not track: a previous server's takes, lines lost with its FIFO."""
        if now >= self.swept_at + SWEEP_EVERY:
            self.swept_at = now
            self.spool.sweep(known={os.path.basename(h.answer_path) for h in self.clients.values()})

    def expire(self, now: float) -> None:
        """A stdin not read by the read deadline, or a result the runtime did not take in time."""
        for handoff in [h for h in self.clients.values() if now >= h.deadline]:
            if handoff.stdin >= 0:
                self._stdin_done(handoff)
                self._finish(handoff, 1, wire.try_again_later(b"", STDIN_UNREAD))
            elif handoff.stdout >= 0:
                self.selector.unregister(handoff.stdout)
                self._release(handoff)

    def withdraw(self) -> None:
        """On stop: new clients pass by; lines already written are still taken."""
        self.spool.withdraw()

    def close_in_worker(self) -> None:
        """A forked worker must hold none of it: a client's stdout pipe open here would keep its
        runtime waiting for end of file, a relay open here would hide a worker's death."""
        for handoff in self.clients.values():
            handoff.close_fds()
        self.spool.close()


def _watchdog(client: int, pid: int) -> int:
    """A pidfd of the client's watchdog sleep, when `pid` is that client's child; else -1."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        with proc_dir(pid) as proc:
            if proc_stat(proc)[0] == client:
                return fd
    except (OSError, ValueError, IndexError):
        pass
    os.close(fd)
    return -1


def _remove(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
