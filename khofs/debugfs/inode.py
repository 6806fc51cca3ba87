"""debugfs dentries and inodes: the tree, creation, removal and lookup.

Mirrors fs/debugfs/inode.c over the libfs helpers it uses (fs/libfs.c, simple_* operations).
Errors are negative errno results, as in the kernel.
"""

from __future__ import annotations

import errno
import itertools
import stat
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

S_IALLUGO = 0o7777


@dataclass
class Inode:
    """The attributes `stat` reports; debugfs files always have i_size 0."""

    ino: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    size: int = 0  # i_size: 0 for every debugfs file, unless someone truncates it

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(eq=False)
class Dentry:
    """A name in the tree; `removed` is set by debugfs_remove so open files see EIO."""

    name: str
    parent: Dentry | None
    inode: Inode
    fops: FileOps | None = None
    children: dict[str, Dentry] = field(default_factory=dict)
    removed: bool = False

    def path(self) -> str:
        if self.parent is None:
            return "/"
        parent = self.parent.path()
        return f"{parent.rstrip('/')}/{self.name}"


class Debugfs:
    """One debugfs super block: the root and everything created under it.

    `lock` stands for the inode locks and the dcache: it guards the tree, never the data.
    """

    def __init__(self, uid: int, gid: int, mode: int = 0o700, first_ino: int = 1) -> None:
        self.uid = uid
        self.gid = gid
        self.lock = threading.RLock()
        # first_ino: another tree served beside this one (khofs run) keeps its own numbers
        self._ino = itertools.count(first_ino)
        self.root = Dentry("", None, self._new_inode(stat.S_IFDIR | mode))
        # debugfs_fill_super: the root starts with nlink 2 ("." and its entry in the parent)
        self.root.inode.nlink = 2

    # fs/debugfs/inode.c: debugfs_get_inode + simple_inode_init_ts
    def _new_inode(self, mode: int) -> Inode:
        now = time.time_ns()
        nlink = 2 if stat.S_ISDIR(mode) else 1
        return Inode(next(self._ino), mode, self.uid, self.gid, now, now, now, nlink)

    # fs/debugfs/inode.c: start_creating + end_creating
    def _create(self, name: str, parent: Dentry | None, mode: int,
                fops: FileOps | None) -> Dentry | int:
        parent = parent or self.root
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            return -errno.EACCES  # lookup_one_len refuses the name
        with self.lock:
            if parent.removed:
                return -errno.ENOENT
            if name in parent.children:
                # "debugfs: File '%s' in directory '%s' already present!"
                return -errno.EEXIST
            dentry = Dentry(name, parent, self._new_inode(mode), fops)
            parent.children[name] = dentry
            if stat.S_ISDIR(mode):
                parent.inode.nlink += 1  # debugfs_create_dir: inc_nlink(parent)
            return dentry

    def create_dir(self, name: str, parent: Dentry | None) -> Dentry | int:
        """debugfs_create_dir: 0755 directory with simple_dir_operations."""
        return self._create(name, parent, stat.S_IFDIR | 0o755, None)

    def create_file(self, name: str, mode: int, parent: Dentry | None,
                    fops: FileOps) -> Dentry | int:
        """debugfs_create_file: a regular file; a mode without a file type means S_IFREG."""
        return self._create(name, parent, stat.S_IFREG | (mode & S_IALLUGO), fops)

    def remove(self, dentry: Dentry) -> None:
        """debugfs_remove (recursive since 5.x): unlink the subtree; open files then get EIO."""
        with self.lock:
            self._remove_locked(dentry)

    def _remove_locked(self, dentry: Dentry) -> None:
        for child in list(dentry.children.values()):
            self._remove_locked(child)
        parent = dentry.parent
        if parent is None or dentry.removed:
            return
        dentry.removed = True
        if parent.children.get(dentry.name) is dentry:
            del parent.children[dentry.name]
            if dentry.inode.is_dir():
                parent.inode.nlink -= 1

    def lookup(self, path: str) -> Dentry | None:
        """Walk an absolute path from the root (the VFS's lookup through simple_lookup)."""
        with self.lock:
            node = self.root
            for part in path.split("/"):
                if part in ("", "."):
                    continue
                if part == "..":
                    node = node.parent or node
                    continue
                child = node.children.get(part)
                if child is None:
                    return None
                node = child
            return node

    def find_ino(self, ino: int) -> Dentry | None:
        """The dentry whose inode is numbered ino, or None."""
        with self.lock:
            stack = [self.root]
            while stack:
                dentry = stack.pop()
                if dentry.inode.ino == ino:
                    return dentry
                stack.extend(dentry.children.values())
        return None

    def readdir(self, dentry: Dentry) -> list[str]:
        """dcache_readdir: newest entry first, as d_children is a head-inserted list."""
        with self.lock:
            return list(reversed(dentry.children))

    # fs/libfs.c simple_setattr -> setattr_copy: what chmod, chown, utimens and O_TRUNC change.
    def chmod(self, dentry: Dentry, mode: int) -> int:
        with self.lock:
            inode = dentry.inode
            inode.mode = (inode.mode & ~S_IALLUGO) | (mode & S_IALLUGO)
            inode.ctime_ns = time.time_ns()
            return 0

    def chown(self, dentry: Dentry, uid: int, gid: int) -> int:
        """uid or gid of -1 leaves that one unchanged, as chown(2)."""
        with self.lock:
            inode = dentry.inode
            if uid != -1:
                inode.uid = uid
            if gid != -1:
                inode.gid = gid
            inode.ctime_ns = time.time_ns()
            return 0

    def utimens(self, dentry: Dentry, atime_ns: int | None, mtime_ns: int | None) -> int:
        """The times a utimensat sets (None: left alone); ctime moves whatever is set."""
        with self.lock:
            inode = dentry.inode
            if atime_ns is not None:
                inode.atime_ns = atime_ns
            if mtime_ns is not None:
                inode.mtime_ns = mtime_ns
            inode.ctime_ns = time.time_ns()
            return 0

    def truncate(self, dentry: Dentry, length: int) -> int:
        """do_truncate -> simple_setattr: i_size takes the length (the data does not change)
        and mtime and ctime move, as `echo 1 > finalize` shows."""
        with self.lock:
            if dentry.inode.is_dir():
                return -errno.EISDIR
            if length < 0:
                return -errno.EINVAL
            dentry.inode.size = length
            dentry.inode.mtime_ns = dentry.inode.ctime_ns = time.time_ns()
            return 0


# --- struct file and struct file_operations: what an open makes ----------------------

ReadResult = bytes | int


class OpenFile(ABC):
    """One open file description. Reads and writes after debugfs_remove fail with EIO, as
    debugfs_file_get refuses a removed dentry."""

    nonseekable = False

    def __init__(self, dentry: Dentry) -> None:
        self.dentry = dentry

    def read(self, size: int, off: int) -> ReadResult:
        if self.dentry.removed:
            return -errno.EIO
        return self._read(size, off)

    def write(self, data: bytes, off: int) -> int:
        if self.dentry.removed:
            return -errno.EIO
        return self._write(data, off)

    @abstractmethod
    def _read(self, size: int, off: int) -> ReadResult: ...

    def _write(self, data: bytes, off: int) -> int:
        # fs/read_write.c vfs_write: no ->write method, so no FMODE_CAN_WRITE
        return -errno.EINVAL


class FileOps(ABC):
    """struct file_operations: what an open does for this file."""

    @abstractmethod
    def open(self, dentry: Dentry) -> OpenFile | int: ...

    def data_size(self) -> int | None:
        """How many bytes a read from offset 0 gives now, where that is cheap to know and
        the file is seekable; None otherwise (FUSE then reports i_size)."""
        return None
