"""memblock's reserve_mem handover (include/linux/kho/abi/memblock.h from 7.0; local
#defines in mm/memblock.c before).

A sub-tree `memblock`: root `compatible = "memblock-v1"`, one child per reserve_mem= region,
named after it, with `compatible = "reserve-mem-v1"` and u64 `start` and `size`.
"""

from __future__ import annotations

MEMBLOCK_KHO_FDT = "memblock"
MEMBLOCK_KHO_NODE_COMPATIBLE = "memblock-v1"
RESERVE_MEM_KHO_NODE_COMPATIBLE = "reserve-mem-v1"
