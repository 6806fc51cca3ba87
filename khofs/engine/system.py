"""The emulated machine across kexecs: its RAM, its boots and their log, and a loaded image.

`kexec_load` is `kexec -s -l` (kexec_file_load: with KHO on, kho_fill_kimage's scratch table
segment first, then the image loader's segments, all inside scratch areas); `kexec_execute`
is `kexec -e`: the segments are copied to their destinations and the next kernel boots in the
same RAM with the handover. A `MachineState` carries all that to another process. `restart` is
reboot(2) with LINUX_REBOOT_CMD_RESTART: the machine starts cold.

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

from khofs.engine.driver import Initcall
from khofs.engine.kernel import Kernel
from khofs.engine.kexec import (
    Handover,
    Segment,
    image_segments,
    kexec_file_load,
    pack_scratch_table,
    scratch_table_buf,
)
from khofs.engine.machine import Machine
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Record

LogSink = Callable[[int, Record], None]


@dataclass(frozen=True)
class LoadedImage:
    """A kimage after kexec_file_load: the handover and what to copy where at `kexec -e`."""

    handover: Handover
    contents: tuple[tuple[int, bytes], ...]


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
                 state: MachineState | None = None) -> None:
        self.machine = machine
        self.initcalls = initcalls
        self.seed = seed
        self.uid, self.gid = uid, gid
        self.log_sink = log_sink
        self.lock = threading.Lock()  # one kexec at a time, never mid-operation
        self.mem = PhysMem(machine.arch.page_size)
        self.records: list[tuple[int, Record]] = []
        self.loaded: LoadedImage | None = None
        self.boot_cmdline = cmdline  # what the boot loader starts a cold boot with
        self.log_base = 0  # the log's boot number less the kernel's (cold restarts before)
        if state is None:
            self.kernel = self._boot(cmdline, None, 1)
            return
        self.seed = state.seed
        self.mem.load_pages(state.pages)
        self.records = list(state.records)
        if self.records:  # the last line is the kernel's that kexec'd: its log number
            self.log_base = self.records[-1][0] - state.boot_number
        self.kernel = self._start(state.image, state.boot_number + 1)

    @property
    def log_number(self) -> int:
        """The running kernel's boot number in the log (`[boot N]`)."""
        return self.log_base + self.kernel.boot_number

    def _boot(self, cmdline: str, handover: Handover | None, number: int) -> Kernel:
        label = self.log_base + number

        def sink(rec: Record) -> None:
            self.records.append((label, rec))
            if self.log_sink is not None:
                self.log_sink(label, rec)

        return Kernel(self.machine, cmdline, self.initcalls, uid=self.uid, gid=self.gid,
                      log_sink=sink, mem=self.mem, handover=handover, boot_number=number,
                      seed=self.seed)

    # --- kexec -s -l --------------------------------------------------------------------

    def kexec_load(self, cmdline: str | None = None, image_size: int | None = None,
                   initrd_size: int = 0) -> tuple[int, str]:
        """kexec_file_load: (0, "") or (-EADDRNOTAVAIL, kexec-tools' message). The new
        command line defaults to this kernel's (kexec --reuse-cmdline)."""
        with self.lock:
            k = self.kernel
            cmdline = k.params.cmdline if cmdline is None else cmdline
            size = image_size if image_size is not None else self.machine.kernel_size
            bufs = image_segments(self.machine, cmdline, size, initrd_size)
            if k.kho_enabled:
                bufs.insert(0, scratch_table_buf(len(k.scratch)))
                ranges = [(s.addr, s.addr + s.size) for s in k.scratch]
            else:
                ranges = [(r.base, r.end) for r in k.memblock.memory.regions]
            err, segments = kexec_file_load(bufs, ranges, self.machine.arch.page_size)
            if err:
                return err, "kexec_file_load failed: Cannot assign requested address"
            self.loaded = self._image(k, cmdline, tuple(segments))
            return 0, ""

    def _image(self, k: Kernel, cmdline: str, segments: tuple[Segment, ...]) -> LoadedImage:
        """kho_fill_kimage: the root FDT page (finalized or not) and the table copy."""
        handover = Handover(cmdline, segments)
        if not k.kho_enabled or k.kho.ser is None:
            return LoadedImage(handover, ())
        table = pack_scratch_table([(s.addr, s.size) for s in k.scratch])
        seg = segments[0]
        handover = replace(handover, fdt_phys=k.kho.ser.fdt_phys, fdt_len=k.mem.page_size,
                           scratch_phys=seg.mem, scratch_len=len(table))
        return LoadedImage(handover, ((seg.mem, table),))

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
        return self._boot(image.handover.cmdline, image.handover, number)

    # --- reboot(2), LINUX_REBOOT_CMD_RESTART ------------------------------------------------

    def restart(self, machine: Machine | None = None, cmdline: str | None = None,
                initcalls: Sequence[Initcall] | None = None, seed: int | None = None) -> None:
        """kernel_restart (kernel/reboot.c), then a cold boot. The old kernel logs its last
        line ("reboot: Restarting system", KERN_EMERG) and its files go (open ones read EIO);
        the next kernel starts with new RAM, no loaded image and no handover, as boot 1 of
        its own count (the log's count goes on). What is not given stays: the machine, the
        boot loader's command line (the cold boot's, not one a kexec loaded), the drivers and
        the seed. Another machine is a new machine in the same place."""
        with self.lock:
            old = self.kernel
            old.log.log("emerg", "reboot: Restarting system")
            old.debugfs.remove(old.debugfs.root)
            self.log_base += old.boot_number
            if machine is not None:
                self.machine = machine
            if cmdline is not None:
                self.boot_cmdline = cmdline
            if initcalls is not None:
                self.initcalls = initcalls
            if seed is not None:
                self.seed = seed
            self.mem = PhysMem(self.machine.arch.page_size)
            self.loaded = None
            self.kernel = self._boot(self.boot_cmdline, None, 1)

    def log_lines(self) -> list[str]:
        return [format_record(boot, rec) for boot, rec in self.records]
