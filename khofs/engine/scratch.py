"""KHO scratch areas: sizing and placement (kernel/kexec_handover.c, 6.16).

The sizes scale the kernel's own boot allocations (`memblock_reserved_kern_size`) by
`kho_scratch=` (200% by default), or are given outright; the areas are then allocated
top-down through memblock: lowmem below ARCH_LOW_ADDRESS_LIMIT, global anywhere, then one on
each node. All arithmetic is the kernel's u64 (phys_addr_t) arithmetic, wrap-around included:
on a machine whose boot allocations all lie below 4 GiB, `global` comes out as 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from khofs.engine.machine import Machine
from khofs.engine.memblock import (
    MEMBLOCK_ALLOC_ACCESSIBLE,
    MEMBLOCK_ALLOC_ANYWHERE,
    NUMA_NO_NODE,
    PHYS_ADDR_MAX,
    Memblock,
    round_up,
)
from khofs.engine.params import ScratchParams

KHO_SCRATCH_SIZE = 16  # sizeof(struct kho_scratch): u64 addr, u64 size


@dataclass(frozen=True)
class KhoScratch:
    """struct kho_scratch."""

    addr: int
    size: int


@dataclass(frozen=True)
class KernTotals:
    """memblock_reserved_kern_size as the scratch formula reads it, before any area is
    reserved: below ARCH_LOW_ADDRESS_LIMIT, anywhere, and per node."""

    low: int
    all: int
    nodes: dict[int, int]

    @classmethod
    def of(cls, machine: Machine, memblock: Memblock) -> KernTotals:
        return cls(memblock.reserved_kern_size(machine.low_limit, NUMA_NO_NODE),
                   memblock.reserved_kern_size(MEMBLOCK_ALLOC_ANYWHERE, NUMA_NO_NODE),
                   {n.nid: memblock.reserved_kern_size(MEMBLOCK_ALLOC_ANYWHERE, n.nid)
                    for n in machine.nodes})


def scratch_size_update(params: ScratchParams, memblock: Memblock, low_limit: int,
                        align: int) -> tuple[int, int]:
    """scratch_size_update: (lowmem, global) from the scale, or the explicit sizes."""
    if not params.scale:
        return params.lowmem, params.global_
    size = memblock.reserved_kern_size(low_limit, NUMA_NO_NODE) * params.scale // 100
    lowmem = round_up(size & PHYS_ADDR_MAX, align)
    size = memblock.reserved_kern_size(MEMBLOCK_ALLOC_ANYWHERE, NUMA_NO_NODE)
    size = (size * params.scale // 100 - lowmem) & PHYS_ADDR_MAX
    return lowmem, round_up(size, align)


def scratch_size_node(params: ScratchParams, memblock: Memblock, nid: int, align: int) -> int:
    """scratch_size_node."""
    if params.scale:
        size = memblock.reserved_kern_size(MEMBLOCK_ALLOC_ANYWHERE, nid) * params.scale // 100
    else:
        size = params.pernode
    return round_up(size & PHYS_ADDR_MAX, align)


def kho_reserve_scratch(machine: Machine, memblock: Memblock, params: ScratchParams,
                        failed: Callable[[str], None] | None = None) -> list[KhoScratch] | None:
    """kho_reserve_scratch: the areas in table order, or None when one cannot be allocated
    (everything it took is given back and KHO is disabled: silently in 6.16; `failed`
    hears which allocation failed, "array", "lowmem", "global" or "nid N", for the eras
    that say so)."""
    arch = machine.arch
    align = arch.pageblock_size
    lowmem, global_ = scratch_size_update(params, memblock, machine.low_limit, align)
    count = len(machine.nodes) + 2
    desc = memblock.alloc_try_nid(count * KHO_SCRATCH_SIZE, arch.page_size)
    if not desc:
        if failed is not None:
            failed("array")
        return None
    areas: list[KhoScratch] = []
    wanted = [(lowmem, 0, machine.low_limit, NUMA_NO_NODE),
              (global_, 0, MEMBLOCK_ALLOC_ACCESSIBLE, NUMA_NO_NODE)]
    wanted += [(-1, 0, MEMBLOCK_ALLOC_ACCESSIBLE, n.nid) for n in machine.nodes]
    for size, start, end, nid in wanted:
        if size < 0:  # a node's size is computed when its turn comes, as the kernel does
            size = scratch_size_node(params, memblock, nid, align)
        addr = memblock.alloc_range_nid(size, align, start, end, nid, nid != NUMA_NO_NODE)
        if not addr:
            for area in reversed(areas):
                memblock.phys_free(area.addr, area.size)
            memblock.phys_free(desc, count * KHO_SCRATCH_SIZE)
            if failed is not None:
                failed(f"nid {nid}" if nid != NUMA_NO_NODE else
                       ("lowmem", "global")[len(areas)])
            return None
        areas.append(KhoScratch(addr, size))
    return areas
