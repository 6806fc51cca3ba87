"""Where a daemon keeps its state: its pid file, control socket and log, by mount point.

They live in the runtime directory: $XDG_RUNTIME_DIR/khofs, else /tmp/khofs-UID. That
directory must be ours alone, since what is in it steers a daemon (its socket) and is written
by it (its pid file and log): a real directory, not a symbolic link, owned by our uid, mode
0700; anything else is refused (RuntimeDirError: one line, exit status 2), never repaired or
written through. $XDG_RUNTIME_DIR itself must exist and be ours and 0700, as the XDG Base
Directory specification requires; khofs makes only its own `khofs` directory in it.

A mount point's state name is injective: two paths never share one. The path (resolved as
mountinfo shows it) is written with '/' as '-', and every byte that is not a plain character
of a file name (among them '-', '%', space and anything not ASCII) as %XX, so the name is
readable and can be read back; `/` itself is `%2F`. When that name would not fit (a file
name's 255 bytes, a socket path's 107), a hash of the path stands in: `%H` and 32 hex digits,
which no readable name can start with ('H' is not a hex digit).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from khofs.daemon.mountinfo import resolve
from khofs.errors import RuntimeDirError

NAME_MAX = 255
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) less the NUL
DIR_MODE = 0o700
# bytes a state name keeps as they are; every other one becomes %XX
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+,=@~:")
STATE_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/khofs, else /tmp/khofs-UID: made if missing, checked to be ours."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        _check_base(base)
        path = Path(base) / "khofs"
    else:
        path = Path(f"/tmp/khofs-{os.getuid()}")
    _make_private_dir(path)
    return path


def _check_base(base: str) -> None:
    """$XDG_RUNTIME_DIR: an existing directory of ours, mode 0700 (never made by us)."""
    where = f"XDG_RUNTIME_DIR={base}"
    try:
        st = os.stat(base)
    except OSError as e:
        raise RuntimeDirError(f"{where}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{where}: not a directory")
    problem = _not_ours(st)
    if problem:
        raise RuntimeDirError(f"{where}: {problem}: a runtime directory must be the user's "
                              "own with mode 0700")


def _make_private_dir(path: Path) -> None:
    """mkdir 0700 (not its parents), then check through an O_NOFOLLOW descriptor that what
    is there is ours: a directory another user made first, or a symlink, is refused."""
    made = True
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        made = False
    except OSError as e:
        raise RuntimeDirError(f"{path}: {e.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if os.path.islink(path) else "not a directory"
            raise RuntimeDirError(f"{path}: {kind}: {_ADVICE}") from None
        raise RuntimeDirError(f"{path}: {e.strerror}") from None
    try:
        if made:  # the umask may have taken bits from it
            os.fchmod(fd, DIR_MODE)
        problem = _not_ours(os.fstat(fd))
    finally:
        os.close(fd)
    if problem:
        raise RuntimeDirError(f"{path}: {problem}: {_ADVICE}")


_ADVICE = ("khofs keeps its daemons' sockets there and needs it to be its user's own "
           "(remove it, or set XDG_RUNTIME_DIR to a directory of yours with mode 0700)")


def _not_ours(st: os.stat_result) -> str:
    """Why a directory is not private to us, or ''."""
    uid = os.getuid()
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not {uid}"
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return ""


def _escape(component: bytes) -> str:
    return "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in component)


def state_name(mountpoint: str | os.PathLike[str]) -> str:
    """The readable, injective name of a mount point (see the module docstring)."""
    real = os.fsencode(resolve(mountpoint))
    if real == b"/":
        return "%2F"
    return "-".join(_escape(part) for part in real.strip(b"/").split(b"/"))


def _hashed(mountpoint: str | os.PathLike[str]) -> str:
    import hashlib  # only for a name too long to read: every command resolves a state name

    return "%H" + hashlib.sha256(os.fsencode(resolve(mountpoint))).hexdigest()[:32]


def _state_path(mountpoint: str | os.PathLike[str], suffix: str, limit: int = 0) -> Path:
    """runtime_dir()/NAME.suffix; the hashed name when the readable one is too long for a
    file name, or for `limit` bytes of path."""
    directory = runtime_dir()
    path = directory / f"{state_name(mountpoint)}{suffix}"
    if len(os.fsencode(path.name)) > NAME_MAX or (limit and len(os.fsencode(path)) > limit):
        path = directory / f"{_hashed(mountpoint)}{suffix}"
    return path


def default_log_path(mountpoint: str | os.PathLike[str]) -> Path:
    return _state_path(mountpoint, ".log")


def pid_path(mountpoint: str | os.PathLike[str]) -> Path:
    return _state_path(mountpoint, ".pid")


def socket_path(mountpoint: str | os.PathLike[str]) -> Path:
    """The control socket beside the pid file (it must fit in a sockaddr_un)."""
    return _state_path(mountpoint, ".sock", SUN_PATH_MAX)


def write_pid_file(path: Path) -> None:
    """Our pid, in a file made anew: never through a symlink or into an existing file."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | STATE_FILE_FLAGS, 0o600)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def read_pid_file(path: Path) -> int | None:
    """The pid a daemon wrote, or None (no file, a symlink, or not a number)."""
    try:
        fd = os.open(path, os.O_RDONLY | STATE_FILE_FLAGS)
    except OSError:
        return None
    try:
        text = os.read(fd, 64)
    finally:
        os.close(fd)
    try:
        return int(text)
    except ValueError:
        return None
