"""Whether a pycni-server worker may serve another request: its process state is as it was.

Forking a worker per request costs more than the request (fork, then copy-on-write faults on
nearly every page: CPython writes reference counts everywhere), so a worker serves requests
one after another. Isolation is kept by checking, after every request, that the request left
nothing behind in the process: same network and mount namespaces, working directory,
descriptors, environment, a single thread, no child, bounded memory. A worker whose state
changed exits instead (the server forks a fresh one); so does one that served its quota.
"""
from __future__ import annotations

import os
from typing import Dict, FrozenSet, NamedTuple, Optional

MEMORY_GROWTH_LIMIT = 64 << 20  # bytes of resident memory a worker may gain over its life
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ProcessState(NamedTuple):
    netns: int  # inode of the calling thread's network namespace
    mntns: int
    cwd: str
    fds: FrozenSet[str]
    environ: Dict[bytes, bytes]


def _ns_inode(kind: str) -> int:
    return os.stat(f"/proc/thread-self/ns/{kind}").st_ino


def _fds() -> FrozenSet[str]:
    # listdir opens a descriptor for the listing; it is the same number each time
    return frozenset(os.listdir("/proc/self/fd"))


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def snapshot() -> ProcessState:
    """This worker's state before its first request."""
    return ProcessState(_ns_inode("net"), _ns_inode("mnt"), os.getcwd(), _fds(), dict(os.environb))


def changed(before: ProcessState, resident_at_start: int) -> Optional[str]:
    """What a request changed in this process (None: nothing; the worker may serve another)."""
    try:
        now = snapshot()
        threads = len(os.listdir("/proc/self/task"))
        resident = resident_bytes()
        child = _child_left()
    except OSError as exc:
        return f"cannot read its own state: {exc}"
    for field in ProcessState._fields:
        if getattr(now, field) != getattr(before, field):
            return f"its {field} changed"
    if threads != 1:
        return f"{threads} threads"
    if child:
        return "a child process is left"
    if resident - resident_at_start > MEMORY_GROWTH_LIMIT:
        return f"resident memory grew by {(resident - resident_at_start) >> 20} MiB"
    return None


def _child_left() -> bool:
    """A child still running or not reaped (requests wait for what they exec; one reaped here
    was left all the same)."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True
