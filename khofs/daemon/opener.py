"""Who opens a file: what the FUSE edge knows of the caller of an open (fuse_get_context, the
open flags), for files whose contents or permission depend on it, as the kernel's
file_operations look at struct file's f_cred and f_flags.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from khofs.debugfs.inode import Dentry, FileOps, OpenFile


@dataclass(frozen=True)
class Opener:
    """Who opens a file and how (struct file's f_cred and f_flags), and whether the request
    in progress was interrupted (its caller got a signal)."""

    pid: int = 0
    flags: int = os.O_RDONLY
    capable: Callable[[int], bool] = field(default=lambda cap: True)
    interrupted: Callable[[], bool] = field(default=lambda: False)


class OpenerOps(FileOps):
    """file_operations whose open looks at the opener."""

    def open(self, dentry: Dentry) -> OpenFile | int:
        return self.open_as(dentry, Opener())

    @abstractmethod
    def open_as(self, dentry: Dentry, opener: Opener) -> OpenFile | int: ...
