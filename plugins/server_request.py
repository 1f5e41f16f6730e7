"""What a pycni-server worker does with one connection: check the peer, read, run, answer.

The answer is the stdout bytes and exit code an exec of the zipapp would have
produced. Anything that should not run here is declined, and the thin client
then runs it in-process, as a plain exec would.
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Callable, Dict, Mapping, Optional, Tuple

from . import wire
from .invoke import run_binary
from .server_memory import SharedCounters

HEALTH_PLUGIN = "pycni-server-health"
STAMP_PREFIX = b"# pycni-build: "
STAMP_SCAN_BYTES = 256
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
            self._seen[key] = stamped_plugin(binary, self.code_id)
        return self._seen[key]

    def __call__(self, binary: str, environ: Mapping[str, str], stdin: bytes) -> Tuple[bytes, int]:
        plugin = self.plugin_of(binary)
        if plugin is None:
            return run_binary(binary, environ, stdin)
        return run_request(plugin, environ, stdin, self)


def stamped_plugin(binary: str, code_id: str) -> Optional[str]:
    """The plugin name when `binary` is a pycni zipapp built from code `code_id`.

    build.py stamps "# pycni-build: <plugin> <code id>" as the prelude's second
    line: reading it costs one small read, where opening the zip cost ~2 ms.
    """
    try:
        with open(binary, "rb") as f:
            head = f.read(STAMP_SCAN_BYTES)
    except OSError:
        return None
    lines = head.split(b"\n", 2)
    if len(lines) < 3 or not lines[1].startswith(STAMP_PREFIX):
        return None
    fields = lines[1][len(STAMP_PREFIX):].decode("ascii", "replace").split()
    if len(fields) == 2 and fields[1] == code_id:
        return fields[0]
    return None


def run_request(plugin: str, environ: Mapping[str, str], stdin: bytes,
                runner: Optional[Callable] = None) -> Tuple[bytes, int]:
    from .dispatch import run
    from .registry import load

    return run(lambda: load(plugin), environ, stdin, runner)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def serve_connection(conn: socket.socket, code_id: str, counters: SharedCounters) -> None:
    """Answer one connection; malformed or hostile input is dropped without an answer."""
    from .registry import PLUGIN_MODULES

    conn.settimeout(REQUEST_TIMEOUT_SECONDS)
    try:
        if _peer_uid(conn) != os.geteuid():
            return  # only the server's own user (root) may have requests run
        plugin, client_code_id, environ, stdin, netns = wire.read_request(conn)
    except (OSError, wire.WireError, UnicodeDecodeError, struct.error):
        return
    if plugin == HEALTH_PLUGIN:
        status = "ok served={served} workers={workers}\n".format(**counters.read())
        conn.sendall(wire.encode_response(0, status.encode()))
        return
    counters.add("served")
    # Another build's request, or one from a client in another network namespace (a plugin
    # exec'd there works on that namespace's host side), runs where the client is.
    if client_code_id != code_id or plugin not in PLUGIN_MODULES or not netns or netns != wire.own_netns():
        conn.sendall(wire.encode_response(wire.DECLINED, b""))
        return
    conn.settimeout(None)
    stdout, code = run_request(plugin, environ, stdin, SameBuildRunner(code_id))
    conn.sendall(wire.encode_response(code, stdout))
