"""The FUSE adapter's own rules, called directly (no mount): errno mapping and EIO on bugs."""

from __future__ import annotations

import errno
import logging
import stat

import fuse as fusepy
import pytest

from khofs.debugfs.file import SeqShow
from khofs.debugfs.inode import Debugfs
from khofs.fuse import DebugfsOperations


class FileInfo:
    fh = 0
    direct_io = 0
    nonseekable = 0


def ops() -> DebugfsOperations:
    fs = Debugfs(0, 0)
    fs.create_file("show", 0o400, None, SeqShow(lambda: "0x1\n"))
    fs.create_file("broken", 0o400, None, SeqShow(lambda: str(1 / 0)))
    return DebugfsOperations(fs, 4096)


def test_open_sets_direct_io_and_reads() -> None:
    o, fi = ops(), FileInfo()
    assert o("open", "/show", fi) == 0
    assert fi.direct_io == 1 and fi.nonseekable == 0
    assert o("read", "/show", 100, 0, fi) == b"0x1\n"
    assert o("getattr", "/show")["st_mode"] == stat.S_IFREG | 0o400


def test_unexpected_exception_is_logged_and_answered_eio(
        caplog: pytest.LogCaptureFixture) -> None:
    o, fi = ops(), FileInfo()
    o("open", "/broken", fi)
    with caplog.at_level(logging.ERROR), pytest.raises(fusepy.FuseOSError) as e:
        o("read", "/broken", 100, 0, fi)
    assert e.value.errno == errno.EIO
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text


def test_missing_names_and_namespace_ops() -> None:
    o = ops()
    for call, err in ((("getattr", "/nope"), errno.ENOENT), (("mkdir", "/d", 0o755), errno.EPERM),
                      (("create", "/new", 0o644, FileInfo()), errno.EACCES)):
        with pytest.raises(fusepy.FuseOSError) as e:
            o(*call)
        assert e.value.errno == err
