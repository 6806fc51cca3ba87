"""A process of the run as the emulated kernel's system calls see their caller (the
UserAccess protocol of khofs.engine.uaccess), read from the host's /proc.

Credentials: capable(cap) is the cap in CapEff *and* the caller in the machine's initial user
namespace (the host's when khofs runs as root, the run's own otherwise), so root inside a user
namespace of its own is refused as on a real machine. Memory comes from /proc/PID/mem (a range
that is not all mapped is a fault), open files from pidfd_getfd: the same open file, so its
access mode and type are exactly the caller's, read with pread so its offset stays put.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from khofs.run.namespace import ns_inode

SYS_PIDFD_GETFD = 438
PAGE = 4096
O_PATH = 0o10000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def pidfd_getfd(pid: int, fd: int) -> int | None:
    """A copy of the caller's fd in this process, or None (no such fd, or the task is gone)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        return int(got) if got >= 0 else None
    finally:
        os.close(pidfd)


def status_field(pid: int, name: str) -> str | None:
    """A line of /proc/PID/status, after its colon."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.strip()
    except OSError:
        return None
    return None


# The kernel's i_size of a file this machine serves itself, where FUSE's stat reports the
# data's length (khofs.run.run_tree.RunTree.inode_size); None for any other file.
OwnSize = Callable[[os.stat_result], "int | None"]


def _no_own_size(st: os.stat_result) -> int | None:
    return None


@dataclass
class TaskFile:
    """An open file of the caller, duplicated into this process."""

    fd: int
    flags: int
    own_size: OwnSize = _no_own_size

    @property
    def readable(self) -> bool:
        return self.flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)

    @property
    def mode(self) -> int:
        return os.fstat(self.fd).st_mode

    @property
    def size(self) -> int:
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            return 0
        own = self.own_size(st)
        return st.st_size if own is None else own

    def read(self) -> bytes | int:
        chunks, pos, size = [], 0, self.size
        try:
            while pos < size:
                chunk = os.pread(self.fd, min(size - pos, 1 << 24), pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
        except OSError as e:
            return -(e.errno or 5)
        return b"".join(chunks)


class Task:
    """The caller of one notification. `base_user_ns` and `init_pid_ns` are the inodes of
    the machine's initial user and pid namespaces; close() drops the files it borrowed."""

    def __init__(self, pid: int, base_user_ns: int, init_pid_ns: int,
                 own_size: OwnSize = _no_own_size) -> None:
        self.pid = pid
        self.base_user_ns = base_user_ns
        self.init_pid_ns = init_pid_ns
        self.own_size = own_size
        self._files: list[int] = []

    def close(self) -> None:
        for fd in self._files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()

    def has_cap(self, cap: int) -> bool:
        """cap in CapEff: capable in the caller's own user namespace."""
        value = status_field(self.pid, "CapEff")
        return value is not None and bool(int(value, 16) >> cap & 1)

    def _ns(self, kind: str) -> int | None:
        try:
            return ns_inode(self.pid, kind)
        except OSError:
            return None

    def capable(self, cap: int) -> bool:
        return self._ns("user") == self.base_user_ns and self.has_cap(cap)

    def in_init_pid_ns(self) -> bool:
        return self._ns("pid") == self.init_pid_ns

    def pid_ns_capable(self, cap: int) -> bool:
        """The machine's pid namespace belongs to its initial user namespace; a namespace
        of the caller's own, to the user namespace it made with it (taken to be its own)."""
        return self.capable(cap) if self.in_init_pid_ns() else self.has_cap(cap)

    def copy_from_user(self, addr: int, size: int) -> bytes | None:
        if size == 0:
            return b""
        try:
            fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, size, addr)
        except (OSError, OverflowError):
            return None
        finally:
            os.close(fd)
        return data if len(data) == size else None

    def copy_to_user(self, addr: int, data: bytes) -> bool:
        try:
            fd = os.open(f"/proc/{self.pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.pwrite(fd, data, addr) == len(data)
        except (OSError, OverflowError):
            return False
        finally:
            os.close(fd)

    def strncpy_from_user(self, addr: int, size: int) -> bytes | None:
        """Up to the NUL or size bytes, a page at a time: a read that runs into an unmapped
        page fails whole, while the string may end before it."""
        out = b""
        while len(out) < size:
            at = addr + len(out)
            chunk = self.copy_from_user(at, min(size - len(out), PAGE - at % PAGE))
            if chunk is None:
                return None
            head, nul, _ = chunk.partition(b"\0")
            out += head
            if nul:
                return out
        return out

    def fdget(self, fd: int) -> TaskFile | None:
        """fdget: an O_PATH fd is no file for a read (EBADF, as an unopened fd)."""
        try:
            with open(f"/proc/{self.pid}/fdinfo/{fd}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration, ValueError):
            return None
        if flags & O_PATH:
            return None
        dup = pidfd_getfd(self.pid, fd)
        if dup is None:
            return None
        self._files.append(dup)
        return TaskFile(dup, flags, self.own_size)
