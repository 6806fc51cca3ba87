"""The FDT test oracle: Debian's python3-libfdt (dtc's own libfdt), the kernel's layout."""

from __future__ import annotations

import struct

import libfdt


def finished(sw: libfdt.FdtSw) -> bytes:
    """The finished blob. as_fdt() runs fdt_finish() without growing the buffer first, so a
    tree that fills it exactly has no room for FDT_END: make room (the layout is the same).
    FdtSw's buffer goes on past totalsize."""
    sw.resize(len(sw._fdt) + sw.INC_SIZE)
    fdt = sw.as_fdt()
    return bytes(fdt.as_bytearray()[:fdt.totalsize()])


def kho_root(map_phys: int, subs: list[tuple[str, int]]) -> bytes:
    """What kho_finalize builds: compatible, the memory map's address, a node per
    sub-tree with its sub-FDT's address as a little-endian u64."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", "kho-v1")
    sw.property("preserved-memory-map", struct.pack("<Q", map_phys))
    for name, phys in subs:
        sw.begin_node(name)
        sw.property("fdt", struct.pack("<Q", phys))
        sw.end_node()
    sw.end_node()
    return finished(sw)
