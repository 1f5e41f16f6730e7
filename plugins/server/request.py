"""What a pycni-server worker does with one request the server read: run it, answer.

The answer is the stdout bytes and exit code an exec of the zipapp would have
produced. The server (node.py) already checked the peer and declined what
should not run here; the thin client then runs that in-process, as a plain exec would.
"""
from __future__ import annotations

import select
import socket

from pycni.plugins.server import wire
from pycni.plugins.core.samebuild import SameBuildRunner, run_request

HEALTH_PLUGIN = "pycni-server-health"


def client_gone(conn: socket.socket) -> bool:
    """The client closed its end (gave up): a half-close after sending is no hang-up, a close is."""
    events = select.poll()
    events.register(conn.fileno(), select.POLLIN)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events.poll(0))


def declines(plugin: str, client_code_id: str, client_netns: str, code_id: str, netns: str) -> bool:
    """Another build's request, or one from a client in another network namespace (a plugin
    exec'd there works on that namespace's host side), runs where the client is."""
    from pycni.plugins.core.registry import PLUGIN_MODULES

    return client_code_id != code_id or plugin not in PLUGIN_MODULES or not client_netns or client_netns != netns


def serve_request(conn: socket.socket, data: bytes, code_id: str) -> None:
    """Run one whole request (wire format) and answer on `conn`; not when its client is gone."""
    if client_gone(conn):
        return  # nobody would get the answer: an ADD would leave a lease for a client that gave up
    plugin, _, environ, stdin, _ = wire.decode_request(data)
    conn.setblocking(True)
    stdout, code = run_request(plugin, environ, stdin, SameBuildRunner(code_id))
    conn.sendall(wire.encode_response(code, stdout))
