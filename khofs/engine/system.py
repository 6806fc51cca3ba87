"""The emulated machine across kexecs: its RAM, its boots and their log, and a loaded image.

`kexec_load` is `kexec -s -l` (kexec_file_load: with KHO on, kho_fill_kimage's scratch table
segment first, then the image loader's segments, all inside scratch areas); `kexec_execute`
is `kexec -e`: the segments are copied to their destinations and the next kernel boots in the
same RAM with the handover. A `MachineState` carries all that to another process.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from khofs.engine.driver import Initcall, initcall_problem
from khofs.engine.era import DEFAULT_PROFILE, FIRST, LAST, Profile, profile_of_release
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
        self.loaded: LoadedImage | None = None
        if state is None:
            self.kernel = self._boot(cmdline, None, 1, profile)
            return
        self.seed = state.seed
        self.mem.load_pages(state.pages)
        self.records = list(state.records)
        self.kernel = self._start(state.image, state.boot_number + 1)

    def _boot(self, cmdline: str, handover: Handover | None, number: int,
              profile: Profile) -> Kernel:
        def sink(rec: Record) -> None:
            self.records.append((number, rec))
            if self.log_sink is not None:
                self.log_sink(number, rec)

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
            nxt = profile or self.next_profile
            if nxt is None and image_release is not None:
                try:
                    nxt = profile_of_release(image_release)
                except ValueError:
                    return self._refuse(f"the image is Linux {image_release}; khofs emulates "
                                        f"{FIRST[0]}.{FIRST[1]} to {LAST[0]}.{LAST[1]}")
            nxt = nxt or k.profile
            problem = initcall_problem(self.initcalls, nxt)
            if problem:
                return self._refuse(f"the next kernel, {nxt.release}: {problem}")
            cmdline = k.params.cmdline if cmdline is None else cmdline
            size = image_size if image_size is not None else self.machine.kernel_size
            bufs = image_segments(self.machine, cmdline, size, initrd_size)
            fdt_phys = k.kho.fill_kimage() if k.kho_enabled else 0
            if fdt_phys:
                bufs.insert(0, scratch_table_buf(len(k.scratch)))
            if k.kho_enabled:  # kho_locate_mem_hole: only the scratch areas
                ranges = [(s.addr, s.addr + s.size) for s in k.scratch]
            else:
                ranges = [(r.base, r.end) for r in k.memblock.memory.regions]
            err, segments = kexec_file_load(bufs, ranges, self.machine.arch.page_size)
            if err:
                return err, "kexec_file_load failed: Cannot assign requested address"
            self.loaded = self._image(k, cmdline, tuple(segments), fdt_phys, nxt)
            return 0, ""

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

    def log_lines(self) -> list[str]:
        return [format_record(boot, rec) for boot, rec in self.records]
