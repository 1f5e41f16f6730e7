"""Memory tricks of pycni-server's pre-forked workers: pages owned before the first request."""
from __future__ import annotations

from typing import Callable, Optional

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
