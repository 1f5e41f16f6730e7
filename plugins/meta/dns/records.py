"""pycni-dns record store: one directory per network under the state dir (default /run/pycni/dns).

Layout of `<stateDir>/<network>/`:
  records.json  the server settings and one entry per attachment; replaced atomically
                (temp file + rename), so the server always reads a whole file
  lock          flock'ed by every writer (plugin ADD/DEL/GC, the server before it exits)
  server.pid    the server's pid, written by the server once its sockets are bound
  generation    8 bytes, incremented after every save: the server maps it and compares it
                per query (no syscall), so a name is served as soon as ADD returns

Authority (who answers for a name): every entry keeps all the names it claimed; the
table picks one owner per name. A namespace-qualified name (`<pod>.<namespace>`, from
K8S_POD_NAMESPACE) outranks any bare claim (a pod name or an alias) of the same text;
among claims of the same rank the newest wins. A DEL removes only its own claims, so
when the owner of a name leaves, the previous live claimant owns it again. The server
answers from the table only under the network's domain. Standard library only
(plugins import this on every verb; no dnslib, no pyroute2).
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import re
import stat
import time
from contextlib import contextmanager
from pycni.plugins.core.record import FrozenRecord, Record

from pycni.plugins.core.config import network_name_problem
from pycni.plugins.core.errors import INVALID_CONFIG, IO_FAILURE, TRY_AGAIN_LATER, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Optional, Tuple

DEFAULT_STATE_DIR = "/run/pycni/dns"
RECORDS = "records.json"
LOCK = "lock"
PIDFILE = "server.pid"
GENERATION = "generation"
GENERATION_SIZE = 8
MAX_SERVER_PROCESSES = 16  # serverProcesses: the plugin refuses more, the server runs no more
LOCK_TIMEOUT_SECONDS = 30.0

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
MAX_NAME = 253


def dns_name_problem(name: str) -> str:
    """Why `name` (lowercase, no trailing dot) cannot be a DNS name, or ''."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    for label in name.split("."):
        if not _LABEL.match(label):
            return f"has an invalid label {label!r} (letters, digits, '_', '-'; 1-63 characters)"
    return ""


def normalize_name(name: str, domain: str) -> str:
    """Lowercase, without a trailing dot or the network's domain suffix."""
    name = name.strip().lower().rstrip(".")
    if name.endswith("." + domain):
        name = name[: -len(domain) - 1]
    return name


def parse_hostport(text: str, default_port: int = 53) -> Tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:53', '::1', '[::1]:53' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


class Entry(Record):
    """The names and addresses one attachment (container ID + ifname) registered."""

    __slots__ = ("container_id", "ifname", "names", "ips", "seq", "qualified")
    _defaults = {"seq": 0, "qualified": list}
    container_id: str
    ifname: str
    names: List[str]  # every name claimed, relative to the domain
    ips: List[str]
    seq: int
    qualified: List[str]  # the names among `names` that are namespace-qualified (outrank bare claims)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Entry":
        return cls(str(d["id"]), str(d.get("ifname", "")), [str(n) for n in d.get("names", [])],
                   [str(i) for i in d.get("ips", [])], int(d.get("seq", 0)),
                   [str(n) for n in d.get("qualified", [])])

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.container_id, "ifname": self.ifname, "names": self.names, "ips": self.ips,
                "seq": self.seq, "qualified": self.qualified}

    def rank(self, name: str) -> Tuple[bool, int]:
        """How strong this entry's claim on `name` is: qualified first, then newest."""
        return name in self.qualified, self.seq

    def matches(self, container_id: str, ifname: str) -> bool:
        return self.container_id == container_id and (not ifname or not self.ifname or self.ifname == ifname)


class Records(Record):
    """The whole content of records.json."""

    __slots__ = ("server", "entries", "seq")
    _defaults = {"server": dict, "entries": list, "seq": 0}
    server: Dict[str, Any]
    entries: List[Entry]
    seq: int

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Records":
        return cls(dict(d.get("server") or {}), [Entry.from_dict(e) for e in d.get("entries") or []],
                   int(d.get("seq", 0)))

    def to_dict(self) -> Dict[str, Any]:
        return {"server": self.server, "seq": self.seq, "entries": [e.to_dict() for e in self.entries]}

    def find(self, container_id: str, ifname: str) -> Optional[Entry]:
        for entry in self.entries:
            if entry.matches(container_id, ifname):
                return entry
        return None

    def put(self, entry: Entry) -> None:
        """Add or replace the attachment's entry (the newest claim of each of its names)."""
        self.remove(entry.container_id, entry.ifname)
        self.seq += 1
        entry.seq = self.seq
        self.entries.append(entry)

    def owners(self) -> Dict[str, Entry]:
        """name -> the entry that answers for it (see the module docstring)."""
        owners: Dict[str, Entry] = {}
        for entry in self.entries:
            for name in entry.names:
                current = owners.get(name)
                if current is None or entry.rank(name) > current.rank(name):
                    owners[name] = entry
        return owners

    def conflicts(self, entry: Entry) -> List[Tuple[str, Entry, List[Entry]]]:
        """(name, owner, other live claimants) for each of `entry`'s names that others claim too."""
        owners = self.owners()
        out = []
        for name in entry.names:
            others = [e for e in self.entries if e is not entry and name in e.names]
            if others:
                owner = owners[name]
                out.append((name, owner, [e for e in others + [entry] if e is not owner]))
        return out

    def remove(self, container_id: str, ifname: str) -> bool:
        before = len(self.entries)
        self.entries = [e for e in self.entries if not e.matches(container_id, ifname)]
        return len(self.entries) != before

    def keep_only(self, attachments: List[Tuple[str, str]]) -> List[Entry]:
        """GC: drop entries of attachments not listed; returns the dropped ones."""
        dropped = [e for e in self.entries if not any(e.matches(cid, ifn) for cid, ifn in attachments)]
        self.entries = [e for e in self.entries if e not in dropped]
        return dropped


