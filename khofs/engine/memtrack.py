"""Preserved-memory tracking and its serialisation (kernel/kexec_handover.c, 6.16).

struct kho_mem_track: per order, sparse bitmaps of PRESERVE_BITS bits; bit b of bitmap i at
order o preserves the block at ((i * PRESERVE_BITS + b) << (o + PAGE_SHIFT)). At finalize
kho_mem_serialize writes them out as a linked list of page-sized chunks for the next kernel.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

from khofs.engine.abi.kexec_handover import CHUNK_ELM, CHUNK_HDR, PRESERVE_BITS
from khofs.engine.physmem import PhysMem
from khofs.engine.slab import Kmalloc

BITMAP_BYTES = PRESERVE_BITS // 8


@dataclass
class Bitmap:
    """struct kho_mem_phys_bits: its bits, and where kzalloc put it."""

    phys: int
    bits: bytearray = field(default_factory=lambda: bytearray(BITMAP_BYTES))


class MemTrack:
    """struct kho_mem_track: orders -> bitmap index -> bitmap."""

    def __init__(self, mem: PhysMem, slab: Kmalloc) -> None:
        self.mem = mem
        self.slab = slab
        self.page_shift = mem.page_size.bit_length() - 1
        self.orders: dict[int, dict[int, Bitmap]] = {}

    def preserve_order(self, pfn: int, order: int) -> int:
        """__kho_preserve_order: set the bit for the 2^order block at pfn."""
        high = pfn >> order
        bitmaps = self.orders.setdefault(order, {})
        bitmap = bitmaps.get(high // PRESERVE_BITS)
        if bitmap is None:
            phys = self.slab.kmalloc(BITMAP_BYTES)
            if not phys:
                return -errno.ENOMEM
            bitmap = bitmaps[high // PRESERVE_BITS] = Bitmap(phys)
        bit = high % PRESERVE_BITS
        bitmap.bits[bit // 8] |= 1 << (bit % 8)
        return 0

    def unpreserve(self, pfn: int, end_pfn: int) -> None:
        """__kho_unpreserve: clear the bits set for [pfn, end_pfn) by a failed preserve."""
        for p, order in split_blocks(pfn, end_pfn):
            bitmap = self.orders.get(order, {}).get((p >> order) // PRESERVE_BITS)
            if bitmap is not None:
                bit = (p >> order) % PRESERVE_BITS
                bitmap.bits[bit // 8] &= ~(1 << (bit % 8)) & 0xFF

    def preserve_phys(self, phys: int, size: int) -> int:
        """The loop of kho_preserve_phys (its EBUSY/EINVAL checks are the caller's)."""
        start = phys >> self.page_shift
        end = (phys + size) >> self.page_shift
        for pfn, order in split_blocks(start, end):
            err = self.preserve_order(pfn, order)
            if err:
                self.unpreserve(start, pfn)
                return err
        return 0

    def forget(self) -> None:
        """kho_abort: free every bitmap and the trees (6.16 forgets all preservations)."""
        for bitmaps in self.orders.values():
            for bitmap in bitmaps.values():
                self.slab.kfree(bitmap.phys, BITMAP_BYTES)
        self.orders.clear()

    def preserved_blocks(self) -> list[tuple[int, int]]:
        """(phys, order) of every preserved block, in serialisation order."""
        out = []
        for order in sorted(self.orders):
            for idx, bitmap in sorted(self.orders[order].items()):
                for bit in _set_bits(bitmap.bits):
                    pfn = ((idx * PRESERVE_BITS + bit) << order)
                    out.append((pfn << self.page_shift, order))
        return out

    def serialize(self) -> tuple[int, list[int]]:
        """kho_mem_serialize: (first chunk's address or 0, every chunk) or (-ENOMEM, [])."""
        chunks: list[int] = []
        for order in sorted(self.orders):
            elms = sorted(self.orders[order].items())
            per_chunk = (self.mem.page_size - CHUNK_HDR.size) // CHUNK_ELM.size
            for first in range(0, max(len(elms), 1), per_chunk):
                chunk = self.slab.kmalloc(self.mem.page_size)
                if not chunk:
                    self.free_chunks(chunks)
                    return -errno.ENOMEM, []
                self.mem.zero(chunk, self.mem.page_size)
                if chunks:
                    self.mem.write(chunks[-1], struct.pack("<Q", chunk))
                chunks.append(chunk)
                self._write_chunk(chunk, order, elms[first:first + per_chunk])
        return (chunks[0] if chunks else 0), chunks

    def _write_chunk(self, chunk: int, order: int, elms: list[tuple[int, Bitmap]]) -> None:
        self.mem.write(chunk + 8, struct.pack("<II", order, len(elms)))
        for n, (idx, bitmap) in enumerate(elms):
            phys_start = (idx * PRESERVE_BITS) << (order + self.page_shift)
            self.mem.write(chunk + CHUNK_HDR.size + n * CHUNK_ELM.size,
                           CHUNK_ELM.pack(phys_start, bitmap.phys))
            self.mem.write(bitmap.phys, bytes(bitmap.bits))

    def free_chunks(self, chunks: list[int]) -> None:
        """kho_mem_ser_free."""
        for chunk in chunks:
            self.slab.kfree(chunk, self.mem.page_size)


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
