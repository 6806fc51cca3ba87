"""Seccomp user notification (include/uapi/linux/seccomp.h): the filter every process of a
boot runs under, and the supervisor's side of the notify fd.

The filter is built with Debian's python3-seccomp in the boot's init before it executes
COMMAND, and lets everything through except the calls the emulated kernel answers, which it
sends to the supervisor (SECCOMP_RET_USER_NOTIF). On x86-64 it also covers the i386 and x32
entries: without them a 32-bit `int $0x80` reboot would get libseccomp's bad-arch action,
with them it is notified like the native one. The binding's own receive_notify works only in
the process that loaded the filter, so the supervisor uses the ioctls itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import platform
import struct
from dataclasses import dataclass

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# What the emulated kernel answers.
NOTIFIED = ("reboot", "kexec_load", "kexec_file_load", "mount", "umount2", "umount", "fsopen",
            "syslog")

# The syscall numbers, per entry: (audit arch, nr) -> (name, compat)
_X86_64 = {"syslog": 103, "mount": 165, "umount2": 166, "reboot": 169, "kexec_load": 246,
           "kexec_file_load": 320, "fsopen": 430}
_I386 = {"mount": 21, "umount": 22, "umount2": 52, "reboot": 88, "syslog": 103,
         "kexec_load": 283, "fsopen": 430}
_X32 = {**_X86_64, "kexec_load": 528}  # x32's kexec_load is compat_sys_kexec_load
_AARCH64 = {"mount": 40, "umount2": 39, "reboot": 142, "kexec_load": 104, "syslog": 116,
            "kexec_file_load": 294, "fsopen": 430}
SYSCALLS: dict[tuple[int, int], tuple[str, bool]] = {
    **{(AUDIT_ARCH_X86_64, nr): (name, False) for name, nr in _X86_64.items()},
    **{(AUDIT_ARCH_X86_64, nr | X32_SYSCALL_BIT): (name, name == "kexec_load")
       for name, nr in _X32.items()},
    **{(AUDIT_ARCH_I386, nr): (name, True) for name, nr in _I386.items()},
    **{(AUDIT_ARCH_AARCH64, nr): (name, False) for name, nr in _AARCH64.items()},
}


def _ioc(direction: int, nr: int, size: int) -> int:
    """_IOC(dir, '!', nr, size)"""
    return direction << 30 | size << 16 | ord("!") << 8 | nr


_IOC_WRITE, _IOC_READ = 1, 2
NOTIF = struct.Struct("=QIIiIQ6Q")  # struct seccomp_notif: id, pid, flags, seccomp_data
NOTIF_RESP = struct.Struct("=QqiI")  # struct seccomp_notif_resp: id, val, error, flags
SECCOMP_IOCTL_NOTIF_RECV = _ioc(_IOC_READ | _IOC_WRITE, 0, NOTIF.size)
SECCOMP_IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, 1, NOTIF_RESP.size)
SECCOMP_IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1


@dataclass(frozen=True)
class Notification:
    """One intercepted call: which task (a pid in the supervisor's pid namespace), which
    entry and call, and its six arguments (32-bit entries' upper halves masked off)."""

    id: int
    pid: int
    arch: int
    nr: int
    args: tuple[int, ...]

    @property
    def call(self) -> tuple[str, bool] | None:
        """(name, compat) of the call, None for one the filter should not have sent."""
        return SYSCALLS.get((self.arch, self.nr))


def receive(fd: int) -> Notification:
    """SECCOMP_IOCTL_NOTIF_RECV (the struct must come zeroed). OSError: ENOENT when the
    caller went away before it was read, EINTR."""
    buf = bytearray(NOTIF.size)
    fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    nid, pid, _flags, nr, arch, _ip, *args = NOTIF.unpack(buf)
    if arch == AUDIT_ARCH_I386:
        args = [a & 0xFFFFFFFF for a in args]
    return Notification(nid, pid, arch, nr & 0xFFFFFFFF, tuple(args))


def respond(fd: int, nid: int, result: int) -> bool:
    """SECCOMP_IOCTL_NOTIF_SEND: result >= 0 is the return value, < 0 a negative errno.
    False when the caller is gone (killed, or interrupted and restarted)."""
    val, error = (result, 0) if result >= 0 else (0, result)
    return _send(fd, NOTIF_RESP.pack(nid, val, error, 0))


def let_through(fd: int, nid: int) -> bool:
    """SECCOMP_USER_NOTIF_FLAG_CONTINUE: the host kernel runs the call as the caller asked.
    Only for calls the caller's own rights govern (ordinary mounts), never for a reboot or
    kexec: the caller could change its memory after we looked."""
    return _send(fd, NOTIF_RESP.pack(nid, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))


def _send(fd: int, packed: bytes) -> bool:
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(packed), True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def still_waiting(fd: int, nid: int) -> bool:
    """SECCOMP_IOCTL_NOTIF_ID_VALID: the caller is still blocked in this call."""
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, bytearray(struct.pack("=Q", nid)), True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def load_filter() -> int:
    """In the boot's init, before it executes COMMAND: load the filter (inherited by every
    process it starts) and return the notify fd. no_new_privs stays off (init has
    CAP_SYS_ADMIN in its namespaces), so set-uid programs keep working inside the run."""
    import seccomp  # Debian's python3-seccomp

    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    flt.set_attr(seccomp.Attr.CTL_NNP, 0)
    if platform.machine() == "x86_64":
        for arch in (seccomp.Arch.X86, seccomp.Arch.X32):
            if not flt.exist_arch(arch):
                flt.add_arch(arch)
    for name in NOTIFIED:
        # a call no entry of this machine has (umount outside i386): nothing to catch
        with contextlib.suppress(RuntimeError, ValueError):
            flt.add_rule(seccomp.NOTIFY, name)
    flt.load()
    fd: int = flt.get_notify_fd()
    return fd


def seccomp_available() -> str | None:
    """None when the filter can be built here, else why not (one line)."""
    try:
        import seccomp  # noqa: F401
    except ImportError:
        return "python3-seccomp is not installed (Debian: apt install python3-seccomp)"
    return None
