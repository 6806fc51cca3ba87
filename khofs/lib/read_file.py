"""Reading an input file whole, bounded, as fs/kernel_read_file.c does for the kernel's own
(firmware, kexec images): only a regular file (kernel_read_file refuses anything else with
EINVAL), and never more than a maximum (EFBIG). A FIFO, /dev/zero or a directory named as a
DTB, DTS, producers or machine file is refused at once instead of blocking or growing
without end. Errors are OSError with a strerror fit for "PATH: strerror".
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

MiB = 1 << 20
TEXT_MAX = 16 * MiB  # a DTS, producers file or machine file

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open for reading; OSError unless it is a regular file. O_NONBLOCK only for the open,
    so that a FIFO without a writer does not block it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def too_big(limit: int) -> OSError:
    return OSError(errno.EFBIG, f"larger than khofs reads ({limit} bytes)")


def read_file(path: str | os.PathLike[str], limit: int = TEXT_MAX) -> bytes:
    """The whole of a regular file of at most `limit` bytes."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise too_big(limit)
    return data
