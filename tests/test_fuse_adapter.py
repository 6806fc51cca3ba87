"""The FUSE adapter's own rules: errno mapping, EIO on bugs, and the two backends (fusepy over
libfuse2, mfusepy over libfuse3): their shims called directly, `khofs --version` and start-up
errors per KHOFS_FUSE, and mounts of both compared request by request."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from khofs.cli.pytest_plugin import Kho
from khofs.daemon import fuse_edge as fuse
from khofs.daemon.fuse_edge import DebugfsOperations, FuseError
from khofs.daemon.state import pid_path
from khofs.debugfs.file import SeqShow
from khofs.debugfs.inode import Debugfs
from tests.helpers import is_mounted, khofs, one_line_error
from tests.other_user import SETPRIV

pytestmark = pytest.mark.mount

OUT = "kho/out"
FUSE_UNKNOWN_INO = 0xFFFFFFFF
LIBFUSE = {"2": "libfuse.so.2", "3": "libfuse3.so.3"}


class FileInfo:
    fh = 0
    flags = os.O_RDONLY
    direct_io = 0
    nonseekable = 0


def ops() -> DebugfsOperations:
    fs = Debugfs(0, 0)
    fs.create_file("show", 0o400, None, SeqShow(lambda: "0x1\n"))
    fs.create_file("broken", 0o400, None, SeqShow(lambda: str(1 / 0)))
    return DebugfsOperations(fs, 4096)


def backend3() -> fuse.Backend:
    """The libfuse3 backend: `make` installs it, so its absence is a failure, not a skip."""
    try:
        return fuse.load_backend("3")
    except fuse.BackendError as e:
        raise AssertionError(f"the libfuse3 backend is missing: {e}") from None


# --- DebugfsOperations, as fusepy calls it -------------------------------------------------------

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
    with caplog.at_level(logging.ERROR), pytest.raises(FuseError) as e:
        o("read", "/broken", 100, 0, fi)
    assert e.value.errno == errno.EIO
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text


def test_missing_names_and_namespace_ops() -> None:
    o = ops()
    for call, err in ((("getattr", "/nope"), errno.ENOENT), (("mkdir", "/d", 0o755), errno.EPERM),
                      (("create", "/new", 0o644, FileInfo()), errno.EACCES),
                      (("lock", "/show"), errno.EFAULT), (("getxattr", "/show", "a"),
                                                          errno.EFAULT)):
        with pytest.raises(FuseError) as e:
            o(*call)
        assert e.value.errno == err
    # not served at all: libfuse says ENOSYS once, and the kernel stops asking (close then
    # succeeds, xattr calls fail with EOPNOTSUPP, as on debugfs)
    for name in ("flush", "getxattr", "setxattr", "removexattr"):
        assert not hasattr(o, name) and name not in fuse.OPERATIONS


def test_fusepy_installs_exactly_the_operations_table() -> None:
    """fusepy installs every fuse_operations member the object has: OPERATIONS, which is
    also what _Fuse3Operations forwards."""
    module = fuse.load_backend("2").module
    o = ops()
    installed = set()
    for field in module.fuse_operations._fields_:
        name = field[0]
        if getattr(o, name[1:] if name in ("fgetattr", "ftruncate") else name, None) is not None:
            installed.add(name)
    # and one flag: pass UTIME_OMIT/UTIME_NOW (libfuse3 always does)
    assert installed == set(fuse.OPERATIONS) | {"fgetattr", "ftruncate", "flag_utime_omit_ok"}


# --- the libfuse3 shims, without a mount ---------------------------------------------------------

def test_mfusepy_installs_the_same_operations() -> None:
    module = backend3().module
    adapter = fuse._Fuse3Operations(ops())
    installed = set()
    for field in module.fuse_operations._fields_:
        value = getattr(adapter, field[0], None)
        if value is not None and not getattr(value, "libfuse_ignore", False):
            installed.add(field[0])
    # libfuse3 has no fgetattr/ftruncate; mfusepy always installs init, which calls
    # init_with_config; readdir_with_offset would replace readdir
    assert installed == set(fuse.OPERATIONS) - {"init"}
    assert hasattr(adapter, "init_with_config") and not hasattr(adapter, "readdir_with_offset")
    assert not callable(adapter)  # mfusepy ignores __call__ and warns about it


def test_fuse3_init_sets_what_libfuse2_took_as_options() -> None:
    module = backend3().module
    ready: list[bool] = []
    o = ops()
    o.on_ready = lambda: ready.append(True)
    conn, config = module.fuse_conn_info(), module.fuse_config()
    conn.capable = conn.want = 0xFFFFFFFF
    conn.max_write = 4096
    fuse._Fuse3Operations(o).init_with_config(conn, config)
    assert config.use_ino == 1 and conn.max_write == fuse.FUSE3_MAX_WRITE
    assert conn.want == 0xFFFFFFFF & ~fuse.FUSE3_WANT_OFF
    assert conn.want & fuse.FUSE_CAP_ATOMIC_O_TRUNC == 0
    assert ready == [True] and o.started


def test_fuse3_open_read_readdir_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    module = backend3().module
    o = ops()
    adapter = fuse._Fuse3Operations(o)
    fi = module.fuse_file_info()
    assert adapter.open("/show", fi) == 0  # type: ignore[attr-defined]
    assert fi.fh == 1 and fi.direct_io == 1 and fi.nonseekable == 0
    assert fi.keep_cache == 0 and fi.flush == 0  # the neighbouring bits stay clear
    assert adapter.read("/show", 100, 0, fi) == b"0x1\n"  # type: ignore[attr-defined]
    assert adapter.release("/show", fi) == 0 and not o.handles  # type: ignore[attr-defined]
    # names alone would get a zeroed stat from mfusepy (d_ino 0): no stat, as libfuse2
    assert adapter.readdir("/", 0) == [(".", None, 0), ("..", None, 0), ("broken", None, 0),
                                       ("show", None, 0)]
    with pytest.raises(FuseError) as e:
        adapter.getattr("/nope", None)  # type: ignore[attr-defined]
    assert e.value.errno == errno.ENOENT
    adapter.open("/broken", fi)  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR), pytest.raises(FuseError) as e:
        adapter.read("/broken", 100, 0, fi)  # type: ignore[attr-defined]
    assert e.value.errno == errno.EIO and "ZeroDivisionError" in caplog.text


def test_utimens_sets_each_time_or_leaves_it() -> None:
    """UTIME_OMIT leaves a time alone, UTIME_NOW sets it to now; ctime moves each time (the
    same call on both backends: libfuse2 passes the markers with utime_omit_ok)."""
    backend3()
    o = ops()
    adapter = fuse._Fuse3Operations(o)
    inode = o.fs.lookup("/show").inode  # type: ignore[union-attr]
    before = (inode.atime_ns, inode.mtime_ns, inode.ctime_ns)
    assert adapter.utimens("/show", (5, fuse.UTIME_OMIT)) == 0
    assert (inode.atime_ns, inode.mtime_ns) == (5, before[1]) and inode.ctime_ns >= before[2]
    assert adapter.utimens("/show", (fuse.UTIME_OMIT, 7)) == 0
    assert (inode.atime_ns, inode.mtime_ns) == (5, 7)
    assert o.flag_utime_omit_ok == 1
    assert adapter.utimens("/show", (1_000_000_000, 2_000_000_000)) == 0
    assert (inode.atime_ns, inode.mtime_ns) == (1_000_000_000, 2_000_000_000)
    start = time.time_ns()
    assert adapter.utimens("/show", (fuse.UTIME_NOW, fuse.UTIME_NOW)) == 0
    assert inode.atime_ns >= start and inode.mtime_ns >= start


def test_fuse3_needs_root_or_fusermount3(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    backend = backend3()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(fuse.shutil, "which", lambda name: None)
    with pytest.raises(fuse.MountError, match="fusermount3"):
        backend.serve(ops(), str(tmp_path), allow_other=False, debug=False)
    assert not is_mounted(tmp_path)


@pytest.mark.parametrize("version", ["2", "3"])
def test_a_failed_mount_says_so(version: str, tmp_path: Path,
                                capfd: pytest.CaptureFixture[str]) -> None:
    backend = backend3() if version == "3" else fuse.load_backend("2")
    with pytest.raises(fuse.MountError, match="libfuse could not mount it"):
        backend.serve(ops(), str(tmp_path / "missing"), allow_other=False, debug=False)
    assert "missing" in capfd.readouterr().err  # libfuse's own line comes first


def test_fuse3_rename_with_flags_is_eperm_as_on_debugfs() -> None:
    cls = backend3().fuse
    obj = cls.__new__(cls)  # FUSE.__init__ would mount
    obj.operations, obj.encoding, obj.errors = fuse._Fuse3Operations(ops()), "utf-8", "strict"
    for flags in (0, 1):  # RENAME_NOREPLACE: vfs_rename finds no ->rename either way
        with pytest.raises(FuseError) as e:
            obj.rename_fuse_3(b"/show", b"/x", flags)
        assert e.value.errno == errno.EPERM


# --- choosing the backend ----------------------------------------------------------------------

def run_khofs(*args: str, env: dict[str, str] | None = None,
              code: str = "") -> subprocess.CompletedProcess[str]:
    """khofs in a fresh interpreter, after `code` (to take something away)."""
    script = f"{code}\nfrom khofs.cli.main import main\nraise SystemExit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("value, binding, library", [
    ("", "fusepy", "libfuse 2."), ("2", "fusepy", "libfuse 2."),
    ("3", "mfusepy", "libfuse 3."),
])
def test_version_names_the_backend(value: str, binding: str, library: str) -> None:
    if value == "3":
        backend3()
    r = khofs("--version", env={**os.environ, "KHOFS_FUSE": value})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"khofs 0.1.0 ({binding} ") and f" over {library}" in r.stdout
    described = fuse.load_backend(value or "2").description
    assert r.stdout == f"khofs 0.1.0 ({described})\n"
    assert described.split()[-1].count(".") == 2  # the library's full version, e.g. 2.9.9


def test_unknown_backend_is_one_line(tmp_path: Path) -> None:
    one_line_error(run_khofs("--version", env={"KHOFS_FUSE": "4"}), "KHOFS_FUSE=4", "2", "3")
    (tmp_path / "m").mkdir()
    one_line_error(run_khofs("mount", str(tmp_path / "m"), env={"KHOFS_FUSE": "4"}), "KHOFS_FUSE=4")
    assert not is_mounted(tmp_path / "m")


def test_missing_mfusepy_is_one_line(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['mfusepy'] = None  # as if not installed"
    env = {"KHOFS_FUSE": "3"}
    one_line_error(run_khofs("--version", env=env, code=hide), "mfusepy", "khofs[fuse3]")
    (tmp_path / "m").mkdir()
    r = run_khofs("mount", str(tmp_path / "m"), env=env, code=hide)
    one_line_error(r, "mfusepy is not installed")
    assert not is_mounted(tmp_path / "m") and not list(Path(tmp_path / "m").iterdir())


def test_missing_libfuse3_is_one_line(tmp_path: Path) -> None:
    # dlopen of libfuse3's soname fails, as on a machine without it
    hide = "import khofs.daemon.fuse_edge as e; e.LIBFUSE3 = 'libfuse3-not-here.so.3'"
    (tmp_path / "m").mkdir()
    r = run_khofs("mount", str(tmp_path / "m"), env={"KHOFS_FUSE": "3"}, code=hide)
    one_line_error(r, "libfuse3.so.3 not found", "libfuse3-3")
    assert not is_mounted(tmp_path / "m")


def test_non_empty_mount_point_is_one_line(tmp_path: Path) -> None:
    """libfuse2 refuses it (with a bare "1" from fusepy), libfuse3 would mount over it."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "file").write_text("")
    for value in ("2", "3"):
        one_line_error(khofs("mount", str(tmp_path / "m"), env={**os.environ, "KHOFS_FUSE": value}),
                 "not empty")
        assert not is_mounted(tmp_path / "m")


