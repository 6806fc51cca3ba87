"""KHO's own handover ABI (include/linux/kho/abi/kexec_handover.h from 7.0; before that the
same values lived in kernel/kexec_handover.c), for every era khofs emulates.

The root FDT: `compatible` ("kho-v1" up to 7.0, "kho-v3" in 7.1, "kho-v4" from 7.2), a u64
`preserved-memory-map`, and one node per sub-tree: a u64 `fdt` (its address) up to 7.0;
from 7.1 a u64 `preserved-data` and a u64 `blob-size`. Values are raw CPU-order bytes:
little endian on x86-64 and arm64.

The memory map up to 7.0 is a list of chunks of bitmaps (512-byte bitmaps in 6.16 and 6.17,
PAGE_SIZE from 6.18); from 7.1 it is a radix tree of pages (khofs.engine.kho_radix).
"""

from __future__ import annotations

import struct

KHO_FDT_COMPATIBLE = "kho-v1"  # up to 7.0
KHO_FDT_COMPATIBLE_V3 = "kho-v3"  # 7.1
KHO_FDT_COMPATIBLE_V4 = "kho-v4"  # 7.2 on
PROP_PRESERVED_MEMORY_MAP = "preserved-memory-map"  # KHO_FDT_MEMORY_MAP_PROP_NAME
PROP_SUB_FDT = "fdt"  # up to 7.0
PROP_SUB_TREE = "preserved-data"  # KHO_SUB_TREE_PROP_NAME, 7.1 on
PROP_SUB_TREE_SIZE = "blob-size"  # KHO_SUB_TREE_SIZE_PROP_NAME, 7.1 on
U64 = struct.Struct("<Q")  # a phys_addr_t property, as the CPU stores it

# struct khoser_mem_chunk: one page, a header then (PAGE_SIZE - 16) / 16 entries.
CHUNK_HDR = struct.Struct("<QII")  # struct khoser_mem_chunk_hdr: next, order, num_elms
CHUNK_ELM = struct.Struct("<QQ")  # struct khoser_mem_bitmap_ptr: phys_start, bitmap
PRESERVE_BITS = 512 * 8  # 6.16: 512-byte bitmaps (PAGE_SIZE * 8 bits from 6.18)

# struct kho_scratch, the table kexec loads as a segment: u64 addr, u64 size per entry.
SCRATCH_ENTRY = struct.Struct("<QQ")

# page->private of a preserved block's head page once deserialised (6.18 on):
# union kho_page_info { unsigned int order; unsigned int magic; }
KHO_PAGE_MAGIC = 0x4B484F50  # 'KHOP'

# --- vmalloc preservation (6.18 on) -----------------------------------------------------
# struct kho_vmalloc: u64 first chunk, u32 total_pages, u16 flags, u16 order.
KHO_VMALLOC = struct.Struct("<QIHH")
KHO_VMALLOC_ALLOC = 0x0001  # VM_ALLOC
KHO_VMALLOC_HUGE_VMAP = 0x0002  # VM_ALLOW_HUGE_VMAP
# struct kho_vmalloc_chunk: one page, u64 next then zero-terminated u64 phys[].


def kho_vmalloc_size(page_size: int) -> int:
    """KHO_VMALLOC_SIZE: the phys[] entries of one chunk (511 with 4 KiB pages)."""
    return (page_size - 8) // 8


# --- the radix tree (7.1 on) --------------------------------------------------------------
# enum kho_radix_consts, from the page size.

def kho_order_0_log2(page_shift: int) -> int:
    """KHO_ORDER_0_LOG2: the order bit of an order-0 key (52 with 4 KiB pages)."""
    return 64 - page_shift


def kho_table_size_log2(page_shift: int) -> int:
    """KHO_TABLE_SIZE_LOG2: entries of a table node, log2 (9 with 4 KiB pages)."""
    return page_shift - 3


def kho_bitmap_size_log2(page_shift: int) -> int:
    """KHO_BITMAP_SIZE_LOG2: bits of a leaf, log2 (15 with 4 KiB pages)."""
    return page_shift + 3


def kho_tree_max_depth(page_shift: int) -> int:
    """KHO_TREE_MAX_DEPTH: table levels plus the leaf level (6 with 4 KiB pages)."""
    span = kho_order_0_log2(page_shift) - kho_bitmap_size_log2(page_shift)
    return -(-span // kho_table_size_log2(page_shift)) + 1
