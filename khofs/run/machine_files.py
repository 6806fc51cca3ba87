"""The machine files of `khofs run`: what the emulated kernel shows in /proc, /sys and /dev
besides its debugfs, as one tree that the run binds over the real files (as LXCFS does):

    proc/cmdline  proc/iomem  proc/sysrq-trigger  proc/kmsg  dev/kmsg
    sys/kernel/kexec_loaded  sys/kernel/kexec_crash_loaded  sys/kernel/kexec_crash_size
    sys/firmware/memmap/N/{start,end,type}

The contents come from the engine (khofs.engine.procfs, sysfs, printk, sysrq); what depends on
who opens a file comes from an Opener the FUSE edge fills in: /proc/iomem reads as zeros
unless the opener has CAP_SYS_ADMIN in the machine's initial user namespace, and /dev/kmsg
opened for reading wants CAP_SYSLOG, as with Debian's dmesg_restrict=1 (6.16 no longer takes
CAP_SYS_ADMIN for it).
/dev/kmsg gives one record per read from the running kernel's log, blocks at its end (EAGAIN
with O_NONBLOCK), and takes records written to it; its reads run without the tree lock.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from khofs.daemon.opener import Opener, OpenerOps
from khofs.debugfs.file import simple_read_from_buffer
from khofs.debugfs.inode import Debugfs, Dentry, FileOps, OpenFile, ReadResult
from khofs.engine.kernel import Kernel
from khofs.engine.printk import Record, devkmsg_parse, kmsg_record
from khofs.engine.procfs import iomem_entries, proc_cmdline, proc_iomem
from khofs.engine.reboot import Reboot
from khofs.engine.sysfs import (
    firmware_map,
    kexec_crash_size_parse,
    kexec_crash_size_show,
    kexec_loaded_show,
    memmap_show,
)
from khofs.engine.system import System
from khofs.engine.uaccess import CAP_SYS_ADMIN, CAP_SYSLOG

MACHINE_FIRST_INO = 1 << 32  # apart from the debugfs tree's numbers, in the same mount
SYSFS_SIZE = 4096  # what sysfs reports as every attribute's size
PAGE_SIZE = 4096  # a sysfs store sees at most a page
PRINTKRB_RECORD_MAX = 1024  # devkmsg_write's longest record
KMSG_POLL = 0.1  # how often a blocked /dev/kmsg read looks whether its reader was killed


class Rendered(OpenerOps):
    """A seq_file (procfs single_open) or sysfs attribute: show renders the whole file for
    its opener, store takes a write (at most a page, as kernfs passes it)."""

    def __init__(self, show: Callable[[Opener], bytes] | None,
                 store: Callable[[bytes], int] | None = None) -> None:
        self.show = show
        self.store = store

    def open_as(self, dentry: Dentry, opener: Opener) -> OpenFile:
        return RenderedFile(dentry, self, opener)


class RenderedFile(OpenFile):
    """seq_read: a read at 0, or away from where the last one ended, renders again."""

    def __init__(self, dentry: Dentry, ops: Rendered, opener: Opener) -> None:
        super().__init__(dentry)
        self.ops = ops
        self.opener = opener
        self.buf: bytes | None = None
        self.read_pos = 0
        self.lock = threading.Lock()

    def _read(self, size: int, off: int) -> ReadResult:
        if self.ops.show is None:
            return -errno.EINVAL
        with self.lock:
            if self.buf is None or off == 0 or off != self.read_pos:
                self.buf = self.ops.show(self.opener)
            out = simple_read_from_buffer(self.buf, size, off)
            if isinstance(out, bytes):
                self.read_pos = off + len(out)
            return out

    def _write(self, data: bytes, off: int) -> int:
        if self.ops.store is None:
            return -errno.EINVAL
        return self.ops.store(data[:PAGE_SIZE])


class KmsgLog:
    """Wakes /dev/kmsg readers: a record was logged, or the boot ended."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0  # bumped when a boot ends: its readers return

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def boot_over(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()


class KmsgOps(OpenerOps):
    def __init__(self, system: System, log: KmsgLog) -> None:
        self.system = system
        self.log = log

    def open_as(self, dentry: Dentry, opener: Opener) -> OpenFile | int:
        """devkmsg_open: readers need check_syslog_permissions; writers do not."""
        reading = opener.flags & os.O_ACCMODE != os.O_WRONLY
        if reading and not opener.capable(CAP_SYSLOG):
            return -errno.EPERM
        return KmsgFile(dentry, self.system.kernel, self.log, opener)


class KmsgFile(OpenFile):
    """One open /dev/kmsg: its own position in this boot's records, from the first."""

    unlocked = True  # a read may wait for the next record: never under the tree lock

    def __init__(self, dentry: Dentry, kernel: Kernel, log: KmsgLog, opener: Opener) -> None:
        super().__init__(dentry)
        self.kernel = kernel
        self.log = log
        self.opener = opener
        self.seq = 0
        self.generation = log.generation
        self.lock = threading.Lock()  # user->lock

    def _read(self, size: int, off: int) -> ReadResult:
        """devkmsg_read: the next record whole, or EINVAL when it does not fit (the record
        is skipped all the same); at the end EAGAIN with O_NONBLOCK, else wait."""
        with self.lock:
            records = self.kernel.log.records
            with self.log.cond:
                while self.seq >= len(records):
                    if self.opener.flags & os.O_NONBLOCK:
                        return -errno.EAGAIN
                    if self.generation != self.log.generation or self.opener.interrupted():
                        return -errno.EINTR
                    self.log.cond.wait(KMSG_POLL)
            rec = kmsg_record(self.seq, records[self.seq])
            self.seq += 1
            return rec if len(rec) <= size else -errno.EINVAL

    def _write(self, data: bytes, off: int) -> int:
        """devkmsg_write: one record, its "<N>" prefix giving level and facility."""
        if len(data) > PRINTKRB_RECORD_MAX:
            return -errno.EINVAL
        facility, level, text = devkmsg_parse(data)
        self.kernel.log.log(level, text, facility)
        return len(data)


def _constant(data: bytes) -> Callable[[Opener], bytes]:
    def show(opener: Opener) -> bytes:
        return data

    return show


class ProcKmsgOps(OpenerOps):
    """/proc/kmsg (fs/proc/kmsg.c): syslog(2)'s READ as a file, for klogd-style readers."""

    def __init__(self, system: System, log: KmsgLog) -> None:
        self.system = system
        self.log = log

    def open_as(self, dentry: Dentry, opener: Opener) -> OpenFile | int:
        """kmsg_open: do_syslog(SYSLOG_ACTION_OPEN, SYSLOG_FROM_PROC) wants CAP_SYSLOG."""
        if not opener.capable(CAP_SYSLOG):
            return -errno.EPERM
        return ProcKmsgFile(dentry, self.system, self.log, opener)


class ProcKmsgFile(OpenFile):
    unlocked = True  # a read waits for a record: never under the tree lock

    def __init__(self, dentry: Dentry, system: System, log: KmsgLog, opener: Opener) -> None:
        super().__init__(dentry)
        self.system = system
        self.kernel = system.kernel
        self.log = log
        self.opener = opener
        self.generation = log.generation

    def _read(self, size: int, off: int) -> ReadResult:
        """kmsg_read: EAGAIN with O_NONBLOCK when nothing is unread, else wait for it."""
        with self.log.cond:
            while True:
                out = self.system.proc_kmsg_read(self.kernel, size)
                if out is not None:
                    return out
                if self.opener.flags & os.O_NONBLOCK:
                    return -errno.EAGAIN
                if self.generation != self.log.generation or self.opener.interrupted():
                    return -errno.EINTR
                self.log.cond.wait(KMSG_POLL)


class MachineFiles:
    """The tree for one System, across its boots."""

    def __init__(self, system: System, uid: int, gid: int,
                 on_reboot: Callable[[Reboot], None]) -> None:
        self.system = system
        self.on_reboot = on_reboot
        self.kmsg = KmsgLog()
        self.fs = Debugfs(uid, gid, 0o755, first_ino=MACHINE_FIRST_INO)
        self._build()
        self.refresh()

    def _dir(self, path: str) -> Dentry:
        node = self.fs.root
        for part in path.split("/"):
            found = node.children.get(part)
            if found is None:
                made = self.fs.create_dir(part, node)
                assert not isinstance(made, int)
                found = made
            node = found
        return node

    def _file(self, path: str, mode: int, ops: FileOps, size: int = 0) -> Dentry:
        parent, _, name = path.rpartition("/")
        made = self.fs.create_file(name, mode, self._dir(parent), ops)
        assert not isinstance(made, int)
        made.inode.size = size
        return made

    def _build(self) -> None:
        system = self.system
        self.cmdline = self._file("proc/cmdline", 0o444,
                                  Rendered(lambda o: proc_cmdline(system.kernel)))
        self._file("proc/iomem", 0o444, Rendered(self._iomem))
        self._file("proc/sysrq-trigger", 0o200, Rendered(None, self._sysrq))
        self._file("proc/kmsg", 0o400, ProcKmsgOps(system, self.kmsg))
        self._file("dev/kmsg", 0o644, KmsgOps(system, self.kmsg))
        self._file("sys/kernel/kexec_loaded", 0o444, Rendered(
            lambda o: kexec_loaded_show(system.loaded is not None).encode()), SYSFS_SIZE)
        self._file("sys/kernel/kexec_crash_loaded", 0o444, Rendered(
            lambda o: kexec_loaded_show(system.crash_loaded is not None).encode()), SYSFS_SIZE)
        self._file("sys/kernel/kexec_crash_size", 0o644, Rendered(
            lambda o: kexec_crash_size_show(system.crash_size()).encode(), self._crash_size),
            SYSFS_SIZE)
        self._dir("sys/firmware/memmap")
        for n, entry in enumerate(firmware_map(system.machine)):
            for attr in ("start", "end", "type"):
                self._file(f"sys/firmware/memmap/{n}/{attr}", 0o444,
                           Rendered(_constant(memmap_show(entry, attr).encode())), SYSFS_SIZE)

    def _iomem(self, opener: Opener) -> bytes:
        entries = iomem_entries(self.system.kernel, self.system.crash)
        return proc_iomem(entries, opener.capable(CAP_SYS_ADMIN)).encode()

    def _crash_size(self, data: bytes) -> int:
        size = kexec_crash_size_parse(data)
        if size is None:
            return -errno.EINVAL
        err = self.system.crash_shrink(size)
        return err if err else len(data)

    def _sysrq(self, data: bytes) -> int:
        reboot = self.system.sysrq_write(data)
        if reboot is not None:
            self.on_reboot(reboot)
        return len(data)

    def refresh(self) -> None:
        """After a boot: /proc/cmdline's size is the new line's length and its newline."""
        self.cmdline.inode.size = len(proc_cmdline(self.system.kernel))

    def log_sink(self, boot: int, rec: Record) -> None:
        self.kmsg.notify()
