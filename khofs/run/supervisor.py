"""The seccomp supervisor: every intercepted call of the run, answered by the emulated kernel.

reboot, kexec_load and kexec_file_load go to the System (khofs.engine.system), whatever the
caller asks: never to the host. mount of debugfs, proc, sysfs and devtmpfs is performed in the
caller's namespaces by the mount helper (khofs.run.mounts), so that what the caller mounts is
the emulated machine's (its debugfs; a proc and a sysfs with the machine files on them); other
mounts, and bind, move and remount requests, go through to the host kernel with the caller's
own rights (the run's namespaces keep them there). umount2 goes through the helper too, which
first takes off what khofs stacked under the target. fsopen of those file systems is ENOSYS,
so a program that tries the new mount API first falls back to mount(2). syslog reads the
emulated kernel's log; a READ with nothing unread waits, unanswered, for the next record.

A reboot that ends the boot is not answered: the boot's processes are killed, as the machine
takes them down. Calls whose caller is gone are dropped.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from khofs.engine.reboot import PidNsReboot, Reboot, Shutdown
from khofs.engine.syslog import WAIT
from khofs.engine.system import System
from khofs.engine.uaccess import CAP_SYS_ADMIN
from khofs.run import seccomp
from khofs.run.machine_files import MachineFiles
from khofs.run.namespace import MS_BIND, MS_MOVE, MS_REMOUNT, ns_inode
from khofs.run.seccomp import Notification
from khofs.run.task import PAGE, OwnSize, Task, status_field

log = logging.getLogger("khofs.run.supervisor")

EMULATED_FS = ("debugfs", "proc", "sysfs", "devtmpfs")
PATH_MAX = 4096

MountRequest = Callable[[dict[str, object]], int]  # to the mount helper: 0 or an errno


def to_int(value: int) -> int:
    """An `int` argument from its register: the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


@dataclass
class Boot:
    """The boot being served: its notify fd and its init (a pid in our namespace)."""

    fd: int
    init_pid: int
    init_pid_ns: int


