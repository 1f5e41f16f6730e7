"""Memory tricks of pycni-server's pre-forked workers: owned pages, and counters shared across forks."""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Callable, Dict, Optional

MADV_POPULATE_WRITE = 23  # Linux >= 5.14; older kernels say EINVAL and pages fault in lazily


def madvise_function() -> Optional[Callable[[int, int, int], int]]:
    """libc's madvise through ctypes, looked up once in the server before forking; None without it."""
    try:
        import ctypes

        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (ImportError, OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def own_private_pages(madvise: Optional[Callable[[int, int, int], int]]) -> int:
    """Copy every private writable page of this freshly forked worker now, while it idles.

    After fork each page is shared copy-on-write with the server, and CPython
    writes to nearly all of them (reference counts), so the first request
    would take thousands of page faults: ~4 ms of a bridge ADD. Returns the
    bytes populated.
    """
    if madvise is None:
        return 0
    try:
        with open("/proc/self/maps") as maps:
            regions = maps.read().splitlines()
    except OSError:
        return 0  # no /proc: pages fault in lazily, and the worker must not die (the server would re-fork it)
    done = 0
    for line in regions:
        fields = line.split()
        if len(fields) < 2 or fields[1][1] != "w" or fields[1][3] != "p":
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if madvise(start, end - start, MADV_POPULATE_WRITE) == 0:
            done += end - start
    return done


class SharedCounters:
    """Counts that the server and its forked workers update and any of them reads (health reports them).

    A small shared mapping behind a POSIX record lock: lockf locks belong to
    processes, so forked workers sharing the descriptor still exclude each other.
    """

    NAMES = ("served", "workers")
    FORMAT = struct.Struct("%dq" % len(NAMES))

    def __init__(self) -> None:
        self._fd = os.memfd_create("pycni-server-counters", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self.FORMAT.size)
        self._map = mmap.mmap(self._fd, self.FORMAT.size)

    def read(self) -> Dict[str, int]:
        return dict(zip(self.NAMES, self.FORMAT.unpack_from(self._map)))

    def add(self, name: str, amount: int = 1) -> None:
        self._update(name, lambda old: old + amount)

    def set(self, name: str, value: int) -> None:
        self._update(name, lambda _old: value)

    def _update(self, name: str, change: Callable[[int], int]) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            values = self.read()
            values[name] = change(values[name])
            self.FORMAT.pack_into(self._map, 0, *(values[n] for n in self.NAMES))
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
