"""Linux namespaces and mounts for `khofs run`, through libc (Python 3.11 has no os.unshare,
os.setns or os.mount). Every failure is an OSError carrying the errno."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
BOOT_NAMESPACES = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _enc(s: str | bytes | None) -> bytes | None:
    return s.encode() if isinstance(s, str) else s


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None,
          flags: int, data: str | bytes | None = None) -> None:
    ret = _libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags),
                      _enc(data))
    _check(ret, f"mount {os.fsdecode(target)}")


def umount(target: str | bytes, flags: int = 0) -> None:
    _check(_libc.umount2(_enc(target), ctypes.c_int(flags)), f"umount {os.fsdecode(target)}")


def open_tree(path: str | bytes, recursive: bool = False) -> int:
    """A detached copy of the mount at path (a bind mount in the making), as an fd."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, _enc(path), flags),
                  f"open_tree {os.fsdecode(path)}")


def move_mount(tree: int, target: str | bytes) -> None:
    """Attach a tree from open_tree at target, as this process resolves target."""
    _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, _enc(target),
                         MOVE_MOUNT_F_EMPTY_PATH), f"move_mount {os.fsdecode(target)}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


def set_parent_death_signal(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): die with the process that started us."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0), "prctl")


def enter_private_namespace() -> None:
    """A mount namespace of our own, whose mounts never propagate back; as an ordinary user
    inside a new user namespace where we are root (so FUSE and bind mounts are allowed)."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        unshare(CLONE_NEWNS)
    else:
        unshare(CLONE_NEWUSER | CLONE_NEWNS)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def ns_inode(pid: int | str, kind: str) -> int:
    """The inode of /proc/PID/ns/KIND: equal inodes, the same namespace."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
