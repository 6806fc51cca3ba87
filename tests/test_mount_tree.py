"""Through a real mount: the tree, modes, stat fields and namespace errnos (spec section 3)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import is_mounted, khofs, sh
from tests.other_user import SETPRIV

pytestmark = pytest.mark.mount

OUT = "kho/out"


def test_tree_listing(mnt: Path) -> None:
    assert sorted(os.listdir(mnt)) == ["kho"]
    assert sorted(os.listdir(mnt / "kho")) == ["out"]
    # dcache_readdir lists newest first
    assert os.listdir(mnt / OUT) == ["finalize", "scratch_len", "scratch_phys", "sub_fdts"]
    assert os.listdir(mnt / OUT / "sub_fdts") == []


# Sizes are debugfs's 0, except where khofs reports the bytes a read gives, so that sendfile
# and splice lose nothing (a known difference): the seekable files.
@pytest.mark.parametrize("rel, mode, nlink, size", [
    ("", stat.S_IFDIR | 0o700, 3, 0),
    ("kho", stat.S_IFDIR | 0o755, 3, 0),
    ("kho/out", stat.S_IFDIR | 0o755, 3, 0),
    ("kho/out/sub_fdts", stat.S_IFDIR | 0o755, 2, 0),
    ("kho/out/finalize", stat.S_IFREG | 0o600, 1, 0),
    ("kho/out/scratch_phys", stat.S_IFREG | 0o400, 1, 35),
    ("kho/out/scratch_len", stat.S_IFREG | 0o400, 1, 32),
])
def test_modes_sizes_links(mnt: Path, rel: str, mode: int, nlink: int, size: int) -> None:
    st = os.stat(mnt / rel)
    assert (st.st_mode, st.st_nlink, st.st_size, st.st_blocks) == (mode, nlink, size, 0)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert st.st_atime_ns == st.st_mtime_ns == st.st_ctime_ns


def test_stat_and_ls_tools(mnt: Path) -> None:
    r = sh(f"stat -c '%A %h %s %U' {mnt}/kho/out/finalize {mnt}/kho/out/scratch_phys")
    assert r.stdout == "-rw------- 1 0 root\n-r-------- 1 35 root\n"
    r = sh(f"ls -ln --time-style=+T {mnt}/kho/out | awk 'NR > 1 {{print $1, $2, $5, $7}}'")
    assert r.stdout.splitlines() == [
        "-rw------- 1 0 finalize", "-r-------- 1 32 scratch_len", "-r-------- 1 35 scratch_phys",
        "drwxr-xr-x 2 0 sub_fdts"]


@pytest.mark.parametrize("call, err", [
    (lambda m: os.mkdir(m / OUT / "new"), errno.EPERM),
    (lambda m: os.mkdir(m / OUT / "sub_fdts"), errno.EEXIST),
    (lambda m: os.rmdir(m / OUT / "sub_fdts"), errno.EPERM),
    (lambda m: os.rmdir(m / "kho"), errno.EPERM),
    (lambda m: os.unlink(m / OUT / "finalize"), errno.EPERM),
    (lambda m: os.unlink(m / OUT / "missing"), errno.ENOENT),
    (lambda m: os.rename(m / OUT / "finalize", m / OUT / "x"), errno.EPERM),
    (lambda m: os.link(m / OUT / "finalize", m / OUT / "x"), errno.EPERM),
    (lambda m: os.symlink("finalize", m / OUT / "x"), errno.EPERM),
    # do_mknodat sends S_IFREG to vfs_create, which is EACCES without ->create
    (lambda m: os.mknod(m / OUT / "x", stat.S_IFREG | 0o600), errno.EACCES),
    (lambda m: os.mknod(m / OUT / "x", stat.S_IFCHR | 0o600, os.makedev(1, 3)), errno.EPERM),
    (lambda m: os.mkfifo(m / OUT / "x"), errno.EPERM),
    (lambda m: os.open(m / OUT / "new", os.O_WRONLY | os.O_CREAT, 0o600), errno.EACCES),
    (lambda m: os.open(m / OUT / "x", os.O_WRONLY | os.O_CREAT | os.O_EXCL), errno.EACCES),
    (lambda m: os.open(m / OUT / "finalize", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
     errno.EEXIST),
])
def test_namespace_errnos(mnt: Path, call: object, err: int) -> None:
    with pytest.raises(OSError) as e:
        call(mnt)  # type: ignore[operator]
    assert e.value.errno == err
    assert os.listdir(mnt / OUT) == ["finalize", "scratch_len", "scratch_phys", "sub_fdts"]


def test_shell_messages(mnt: Path) -> None:
    r = sh(f"mkdir {mnt}/kho/new")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr
    r = sh(f"touch {mnt}/kho/out/new")
    assert r.returncode == 1 and "Permission denied" in r.stderr
    r = sh(f"rm -f {mnt}/kho/out/scratch_len")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr


def test_open_existing_with_creat_and_trunc(mnt: Path) -> None:
    fin = mnt / OUT / "finalize"
    before = os.stat(fin)
    fd = os.open(fin, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
    after = os.stat(fin)
    assert after.st_mode == before.st_mode and after.st_size == 0
    assert after.st_mtime_ns >= before.st_mtime_ns


def test_chmod_chown_touch_change_the_inode(mnt: Path) -> None:
    f = mnt / OUT / "scratch_len"
    os.chmod(f, 0o644)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o644
    os.chown(f, 1234, 5678)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 5678)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    assert sh(f"touch {f}").returncode == 0
    assert os.stat(f).st_mtime_ns > 2_000_000_000


def test_statfs(mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_bsize == 4096 and st.f_namemax == 255 and st.f_blocks == 0


def test_other_user_refused_by_default(mnt: Path) -> None:
    r = subprocess.run([*SETPRIV, "cat", f"{mnt}/kho/out/scratch_phys"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1 and "Permission denied" in r.stderr


def test_allow_other_enforces_modes(mount: object, tmp_path: Path) -> None:
    # pytest's own temporary directories are 0700: mount where nobody can walk to it
    parent = Path(tempfile.mkdtemp(prefix="khofs-test-"))
    os.chmod(parent, 0o755)
    try:
        check_allow_other(mount("--allow-other", parent=parent))  # type: ignore[operator]
    finally:
        for mnt in parent.glob("mnt*"):
            if is_mounted(mnt):
                khofs("umount", str(mnt))
        shutil.rmtree(parent, ignore_errors=True)


def check_allow_other(mnt: Path) -> None:
    r = subprocess.run([*SETPRIV, "ls", str(mnt)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "Permission denied" in r.stderr
    os.chmod(mnt, 0o755)
    os.chmod(mnt / OUT / "finalize", 0o644)
    r = subprocess.run([*SETPRIV, "cat", f"{mnt}/kho/out/finalize"], capture_output=True,
                       text=True, check=False)
    assert (r.returncode, r.stdout) == (0, "0\n")
    r = subprocess.run([*SETPRIV, "sh", "-c", f"echo 1 > {mnt}/kho/out/finalize"],
                       capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert (mnt / OUT / "finalize").read_bytes() == b"0\n"
