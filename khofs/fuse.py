"""The FUSE edge: serves a debugfs tree through fusepy (libfuse2).

This is the only module that imports the FUSE binding. It maps FUSE calls onto the debugfs
layer and turns its negative errnos into FuseOSError. Every open uses direct I/O, because
debugfs files report size 0 and the page cache would read nothing; attribute files are opened
non-seekable, as simple_attr_open does.

The tree is whatever the running kernel's is: `serve` takes a function returning it and a
lock; every FUSE call holds the lock from start to end (a kexec takes it too), so each call
sees one kernel, and open files of a kernel that is gone read EIO, as the engine makes them.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import fuse as fusepy

from khofs.debugfs.file import OpenFile
from khofs.debugfs.inode import Debugfs, Dentry

log = logging.getLogger("khofs.fuse")

BACKEND = f"fusepy {getattr(fusepy, '__version__', '')} over libfuse2".replace("  ", " ")
DEBUGFS_MAGIC = 0x64626720
NAME_MAX = 255
MAX_WRITE = 128 * 1024


def _check(result: int) -> int:
    if result < 0:
        raise fusepy.FuseOSError(-result)
    return result


def _constant(fs: Debugfs) -> Callable[[], Debugfs]:
    def current() -> Debugfs:
        return fs

    return current


class DebugfsOperations(fusepy.Operations):  # type: ignore[misc]
    """fusepy operations over one Debugfs. Namespace changes are refused as debugfs's
    simple_dir_inode_operations refuse them: EPERM, and EACCES for O_CREAT of a new name."""

    use_ns = True

    def __init__(self, fs: Debugfs | Callable[[], Debugfs], page_size: int,
                 on_ready: Callable[[], None] | None = None,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        self._current: Callable[[], Debugfs] = _constant(fs) if isinstance(fs, Debugfs) else fs
        self.page_size = page_size
        self.on_ready = on_ready
        self.handles: dict[int, OpenFile] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self._tree_lock: AbstractContextManager[Any] = lock or nullcontext()

    @property
    def fs(self) -> Debugfs:
        """The running kernel's tree: one and the same for the whole call, since the call
        holds the lock a kexec takes."""
        return self._current()

    def __call__(self, op: str, *args: Any) -> Any:
        # fusepy answers an unexpected exception with EINVAL and hides it: log it, say EIO.
        try:
            with self._tree_lock:
                return super().__call__(op, *args)
        except fusepy.FuseOSError:
            raise
        except Exception:
            log.exception("unexpected error in FUSE operation %s%r", op, args[:1])
            raise fusepy.FuseOSError(errno.EIO) from None

    def init(self, path: str) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def _dentry(self, path: str) -> Dentry:
        dentry = self.fs.lookup(path)
        if dentry is None:
            raise fusepy.FuseOSError(errno.ENOENT)
        return dentry

    # --- attributes -----------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        inode = self._dentry(path).inode
        return {
            "st_ino": inode.ino, "st_mode": inode.mode, "st_nlink": inode.nlink,
            "st_uid": inode.uid, "st_gid": inode.gid, "st_size": inode.size,
            "st_blocks": 0, "st_blksize": self.page_size,
            "st_atime": inode.atime_ns, "st_mtime": inode.mtime_ns, "st_ctime": inode.ctime_ns,
        }

    def chmod(self, path: str, mode: int) -> int:
        return _check(self.fs.chmod(self._dentry(path), mode))

    def chown(self, path: str, uid: int, gid: int) -> int:
        return _check(self.fs.chown(self._dentry(path), uid, gid))

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            now = time.time_ns()
            times = (now, now)
        return _check(self.fs.utimens(self._dentry(path), times[0], times[1]))

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return _check(self.fs.truncate(self._dentry(path), length))

    def statfs(self, path: str) -> dict[str, int]:
        """simple_statfs: debugfs reports its magic, the page size and NAME_MAX, no blocks."""
        return {"f_bsize": self.page_size, "f_frsize": self.page_size, "f_namemax": NAME_MAX}

    # --- directories ----------------------------------------------------------------

    def readdir(self, path: str, fh: Any) -> list[str]:
        dentry = self._dentry(path)
        if not dentry.inode.is_dir():
            raise fusepy.FuseOSError(errno.ENOTDIR)
        return [".", ".."] + self.fs.readdir(dentry)

    def opendir(self, path: str) -> int:
        self._dentry(path)
        return 0

    def releasedir(self, path: str, fh: Any) -> int:
        return 0

    # --- files ----------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        dentry = self._dentry(path)
        if dentry.fops is None:
            raise fusepy.FuseOSError(errno.EISDIR)
        of = dentry.fops.open(dentry)
        if isinstance(of, int):
            raise fusepy.FuseOSError(-of)
        with self._lock:
            fh = next(self._fh)
            self.handles[fh] = of
        fi.fh = fh
        fi.direct_io = 1
        fi.nonseekable = int(of.nonseekable)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        """O_CREAT of a missing name: debugfs directories have no ->create (EACCES)."""
        raise fusepy.FuseOSError(errno.EACCES)

    def _handle(self, fi: Any) -> OpenFile:
        of = self.handles.get(fi.fh)
        if of is None:
            raise fusepy.FuseOSError(errno.EBADF)
        return of

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        out = self._handle(fi).read(size, offset)
        if isinstance(out, int):
            raise fusepy.FuseOSError(-out)
        return out

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return _check(self._handle(fi).write(data, offset))

    def flush(self, path: str, fi: Any) -> int:
        return 0

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            self.handles.pop(fi.fh, None)
        return 0

    # --- namespace changes: vfs_* find no inode operation and fail -------------------

    def mkdir(self, path: str, mode: int) -> int:
        raise fusepy.FuseOSError(errno.EPERM)

    def rmdir(self, path: str) -> int:
        raise fusepy.FuseOSError(errno.EPERM)

    def unlink(self, path: str) -> int:
        raise fusepy.FuseOSError(errno.EPERM)

    def rename(self, old: str, new: str) -> int:
        raise fusepy.FuseOSError(errno.EPERM)

    def link(self, target: str, source: str) -> int:
        raise fusepy.FuseOSError(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise fusepy.FuseOSError(errno.EPERM)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise fusepy.FuseOSError(errno.EPERM)

    def readlink(self, path: str) -> str:
        self._dentry(path)
        raise fusepy.FuseOSError(errno.EINVAL)


def serve(tree: Debugfs | Callable[[], Debugfs], mountpoint: str, page_size: int, *,
          lock: AbstractContextManager[Any] | None = None, allow_other: bool = False,
          debug: bool = False, on_ready: Callable[[], None] | None = None) -> None:
    """Mount and serve until unmounted or signalled (libfuse handles SIGTERM and SIGINT)."""
    ops = DebugfsOperations(tree, page_size, on_ready, lock)
    options: dict[str, Any] = {
        "foreground": True, "nothreads": False, "debug": debug,
        "fsname": "khofs", "subtype": "khofs", "default_permissions": True,
        "use_ino": True, "entry_timeout": 0, "attr_timeout": 0, "negative_timeout": 0,
        # libfuse2 splits writes into 4 KiB pieces unless big_writes; each piece would be
        # parsed on its own by simple_attr_write. 128 KiB is libfuse2's ceiling.
        "big_writes": True, "max_write": MAX_WRITE,
    }
    if allow_other:
        options["allow_other"] = True
    fusepy.FUSE(ops, os.fspath(mountpoint), raw_fi=True, **options)


