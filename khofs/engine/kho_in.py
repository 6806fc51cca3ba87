"""The incoming half of KHO at boot (kernel/kexec_handover.c, 6.16): kho_populate checks the
handover and confines memblock to the old scratch areas; kho_memory_init then takes the old
scratch table as its own and reserves every preserved block (kho_mem_deserialize).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from khofs.debugfs.inode import Dentry
from khofs.engine.abi.kexec_handover import (
    CHUNK_ELM,
    CHUNK_HDR,
    KHO_FDT_COMPATIBLE,
    PRESERVE_BITS,
    PROP_PRESERVED_MEMORY_MAP,
    PROP_SUB_FDT,
    SCRATCH_ENTRY,
    U64,
)
from khofs.engine.kexec import Handover
from khofs.engine.memblock import Memblock
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk
from khofs.engine.scratch import KhoScratch
from khofs.lib.fdt_ro import FdtNode, fdt_parse
from khofs.lib.libfdt import FDT_ERR_BADSTRUCTURE

MAX_CHUNKS = 1 << 20  # a chunk list longer than this is taken to be a loop


@dataclass
class FdtDebugfs:
    """struct fdt_debugfs: a published blob, so that abort can remove it."""

    dentry: Dentry


class KhoIn:
    """struct kho_in, filled by kho_populate: the incoming root FDT, the scratch table, and
    page->private of every preserved block (kho_mem_deserialize), for kho_restore_folio."""

    def __init__(self, mem: PhysMem, fdt_phys: int, scratch_phys: int, root: FdtNode,
                 ram: list[tuple[int, int]], max_page_order: int = 10) -> None:
        self.mem = mem
        self.max_page_order = max_page_order
        self.fdt_phys = fdt_phys
        self.scratch_phys = scratch_phys
        self.root = root
        self.ram = ram
        self.orders: dict[int, int] = {}  # phys -> order, as deserialize_bitmap sets it
        self.fdt_list: list[FdtDebugfs] = []

    def retrieve_subtree(self, name: str) -> tuple[int, int]:
        """kho_retrieve_subtree: (0, the sub-FDT's address) or (-ENOENT / -EINVAL, 0)."""
        node = self.root.subnode(name)
        if node is None:
            return -errno.ENOENT, 0
        prop = node.getprop(PROP_SUB_FDT)
        if prop is None or len(prop) != 8:
            return -errno.EINVAL, 0
        return 0, U64.unpack(prop)[0]

    def restore_folio(self, phys: int) -> int | None:
        """kho_restore_folio: the folio's order from page->private, which is 0 for any page
        deserialize did not mark (so an unpreserved page "restores" as order 0, as in 6.16);
        None when phys is not RAM or the order is impossible."""
        if not any(start <= phys < end for start, end in self.ram):
            return None
        order = self.orders.get(phys - phys % self.mem.page_size, 0)
        return None if order > self.max_page_order else order



def kho_populate(handover: Handover, mem: PhysMem, memblock: Memblock, log: Printk,
                 max_page_order: int = 10) -> KhoIn | None:
    """kho_populate: validate the FDT and scratch table; on success mark the old scratch
    areas KHO_SCRATCH and let memblock allocate only there until KHO memory is set up."""
    if not handover.fdt_phys:
        return None
    fdt_phys = handover.fdt_phys
    err, blob = mem.read_fdt(fdt_phys)
    if err:
        log.warn(f"KHO: setup: handover FDT (0x{fdt_phys:x}) is invalid: {err}")
        _refuse(log)
        return None
    root = fdt_parse(blob)
    compat = root.check_compatible(KHO_FDT_COMPATIBLE) if not isinstance(root, int) else root
    if compat or isinstance(root, int):
        log.warn(f"KHO: setup: handover FDT (0x{fdt_phys:x}) is incompatible with "
                 f"'{KHO_FDT_COMPATIBLE}': {compat or -FDT_ERR_BADSTRUCTURE}")
        _refuse(log)
        return None
    for addr, size in read_scratch_table(mem, handover.scratch_phys, handover.scratch_len):
        memblock.add(addr, size)
        memblock.mark_kho_scratch(addr, size)
    memblock.reserve(handover.scratch_phys, handover.scratch_len)
    memblock.kho_scratch_only = True  # memblock_set_kho_scratch_only
    log.info("KHO: found kexec handover data. Will skip init for some devices")
    ram = [(r.base, r.end) for r in memblock.memory.regions]
    return KhoIn(mem, fdt_phys, handover.scratch_phys, root, ram, max_page_order)


def _refuse(log: Printk) -> None:
    log.warn(f"KHO: disabling KHO revival: {-errno.EINVAL}")


def read_scratch_table(mem: PhysMem, phys: int, length: int) -> list[tuple[int, int]]:
    """The struct kho_scratch array the previous kernel loaded as a segment."""
    data = mem.read(phys, length - length % SCRATCH_ENTRY.size)
    return [SCRATCH_ENTRY.unpack_from(data, i) for i in range(0, len(data), SCRATCH_ENTRY.size)]


def kho_memory_init(kho_in: KhoIn, handover: Handover, memblock: Memblock,
                    log: Printk) -> list[KhoScratch]:
    """kho_memory_init with a handover: the old table becomes kho_scratch, preserved memory
    is reserved, the root FDT's folio restored; memblock may then allocate anywhere."""
    table = read_scratch_table(kho_in.mem, handover.scratch_phys, handover.scratch_len)
    kho_mem_deserialize(kho_in, memblock, log)
    if kho_in.restore_folio(kho_in.fdt_phys) is None:
        log.warn("KHO: failed to restore folio for KHO fdt")
    memblock.kho_scratch_only = False
    return [KhoScratch(addr, size) for addr, size in table]


def kho_mem_deserialize(kho_in: KhoIn, memblock: Memblock, log: Printk) -> None:
    """Walk the chunk list: reserve each preserved block and note its order."""
    prop = kho_in.root.getprop(PROP_PRESERVED_MEMORY_MAP)
    if prop is None or len(prop) != 8:
        log.err("KHO: failed to get preserved memory bitmaps")
        return
    mem = kho_in.mem
    chunk = U64.unpack(prop)[0]
    for _ in range(MAX_CHUNKS):
        if not chunk:
            return
        nxt, order, num = CHUNK_HDR.unpack(mem.read(chunk, CHUNK_HDR.size))
        per_chunk = (mem.page_size - CHUNK_HDR.size) // CHUNK_ELM.size
        for i in range(min(num, per_chunk)):
            start, bitmap = CHUNK_ELM.unpack(
                mem.read(chunk + CHUNK_HDR.size + i * CHUNK_ELM.size, CHUNK_ELM.size))
            _deserialize_bitmap(kho_in, memblock, order, start, bitmap)
        chunk = nxt
    log.err("KHO: preserved memory map does not end; the rest is ignored")


def _deserialize_bitmap(kho_in: KhoIn, memblock: Memblock, order: int, start: int,
                        bitmap: int) -> None:
    """deserialize_bitmap: memblock_reserve each set bit's block, page->private = order."""
    page_shift = kho_in.mem.page_size.bit_length() - 1
    bits = int.from_bytes(kho_in.mem.read(bitmap, PRESERVE_BITS // 8), "little")
    size = 1 << (order + page_shift)
    while bits:
        low = bits & -bits
        bit = low.bit_length() - 1
        bits ^= low
        phys = start + (bit << (order + page_shift))
        memblock.reserve(phys, size)
        kho_in.orders[phys] = order
