"""reserve_mem= regions revived from a handover: the incoming half of mm/memblock.c's KHO
support in Linux 6.16 and 6.17 (the outgoing half, a driver, is khofs.producers.memblock).

reserve_mem, a __setup handler, asks for each region: reserve_mem_kho_revive takes a region
over at its old address when the incoming `memblock` sub-FDT has a child of that name,
compatible, aligned as asked and of the same size; otherwise the region is allocated anew.

memblock.c has no pr_fmt: its lines carry no prefix.
"""

from __future__ import annotations

import errno

from khofs.engine.abi.kexec_handover import U64
from khofs.engine.abi.memblock import (
    MEMBLOCK_KHO_FDT,
    MEMBLOCK_KHO_NODE_COMPATIBLE,
    RESERVE_MEM_KHO_NODE_COMPATIBLE,
)
from khofs.engine.kho_in import KhoIn
from khofs.engine.printk import Printk
from khofs.lib.fdt_ro import FdtNode
from khofs.lib.libfdt import FDT_ERR_BADMAGIC, FDT_ERR_NOTFOUND


def _retrieve_fdt(kho_in: KhoIn | None, log: Printk) -> FdtNode | None:
    """reserve_mem_kho_retrieve_fdt. The C code caches only a success, so an incompatible
    sub-tree is reported again for every reserve_mem= region: so it is here."""
    err, phys = kho_in.retrieve_subtree(MEMBLOCK_KHO_FDT) if kho_in else (-errno.ENOENT, 0)
    if err:
        if err != -errno.ENOENT:
            log.warn(f"failed to retrieve FDT '{MEMBLOCK_KHO_FDT}' from KHO: {err}")
        return None
    assert kho_in is not None
    root = kho_in.mem.parse_fdt(phys)
    compat = root.check_compatible(MEMBLOCK_KHO_NODE_COMPATIBLE) if root else -FDT_ERR_BADMAGIC
    if compat:
        log.warn(f"FDT '{MEMBLOCK_KHO_FDT}' is incompatible with "
                 f"'{MEMBLOCK_KHO_NODE_COMPATIBLE}': {compat}")
        return None
    return root


def reserve_mem_kho_revive(kho_in: KhoIn | None, name: str, size: int, align: int,
                           log: Printk) -> int | None:
    """reserve_mem_kho_revive: the start of the incoming region `name` when it may be taken
    over, else None (then reserve_mem allocates the region anew).

    `align` is reserve_mem's, already raised to SMP_CACHE_BYTES. The name match is libfdt's
    fdt_subnode_offset: "name" also finds a child "name@unit". On success the
    caller records the region (reserved_mem_add); memblock.c does not memblock_reserve it:
    kho_mem_deserialize reserves it later, as preserved memory.
    """
    root = _retrieve_fdt(kho_in, log)
    if root is None:
        return None
    node = root.subnode(name)
    if node is None:
        log.warn(f"FDT '{MEMBLOCK_KHO_FDT}' has no child '{name}': {-FDT_ERR_NOTFOUND}")
        return None
    compat = node.check_compatible(RESERVE_MEM_KHO_NODE_COMPATIBLE)
    if compat:
        log.warn(f"Node '{name}' is incompatible with '{RESERVE_MEM_KHO_NODE_COMPATIBLE}': "
                 f"{compat}")
        return None
    p_start, p_size = node.getprop("start"), node.getprop("size")
    if p_start is None or len(p_start) != U64.size or p_size is None or len(p_size) != U64.size:
        return None
    start, old_size = U64.unpack(p_start)[0], U64.unpack(p_size)[0]
    if start & (align - 1):
        log.warn(f"KHO reserve-mem '{name}' has wrong alignment (0x{align:x}, 0x{start:x})")
        return None
    if old_size != size:
        log.warn(f"KHO reserve-mem '{name}' has wrong size (0x{old_size:x} != 0x{size:x})")
        return None
    log.info(f"Revived memory reservation '{name}' from KHO")
    return int(start)
