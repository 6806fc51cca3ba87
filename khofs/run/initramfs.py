"""--initrd: a newc cpio archive, gzip-compressed or not, as the kernel's init/initramfs.c
unpacks it into rootfs: one or more archives one after another (zero padding between them),
"070701" or "070702" headers, each ending with "TRAILER!!!".

Device nodes cannot be made in a user namespace, and as root they would be the host's
devices, so none is made: a node's name becomes an empty file, with the harmless host device
of the same number (null, zero, full, random, urandom, tty), the run's console (5,1) or the
machine's /dev/kmsg (1,11) bound onto it; any other stays an empty file.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from khofs.errors import InputError
from khofs.lib.read_file import read_file

NEWC_MAGICS = (b"070701", b"070702")
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
GZIP_MAGIC = b"\x1f\x8b"
# (major, minor) -> the host device that is safe to bind there
SAFE_DEVICES = {(1, 3): "/dev/null", (1, 5): "/dev/zero", (1, 7): "/dev/full",
                (1, 8): "/dev/random", (1, 9): "/dev/urandom", (5, 0): "/dev/tty"}
CONSOLE, KMSG = (5, 1), (1, 11)


class InitrdError(InputError):
    """--initrd FILE that is not a newc cpio archive."""


@dataclass(frozen=True)
class Entry:
    """One archive member."""

    name: str
    mode: int
    uid: int
    gid: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes  # a file's contents, a symlink's target


def _decompress(raw: bytes) -> bytes:
    """gzip members one after another, each alone or after an uncompressed archive."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"bad gzip data ({e})") from None


def _field(header: bytes, i: int) -> int:
    return int(header[6 + 8 * i:14 + 8 * i], 16)


def parse_newc(raw: bytes) -> list[Entry]:
    """Every member of the archive(s), in order; ValueError says what is wrong."""
    data = _decompress(raw)
    entries: list[Entry] = []
    pos, archives = 0, 0
    while pos < len(data):
        if data[pos] == 0:  # padding between archives
            pos += 1
            continue
        header = data[pos:pos + HEADER_LEN]
        if header[:6] not in NEWC_MAGICS or len(header) < HEADER_LEN:
            raise ValueError(f"no newc header at byte {pos}")
        try:
            fields = [_field(header, i) for i in range(13)]
        except ValueError:
            raise ValueError(f"a header field is not hex at byte {pos}") from None
        namesize, filesize = fields[11], fields[6]
        name_end = pos + HEADER_LEN + namesize
        name = data[pos + HEADER_LEN:name_end].rstrip(b"\0").decode("utf-8", "surrogateescape")
        body = name_end + (-name_end % 4)
        if body + filesize > len(data):
            raise ValueError(f"{name}: the archive ends inside it")
        pos = body + filesize + (-(body + filesize) % 4)
        if name == TRAILER:
            archives += 1
            continue
        entries.append(Entry(name, fields[1], fields[2], fields[3], fields[5],
                             (fields[9], fields[10]), data[body:body + filesize]))
    if not archives:
        raise ValueError("no TRAILER!!! entry")
    return entries


INITRD_MAX = 1 << 30  # what khofs unpacks: an initramfs is far smaller


def read_initrd(path: str) -> list[Entry]:
    """--initrd FILE, checked before anything starts: InitrdError in one line."""
    try:
        raw = read_file(path, INITRD_MAX)
    except OSError as e:
        raise InitrdError(f"--initrd {path}: {e.strerror}") from None
    try:
        return parse_newc(raw)
    except ValueError as e:
        raise InitrdError(f"--initrd {path}: not a newc cpio archive (gzip-compressed or "
                          f"not): {e}") from None


def _inside(root: str, name: str) -> str | None:
    """Where name lands under root: relative to it, never above it (None for the root)."""
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    return os.path.join(root, *parts) if parts else None


Bind = Callable[[str, str], None]  # (host source, path to bind it on)


def unpack(entries: list[Entry], root: str, bind: Bind, console: str, kmsg: str) -> None:
    """Make the members under root, as do_name/do_copy/do_symlink would (a member whose
    directory does not exist is skipped); directories get their times last (dir_utime),
    once nothing more is made in them."""
    dirs = []
    for entry in entries:
        path = _inside(root, entry.name)
        if path is None:
            continue
        kind = stat.S_IFMT(entry.mode)
        try:
            _make(path, entry, kind)
        except (FileExistsError, FileNotFoundError):
            continue  # as the kernel: a name that is there, or whose directory is not
        _attributes(path, entry, kind)
        if kind == stat.S_IFDIR:
            dirs.append((path, entry.mtime))
        source = {CONSOLE: console, KMSG: kmsg}.get(entry.rdev) or SAFE_DEVICES.get(entry.rdev)
        if kind == stat.S_IFCHR and source is not None:
            bind(source, path)  # after the attributes: they would go to the host's device
    for path, mtime in reversed(dirs):
        with contextlib.suppress(OSError):
            os.utime(path, (mtime, mtime))


def _make(path: str, entry: Entry, kind: int) -> None:
    if kind == stat.S_IFDIR:
        os.mkdir(path, stat.S_IMODE(entry.mode))
    elif kind == stat.S_IFLNK:
        os.symlink(os.fsdecode(entry.data.rstrip(b"\0")), path)
    elif kind == stat.S_IFREG:
        _write(path, entry.data)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        _write(path, b"")  # a placeholder: no device node is made
    elif kind == stat.S_IFIFO:
        os.mkfifo(path)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def _attributes(path: str, entry: Entry, kind: int) -> None:
    """Owner, mode and mtime as the archive says, where this namespace can set them."""
    with contextlib.suppress(OSError):
        os.lchown(path, entry.uid, entry.gid)
    if kind == stat.S_IFLNK:
        return
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IMODE(entry.mode))
    if kind == stat.S_IFREG:
        with contextlib.suppress(OSError):
            os.utime(path, (entry.mtime, entry.mtime))
