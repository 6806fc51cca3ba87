"""The page allocator after memblock_free_all: where kernel allocations land at run time.

Pages are handed out in naturally aligned 2^order blocks from the RAM memblock left free,
highest address first, so a run is deterministic. Reserved memory and the KHO scratch areas
(MIGRATE_CMA pageblocks, which take only movable allocations) are never handed out, so every
sub-FDT, the root FDT and the memory-map chunks live outside scratch, as on a kernel.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from khofs.engine.memblock import Memblock
from khofs.engine.scratch import KhoScratch


class PageAllocator:
    """alloc_pages / __free_pages over a sorted list of free [start, end) ranges."""

    def __init__(self, memblock: Memblock, scratch: Sequence[KhoScratch],
                 page_size: int) -> None:
        self.page_size = page_size
        self._free: list[tuple[int, int]] = []
        for start, end in sorted(memblock.free_ranges_reverse()):
            start = -(-start // page_size) * page_size
            end -= end % page_size
            for piece in _minus(start, end, scratch):
                self._insert(*piece)

    def alloc_pages(self, order: int) -> int:
        """A block's physical address, or 0 when no free block of that order is left."""
        size = self.page_size << order
        for i in range(len(self._free) - 1, -1, -1):
            start, end = self._free[i]
            cand = (end - size) - (end - size) % size
            if cand >= start:
                del self._free[i]
                for piece in ((start, cand), (cand + size, end)):
                    if piece[0] < piece[1]:
                        self._insert(*piece)
                return cand
        return 0

    def free_pages(self, phys: int, order: int) -> None:
        self._insert(phys, phys + (self.page_size << order))

    def free_bytes(self) -> int:
        return sum(end - start for start, end in self._free)

    def _insert(self, start: int, end: int) -> None:
        """Add a range, merging it with its neighbours."""
        i = bisect.bisect_left(self._free, (start, end))
        if i < len(self._free) and self._free[i][0] == end:
            end = self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][1] == start:
            start = self._free.pop(i - 1)[0]
            i -= 1
        self._free.insert(i, (start, end))


def _minus(start: int, end: int, holes: Sequence[KhoScratch]) -> list[tuple[int, int]]:
    pieces = [(start, end)]
    for hole in holes:
        h0, h1 = hole.addr, hole.addr + hole.size
        pieces = [p for a, b in pieces
                  for p in ((a, min(b, h0)), (max(a, h1), b)) if p[0] < p[1]]
    return pieces
