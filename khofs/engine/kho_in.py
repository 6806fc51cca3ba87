"""The incoming half of KHO at boot, as each era's kernel reads a handover
(kernel/kexec_handover.c, kernel/liveupdate/kexec_handover.c from 6.19).

kho_populate checks the handover and confines memblock to the old scratch areas: the FDT's
header, its compatible (the reading kernel's own: "kho-v1" up to 7.0, "kho-v3" in 7.1,
"kho-v4" from 7.2), and from 6.19 a non-zero memory map. kho_memory_init then takes the old
scratch table as its own and reserves every preserved block, reading the map with the reading
kernel's layout, whatever wrote it: 512 or PAGE_SIZE bytes at each bitmap address up to 7.0,
the radix tree from 7.1. Each reserved block's head page gets its page->private: the order
(6.16), the order and the magic 'KHOP' (6.18 on), which kho_restore_folio then requires.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from khofs.debugfs.inode import Dentry
from khofs.engine.abi.kexec_handover import (
    CHUNK_ELM,
    CHUNK_HDR,
    PROP_PRESERVED_MEMORY_MAP,
    PROP_SUB_FDT,
    PROP_SUB_TREE,
    PROP_SUB_TREE_SIZE,
    SCRATCH_ENTRY,
    U64,
)
from khofs.engine.era import DEFAULT_PROFILE, Profile
from khofs.engine.kexec import Handover
from khofs.engine.kho_radix import U64_MASK, radix_walk
from khofs.engine.memblock import Memblock
from khofs.engine.memtrack import split_blocks
from khofs.engine.physmem import MAX_FDT_READ, PhysMem
from khofs.engine.printk import Printk
from khofs.engine.scratch import KhoScratch
from khofs.lib.fdt_ro import FdtNode, fdt_parse
from khofs.lib.libfdt import FDT_ERR_BADSTRUCTURE

MAX_CHUNKS = 1 << 20  # a chunk list longer than this is taken to be a loop


@dataclass
class FdtDebugfs:
    """struct fdt_debugfs: a published blob, so that abort can remove it."""

    dentry: Dentry
    phys: int = 0  # wrapper.data, which kho_debugfs_fdt_remove matches on (6.19 on)


class KhoIn:
    """struct kho_in, filled by kho_populate: the incoming root FDT, the scratch table, and
    page->private of every preserved block (kho_mem_deserialize), for kho_restore_folio."""

    def __init__(self, mem: PhysMem, fdt_phys: int, scratch_phys: int, root: FdtNode,
                 ram: list[tuple[int, int]], max_page_order: int = 10,
                 profile: Profile = DEFAULT_PROFILE, log: Printk | None = None) -> None:
        self.mem = mem
        self.max_page_order = max_page_order
        self.profile = profile
        self.era = profile.era
        self.log = log if log is not None else Printk()
        self.fdt_phys = fdt_phys
        self.scratch_phys = scratch_phys
        self.mem_map_phys = 0  # 6.19 on: read once by kho_populate
        self.root = root
        self.ram = ram
        self.orders: dict[int, int] = {}  # phys -> order, as deserialize sets page->private
        self.reserved: list[tuple[int, int]] = []  # (phys, order) in the order reserved
        self.restored: dict[int, int] = {}  # 6.18 on: restored heads and their orders
        self.pending: list[tuple[int, int]] = []  # memblock_reserve calls not yet applied
        self.fdt_list: list[FdtDebugfs] = []
        self.kexec_count = 0  # 7.1 on: from the incoming kexec-metadata
        self.previous_release = ""

    # --- kho_retrieve_subtree -----------------------------------------------------------

    def retrieve_subtree(self, name: str) -> tuple[int, int]:
        """kho_retrieve_subtree: (0, the sub-tree's address) or (-ENOENT / -EINVAL, 0)."""
        err, phys, _size = self.retrieve_blob(name)
        return err, phys

    def retrieve_blob(self, name: str) -> tuple[int, int, int]:
        """kho_retrieve_subtree with its size (7.1 on): (0, phys, blob-size); before 7.1 the
        size is 0 (nothing records it). From 7.1 a node without a good `blob-size` is broken,
        with a warning, even for a caller that does not ask for the size."""
        node = self.root.subnode(name)
        if node is None:
            return -errno.ENOENT, 0, 0
        prop = node.getprop(PROP_SUB_TREE if self.era.blob_size else PROP_SUB_FDT)
        if prop is None or len(prop) != 8:
            return -errno.EINVAL, 0, 0
        phys = U64.unpack(prop)[0]
        if not self.era.blob_size:
            return 0, phys, 0
        size = node.getprop(PROP_SUB_TREE_SIZE)
        if size is None or len(size) != 8:
            self.log.warn(f"KHO: broken KHO subnode '{name}': missing or invalid blob-size "
                          "property")
            return -errno.EINVAL, 0, 0
        return 0, phys, U64.unpack(size)[0]

    def retrieve_bytes(self, name: str) -> bytes | None:
        """The incoming sub-tree's bytes: its FDT's (fdt_totalsize of them), or from 7.1 its
        blob's (blob-size of them, at most MAX_FDT_READ); None when there is none or (before
        7.1) its header is not an FDT's."""
        err, phys, size = self.retrieve_blob(name)
        if err:
            return None
        if self.era.blob_size:
            return self.mem.read(phys, min(size, MAX_FDT_READ))
        err, blob = self.mem.read_fdt(phys)
        return None if err else blob

    # --- restoring ------------------------------------------------------------------------

    def _online(self, phys: int) -> bool:
        return any(start <= phys < end for start, end in self.ram)

    def _restore_page(self, phys: int) -> int | None:
        """kho_restore_page (6.18 on): the stamped order of a block's head page, which it
        clears so that a second restore fails; None (the kernel WARNs) without the magic,
        and up to 7.0 for an order above MAX_PAGE_ORDER."""
        if not self._online(phys):
            return None
        head = phys - phys % self.mem.page_size
        if head not in self.orders:
            return None
        order = self.orders[head]
        if self.era.restore_checks_order and order > self.max_page_order:
            return None
        del self.orders[head]
        return order

    def restore_folio(self, phys: int) -> int | None:
        """kho_restore_folio: the folio's order, or None. 6.16 reads page->private without
        a magic, so any page that deserialize did not mark "restores" as order 0; from 6.18
        only a stamped head page restores, once."""
        if not self.era.page_magic:
            if not self._online(phys):
                return None
            order = self.orders.get(phys - phys % self.mem.page_size, 0)
            return None if order > self.max_page_order else order
        restored = self._restore_page(phys)
        if restored is not None:
            self.restored[phys - phys % self.mem.page_size] = restored
        return restored

    def restore_pages(self, phys: int, nr_pages: int) -> bool:
        """kho_restore_pages (6.18 on): each maximal aligned block of the range must restore
        (its stamp's order is not compared with the block's)."""
        page = self.mem.page_size
        for pfn, _order in split_blocks(phys // page, phys // page + nr_pages):
            if self._restore_page(pfn * page) is None:
                return False
        return True

    def folio_put(self, phys: int, order: int) -> bool:
        """Whether a restored folio may go back to the page allocator: khofs frees only a
        block the handover really preserved at that order, and only once, so an edited
        sub-tree cannot hand out memory that is in use."""
        table = self.restored if self.era.page_magic else self.orders
        if table.get(phys, -1) != order:
            return False
        del table[phys]
        return True


def kho_populate(handover: Handover, mem: PhysMem, memblock: Memblock, log: Printk,
                 max_page_order: int = 10, profile: Profile = DEFAULT_PROFILE) -> KhoIn | None:
    """kho_populate: validate the FDT (and from 6.19 its memory map) and the scratch table;
    on success mark the old scratch areas KHO_SCRATCH and let memblock allocate only there
    until KHO memory is set up."""
    if not handover.fdt_phys:
        return None
    era = profile.era
    fdt_phys = handover.fdt_phys
    err, blob = mem.read_fdt(fdt_phys)
    if err:
        log.warn(f"KHO: setup: handover FDT (0x{fdt_phys:x}) is invalid: {err}")
        _refuse(log, profile, -errno.EINVAL)
        return None
    root = fdt_parse(blob)
    compatible = profile.compatible
    compat = root.check_compatible(compatible) if not isinstance(root, int) else root
    if compat or isinstance(root, int):
        log.warn(f"KHO: setup: handover FDT (0x{fdt_phys:x}) is incompatible with "
                 f"'{compatible}': {compat or -FDT_ERR_BADSTRUCTURE}")
        _refuse(log, profile, -errno.EINVAL)
        return None
    mem_map = 0
    if era.map_required:
        mem_map = kho_get_mem_map_phys(root, log, profile)
        if not mem_map:
            _refuse(log, profile, -errno.ENOENT)
            return None
    for addr, size in read_scratch_table(mem, handover.scratch_phys, handover.scratch_len):
        memblock.add(addr, size)
        memblock.mark_kho_scratch(addr, size)
    memblock.reserve(handover.scratch_phys, handover.scratch_len)
    memblock.kho_scratch_only = True  # memblock_set_kho_scratch_only
    log.info("KHO: found kexec handover data." if era.map_required else
             "KHO: found kexec handover data. Will skip init for some devices")
    ram = [(r.base, r.end) for r in memblock.memory.regions]
    kho_in = KhoIn(mem, fdt_phys, handover.scratch_phys, root, ram, max_page_order, profile,
                   log)
    kho_in.mem_map_phys = mem_map
    return kho_in


def kho_get_mem_map_phys(root: FdtNode, log: Printk, profile: Profile) -> int:
    """kho_get_mem_map_phys (6.19 on): the map's address, 0 when missing (with an error
    line) or 0 (an unfinalized 6.19 sender: silently)."""
    prop = root.getprop(PROP_PRESERVED_MEMORY_MAP)
    if prop is None or len(prop) != 8:
        log.err("KHO: failed to get preserved memory map" if profile.era.radix else
                "KHO: failed to get preserved memory bitmaps")
        return 0
    return int(U64.unpack(prop)[0])


def _refuse(log: Printk, profile: Profile, err: int) -> None:
    """The last line of a refused handover: 7.1 no longer prints the error."""
    if profile.era.radix:
        log.warn("KHO: disabling KHO revival")
    else:
        log.warn(f"KHO: disabling KHO revival: {err}")


def read_scratch_table(mem: PhysMem, phys: int, length: int) -> list[tuple[int, int]]:
    """The struct kho_scratch array the previous kernel loaded as a segment."""
    data = mem.read(phys, length - length % SCRATCH_ENTRY.size)
    return [SCRATCH_ENTRY.unpack_from(data, i) for i in range(0, len(data), SCRATCH_ENTRY.size)]


def kho_memory_init(kho_in: KhoIn, handover: Handover, memblock: Memblock,
                    log: Printk) -> list[KhoScratch]:
    """kho_memory_init with a handover: the old table becomes kho_scratch and preserved
    memory is reserved; 6.16 and 6.18 then restore the root FDT's folio. In 7.1 a tree that
    cannot be walked leaves a boot that looks like no KHO boot (kho_in.fdt_phys = 0), on
    the inherited scratch areas. memblock may then allocate anywhere."""
    era = kho_in.era
    table = read_scratch_table(kho_in.mem, handover.scratch_phys, handover.scratch_len)
    if era.radix:
        if kho_mem_retrieve(kho_in, memblock, log):
            kho_in.fdt_phys = 0
    elif era.map_required:
        kho_mem_deserialize(kho_in, memblock, log, kho_in.mem_map_phys)
    else:
        prop = kho_in.root.getprop(PROP_PRESERVED_MEMORY_MAP)
        if prop is None or len(prop) != 8:
            log.err("KHO: failed to get preserved memory bitmaps")
        else:
            kho_mem_deserialize(kho_in, memblock, log, U64.unpack(prop)[0])
    memblock.reserve_many(kho_in.pending)
    kho_in.pending = []
    if era.restore_root_folio and kho_in.restore_folio(kho_in.fdt_phys) is None:
        log.warn("KHO: failed to restore folio for KHO fdt")
    memblock.kho_scratch_only = False
    return [KhoScratch(addr, size) for addr, size in table]


def _reserve(kho_in: KhoIn, memblock: Memblock, phys: int, order: int, count: int = 1) -> None:
    """deserialize_bitmap's / kho_preserved_memory_reserve's body for `count` adjacent blocks
    of one order: memblock_reserve and noinit, then page->private = order (and from 6.18
    the magic). The size is the C expression's: `1 << (order + PAGE_SHIFT)` as x86 shifts
    it. (Adjacent blocks make one memblock region either way: reserved in one call.)"""
    page_shift = kho_in.mem.page_size.bit_length() - 1
    size = (1 << ((order + page_shift) & 63)) & U64_MASK
    kho_in.pending.append((phys, size * count))
    for i in range(count):
        block = (phys + i * size) & U64_MASK
        kho_in.orders[block] = order
        kho_in.reserved.append((block, order))


def kho_mem_deserialize(kho_in: KhoIn, memblock: Memblock, log: Printk, chunk: int) -> None:
    """Walk the chunk list: reserve each preserved block and note its order."""
    mem = kho_in.mem
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
    """deserialize_bitmap: each set bit of the PRESERVE_BITS this kernel reads at the
    bitmap's address (whoever wrote them, and whatever lies there) is a block."""
    page_shift = kho_in.mem.page_size.bit_length() - 1
    bits = int.from_bytes(kho_in.mem.read(bitmap, kho_in.era.bitmap_bytes), "little")
    while bits:
        first = (bits & -bits).bit_length() - 1
        rest = bits >> first
        run = (~rest & (rest + 1)).bit_length() - 1  # the run of set bits from `first`
        bits ^= ((1 << run) - 1) << first
        _reserve(kho_in, memblock, (start + (first << (order + page_shift))) & U64_MASK,
                 order, run)


def kho_mem_retrieve(kho_in: KhoIn, memblock: Memblock, log: Printk) -> int:
    """kho_mem_retrieve (7.1 on): walk the radix tree from `preserved-memory-map`."""
    prop = kho_in.root.getprop(PROP_PRESERVED_MEMORY_MAP)
    if prop is None or len(prop) != 8:
        log.err("KHO: failed to get preserved KHO memory tree")
        return -errno.ENOENT
    root = U64.unpack(prop)[0]
    if not root:
        return -errno.EINVAL

    def reserve(phys: int, order: int) -> int:
        _reserve(kho_in, memblock, phys, order)
        return 0

    err = radix_walk(kho_in.mem, root, reserve)
    if err == -errno.ELOOP:
        log.err("khofs: the preserved memory tree does not end; the rest is ignored")
        return 0
    return err
