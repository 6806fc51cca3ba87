"""The edge of `khofs run`, without mounting: the machine files as the FUSE edge serves them,
the run's tree, the seccomp structures, and a real process read as a system call's caller."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import threading

import pytest

from khofs.daemon.opener import Opener
from khofs.debugfs.inode import OpenFile
from khofs.engine.reboot import Reboot, Shutdown
from khofs.engine.system import System
from khofs.engine.uaccess import CAP_SYS_ADMIN, CAP_SYS_BOOT, kernel_read_file_from_fd
from khofs.run import seccomp
from khofs.run.machine_files import MACHINE_FIRST_INO, MachineFiles
from khofs.run.namespace import ns_inode
from khofs.run.run_tree import RunTree
from khofs.run.supervisor import to_int
from khofs.run.task import Task
from tests.helpers import boot_system


def opened(files: MachineFiles, path: str, opener: Opener | None = None) -> OpenFile:
    dentry = files.fs.lookup(path)
    assert dentry is not None and dentry.fops is not None
    got = dentry.fops.open_as(dentry, opener or Opener())  # type: ignore[attr-defined]
    assert isinstance(got, OpenFile)
    return got


@pytest.fixture
def system() -> System:
    return boot_system(cmdline="kho=on crashkernel=256M")


@pytest.fixture
def reboots() -> list[Reboot]:
    return []


@pytest.fixture
def files(system: System, reboots: list[Reboot]) -> MachineFiles:
    return MachineFiles(system, 0, 0, reboots.append)


def test_the_tree_and_its_modes(files: MachineFiles) -> None:
    want = {"proc/cmdline": (0o444, 24), "proc/iomem": (0o444, 0),
            "proc/sysrq-trigger": (0o200, 0), "dev/kmsg": (0o644, 0),
            "sys/kernel/kexec_loaded": (0o444, 4096), "sys/kernel/kexec_crash_size": (0o644, 4096),
            "sys/firmware/memmap/3/type": (0o444, 4096)}
    for path, (mode, size) in want.items():
        dentry = files.fs.lookup(path)
        assert dentry is not None, path
        assert (stat.S_IMODE(dentry.inode.mode), dentry.inode.size) == (mode, size), path
        assert dentry.inode.ino >= MACHINE_FIRST_INO
    assert files.fs.lookup("sys/firmware/memmap/4") is None


def test_iomem_depends_on_the_opener(files: MachineFiles) -> None:
    root = opened(files, "proc/iomem", Opener(capable=lambda cap: cap == CAP_SYS_ADMIN))
    nobody = opened(files, "proc/iomem", Opener(capable=lambda cap: False))
    assert root.read(4096, 0)[:31] == b"00000000-00000fff : Reserved\n00"
    assert nobody.read(4096, 0)[:29] == b"00000000-00000000 : Reserved\n"


def test_kexec_files_follow_the_system(files: MachineFiles, system: System) -> None:
    assert opened(files, "sys/kernel/kexec_loaded").read(4096, 0) == b"0\n"
    size = opened(files, "sys/kernel/kexec_crash_size")
    assert size.read(4096, 0) == b"268435456\n"
    assert size.write(b"0x4000000\n", 0) == 10
    assert size.read(4096, 0) == b"67108864\n"
    assert size.write(b"lots", 0) == -errno.EINVAL
    assert size.write(b"0x8000000", 0) == -errno.EINVAL  # it only shrinks


def test_kmsg_one_record_per_read(files: MachineFiles, system: System) -> None:
    kmsg = opened(files, "dev/kmsg", Opener(flags=os.O_RDONLY | os.O_NONBLOCK))
    first = kmsg.read(8192, 0)
    assert isinstance(first, bytes) and first.startswith(b"5,0,") and \
        first.endswith(b",-;Kernel command line: kho=on crashkernel=256M\n")
    assert kmsg.read(8192, 0)[:4] == b"6,1,"  # type: ignore[index]
    while isinstance(kmsg.read(8192, 0), bytes):
        pass
    assert kmsg.read(8192, 0) == -errno.EAGAIN
    writer = opened(files, "dev/kmsg", Opener(flags=os.O_WRONLY))
    assert writer.write(b"<6>hello\n", 0) == 9
    assert kmsg.read(5, 0) == -errno.EINVAL  # too small: and the record is gone
    assert kmsg.read(8192, 0) == -errno.EAGAIN
    assert system.kernel.log.records[-1].text == "hello"
    assert system.kernel.log.records[-1].facility == 1


def test_kmsg_readers_need_cap_syslog(files: MachineFiles) -> None:
    dentry = files.fs.lookup("dev/kmsg")
    assert dentry is not None and dentry.fops is not None
    nobody = Opener(capable=lambda cap: False)
    assert dentry.fops.open_as(dentry, nobody) == -errno.EPERM  # type: ignore[attr-defined]
    writer = Opener(flags=os.O_WRONLY, capable=lambda cap: False)
    assert isinstance(dentry.fops.open_as(dentry, writer), OpenFile)  # type: ignore[attr-defined]


def test_a_blocked_kmsg_read_waits_for_a_record_or_the_end_of_the_boot(
        files: MachineFiles, system: System) -> None:
    kmsg = opened(files, "dev/kmsg")
    for _ in system.kernel.log.records:
        assert isinstance(kmsg.read(8192, 0), bytes)
    got: list[object] = []

    def read() -> None:
        got.append(kmsg.read(8192, 0))

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # blocked at the end of the log
    system.kernel.log.info("a new record")
    files.log_sink(1, system.kernel.log.records[-1])
    reader.join(5)
    assert got[0].endswith(b",-;a new record\n")  # type: ignore[union-attr]
    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.3)
    files.kmsg.boot_over()  # the machine goes down: nobody waits any longer
    reader.join(5)
    assert got[1] == -errno.EINTR


def test_sysrq_reboots_the_machine(files: MachineFiles, system: System,
                                   reboots: list[Reboot]) -> None:
    trigger = opened(files, "proc/sysrq-trigger")
    assert trigger.write(b"h\n", 0) == 2
    assert system.kernel.log.records[-1].text.startswith("sysrq: HELP : loglevel(0-9) reboot(b)")
    assert reboots == []
    assert trigger.write(b"s", 0) == 1
    assert system.kernel.log.records[-1].text == "sysrq: Emergency Sync"
    assert trigger.write(b"c", 0) == 1
    assert reboots == [Reboot(Shutdown.HALT, "")]
    texts = system.kernel.log.texts()
    assert texts[-3:] == ["sysrq: Trigger a crash",
                          "Kernel panic - not syncing: sysrq triggered crash",
                          "---[ end Kernel panic - not syncing: sysrq triggered crash ]---"]


def test_sysrq_crash_boots_the_crash_kernel(reboots: list[Reboot]) -> None:
    from tests.machine_helpers import FakeUser, bzimage

    system = boot_system(cmdline="kho=on crashkernel=256M panic=10")
    user = FakeUser()
    user.open(3, bzimage())
    user.put(0x1000, b"root=/dev/sda\0")
    assert system.sys_kexec_file_load(user, 3, -1, 14, 0x1000, 0x6) == 0
    files = MachineFiles(system, 0, 0, reboots.append)
    assert opened(files, "proc/sysrq-trigger").write(b"c", 0) == 1
    assert reboots == [Reboot(Shutdown.KEXEC, "")]
    system.boot_next()
    headers = system.kernel.params.cmdline.split()[0]
    assert headers.startswith("elfcorehdr=0x") and system.kernel.params.cmdline.endswith(
        " root=/dev/sda")
    files.refresh()


def test_the_run_tree_keeps_the_two_trees_apart(files: MachineFiles, system: System) -> None:
    tree = RunTree(lambda: system.kernel.debugfs, files.fs, 0, 0)
    root = tree.lookup("/")
    assert root is not None and tree.readdir(root) == ["debug", "machine"]
    assert tree.lookup("/debug/kho/out/finalize") is system.kernel.debugfs.lookup(
        "/kho/out/finalize")
    assert tree.lookup("/machine/proc/cmdline") is files.fs.lookup("/proc/cmdline")
    assert tree.lookup("/nope") is None
    debug = tree.lookup("/debug/kho")
    assert debug is not None and tree.chmod(debug, 0o700) == 0
    assert stat.S_IMODE(debug.inode.mode) == 0o700


# --- seccomp and the caller ------------------------------------------------------------------

def test_the_notify_structures_are_the_kernels() -> None:
    assert (seccomp.NOTIF.size, seccomp.NOTIF_RESP.size) == (80, 24)
    assert seccomp.SECCOMP_IOCTL_NOTIF_RECV == 0xC0502100
    assert seccomp.SECCOMP_IOCTL_NOTIF_SEND == 0xC0182101
    assert seccomp.SECCOMP_IOCTL_NOTIF_ID_VALID == 0x40082102
    assert seccomp.SYSCALLS[(seccomp.AUDIT_ARCH_X86_64, 169)] == ("reboot", False)
    assert seccomp.SYSCALLS[(seccomp.AUDIT_ARCH_I386, 283)] == ("kexec_load", True)
    assert seccomp.SYSCALLS[(seccomp.AUDIT_ARCH_X86_64, 528 | 0x40000000)] == \
        ("kexec_load", True)
    assert (seccomp.AUDIT_ARCH_I386, 320) not in seccomp.SYSCALLS  # i386 has none
    assert seccomp.seccomp_available() is None


def test_int_arguments_are_their_low_32_bits_signed() -> None:
    assert to_int(0xFFFFFFFF) == -1 and to_int(0x1_0000_0003) == 3 and to_int(7) == 7


def test_a_process_as_a_caller() -> None:
    """This very process: its memory, its files, its credentials."""
    me = os.getpid()
    task = Task(me, ns_inode(me, "user"), ns_inode(me, "pid"))
    data = ctypes.create_string_buffer(b"khofs reads me\0tail")
    addr = ctypes.addressof(data)
    try:
        assert task.copy_from_user(addr, 5) == b"khofs"
        assert task.strncpy_from_user(addr, 100) == b"khofs reads me"
        assert task.strncpy_from_user(addr, 4) == b"khof"
        assert task.copy_from_user(0x10, 8) is None  # nothing mapped there: EFAULT
        assert task.in_init_pid_ns()
        assert task.capable(CAP_SYS_BOOT) == (os.geteuid() == 0)
        fd = os.open("/etc/hostname", os.O_RDONLY)
        wfd = os.open(os.devnull, os.O_WRONLY)
        path = os.open("/etc/hostname", os.O_PATH)
        try:
            with open("/etc/hostname", "rb") as f:
                want = f.read()
            assert kernel_read_file_from_fd(task, fd, 1 << 32) == want
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pread: the caller's offset stays
            assert kernel_read_file_from_fd(task, wfd, 1 << 32) == -errno.EBADF
            assert kernel_read_file_from_fd(task, path, 1 << 32) == -errno.EBADF
            assert kernel_read_file_from_fd(task, 999, 1 << 32) == -errno.EBADF
            dirfd = os.open("/etc", os.O_RDONLY)
            assert kernel_read_file_from_fd(task, dirfd, 1 << 32) == -errno.EINVAL
            os.close(dirfd)
        finally:
            for each in (fd, wfd, path):
                os.close(each)
    finally:
        task.close()
    other = Task(me, ns_inode(me, "user") + 1, ns_inode(me, "pid") + 1)
    assert not other.capable(CAP_SYS_BOOT) and not other.in_init_pid_ns()
    assert struct.calcsize("P") == 8
