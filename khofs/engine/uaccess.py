"""What a system call of the emulated kernel may ask about its caller (include/linux/uaccess.h,
include/linux/capability.h, include/linux/file.h), as a protocol the edge implements.

The engine never touches a process: `khofs run` reads the caller's memory and files and
answers these questions for it, and the engine asks them in the order the kernel does, so an
EFAULT or EBADF comes exactly where Linux would give it. Tests implement it with plain data.
"""

from __future__ import annotations

import errno
import stat
from typing import Protocol

CAP_SYS_ADMIN = 21
CAP_SYS_BOOT = 22
CAP_SYSLOG = 34


class UserFile(Protocol):
    """An open file of the caller, as fdget() finds it."""

    @property
    def readable(self) -> bool:
        """FMODE_READ: opened for reading (not O_WRONLY, not O_PATH)."""
        ...

    @property
    def mode(self) -> int:
        """i_mode: the file type and permission bits."""
        ...

    @property
    def size(self) -> int:
        """i_size."""
        ...

    def read(self) -> bytes | int:
        """The whole file from offset 0, the caller's file position untouched; a negative
        errno when the read fails."""
        ...


class UserAccess(Protocol):
    """The calling task: its credentials, its memory and its file table."""

    def capable(self, cap: int) -> bool:
        """capable(): cap in the machine's initial user namespace."""
        ...

    def pid_ns_capable(self, cap: int) -> bool:
        """ns_capable(task_active_pid_ns(current)->user_ns, cap)."""
        ...

    def in_init_pid_ns(self) -> bool:
        """task_active_pid_ns(current) is the machine's initial pid namespace."""
        ...

    def copy_from_user(self, addr: int, size: int) -> bytes | None:
        """size bytes at addr, or None when any of them cannot be read (EFAULT)."""
        ...

    def copy_to_user(self, addr: int, data: bytes) -> bool:
        """Write data at addr: False when any of it cannot be written (EFAULT)."""
        ...

    def strncpy_from_user(self, addr: int, size: int) -> bytes | None:
        """The string at addr up to its NUL or size bytes, or None on a fault."""
        ...

    def fdget(self, fd: int) -> UserFile | None:
        """The open file at fd, or None when fd is not open (or an O_PATH fd)."""
        ...


def kernel_read_file_from_fd(user: UserAccess, fd: int, max_size: int) -> bytes | int:
    """fs/kernel_read_file.c kernel_read_file_from_fd: EBADF for a bad or unreadable fd;
    kernel_read_file then refuses what is not a regular file (EINVAL), an empty file (EINVAL)
    and one bigger than the buffer (EFBIG). (deny_write_access's ETXTBSY for a file someone
    has open for writing is not emulated: nothing here can see other processes' files.)"""
    file = user.fdget(fd) if fd >= 0 else None
    if file is None or not file.readable:
        return -errno.EBADF
    if not stat.S_ISREG(file.mode):
        return -errno.EINVAL
    if file.size <= 0:
        return -errno.EINVAL
    if file.size > max_size:
        return -errno.EFBIG
    data = file.read()
    if isinstance(data, int):
        return data
    return data if len(data) == file.size else -errno.EIO