# --- both backends mounted: the same answers ---------------------------------------------------

@pytest.fixture(params=["2", "3"])
def backend_mnt(request: pytest.FixtureRequest,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A mount served by the backend the parameter names, checked in the daemon's maps."""
    if request.param == "3":
        backend3()
    monkeypatch.setenv("KHOFS_FUSE", request.param)
    # pytest's temporary directories are 0700: mount where other users can walk to it
    workdir = Path(tempfile.mkdtemp(prefix="khofs-test-"))
    os.chmod(workdir, 0o755)
    kho = Kho(workdir, options=("--allow-other",))
    try:
        root = kho.root
        pid = int(pid_path(str(root)).read_text())
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert LIBFUSE[request.param] in maps
        assert LIBFUSE["3" if request.param == "2" else "2"] not in maps
        yield request.param, root
    finally:
        kho.unmount()
        shutil.rmtree(workdir, ignore_errors=True)


def libc_call(name: str, *args: Any) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) == 0:
        return 0
    return ctypes.get_errno()


AT_FDCWD = -100
RENAME_NOREPLACE = 1
FS_IOC_GETFLAGS = 0x80086601


def errno_of(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as e:
        return e.errno or 0
    return 0


def on_fd(path: Path | bytes, flags: int, call: Callable[[int], object]) -> Callable[[], None]:
    """call(fd) on a fresh open of path, closed after."""
    def run() -> None:
        fd = os.open(path, flags)
        try:
            call(fd)
        finally:
            os.close(fd)

    return run


def observe(root: Path) -> dict[str, Any]:
    """What a tool sees of the mount: every entry's stat and bytes, readdir with d_ino and
    d_type, and the errnos of the calls where the libraries differ."""
    seen: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        entries = list(os.scandir(dirpath))
        seen[f"readdir {rel}"] = [(e.name, e.inode(), e.is_dir(follow_symlinks=False))
                                  for e in entries]
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            seen[f"stat {rel}/{name}"] = (st.st_mode, st.st_nlink, st.st_size, st.st_uid,
                                          st.st_gid, st.st_blocks, st.st_blksize)
        for name in filenames:
            path = os.path.join(dirpath, name)
            seen[f"bytes {rel}/{name}"] = (Path(path).read_bytes()
                                          if os.stat(path).st_mode & 0o444 else None)
    out = root / OUT
    fin = os.fsencode(out / "finalize")
    seen["errnos"] = [
        errno_of(lambda: os.stat(os.fsencode(out) + b"/\xff")),  # not UTF-8
        libc_call("renameat2", AT_FDCWD, fin, AT_FDCWD, fin + b"2", RENAME_NOREPLACE),
        errno_of(lambda: os.rename(fin, fin + b"2")),
        errno_of(lambda: os.open(out / "new", os.O_CREAT | os.O_WRONLY)),
        errno_of(lambda: os.mknod(out / "fifo", stat.S_IFIFO | 0o600)),
        errno_of(lambda: os.getxattr(fin, "user.x")),
        errno_of(lambda: os.setxattr(fin, "user.x", b"1")),
        os.listxattr(fin),
        errno_of(on_fd(fin, os.O_RDONLY, lambda fd: fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8))),
        errno_of(on_fd(out, os.O_RDONLY, lambda fd: fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8))),
        errno_of(on_fd(fin, os.O_RDONLY, lambda fd: os.lseek(fd, 1, os.SEEK_SET))),
        errno_of(lambda: os.truncate(out, 0)),
        errno_of(lambda: os.readlink(fin)),
        errno_of(on_fd(out / "scratch_phys", os.O_WRONLY, lambda fd: os.write(fd, b"1"))),
        errno_of(on_fd(fin, os.O_WRONLY, lambda fd: os.write(fd, b"0\n"))),
        errno_of(on_fd(fin, os.O_RDONLY, os.fsync)),
        os.statvfs(out).f_namemax, os.statvfs(out).f_bsize,
    ]
    return seen