class Table(FrozenRecord):
    """What the server answers from: name -> addresses, address -> names. Built once per change."""

    __slots__ = ("names", "ptr", "count")
    names: Dict[str, Tuple[List[str], List[str]]]  # relative name -> (IPv4 list, IPv6 list)
    ptr: Dict[str, List[str]]  # address text (canonical) -> relative names, newest owner first
    count: int  # entries, including ones without names (they keep the server alive)

    @classmethod
    def build(cls, records: Records) -> "Table":
        owners = records.owners()
        names: Dict[str, Tuple[List[str], List[str]]] = {}
        ptr: Dict[str, List[str]] = {}
        for entry in sorted(records.entries, key=lambda e: e.seq):  # a newer entry's address overrides
            v4: List[str] = []
            v6: List[str] = []
            for text in entry.ips:
                try:
                    addr = ipaddress.ip_address(text)
                except ValueError:
                    continue
                (v4 if addr.version == 4 else v6).append(str(addr))
            owned = [name for name in entry.names if owners.get(name) is entry]
            for name in owned:
                names[name] = (v4, v6)
            for addr_text in v4 + v6:
                if owned:
                    ptr[addr_text] = owned
                else:  # this entry answers for no name: its address tells nothing
                    ptr.pop(addr_text, None)
        return cls(names, ptr, len(records.entries))


def read_records(path: str) -> Records:
    """The records at `path`; empty when the file is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return Records.from_dict(json.loads(f.read()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Records()


class NetworkStore:
    """The state directory of one network."""

    def __init__(self, state_dir: str, network: str) -> None:
        problem = network_name_problem(network)
        if problem:
            raise CNIError(INVALID_CONFIG, problem)
        if not os.path.isabs(state_dir):
            raise CNIError(INVALID_CONFIG, f"stateDir: must be an absolute path, got {state_dir!r}")
        self.state_dir = os.path.normpath(state_dir)
        self.network = network
        self.dir = os.path.join(self.state_dir, network)
        if os.path.dirname(self.dir) != self.state_dir:  # belt and braces: never outside the state dir
            raise CNIError(INVALID_CONFIG, f"invalid network name {network!r}")
        self.records_path = os.path.join(self.dir, RECORDS)
        self.lock_path = os.path.join(self.dir, LOCK)
        self.pid_path = os.path.join(self.dir, PIDFILE)
        self.generation_path = os.path.join(self.dir, GENERATION)

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def ensure_dir(self) -> None:
        try:
            os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
            try:
                os.mkdir(self.dir, 0o755)
            except FileExistsError:
                pass
            st = os.lstat(self.dir)
        except OSError as exc:
            raise CNIError(IO_FAILURE, f"cannot create DNS state dir {self.dir}: {exc}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise CNIError(IO_FAILURE, f"DNS state path {self.dir} is not a directory")

    @contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
        """Hold the network's lock (creating the state dir when needed)."""
        self.ensure_dir()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CNIError(IO_FAILURE, f"cannot open lock {self.lock_path}: {exc}") from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise CNIError(IO_FAILURE, f"cannot lock {self.lock_path}: {exc}") from None
                    if time.monotonic() > deadline:
                        raise CNIError(TRY_AGAIN_LATER, f"timed out waiting for lock {self.lock_path}") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the flock

    def load(self) -> Records:
        return read_records(self.records_path)

    def save(self, records: Records) -> None:
        """Replace records.json atomically (none left: remove it); then tell the server."""
        self._write(records)
        self.bump_generation()

    def bump_generation(self) -> None:
        """Count one change in the generation file, in place (the server has it mapped)."""
        try:
            fd = os.open(self.generation_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            return  # the server also stats records.json now and then
        try:
            old = os.pread(fd, GENERATION_SIZE, 0)
            value = int.from_bytes(old, "little") + 1 if len(old) == GENERATION_SIZE else 1
            os.pwrite(fd, (value % (1 << 63)).to_bytes(GENERATION_SIZE, "little"), 0)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _write(self, records: Records) -> None:
        if not records.entries:
            try:
                os.unlink(self.records_path)
            except FileNotFoundError:
                pass
            return
        data = json.dumps(records.to_dict(), separators=(",", ":")).encode()
        tmp = f"{self.records_path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, self.records_path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CNIError(IO_FAILURE, f"cannot write {self.records_path}: {exc}") from None
