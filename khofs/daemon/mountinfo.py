"""/proc/self/mountinfo, read as the kernel writes it (fs/proc_namespace.c show_mountinfo).

Paths are written with mangle(): space, tab, newline and backslash become octal escapes
(`\\040`, `\\011`, `\\012`, `\\134`); every other byte, UTF-8 or not, goes out as it is. So the
file is read as bytes, split on the separators the escapes protect, unescaped byte for byte,
and the paths decoded as the file system encodes them (os.fsdecode), so any path compares
equal to its own `os.path.realpath`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(rb"\\([0-7]{3})")


def unescape(field: bytes) -> str:
    """One mangled field back to the path (or string) it was."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


@dataclass(frozen=True)
class Mount:
    """One line: where it is mounted, what, and with which options."""

    mount_point: str
    fstype: str
    source: str
    options: tuple[str, ...]  # the super block's options (`user_id=` for FUSE, ...)

    @classmethod
    def parse(cls, line: bytes) -> Mount:
        fields = line.split()
        sep = fields.index(b"-")
        return cls(unescape(fields[4]), unescape(fields[sep + 1]), unescape(fields[sep + 2]),
                   tuple(unescape(fields[sep + 3]).split(",")) if len(fields) > sep + 3 else ())

    def option(self, name: str) -> str | None:
        """The value of `name=...` among the super block's options."""
        prefix = name + "="
        return next((o.removeprefix(prefix) for o in self.options if o.startswith(prefix)), None)


def mounts(path: str = MOUNTINFO) -> list[Mount]:
    with open(path, "rb") as f:
        return [Mount.parse(line) for line in f if line.strip()]


def find(mountpoint: str | os.PathLike[str]) -> Mount | None:
    """What is mounted exactly at mountpoint (the last, topmost mount there), or None."""
    target = os.path.realpath(mountpoint)
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
