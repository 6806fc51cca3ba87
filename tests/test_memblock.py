"""memblock, the boot reservations and the KHO scratch areas, without FUSE."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from khofs.engine.boot import boot_reservations
from khofs.engine.crash_reserve import CrashKernel, parse_crashkernel
from khofs.engine.kernel import Kernel
from khofs.engine.machine import X86_64, Arch, GiB, KiB, Machine, MiB, arm64
from khofs.engine.memblock import (
    MEMBLOCK_ALLOC_ANYWHERE,
    MEMBLOCK_RSRV_KERN,
    NUMA_NO_NODE,
    Memblock,
    round_up,
)
from khofs.engine.page_alloc import PageAllocator
from khofs.engine.params import BootParams, ScratchParams
from khofs.engine.printk import Printk
from khofs.engine.scratch import KhoScratch, kho_reserve_scratch
from khofs.machines.presets import MACHINES, contiguous_nodes, pc_nodes
from tests.helpers import boot_kernel

ANYWHERE = MEMBLOCK_ALLOC_ANYWHERE


def regions(mb: Memblock) -> list[tuple[int, int, int, int]]:
    return [(r.base, r.size, r.nid, r.flags) for r in mb.reserved.regions]


def test_reserve_merges_same_node_and_flags_only() -> None:
    mb = Memblock()
    mb.reserve(0x1000, 0x1000)
    mb.reserve(0x2000, 0x1000)
    mb.reserve(0x3000, 0x1000, 0, MEMBLOCK_RSRV_KERN)
    mb.reserve(0x1800, 0x2000, 0, MEMBLOCK_RSRV_KERN)  # only the uncovered part is added
    assert regions(mb) == [(0x1000, 0x2000, NUMA_NO_NODE, 0),
                           (0x3000, 0x1000, 0, MEMBLOCK_RSRV_KERN)]
    mb.phys_free(0x1800, 0x1000)
    assert regions(mb) == [(0x1000, 0x800, NUMA_NO_NODE, 0), (0x2800, 0x800, NUMA_NO_NODE, 0),
                           (0x3000, 0x1000, 0, MEMBLOCK_RSRV_KERN)]


def test_alloc_is_top_down_aligned_windowed_and_flagged() -> None:
    mb = Memblock()
    mb.add(0x100000, 0x10000000, 0)
    mb.add(0x100000000, 0x40000000, 1)
    a = mb.phys_alloc(0x3000, 0x1000)
    assert a == 0x140000000 - 0x3000
    b = mb.phys_alloc(0x1000, 0x200000)
    assert b == 0x140000000 - 0x200000
    c = mb.phys_alloc_range(0x1000, 0x1000, 0, 0xFFFFFFFF)
    assert c == 0x10100000 - 0x1000
    d = mb.alloc_range_nid(0x1000, 0x1000, 0, 0, 0, True)  # exact node 0, limit = current
    assert d == c - 0x1000
    assert mb.alloc_range_nid(0x20000000, 0x1000, 0, 0, 0, True) == 0  # too big for node 0
    e = mb.alloc_range_nid(0x20000000, 0x1000, 0, 0, 0, False)  # falls back to any node
    assert e and regions(mb)[-1][2] == NUMA_NO_NODE
    assert all(flags == MEMBLOCK_RSRV_KERN for *_, flags in regions(mb))
    assert mb.phys_alloc(0x1000, 0x1000) not in (a, b, c, d, e)


def test_reserved_kern_size_clips_at_limit_and_filters_nodes() -> None:
    mb = Memblock()
    mb.reserve(0x1000, 0x1000, 0, MEMBLOCK_RSRV_KERN)
    mb.reserve(0x10000, 0x10000, 1, MEMBLOCK_RSRV_KERN)
    mb.reserve(0x30000, 0x1000, NUMA_NO_NODE, MEMBLOCK_RSRV_KERN)
    mb.reserve(0x40000, 0x5000)  # not a kernel allocation
    assert mb.reserved_kern_size(ANYWHERE, NUMA_NO_NODE) == 0x12000
    assert mb.reserved_kern_size(0x18000, NUMA_NO_NODE) == 0x9000
    assert mb.reserved_kern_size(ANYWHERE, 1) == 0x10000
    assert mb.reserved_kern_size(ANYWHERE, 0) == 0x1000


# A boot with KHO off stops where kho_reserve_scratch would start: memblock holds the RAM and
# the boot reservations, nothing of KHO.
KHO_OFF = "kho=off"


def test_laptop_scratch_table(kernel: Kernel) -> None:
    assert kernel.scratch == [KhoScratch(0x6B400000, 0xCC00000),
                              KhoScratch(0x44AE00000, 0x23600000),
                              KhoScratch(0x42A800000, 0x20600000)]


def test_small_machine_has_an_empty_global_area() -> None:
    """Every boot allocation of a 1 GiB machine is below 4 GiB: the u64 subtraction in
    scratch_size_update wraps by less than a pageblock and round_up brings it to 0."""
    mb = boot_kernel(MACHINES["qemu-vmtest"], KHO_OFF).memblock
    k = mb.reserved_kern_size(ANYWHERE, NUMA_NO_NODE)
    assert k == mb.reserved_kern_size(0xFFFFFFFF, NUMA_NO_NODE)
    areas = kho_reserve_scratch(MACHINES["qemu-vmtest"], mb, ScratchParams())
    assert areas is not None and areas[1].size == 0
    assert areas[0].size == round_up(k * 2, 2 * MiB)


def test_failed_scratch_frees_everything_and_disables() -> None:
    """kho_scratch=1T,1T,1T on a 16 GiB machine: nothing is left reserved for KHO."""
    machine = MACHINES["laptop"]
    mb = boot_kernel(machine, KHO_OFF).memblock
    before = regions(mb)
    huge = ScratchParams(scale=0, lowmem=1 << 40, global_=1 << 40, pernode=1 << 40)
    assert kho_reserve_scratch(machine, mb, huge) is None
    assert regions(mb) == before
    small = ScratchParams(scale=0, lowmem=2 * MiB, global_=2 * MiB, pernode=1 << 40)
    assert kho_reserve_scratch(machine, mb, small) is None  # fails at the node, frees 2 areas
    assert regions(mb) == before


ARCHES = [X86_64, arm64(4 * KiB), arm64(16 * KiB), arm64(64 * KiB)]


def random_machine(node_gib: list[int], cpus: int, arch: Arch = X86_64) -> Machine:
    sizes = [g * GiB for g in node_gib]
    nodes = pc_nodes(sizes) if arch is X86_64 else contiguous_nodes(GiB, sizes)
    return Machine("random", "random", arch, cpus=cpus, nodes=nodes, kernel_size=38 * MiB,
                   initrd_size=32 * MiB)


@settings(max_examples=60, deadline=None)
@given(node_gib=st.lists(st.integers(3, 96), min_size=1, max_size=4),
       cpus=st.integers(1, 256), scale=st.integers(1, 400), arch=st.sampled_from(ARCHES))
def test_scratch_invariants(node_gib: list[int], cpus: int, scale: int, arch: Arch) -> None:
    """Either every area is placed by the rules, or (as when the global area, allocated
    top-down anywhere, takes a small last node's room) nothing stays reserved."""
    machine = random_machine(node_gib, cpus, arch)
    k = boot_kernel(machine, KHO_OFF)
    mb, reservations = k.memblock, k.reservations
    before = regions(mb)
    areas = kho_reserve_scratch(machine, mb, ScratchParams(scale=scale))
    if areas is None:
        assert regions(mb) == before
        return
    assert len(areas) == len(machine.nodes) + 2
    align = machine.arch.pageblock_size
    for k, area in enumerate(areas):
        assert area.addr % align == 0 and area.size % align == 0
        end = area.addr + area.size
        assert any(s <= area.addr and end <= e for n in machine.nodes for s, e in n.ranges)
        if k >= 2:
            node = machine.nodes[k - 2]
            assert any(s <= area.addr and end <= e for s, e in node.ranges)
        for j, other in enumerate(areas):
            if j != k and other.size and area.size:
                assert end <= other.addr or other.addr + other.size <= area.addr
    assert areas[0].addr + areas[0].size <= machine.low_limit
    for area in areas:
        for r in reservations:
            assert r.base + r.size <= area.addr or area.addr + area.size <= r.base


@settings(max_examples=30, deadline=None)
@given(node_gib=st.lists(st.integers(3, 64), min_size=1, max_size=3),
       cpus=st.integers(1, 128), scale=st.integers(1, 300), arch=st.sampled_from(ARCHES))
def test_scratch_sizes_follow_the_formula(node_gib: list[int], cpus: int, scale: int,
                                          arch: Arch) -> None:
    machine = random_machine(node_gib, cpus, arch)
    mb = Memblock()
    for node in machine.nodes:
        for start, end in node.ranges:
            mb.add(start, end - start, node.nid)
    boot_reservations(machine, mb, BootParams(), Printk())
    k_low = mb.reserved_kern_size(machine.low_limit, NUMA_NO_NODE)
    k_all = mb.reserved_kern_size(ANYWHERE, NUMA_NO_NODE)
    k_nodes = [mb.reserved_kern_size(ANYWHERE, n.nid) for n in machine.nodes]
    areas = kho_reserve_scratch(machine, mb, ScratchParams(scale=scale))
    assert areas is not None
    align = arch.pageblock_size
    lowmem = round_up(k_low * scale // 100, align)
    assert areas[0].size == lowmem
    assert areas[1].size == round_up((k_all * scale // 100 - lowmem) % (1 << 64), align)
    for area, k in zip(areas[2:], k_nodes, strict=True):
        # a node's size is computed after lowmem and global were allocated, from
        # reservations tagged with that node, which those two areas are not
        assert area.size == round_up(k * scale // 100, align)


def test_page_allocator_avoids_scratch_and_reservations() -> None:
    k = boot_kernel(MACHINES["qemu-vmtest"])
    mb, areas = k.memblock, k.scratch
    assert areas
    pages = PageAllocator(mb, areas, 4096)
    taken = [pages.alloc_pages(order) for order in (0, 3, 0, 9, 1)]
    for phys, order in zip(taken, (0, 3, 0, 9, 1), strict=True):
        size = 4096 << order
        assert phys and phys % size == 0
        for a in areas:
            assert phys + size <= a.addr or a.addr + a.size <= phys
        for r in mb.reserved.regions:
            assert phys + size <= r.base or r.end <= phys
    pages.free_pages(taken[3], 9)
    assert pages.alloc_pages(9) == taken[3]


@pytest.mark.parametrize("cmdline, ram, expected", [
    ("crashkernel=256M", 16 * GiB, CrashKernel(256 * MiB)),
    ("crashkernel=64M@0x20000000", 16 * GiB, CrashKernel(64 * MiB, 0x20000000)),
    ("crashkernel=512M-2G:64M,2G-:256M", 16 * GiB, CrashKernel(256 * MiB)),
    ("crashkernel=512M-2G:64M,2G-:256M", 1 * GiB, CrashKernel(64 * MiB)),
    ("crashkernel=512M-2G:64M", 16 * GiB, CrashKernel(0)),  # no range holds the RAM
    ("crashkernel=1G,high", 16 * GiB, CrashKernel(GiB, 0, 256 * MiB, True)),
    ("crashkernel=1G,high crashkernel=128M,low", 16 * GiB, CrashKernel(GiB, 0, 128 * MiB, True)),
    ("crashkernel=128M crashkernel=64M", 16 * GiB, CrashKernel(64 * MiB)),  # the last one
    ("crashkernel=256Q", 16 * GiB, None),
    ("crashkernel=64M@", 16 * GiB, None),
    ("quiet", 16 * GiB, None),
])
def test_parse_crashkernel(cmdline: str, ram: int, expected: CrashKernel | None) -> None:
    assert parse_crashkernel(cmdline, ram) == expected


def test_crashkernel_is_a_kernel_allocation_that_grows_lowmem_scratch() -> None:
    machine = MACHINES["laptop"]
    k = boot_kernel(machine, "kho=on crashkernel=256M")
    (r,) = [r for r in k.reservations if r.what == "crashkernel"]
    assert (r.base, r.size, r.kern) == (0x6C000000, 256 * MiB, True)
    assert r.base % (16 * MiB) == 0 and r.base + r.size <= 4 * GiB
    assert "crashkernel reserved: 0x000000006c000000 - 0x000000007c000000 (256 MB)" in \
        k.log.texts()
    plain = boot_kernel(machine, "kho=on")
    assert k.kern_totals.low == plain.kern_totals.low + 256 * MiB
    assert k.scratch[0].size == round_up(k.kern_totals.low * 2, 2 * MiB)


def test_crashkernel_high_takes_a_low_part_too() -> None:
    k = boot_kernel(MACHINES["laptop"], "kho=on crashkernel=1G,high")
    got = {r.what: (r.base, r.size) for r in k.reservations if r.what.startswith("crash")}
    assert got["crashkernel"][0] >= 4 * GiB and got["crashkernel"][1] == GiB
    assert got["crashkernel low"][0] + got["crashkernel low"][1] <= 4 * GiB
    assert got["crashkernel low"][1] == 256 * MiB
