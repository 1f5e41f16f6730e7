"""The node server's wire format, shared by the thin client in each zipapp and the server.

Standard library only and no package-relative imports: build.py copies this
file into every zipapp as `_pycni_wire`, where it runs before anything is unpacked.

Request:  MAGIC, then "!HII" lengths of (meta, env, stdin), then the three blobs.
          meta = plugin name NUL code id NUL the client's netns (inode of
          /proc/self/ns/net, so a server that may not look into the client's
          /proc still knows where it runs); env = KEY=VALUE entries separated by NUL.
Response: "!iI" (exit code, stdout length), then stdout. Exit code DECLINED means the
          server did not run the request (another build, another netns) and the
          client may run it itself.
"""
import posix
from _struct import Struct  # struct.py only re-exports it: one file read less per exec

MAGIC = b"PYCNI1"
REQUEST_HEADER = Struct("!HII")
RESPONSE_HEADER = Struct("!iI")
DECLINED = -1
MAX_META = 512
MAX_ENV = 256 * 1024
MAX_STDIN = 4 * 1024 * 1024
MAX_STDOUT = 16 * 1024 * 1024
DEFAULT_SOCKET = "/run/pycni/server.sock"
SOCKET_ENV = "PYCNI_SERVER_SOCKET"


class WireError(Exception):
    """A malformed or oversized message."""


def own_netns():
    """This process's network namespace as requests name it ("" when /proc is not there)."""
    try:
        return str(posix.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return ""


def encode_request(plugin, code_id, environ, stdin, netns=None):
    meta = ("%s\0%s\0%s" % (plugin, code_id, own_netns() if netns is None else netns)).encode()
    env = b"\0".join(("%s=%s" % (k, v)).encode("utf-8", "surrogateescape") for k, v in environ.items())
    return MAGIC + REQUEST_HEADER.pack(len(meta), len(env), len(stdin)) + meta + env + stdin


def encode_response(code, stdout):
    return RESPONSE_HEADER.pack(code, len(stdout)) + stdout


def recv_exactly(sock, size):
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise WireError("connection closed mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_request(sock):
    """(plugin, code id, environ dict, stdin bytes, netns) from a connected socket; WireError when malformed.

    A meta without the netns (an older client) reads as netns "".
    """
    head = recv_exactly(sock, len(MAGIC) + REQUEST_HEADER.size)
    if head[:len(MAGIC)] != MAGIC:
        raise WireError("bad magic")
    meta_len, env_len, stdin_len = REQUEST_HEADER.unpack(head[len(MAGIC):])
    if meta_len > MAX_META or env_len > MAX_ENV or stdin_len > MAX_STDIN:
        raise WireError("request too large")
    meta = recv_exactly(sock, meta_len).decode("utf-8", "strict").split("\0")
    if len(meta) not in (2, 3) or not meta[0]:
        raise WireError("bad request meta")
    netns = meta[2] if len(meta) == 3 else ""
    environ = {}
    for entry in recv_exactly(sock, env_len).split(b"\0") if env_len else []:
        key, sep, value = entry.decode("utf-8", "surrogateescape").partition("=")
        if not sep or not key:
            raise WireError("bad environment entry")
        environ[key] = value
    return meta[0], meta[1], environ, recv_exactly(sock, stdin_len), netns


def read_response(sock):
    code, length = RESPONSE_HEADER.unpack(recv_exactly(sock, RESPONSE_HEADER.size))
    if length > MAX_STDOUT:
        raise WireError("response too large")
    return code, recv_exactly(sock, length)
