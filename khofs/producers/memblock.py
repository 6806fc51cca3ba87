"""reserve_mem= regions handed over: the outgoing half of mm/memblock.c's KHO support, a
built-in driver (the incoming half is khofs.engine.reserve_mem), as each era has it.

reserve_mem_init, a late_initcall: with KHO enabled and at least one reserve_mem= region,
prepare_kho_fdt builds a one-page sub-FDT (root compatible "memblock-v1", one child per region
named after it with compatible "reserve-mem-v1" and native-endian u64 "start" and "size"; the
same in every era). 6.16 and 6.18: a notifier preserves every region and that page on FINALIZE
and adds the sub-tree "memblock" (6.16 with kho_preserve_phys, which refuses an unaligned
region with EINVAL; 6.18 with kho_preserve_pages, which takes the page holding the start and
size >> PAGE_SHIFT pages). 6.19 on: at once, the page preserved first, then the sub-tree, then
the regions, each failure undone ("failed to prepare memblock FDT for KHO: %d").

memblock.c has no pr_fmt: its lines carry no prefix.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from khofs.engine.abi.kexec_handover import U64
from khofs.engine.abi.memblock import (
    MEMBLOCK_KHO_FDT,
    MEMBLOCK_KHO_NODE_COMPATIBLE,
    RESERVE_MEM_KHO_NODE_COMPATIBLE,
)
from khofs.engine.driver import DriverContext
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoOut, KhoSerialization
from khofs.engine.kho_out_live import KhoOutLive
from khofs.engine.notifier import NOTIFY_BAD, NOTIFY_DONE, notifier_from_errno
from khofs.lib.libfdt import FdtSw

Region = tuple[str, int, int]  # a reserve_mem_table entry: name, start, size


def build_memblock_fdt(buf: bytearray | memoryview, regions: Sequence[Region]) -> int:
    """prepare_kho_fdt's libfdt part, in place in buf (the whole page): 0 or the OR of the
    libfdt errors, as the C code accumulates them."""
    fdt = FdtSw(buf)
    err = 0
    err |= fdt.create(len(fdt.buf))
    err |= fdt.finish_reservemap()
    err |= fdt.begin_node("")
    err |= fdt.property_string("compatible", MEMBLOCK_KHO_NODE_COMPATIBLE)
    for name, start, size in regions:
        err |= fdt.begin_node(name)
        err |= fdt.property_string("compatible", RESERVE_MEM_KHO_NODE_COMPATIBLE)
        err |= fdt.property("start", U64.pack(start))
        err |= fdt.property("size", U64.pack(size))
        err |= fdt.end_node()
    err |= fdt.end_node()
    err |= fdt.finish()
    return err


class MemblockKho:
    """reserve_mem_init and reserve_mem_kho_nb (priority 0). One per boot."""

    name = MEMBLOCK_KHO_FDT
    priority = 0

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self.fdt_phys = 0  # kho_fdt
        self.kho: KhoOut | None = None

    def init(self, ctx: DriverContext) -> int:
        """reserve_mem_init: nothing unless KHO is enabled and a region exists."""
        if not ctx.kho_enabled or not ctx.reserved_mem:
            return 0
        self.regions = list(ctx.reserved_mem)
        kho = ctx.kho
        if isinstance(kho, KhoOutLive):
            return self._prepare_kho_fdt_live(ctx, kho)
        assert isinstance(kho, KhoOut)
        self.kho = kho
        err = self._prepare_fdt(ctx)
        if err:
            return err
        err = kho.register_notifier(self)
        if err:
            ctx.pages.free_pages(self.fdt_phys, 0)
            self.fdt_phys = 0
        return err

    def _prepare_fdt(self, ctx: DriverContext) -> int:
        """prepare_kho_fdt: one page, fdt_create(fdt, PAGE_SIZE), built in place."""
        phys = ctx.pages.alloc_pages(0)
        if not phys:
            return -errno.ENOMEM
        err = build_memblock_fdt(ctx.mem.page_view(phys), self.regions)
        if err:
            ctx.log.err(f"failed to prepare memblock FDT for KHO: {err}")
            ctx.pages.free_pages(phys, 0)
            return err
        self.fdt_phys = phys
        return 0

    def notifier_call(self, action: int, data: object) -> int:
        """reserve_mem_kho_notifier."""
        if action == KEXEC_KHO_FINALIZE:
            assert isinstance(data, KhoSerialization)
            return self._finalize(data)
        if action == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        return NOTIFY_BAD

    def _finalize(self, ser: KhoSerialization) -> int:
        """reserve_mem_kho_finalize: every call is made, their errors OR-ed together (a
        region that is not page aligned fails with EINVAL, and the sub-tree is still added)."""
        kho = self.kho
        assert kho is not None
        err = 0
        page = kho.ctx.mem.page_size
        for _name, start, size in self.regions:
            if kho.era.preserve_pages:  # kho_preserve_pages(phys_to_page(start), size >> 12)
                err |= kho.preserve_pages(start, size // page)
            else:
                err |= kho.preserve_phys(start, size)
        err |= kho.preserve_folio(self.fdt_phys, 0)
        err |= kho.add_subtree(ser, MEMBLOCK_KHO_FDT, self.fdt_phys)
        return notifier_from_errno(err)

    # --- 6.19 on ------------------------------------------------------------------------

    def _prepare_kho_fdt_live(self, ctx: DriverContext, kho: KhoOutLive) -> int:
        """prepare_kho_fdt (6.19 on): alloc_page, kho_preserve_pages(page, 1), the FDT,
        kho_add_subtree, reserved_mem_preserve; each failure undoes the steps before it and
        logs one line."""
        page = ctx.mem.page_size
        phys = ctx.pages.alloc_pages(0)
        err = -errno.ENOMEM if not phys else kho.preserve_pages(phys, 1)
        if phys and not err:
            err = build_memblock_fdt(ctx.mem.page_view(phys), self.regions)
            if not err:
                err = kho.add_subtree(MEMBLOCK_KHO_FDT, phys, ctx.mem.fdt_totalsize(phys))
                if not err:
                    err = self._reserved_mem_preserve(kho, page)
                    if err:
                        kho.remove_subtree(phys)
            if err:
                kho.unpreserve_pages(phys, 1)
        if phys and err:
            ctx.pages.free_pages(phys, 0)
        if err:
            ctx.log.err(f"failed to prepare memblock FDT for KHO: {err}")
            return err
        self.fdt_phys = phys
        return 0

    def _reserved_mem_preserve(self, kho: KhoOutLive, page: int) -> int:
        """reserved_mem_preserve: each region's pages, all undone when one fails."""
        for i, (_name, start, size) in enumerate(self.regions):
            err = kho.preserve_pages(start, size // page)
            if err:
                for _n, s, z in self.regions[:i]:
                    kho.unpreserve_pages(s, z // page)
                return err
        return 0