def test_both_backends_show_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One mount per backend, the same machine: the same entries, modes, bytes, d_ino and
    d_type (libfuse's FUSE_UNKNOWN_INO, no type) and errnos."""
    backend3()
    seen = {}
    for value in ("2", "3"):
        monkeypatch.setenv("KHOFS_FUSE", value)
        (tmp_path / value).mkdir()
        kho = Kho(tmp_path / value)
        try:
            kho.finalize()
            seen[value] = observe(kho.root)
        finally:
            kho.unmount()
    # a name that is not UTF-8, and renameat2 with flags: libfuse3 lets the kernel's answers
    # through (ENOENT, EPERM); fusepy over libfuse2 says EINVAL to both before khofs sees them
    assert seen["2"]["errnos"][:2] == [errno.EINVAL, errno.EINVAL]
    assert seen["3"]["errnos"][:2] == [errno.ENOENT, errno.EPERM]
    for s in seen.values():
        del s["errnos"][:2]
    assert seen["2"] == seen["3"]
    assert {ino for _, ino, _ in seen["2"]["readdir kho/out"]} == {FUSE_UNKNOWN_INO}


def test_echo_truncates_first(backend_mnt: tuple[str, Path]) -> None:
    """O_TRUNC goes through setattr (no atomic_o_trunc): mtime and ctime move, size stays 0."""
    _, root = backend_mnt
    f = root / OUT / "finalize"
    before = os.stat(f)
    time.sleep(0.01)
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    after_open = os.stat(f)
    os.write(fd, b"1\n")
    os.close(fd)
    assert after_open.st_mtime_ns > before.st_mtime_ns
    assert after_open.st_ctime_ns == after_open.st_mtime_ns
    assert after_open.st_atime_ns == before.st_atime_ns and after_open.st_size == 0
    assert f.read_bytes() == b"1\n"


def test_touch_one_time(backend_mnt: tuple[str, Path]) -> None:
    """`touch -a` sets atime only and `touch -m` mtime only, as on debugfs; ctime moves."""
    _, root = backend_mnt
    f = root / OUT / "scratch_len"
    before = os.stat(f)
    assert subprocess.run(["touch", "-a", "-d", "@5", str(f)], check=False).returncode == 0
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, before.st_mtime_ns)
    assert st.st_ctime_ns > before.st_ctime_ns
    assert subprocess.run(["touch", "-m", "-d", "@7", str(f)], check=False).returncode == 0
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, 7_000_000_000)


