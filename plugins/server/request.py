"""What a pycni-server worker does with one request the server read: run it, answer.

The answer is the stdout bytes and exit code an exec of the zipapp would have
produced. The server (node.py) already checked the peer and declined what
should not run here; the thin client then runs that in-process, as a plain exec would.
"""
from __future__ import annotations

import os
import select
import socket
from typing import Mapping

from pycni.plugins.server import wire
from pycni.plugins.core.dispatch import run_request
from pycni.plugins.core.samebuild import SameBuildRunner

HEALTH_PLUGIN = "pycni-server-health"


def client_gone(conn: socket.socket) -> bool:
    """The client closed its end (gave up): a half-close after sending is no hang-up, a close is."""
    events = select.poll()
    events.register(conn.fileno(), select.POLLIN)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events.poll(0))


def netns_opens(path: str) -> bool:
    """Whether this server can open the request's netns path ("" when there is none: nothing to open).

    The server sees the host's netns directories through its own mounts; a runtime may put its
    namespaces where those mounts do not reach (another directory, a mount made later without
    propagation). The client, which can open it, then runs the request in-process. Non-blocking:
    the parent asks, and a FIFO there must not stop it (the plugin refuses what is no netns).
    """
    if not path:
        return True
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def declines(plugin: str, client_code_id: str, client_netns: str, environ: Mapping[str, str],
             code_id: str, netns: str) -> bool:
    """Another build's request, or one from a client in another network namespace (a plugin
    exec'd there works on that namespace's host side), or one whose netns path this server
    cannot open, runs where the client is."""
    from pycni.plugins.core.registry import PLUGIN_MODULES

    return (client_code_id != code_id or plugin not in PLUGIN_MODULES or not client_netns
            or client_netns != netns or not netns_opens(environ.get("CNI_NETNS", "")))


def serve_request(conn: socket.socket, data: bytes, code_id: str) -> None:
    """Run one whole request (wire format) and answer on `conn`; not when its client is gone."""
    if client_gone(conn):
        return  # nobody would get the answer: an ADD would leave a lease for a client that gave up
    plugin, _, environ, stdin, _ = wire.decode_request(data)
    conn.setblocking(True)
    stdout, code = run_request(plugin, environ, stdin, SameBuildRunner(code_id))
    conn.sendall(wire.encode_response(code, stdout))
