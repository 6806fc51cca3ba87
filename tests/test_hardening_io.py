"""Issue 13, D1 K1 K2: copies through sendfile, splice and copy_file_range lose nothing;
mmap and O_DIRECT as debugfs answers them, where FUSE lets khofs.

On this kernel FUSE serves sendfile and splice from the page cache up to i_size even for a
file opened with direct I/O (fuse_splice_read -> filemap_splice_read), so with debugfs's
i_size 0 they copied nothing. khofs reports the bytes a read gives as the size of the
seekable files (a known difference); the attribute file `finalize` is non-seekable, and
there sendfile fails with ESPIPE/EINVAL, which callers fall back on, as on debugfs.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening import BACKENDS, mounted

PRODUCERS = Path(__file__).parent.parent / "examples" / "demo" / "producers.toml"
SEEKABLE = ("kho/out/fdt", "kho/out/sub_fdts/demo", "kho/out/scratch_phys",
            "kho/out/scratch_len")


@pytest.fixture(params=BACKENDS)
def finalized(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path / "m", "--producers", str(PRODUCERS), backend=request.param) as mnt:
        (mnt / "kho/out/finalize").write_bytes(b"1\n")
        yield mnt


def _sendfile_all(src: Path, dst: Path, offset: int | None) -> bytes:
    """sendfile until it returns 0: from an offset (pread-like), or from the file position."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        while True:
            sent = os.sendfile(g.fileno(), f.fileno(), offset, 1 << 16)
            if not sent:
                break
            if offset is not None:
                offset += sent
    return dst.read_bytes()


@pytest.mark.mount
def test_copies_lose_nothing(finalized: Path, tmp_path: Path) -> None:
    for rel in SEEKABLE:
        src = finalized / rel
        want = src.read_bytes()
        assert want and os.stat(src).st_size == len(want), rel
        shutil.copyfile(src, tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() == want, rel
        r = subprocess.run(["cp", src, tmp_path / "cp"], capture_output=True, check=False)
        assert r.returncode == 0 and (tmp_path / "cp").read_bytes() == want, rel
        assert _sendfile_all(src, tmp_path / "sf", 0) == want, rel
        assert _sendfile_all(src, tmp_path / "sf", None) == want, rel
        with open(src, "rb") as f, open(tmp_path / "cfr", "wb") as g:
            try:
                os.copy_file_range(f.fileno(), g.fileno(), 1 << 16)
            except OSError as e:  # another file system: callers read instead, as from debugfs
                assert e.errno == errno.EXDEV
        r_fd, w_fd = os.pipe()
        try:
            with open(src, "rb") as f:
                assert os.splice(f.fileno(), w_fd, 1 << 16) == len(want), rel
            assert os.read(r_fd, 1 << 16) == want
        finally:
            os.close(r_fd)
            os.close(w_fd)


@pytest.mark.mount
def test_the_attribute_file_refuses_sendfile_so_callers_read(finalized: Path,
                                                              tmp_path: Path) -> None:
    fin = finalized / "kho/out/finalize"
    assert os.stat(fin).st_size == 0  # as debugfs
    fd, out = os.open(fin, os.O_RDONLY), os.open(tmp_path / "x", os.O_WRONLY | os.O_CREAT)
    try:
        for offset, err in ((0, errno.ESPIPE), (None, errno.EINVAL)):
            with pytest.raises(OSError) as e:
                os.sendfile(out, fd, offset, 4096)
            assert e.value.errno == err
    finally:
        os.close(fd)
        os.close(out)
    shutil.copyfile(fin, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"1\n"


libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
MAP_FAILED = ctypes.c_void_p(-1).value


def _mmap_errno(path: Path, flags: int) -> int:
    """mmap(2) of one page, as a C program makes it (Python's mmap looks at st_size first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, flags, fd, 0)
        if addr == MAP_FAILED:
            return ctypes.get_errno()
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(mmap.PAGESIZE))
        return 0
    finally:
        os.close(fd)


@pytest.mark.mount
def test_mmap_shared_is_enodev_as_on_debugfs(finalized: Path) -> None:
    """debugfs has no ->mmap: ENODEV. FUSE refuses MAP_SHARED of a direct-I/O file the same;
    MAP_PRIVATE it maps without asking khofs (a known difference)."""
    for rel in (*SEEKABLE, "kho/out/finalize"):
        assert _mmap_errno(finalized / rel, mmap.MAP_SHARED) == errno.ENODEV, rel
        assert _mmap_errno(finalized / rel, mmap.MAP_PRIVATE) == 0, rel


@pytest.mark.mount
def test_o_direct_is_einval_as_on_debugfs(finalized: Path) -> None:
    """do_dentry_open: no FMODE_CAN_ODIRECT on a debugfs file, so O_DIRECT opens fail."""
    for rel in (*SEEKABLE, "kho/out/finalize"):
        with pytest.raises(OSError) as e:
            os.open(finalized / rel, os.O_RDONLY | os.O_DIRECT)
        assert e.value.errno == errno.EINVAL, rel
    r = subprocess.run(["dd", f"if={finalized}/kho/out/fdt", "of=/dev/null", "iflag=direct"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert r.stderr == f"dd: failed to open '{finalized}/kho/out/fdt': Invalid argument\n"
    r = subprocess.run(["dd", "of=" + str(finalized / "kho/out/finalize"), "oflag=direct"],
                       input="0\n", capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert (finalized / "kho/out/finalize").read_bytes() == b"1\n"  # nothing written
