"""One boot of the emulated kernel, in the order a real boot runs the pieces KHO touches.

start_kernel: parse_early_param -> setup_arch (memblock, kho_populate when kexec'd with a
handover, boot reservations) -> mm_core_init (kho_memory_init: the old scratch table and
preserved memory, or kho_reserve_scratch on a cold boot; memblock_free_all) -> initcalls
(drivers register their KHO notifiers; kho_init as a late_initcall builds kho/ in debugfs).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from khofs.debugfs.inode import Debugfs
from khofs.engine.boot import boot_reservations
from khofs.engine.cmdline import parse_cmdline
from khofs.engine.kexec import Handover
from khofs.engine.kho import KhoContext, KhoIn, KhoOut
from khofs.engine.kho_in import kho_memory_init, kho_populate
from khofs.engine.kho_test import KhoTest
from khofs.engine.machine import Machine
from khofs.engine.memblock import Memblock
from khofs.engine.memblock_kho import MemblockKho
from khofs.engine.page_alloc import PageAllocator
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk, Record
from khofs.engine.producer import ConfigProducer, Producer, ProducerSpec
from khofs.engine.scratch import KernTotals, KhoScratch, kho_reserve_scratch
from khofs.engine.slab import Kmalloc

ProducerFactory = Callable[[], Producer]


class Kernel:
    """The emulated machine after one boot: its debugfs, its KHO state and its log."""

    def __init__(self, machine: Machine, cmdline: str = "kho=on",
                 producers: Sequence[ProducerSpec | ProducerFactory] = (), *, uid: int = 0,
                 gid: int = 0, log_sink: Callable[[Record], None] | None = None,
                 mem: PhysMem | None = None, handover: Handover | None = None,
                 boot_number: int = 1, seed: int = 0) -> None:
        self.machine = machine
        self.boot_number = boot_number
        self.rng = random.Random(f"khofs:{seed}:{boot_number}")
        self.log = Printk(log_sink)
        self.params = parse_cmdline(cmdline, self.log)
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
                                       machine.arch.max_page_order)
        self.reservations = boot_reservations(machine, self.memblock, self.params, self.log,
                                              handover, self.kho_in)
        self.reserved_mem = [(r.what.removeprefix("reserve_mem "), r.base, r.size)
                             for r in self.reservations if r.func == "reserve_mem"]
        self.kern_totals = KernTotals.of(machine, self.memblock)
        scratch = self._kho_memory_init()
        self.kho_enabled = self.params.kho and scratch is not None
        self.scratch = scratch or []
        self.pages = PageAllocator(self.memblock, self.scratch, page_size)
        if handover is not None:
            self._scrub()
        self.slab = Kmalloc(self.pages, page_size)
        self.debugfs = Debugfs(uid, gid)
        ctx = KhoContext(self.mem, self.pages, self.slab, self.debugfs, self.log)
        self.kho = KhoOut(ctx, self.scratch)
        self.producers = [_producer(p) for p in producers]
        if self.kho_enabled:
            self._initcalls()

    def _kho_memory_init(self) -> list[KhoScratch] | None:
        """kho_memory_init: the previous kernel's scratch areas and preserved memory when
        it handed over, else (KHO on) new scratch areas."""
        if self.kho_in is not None and self.handover is not None:
            return kho_memory_init(self.kho_in, self.handover, self.memblock, self.log)
        if self.params.kho:
            return kho_reserve_scratch(self.machine, self.memblock, self.params.scratch)
        return None

    def _scrub(self) -> None:
        """What kexec does to memory nobody preserved: the new kernel and its users take it
        over, so whatever the old kernel left there is garbage to whoever looks next."""
        reserved = [(r.base, r.end) for r in self.memblock.reserved.regions]
        for phys in self.mem.touched():
            if not any(start <= phys < end for start, end in reserved):
                self.mem.write(phys, self.rng.randbytes(self.mem.page_size))

    def _initcalls(self) -> None:
        """Drivers' module_init (device initcalls, lib/test_kho.c among them), then the late
        initcalls in link order: kho_init (kernel/), then reserve_mem_init (mm/memblock.c)."""
        for producer in self.producers:
            self._init(producer)
        if self.kho.init(self.kho_in):
            # kho_init: err_free_fdt / err_free_scratch, then kho_enable = false (silently)
            self.kho_enabled = False
            return
        self.memblock_kho = MemblockKho()
        self._init(self.memblock_kho)

    def _init(self, producer: Producer) -> None:
        err = producer.init(self)
        if err:
            self.log.err(f"khofs: producer {producer.name}: init failed: {err}")


def _producer(p: ProducerSpec | ProducerFactory) -> Producer:
    """A producer for this boot: a config producer, the kernel's test_kho module, or what a
    plugin's factory makes."""
    if not isinstance(p, ProducerSpec):
        return p()
    return KhoTest() if p.builtin == "kho_test" else ConfigProducer(p)
