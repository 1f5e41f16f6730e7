"""What a pycni-server worker does with one connection: check the peer, read, run, answer.

The answer is the stdout bytes and exit code an exec of the zipapp would have
produced. Anything that should not run here is declined, and the thin client
then runs it in-process, as a plain exec would.
"""
from __future__ import annotations

import os
import socket
import struct

from pycni.plugins.server import wire
from pycni.plugins.core.dispatch import run_request
from pycni.plugins.core.samebuild import SameBuildRunner
from pycni.plugins.server.memory import SharedCounters

HEALTH_PLUGIN = "pycni-server-health"
REQUEST_TIMEOUT_SECONDS = 10.0  # for reading a request; running it has the plugins' own bounds


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _netns_opens(path: str) -> bool:
    """Whether this server can open the request's netns path ("" when there is none: nothing to open).

    The server sees the host's netns directories through its own mounts; a runtime may put its
    namespaces where those mounts do not reach (another directory, a mount made later without
    propagation). The client, which can open it, then runs the request in-process.
    """
    if not path:
        return True
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def serve_connection(conn: socket.socket, code_id: str, netns: str, counters: SharedCounters) -> None:
    """Answer one connection for the server of `code_id` in network namespace `netns`.

    Malformed or hostile input is dropped without an answer.
    """
    from pycni.plugins.core.registry import PLUGIN_MODULES

    conn.settimeout(REQUEST_TIMEOUT_SECONDS)
    try:
        if _peer_uid(conn) != os.geteuid():
            return  # only the server's own user (root) may have requests run
        plugin, client_code_id, environ, stdin, client_netns = wire.read_request(conn)
    except (OSError, wire.WireError, UnicodeDecodeError, struct.error):
        return
    if plugin == HEALTH_PLUGIN:
        status = "ok served={served} workers={workers}\n".format(**counters.read())
        conn.sendall(wire.encode_response(0, status.encode()))
        return
    counters.add("served")
    # Another build's request, or one from a client in another network namespace (a plugin
    # exec'd there works on that namespace's host side), runs where the client is.
    if client_code_id != code_id or plugin not in PLUGIN_MODULES or not client_netns or client_netns != netns:
        conn.sendall(wire.encode_response(wire.DECLINED, b""))
        return
    if not _netns_opens(environ.get("CNI_NETNS", "")):
        conn.sendall(wire.encode_response(wire.DECLINED, b""))
        return
    conn.settimeout(None)
    stdout, code = run_request(plugin, environ, stdin, SameBuildRunner(code_id))
    conn.sendall(wire.encode_response(code, stdout))
