"""The emulated machine across kexecs: its RAM, its boots and their log, and a loaded image.

`kexec_load` is `kexec -s -l` (kexec_file_load: with KHO on, kho_fill_kimage's scratch table
segment first, then the image loader's segments, all inside scratch areas); `kexec_execute`
is `kexec -e`: the segments are copied to their destinations and the next kernel boots in the
same RAM with the handover. A `MachineState` carries all that to another process.

For `khofs run` the machine also answers system calls from a caller (khofs.engine.uaccess):
kexec_file_load and kexec_load into its two slots (kexec_image, kexec_crash_image), reboot
(a kexec, a cold restart, a halt or a power-off: boot_next starts the next boot), syslog, and
the writes of /proc/sysrq-trigger and /sys/kernel/kexec_crash_size. `restart` is a cold
restart now (`khofs reboot`).

Boots are numbered twice. The kernel's own count (`Kernel.boot_number`, what a plugin sees as
`api.boot` and what seeds the boot's randomness) is 1 for a cold boot and grows by one per
kexec. The log's count (`[boot N]`) goes on across cold restarts too, so `khofs log` tells
every boot of the machine apart: it is the kernel's count plus `log_base`.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from khofs.engine.crash_core import CrashRes, crash_get_memory_size, crash_shrink_memory
from khofs.engine.driver import Initcall, initcall_problem
from khofs.engine.era import DEFAULT_PROFILE, FIRST, LAST, Profile, profile_of_release
from khofs.engine.kernel import Kernel
from khofs.engine.kexec import (
    Handover,
    Segment,
    image_segments,
    pack_scratch_table,
    scratch_table_buf,
)
from khofs.engine.kexec_core import sys_kexec_load
from khofs.engine.kexec_file import add_buffers, sys_kexec_file_load
from khofs.engine.machine import Machine
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Record
from khofs.engine.reboot import PR_FMT, PidNsReboot, Reboot, Shutdown, sys_reboot
from khofs.engine.syslog import do_syslog, syslog_read
from khofs.engine.sysrq import handle_sysrq, sysrq_keys
from khofs.engine.uaccess import UserAccess

LogSink = Callable[[int, Record], None]


@dataclass(frozen=True)
class LoadedImage:
    """A kimage after kexec_file_load: the handover, what to copy where at `kexec -e`, and
    the kernel the image holds (its era and release)."""

    handover: Handover
    contents: tuple[tuple[int, bytes], ...]
    profile: Profile = DEFAULT_PROFILE


@dataclass
class MachineState:
    """What `kexec -e` into another process carries: RAM, the loaded image (its handover
    included), and the story so far."""

    pages: dict[int, bytes]  # page address -> contents, for every page ever written
    image: LoadedImage
    boot_number: int  # of the kernel that loaded the image
    records: list[tuple[int, Record]]
    seed: int


def format_record(boot: int, rec: Record) -> str:
    """A `khofs log` line: the boot number, then the line as dmesg prints it."""
    return f"[boot {boot}] {rec.format()}"


class System:
    def __init__(self, machine: Machine, cmdline: str,
                 initcalls: Sequence[Initcall] = (), *, seed: int = 0,
                 uid: int = 0, gid: int = 0, log_sink: LogSink | None = None,
                 state: MachineState | None = None, profile: Profile = DEFAULT_PROFILE,
                 next_profile: Profile | None = None) -> None:
        self.machine = machine
        self.initcalls = initcalls
        self.profile = profile  # of the cold boot; a kexec boots the image's
        self.next_profile = next_profile  # `--next-abi`: every load boots this kernel
        self.seed = seed
        self.uid, self.gid = uid, gid
        self.log_sink = log_sink
        self.lock = threading.Lock()  # one kexec at a time, never mid-operation
        self.mem = PhysMem(machine.arch.page_size)
        self.records: list[tuple[int, Record]] = []
        self.boot_cmdlines: dict[int, str] = {}
        self.loaded: LoadedImage | None = None
        self.crash_loaded: LoadedImage | None = None  # kexec_crash_image
        self.boot_cmdline = cmdline  # what the boot loader starts a cold boot with
        self.going: tuple[Shutdown, LoadedImage | None] | None = None  # a reboot under way
        self.log_base = 0  # the log's boot number less the kernel's (cold restarts before)
        if state is None:
            self.kernel = self._boot(cmdline, None, 1, profile)
        else:
            self.seed = state.seed
            self.mem.load_pages(state.pages)
            self.records = list(state.records)
            if self.records:  # the last line is the kernel's that kexec'd: its log number
                self.log_base = self.records[-1][0] - state.boot_number
            self.kernel = self._start(state.image, state.boot_number + 1)
        self.crash = CrashRes.of(self.kernel.reservations)

    @property
    def log_number(self) -> int:
        """The running kernel's boot number in the log (`[boot N]`)."""
        return self.log_base + self.kernel.boot_number

    def _boot(self, cmdline: str, handover: Handover | None, number: int,
              profile: Profile) -> Kernel:
        label = self.log_base + number
        self.boot_cmdlines[label] = cmdline  # a booting kernel's, before self.kernel is it

        def sink(rec: Record) -> None:
            self.records.append((label, rec))
            if self.log_sink is not None:
                self.log_sink(label, rec)

        return Kernel(self.machine, cmdline, self.initcalls, uid=self.uid, gid=self.gid,
                      log_sink=sink, mem=self.mem, handover=handover, boot_number=number,
                      seed=self.seed, profile=profile)

    # --- kexec -s -l --------------------------------------------------------------------

    def kexec_load(self, cmdline: str | None = None, image_size: int | None = None,
                   initrd_size: int = 0, profile: Profile | None = None,
                   image_release: str | None = None) -> tuple[int, str]:
        """kexec_file_load: (0, "") or (-errno, the line kexec prints). The new command line
        defaults to this kernel's (kexec --reuse-cmdline). The next kernel is `profile`
        (`khofs kexec --abi`), else `next_profile` (`--next-abi`), else the image's release,
        else this kernel's version again; a release khofs cannot boot, or a next kernel that
        cannot run this machine's producers, is EINVAL with one line (here and in the log),
        and nothing is loaded."""
        with self.lock:
            k = self.kernel
            nxt = self._next_kernel(profile, image_release)
            if isinstance(nxt, str):
                return self._refuse(nxt)
            cmdline = k.params.cmdline if cmdline is None else cmdline
            size = image_size if image_size is not None else self.machine.kernel_size
            bufs = image_segments(self.machine, cmdline, size, initrd_size)
            fdt_phys = k.kho.fill_kimage() if k.kho_enabled else 0
            if fdt_phys:
                bufs.insert(0, scratch_table_buf(len(k.scratch)))
            err, segments = add_buffers(k, bufs, None, False)
            if err:
                return err, "kexec_file_load failed: Cannot assign requested address"
            self.loaded = self._image(k, cmdline, tuple(segments), fdt_phys, nxt)
            return 0, ""

    def _next_kernel(self, profile: Profile | None, release: str | None) -> Profile | str:
        """The kernel a load boots: `profile`, else `next_profile`, else the release the
        image names, else this kernel's version again; or why khofs cannot boot it (one
        line): a release it does not emulate, or producers that kernel cannot run."""
        nxt = profile or self.next_profile
        if nxt is None and release is not None:
            try:
                nxt = profile_of_release(release)
            except ValueError:
                return (f"the image is Linux {release}; khofs emulates "
                        f"{FIRST[0]}.{FIRST[1]} to {LAST[0]}.{LAST[1]}")
        nxt = nxt or self.kernel.profile
        problem = initcall_problem(self.initcalls, nxt)
        return f"the next kernel, {nxt.release}: {problem}" if problem else nxt

    def _refuse(self, why: str) -> tuple[int, str]:
        self.kernel.log.err(f"khofs: kexec: {why}")
        return -errno.EINVAL, f"kexec_file_load failed: Invalid argument ({why})"

    def _image(self, k: Kernel, cmdline: str, segments: tuple[Segment, ...], fdt_phys: int,
               profile: Profile) -> LoadedImage:
        """kho_fill_kimage: the root FDT page and the scratch table's copy, when the era's
        kho_fill_kimage hands them over (khofs.engine.kho_out: fill_kimage)."""
        handover = Handover(cmdline, segments)
        if not fdt_phys:
            return LoadedImage(handover, (), profile)
        table = pack_scratch_table([(s.addr, s.size) for s in k.scratch])
        seg = segments[0]
        handover = replace(handover, fdt_phys=fdt_phys, fdt_len=k.mem.page_size,
                           scratch_phys=seg.mem, scratch_len=len(table))
        return LoadedImage(handover, ((seg.mem, table),), profile)

    def kexec_unload(self) -> None:
        """kexec -u (kexec_file_load with KEXEC_FILE_UNLOAD): forget the loaded image."""
        with self.lock:
            self.loaded = None

    # --- kexec -e -----------------------------------------------------------------------

    def kexec_execute(self) -> tuple[int, str]:
        """Reboot into the loaded image in this RAM: (0, "") or (-EINVAL, why not)."""
        with self.lock:
            image = self.loaded
            if image is None:
                return -errno.EINVAL, "Nothing has been loaded!"
            number = self._leave()
            self.kernel = self._start(image, number + 1)
            return 0, ""

    def kexec_away(self) -> tuple[int, MachineState | None]:
        """kexec -e into another process: what it needs, and this kernel is gone."""
        with self.lock:
            if self.loaded is None:
                return -errno.EINVAL, None
            image = self.loaded
            number = self._leave()
            return 0, MachineState(self.mem.pages(), image, number, list(self.records), self.seed)

    def _leave(self) -> int:
        """machine_kexec: the old kernel's last line; its files are gone with it."""
        k = self.kernel
        k.log.notice("kexec_core: Starting new kernel")
        k.debugfs.remove(k.debugfs.root)
        self.loaded = None
        return k.boot_number

    def _start(self, image: LoadedImage, number: int) -> Kernel:
        """The purgatory copies each segment home, then the next kernel boots."""
        for phys, data in image.contents:
            self.mem.write(phys, data)
        return self._boot(image.handover.cmdline, image.handover, number, image.profile)

    # --- the machine's system calls, as `khofs run` serves them -----------------------------

    def sys_kexec_file_load(self, user: UserAccess, kernel_fd: int, initrd_fd: int,
                            cmdline_len: int, cmdline_ptr: int, flags: int) -> int:
        """kexec_file_load(2) on this machine (khofs.engine.kexec_file)."""
        with self.lock:
            return sys_kexec_file_load(self.kernel, user, self, kernel_fd, initrd_fd,
                                       cmdline_len, cmdline_ptr, flags, self.crash.res)

    def sys_kexec_load(self, user: UserAccess, entry: int, nr_segments: int, segments: int,
                       flags: int, compat: bool = False) -> int:
        """kexec_load(2) on this machine (khofs.engine.kexec_core)."""
        with self.lock:
            return sys_kexec_load(self.kernel, user, self, entry, nr_segments, segments, flags,
                                  compat, self.crash.res)

    # the KexecSlots of khofs.engine.kexec_core
    def unload(self, crash: bool) -> None:
        if crash:
            self.crash_loaded = None
        else:
            self.loaded = None

    def install(self, crash: bool, cmdline: str, segments: Sequence[Segment],
                contents: Sequence[tuple[int, bytes]] = (), fdt_phys: int = 0,
                release: str | None = None) -> int:
        """The loaded image into its slot (0), or -EINVAL when khofs cannot boot what it
        holds: the next kernel is `--next-abi`'s, else the release the image names, else
        this kernel's version again (as `khofs kexec` chooses it)."""
        k = self.kernel
        nxt = self._next_kernel(None, release)
        if isinstance(nxt, str):
            return self._refuse(nxt)[0]
        segs = tuple(segments)
        image = LoadedImage(Handover(cmdline, segs), tuple(contents), nxt) if contents else \
            self._image(k, cmdline, segs, fdt_phys, nxt)
        if crash:
            self.crash_loaded = image
        else:
            self.loaded = image
        return 0

    def sys_reboot(self, user: UserAccess, magic1: int, magic2: int, cmd: int,
                   arg: int) -> int | Reboot | PidNsReboot:
        """reboot(2): 0 or a negative errno when it returns; a Reboot when this boot ends
        (its last line is logged and its debugfs gone: boot_next starts the next one);
        a PidNsReboot for a caller in a pid namespace of its own."""
        with self.lock:
            got = sys_reboot(user, magic1, magic2, cmd, arg, self.loaded is not None)
            if isinstance(got, Reboot):
                self._shut_down(got)
            return got

    def _shut_down(self, reboot: Reboot) -> None:
        if reboot.how is Shutdown.KEXEC:
            image = self.loaded
            self._leave()  # "kexec_core: Starting new kernel"
            self.going = (reboot.how, image)
            return
        if reboot.message:
            self.kernel.log.log("emerg", reboot.message)
        self.kernel.debugfs.remove(self.kernel.debugfs.root)
        self.going = (reboot.how, None)

    def sysrq_write(self, data: bytes) -> Reboot | None:
        """A write to /proc/sysrq-trigger (khofs.engine.sysrq): a Reboot when a key ends the
        boot; a crash with a crash kernel loaded boots it (__crash_kexec: no "Starting new
        kernel" line)."""
        with self.lock:
            for key in sysrq_keys(data):
                lines, reboot = handle_sysrq(key, self.kernel.params.cmdline,
                                             self.crash_loaded is not None)
                for line in lines:
                    self.kernel.log.log(line.level, line.text)
                if reboot is None:
                    continue
                if reboot.how is Shutdown.KEXEC:
                    image, self.crash_loaded = self.crash_loaded, None
                    self.kernel.debugfs.remove(self.kernel.debugfs.root)
                    self.going = (Shutdown.KEXEC, image)
                else:
                    self._shut_down(reboot)
                return reboot
            return None

    def boot_next(self) -> None:
        """After a reboot: the loaded image boots in this RAM (kexec: the kernel's boot count
        goes on), or the machine starts cold (restart: RAM cleared, no image, no handover, the
        boot loader's command line, the kernel's count back at 1 and the log's going on)."""
        with self.lock:
            assert self.going is not None and self.going[0] in (Shutdown.KEXEC,
                                                                Shutdown.RESTART)
            how, image = self.going
            self.going = None
            if how is Shutdown.KEXEC and image is not None:
                self.kernel = self._start(image, self.kernel.boot_number + 1)
            else:
                self.log_base += self.kernel.boot_number
                self.mem = PhysMem(self.machine.arch.page_size)
                self.loaded = self.crash_loaded = None
                self.kernel = self._boot(self.boot_cmdline, None, 1, self.profile)
            self.crash = CrashRes.of(self.kernel.reservations)

    def sys_syslog(self, user: UserAccess, action: int, buf: int, length: int) -> int | object:
        """syslog(2) on this boot's log (khofs.engine.syslog): a count, a negative errno,
        or syslog.WAIT for a READ that must wait for the next record."""
        with self.lock:
            return do_syslog(self.kernel.log, self.kernel.params.cmdline, user, action, buf,
                             length)

    def proc_kmsg_read(self, kernel: Kernel, length: int) -> bytes | None:
        """/proc/kmsg's read of `kernel`'s log (syslog_read): None when nothing is unread."""
        with self.lock:
            return syslog_read(kernel.log, length)

    def crash_size(self) -> int:
        """crash_get_memory_size: /sys/kernel/kexec_crash_size. Without the lock: a
        kexec_file_load holding it may be reading this very file as its kernel."""
        return crash_get_memory_size(self.crash)

    def crash_shrink(self, size: int) -> int:
        """crash_shrink_memory: a write to /sys/kernel/kexec_crash_size."""
        with self.lock:
            return crash_shrink_memory(self.crash, size, self.crash_loaded is not None,
                                       self.machine.arch.page_size)

    # --- a cold restart now: `khofs reboot` ------------------------------------------------

    def restart(self, machine: Machine | None = None, cmdline: str | None = None,
                initcalls: Sequence[Initcall] | None = None, seed: int | None = None,
                profile: Profile | None = None) -> None:
        """kernel_restart (kernel/reboot.c), as reboot(RESTART) makes one, then the cold boot.
        The old kernel logs its last line ("reboot: Restarting system", KERN_EMERG) and its
        files go (open ones read EIO); the next kernel starts with new RAM, no loaded image
        and no handover, as boot 1 of its own count (the log's count goes on). What is not
        given stays: the machine, the boot loader's command line (the cold boot's, not one a
        kexec loaded), the drivers, the seed and the kernel version. Another machine is a new
        machine in the same place."""
        with self.lock:
            self._shut_down(Reboot(Shutdown.RESTART, PR_FMT + "Restarting system"))
            if machine is not None:
                self.machine = machine
            if cmdline is not None:
                self.boot_cmdline = cmdline
            if initcalls is not None:
                self.initcalls = initcalls
            if seed is not None:
                self.seed = seed
            if profile is not None:
                self.profile = profile
        self.boot_next()
