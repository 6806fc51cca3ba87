"""The boot-time memory allocator: mm/memblock.c, as far as KHO's numbers depend on it.

Two region lists, `memory` and `reserved`, each sorted, disjoint, with adjacent regions of the
same node and flags merged (memblock_merge_regions). Allocation searches the free ranges
(memory minus reserved) top-down, as memblock does unless told to go bottom-up, and every
allocation is reserved with MEMBLOCK_RSRV_KERN: that flag is what `memblock_reserved_kern_size`
sums for the KHO scratch formula. Addresses are plain ints: a multi-TiB machine costs nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from khofs.lib.ranges import merge, minus

# include/linux/memblock.h: enum memblock_flags
MEMBLOCK_NONE = 0x0
MEMBLOCK_HOTPLUG = 0x1
MEMBLOCK_MIRROR = 0x2
MEMBLOCK_NOMAP = 0x4
MEMBLOCK_DRIVER_MANAGED = 0x8
MEMBLOCK_RSRV_NOINIT = 0x10
MEMBLOCK_RSRV_KERN = 0x20
MEMBLOCK_KHO_SCRATCH = 0x40

NUMA_NO_NODE = -1
MAX_NUMNODES = 1 << 10  # CONFIG_NODES_SHIFT=10, as x86-64 and arm64 distribution kernels

PHYS_ADDR_MAX = (1 << 64) - 1
MEMBLOCK_ALLOC_ANYWHERE = PHYS_ADDR_MAX
MEMBLOCK_ALLOC_ACCESSIBLE = 0
MEMBLOCK_LOW_LIMIT = 0


def numa_valid_node(nid: int) -> bool:
    return 0 <= nid < MAX_NUMNODES


def round_down(x: int, align: int) -> int:
    return x - x % align


def round_up(x: int, align: int) -> int:
    """include/linux/math.h round_up on a u64: it wraps, as the kernel's does."""
    return (((x - 1) | (align - 1)) + 1) & PHYS_ADDR_MAX


@dataclass(slots=True)
class Region:
    """struct memblock_region."""

    base: int
    size: int
    nid: int = NUMA_NO_NODE
    flags: int = MEMBLOCK_NONE

    @property
    def end(self) -> int:
        return self.base + self.size


