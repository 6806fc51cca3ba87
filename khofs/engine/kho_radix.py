"""KHO's radix tree of preserved memory (7.1 on: kernel/liveupdate/kexec_handover.c,
kho_radix_*; layout in include/linux/kho/abi/kexec_handover.h).

Every node is one page of emulated memory: tables of u64 physical addresses (levels
KHO_TREE_MAX_DEPTH-1 .. 1) over bitmap leaves (level 0). A block of 2^order pages at `phys` is
the key (1 << (KHO_ORDER_0_LOG2 - order)) | (phys >> (PAGE_SHIFT + order)); its table index
at level L is (key >> (BITMAP_LOG2 + TABLE_LOG2 * (L - 1))) % TABLE_SIZE and its bit in the leaf
key % BITMAP_BITS. Nodes are allocated zeroed on demand and never freed; the root's address is
the root FDT's `preserved-memory-map` from boot on, and the next kernel walks the tree while it
still runs in scratch memory (the nodes themselves are not preserved).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from khofs.engine.abi.kexec_handover import (
    U64,
    kho_bitmap_size_log2,
    kho_order_0_log2,
    kho_table_size_log2,
    kho_tree_max_depth,
)
from khofs.engine.physmem import PhysMem
from khofs.engine.slab import PageSource

U64_MASK = (1 << 64) - 1
# khofs's bound on a walk: a tree the size of a 2 TiB machine's order-0 map (512 leaves)
# many times over; a corrupt tree is cut off there instead of walked for ever.
MAX_WALK_NODES = 1 << 16

WalkCallback = Callable[[int, int], int]  # kho_radix_tree_walk_callback_t(phys, order)


class RadixGeometry:
    """enum kho_radix_consts for one page size."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.page_shift = page_size.bit_length() - 1
        self.order_0_log2 = kho_order_0_log2(self.page_shift)
        self.table_log2 = kho_table_size_log2(self.page_shift)
        self.bitmap_log2 = kho_bitmap_size_log2(self.page_shift)
        self.depth = kho_tree_max_depth(self.page_shift)

    def encode_key(self, phys: int, order: int) -> int:
        """kho_radix_encode_key."""
        return (1 << (self.order_0_log2 - order)) | (phys >> (self.page_shift + order))

    def decode_key(self, key: int) -> tuple[int, int]:
        """kho_radix_decode_key: (phys, order); the order bit falls off the shift."""
        order = self.order_0_log2 - key.bit_length() + 1
        return (key << ((self.page_shift + order) & 63)) & U64_MASK, order

    def table_index(self, key: int, level: int) -> int:
        """kho_radix_get_table_index."""
        shift = (level - 1) * self.table_log2 + self.bitmap_log2
        return (key >> shift) % (1 << self.table_log2)

    def bitmap_index(self, key: int) -> int:
        """kho_radix_get_bitmap_index."""
        return key % (1 << self.bitmap_log2)


class KhoRadixTree:
    """struct kho_radix_tree of the running kernel: its root page, its nodes in memory."""

    def __init__(self, mem: PhysMem, pages: PageSource) -> None:
        self.mem = mem
        self.pages = pages
        self.geo = RadixGeometry(mem.page_size)
        self.root = 0

    def _entry(self, node: int, idx: int) -> int:
        return int(U64.unpack(self.mem.read(node + idx * 8, 8))[0])

    def add_page(self, pfn: int, order: int) -> int:
        """kho_radix_add_page: walk down, allocating missing nodes (get_zeroed_page); if one
        cannot be had, free what this call allocated and unhook the new branch: -ENOMEM.
        -EINVAL (WARN) before kho_init made the root."""
        if not self.root:
            return -errno.EINVAL
        geo = self.geo
        key = geo.encode_key(pfn << geo.page_shift, order)
        node = self.root
        new: list[int] = []
        anchor: tuple[int, int] | None = None
        for level in range(geo.depth - 1, 0, -1):
            idx = geo.table_index(key, level)
            child = self._entry(node, idx)
            if not child:
                child = self.pages.alloc_pages(0)
                if not child:
                    for page in new:
                        self.pages.free_pages(page, 0)
                    if anchor is not None:
                        self.mem.write(anchor[0] + anchor[1] * 8, U64.pack(0))
                    return -errno.ENOMEM
                self.mem.zero(child, self.mem.page_size)
                self.mem.write(node + idx * 8, U64.pack(child))
                if anchor is None:
                    anchor = (node, idx)
                new.append(child)
            node = child
        self._set_bit(node, geo.bitmap_index(key), True)
        return 0

    def del_page(self, pfn: int, order: int) -> bool:
        """kho_radix_del_page: clear the block's bit; False (the kernel WARNs) when its path
        is missing. Nodes stay."""
        if not self.root:
            return False
        geo = self.geo
        key = geo.encode_key(pfn << geo.page_shift, order)
        node = self.root
        for level in range(geo.depth - 1, 0, -1):
            node = self._entry(node, geo.table_index(key, level))
            if not node:
                return False
        self._set_bit(node, geo.bitmap_index(key), False)
        return True

    def _set_bit(self, leaf: int, bit: int, on: bool) -> None:
        addr = leaf + bit // 8
        byte = self.mem.read(addr, 1)[0]
        byte = byte | (1 << (bit % 8)) if on else byte & ~(1 << (bit % 8)) & 0xFF
        self.mem.write(addr, bytes([byte]))

    def preserved_blocks(self) -> list[tuple[int, int]]:
        """Every preserved (phys, order), in the order the next kernel's walk finds them."""
        found: list[tuple[int, int]] = []

        def note(phys: int, order: int) -> int:
            found.append((phys, order))
            return 0

        radix_walk(self.mem, self.root, note)
        return found


def radix_walk(mem: PhysMem, root: int, cb: WalkCallback) -> int:
    """kho_radix_walk_tree over the tree at `root` as memory holds it: tables depth first,
    indices ascending, each leaf's bits ascending; the callback's first non-zero result ends
    the walk. khofs stops a corrupt tree after MAX_WALK_NODES nodes (returns -ELOOP)."""
    if not root:
        return -errno.EINVAL
    geo = RadixGeometry(mem.page_size)
    budget = [MAX_WALK_NODES]
    return _walk(mem, geo, root, geo.depth - 1, 0, cb, budget)


def _walk(mem: PhysMem, geo: RadixGeometry, node: int, level: int, start: int,
          cb: WalkCallback, budget: list[int]) -> int:
    budget[0] -= 1
    if budget[0] < 0:
        return -errno.ELOOP
    raw = mem.read(node, geo.page_size)
    if not any(raw):
        return 0
    shift = (level - 1) * geo.table_log2 + geo.bitmap_log2
    for i, (child,) in enumerate(U64.iter_unpack(raw)):
        if not child:
            continue
        key = start | (i << shift)
        if level == 1:
            err = _walk_leaf(mem, geo, child, key, cb)
        else:
            err = _walk(mem, geo, child, level - 1, key, cb, budget)
        if err:
            return err
    return 0


def _walk_leaf(mem: PhysMem, geo: RadixGeometry, leaf: int, key: int, cb: WalkCallback) -> int:
    """kho_radix_walk_leaf."""
    bits = int.from_bytes(mem.read(leaf, geo.page_size), "little")
    while bits:
        low = bits & -bits
        bits ^= low
        phys, order = geo.decode_key(key | (low.bit_length() - 1))
        err = cb(phys, order)
        if err:
            return err
    return 0
