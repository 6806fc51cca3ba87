"""The preset machines and the memory layouts machines are built from.

A PC's RAM as an e820 map shows it (below the EBDA, from 1 MiB to the PCI hole, from 4 GiB),
and QEMU's arm64 virt board (contiguous from 1 GiB); `host` and machine files use the same
layouts for nodes given by size.
"""

from __future__ import annotations

from khofs.engine.machine import X86_64, GiB, KiB, Machine, MiB, Node, arm64

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


def contiguous_nodes(start: int, node_sizes: list[int]) -> tuple[Node, ...]:
    """Nodes whose RAM follows one another from start, as on QEMU's arm64 virt board."""
    nodes = []
    for nid, size in enumerate(node_sizes):
        nodes.append(Node(nid, ((start, start + size),)))
        start += size
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
        *(Machine(f"arm64-virt{suffix}", f"arm64, QEMU virt, 4 GiB at 1 GiB, 4 CPUs, "
                  f"{pages // KiB} KiB pages", arm64(pages), cpus=4,
                  nodes=contiguous_nodes(GiB, [4 * GiB]), kernel_size=32 * MiB,
                  initrd_size=16 * MiB)
          for suffix, pages in (("", 4 * KiB), ("-16k", 16 * KiB), ("-64k", 64 * KiB))),
    )
}
