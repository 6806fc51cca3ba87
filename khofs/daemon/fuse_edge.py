"""The FUSE edge: serves a debugfs tree through fusepy (libfuse2) or mfusepy (libfuse3).

This is the only module that imports a FUSE binding. It maps FUSE calls onto the debugfs
layer and turns its negative errnos into FuseError. Every open uses direct I/O: a read gets
what the file gives at that moment, as from debugfs, never a cached page; attribute files are
opened non-seekable, as simple_attr_open does. sendfile and splice still go through the page
cache up to the size stat reports, so seekable files report the size of their data
(splice_size: a known difference from debugfs's 0). An O_DIRECT open is refused as debugfs
refuses it; mmap(MAP_SHARED) FUSE refuses itself (ENODEV, as debugfs).

The binding is chosen by the environment variable KHOFS_FUSE: "2" (the default) is fusepy
over libfuse2, "3" is mfusepy over libfuse3 (`pip install khofs[fuse3]`). Nothing is loaded
when this module is imported, so that a missing binding or library is one start-up error
(BackendError) and the tests can look at both. DebugfsOperations is written against fusepy's
calling convention; `_Fuse3Operations` adapts mfusepy's to it, and each backend's options sit
in one table below. The two give the kernel the same answers: libfuse2's behaviour is the
reference, and where libfuse3 would differ the fuse3 side is brought back to it.

The tree is whatever the running kernel's is: `serve` takes a function returning it and a
lock; every FUSE call holds the lock from start to end (a kexec takes it too), so each call
sees one kernel, and open files of a kernel that is gone read EIO, as the engine makes them.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import importlib.util
import itertools
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from khofs.daemon.opener import Opener
from khofs.debugfs.inode import Dentry, OpenFile
from khofs.errors import InputError

log = logging.getLogger("khofs.daemon.fuse_edge")

ENV = "KHOFS_FUSE"
DEFAULT_BACKEND = "2"
DEBUGFS_MAGIC = 0x64626720
NAME_MAX = 255
MAX_WRITE = 128 * 1024  # libfuse2's ceiling: writes and reads of at most 32 pages a request
# libfuse3's default, the FUSE module's limit (fuse_max_pages_limit, 256 pages): libfuse3
# derives max_pages from max_write, so this is also the largest read a request carries
FUSE3_MAX_WRITE = 1024 * 1024
MAX_WRITES = {"2": MAX_WRITE, "3": FUSE3_MAX_WRITE}  # writes up to these arrive whole

# --- the options, one table per backend ------------------------------------------------------

# Both: /proc/mounts shows fuse.khofs (the rest of khofs looks for that type), and the kernel
# checks the modes itself. It looks every name up again (entries come and go: `fdt` with
# finalize, the whole tree at a kexec) but may keep attributes for 10 ms: every lookup returns
# fresh ones, and the kernel drops them itself after a write or setattr, so only a change made
# inside the daemon (a kexec changing a directory's link count) can be that late. It saves a
# GETATTR per path component and per open; 10 ms saves as much as 1 s would.
COMMON_OPTIONS: dict[str, Any] = {
    "fsname": "khofs", "subtype": "khofs", "default_permissions": True,
    "entry_timeout": 0, "attr_timeout": 0.01, "negative_timeout": 0,
}

# libfuse2 splits writes into 4 KiB pieces unless big_writes; each piece would be parsed on
# its own by simple_attr_write. 128 KiB is libfuse2's ceiling.
# No atomic_o_trunc, though it would save a SETATTR per `echo > finalize`: with it the FUSE
# module skips the truncate's setattr, and with it the kernel's clearing of set-id bits when
# a user without CAP_FSETID truncates, which debugfs does.
FUSE2_OPTIONS: dict[str, Any] = {
    **COMMON_OPTIONS, "use_ino": True, "big_writes": True, "max_write": MAX_WRITE,
}

# libfuse3 refuses big_writes (always on), max_write and use_ino as options: use_ino is a
# struct fuse_config field and max_write one of the connection, both set in init.
# max_idle_threads=10 is libfuse2's fixed number (3.14.0 also warns on stderr at every start
# without it).
FUSE3_OPTIONS: dict[str, Any] = {**COMMON_OPTIONS, "max_idle_threads": 10}
FUSE3_CONFIG: dict[str, int] = {"use_ino": 1}  # struct fuse_config fields

# Capabilities libfuse3 asks the kernel for by default and libfuse2 does not. Without
# ATOMIC_O_TRUNC, `echo 1 > finalize` truncates through setattr first, as on a kernel (mtime
# and ctime move, set-id bits are cleared); without HANDLE_KILLPRIV the kernel clears set-id
# bits on writes too, as it does for debugfs. The others
# change only how requests are sent (readdir without READDIRPLUS, no parallel lookups, no
# async direct I/O, no ioctls on directories), so that both backends see the same requests.
FUSE_CAP_ATOMIC_O_TRUNC = 1 << 3
FUSE_CAP_IOCTL_DIR = 1 << 11
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_READDIRPLUS = 1 << 13
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_CAP_ASYNC_DIO = 1 << 15
FUSE_CAP_PARALLEL_DIROPS = 1 << 18
FUSE_CAP_HANDLE_KILLPRIV = 1 << 20
FUSE3_WANT_OFF = (FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_IOCTL_DIR | FUSE_CAP_AUTO_INVAL_DATA
                  | FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_ASYNC_DIO
                  | FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_HANDLE_KILLPRIV)

# libfuse3 passes the time a setattr leaves alone as tv_sec 0, tv_nsec UTIME_OMIT ("now":
# UTIME_NOW); mfusepy gives it to us as that many nanoseconds.
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

# The operations DebugfsOperations serves, in fusepy's names: fusepy installs whatever the
# object has, mfusepy gets exactly these through _Fuse3Operations (fgetattr and ftruncate are
# getattr and truncate with a file there).
# No flush, getxattr, setxattr or removexattr: libfuse answers ENOSYS once, the kernel stops
# sending them and says what debugfs says itself (close succeeds; the xattr calls fail with
# EOPNOTSUPP), one round trip less per close and per `echo` (security.capability).
OPERATIONS = (
    "getattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
    "chmod", "chown", "truncate", "open", "read", "write", "statfs", "release", "fsync",
    "listxattr", "opendir", "readdir", "releasedir", "fsyncdir", "init", "destroy", "access",
    "create", "utimens", "ioctl",
)
_SERVED = frozenset(OPERATIONS)  # looked up on every request


class BackendError(InputError):
    """The FUSE backend asked for cannot be used: one line, a start-up error."""


class MountError(RuntimeError):
    """libfuse could not mount (it printed why on stderr first)."""


class FuseError(OSError):
    """An errno for the kernel: both bindings answer an OSError with -errno."""

    def __init__(self, err: int) -> None:
        super().__init__(err, os.strerror(err))


class Tree(Protocol):
    """What the operations ask of a tree: a Debugfs, or `khofs run`'s root
    (khofs.run.run_tree) of a debugfs and the machine files."""

    def lookup(self, path: str) -> Dentry | None: ...

    def readdir(self, dentry: Dentry) -> list[str]: ...

    def chmod(self, dentry: Dentry, mode: int) -> int: ...

    def chown(self, dentry: Dentry, uid: int, gid: int) -> int: ...

    def utimens(self, dentry: Dentry, atime_ns: int | None, mtime_ns: int | None) -> int: ...

    def truncate(self, dentry: Dentry, length: int) -> int: ...


Capable = Callable[[int, int], bool]  # (pid, capability): the opener's credentials


def _check(result: int) -> int:
    if result < 0:
        raise FuseError(-result)
    return result


def _constant(fs: Tree) -> Callable[[], Tree]:
    def current() -> Tree:
        return fs

    return current


_thread = threading.local()


def _keep_thread_state() -> None:
    """ctypes makes and frees a Python thread state (and maps and unmaps its frame stack) for
    every callback from a libfuse worker thread: nearly half of each request's cost. One
    reference of our own keeps it for the thread's life (libfuse keeps at most ten idle)."""
    if not getattr(_thread, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _thread.kept = True


def _set_time(value: int, now: int) -> int | None:
    """One time of a utimensat: None to leave it alone."""
    if value == UTIME_OMIT:
        return None
    return now if value == UTIME_NOW else value


def splice_size(dentry: Dentry) -> int:
    """The st_size khofs reports: i_size (0 on debugfs, unless truncated), or the bytes a read
    from offset 0 gives now when that is more.

    FUSE serves sendfile, splice and copy_file_range from the page cache up to i_size, even
    for a file opened with direct I/O (fuse_splice_read -> filemap_splice_read); with i_size 0
    `sendfile` returns 0 at once and shutil.copyfile makes an empty copy. A debugfs file has
    no ->splice_read (sendfile fails with EINVAL and callers fall back to read()), which FUSE
    cannot say; so khofs reports the size instead, and every such copy gets the bytes. Each
    open drops the page cache (no FOPEN_KEEP_CACHE), so a copy sees the bytes of its open."""
    inode = dentry.inode
    fops = dentry.fops
    size = fops.data_size() if fops is not None and not inode.is_dir() else None
    return max(inode.size, size or 0)


class DebugfsOperations:
    """The FUSE operations over one Debugfs, called as fusepy calls them: `ops(name, *args)`.
    Namespace changes are refused as debugfs's simple_dir_inode_operations refuse them: EPERM,
    and EACCES for O_CREAT of a new name."""

    use_ns = True
    # libfuse2: pass a time a setattr leaves alone as UTIME_OMIT (and "now" as UTIME_NOW),
    # as libfuse3 always does, so `touch -a` / `touch -m` set just the one time
    flag_utime_omit_ok = 1

    def __init__(self, fs: Tree | Callable[[], Tree], page_size: int | Callable[[], int],
                 on_ready: Callable[[], None] | None = None,
                 lock: AbstractContextManager[Any] | None = None,
                 capable: Capable | None = None, context: Any = None) -> None:
        self._current: Callable[[], Tree] = fs if callable(fs) else _constant(fs)
        self._capable = capable
        self._context = context  # the binding's module: fuse_get_context, libfuse
        # a function when the machine may change under the mount (a reboot to another one)
        self._page_size = page_size
        self.on_ready = on_ready
        self.handles: dict[int, OpenFile] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self._tree_lock: AbstractContextManager[Any] = lock or nullcontext()
        self.started = False  # init ran: the mount is up

    @property
    def page_size(self) -> int:
        """The running machine's page size (st_blksize, statfs)."""
        return self._page_size if isinstance(self._page_size, int) else self._page_size()

    @property
    def fs(self) -> Tree:
        """The running kernel's tree: one and the same for the whole call, since the call
        holds the lock a kexec takes."""
        return self._current()

    def __call__(self, op: str, *args: Any) -> Any:
        _keep_thread_state()
        # The bindings answer an unexpected exception with EINVAL and hide it: log it, say EIO.
        try:
            with self._lock_for(op, args):
                method = getattr(self, op, None)
                if op not in _SERVED or method is None:
                    raise FuseError(errno.EFAULT)  # what fusepy's Operations said
                return method(*args)
        except OSError:
            raise
        except Exception:
            log.exception("unexpected error in FUSE operation %s%r", op, args[:1])
            raise FuseError(errno.EIO) from None

    def _lock_for(self, op: str, args: tuple[Any, ...]) -> AbstractContextManager[Any]:
        """The tree lock, but not for a read that may wait (/dev/kmsg in `khofs run`)."""
        if op == "read" and getattr(self.handles.get(getattr(args[-1], "fh", 0)), "unlocked",
                                    False):
            return nullcontext()
        return self._tree_lock

    def _opener(self, fi: Any) -> Opener:
        """Who is opening (fuse_get_context) and with which flags."""
        if self._context is None:
            return Opener(flags=fi.flags)
        _, _, pid = self._context.fuse_get_context()
        capable, lib = self._capable, self._context._libfuse
        return Opener(pid=pid, flags=fi.flags,
                      capable=(lambda cap: capable(pid, cap)) if capable else (lambda cap: True),
                      interrupted=lambda: bool(lib.fuse_interrupted()))

    def init(self, path: str) -> None:
        self.started = True
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path: str) -> None:
        return None

    def _dentry(self, path: str) -> Dentry:
        dentry = self.fs.lookup(path)
        if dentry is None:
            raise FuseError(errno.ENOENT)
        return dentry

    # --- attributes -----------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        dentry = self._dentry(path)
        inode = dentry.inode
        return {
            "st_ino": inode.ino, "st_mode": inode.mode, "st_nlink": inode.nlink,
            "st_uid": inode.uid, "st_gid": inode.gid, "st_size": splice_size(dentry),
            "st_blocks": 0, "st_blksize": self.page_size,
            "st_atime": inode.atime_ns, "st_mtime": inode.mtime_ns, "st_ctime": inode.ctime_ns,
        }

    def chmod(self, path: str, mode: int) -> int:
        return _check(self.fs.chmod(self._dentry(path), mode))

    def chown(self, path: str, uid: int, gid: int) -> int:
        return _check(self.fs.chown(self._dentry(path), uid, gid))

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        """utimensat, as setattr_copy applies it: each time given, "now" (UTIME_NOW) or left
        alone (UTIME_OMIT); ctime moves. A real time 1.07 s after the epoch would read as
        one of those markers: no debugfs file is that old."""
        now = time.time_ns()
        atime, mtime = times if times is not None else (UTIME_NOW, UTIME_NOW)
        return _check(self.fs.utimens(self._dentry(path), _set_time(atime, now),
                                      _set_time(mtime, now)))

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return _check(self.fs.truncate(self._dentry(path), length))

    def statfs(self, path: str) -> dict[str, int]:
        """simple_statfs: the page size and NAME_MAX, no blocks. The magic is the FUSE
        module's, not DEBUGFS_MAGIC (a known difference: FUSE sets it)."""
        return {"f_bsize": self.page_size, "f_frsize": self.page_size, "f_namemax": NAME_MAX}

    def access(self, path: str, amode: int) -> int:
        # default_permissions: the kernel decides and never asks
        return 0

    def listxattr(self, path: str) -> list[str]:
        """Extended attributes: none (an ENOSYS here would make listxattr EOPNOTSUPP, where
        debugfs lists nothing)."""
        return []

    # --- directories ----------------------------------------------------------------

    def readdir(self, path: str, fh: Any) -> list[str]:
        dentry = self._dentry(path)
        if not dentry.inode.is_dir():
            raise FuseError(errno.ENOTDIR)
        return [".", ".."] + self.fs.readdir(dentry)

    def opendir(self, path: str) -> int:
        self._dentry(path)
        return 0

    def releasedir(self, path: str, fh: Any) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> int:
        return 0

    # --- files ----------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        dentry = self._dentry(path)
        if dentry.fops is None:
            raise FuseError(errno.EISDIR)
        open_as = getattr(dentry.fops, "open_as", None)
        of = open_as(dentry, self._opener(fi)) if open_as else dentry.fops.open(dentry)
        if isinstance(of, int):
            raise FuseError(-of)
        if fi.flags & os.O_DIRECT:
            # do_dentry_open: debugfs files lack FMODE_CAN_ODIRECT, so an O_DIRECT open fails
            # with EINVAL after ->open ran (nothing of it is kept)
            raise FuseError(errno.EINVAL)
        with self._lock:
            fh = next(self._fh)
            self.handles[fh] = of
        fi.fh = fh
        fi.direct_io = 1
        fi.nonseekable = int(of.nonseekable)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        """O_CREAT of a missing name: debugfs directories have no ->create (EACCES)."""
        raise FuseError(errno.EACCES)

    def _handle(self, fi: Any) -> OpenFile:
        of = self.handles.get(fi.fh)
        if of is None:
            raise FuseError(errno.EBADF)
        return of

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        out = self._handle(fi).read(size, offset)
        if isinstance(out, int):
            raise FuseError(-out)
        return out

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return _check(self._handle(fi).write(data, offset))

    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        return 0

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            self.handles.pop(fi.fh, None)
        return 0

    def ioctl(self, path: str, cmd: int, arg: Any, fi: Any, flags: int, data: Any) -> int:
        raise FuseError(errno.ENOTTY)

    # --- namespace changes: vfs_* find no inode operation and fail -------------------

    def mkdir(self, path: str, mode: int) -> int:
        raise FuseError(errno.EPERM)

    def rmdir(self, path: str) -> int:
        raise FuseError(errno.EPERM)

    def unlink(self, path: str) -> int:
        raise FuseError(errno.EPERM)

    def rename(self, old: str, new: str) -> int:
        raise FuseError(errno.EPERM)

    def link(self, target: str, source: str) -> int:
        raise FuseError(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise FuseError(errno.EPERM)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise FuseError(errno.EPERM)

    def readlink(self, path: str) -> str:
        self._dentry(path)
        raise FuseError(errno.EINVAL)


# --- libfuse3 through mfusepy ----------------------------------------------------------------

def _forward(name: str) -> Callable[..., Any]:
    def method(self: _Fuse3Operations, *args: Any) -> Any:
        return self.ops(name, *args)

    method.__name__ = name
    return method


class _Fuse3Operations:
    """DebugfsOperations as mfusepy calls it. mfusepy calls each operation by name with
    fusepy's arguments (it ignores __call__, where the lock and the EIO answer are), so every
    one goes through `ops(name, ...)`; what libfuse3 does differently is undone here."""

    use_ns = True

    def __init__(self, ops: DebugfsOperations) -> None:
        self.ops = ops

    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse3's init(conn, config): the settings libfuse2 took as options, then ours."""
        for name, value in FUSE3_CONFIG.items():
            setattr(config, name, value)
        conn.max_write = FUSE3_MAX_WRITE  # and max_pages: 1 MiB reads (libfuse2: 128 KiB)
        conn.want &= ~FUSE3_WANT_OFF
        self.ops("init", "/")

    def readdir(self, path: str, fh: Any) -> list[tuple[str, None, int]]:
        # mfusepy hands a bare name to libfuse with a zeroed stat, which use_ino turns into
        # d_ino 0, and glibc's readdir skips those as deleted: every listing would be empty.
        # With no stat libfuse reports FUSE_UNKNOWN_INO and no type, as libfuse2 does.
        names: list[str] = self.ops("readdir", path, fh)
        return [(name, None, 0) for name in names]



for _name in OPERATIONS:
    if _name not in ("init", "readdir"):
        setattr(_Fuse3Operations, _name, _forward(_name))


# --- the backends ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """A loaded binding: its FUSE class (which mounts and serves until unmounted), and what
    `khofs --version` names."""

    version: str  # "2" or "3", as KHOFS_FUSE says
    module: Any  # the binding: fusepy's `fuse` or `mfusepy`
    fuse: Any  # its FUSE class
    dist: str  # the binding's distribution: its version is looked up only for `--version`
    lib: Any  # the libfuse it loaded (ctypes)

    @property
    def binding(self) -> str:
        """The binding and its version, e.g. "fusepy 3.0.1"."""
        return f"{self.dist} {_dist_version(self.dist)}"

    @property
    def library(self) -> str:
        """libfuse and its version, e.g. "libfuse 2.9.9"."""
        return f"libfuse {_library_version(self.lib)}"

    @property
    def description(self) -> str:
        """e.g. "fusepy 3.0.1 over libfuse 2.9.9"."""
        return f"{self.binding} over {self.library}"

    def serve(self, ops: DebugfsOperations, mountpoint: str, *, allow_other: bool,
              debug: bool) -> None:
        run = {"foreground": True, "nothreads": False, "debug": debug}
        if allow_other:
            run["allow_other"] = True
        if self.version == "2":
            self._serve(ops, ops, _FsPath(mountpoint), {**FUSE2_OPTIONS, **run})
            return
        if os.geteuid() != 0 and shutil.which("fusermount3") is None:
            # libfuse3 mounts by itself only as root (or root in a user namespace, as in
            # `khofs run`); anyone else needs fusermount3, from the fuse3 package.
            raise MountError("libfuse3 mounts as root, in a user namespace (khofs run) or "
                             "through fusermount3, which is not installed")
        # mfusepy passes a name that is not UTF-8 on (surrogateescape): it is not found,
        # ENOENT, as on debugfs (fusepy answers EINVAL before it reaches us)
        self._serve(ops, _Fuse3Operations(ops), mountpoint, {**FUSE3_OPTIONS, **run})

    def _serve(self, ops: DebugfsOperations, operations: object, mountpoint: str,
               options: dict[str, Any], **kw: Any) -> None:
        """Mount with `operations` (ops, or what calls it) until unmounted."""
        try:
            self.fuse(operations, mountpoint, raw_fi=True, **kw, **options)
        except RuntimeError as e:
            if not ops.started:  # fusepy's bare "1": say what failed
                raise MountError(f"libfuse could not mount it (fuse_main_real returned {e})"
                                 ) from None
            if self.version == "2":
                raise
            # libfuse 3.14's session loop returns the number of the signal that stopped it,
            # and fuse_main_real turns that into a failure (8) after it has unmounted, where
            # libfuse2 returns 0. Every stop after init ends so.
            log.debug("libfuse3 stopped: fuse_main_real returned %s", e)


class _FsPath(str):
    """A mount point that fusepy encodes as the file system does: fusepy encodes its argv
    with str.encode("utf-8"), which fails on a path that is not UTF-8 (its bytes are held
    as surrogates); the kernel takes any bytes."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return os.fsencode(str(self))


def _library_version(lib: Any) -> str:
    """libfuse's version as the loaded library tells it: fuse_pkgversion() in libfuse3;
    libfuse2 has only fuse_version() (29), so the loaded file's name gives the rest."""
    pkgversion = getattr(lib, "fuse_pkgversion", None)
    if pkgversion is not None:
        pkgversion.restype = ctypes.c_char_p
        text: bytes = pkgversion()
        return text.decode()
    name = os.path.basename(getattr(lib, "_name", "") or "")
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if name and name in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        found = re.search(r"\.so\.(\d+\.\d+\.\d+)$", os.path.realpath(path))
        if found:
            return found.group(1)
    number: int = lib.fuse_version()
    return f"{number // 10}.{number % 10}"


def _dist_version(dist: str) -> str:
    import importlib.metadata  # 10 ms of imports: only `khofs --version` asks

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """name=value while mfusepy is imported (it reads its library's name then), and not in
    what this process starts later."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


# libfuse by its soname: dlopen finds it in the loader's cache. Given to the bindings as
# FUSE_LIBRARY_PATH, so that they do not call ctypes.util.find_library, which runs
# `ldconfig -p` (a process, a few milliseconds of every mount) to learn the same name.
LIBFUSE2 = "libfuse.so.2"
LIBFUSE3 = "libfuse3.so.3"


def _load2() -> Backend:
    try:
        if "fuse" in sys.modules or os.environ.get("FUSE_LIBRARY_PATH"):
            module = importlib.import_module("fuse")
        else:
            with _env("FUSE_LIBRARY_PATH", LIBFUSE2):
                module = importlib.import_module("fuse")
    except ImportError:
        raise BackendError(f"{ENV}=2: fusepy is not installed (pip install fusepy)") from None
    except OSError:  # fusepy's "Unable to find libfuse"
        raise BackendError(f"{ENV}=2: libfuse.so.2 not found (apt install libfuse2, or "
                           f"{ENV}=3 for libfuse3)") from None
    lib = module._libfuse
    if lib.fuse_version() // 10 != 2:
        raise BackendError(f"{ENV}=2: fusepy loaded {lib._name}, not libfuse2")
    return Backend("2", module, module.FUSE, "fusepy", lib)


def _load3() -> Backend:
    missing = f"{ENV}=3: mfusepy is not installed (pip install 'khofs[fuse3]')"
    module = sys.modules.get("mfusepy")
    if module is None:
        if importlib.util.find_spec("mfusepy") is None:
            raise BackendError(missing)
        # mfusepy takes libfuse2 when it finds one, unless told which library to load
        try:
            ctypes.CDLL(LIBFUSE3)
        except OSError:
            raise BackendError(f"{ENV}=3: libfuse3.so.3 not found (apt install libfuse3-3)"
                               ) from None
        try:
            with _env("FUSE_LIBRARY_PATH", LIBFUSE3):
                module = importlib.import_module("mfusepy")
        except ImportError:
            raise BackendError(missing) from None
        except (OSError, AttributeError) as e:
            raise BackendError(f"{ENV}=3: mfusepy cannot use {LIBFUSE3}: {e}") from None
    if module.fuse_version_major != 3:
        raise BackendError(f"{ENV}=3: mfusepy was loaded with libfuse{module.fuse_version_major}"
                           " before khofs chose libfuse3")
    return Backend("3", module, module.FUSE, "mfusepy", module._libfuse)


_backends: dict[str, Backend] = {}


def load_backend(version: str | None = None) -> Backend:
    """The backend KHOFS_FUSE names (or `version`), loaded once; BackendError if it cannot
    be used."""
    if version is None:
        version = os.environ.get(ENV, "").strip() or DEFAULT_BACKEND
    if version not in _backends:
        load = {"2": _load2, "3": _load3}.get(version)
        if load is None:
            raise BackendError(f"{ENV}={version}: must be 2 (fusepy over libfuse2) or 3 "
                               "(mfusepy over libfuse3)")
        try:
            _backends[version] = load()
        except AttributeError as e:  # a binding not as expected; and BACKEND is an attribute
            raise BackendError(f"{ENV}={version}: {e}") from None
    return _backends[version]


def __getattr__(name: str) -> str:
    # BACKEND loads the binding only when asked for (`khofs --version`, the daemon's start)
    if name == "BACKEND":
        return load_backend().description
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(tree: Tree | Callable[[], Tree], mountpoint: str,
          page_size: int | Callable[[], int], *,
          lock: AbstractContextManager[Any] | None = None, allow_other: bool = False,
          debug: bool = False, on_ready: Callable[[], None] | None = None,
          capable: Capable | None = None) -> None:
    """Mount and serve until unmounted or signalled (libfuse handles SIGTERM and SIGINT).
    capable(pid, cap) answers for files whose contents depend on the opener."""
    backend = load_backend()
    ops = DebugfsOperations(tree, page_size, on_ready, lock, capable, backend.module)
    backend.serve(ops, os.fspath(mountpoint), allow_other=allow_other, debug=debug)
