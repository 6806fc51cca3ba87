"""Through a real mount: `finalize` (spec section 4), show files and blobs (section 5)."""

from __future__ import annotations

import errno
import os
import struct
import threading
from pathlib import Path

import libfdt
import pytest

from tests.helpers import sh, write_errno

pytestmark = pytest.mark.mount

OUT = "kho/out"


def write_once(path: Path, data: bytes, flags: int = os.O_WRONLY) -> int:
    fd = os.open(path, flags)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def test_read_finalize(mnt: Path) -> None:
    fin = mnt / OUT / "finalize"
    assert fin.read_bytes() == b"0\n"
    assert sh(f"cat {fin}").stdout == "0\n"
    assert sh(f"dd if={fin} bs=1 status=none").stdout == "0\n"


def test_echo_cycle_and_state_errnos(mnt: Path) -> None:
    fin = mnt / OUT / "finalize"
    r = sh(f"echo 0 > {fin}", shell="bash")
    assert r.returncode == 1 and "write error: No such file or directory" in r.stderr
    r = sh(f"echo 0 > {fin}")
    assert r.returncode == 1 and "echo: I/O error" in r.stderr  # dash says so for any errno
    assert sh(f"echo 1 > {fin}").returncode == 0
    assert fin.read_bytes() == b"1\n"
    assert sorted(os.listdir(mnt / OUT)) == ["fdt", "finalize", "scratch_len", "scratch_phys",
                                             "sub_fdts"]
    st = os.stat(mnt / OUT / "fdt")
    # st_size: the blob's (debugfs: 0), so that sendfile loses nothing (a known difference)
    assert (st.st_mode & 0o7777, st.st_size, st.st_nlink) == (0o400, 152, 1)
    r = sh(f"echo 1 > {fin}", shell="bash")
    assert r.returncode == 1 and "write error: File exists" in r.stderr
    assert sh(f"echo 0 > {fin}").returncode == 0
    assert fin.read_bytes() == b"0\n" and not (mnt / OUT / "fdt").exists()


def test_selftest_two_byte_write_on_rdwr(mnt: Path) -> None:
    """tools/testing/selftests/kho/init.c writes "1\\0" and requires 2."""
    assert write_once(mnt / OUT / "finalize", b"1\0", os.O_RDWR) == 2
    assert (mnt / OUT / "finalize").read_bytes() == b"1\n"


@pytest.mark.parametrize("data, err", [
    (b"1", 0), (b"1\n", 0), (b"+1", 0), (b"0x1", 0), (b"0X10", 0), (b"01", 0), (b"7\n", 0),
    (b"18446744073709551615", 0), (b"1\0garbage", 0), (b"1" + b" " * 22 + b"x", errno.EINVAL),
    (b" 1", errno.EINVAL), (b"-1", errno.EINVAL), (b"08", errno.EINVAL), (b"x", errno.EINVAL),
    (b"1\n\n", errno.EINVAL), (b"0x", errno.EINVAL), (b"\n", errno.EINVAL),
    (b"18446744073709551616", errno.ERANGE), (b"99999999999999999999999", errno.ERANGE),
])
def test_write_parsing(mnt: Path, data: bytes, err: int) -> None:
    fin = mnt / OUT / "finalize"
    assert write_errno(fin, data) == err
    assert fin.read_bytes() == (b"1\n" if err == 0 else b"0\n")


def test_write_returns_full_length_beyond_23_bytes(mnt: Path) -> None:
    data = b"1\n" + b"\0" * 998
    assert write_once(mnt / OUT / "finalize", data) == len(data)


def test_each_write_parsed_alone(mnt: Path) -> None:
    fd = os.open(mnt / OUT / "finalize", os.O_WRONLY)
    try:
        assert os.write(fd, b"1") == 1
        with pytest.raises(OSError) as e:
            os.write(fd, b"1")
        assert e.value.errno == errno.EEXIST
        assert os.write(fd, b"0") == 1
    finally:
        os.close(fd)


def test_finalize_is_not_seekable(mnt: Path) -> None:
    fd = os.open(mnt / OUT / "finalize", os.O_RDWR)
    try:
        for call in (lambda: os.lseek(fd, 0, os.SEEK_SET), lambda: os.pread(fd, 10, 0),
                     lambda: os.pwrite(fd, b"1", 0)):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.ESPIPE
        assert os.read(fd, 1) == b"0" and os.read(fd, 10) == b"\n" and os.read(fd, 10) == b""
    finally:
        os.close(fd)


