"""The tree `khofs run` serves through FUSE: the running kernel's debugfs at /debug and the
machine files (khofs.run.machine_files) at /machine, under a root of its own. The run binds
/debug at /sys/kernel/debug and the machine files over /proc, /sys and /dev/kmsg.

It offers what the FUSE edge asks of a debugfs (lookup, readdir, the attribute changes),
each going to the tree the dentry belongs to.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable

from khofs.debugfs.inode import Debugfs, Dentry, Inode

ROOT_INO = (1 << 32) - 1
SUBTREES = ("debug", "machine")


class RunTree:
    def __init__(self, debug: Callable[[], Debugfs], machine: Debugfs, uid: int,
                 gid: int) -> None:
        self.debug = debug
        self.machine = machine
        now = time.time_ns()
        self.root = Dentry("", None, Inode(ROOT_INO, stat.S_IFDIR | 0o755, uid, gid, now, now,
                                           now, 2 + len(SUBTREES)))

    def _tree(self, name: str) -> Debugfs:
        return self.debug() if name == "debug" else self.machine

    def _owner(self, dentry: Dentry) -> Debugfs | None:
        """The tree a dentry belongs to (None: our own root)."""
        while dentry.parent is not None:
            dentry = dentry.parent
        if dentry is self.root:
            return None
        return self.machine if dentry is self.machine.root else self.debug()

    def inode_size(self, ino: int) -> int | None:
        """i_size of the inode numbered ino in either tree (the kernel's view of a file
        this mount serves, where FUSE reports the data's length), or None."""
        for tree in (self.debug(), self.machine):
            dentry = tree.find_ino(ino)
            if dentry is not None:
                return dentry.inode.size
        return None

    def lookup(self, path: str) -> Dentry | None:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            return self.root
        if parts[0] not in SUBTREES:
            return None
        return self._tree(parts[0]).lookup("/" + "/".join(parts[1:]))

    def readdir(self, dentry: Dentry) -> list[str]:
        owner = self._owner(dentry)
        return list(SUBTREES) if owner is None else owner.readdir(dentry)

    # the attribute changes: our root's own inode is changed as the machine tree's would be
    def chmod(self, dentry: Dentry, mode: int) -> int:
        return (self._owner(dentry) or self.machine).chmod(dentry, mode)

    def chown(self, dentry: Dentry, uid: int, gid: int) -> int:
        return (self._owner(dentry) or self.machine).chown(dentry, uid, gid)

    def utimens(self, dentry: Dentry, atime_ns: int | None, mtime_ns: int | None) -> int:
        return (self._owner(dentry) or self.machine).utimens(dentry, atime_ns, mtime_ns)

    def truncate(self, dentry: Dentry, length: int) -> int:
        return (self._owner(dentry) or self.machine).truncate(dentry, length)
