"""One boot of the emulated kernel, in the order a real boot runs the pieces KHO touches.

start_kernel: parse_early_param -> setup_arch (memblock, kho_populate when kexec'd with a
handover, boot reservations) -> mm_core_init (kho_memory_init: the old scratch table and
preserved memory, or kho_reserve_scratch on a cold boot; memblock_free_all) -> the initcalls,
level by level (drivers' module_init; kho_init builds kho/ in debugfs: a late_initcall in
6.16 and 6.18, an fs_initcall from 6.19).

Each boot is one kernel version (a Profile: its KHO ABI era and its release): the era decides
how the command line, the handover and KHO's debugfs are read and built.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from khofs.debugfs.inode import Debugfs
from khofs.engine.boot import boot_reservations
from khofs.engine.cmdline import parse_cmdline
from khofs.engine.driver import Driver, Initcall
from khofs.engine.era import DEFAULT_PROFILE, Profile
from khofs.engine.kexec import Handover
from khofs.engine.kho_in import KhoIn, kho_memory_init, kho_populate
from khofs.engine.kho_out import KhoContext, KhoOut, KhoOutBase
from khofs.engine.kho_out_live import KhoOutLive
from khofs.engine.kho_out_radix import KhoOutRadix
from khofs.engine.machine import Machine
from khofs.engine.memblock import Memblock
from khofs.engine.page_alloc import PageAllocator
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk, Record
from khofs.engine.scratch import KernTotals, KhoScratch, kho_reserve_scratch
from khofs.engine.slab import Kmalloc


class Kernel:
    """The emulated machine after one boot: its debugfs, its KHO state and its log.

    It is the `DriverContext` its drivers get (khofs.engine.driver)."""

    def __init__(self, machine: Machine, cmdline: str = "kho=on",
                 initcalls: Sequence[Initcall] = (), *, uid: int = 0,
                 gid: int = 0, log_sink: Callable[[Record], None] | None = None,
                 mem: PhysMem | None = None, handover: Handover | None = None,
                 boot_number: int = 1, seed: int = 0,
                 profile: Profile = DEFAULT_PROFILE) -> None:
        self.machine = machine
        self.profile = profile
        self.era = profile.era
        self.boot_number = boot_number
        self.rng = random.Random(f"khofs:{seed}:{boot_number}")
        self.log = Printk(log_sink)
        self.params = parse_cmdline(cmdline, self.log, profile.era)
        page_size = machine.arch.page_size
        self.mem = mem if mem is not None else PhysMem(page_size)
        self.memblock = Memblock(page_size)
        for node in machine.nodes:
            for start, end in node.ranges:
                self.memblock.add(start, end - start, node.nid)
        self.handover = handover
        self.kho_in: KhoIn | None = None
        if handover is not None:
            self.kho_in = kho_populate(handover, self.mem, self.memblock, self.log,
                                       machine.arch.max_page_order, profile)
        self.reservations = boot_reservations(machine, self.memblock, self.params, self.log,
                                              handover, self.kho_in)
        self.reserved_mem = [(r.what.removeprefix("reserve_mem "), r.base, r.size)
                             for r in self.reservations if r.func == "reserve_mem"]
        self.kern_totals = KernTotals.of(machine, self.memblock)
        scratch = self._kho_memory_init()
        if self.kho_in is not None and not self.kho_in.fdt_phys:
            self.kho_in = None  # 7.1: a tree it could not walk; is_kho_boot() is false
        self.kho_enabled = self.params.kho and scratch is not None
        self.scratch = scratch or []
        self.pages = PageAllocator(self.memblock, self.scratch, page_size)
        if handover is not None:
            self._scrub()
        self.slab = Kmalloc(self.pages, page_size)
        self.debugfs = Debugfs(uid, gid)
        ctx = KhoContext(self.mem, self.pages, self.slab, self.debugfs, self.log, profile,
                         self._nid_of, machine.arch.max_page_order)
        self.kho = make_kho_out(ctx, self.scratch)
        self.drivers: list[Driver] = []
        if self.kho_enabled:
            self._do_initcalls(initcalls)

    def _kho_memory_init(self) -> list[KhoScratch] | None:
        """kho_memory_init: the previous kernel's scratch areas and preserved memory when
        it handed over, else (KHO on) new scratch areas."""
        if self.kho_in is not None and self.handover is not None:
            return kho_memory_init(self.kho_in, self.handover, self.memblock, self.log)
        if self.params.kho:
            areas = kho_reserve_scratch(self.machine, self.memblock, self.params.scratch,
                                        self._scratch_failed)
            if areas is None and self.era.warn_no_scratch:
                self.log.warn("KHO: Failed to reserve scratch area, disabling kexec handover")
            return areas
        return None

    def _scratch_failed(self, what: str) -> None:
        """7.1 says which scratch allocation failed (6.18 to 7.0 only that one did)."""
        if self.era.radix:
            self.log.err("KHO: Failed to reserve scratch array" if what == "array" else
                         f"KHO: Failed to reserve {what} scratch buffer")

    def _nid_of(self, phys: int) -> int:
        """pfn_to_nid: the node whose memory holds phys (0 outside every node)."""
        return next((r.nid for r in self.memblock.memory.regions if r.base <= phys < r.end),
                    0)

    def _scrub(self) -> None:
        """What kexec does to memory nobody preserved: the new kernel and its users take it
        over, so whatever the old kernel left there is garbage to whoever looks next."""
        reserved = [(r.base, r.end) for r in self.memblock.reserved.regions]
        for phys in self.mem.touched():
            if not any(start <= phys < end for start, end in reserved):
                self.mem.write(phys, self.rng.randbytes(self.mem.page_size))

    def _do_initcalls(self, table: Sequence[Initcall]) -> None:
        """do_initcalls: level by level; within a level the kernel's own calls come first
        (kernel/ links before mm/, drivers/ and lib/), then the table's in its order.

        kho_init is the kernel's late_initcall (6.16, 6.18) or fs_initcall (6.19 on); when it
        fails, KHO is disabled (silently, as its error paths do) and nothing later sees KHO."""
        kho_level = self.era.kho_init_level
        for level in sorted({kho_level, *(call.level for call in table)}):
            if level == kho_level and self.kho.init(self.kho_in):
                self.kho_enabled = False
                return
            for call in table:
                if call.level == level:
                    self._init(call.make())

    def _init(self, driver: Driver) -> None:
        self.drivers.append(driver)
        err = driver.init(self)
        if err:
            self.log.err(f"khofs: producer {driver.name}: init failed: {err}")


def make_kho_out(ctx: KhoContext, scratch: list[KhoScratch]) -> KhoOutBase:
    """struct kho_out as the era's kernel has it."""
    era = ctx.profile.era
    if era.radix:
        return KhoOutRadix(ctx, scratch)
    if not era.notifiers:
        return KhoOutLive(ctx, scratch)
    return KhoOut(ctx, scratch)
