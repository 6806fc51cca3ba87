"""/proc/self/mountinfo, read as the kernel writes it (fs/proc_namespace.c show_mountinfo).

Paths are written with mangle(): space, tab, newline and backslash become octal escapes
(`\\040`, `\\011`, `\\012`, `\\134`); every other byte, UTF-8 or not, goes out as it is. So the
file is read as bytes, split on the separators the escapes protect, unescaped byte for byte,
and the paths decoded as the file system encodes them (os.fsdecode), so any path compares
equal to its own `os.path.realpath`.

Nothing here looks at what is mounted: a path is resolved without a stat of its last
component (`resolve`), since the stat of a FUSE mount whose daemon is stopped never returns.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(rb"\\([0-7]{3})")
MAXSYMLINKS = 40  # include/linux/namei.h
MINORBITS = 20  # include/linux/kdev_t.h: the kernel's dev_t is major << 20 | minor


def resolve(path: str | os.PathLike[str]) -> str:
    """os.path.realpath(path), but the last component is only readlink()ed, never stat()ed:
    lstat of a mount point asks the file system mounted there (a FUSE daemon that is stopped
    never answers), while readlink of a directory fails in the VFS without asking it."""
    current = os.path.abspath(os.fspath(path))
    for _ in range(MAXSYMLINKS):
        head, tail = os.path.split(current)
        head = os.path.realpath(head)
        if not tail:
            return head
        current = os.path.join(head, tail)
        try:
            target = os.readlink(current)
        except OSError:
            return current
        current = os.path.normpath(os.path.join(head, target))
    return current


def unescape(field: bytes) -> str:
    """One mangled field back to the path (or string) it was."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


class Mount(NamedTuple):
    """One line: where it is mounted, what, and with which options."""

    mount_point: str
    fstype: str
    source: str
    options: tuple[str, ...]  # the super block's options (`user_id=` for FUSE, ...)
    dev: int = 0  # the super block's s_dev (major:minor), as the kernel numbers it

    @classmethod
    def parse(cls, line: bytes) -> Mount:
        fields = line.split()
        sep = fields.index(b"-")
        major, _, minor = fields[2].partition(b":")
        return cls(unescape(fields[4]), unescape(fields[sep + 1]), unescape(fields[sep + 2]),
                   tuple(unescape(fields[sep + 3]).split(",")) if len(fields) > sep + 3 else (),
                   int(major) << MINORBITS | int(minor))

    @property
    def st_dev(self) -> int:
        """The files' st_dev, as stat() encodes the same device."""
        return os.makedev(self.dev >> MINORBITS, self.dev & ((1 << MINORBITS) - 1))

    def option(self, name: str) -> str | None:
        """The value of `name=...` among the super block's options."""
        prefix = name + "="
        return next((o.removeprefix(prefix) for o in self.options if o.startswith(prefix)), None)


def mounts(path: str = MOUNTINFO) -> list[Mount]:
    with open(path, "rb") as f:
        return [Mount.parse(line) for line in f if line.strip()]


def find(mountpoint: str | os.PathLike[str]) -> Mount | None:
    """What is mounted exactly at mountpoint (the last, topmost mount there), or None."""
    target = resolve(mountpoint)
    found = None
    for m in mounts():
        if m.mount_point == target:
            found = m
    return found


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    return find(mountpoint) is not None


def fstype(mountpoint: str | os.PathLike[str]) -> str | None:
    """The file system type mounted exactly at mountpoint, or None."""
    m = find(mountpoint)
    return m.fstype if m else None
