"""One boot of the emulated kernel, in the order a real boot runs the pieces KHO touches.

start_kernel: parse_early_param -> setup_arch (memblock, boot reservations) -> mm_core_init
(kho_memory_init: kho_reserve_scratch; memblock_free_all) -> initcalls (drivers register
their KHO notifiers; kho_init as a late_initcall builds kho/ in debugfs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from khofs.debugfs.inode import Debugfs
from khofs.engine.boot import boot_reservations
from khofs.engine.cmdline import parse_cmdline
from khofs.engine.kho import KhoContext, KhoOut
from khofs.engine.machine import Machine
from khofs.engine.memblock import Memblock
from khofs.engine.page_alloc import PageAllocator
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk, Record
from khofs.engine.producer import ConfigProducer, ProducerSpec
from khofs.engine.scratch import kho_reserve_scratch
from khofs.engine.slab import Kmalloc


class Kernel:
    """The emulated machine after boot: its debugfs, its KHO state and its log."""

    def __init__(self, machine: Machine, cmdline: str = "kho=on",
                 producers: Sequence[ProducerSpec] = (), *, uid: int = 0, gid: int = 0,
                 log_sink: Callable[[Record], None] | None = None) -> None:
        self.machine = machine
        self.log = Printk(log_sink)
        self.params = parse_cmdline(cmdline, self.log)
        self.memblock = Memblock(machine.arch.page_size)
        for node in machine.nodes:
            for start, end in node.ranges:
                self.memblock.add(start, end - start, node.nid)
        self.reservations = boot_reservations(machine, self.memblock, self.params, self.log)
        scratch = None
        if self.params.kho:
            scratch = kho_reserve_scratch(machine, self.memblock, self.params.scratch)
        self.kho_enabled = scratch is not None
        self.scratch = scratch or []
        page_size = machine.arch.page_size
        self.pages = PageAllocator(self.memblock, self.scratch, page_size)
        self.mem = PhysMem(page_size)
        self.slab = Kmalloc(self.pages, page_size)
        self.debugfs = Debugfs(uid, gid)
        ctx = KhoContext(self.mem, self.pages, self.slab, self.debugfs, self.log)
        self.kho = KhoOut(ctx, self.scratch)
        self.producers = [ConfigProducer(spec, self.kho) for spec in producers]
        if self.kho_enabled:
            self._initcalls()

    def _initcalls(self) -> None:
        """Drivers' module_init, then kho_init (late_initcall)."""
        for producer in self.producers:
            err = producer.init()
            if err:
                self.log.err(f"khofs: producer {producer.spec.name}: init failed: {err}")
        if self.kho.init():
            # kho_init: err_free_fdt / err_free_scratch, then kho_enable = false (silently)
            self.kho_enabled = False
