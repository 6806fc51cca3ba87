"""reserve_mem= regions across kexec: the KHO part of mm/memblock.c in Linux 6.16 and 6.17.

Outgoing (reserve_mem_init, a late_initcall): with KHO enabled and at least one reserve_mem=
region, prepare_kho_fdt builds a one-page sub-FDT (root compatible "memblock-v1", one child per
region named after it with compatible "reserve-mem-v1" and native-endian u64 "start" and
"size"), and a notifier preserves every region and that page on FINALIZE and adds the sub-tree
"memblock". Incoming (reserve_mem, a __setup handler, per region): reserve_mem_kho_revive takes
a region over at its old address when the incoming sub-FDT has a child of that name, compatible,
aligned as asked and of the same size; otherwise the region is allocated anew.

memblock.c has no pr_fmt: its lines carry no prefix.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from khofs.engine.kho import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoOut, KhoSerialization
from khofs.engine.kho_test import read_sub_fdt
from khofs.engine.notifier import NOTIFY_BAD, NOTIFY_DONE, notifier_from_errno
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk
from khofs.lib.fdt_ro import FdtNode
from khofs.lib.libfdt import FDT_ERR_BADMAGIC, FDT_ERR_NOTFOUND, FdtSw

if TYPE_CHECKING:
    from khofs.engine.kernel import Kernel

MEMBLOCK_KHO_FDT = "memblock"
MEMBLOCK_KHO_NODE_COMPATIBLE = "memblock-v1"
RESERVE_MEM_KHO_NODE_COMPATIBLE = "reserve-mem-v1"
U64 = struct.Struct("<Q")  # phys_addr_t, as the CPU stores it

Region = tuple[str, int, int]  # a reserve_mem_table entry: name, start, size


def build_memblock_fdt(buf: bytearray | memoryview, regions: Sequence[Region]) -> int:
    """prepare_kho_fdt's libfdt part, in place in buf (the whole page): 0 or the OR of the
    libfdt errors, as the C code accumulates them."""
    fdt = FdtSw(buf)
    err = 0
    err |= fdt.create(len(fdt.buf))
    err |= fdt.finish_reservemap()
    err |= fdt.begin_node("")
    err |= fdt.property_string("compatible", MEMBLOCK_KHO_NODE_COMPATIBLE)
    for name, start, size in regions:
        err |= fdt.begin_node(name)
        err |= fdt.property_string("compatible", RESERVE_MEM_KHO_NODE_COMPATIBLE)
        err |= fdt.property("start", U64.pack(start))
        err |= fdt.property("size", U64.pack(size))
        err |= fdt.end_node()
    err |= fdt.end_node()
    err |= fdt.finish()
    return err


class MemblockKho:
    """reserve_mem_init and reserve_mem_kho_nb (priority 0). One per boot."""

    name = MEMBLOCK_KHO_FDT
    priority = 0

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self.fdt_phys = 0  # kho_fdt
        self.kho: KhoOut | None = None

    def init(self, kernel: Kernel) -> int:
        """reserve_mem_init: nothing unless KHO is enabled and a region exists."""
        if not kernel.kho_enabled or not kernel.reserved_mem:
            return 0
        self.regions = list(kernel.reserved_mem)
        self.kho = kernel.kho
        err = self._prepare_fdt(kernel)
        if err:
            return err
        err = kernel.kho.register_notifier(self)
        if err:
            kernel.pages.free_pages(self.fdt_phys, 0)
            self.fdt_phys = 0
        return err

    def _prepare_fdt(self, kernel: Kernel) -> int:
        """prepare_kho_fdt: one page, fdt_create(fdt, PAGE_SIZE), built in place."""
        phys = kernel.pages.alloc_pages(0)
        if not phys:
            return -errno.ENOMEM
        err = build_memblock_fdt(kernel.mem.page_view(phys), self.regions)
        if err:
            kernel.log.err(f"failed to prepare memblock FDT for KHO: {err}")
            kernel.pages.free_pages(phys, 0)
            return err
        self.fdt_phys = phys
        return 0

    def notifier_call(self, action: int, data: object) -> int:
        """reserve_mem_kho_notifier."""
        if action == KEXEC_KHO_FINALIZE:
            assert isinstance(data, KhoSerialization)
            return self._finalize(data)
        if action == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        return NOTIFY_BAD

    def _finalize(self, ser: KhoSerialization) -> int:
        """reserve_mem_kho_finalize: every call is made, their errors OR-ed together (a
        region that is not page aligned fails with EINVAL, and the sub-tree is still added)."""
        kho = self.kho
        assert kho is not None
        err = 0
        for _name, start, size in self.regions:
            err |= kho.preserve_phys(start, size)
        err |= kho.preserve_folio(self.fdt_phys, 0)
        err |= kho.add_subtree(ser, MEMBLOCK_KHO_FDT, self.fdt_phys)
        return notifier_from_errno(err)


# --- reviving at the next boot ----------------------------------------------------------


@runtime_checkable
class SubtreeSource(Protocol):
    """What reviving needs of struct kho_in (khofs.engine.kho.KhoIn has it)."""

    mem: PhysMem

    def retrieve_subtree(self, name: str) -> tuple[int, int]: ...


class BootingKernel(Protocol):
    """A kernel far enough into its boot to have its log and its incoming handover."""

    @property
    def kho_in(self) -> SubtreeSource | None: ...

    @property
    def log(self) -> Printk: ...


def _retrieve_fdt(kho_in: SubtreeSource | None, log: Printk) -> FdtNode | None:
    """reserve_mem_kho_retrieve_fdt. The C code caches only a success, so an incompatible
    sub-tree is reported again for every reserve_mem= region: so it is here."""
    err, phys = kho_in.retrieve_subtree(MEMBLOCK_KHO_FDT) if kho_in else (-errno.ENOENT, 0)
    if err:
        if err != -errno.ENOENT:
            log.warn(f"failed to retrieve FDT '{MEMBLOCK_KHO_FDT}' from KHO: {err}")
        return None
    assert kho_in is not None
    root = read_sub_fdt(kho_in.mem, phys)
    compat = root.check_compatible(MEMBLOCK_KHO_NODE_COMPATIBLE) if root else -FDT_ERR_BADMAGIC
    if compat:
        log.warn(f"FDT '{MEMBLOCK_KHO_FDT}' is incompatible with "
                 f"'{MEMBLOCK_KHO_NODE_COMPATIBLE}': {compat}")
        return None
    return root


def reserve_mem_kho_revive(source: BootingKernel | SubtreeSource | None, name: str, size: int,
                           align: int, log: Printk | None = None) -> int | None:
    """reserve_mem_kho_revive: the start of the incoming region `name` when it may be taken
    over, else None (then reserve_mem allocates the region anew).

    `source` is the booting kernel (its kho_in and log are used), or a KhoIn (or None) with
    `log` given. `align` is reserve_mem's, already raised to SMP_CACHE_BYTES. The name match
    is libfdt's fdt_subnode_offset: "name" also finds a child "name@unit". On success the
    caller records the region (reserved_mem_add); memblock.c does not memblock_reserve it:
    kho_mem_deserialize reserves it later, as preserved memory.
    """
    kho_in, out = _split_source(source, log)
    root = _retrieve_fdt(kho_in, out)
    if root is None:
        return None
    node = root.subnode(name)
    if node is None:
        out.warn(f"FDT '{MEMBLOCK_KHO_FDT}' has no child '{name}': {-FDT_ERR_NOTFOUND}")
        return None
    compat = node.check_compatible(RESERVE_MEM_KHO_NODE_COMPATIBLE)
    if compat:
        out.warn(f"Node '{name}' is incompatible with '{RESERVE_MEM_KHO_NODE_COMPATIBLE}': "
                 f"{compat}")
        return None
    p_start, p_size = node.getprop("start"), node.getprop("size")
    if p_start is None or len(p_start) != U64.size or p_size is None or len(p_size) != U64.size:
        return None
    start, old_size = U64.unpack(p_start)[0], U64.unpack(p_size)[0]
    if start & (align - 1):
        out.warn(f"KHO reserve-mem '{name}' has wrong alignment (0x{align:x}, 0x{start:x})")
        return None
    if old_size != size:
        out.warn(f"KHO reserve-mem '{name}' has wrong size (0x{old_size:x} != 0x{size:x})")
        return None
    out.info(f"Revived memory reservation '{name}' from KHO")
    return int(start)


def _split_source(source: BootingKernel | SubtreeSource | None,
                  log: Printk | None) -> tuple[SubtreeSource | None, Printk]:
    """(kho_in, log) from either form of reserve_mem_kho_revive's first argument."""
    if source is None or isinstance(source, SubtreeSource):
        if log is None:
            raise TypeError("reserve_mem_kho_revive: pass log= with a KhoIn or None")
        return source, log
    return source.kho_in, log if log is not None else source.log