class MemblockType:
    """struct memblock_type: a sorted list of disjoint regions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.regions: list[Region] = []

    def add_range(self, base: int, size: int, nid: int, flags: int) -> None:
        """memblock_add_range: insert the parts not already covered, then merge them with
        their neighbours (regions are sorted by base, so by end too: bisect finds the spot)."""
        end = base + size
        lo = bisect.bisect_right(self.regions, base, key=lambda r: r.end)
        i, pos = lo, base
        while i < len(self.regions) and self.regions[i].base < end:
            r = self.regions[i]
            if r.base > pos:
                self.regions.insert(i, Region(pos, r.base - pos, nid, flags))
                i += 1
            pos = max(pos, r.end)
            i += 1
        if pos < end:
            self.regions.insert(i, Region(pos, end - pos, nid, flags))
            i += 1
        self._merge(max(lo - 1, 0), i + 1)

    def add_ranges(self, ranges: list[tuple[int, int]], nid: int, flags: int) -> None:
        """add_range for many ranges at once (what a loop of memblock_reserve calls leaves):
        the parts no region covers yet become regions, then everything merges. One pass over
        the sorted lists instead of a search and an insert per range."""
        pieces = merge([(base, base + size) for base, size in ranges if size])
        covered = [(r.base, r.end) for r in self.regions]
        new = [Region(start, end - start, nid, flags) for start, end in minus(pieces, covered)]
        self.regions = sorted([*self.regions, *new], key=lambda r: r.base)
        self._merge()

    def _merge(self, lo: int = 0, hi: int | None = None) -> None:
        """memblock_merge_regions over regions[lo:hi]: adjacent, one node, the same flags."""
        regions = self.regions
        i = lo
        stop = len(regions) if hi is None else min(hi, len(regions))
        while i + 1 < stop:
            a, b = regions[i], regions[i + 1]
            if a.end == b.base and (a.nid, a.flags) == (b.nid, b.flags):
                a.size += b.size
                del regions[i + 1]
                stop -= 1
            else:
                i += 1

    def _isolate(self, base: int, size: int) -> list[Region]:
        """memblock_isolate_range: split regions at both ends; return those inside."""
        end = base + size
        out: list[Region] = []
        for r in self.regions:
            for cut in (base, end):
                if r.base < cut < r.end:
                    out.append(Region(r.base, cut - r.base, r.nid, r.flags))
                    r = Region(cut, r.end - cut, r.nid, r.flags)
            out.append(r)
        self.regions = out
        return [r for r in out if base <= r.base and r.end <= end]

    def remove_range(self, base: int, size: int) -> None:
        """memblock_remove_range."""
        inside = {id(r) for r in self._isolate(base, size)}
        self.regions = [r for r in self.regions if id(r) not in inside]

    def set_flags(self, base: int, size: int, flags: int, on: bool) -> None:
        """memblock_setclr_flag."""
        for r in self._isolate(base, size):
            r.flags = r.flags | flags if on else r.flags & ~flags
        self._merge()


class Memblock:
    """struct memblock and the allocation API the boot code calls."""

    def __init__(self, page_size: int = 4096) -> None:
        self.page_size = page_size
        self.memory = MemblockType("memory")
        self.reserved = MemblockType("reserved")
        self.current_limit = MEMBLOCK_ALLOC_ANYWHERE
        self.kho_scratch_only = False

    # --- adding and reserving ---------------------------------------------------------

    def add(self, base: int, size: int, nid: int = NUMA_NO_NODE) -> int:
        """memblock_add_node."""
        self.memory.add_range(base, size, nid, MEMBLOCK_NONE)
        return 0

    def reserve(self, base: int, size: int, nid: int = NUMA_NO_NODE,
                flags: int = MEMBLOCK_NONE) -> int:
        """__memblock_reserve (memblock_reserve, memblock_reserve_kern)."""
        if size:
            self.reserved.add_range(base, size, nid, flags)
        return 0

    def reserve_many(self, ranges: list[tuple[int, int]]) -> None:
        """memblock_reserve of each (base, size), in one pass."""
        self.reserved.add_ranges(ranges, NUMA_NO_NODE, MEMBLOCK_NONE)

    def phys_free(self, base: int, size: int) -> int:
        """memblock_phys_free: give a reservation back."""
        if size:
            self.reserved.remove_range(base, size)
        return 0

    def mark_kho_scratch(self, base: int, size: int) -> int:
        """memblock_mark_kho_scratch."""
        self.memory.set_flags(base, size, MEMBLOCK_KHO_SCRATCH, True)
        return 0

    # --- searching ----------------------------------------------------------------------

    def _skip(self, m: Region, nid: int) -> bool:
        """should_skip_region for the default allocation flags."""
        if numa_valid_node(nid) and m.nid != nid:
            return True
        if m.flags & MEMBLOCK_NOMAP:
            return True
        return self.kho_scratch_only and not m.flags & MEMBLOCK_KHO_SCRATCH

    def free_ranges_reverse(self, nid: int = NUMA_NO_NODE) -> Iterator[tuple[int, int]]:
        """for_each_free_mem_range_reverse: memory minus reserved, highest first."""
        reserved = self.reserved.regions
        for m in reversed(self.memory.regions):
            if self._skip(m, nid):
                continue
            hi = m.end
            for r in reversed(reserved):
                if r.base >= hi:
                    continue
                if r.end <= m.base:
                    break
                if r.end < hi:
                    yield r.end, hi
                hi = r.base
                if hi <= m.base:
                    break
            if hi > m.base:
                yield m.base, hi

    def find_in_range_node(self, size: int, align: int, start: int, end: int,
                           nid: int) -> int:
        """memblock_find_in_range_node with __memblock_find_range_top_down."""
        if end == MEMBLOCK_ALLOC_ACCESSIBLE:
            end = self.current_limit
        start = max(start, self.page_size)  # avoid allocating the first page
        end = max(start, end)
        for this_start, this_end in self.free_ranges_reverse(nid):
            this_start = min(max(this_start, start), end)
            this_end = min(max(this_end, start), end)
            if this_end < size:
                continue
            cand = round_down(this_end - size, align)
            if cand >= this_start:
                return cand
        return 0

    # --- allocating ---------------------------------------------------------------------

    def alloc_range_nid(self, size: int, align: int, start: int, end: int, nid: int,
                        exact_nid: bool) -> int:
        """memblock_alloc_range_nid: 0 on failure; success is reserved RSRV_KERN."""
        found = self.find_in_range_node(size, align, start, end, nid)
        if found:
            self.reserve(found, size, nid, MEMBLOCK_RSRV_KERN)
            return found
        if numa_valid_node(nid) and not exact_nid:
            found = self.find_in_range_node(size, align, start, end, NUMA_NO_NODE)
            if found:
                self.reserve(found, size, NUMA_NO_NODE, MEMBLOCK_RSRV_KERN)
                return found
        return 0

    def phys_alloc_range(self, size: int, align: int, start: int, end: int) -> int:
        """memblock_phys_alloc_range."""
        return self.alloc_range_nid(size, align, start, end, NUMA_NO_NODE, False)

    def phys_alloc(self, size: int, align: int) -> int:
        """memblock_phys_alloc."""
        return self.phys_alloc_range(size, align, 0, MEMBLOCK_ALLOC_ACCESSIBLE)

    def alloc_try_nid(self, size: int, align: int, min_addr: int = MEMBLOCK_LOW_LIMIT,
                      max_addr: int = MEMBLOCK_ALLOC_ACCESSIBLE, nid: int = NUMA_NO_NODE,
                      exact_nid: bool = False) -> int:
        """memblock_alloc_internal (memblock_alloc, _try_nid, _low, _exact_nid_raw): the
        physical address of the block, retried without the lower limit."""
        if max_addr > self.current_limit:
            max_addr = self.current_limit
        found = self.alloc_range_nid(size, align, min_addr, max_addr, nid, exact_nid)
        if not found and min_addr:
            found = self.alloc_range_nid(size, align, 0, max_addr, nid, exact_nid)
        return found

    # --- reporting ----------------------------------------------------------------------

    def reserved_kern_size(self, limit: int, nid: int) -> int:
        """memblock_reserved_kern_size: RSRV_KERN bytes below limit, of nid (or all)."""
        total = 0
        for r in self.reserved.regions:
            if r.base > limit:
                break
            size = limit - r.base if r.end > limit else r.size
            if (nid == r.nid or not numa_valid_node(nid)) and r.flags & MEMBLOCK_RSRV_KERN:
                total += size
        return total

    def end_of_dram(self) -> int:
        """memblock_end_of_DRAM."""
        return self.memory.regions[-1].end if self.memory.regions else 0
