"""Thin client: hand the request to the pycni node server when one answers.

Standard library only; runs from the zip before anything is unpacked. It uses
the `posix` and `_socket` C modules rather than `os` and `socket`: with
`python3 -S`, `os` alone imports stat, posixpath and _collections_abc (1-2 ms)
and `socket` adds enum and selectors (~5 ms), on every exec of every plugin.

Nothing is sent before the listener proved to be root (or this client's own
user: SO_PEERCRED) and accepted the connection in time; until then the
request can still run in-process. Once sent, it is never run here: no answer
in time is CNI code 11.
"""
import posix
import sys

from _pycni_wire import (ACCEPT_TIMEOUT, ACCEPT_TIMEOUT_ENV, ACCEPTED, ANSWER_TIMEOUT, ANSWER_TIMEOUT_ENV, CREDS,
                         DECLINED, DEFAULT_SOCKET, SOCKET_ENV, STOPPED, TIMED_OUT, WireError, encode_request,
                         read_response, try_again_later)

LOST = "lost the connection to the pycni node server after sending the request; try again later"


def _environ():
    """os.environ's str view of the process environment (os.fsdecode of posix.environ)."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(encoding, errors): v.decode(encoding, errors) for k, v in posix.environ.items()}


def _read_stdin():
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()


def _seconds(environ, name, default):
    try:
        value = float(environ.get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default


def _try_again_later(stdin, msg=LOST):
    out = sys.stdout.buffer
    out.write(try_again_later(stdin, msg))
    out.flush()
    posix._exit(1)


def _trusted(sock, socket):
    """The listener runs as root or as us: anyone else must not see the request (env, config)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", 17), CREDS.size)
        uid = CREDS.unpack(creds)[1]
    except (OSError, ValueError):
        return False
    return uid == 0 or uid == posix.geteuid()


def _accepted(sock, socket, environ):
    """Connected to a trusted listener that took the connection within the accept deadline."""
    if not _trusted(sock, socket):
        sys.stderr.write("pycni: %s is not served by root: running in-process\n" % environ.get(SOCKET_ENV))
        return False
    try:
        return sock.recv(len(ACCEPTED)) == ACCEPTED
    except OSError:  # the deadline (socket.timeout is an OSError)
        return False


def _connect(sock, path, timeout):
    """Connect, waiting out a full backlog (a burst of pods) up to `timeout`: a socket with a
    timeout fails at once there (EAGAIN), where running in-process would cost far more."""
    import time

    end = time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return True
        except BlockingIOError:
            if time.monotonic() >= end:
                return False
            time.sleep(0.002)


def handle_via_server(plugin, code_id):
    """Exit with the server's answer; or return the stdin bytes (None: not read yet) to run in-process."""
    environ = _environ()
    path = environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    if not path or path == "off":
        return None
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return None  # no server here: skip even importing socket
    try:
        import _socket as socket  # the C module: `socket` would add enum and selectors (~5 ms)
    except ImportError:
        import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    accept_timeout = _seconds(environ, ACCEPT_TIMEOUT_ENV, ACCEPT_TIMEOUT)
    sock.settimeout(accept_timeout)
    try:
        accepted = _connect(sock, path, accept_timeout) and _accepted(sock, socket, environ)
    except OSError:
        accepted = False
    if not accepted:
        sock.close()
        return None  # no server (in time): run in-process, as a plugin dropped on a node by hand does
    stdin = _read_stdin()
    sock.settimeout(_seconds(environ, ANSWER_TIMEOUT_ENV, ANSWER_TIMEOUT))
    try:
        sock.sendall(encode_request(plugin, code_id, environ, stdin))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return stdin  # the server cannot have run a request it did not fully receive
    try:
        code, stdout = read_response(sock, accepted=True)
    except (OSError, WireError):
        _try_again_later(stdin)  # it may have run: never run it a second time here
    if code == DECLINED:
        return stdin
    if code == TIMED_OUT:
        _try_again_later(stdin, STOPPED)
    out = sys.stdout.buffer
    out.write(stdout)
    out.flush()
    posix._exit(code)
