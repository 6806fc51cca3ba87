"""The emulated hardware: architecture constants, NUMA nodes and their RAM, CPUs, and what the
boot loader hands the kernel (image and initrd sizes).

This is the one interface the rest of the engine reads the machine through; the boot code
(khofs/engine/boot.py) turns it into memblock regions and reservations. The machines users
name (presets, machine files, `host`) are built in khofs.machines.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

U32_MAX = 0xFFFFFFFF
SMP_CACHE_BYTES = 64  # L1_CACHE_BYTES on x86-64 and arm64


@dataclass(frozen=True)
class Arch:
    """What the kernel's numbers depend on, per architecture and page size."""

    name: str
    page_size: int
    pageblock_size: int  # pageblock_nr_pages << PAGE_SHIFT == CMA_MIN_ALIGNMENT_BYTES
    section_size: int  # 1 << SECTION_SIZE_BITS, the SPARSEMEM section
    max_physmem_bits: int  # MAX_PHYSMEM_BITS: sizes the mem_section root array
    pmd_size: int  # what one PMD entry maps: the vmemmap's and per-cpu atom's unit on x86
    kernel_image_is_kern: bool  # x86 reserves its image with memblock_reserve_kern
    struct_page_size: int = 64  # sizeof(struct page)

    @property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1

    @property
    def max_page_order(self) -> int:
        """MAX_PAGE_ORDER: 10 on x86-64; arm64's ARCH_FORCE_MAX_ORDER is 10, 11 or 13 for
        4K, 16K and 64K pages."""
        if self.name == "arm64":
            return {16 * KiB: 11, 64 * KiB: 13}.get(self.page_size, 10)
        return 10

    @property
    def vmemmap_uses_pmds(self) -> bool:
        """vmemmap_populate maps the memmap with PMD blocks from the sparse buffer (x86-64,
        arm64 with 4 KiB pages); otherwise with base pages (arm64 16K and 64K)."""
        return self.name == "x86_64" or self.page_size == 4 * KiB

    def low_limit(self, dram_start: int, dram_end: int) -> int:
        """ARCH_LOW_ADDRESS_LIMIT. x86-64: 4 GiB - 1. arm64: arm64_dma_phys_limit - 1,
        where zone_sizes_init caps the DMA zone at 4 GiB when RAM starts below it
        (max_zone_phys), else at the end of RAM (no firmware dma-ranges)."""
        if self.name == "x86_64":
            return U32_MAX
        limit = U32_MAX if dram_start < U32_MAX else dram_end - 1
        return min(limit, dram_end - 1)

    def kernel_base(self, dram_start: int) -> int:
        """Where the image lands without KASLR: x86-64 CONFIG_PHYSICAL_START (16 MiB);
        arm64, 2 MiB into RAM, as QEMU and the EFI stub place an Image."""
        return 16 * MiB if self.name == "x86_64" else dram_start + 2 * MiB

    def max_dma_address(self, dram_start: int) -> int:
        """__pa(MAX_DMA_ADDRESS): 16 MiB on x86-64; PAGE_OFFSET, the start of RAM, on arm64."""
        return 16 * MiB if self.name == "x86_64" else dram_start


X86_64 = Arch(name="x86_64", page_size=4 * KiB, pageblock_size=2 * MiB,
              section_size=128 * MiB, max_physmem_bits=46, pmd_size=2 * MiB,
              kernel_image_is_kern=True)


def arm64(page_size: int) -> Arch:
    """arm64 by page size: pageblock_order = min(HPAGE_PMD_ORDER, ARCH_FORCE_MAX_ORDER)
    gives 2 MiB, 32 MiB and 512 MiB pageblocks; SECTION_SIZE_BITS is 27, 27 and 29."""
    pmd = {4 * KiB: 2 * MiB, 16 * KiB: 32 * MiB, 64 * KiB: 512 * MiB}[page_size]
    section = 512 * MiB if page_size == 64 * KiB else 128 * MiB
    return Arch(name="arm64", page_size=page_size, pageblock_size=pmd, section_size=section,
                max_physmem_bits=48, pmd_size=pmd, kernel_image_is_kern=False)


def get_arch(name: str, page_size: int = 4 * KiB) -> Arch:
    """An architecture by name and page size; ValueError names what is not supported."""
    if name == "x86_64":
        if page_size != 4 * KiB:
            raise ValueError("x86_64 has 4K pages only")
        return X86_64
    if name == "arm64":
        if page_size not in (4 * KiB, 16 * KiB, 64 * KiB):
            raise ValueError("arm64 pages are 4K, 16K or 64K")
        return arm64(page_size)
    raise ValueError(f"unknown architecture {name!r} (x86_64 or arm64)")


@dataclass(frozen=True)
class Node:
    """One NUMA node: its RAM as [start, end) ranges, as the firmware map gives them."""

    nid: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(end - start for start, end in self.ranges)


@dataclass(frozen=True)
class Machine:
    name: str
    description: str
    arch: Arch
    cpus: int
    nodes: tuple[Node, ...]
    kernel_size: int  # _text to __end_of_kernel_reserve (code, data, bss and brk)
    initrd_size: int = 0
    cmdline: str | None = None  # the command line this machine boots with, if it says

    @property
    def memory_size(self) -> int:
        return sum(n.size for n in self.nodes)

    @property
    def dram_start(self) -> int:
        return min(start for n in self.nodes for start, _ in n.ranges)

    @property
    def dram_end(self) -> int:
        return max(end for n in self.nodes for _, end in n.ranges)

    @property
    def low_limit(self) -> int:
        return self.arch.low_limit(self.dram_start, self.dram_end)

    def cpus_on(self, nid: int) -> int:
        """CPUs are spread evenly over the nodes, the first nodes taking any remainder."""
        share, extra = divmod(self.cpus, len(self.nodes))
        index = [n.nid for n in self.nodes].index(nid)
        return share + (1 if index < extra else 0)
