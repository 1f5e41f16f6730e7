"""The node server's wire format, shared by the thin client in each zipapp and the server.

Standard library only and no package-relative imports: build.py copies this
file into every zipapp as `_pycni_wire`, where it runs before anything is unpacked.

Accept:   the server sends the byte ACCEPTED once it took the connection; the thin client
          sends nothing before it (so it can still run the request itself when no server
          takes it in time) and only to a listener that runs as root or as itself.
Request:  MAGIC, then "!HII" lengths of (meta, env, stdin), then the three blobs.
          meta = plugin name NUL code id NUL the client's netns (inode of
          /proc/self/ns/net, so a server that may not look into the client's
          /proc still knows where it runs); env = KEY=VALUE entries separated by NUL.
Response: "!iI" (exit code, stdout length), then stdout. Exit code DECLINED means the
          server did not run the request (another build, another netns) and the
          client may run it itself; TIMED_OUT that it ran past the server's run deadline
          and was killed (the client answers CNI code 11).
"""
import posix
from _struct import Struct  # struct.py only re-exports it: one file read less per exec

MAGIC = b"PYCNI1"
REQUEST_HEADER = Struct("!HII")
RESPONSE_HEADER = Struct("!iI")
CREDS = Struct("3i")  # struct ucred (SO_PEERCRED): pid, uid, gid; each side checks the other's uid
ACCEPTED = b"\x06"
DECLINED = -1
TIMED_OUT = -2
MAX_META = 512
MAX_ENV = 256 * 1024
MAX_STDIN = 4 * 1024 * 1024
MAX_STDOUT = 16 * 1024 * 1024
DEFAULT_SOCKET = "/run/pycni/server.sock"
SOCKET_ENV = "PYCNI_SERVER_SOCKET"
# The thin client's deadlines (seconds; environment overrides): for the server to accept the
# connection (then the client runs the request in-process, nothing sent), and for the answer
# once the request was sent (then CNI code 11). The answer's is above the server's default
# run deadline (node.py), so a request killed there is reported by the server.
ACCEPT_TIMEOUT_ENV, ACCEPT_TIMEOUT = "PYCNI_SERVER_ACCEPT_TIMEOUT", 5.0
ANSWER_TIMEOUT_ENV, ANSWER_TIMEOUT = "PYCNI_SERVER_TIMEOUT", 30.0


STOPPED = "the pycni node server stopped this request at its run deadline; try again later"


class WireError(Exception):
    """A malformed or oversized message."""


def try_again_later(stdin, msg):
    """The stdout of a CNI code-11 error ("try again later") in the request's cniVersion."""
    import json  # on this rare path only: the thin client's own path never imports json

    try:
        version = json.loads(stdin).get("cniVersion") or "1.1.0"
    except Exception:
        version = "1.1.0"
    return (json.dumps({"cniVersion": version, "code": 11, "msg": msg}) + "\n").encode()


def decode_environ(blob, strict=True):
    """The environment from KEY=VALUE entries separated by NUL (a request's, or /proc/<pid>/environ).
    A bad entry is a WireError when strict; else it is skipped (/proc's ends in a NUL)."""
    environ = {}
    for entry in blob.split(b"\0") if blob else []:
        key, sep, value = entry.decode("utf-8", "surrogateescape").partition("=")
        if sep and key:
            environ[key] = value
        elif strict:
            raise WireError("bad environment entry")
    return environ


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


def recv_nowait(sock):
    """What a non-blocking socket holds (up to 64 KiB): None when nothing yet, b"" at end of file or on an error."""
    try:
        return sock.recv(1 << 16)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


HEAD_SIZE = len(MAGIC) + REQUEST_HEADER.size


def request_size(head):
    """The whole request's size in bytes from its first HEAD_SIZE bytes; WireError when malformed."""
    if head[:len(MAGIC)] != MAGIC:
        raise WireError("bad magic")
    meta_len, env_len, stdin_len = REQUEST_HEADER.unpack(head[len(MAGIC):HEAD_SIZE])
    if meta_len > MAX_META or env_len > MAX_ENV or stdin_len > MAX_STDIN:
        raise WireError("request too large")
    return HEAD_SIZE + meta_len + env_len + stdin_len


def decode_request(data):
    """(plugin, code id, environ dict, stdin bytes, netns) from a whole request; WireError when malformed.

    A meta without the netns (an older client) reads as netns "".
    """
    if len(data) < HEAD_SIZE or len(data) != request_size(data):
        raise WireError("truncated request")
    meta_len, env_len, _ = REQUEST_HEADER.unpack(data[len(MAGIC):HEAD_SIZE])
    env_at = HEAD_SIZE + meta_len
    stdin_at = env_at + env_len
    meta = data[HEAD_SIZE:env_at].decode("utf-8", "strict").split("\0")
    if len(meta) not in (2, 3) or not meta[0]:
        raise WireError("bad request meta")
    netns = meta[2] if len(meta) == 3 else ""
    return meta[0], meta[1], decode_environ(data[env_at:stdin_at]), data[stdin_at:], netns


def read_request(sock):
    """decode_request of the request read from a connected socket (what a stand-in server does)."""
    head = recv_exactly(sock, HEAD_SIZE)
    return decode_request(head + recv_exactly(sock, request_size(head) - HEAD_SIZE))


def read_response(sock, accepted=False):
    """(exit code, stdout) from the server; first the ACCEPTED byte unless the caller read it already."""
    if not accepted and recv_exactly(sock, len(ACCEPTED)) != ACCEPTED:
        raise WireError("not accepted")
    code, length = RESPONSE_HEADER.unpack(recv_exactly(sock, RESPONSE_HEADER.size))
    if length > MAX_STDOUT:
        raise WireError("response too large")
    return code, recv_exactly(sock, length)
