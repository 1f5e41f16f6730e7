"""Opening CNI_NETNS safely: a path that is not a network namespace is refused before it can block or mislead.

A FIFO at CNI_NETNS made a plain open() wait forever (ADD and DEL both hung);
a regular file, a directory or /dev/null failed only at setns(), after IPAM
had allocated, with a bare "Invalid argument". Here the path is stat()ed
first (only regular files pass: an nsfs bind mount or /proc/<pid>/ns/net
stats as one), opened with O_NONBLOCK (a FIFO swapped in after the stat
cannot block either), and the open file must answer NS_GET_NSTYPE with
CLONE_NEWNET: only nsfs files know that ioctl, and it names the kind of
namespace, so a mount or UTS namespace is refused too.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h (kernel 4.11+)
CLONE_NEWNET = 0x40000000
_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


class NotANetns(OSError):
    """The path exists but is not a network namespace (the message says what it is)."""


def _file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def open_netns_fd(path: str) -> int:
    """An O_RDONLY|O_CLOEXEC descriptor of the network namespace at `path`.

    Raises FileNotFoundError when the path is missing, NotANetns when it is
    anything else than a network namespace; never blocks."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotANetns(errno.EINVAL, f"{path} is a {_file_kind(st.st_mode)}, not a network namespace")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            raise NotANetns(errno.EINVAL, f"{path} is not a network namespace (not an nsfs file)") from None
        if kind != CLONE_NEWNET:
            raise NotANetns(errno.EINVAL, f"{path} is a namespace of another kind (type {kind:#x}), "
                                          f"not a network namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd
