"""The on-disk lease store of pycni-host-local, byte-compatible with the reference host-local.

Reference layout, shared with /usr/lib/cni/host-local (either plugin can take over a node):

    <dataDir>/<network>/lock                  flock(LOCK_EX) for the whole operation
    <dataDir>/<network>/last_reserved_ip.<i>  last address given from range set i (round-robin)
    <dataDir>/<network>/<address>             "<containerID>\\r\\n<ifname>" (old files: "<containerID>")

A reservation file is written complete in a temporary file first and then
hard-linked to its address name: link() fails if the name exists (the
reference's O_EXCL semantics) and no reader, ours or the reference's, can
ever see it half written; a kill -9 leaves either the complete file or none.

Our own index lives beside the reference's files, never inside its directory
(the reference walks and reads every file there on each release):

    <dataDir>/.pycni-hostlocal/<network>/index/<xx>
        one of up to 64 shards (xx = crc32 of "<containerID>:<ifname>" mod 64), each
        line "<containerID>:<ifname> <address> ..." -- a hint, always verified against
        the lease file before use. Shards keep both costs small: an operation rewrites
        one ~N/64-line file, and a rebuild writes at most 64 files, not one per lease.
    <dataDir>/.pycni-hostlocal/<network>/clean
        present only while the index covers every reservation; holds a fingerprint
        of the last_reserved_ip.* files

The marker is removed before our first change of an operation and written
back after the last, so a crash leaves it absent. The reference rewrites
last_reserved_ip.0 on every ADD that reserves anything (range set 0 comes
first), which changes the fingerprint. Either way the next operation walks
the directory once, rebuilds the index and continues; otherwise DEL, CHECK
and ADD's idempotency check read one index file instead of every lease.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import zlib

from pycni.plugins.core.config import network_name_problem
from pycni.plugins.core.env import interface_name_problem
from pycni.plugins.core.errors import INVALID_CONFIG, IO_FAILURE, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set, Tuple

    from pycni.plugins.core.result import IPAddress

    # (container ID, ifname); ifname is None for the reference's old container-ID-only files.
    Owner = Tuple[str, Optional[str]]

LOCK = "lock"
LAST_RESERVED = "last_reserved_ip."
STATE_DIR = ".pycni-hostlocal"  # never a network name: those start with a letter or digit
INDEX_DIR = "index"
SHARDS = 64
CLEAN = "clean"
TMP_PREFIX = "tmp-"
LINK_UNSUPPORTED = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IP_NAME = re.compile(r"^[0-9a-fA-F:.]+$")


def parse_owner(data: bytes) -> Optional[Owner]:
    """The owner a reservation file names, read as the reference does (surrounding space trimmed)."""
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return None
    cid, sep, ifname = text.partition("\r\n")
    return (cid, ifname if sep else None)


def owned_by(owner: Optional[Owner], cid: str, ifname: str) -> bool:
    """Does a file of `owner` belong to (cid, ifname)? Old-form files match any ifname of the container."""
    return owner is not None and owner[0] == cid and owner[1] in (None, ifname)


def index_key(cid: str, ifname: Optional[str]) -> Optional[str]:
    """The index key of an attachment, or None when it cannot be one (spaces, newlines ...)."""
    if not _CONTAINER_ID.match(cid) or (ifname and interface_name_problem(ifname)):
        return None
    return f"{cid}:{ifname or ''}"


def shard_of(key: str) -> str:
    return "%02x" % (zlib.crc32(key.encode()) % SHARDS)


def _io_error(what: str, exc: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"host-local store: {what}: {exc.strerror or exc}")


class Store:
    """One network's leases, locked for the lifetime of the `with` block."""

    def __init__(self, data_dir: str, network: str) -> None:
        problem = network_name_problem(network)
        if problem:
            raise CNIError(INVALID_CONFIG, problem)
        self.data_dir = data_dir
        self.network = network
        self.dir = os.path.join(data_dir, network)
        self.state_dir = os.path.join(data_dir, STATE_DIR, network)
        self.index_dir = os.path.join(self.state_dir, INDEX_DIR)
        self._lock_fd: Optional[int] = None
        self._reserve_tmp: Optional[Tuple[bytes, str]] = None
        self._range_count = 1
        self._recorded = 0  # how many last_reserved_ip files the marker fingerprints
        self._clean = False
        self._indexable = True
        self._marker_removed = False
        self._shards: Dict[str, Dict[str, Set[str]]] = {}  # shard name -> key -> addresses
        self._touched: Set[str] = set()  # shard names to write back
        self._scanned: Optional[Dict[str, Optional[Owner]]] = None  # every lease, after a walk
        self._owners: Dict[str, Optional[Owner]] = {}  # leases read so far (without a walk)

    # -- opening, locking, paths -------------------------------------------------------------

    def __enter__(self) -> "Store":
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_dir(self, *parts: str) -> None:
        """Create dataDir/parts one level at a time, refusing symlinks: nothing lands outside dataDir."""
        path = self.data_dir
        for part in parts:
            path = os.path.join(path, part)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                pass
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise CNIError(INVALID_CONFIG, f"host-local store: {path} is not a directory (a symlink?); "
                                               "refusing to write outside dataDir")

    def _open(self) -> None:
        try:
            os.makedirs(self.data_dir, 0o755, exist_ok=True)
            self._ensure_dir(self.network)
            self._ensure_dir(STATE_DIR, self.network, INDEX_DIR)
            fd = os.open(os.path.join(self.dir, LOCK), os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _io_error(f"cannot open {self.dir}", exc) from None
        self._lock_fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)

    def close(self) -> None:
        if self._reserve_tmp is not None:
            self._unlink(self._reserve_tmp[1])
            self._reserve_tmp = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _tmp_path(self) -> str:
        # random too: a long-running node process may hold several stores at once
        return os.path.join(self.state_dir, f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")

    @staticmethod
    def _unlink(path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    @staticmethod
    def _read(path: str) -> Optional[bytes]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise
        try:  # the whole file: a lease of a long container ID written by another plugin must still match
            chunks: "list[bytes]" = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = self._tmp_path()
        self._write_new(tmp, data)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            self._unlink(tmp)
            if exc.errno != errno.EXDEV:
                raise
            self._write_new(path, data, exclusive=False)

    @staticmethod
    def _write_new(path: str, data: bytes, exclusive: bool = True) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    # -- the clean marker and the index ------------------------------------------------------

    def _fingerprint(self, count: int) -> List[Optional[list]]:
        out: List[Optional[list]] = []
        for i in range(count):
            path = os.path.join(self.dir, f"{LAST_RESERVED}{i}")
            try:
                st = os.stat(path)
            except FileNotFoundError:
                out.append(None)
                continue
            data = self._read(path) or b""
            out.append([st.st_ino, st.st_mtime_ns, st.st_size, data.decode("utf-8", "replace")])
        return out

    def _marker_valid(self) -> bool:
        data = self._read(os.path.join(self.state_dir, CLEAN))
        try:
            recorded = json.loads(data)["lastReserved"] if data else None
        except (ValueError, KeyError, TypeError):
            return False
        if not isinstance(recorded, list):
            return False
        self._recorded = len(recorded)
        count = max(self._range_count + 1, len(recorded))
        return self._fingerprint(count) == recorded + [None] * (count - len(recorded))

    def _mark_dirty(self) -> None:
        if not self._marker_removed:
            self._unlink(os.path.join(self.state_dir, CLEAN))
            self._marker_removed = True

    def prepare(self, range_count: int, cid: str = "", ifname: str = "", rebuild: bool = False) -> None:
        """Check the index is trustworthy for this operation; walk the store and rebuild it if not."""
        self._range_count = max(range_count, 1)
        try:
            trusted = not rebuild and self._marker_valid() and (not cid or index_key(cid, ifname) is not None)
            self._clean = trusted
            if not trusted:
                self.rebuild()
            else:
                self._remove_temporaries()  # a writer killed after its marker: tiny dir, cheap
        except OSError as exc:
            raise _io_error(f"cannot read {self.dir}", exc) from None

    def scan(self) -> Dict[str, Optional[Owner]]:
        """Every reservation file: address -> owner (None for an empty or unreadable file)."""
        out: Dict[str, Optional[Owner]] = {}
        for name in os.listdir(self.dir):
            if name == LOCK or name.startswith(LAST_RESERVED) or not _IP_NAME.match(name):
                continue
            try:
                data = self._read(os.path.join(self.dir, name))
            except IsADirectoryError:
                continue
            if data is not None:
                out[name] = parse_owner(data)
        return out

    def rebuild(self) -> None:
        """Walk every lease (the reference's cost, paid once) and rewrite the index to match."""
        self._mark_dirty()
        reservations = self.scan()
        groups: Dict[str, Set[str]] = {}
        for ip, owner in reservations.items():
            if owner is None:
                continue  # an empty or garbage file belongs to no one: GC releases it
            key = index_key(*owner)
            if key is None:
                self._indexable = False
                continue
            groups.setdefault(key, set()).add(ip)
        shards: Dict[str, Dict[str, Set[str]]] = {}
        for key, ips in groups.items():
            shards.setdefault(shard_of(key), {})[key] = ips
        for name in os.listdir(self.index_dir):
            if name not in shards:
                self._unlink(os.path.join(self.index_dir, name))
        for name, entries in shards.items():
            # Plain writes are fine here: with the marker gone, a torn file is rebuilt again.
            self._write_new(os.path.join(self.index_dir, name), _shard_bytes(entries), exclusive=False)
        self._remove_temporaries()
        self._shards = shards
        self._touched.clear()
        self._scanned = reservations
        self._clean = True

    def _remove_temporaries(self) -> None:
        """Temporary files of writers that were killed (we hold the lock: nobody is writing)."""
        for name in os.listdir(self.state_dir):
            if name.startswith(TMP_PREFIX):
                self._unlink(os.path.join(self.state_dir, name))

    def _load_index(self, key: str) -> Set[str]:
        """The addresses the index lists for `key` (a live set: change it, then _touch the key)."""
        name = shard_of(key)
        shard = self._shards.get(name)
        if shard is None:
            data = self._read(os.path.join(self.index_dir, name)) or b""
            shard = self._shards[name] = {}
            for line in data.decode("utf-8", "replace").splitlines():
                fields = line.split()
                if fields:
                    shard[fields[0]] = set(fields[1:])
        return shard.setdefault(key, set())

    def _touch(self, key: str) -> None:
        self._touched.add(shard_of(key))

    def _index_add(self, ip: str, owner: Owner) -> None:
        key = index_key(*owner)
        if key is None:
            self._indexable = False
            return
        self._load_index(key).add(ip)
        self._touch(key)

    def _index_remove(self, ip: str, owner: Optional[Owner]) -> None:
        key = index_key(*owner) if owner else None
        if key is not None and ip in self._load_index(key):
            self._load_index(key).discard(ip)
            self._touch(key)

    def finish(self) -> None:
        """Write back the index entries this operation changed, then the clean marker."""
        try:
            if self._touched:
                self._mark_dirty()
            for name in sorted(self._touched):
                path = os.path.join(self.index_dir, name)
                data = _shard_bytes(self._shards.get(name, {}))
                if data:
                    self._write_atomic(path, data)
                else:
                    self._unlink(path)
            self._touched.clear()
            if self._reserve_tmp is not None:  # gone before the marker says all is in order
                self._unlink(self._reserve_tmp[1])
                self._reserve_tmp = None
            if self._marker_removed and self._clean and self._indexable:
                count = max(self._range_count + 1, self._recorded)
                marker = json.dumps({"lastReserved": self._fingerprint(count)}).encode()
                self._write_atomic(os.path.join(self.state_dir, CLEAN), marker)
                self._marker_removed = False
        except OSError as exc:
            raise _io_error(f"cannot update the index in {self.state_dir}", exc) from None

    # -- leases ------------------------------------------------------------------------------

    def owner(self, ip: str) -> Optional[Owner]:
        if self._scanned is not None:
            return self._scanned.get(ip)
        if ip not in self._owners:  # each lease is read at most once per operation
            data = self._read(os.path.join(self.dir, ip))
            self._owners[ip] = parse_owner(data) if data is not None else None
        return self._owners[ip]

    def held(self, cid: str, ifname: str) -> List[str]:
        """The addresses (cid, ifname) holds, verified against the reservation files."""
        if self._scanned is not None:
            return sorted(ip for ip, owner in self._scanned.items() if owned_by(owner, cid, ifname))
        out = []
        for key in {index_key(cid, ifname), index_key(cid, None)}:
            if key is None:
                continue
            for ip in sorted(self._load_index(key)):
                if owned_by(self.owner(ip), cid, ifname):
                    out.append(ip)
                else:  # released by the reference, or reused since: drop the stale hint
                    self._load_index(key).discard(ip)
                    self._touch(key)
        return sorted(set(out))

    def reservations(self) -> Dict[str, Optional[Owner]]:
        if self._scanned is None:
            self.rebuild()
        assert self._scanned is not None
        return dict(self._scanned)

    def names(self) -> Set[str]:
        """Names in the network directory (cheap: no file is read)."""
        return set(os.listdir(self.dir))

    def reserve(self, ip: IPAddress, cid: str, ifname: str) -> bool:
        """Take `ip` for (cid, ifname); False if someone holds it already."""
        self._mark_dirty()
        name = str(ip)
        path = os.path.join(self.dir, name)
        content = f"{cid.strip()}\r\n{ifname}".encode()
        try:
            if self._reserve_tmp is None or self._reserve_tmp[0] != content:
                if self._reserve_tmp is not None:
                    self._unlink(self._reserve_tmp[1])
                tmp = self._tmp_path()
                self._write_new(tmp, content)
                self._reserve_tmp = (content, tmp)
            try:
                os.link(self._reserve_tmp[1], path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in LINK_UNSUPPORTED:
                    raise
                try:  # no hard links here: the reference's way (a crash may leave an empty file for GC)
                    self._write_new(path, content)
                except FileExistsError:
                    return False
        except OSError as exc:
            raise _io_error(f"cannot reserve {name}", exc) from None
        owner: Owner = (cid.strip(), ifname)
        self._owners[name] = owner
        if self._scanned is not None:
            self._scanned[name] = owner
        self._index_add(name, owner)
        return True

    def release(self, ip: str, owner: Optional[Owner]) -> bool:
        """Remove the lease file of `ip` (the caller has checked `owner` is the one to release)."""
        self._mark_dirty()
        try:
            removed = self._unlink(os.path.join(self.dir, ip))
        except OSError as exc:
            raise _io_error(f"cannot release {ip}", exc) from None
        self._owners.pop(ip, None)
        if self._scanned is not None:
            self._scanned.pop(ip, None)
        self._index_remove(ip, owner)
        return removed

    def last_reserved(self, index: int) -> Optional[str]:
        data = self._read(os.path.join(self.dir, f"{LAST_RESERVED}{index}"))
        return data.decode("utf-8", "replace").strip() if data else None

    def set_last_reserved(self, index: int, ip: IPAddress) -> None:
        self._mark_dirty()
        try:  # the reference reads the whole file as one address, with no newline
            self._write_atomic(os.path.join(self.dir, f"{LAST_RESERVED}{index}"), str(ip).encode())
        except OSError as exc:
            raise _io_error(f"cannot write {LAST_RESERVED}{index}", exc) from None

    def probe(self) -> None:
        """Raise OSError unless the store can be written (for STATUS)."""
        if not os.access(self.dir, os.W_OK):
            raise OSError(errno.EROFS, f"{self.dir} is not writable")
        tmp = self._tmp_path()
        self._write_new(tmp, b"probe")
        self._unlink(tmp)


def _shard_bytes(entries: Dict[str, Set[str]]) -> bytes:
    return "".join(f"{key} {' '.join(sorted(ips))}\n" for key, ips in sorted(entries.items()) if ips).encode()
