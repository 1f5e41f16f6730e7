"""Thin client: hand the request to the pycni node server when one answers.

Standard library only; runs from the zip before anything is unpacked.
"""
import os
import sys

from _pycni_wire import DECLINED, DEFAULT_SOCKET, SOCKET_ENV, WireError, encode_request, read_response


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
    os._exit(1)


def handle_via_server(plugin, code_id):
    """Exit with the server's answer; or return the stdin bytes (None: not read yet) to run in-process."""
    path = os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    if not path or path == "off" or not os.path.exists(path):
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
        sock.sendall(encode_request(plugin, code_id, os.environ, stdin))
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
    os._exit(code)
