"""Through a real mount: producers from a TOML file, sub-FDTs and the finalize error paths."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

import libfdt
import pytest

from tests.helpers import ALPHA_AND_BETA, sh, write_errno, write_producers
from tests.oracle import kho_root

pytestmark = pytest.mark.mount

OUT = "kho/out"


def test_sub_fdts_published_and_root_is_libfdt_bytes(mount: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    cfg = write_producers(tmp_path, ALPHA_AND_BETA)
    mnt = mount("--producers", cfg)
    assert os.listdir(mnt / OUT / "sub_fdts") == []
    assert sh(f"echo 1 > {mnt}/kho/out/finalize").returncode == 0
    assert os.listdir(mnt / OUT / "sub_fdts") == ["beta", "alpha"]
    beta = (mnt / OUT / "sub_fdts/beta").read_bytes()
    assert beta == (tmp_path / "beta.dtb").read_bytes()  # a DTB is served byte for byte
    alpha = mnt / OUT / "sub_fdts/alpha"
    assert sh(f"fdtget -t s {alpha} / compatible").stdout == "alpha-v1\n"
    assert sh(f"fdtget -t bx {alpha} /node bytes").stdout == "1 2 3\n"
    dump = sh(f"fdtdump {alpha}")
    assert dump.returncode == 0 and "count = <0x00000003>;" in dump.stdout
    root_bytes = (mnt / OUT / "fdt").read_bytes()
    root = libfdt.Fdt(root_bytes)
    map_phys = struct.unpack("<Q", root.getprop(0, "preserved-memory-map"))[0]
    subs = [(name, root.getprop(root.subnode_offset(0, name), "fdt"))
            for name in ("alpha", "beta")]
    assert root_bytes == kho_root(map_phys, [(n, struct.unpack("<Q", p)[0]) for n, p in subs])
    assert sh(f"echo 0 > {mnt}/kho/out/finalize").returncode == 0
    assert os.listdir(mnt / OUT / "sub_fdts") == []


def test_failed_finalize_leaves_blobs_and_sticks(mount: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    cfg = write_producers(tmp_path, """
[[producer]]
name = "alpha"
dts = "alpha.dts"

[[producer]]
name = "broken"
dts = "alpha.dts"
fail_finalize = "EBUSY"
""")
    mnt = mount("--producers", cfg)
    fin = mnt / OUT / "finalize"
    assert write_errno(fin, b"1\n") == errno.EBUSY
    assert fin.read_bytes() == b"0\n"
    assert os.listdir(mnt / OUT / "sub_fdts") == ["alpha"]
    assert not (mnt / OUT / "fdt").exists()
    assert write_errno(fin, b"1\n") == errno.EEXIST
    assert write_errno(fin, b"0\n") == errno.ENOENT


def test_full_root_page_gives_esrch(mount: Callable[..., Path], tmp_path: Path) -> None:
    body = "".join(f'[[producer]]\nname = "a-rather-long-producer-name-{i:03d}"\n'
                   'dts = "alpha.dts"\n' for i in range(120))
    mnt = mount("--producers", write_producers(tmp_path, body))
    r = sh(f"echo 1 > {mnt}/kho/out/finalize", shell="bash")
    assert r.returncode == 1 and "write error: No such process" in r.stderr  # ESRCH
    assert (mnt / OUT / "finalize").read_bytes() == b"0\n"


def test_abort_failure_stays_finalized(mount: Callable[..., Path], tmp_path: Path) -> None:
    cfg = write_producers(tmp_path, '[[producer]]\nname = "alpha"\ndts = "alpha.dts"\n'
                              'fail_abort = "EIO"\n')
    mnt = mount("--producers", cfg)
    fin = mnt / OUT / "finalize"
    assert write_errno(fin, b"1") == 0
    assert write_errno(fin, b"0") == errno.EIO
    assert fin.read_bytes() == b"1\n" and (mnt / OUT / "fdt").exists()


def test_unaligned_preserve_fails_finalize_with_einval(mount: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    cfg = write_producers(tmp_path, '[[producer]]\nname = "alpha"\ndts = "alpha.dts"\n'
                              'preserve = ["0x100000800+4K"]\n')
    mnt = mount("--producers", cfg)
    assert write_errno(mnt / OUT / "finalize", b"1") == errno.EINVAL
