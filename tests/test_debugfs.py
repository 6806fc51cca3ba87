"""The debugfs layer on its own: tree, modes, and the kernel's read/write semantics."""

from __future__ import annotations

import errno
import stat

from khofs.debugfs.file import BlobWrapper, SeqShow, SimpleAttr, create_blob
from khofs.debugfs.inode import Debugfs, Dentry


class Bytes:
    def __init__(self, data: bytes) -> None:
        self.buf = bytearray(data)

    def read(self, off: int, size: int) -> bytes:
        return bytes(self.buf[off:off + size])

    def write(self, off: int, data: bytes) -> None:
        self.buf[off:off + len(data)] = data


def created(x: Dentry | int) -> Dentry:
    assert isinstance(x, Dentry), x
    return x


def test_tree_modes_nlink_and_order() -> None:
    fs = Debugfs(1000, 1000)
    assert fs.root.inode.mode == stat.S_IFDIR | 0o700
    kho = created(fs.create_dir("kho", None))
    out = created(fs.create_dir("out", kho))
    created(fs.create_dir("sub", out))
    created(fs.create_file("f", 0o600, out, SeqShow(lambda: "")))
    assert kho.inode.mode == stat.S_IFDIR | 0o755
    assert out.inode.nlink == 3 and kho.inode.nlink == 3 and fs.root.inode.nlink == 3
    assert fs.readdir(out) == ["f", "sub"]  # newest first, like dcache_readdir
    assert fs.create_dir("sub", out) == -errno.EEXIST
    assert fs.lookup("/kho/out/f") is out.children["f"]
    assert fs.lookup("/kho/nope") is None
    fs.remove(kho)
    assert fs.root.inode.nlink == 2 and fs.lookup("/kho") is None


def test_blob_mode_masked_and_live() -> None:
    fs = Debugfs(0, 0)
    data = Bytes(b"0123456789")
    blob = created(create_blob(fs, "b", 0o777, None, BlobWrapper(data, 8)))
    assert blob.inode.mode == stat.S_IFREG | 0o644
    assert blob.fops is not None
    f = blob.fops.open(blob)
    assert not isinstance(f, int)
    assert f.read(100, 0) == b"01234567"
    assert f.read(100, 6) == b"67" and f.read(5, 8) == b""
    assert f.write(b"abcdef", 5) == 3 and data.buf == bytearray(b"01234abc89")
    assert f.write(b"x", 8) == 0 and f.write(b"x", -1) == -errno.EINVAL
    fs.remove(blob)
    assert f.read(1, 0) == -errno.EIO and f.write(b"x", 0) == -errno.EIO


def _attr(value: list[int], result: int = 0) -> SimpleAttr:
    def get() -> tuple[int, int]:
        return 0, value[0]

    def set_(v: int) -> int:
        if not result:
            value[0] = v
        return result

    return SimpleAttr(get, set_)


def test_simple_attr_read_is_per_open_and_rendered_at_offset_zero() -> None:
    fs = Debugfs(0, 0)
    value = [7]
    d = created(fs.create_file("a", 0o600, None, _attr(value)))
    assert d.fops is not None
    f = d.fops.open(d)
    assert not isinstance(f, int) and f.nonseekable
    assert f.read(1, 0) == b"7"
    value[0] = 12
    assert f.read(10, 1) == b"\n"  # continued from this open's buffer
    assert f.read(10, 0) == b"12\n"  # offset 0 formats again


def test_simple_attr_write_parses_23_bytes_and_claims_all() -> None:
    fs = Debugfs(0, 0)
    value = [0]
    d = created(fs.create_file("a", 0o600, None, _attr(value)))
    assert d.fops is not None
    f = d.fops.open(d)
    assert not isinstance(f, int)
    assert f.write(b"1\0", 0) == 2 and value[0] == 1
    assert f.write(b"0x10\n", 0) == 5 and value[0] == 16
    assert f.write(b"5" + b"\0" * 100, 0) == 101 and value[0] == 5
    assert f.write(b"1" * 23 + b"junk", 0) == -errno.ERANGE
    assert f.write(b"-1", 0) == -errno.EINVAL and value[0] == 5
    assert f.write(b"", 0) == -errno.EINVAL


def test_simple_attr_write_error_from_setter_passes_through() -> None:
    fs = Debugfs(0, 0)
    d = created(fs.create_file("a", 0o600, None, _attr([0], -errno.EEXIST)))
    assert d.fops is not None
    f = d.fops.open(d)
    assert not isinstance(f, int)
    assert f.write(b"1\n", 0) == -errno.EEXIST


def test_show_file_renders_per_open_and_refuses_writes() -> None:
    fs = Debugfs(0, 0)
    text = ["0x1\n0x2\n"]
    d = created(fs.create_file("s", 0o400, None, SeqShow(lambda: text[0])))
    assert d.fops is not None
    f = d.fops.open(d)
    assert not isinstance(f, int) and not f.nonseekable
    assert f.read(4, 0) == b"0x1\n"
    text[0] = "changed\n"
    assert f.read(100, 4) == b"0x2\n"  # same open, same copy
    assert f.write(b"1", 0) == -errno.EINVAL


def test_setattr_chmod_chown_truncate() -> None:
    fs = Debugfs(0, 0)
    d = created(fs.create_file("a", 0o600, None, _attr([0])))
    before = d.inode.mtime_ns
    assert fs.chmod(d, 0o4644) == 0 and d.inode.mode == stat.S_IFREG | 0o4644
    assert fs.chown(d, 5, -1) == 0 and (d.inode.uid, d.inode.gid) == (5, 0)
    assert fs.truncate(d, 0) == 0 and d.inode.size == 0 and d.inode.mtime_ns >= before
    assert fs.truncate(fs.root, 0) == -errno.EISDIR
