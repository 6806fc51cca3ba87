"""The memblock reservations a kernel (x86-64 or arm64) makes before KHO sizes its scratch
areas.

They are made through the emulated memblock in the order `start_kernel` makes them, up to
`mm_core_init` -> `kho_memory_init`, with the sizes a distribution kernel (Debian's 6.16
configuration) uses. Each step names the kernel function it stands for. Allocations are
RSRV_KERN, so they feed `memblock_reserved_kern_size` and through it the scratch sizes; the
first MiB and the initrd are plain reservations and do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from khofs.engine.crash_reserve import (
    DEFAULT_CRASH_KERNEL_LOW_SIZE,
    crash_limits,
    parse_crashkernel,
)
from khofs.engine.kexec import Handover
from khofs.engine.kho_in import KhoIn
from khofs.engine.machine import SMP_CACHE_BYTES, GiB, KiB, Machine, MiB
from khofs.engine.memblock import (
    MEMBLOCK_ALLOC_ACCESSIBLE,
    MEMBLOCK_RSRV_KERN,
    NUMA_NO_NODE,
    Memblock,
    round_down,
    round_up,
)
from khofs.engine.params import BootParams, ReserveMem
from khofs.engine.printk import LOG_BUF_LEN, Printk
from khofs.engine.reserve_mem import reserve_mem_kho_revive

PG_DATA_T_SIZE = 0x2B000  # sizeof(pg_data_t), page-rounded: "NODE_DATA(n) allocated" lines
MEM_SECTION_SIZE = 16  # sizeof(struct mem_section)
SECTION_USAGE_SIZE = 24 + 32  # struct mem_section_usage + usemap_size()
PERCPU_UNIT_USED = 256 * KiB  # static + reserved + dynamic per-cpu bytes ("Embedded 64 pages")
LOG_CPU_MAX_BUF = 4 * KiB  # CONFIG_LOG_CPU_MAX_BUF_SHIFT=12
IO_TLB_DEFAULT_SIZE = 64 * MiB
IO_TLB_SLOT_SIZE = 24  # sizeof(struct io_tlb_slot), one per 2 KiB slab


@dataclass(frozen=True)
class Reservation:
    """One boot reservation, as `khofs machine show` lists it."""

    what: str
    func: str  # the kernel function that made it
    base: int
    size: int
    nid: int  # the node memblock recorded (NUMA_NO_NODE when none was asked for)
    kern: bool  # MEMBLOCK_RSRV_KERN: counted by memblock_reserved_kern_size


class Boot:
    """The reserving part of setup_arch and start_kernel for one machine."""

    def __init__(self, machine: Machine, memblock: Memblock, log: Printk,
                 loaded: Handover | None = None) -> None:
        self.machine = machine
        self.loaded = loaded  # after kexec: where the previous kernel put our segments
        self.arch = machine.arch
        self.mb = memblock
        self.log = log
        self.reservations: list[Reservation] = []
        self.x86 = machine.arch.name == "x86_64"
        self.min_addr = machine.arch.max_dma_address(machine.dram_start)

    # --- recording ------------------------------------------------------------------------

    def _reserve(self, what: str, func: str, base: int, size: int, kern: bool) -> None:
        self.mb.reserve(base, size, NUMA_NO_NODE, MEMBLOCK_RSRV_KERN if kern else 0)
        self.reservations.append(Reservation(what, func, base, size, NUMA_NO_NODE, kern))

    def _alloc(self, what: str, func: str, size: int, align: int, *, nid: int = NUMA_NO_NODE,
               min_addr: int = 0, max_addr: int = MEMBLOCK_ALLOC_ACCESSIBLE,
               exact_nid: bool = False) -> int:
        base = self.mb.alloc_try_nid(size, align, min_addr, max_addr, nid, exact_nid)
        if not base:
            self.log.err(f"{func}: Failed to allocate {size:#x} bytes")
            return 0
        self.reservations.append(Reservation(what, func, base, size, self._nid_at(base), True))
        return base

    def _nid_at(self, base: int) -> int:
        """The node memblock recorded for the reservation holding base."""
        return next(r.nid for r in self.mb.reserved.regions if r.base <= base < r.end)

    # --- setup_arch ------------------------------------------------------------------------

    def early_reserve_memory(self) -> None:
        """The image and what firmware left: x86 early_reserve_memory reserves the image
        with memblock_reserve_kern and (reserve_real_mode) the first MiB; arm64's
        arm64_memblock_init a plain memblock_reserve of the image, and
        early_init_fdt_reserve_self the device tree QEMU put at the start of RAM."""
        start = self.machine.dram_start
        image = self._segment("kernel", self.arch.kernel_base(start), self.machine.kernel_size)
        self._reserve("kernel image", "early_reserve_memory" if self.x86 else
                      "arm64_memblock_init", *image, self.arch.kernel_image_is_kern)
        if self.x86:
            self._reserve("first 1 MiB (BIOS, real mode)", "reserve_real_mode", 0, MiB, False)
        else:
            dtb = self._segment("device tree", start, MiB)
            self._reserve("device tree blob", "early_init_fdt_reserve_self", *dtb, False)

    def _segment(self, what: str, base: int, size: int) -> tuple[int, int]:
        """Where a loaded piece is: its kexec segment after kexec, else the cold-boot spot."""
        seg = self.loaded.segment(what) if self.loaded else None
        return (seg.mem, seg.memsz) if seg else (base, size)

    def reserve_initrd(self) -> None:
        """Where the boot loader put the initrd: x86 boot loaders at the top of RAM below
        2 GiB (initrd_addr_max); QEMU's arm loader min(RAM / 2, 128 MiB) into RAM."""
        size = round_up(self.machine.initrd_size, self.arch.page_size)
        if self.loaded is not None:
            seg = self.loaded.segment("initrd")
            if seg:
                self._reserve("initrd", "early_reserve_initrd" if self.x86 else
                              "arm64_memblock_init", seg.mem, seg.memsz, False)
            return
        if not size:
            return
        if self.x86:
            # no RAM below 2 GiB: the loader has nowhere better than the top of RAM
            top = max((min(end, 2 * GiB) for node in self.machine.nodes
                       for start, end in node.ranges if start < 2 * GiB),
                      default=self.machine.dram_end)
            base = round_down(top - size, self.arch.page_size)
        else:
            base = self.machine.dram_start + min(self.machine.memory_size // 2, 128 * MiB)
        self._reserve("initrd", "early_reserve_initrd" if self.x86 else "arm64_memblock_init",
                      base, size, False)

    def alloc_node_data(self) -> None:
        """mm/numa.c alloc_node_data: each node's pg_data_t, on that node if it can be."""
        for node in self.machine.nodes:
            self._alloc(f"NODE_DATA({node.nid})", "alloc_node_data", PG_DATA_T_SIZE,
                        SMP_CACHE_BYTES, nid=node.nid)

    def reserve_crashkernel(self, cmdline: str) -> None:
        """reserve_crashkernel_generic: below the low limit first (then high memory, with a
        low part), high first with `,high`, or exactly at `@OFFSET`."""
        ck = parse_crashkernel(cmdline, self.machine.memory_size)
        if ck is None or not ck.size:
            return
        align, low_max, high_max = crash_limits(self.machine)
        low_size = ck.low_size
        if ck.base:
            start, end = ck.base, ck.base + ck.size
        else:
            start, end = (low_max, high_max) if ck.high else (0, low_max)
        base = self.mb.phys_alloc_range(ck.size, align, start, end)
        if not base and not ck.base:
            low_size = low_size if ck.high else DEFAULT_CRASH_KERNEL_LOW_SIZE
            start, end = (0, low_max) if ck.high else (low_max, high_max)
            base = self.mb.phys_alloc_range(ck.size, align, start, end)
        if not base:
            self.log.warn("crashkernel reservation failed - memory is in use." if ck.base
                          else f"cannot allocate crashkernel (size:0x{ck.size:x})")
            return
        if base >= low_max and low_size and not self._crash_low(low_size, align, low_max):
            self.mb.phys_free(base, ck.size)
            return
        self._record("crashkernel", "reserve_crashkernel_generic", base, ck.size)
        self.log.info(f"crashkernel reserved: 0x{base:016x} - 0x{base + ck.size:016x} "
                      f"({ck.size >> 20} MB)")

    def _crash_low(self, size: int, align: int, low_max: int) -> bool:
        """reserve_crashkernel_low: the part kdump needs below the low limit."""
        low = self.mb.phys_alloc_range(size, align, 0, low_max)
        if not low:
            self.log.err(f"cannot allocate crashkernel low memory (size:0x{size:x}).")
            return False
        self._record("crashkernel low", "reserve_crashkernel_low", low, size)
        self.log.info(f"crashkernel low memory reserved: 0x{low:08x} - 0x{low + size:08x} "
                      f"({size >> 20} MB)")
        return True

    def _record(self, what: str, func: str, base: int, size: int) -> None:
        self.reservations.append(Reservation(what, func, base, size, self._nid_at(base), True))

    def _present_sections(self, nid: int) -> list[int]:
        """The SPARSEMEM sections that hold some of this node's RAM (memblocks_present)."""
        size = self.arch.section_size
        node = next(n for n in self.machine.nodes if n.nid == nid)
        found: set[int] = set()
        for start, end in node.ranges:
            found.update(range(start // size, (end - 1) // size + 1))
        return sorted(found)

    def sparse_init(self) -> None:
        """mm/sparse.c sparse_init: the section root array, a root page per 256 sections,
        then per node its usemaps, its memmap (64 bytes per page, exact node, 2 MiB aligned,
        above MAX_DMA_ADDRESS) and the vmemmap page tables that map it."""
        section_bits = self.arch.section_size.bit_length() - 1  # SECTION_SIZE_BITS
        sections = 1 << (self.arch.max_physmem_bits - section_bits)  # NR_MEM_SECTIONS
        per_root = self.arch.page_size // MEM_SECTION_SIZE  # SECTIONS_PER_ROOT
        self._alloc("mem_section root array", "memblocks_present",
                    sections // per_root * 8, SMP_CACHE_BYTES)
        seen_roots: set[int] = set()
        for node in self.machine.nodes:
            for section in self._present_sections(node.nid):
                if section // per_root not in seen_roots:
                    seen_roots.add(section // per_root)
                    self._alloc(f"mem_section root {section // per_root}",
                                "sparse_index_init", self.arch.page_size, SMP_CACHE_BYTES,
                                nid=node.nid)
        for node in self.machine.nodes:
            self._sparse_init_nid(node.nid)

    def _sparse_init_nid(self, nid: int) -> None:
        arch = self.arch
        count = len(self._present_sections(nid))
        self._alloc(f"section usemaps, node {nid}", "sparse_init_nid",
                    SECTION_USAGE_SIZE * count, SMP_CACHE_BYTES, nid=nid)
        map_size = arch.section_size // arch.page_size * arch.struct_page_size
        if arch.vmemmap_uses_pmds:
            # section_map_size(): whole PMD blocks, from one exact-node sparse buffer
            align = map_size = round_up(map_size, arch.pmd_size)
        else:
            # vmemmap_populate_basepages takes pages; the buffer's tail goes back
            map_size, align = round_up(map_size, arch.page_size), arch.page_size
        memmap = map_size * count
        self._alloc(f"memmap (struct pages), node {nid}", "sparse_buffer_init", memmap,
                    align, nid=nid, min_addr=self.min_addr, exact_nid=True)
        # one table page per PMD table's reach (512 PMDs) or per PMD of base pages
        reach = arch.pmd_size * (arch.page_size // 8) if arch.vmemmap_uses_pmds \
            else arch.pmd_size
        self._alloc(f"vmemmap page tables, node {nid}", "vmemmap_populate",
                    -(-memmap // reach) * arch.page_size, arch.page_size, nid=nid,
                    min_addr=self.min_addr)

    # --- start_kernel ---------------------------------------------------------------------

    def setup_per_cpu_areas(self) -> None:
        """mm/percpu.c pcpu_embed_first_chunk: per node a block of units in 2 MiB atoms;
        each unit keeps what its CPU uses and gives back its tail, and the units no CPU has
        are given back whole."""
        groups = [(n.nid, self.machine.cpus_on(n.nid)) for n in self.machine.nodes]
        groups = [(nid, cpus) for nid, cpus in groups if cpus]
        # x86 asks for PMD-sized atoms; arm64 (drivers/base/arch_numa.c) for pages
        atom = self.arch.pmd_size if self.x86 else self.arch.page_size
        used_size = round_up(PERCPU_UNIT_USED, self.arch.page_size)
        upa = self._units_per_alloc([cpus for _, cpus in groups], atom, used_size)
        unit = round_up(used_size, atom) // upa
        for nid, cpus in groups:
            units = -(-cpus // upa) * upa
            base = self.mb.alloc_try_nid(units * unit, atom, self.min_addr,
                                         MEMBLOCK_ALLOC_ACCESSIBLE, nid)
            if not base:
                self.log.err(f"pcpu_embed_first_chunk: Failed to allocate for node {nid}")
                continue
            recorded = self._nid_at(base)
            for u in range(units):
                used = used_size if u < cpus else 0
                self.mb.phys_free(base + u * unit + used, unit - used)
                if used:
                    self.reservations.append(Reservation(
                        f"per-cpu first chunk, cpu unit {u} of node {nid}",
                        "pcpu_embed_first_chunk", base + u * unit, used, recorded, True))

    def _units_per_alloc(self, group_cpus: list[int], atom: int, used: int) -> int:
        """pcpu_build_alloc_info: the most units per atom-sized allocation that wastes at
        most a third of the CPUs' worth of units, without needing more allocations."""
        alloc = round_up(used, atom)
        best, last_allocs = 1, None
        for upa in range(alloc // used, 0, -1):
            if alloc % upa or (alloc // upa) % self.arch.page_size:
                continue
            allocs = sum(-(-cpus // upa) for cpus in group_cpus)
            wasted = sum(-(-cpus // upa) * upa - cpus for cpus in group_cpus)
            if wasted > self.machine.cpus // 3:
                continue
            if last_allocs is not None and allocs > last_allocs:
                break
            best, last_allocs = upa, allocs
        return best

    def reserve_mem(self, requests: list[ReserveMem], kho_in: KhoIn | None) -> None:
        """mm/memblock.c reserve_mem: each `reserve_mem=` region, in command-line order, taken
        over at its old address when the previous kernel handed it over (memblock.c does not
        reserve it then: kho_mem_deserialize reserves it as preserved memory)."""
        for req in requests:
            start = reserve_mem_kho_revive(kho_in, req.name, req.size, req.align, log=self.log)
            if start is None:
                self._alloc(f"reserve_mem {req.name}", "reserve_mem", req.size, req.align)
            else:
                self.reservations.append(Reservation(f"reserve_mem {req.name}", "reserve_mem",
                                                     start, req.size, NUMA_NO_NODE, False))

    def setup_log_buf(self) -> None:
        """kernel/printk/printk.c setup_log_buf: a bigger ring only on machines with more
        than 64 possible CPUs (log_buf_add_cpu), with its descriptor and info arrays."""
        extra = (self.machine.cpus - 1) * LOG_CPU_MAX_BUF
        if extra <= LOG_BUF_LEN // 2:
            return
        length = 1 << (LOG_BUF_LEN + extra - 1).bit_length()
        count = length >> 5  # PRB_AVGBITS
        for what, size in (("log buffer", length), ("log descriptors", count * 24),
                           ("log infos", count * 88)):
            self._alloc(what, "setup_log_buf", size, SMP_CACHE_BYTES)

    def vfs_caches_init_early(self) -> None:
        """fs/dcache.c, fs/inode.c: with one node (hashdist off) the dentry and inode hash
        tables come from memblock, sized from the RAM's pages (alloc_large_system_hash)."""
        if len(self.machine.nodes) > 1:
            return
        pages = self.machine.memory_size // self.arch.page_size
        pages -= pages * self.arch.struct_page_size // self.arch.page_size  # nr_kernel_pages
        entries = 1 << (pages - 1).bit_length()
        shift = self.arch.page_shift
        for what, scale in (("dentry hash table", 13), ("inode hash table", 14)):
            size = 8 * (entries >> (scale - shift) if scale > shift else entries << (shift - scale))
            self._alloc(what, "alloc_large_system_hash", size, SMP_CACHE_BYTES)

    def swiotlb_init(self) -> None:
        """kernel/dma/swiotlb.c swiotlb_init_remap from arch_mm_preinit: with RAM beyond
        the DMA limit, 64 MiB of bounce buffers below it, and its slot array."""
        low_limit = self.machine.low_limit
        if self.mb.end_of_dram() <= low_limit + 1:
            return
        self._alloc("swiotlb bounce buffers", "swiotlb_memblock_alloc", IO_TLB_DEFAULT_SIZE,
                    self.arch.page_size, max_addr=low_limit)
        slots = IO_TLB_DEFAULT_SIZE // (2 * KiB) * IO_TLB_SLOT_SIZE
        self._alloc("swiotlb slots", "swiotlb_init_remap", round_up(slots, self.arch.page_size),
                    self.arch.page_size)


def boot_reservations(machine: Machine, memblock: Memblock, params: BootParams,
                      log: Printk, loaded: Handover | None = None,
                      kho_in: KhoIn | None = None) -> list[Reservation]:
    """Everything reserved before kho_memory_init, in the kernel's order."""
    boot = Boot(machine, memblock, log, loaded)
    boot.early_reserve_memory()
    boot.reserve_initrd()
    # init_mem_mapping maps all RAM (its few page tables come from the image's brk) and
    # memblock may then allocate anywhere: memblock_set_current_limit(get_max_mapped()).
    memblock.current_limit = memblock.end_of_dram()
    boot.alloc_node_data()
    if boot.x86:  # setup_arch: after initmem_init, before paging_init
        boot.reserve_crashkernel(params.cmdline)
    boot.sparse_init()
    if not boot.x86:  # arm64 bootmem_init: after sparse_init
        boot.reserve_crashkernel(params.cmdline)
    boot.setup_per_cpu_areas()
    boot.reserve_mem(params.reserve_mem, kho_in)
    boot.setup_log_buf()
    boot.vfs_caches_init_early()
    boot.swiotlb_init()
    return boot.reservations