def test_write_of_max_write_arrives_whole(backend_mnt: tuple[str, Path]) -> None:
    """max_write 128 KiB on libfuse2, 1 MiB on libfuse3: a page-aligned write of that size is
    one request, so simple_attr_write parses it once ("1\\n", then NULs); one byte more is
    two."""
    backend, root = backend_mnt
    most = fuse.MAX_WRITES[backend]
    f = root / OUT / "finalize"
    buf = mmap.mmap(-1, most + mmap.PAGESIZE)
    buf[:2] = b"1\n"
    fd = os.open(f, os.O_WRONLY)
    try:
        assert os.write(fd, memoryview(buf)[:most]) == most
    finally:
        os.close(fd)
    assert f.read_bytes() == b"1\n"
    buf[:2] = b"0\n"
    fd = os.open(f, os.O_WRONLY)
    try:
        # the first piece aborts; the second fails, and write(2) reports the first
        assert os.write(fd, memoryview(buf)[:most + 1]) == most
    finally:
        os.close(fd)
    assert f.read_bytes() == b"0\n"


def test_writes_by_others_clear_set_id_bits(backend_mnt: tuple[str, Path]) -> None:
    """No HANDLE_KILLPRIV: the kernel clears the set-uid bit (and set-gid with group
    execute) when someone without CAP_FSETID writes or truncates, as it does on debugfs."""
    _, root = backend_mnt
    os.chmod(root, 0o755)
    f = root / OUT / "finalize"
    os.chmod(f, 0o6666)
    r = subprocess.run([*SETPRIV, "sh", "-c", f"echo 1 > {f}"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o2666 and f.read_bytes() == b"1\n"
    os.chmod(f, 0o6676)
    r = subprocess.run([*SETPRIV, "truncate", "-s", "0", str(f)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o0676
