"""The incoming half of KHO at boot (kernel/kexec_handover.c, 6.16): kho_populate checks the
handover and confines memblock to the old scratch areas; kho_memory_init then takes the old
scratch table as its own and reserves every preserved block (kho_mem_deserialize).
"""

from __future__ import annotations

import errno
import struct

from khofs.engine.kexec import Handover
from khofs.engine.kho import KHO_FDT_COMPATIBLE, PROP_PRESERVED_MEMORY_MAP, KhoIn
from khofs.engine.memblock import Memblock
from khofs.engine.memtrack import CHUNK_ELM, CHUNK_HDR, PRESERVE_BITS
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk
from khofs.engine.scratch import KhoScratch
from khofs.lib.fdt_ro import fdt_check_header, fdt_parse
from khofs.lib.libfdt import FDT_ERR_BADSTRUCTURE, fdt_totalsize

MAX_FDT_READ = 16 << 20  # what khofs will read of a root FDT whose header claims more
MAX_CHUNKS = 1 << 20  # a chunk list longer than this is taken to be a loop


def _read_fdt(mem: PhysMem, phys: int) -> tuple[int, bytes]:
    """The blob at phys, as far as its header is believable."""
    head = mem.read(phys, 40)
    err = fdt_check_header(head)
    if err:
        return err, b""
    return 0, mem.read(phys, min(fdt_totalsize(head), MAX_FDT_READ))


def kho_populate(handover: Handover, mem: PhysMem, memblock: Memblock, log: Printk,
                 max_page_order: int = 10) -> KhoIn | None:
    """kho_populate: validate the FDT and scratch table; on success mark the old scratch
    areas KHO_SCRATCH and let memblock allocate only there until KHO memory is set up."""
    if not handover.fdt_phys:
        return None
    fdt_phys = handover.fdt_phys
    err, blob = _read_fdt(mem, fdt_phys)
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
    data = mem.read(phys, length - length % 16)
    return [struct.unpack_from("<QQ", data, i) for i in range(0, len(data), 16)]


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
    chunk = struct.unpack("<Q", prop)[0]
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
