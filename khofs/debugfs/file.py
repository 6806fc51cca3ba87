"""debugfs file operations: simple attributes, show files and blobs.

Each kind opens into an `OpenFile` that holds what the kernel keeps in `struct file`
(the attribute's buffers, the seq_file's rendered text). Results are negative errnos or data.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from khofs.debugfs.inode import Debugfs, Dentry, FileOps, OpenFile, ReadResult
from khofs.lib.kstrtox import kstrtoull


def simple_read_from_buffer(data: bytes, size: int, off: int) -> ReadResult:
    """fs/libfs.c simple_read_from_buffer."""
    if off < 0:
        return -errno.EINVAL
    return data[off:off + size] if off < len(data) else b""


# --- simple attributes: DEFINE_DEBUGFS_ATTRIBUTE over fs/libfs.c simple_attr_* ---------

Getter = Callable[[], tuple[int, int]]
Setter = Callable[[int], int]

# simple_attr's get_buf and set_buf are char[24]
ATTR_BUF_LEN = 24


class SimpleAttr(FileOps):
    """An integer attribute formatted "%llu\\n" and written through kstrtoull(base 0)."""

    def __init__(self, get: Getter | None, set: Setter | None) -> None:
        self.get = get
        self.set = set

    def open(self, dentry: Dentry) -> OpenFile:
        return AttrFile(dentry, self)


class AttrFile(OpenFile):
    """simple_attr_open: nonseekable_open, with a per-open get buffer."""

    nonseekable = True

    def __init__(self, dentry: Dentry, attr: SimpleAttr) -> None:
        super().__init__(dentry)
        self.attr = attr
        self.get_buf = b""
        self.mutex = threading.Lock()  # attr->mutex

    def _read(self, size: int, off: int) -> ReadResult:
        """simple_attr_read: format on a read at offset 0, else continue from get_buf."""
        if self.attr.get is None:
            return -errno.EACCES
        with self.mutex:
            if not (off and self.get_buf):
                err, val = self.attr.get()
                if err:
                    return err
                self.get_buf = b"%d\n" % (val & (2**64 - 1))
            return simple_read_from_buffer(self.get_buf, size, off)

    def _write(self, data: bytes, off: int) -> int:
        """simple_attr_write: parse at most 23 bytes; claim the whole length on success."""
        if self.attr.set is None:
            return -errno.EACCES
        with self.mutex:
            err, val = kstrtoull(data[:ATTR_BUF_LEN - 1], 0)
            if err:
                return err
            ret = self.attr.set(val)
            return len(data) if ret == 0 else ret


# --- show files: DEFINE_SHOW_ATTRIBUTE over single_open + seq_read ---------------------

class SeqShow(FileOps):
    """A file rendered by a show function, like DEFINE_SHOW_ATTRIBUTE; it has no write."""

    def __init__(self, show: Callable[[], str]) -> None:
        self.show = show

    def open(self, dentry: Dentry) -> OpenFile:
        return ShowFile(dentry, self)

    def data_size(self) -> int:
        return len(self.show().encode())


class ShowFile(OpenFile):
    """fs/seq_file.c seq_read_iter: a read at 0, or away from where the last read ended,
    renders again; otherwise the open file's own copy is served."""

    def __init__(self, dentry: Dentry, ops: SeqShow) -> None:
        super().__init__(dentry)
        self.ops = ops
        self.buf: bytes | None = None
        self.read_pos = 0
        self.lock = threading.Lock()  # m->lock

    def _read(self, size: int, off: int) -> ReadResult:
        with self.lock:
            if self.buf is None or off == 0 or off != self.read_pos:
                self.buf = self.ops.show().encode()
            out = simple_read_from_buffer(self.buf, size, off)
            if isinstance(out, bytes):
                self.read_pos = off + len(out)
            return out


# --- blobs: debugfs_create_blob ------------------------------------------------------

class BlobData(Protocol):
    """Live memory behind a blob (the kernel's `void *data`)."""

    def read(self, off: int, size: int) -> bytes: ...

    def write(self, off: int, data: bytes) -> None: ...


@dataclass
class BlobWrapper:
    """struct debugfs_blob_wrapper."""

    data: BlobData
    size: int


class Blob(FileOps):
    def __init__(self, wrapper: BlobWrapper) -> None:
        self.wrapper = wrapper

    def data_size(self) -> int:
        return self.wrapper.size

    def open(self, dentry: Dentry) -> OpenFile:
        return BlobFile(dentry, self.wrapper)


class BlobFile(OpenFile):
    """read_file_blob / write_file_blob: the live bytes, no buffer of its own."""

    def __init__(self, dentry: Dentry, wrapper: BlobWrapper) -> None:
        super().__init__(dentry)
        self.wrapper = wrapper

    def _read(self, size: int, off: int) -> ReadResult:
        if off < 0:
            return -errno.EINVAL
        end = min(self.wrapper.size, off + size)
        return self.wrapper.data.read(off, end - off) if off < end else b""

    def _write(self, data: bytes, off: int) -> int:
        """simple_write_to_buffer: in place, clipped at the blob's end; 0 at or past it."""
        if off < 0:
            return -errno.EINVAL
        if off >= self.wrapper.size or not data:
            return 0
        data = data[:self.wrapper.size - off]
        self.wrapper.data.write(off, data)
        return len(data)


def create_blob(fs: Debugfs, name: str, mode: int, parent: Dentry | None,
                wrapper: BlobWrapper) -> Dentry | int:
    """debugfs_create_blob: the mode is masked with 0644 (blobs can be written since 6.7)."""
    return fs.create_file(name, mode & 0o644, parent, Blob(wrapper))
