"""Thin client: hand the request to the pycni node server when one answers.

Standard library only; runs from the zip before anything is unpacked. It uses
the `posix` and `_socket` C modules rather than `os` and `socket`: with
`python3 -S`, `os` alone imports stat, posixpath and _collections_abc (1-2 ms)
and `socket` adds enum and selectors (~5 ms), on every exec of every plugin.
"""
import posix
import sys

from _pycni_wire import DECLINED, DEFAULT_SOCKET, SOCKET_ENV, WireError, encode_request, read_response


def _environ():
    """os.environ's str view of the process environment (os.fsdecode of posix.environ)."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(encoding, errors): v.decode(encoding, errors) for k, v in posix.environ.items()}


def _read_stdin():
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()


def _try_again_later(stdin):
    import json

    try:
        version = json.loads(stdin).get("cniVersion") or "1.1.0"
    except Exception:
        version = "1.1.0"
    error = {"cniVersion": version, "code": 11,
             "msg": "lost the connection to the pycni node server after sending the request; try again later"}
    sys.stdout.write(json.dumps(error) + "\n")
    sys.stdout.flush()
    posix._exit(1)


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
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None  # no server: run in-process, as a plugin dropped on a node by hand does
    stdin = _read_stdin()
    try:
        sock.sendall(encode_request(plugin, code_id, environ, stdin))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return stdin  # the server cannot have run a request it did not fully receive
    try:
        code, stdout = read_response(sock)
    except (OSError, WireError):
        _try_again_later(stdin)  # it may have run: never run it a second time here
    if code == DECLINED:
        return stdin
    out = sys.stdout.buffer
    out.write(stdout)
    out.flush()
    posix._exit(code)