class Supervisor:
    def __init__(self, system: System, files: MachineFiles, mount: MountRequest,
                 on_ending: Callable[[Shutdown], None], base_user_ns: int,
                 own_size: OwnSize) -> None:
        self.system = system
        self.own_size = own_size
        self.files = files
        self.mount_helper = mount
        self.on_ending = on_ending
        self.base_user_ns = base_user_ns
        self.boot: Boot | None = None
        self.waiting: list[Notification] = []  # syslog READs waiting for a record

    def start_boot(self, fd: int, init_pid: int) -> None:
        self.boot = Boot(fd, init_pid, ns_inode(init_pid, "pid"))
        self.waiting = []

    def handle(self) -> None:
        """Receive and answer one notification of the current boot."""
        assert self.boot is not None
        fd = self.boot.fd
        try:
            n = seccomp.receive(fd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):
                return
            raise
        call = n.call
        task = Task(n.pid, self.base_user_ns, self.boot.init_pid_ns, self.own_size)
        try:
            if call is None:  # not one of ours: let the host kernel refuse or run it
                seccomp.let_through(fd, n.id)
                return
            name, compat = call
            getattr(self, f"sys_{name}")(fd, n, task, compat)
        finally:
            task.close()

    def _answer(self, fd: int, n: Notification, result: int) -> None:
        if not seccomp.respond(fd, n.id, result):
            log.debug("pid %d left before its answer", n.pid)

    # --- kexec --------------------------------------------------------------------------

    def sys_kexec_file_load(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        kernel_fd, initrd_fd, cmdline_len, cmdline, flags = n.args[:5]
        self._answer(fd, n, self.system.sys_kexec_file_load(
            task, to_int(kernel_fd), to_int(initrd_fd), cmdline_len, cmdline, flags))

    def sys_kexec_load(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        entry, nr_segments, segments, flags = n.args[:4]
        if compat:
            entry, nr_segments, segments, flags = (a & 0xFFFFFFFF for a in n.args[:4])
        self._answer(fd, n, self.system.sys_kexec_load(task, entry, nr_segments, segments,
                                                       flags, compat))

    def sys_reboot(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        magic1, magic2, cmd, arg = n.args[:4]
        if not seccomp.still_waiting(fd, n.id):
            return
        got = self.system.sys_reboot(task, magic1, magic2, cmd, arg)
        if isinstance(got, Reboot):
            self.end_boot(got)
        elif isinstance(got, PidNsReboot):
            self._reboot_pid_ns(n.pid, got.signal)
        else:
            self._answer(fd, n, got)

    def end_boot(self, reboot: Reboot) -> None:
        """The machine goes down: wake what waits in it, and have its processes killed."""
        self.files.kmsg.boot_over()
        self.on_ending(reboot.how)

    def _reboot_pid_ns(self, pid: int, sig: int) -> None:
        """reboot_pid_ns: the caller's pid namespace ends. Its init is killed (SIGKILL; the
        kernel would have it exit as if by `sig`), and with it the caller."""
        target = ns_inode(pid, "pid")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if ns_inode(entry, "pid") != target:
                    continue
            except OSError:
                continue
            nspid = (status_field(int(entry), "NSpid") or "").split()
            if nspid and nspid[-1] == "1":
                os.kill(int(entry), signal.SIGKILL)
                return
        log.debug("reboot_pid_ns (%d): no init found for pid %d", sig, pid)

    # --- the log ----------------------------------------------------------------------------

    def sys_syslog(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        action, buf, length = to_int(n.args[0]), n.args[1], to_int(n.args[2])
        got = self.system.sys_syslog(task, action, buf, length)
        if got is WAIT:
            self.waiting.append(n)
        else:
            self._answer(fd, n, int(got))  # type: ignore[call-overload]

    def log_changed(self) -> None:
        """A record was logged: the syslog READs that wait for one may go on."""
        if self.boot is None:
            return
        waiting, self.waiting = self.waiting, []
        for n in waiting:
            if not seccomp.still_waiting(self.boot.fd, n.id):
                continue
            task = Task(n.pid, self.base_user_ns, self.boot.init_pid_ns, self.own_size)
            try:
                self.sys_syslog(self.boot.fd, n, task, False)
            finally:
                task.close()

    # --- mounts -------------------------------------------------------------------------

    def _string(self, task: Task, addr: int, limit: int) -> str | int:
        raw = task.strncpy_from_user(addr, limit)
        if raw is None:
            return -errno.EFAULT
        if len(raw) >= limit:
            return -errno.ENAMETOOLONG
        return os.fsdecode(raw)

    def sys_mount(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        source_p, target_p, type_p, flags, data_p = n.args[:5]
        fstype = self._string(task, type_p, PAGE) if type_p else ""
        if isinstance(fstype, int):
            self._answer(fd, n, fstype)
            return
        if fstype not in EMULATED_FS or flags & (MS_BIND | MS_REMOUNT | MS_MOVE):
            seccomp.let_through(fd, n.id)
            return
        target = self._string(task, target_p, PATH_MAX)
        source = self._string(task, source_p, PATH_MAX) if source_p else ""
        data = task.strncpy_from_user(data_p, PAGE) if data_p else b""
        for got in (target, source):
            if isinstance(got, int):
                self._answer(fd, n, got)
                return
        if not task.has_cap(CAP_SYS_ADMIN) or (
                fstype in ("debugfs", "devtmpfs") and not task.capable(CAP_SYS_ADMIN)):
            # may_mount; debugfs and devtmpfs cannot be mounted from a user namespace
            self._answer(fd, n, -errno.EPERM)
            return
        if not seccomp.still_waiting(fd, n.id):
            return
        err = self.mount_helper({"op": "mount", "pid": n.pid, "fstype": fstype,
                                 "source": source, "target": target, "flags": flags,
                                 "data": os.fsdecode(data or b"")})
        self._answer(fd, n, -err if err else 0)

    def sys_umount2(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        self._umount(fd, n, task, n.args[1])

    def sys_umount(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        self._umount(fd, n, task, 0)  # i386's oldumount: umount2(name, 0)

    def _umount(self, fd: int, n: Notification, task: Task, flags: int) -> None:
        target = self._string(task, n.args[0], PATH_MAX)
        if isinstance(target, int):
            self._answer(fd, n, target)
            return
        if not task.has_cap(CAP_SYS_ADMIN):
            self._answer(fd, n, -errno.EPERM)
            return
        if not seccomp.still_waiting(fd, n.id):
            return
        err = self.mount_helper({"op": "umount", "pid": n.pid, "target": target,
                                 "flags": flags & 0xFFFFFFFF})
        self._answer(fd, n, -err if err else 0)

    def sys_fsopen(self, fd: int, n: Notification, task: Task, compat: bool) -> None:
        name = self._string(task, n.args[0], PAGE)
        if isinstance(name, str) and name in EMULATED_FS:
            self._answer(fd, n, -errno.ENOSYS)
        else:
            seccomp.let_through(fd, n.id)
