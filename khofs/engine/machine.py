"""The emulated hardware: architecture constants, NUMA nodes and their RAM, CPUs, and what the
boot loader hands the kernel (image and initrd sizes).

This is the one interface the rest of the engine reads the machine through; the boot code
(khofs/engine/boot.py) turns it into memblock regions and reservations.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Arch:
    """What the kernel's numbers depend on, per architecture and page size."""

    name: str
    page_size: int
    pageblock_size: int  # pageblock_nr_pages << PAGE_SHIFT == CMA_MIN_ALIGNMENT_BYTES
    low_limit: int  # ARCH_LOW_ADDRESS_LIMIT
    kernel_base: int  # where the image lands (x86-64: CONFIG_PHYSICAL_START, no KASLR)
    section_size: int  # 1 << SECTION_SIZE_BITS, the SPARSEMEM section
    max_dma_address: int  # __pa(MAX_DMA_ADDRESS): the floor of memmap and per-cpu areas
    max_physmem_bits: int  # MAX_PHYSMEM_BITS: sizes the mem_section root array
    struct_page_size: int = 64  # sizeof(struct page)

    @property
    def page_shift(self) -> int:
        return self.page_size.bit_length() - 1


X86_64 = Arch(
    name="x86_64", page_size=4 * KiB, pageblock_size=2 * MiB, low_limit=0xFFFFFFFF,
    kernel_base=16 * MiB, section_size=128 * MiB, max_dma_address=16 * MiB,
    max_physmem_bits=46,
)


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

    @property
    def memory_size(self) -> int:
        return sum(n.size for n in self.nodes)

    def cpus_on(self, nid: int) -> int:
        """CPUs are spread evenly over the nodes, the first nodes taking any remainder."""
        share, extra = divmod(self.cpus, len(self.nodes))
        index = [n.nid for n in self.nodes].index(nid)
        return share + (1 if index < extra else 0)


# The x86 PC layout every preset shares: conventional memory below the EBDA, then RAM from
# 1 MiB up to the PCI hole, and the rest above 4 GiB (what an e820 map shows, page-trimmed).
LOW_RAM_TOP = 0x9F000
PCI_HOLE_START = 2 * GiB
HIGH_RAM_START = 4 * GiB


def pc_nodes(node_sizes: list[int], pci_hole_start: int = PCI_HOLE_START) -> tuple[Node, ...]:
    """Nodes of a PC: node 0 holds the low memory up to the PCI hole (the DIMMs' first
    bytes lost to the legacy hole at 640 KiB-1 MiB, as on hardware); the rest of node 0 and
    then each later node follow contiguously from 4 GiB."""
    nodes = []
    cursor = HIGH_RAM_START
    for nid, size in enumerate(node_sizes):
        ranges: list[tuple[int, int]] = []
        if nid == 0:
            low = min(size, pci_hole_start)
            ranges = [(0, LOW_RAM_TOP), (MiB, low)]
            size -= low
        if size > 0:
            ranges.append((cursor, cursor + size))
            cursor += size
        nodes.append(Node(nid, tuple(ranges)))
    return tuple(nodes)


MACHINES: dict[str, Machine] = {
    m.name: m for m in (
        Machine("laptop", "x86-64, 16 GiB, one NUMA node, 8 CPUs", X86_64, cpus=8,
                nodes=pc_nodes([16 * GiB]), kernel_size=38 * MiB, initrd_size=64 * MiB),
        # QEMU's pc machine with -m 1G: RAM below 1 GiB less the last 128 KiB the BIOS keeps.
        Machine("qemu-vmtest", "x86-64, 1 GiB, 2 CPUs: the machine of the kernel's KHO "
                "selftest (tools/testing/selftests/kho/vmtest.sh)", X86_64, cpus=2,
                nodes=(Node(0, ((0, LOW_RAM_TOP), (MiB, GiB - 128 * KiB))),),
                kernel_size=38 * MiB, initrd_size=4 * MiB),
        Machine("server-2s", "x86-64, two NUMA nodes of 192 GiB, 96 CPUs", X86_64, cpus=96,
                nodes=pc_nodes([192 * GiB, 192 * GiB]), kernel_size=38 * MiB,
                initrd_size=64 * MiB),
    )
}


def get_machine(name: str) -> Machine:
    """A preset by name; KeyError for an unknown one."""
    return MACHINES[name]
