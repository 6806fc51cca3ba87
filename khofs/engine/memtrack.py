"""Preserved-memory tracking in bitmaps and its serialisation (kernel/kexec_handover.c, 6.16 to
7.0).

struct kho_mem_track: per order, sparse bitmaps; bit b of bitmap i at order o preserves the
block at ((i * bits + b) << (o + PAGE_SHIFT)). kho_mem_serialize writes them out as a linked
list of page-sized chunks for the next kernel. The bitmaps are 512 bytes from kzalloc in 6.16
and 6.17; from 6.18 they are a page each from get_zeroed_page, and so are the chunks ("kho:
increase metadata bitmap size to PAGE_SIZE", "kho: allocate metadata directly from the buddy
allocator"). A page bitmap is the kernel's own memory, live: a bit set after a 6.19 finalize
lands in a bitmap the handed-over chunks already point to.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from khofs.engine.abi.kexec_handover import CHUNK_ELM, CHUNK_HDR, PRESERVE_BITS, U64
from khofs.engine.physmem import PhysMem
from khofs.engine.slab import Kmalloc, PageSource

BITMAP_BYTES = PRESERVE_BITS // 8

__all__ = ["BITMAP_BYTES", "CHUNK_ELM", "CHUNK_HDR", "PRESERVE_BITS", "Bitmap", "MemTrack",
           "split_blocks"]


@dataclass
class Bitmap:
    """struct kho_mem_phys_bits: its bits, and where it was allocated."""

    phys: int
    bits: bytearray = field(default_factory=lambda: bytearray(BITMAP_BYTES))


class MemTrack:
    """struct kho_mem_track: orders -> bitmap index -> bitmap.

    `pages` given (6.18 on): bitmaps and chunks are pages of their own, zeroed, and each bit
    is written to memory as it is set; otherwise (6.16) they come from kmalloc and memory
    sees the bitmaps only when they are serialised."""

    def __init__(self, mem: PhysMem, slab: Kmalloc, bitmap_bytes: int = BITMAP_BYTES,
                 pages: PageSource | None = None, stop_at_missing: bool = False) -> None:
        self.mem = mem
        self.stop_at_missing = stop_at_missing
        self.slab = slab
        self.pages = pages
        self.bitmap_bytes = bitmap_bytes
        self.bits_per_bitmap = bitmap_bytes * 8  # PRESERVE_BITS
        self.page_shift = mem.page_size.bit_length() - 1
        self.orders: dict[int, dict[int, Bitmap]] = {}

    # --- metadata memory: kzalloc (6.16) or get_zeroed_page (6.18 on) ------------------

    def _alloc(self, size: int) -> int:
        if self.pages is None:
            return self.slab.kmalloc(size)
        phys = self.pages.alloc_pages(0)
        if phys:
            self.mem.zero(phys, self.mem.page_size)
        return phys

    def _free(self, phys: int, size: int) -> None:
        if self.pages is None:
            self.slab.kfree(phys, size)
        else:
            self.pages.free_pages(phys, 0)

    # --- preservation ---------------------------------------------------------------------

    def preserve_order(self, pfn: int, order: int) -> int:
        """__kho_preserve_order: set the bit for the 2^order block at pfn."""
        high = pfn >> order
        bitmaps = self.orders.setdefault(order, {})
        bitmap = bitmaps.get(high // self.bits_per_bitmap)
        if bitmap is None:
            phys = self._alloc(self.bitmap_bytes)
            if not phys:
                return -errno.ENOMEM
            bitmap = Bitmap(phys, bytearray(self.bitmap_bytes))
            bitmaps[high // self.bits_per_bitmap] = bitmap
        self._set(bitmap, high % self.bits_per_bitmap, True)
        return 0

    def _set(self, bitmap: Bitmap, bit: int, on: bool) -> None:
        if on:
            bitmap.bits[bit // 8] |= 1 << (bit % 8)
        else:
            bitmap.bits[bit // 8] &= ~(1 << (bit % 8)) & 0xFF
        if self.pages is not None:
            self.mem.write(bitmap.phys + bit // 8, bytes(bitmap.bits[bit // 8:bit // 8 + 1]))

    def unpreserve_order(self, pfn: int, order: int) -> bool:
        """__kho_unpreserve_order: clear one block's bit; False when its bitmap is missing
        (the kernel WARNs)."""
        bitmap = self.orders.get(order, {}).get((pfn >> order) // self.bits_per_bitmap)
        if bitmap is None:
            return False
        self._set(bitmap, (pfn >> order) % self.bits_per_bitmap, False)
        return True

    def unpreserve(self, pfn: int, end_pfn: int) -> None:
        """__kho_unpreserve: clear the bits of [pfn, end_pfn), block by block. A block whose
        bitmap is missing is skipped (6.16; 6.19 WARNs), or WARNs and ends it (6.18:
        `stop_at_missing`)."""
        for p, order in split_blocks(pfn, end_pfn):
            if not self.unpreserve_order(p, order) and self.stop_at_missing:
                return

    def preserve_range(self, pfn: int, end_pfn: int) -> int:
        """The loop of kho_preserve_phys (6.16) and kho_preserve_pages (6.18 on): maximal
        aligned blocks; on failure the blocks set so far are cleared again."""
        for p, order in split_blocks(pfn, end_pfn):
            err = self.preserve_order(p, order)
            if err:
                self.unpreserve(pfn, p)
                return err
        return 0

    def preserve_phys(self, phys: int, size: int) -> int:
        """The loop of kho_preserve_phys (its EBUSY/EINVAL checks are the caller's)."""
        return self.preserve_range(phys >> self.page_shift, (phys + size) >> self.page_shift)

    def forget(self) -> None:
        """kho_abort (6.16, 6.18): free every bitmap and the trees: all preservations go."""
        for bitmaps in self.orders.values():
            for bitmap in bitmaps.values():
                self._free(bitmap.phys, self.bitmap_bytes)
        self.orders.clear()

    def preserved_blocks(self) -> list[tuple[int, int]]:
        """(phys, order) of every preserved block, in serialisation order."""
        out = []
        for order in sorted(self.orders):
            for idx, bitmap in sorted(self.orders[order].items()):
                for bit in _set_bits(bitmap.bits):
                    pfn = ((idx * self.bits_per_bitmap + bit) << order)
                    out.append((pfn << self.page_shift, order))
        return out

    # --- serialisation --------------------------------------------------------------------

    def serialize(self) -> tuple[int, list[int]]:
        """kho_mem_serialize: (first chunk's address or 0, every chunk) or (-ENOMEM, [])."""
        chunks: list[int] = []
        for order in sorted(self.orders):
            elms = sorted(self.orders[order].items())
            per_chunk = (self.mem.page_size - CHUNK_HDR.size) // CHUNK_ELM.size
            for first in range(0, max(len(elms), 1), per_chunk):
                chunk = self._alloc(self.mem.page_size)
                if not chunk:
                    self.free_chunks(chunks)
                    return -errno.ENOMEM, []
                self.mem.zero(chunk, self.mem.page_size)
                if chunks:
                    self.mem.write(chunks[-1], U64.pack(chunk))  # the previous hdr.next
                chunks.append(chunk)
                self._write_chunk(chunk, order, elms[first:first + per_chunk])
        return (chunks[0] if chunks else 0), chunks

    def _write_chunk(self, chunk: int, order: int, elms: list[tuple[int, Bitmap]]) -> None:
        self.mem.write(chunk, CHUNK_HDR.pack(0, order, len(elms)))
        for n, (idx, bitmap) in enumerate(elms):
            phys_start = (idx * self.bits_per_bitmap) << (order + self.page_shift)
            self.mem.write(chunk + CHUNK_HDR.size + n * CHUNK_ELM.size,
                           CHUNK_ELM.pack(phys_start, bitmap.phys))
            self.mem.write(bitmap.phys, bytes(bitmap.bits))

    def free_chunks(self, chunks: list[int]) -> None:
        """kho_mem_ser_free."""
        for chunk in chunks:
            self._free(chunk, self.mem.page_size)


def split_blocks(pfn: int, end_pfn: int) -> list[tuple[int, int]]:
    """Maximal naturally aligned power-of-two blocks: min(ctz(pfn), ilog2(end - pfn))."""
    blocks = []
    while pfn < end_pfn:
        ctz = (pfn & -pfn).bit_length() - 1 if pfn else 64
        order = min(ctz, (end_pfn - pfn).bit_length() - 1)
        blocks.append((pfn, order))
        pfn += 1 << order
    return blocks


def _set_bits(bits: bytearray) -> list[int]:
    value = int.from_bytes(bits, "little")
    out = []
    while value:
        low = value & -value
        out.append(low.bit_length() - 1)
        value ^= low
    return out
