"""KHO's own handover ABI, profile 6.16 (include/linux/kho/abi/kexec_handover.h from 7.0;
before that the same values lived in kernel/kexec_handover.c).

The root FDT: `compatible = "kho-v1"`, a u64 `preserved-memory-map` (the first chunk of the
serialised memory map), and one node per sub-tree with a u64 `fdt` property (its address).
Values are raw CPU-order bytes: little endian on x86-64 and arm64.
"""

from __future__ import annotations

import struct

KHO_FDT_COMPATIBLE = "kho-v1"
PROP_PRESERVED_MEMORY_MAP = "preserved-memory-map"
PROP_SUB_FDT = "fdt"
U64 = struct.Struct("<Q")  # a phys_addr_t property, as the CPU stores it

# struct khoser_mem_chunk: one page, a header then (PAGE_SIZE - 16) / 16 entries.
CHUNK_HDR = struct.Struct("<QII")  # struct khoser_mem_chunk_hdr: next, order, num_elms
CHUNK_ELM = struct.Struct("<QQ")  # struct khoser_mem_bitmap_ptr: phys_start, bitmap
PRESERVE_BITS = 512 * 8  # 6.16: 512-byte bitmaps (4096 bytes from 6.18)

# struct kho_scratch, the table kexec loads as a segment: u64 addr, u64 size per entry.
SCRATCH_ENTRY = struct.Struct("<QQ")