def test_read_is_buffered_per_open(mnt: Path) -> None:
    fin = mnt / OUT / "finalize"
    fd = os.open(fin, os.O_RDONLY)
    try:
        assert os.read(fd, 1) == b"0"
        write_once(fin, b"1")
        assert os.read(fd, 10) == b"\n"  # continues this open's "0\n"
    finally:
        os.close(fd)
    assert fin.read_bytes() == b"1\n"


def test_scratch_show_files(mnt: Path) -> None:
    """The default machine's table (lowmem, global, node 0), as `cat` shows it; the
    numbers themselves are checked in tests/test_memblock.py."""
    out = f"{mnt}/kho/out"
    assert sh(f"cat {out}/scratch_phys").stdout == "0x6b400000\n0x44ae00000\n0x42a800000\n"
    assert sh(f"cat {out}/scratch_len").stdout == "0xcc00000\n0x23600000\n0x20600000\n"
    phys = (mnt / OUT / "scratch_phys").read_text().splitlines()
    fd = os.open(mnt / OUT / "scratch_phys", os.O_RDWR)
    try:
        assert os.pread(fd, 4, 2) == (phys[0] + "\n").encode()[2:6]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert os.lseek(fd, 3, os.SEEK_SET) == 3
        with pytest.raises(OSError) as e:
            os.write(fd, b"0x0\n")
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_fdt_blob_reads_seeks_and_root_overwrites(mnt: Path) -> None:
    assert sh(f"echo 1 > {mnt}/kho/out/finalize").returncode == 0
    fdt = mnt / OUT / "fdt"
    blob = fdt.read_bytes()
    assert blob[:4] == b"\xd0\x0d\xfe\xed"
    assert len(blob) == struct.unpack(">I", blob[4:8])[0]
    fd = os.open(fdt, os.O_RDWR)
    try:
        assert os.pread(fd, 8, 4) == blob[4:12]
        assert os.pread(fd, 100, len(blob) - 2) == blob[-2:]
        assert os.pread(fd, 100, len(blob)) == b""
        # SEEK_END is relative to i_size, which khofs reports as the blob's (debugfs: 0)
        assert os.lseek(fd, 0, os.SEEK_END) == len(blob)
        assert os.pwrite(fd, b"XY", len(blob) - 1) == 1
        assert os.pwrite(fd, b"Z", len(blob)) == 0
    finally:
        os.close(fd)
    assert fdt.read_bytes() == blob[:-1] + b"X"


def test_open_fdt_after_abort_gives_eio(mnt: Path) -> None:
    fin = mnt / OUT / "finalize"
    write_once(fin, b"1")
    fd = os.open(mnt / OUT / "fdt", os.O_RDONLY)
    try:
        write_once(fin, b"0")
        with pytest.raises(OSError) as e:
            os.read(fd, 10)
        assert e.value.errno == errno.EIO
    finally:
        os.close(fd)


def test_fdt_tools_read_the_root(mnt: Path) -> None:
    assert sh(f"echo 1 > {mnt}/kho/out/finalize").returncode == 0
    fdt = f"{mnt}/kho/out/fdt"
    assert sh(f"fdtget -t s {fdt} / compatible").stdout == "kho-v1\n"
    dump = sh(f"fdtdump {fdt}")
    assert dump.returncode == 0 and 'compatible = "kho-v1";' in dump.stdout
    dts = sh(f"dtc -I dtb -O dts {fdt}")
    assert dts.returncode == 0 and "preserved-memory-map" in dts.stdout
    root = libfdt.Fdt((mnt / OUT / "fdt").read_bytes())
    assert root.getprop(0, "compatible").as_str() == "kho-v1"


def test_concurrent_writers_one_wins(mnt: Path) -> None:
    fin = mnt / OUT / "finalize"
    results: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        err = write_errno(fin, b"1\n")
        with lock:
            results.append(err)

    threads = [threading.Thread(target=writer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0] + [errno.EEXIST] * 15
    assert fin.read_bytes() == b"1\n"


def test_cp_a_copies_the_tree(mnt: Path, tmp_path: Path) -> None:
    assert sh(f"echo 1 > {mnt}/kho/out/finalize").returncode == 0
    r = sh(f"cp -a {mnt}/kho/out {tmp_path}/copy")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "copy/fdt").read_bytes() == (mnt / OUT / "fdt").read_bytes()
    assert (tmp_path / "copy/finalize").read_bytes() == b"1\n"
    assert (tmp_path / "copy/scratch_len").read_bytes() == (mnt / OUT / "scratch_len").read_bytes()
    assert os.stat(tmp_path / "copy/fdt").st_mode & 0o7777 == 0o400
