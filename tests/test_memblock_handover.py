"""mm/memblock.c's KHO users: the reserve_mem sub-tree it hands over (MemblockKho) and
reserve_mem_kho_revive, which takes a region over in the next kernel."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

import libfdt

from khofs.engine.kernel import Kernel
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE
from khofs.engine.machine import MiB
from khofs.engine.notifier import NOTIFY_BAD, NOTIFY_DONE
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk
from khofs.engine.reserve_mem import reserve_mem_kho_revive
from khofs.lib.libfdt import fdt_totalsize
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.memblock import MemblockKho, build_memblock_fdt
from tests.helpers import (
    boot_kernel,
    boot_lines,
    boot_system,
    drivers_of,
    fdt_at,
    kexec_next,
    read_blob,
)
from tests.oracle import finished

# --- mm/memblock.c ---------------------------------------------------------------------

REGIONS = [("trace", 0x47FC00000, 4 * MiB), ("dump@1", 0x47F000000, 0x3000)]


def memblock_oracle(regions: list[tuple[str, int, int]], root_compat: str = "memblock-v1"
                    ) -> bytes:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", root_compat)
    for name, start, size in regions:
        sw.begin_node(name)
        sw.property_string("compatible", "reserve-mem-v1")
        sw.property("start", struct.pack("<Q", start))
        sw.property("size", struct.pack("<Q", size))
        sw.end_node()
    sw.end_node()
    return finished(sw)


def test_memblock_sub_fdt_is_libfdts() -> None:
    page = bytearray(4096)
    assert build_memblock_fdt(page, REGIONS) == 0
    assert bytes(page[:fdt_totalsize(page)]) == memblock_oracle(REGIONS)


def test_memblock_producer_with_reserve_mem() -> None:
    k = boot_kernel(cmdline="kho=on reserve_mem=4M:2M:trace")
    (m,) = drivers_of(k, MemblockKho)  # reserve_mem_init, a late initcall after kho_init
    assert m.regions == k.reserved_mem and len(m.regions) == 1
    assert fdt_at(k, m.fdt_phys) == memblock_oracle(m.regions)
    assert k.kho.finalize_set(1) == 0
    assert read_blob(k, "/kho/out/sub_fdts/memblock") == fdt_at(k, m.fdt_phys)
    _, start, size = m.regions[0]
    blocks = k.kho.track.preserved_blocks()
    assert (m.fdt_phys, 0) in blocks and (start, 10) in blocks and size == 4 * MiB


def test_memblock_producer_only_when_kho_and_regions(kernel: Kernel) -> None:
    (m,) = drivers_of(kernel, MemblockKho)
    assert not m.fdt_phys and kernel.kho.chain_head.call_chain(KEXEC_KHO_FINALIZE, None) == 0
    off = boot_kernel(cmdline="reserve_mem=4M:2M:trace")
    m = MemblockKho()
    free = off.pages.free_bytes()
    assert m.init(off) == 0 and not m.fdt_phys and off.pages.free_bytes() == free


def test_memblock_finalize_ors_every_error_and_still_adds_the_sub_tree(kernel: Kernel) -> None:
    """A region that is not page aligned: kho_preserve_phys says EINVAL, the others are
    still called, so the sub-tree is added and (6.16) stays after the failed finalize."""
    m = MemblockKho()
    m.regions, m.kho = [("odd", 0x100000800, 0x1000)], kernel.kho
    m.fdt_phys = kernel.pages.alloc_pages(0)
    assert build_memblock_fdt(kernel.mem.page_view(m.fdt_phys), m.regions) == 0
    assert kernel.kho.register_notifier(m) == 0
    assert kernel.kho.finalize_set(1) == -errno.EINVAL
    assert read_blob(kernel, "/kho/out/sub_fdts/memblock") == fdt_at(kernel, m.fdt_phys)
    assert kernel.kho.finalize_set(1) == -errno.EEXIST | -errno.EINVAL


def test_reserve_mem_region_is_revived_at_the_same_address() -> None:
    s = boot_system(cmdline="kho=on reserve_mem=4M:2M:trace")
    (before,) = s.kernel.reserved_mem
    kexec_next(s)
    k = s.kernel
    assert k.reserved_mem == [before]
    texts = boot_lines(s, 2)
    assert "Revived memory reservation 'trace' from KHO" in texts
    assert k.debugfs.lookup("/kho/in/sub_fdts/memblock") is not None
    name, start, size = before
    assert any(r.base <= start and start + size <= r.end for r in k.memblock.reserved.regions)


def test_memblock_and_kho_test_notifier_actions() -> None:
    for nb in (MemblockKho(), KhoTest()):
        assert nb.notifier_call(KEXEC_KHO_ABORT, None) == NOTIFY_DONE
        assert nb.notifier_call(7, None) == NOTIFY_BAD


# --- reserve_mem_kho_revive ------------------------------------------------------------


@dataclass
class FakeKhoIn:
    """struct kho_in with one sub-tree "memblock" (or an error for it)."""

    mem: PhysMem = field(default_factory=PhysMem)
    err: int = 0
    phys: int = 0x10000

    def retrieve_subtree(self, name: str) -> tuple[int, int]:
        if name != "memblock":
            return -errno.ENOENT, 0
        return self.err, 0 if self.err else self.phys


def revive_env(blob: bytes, err: int = 0) -> tuple[FakeKhoIn, Printk]:
    kho_in = FakeKhoIn(err=err)
    kho_in.mem.write(kho_in.phys, blob)
    return kho_in, Printk()


def test_revive_takes_over_a_matching_region() -> None:
    kho_in, log = revive_env(memblock_oracle(REGIONS))
    assert reserve_mem_kho_revive(kho_in, "trace", 4 * MiB, 2 * MiB, log=log) == 0x47FC00000
    assert log.texts() == ["Revived memory reservation 'trace' from KHO"]


def test_revive_name_matches_as_fdt_subnode_offset() -> None:
    kho_in, log = revive_env(memblock_oracle(REGIONS))
    assert reserve_mem_kho_revive(kho_in, "dump", 0x3000, 64, log=log) == 0x47F000000
    assert reserve_mem_kho_revive(kho_in, "dump@2", 0x3000, 64, log=log) is None
    assert reserve_mem_kho_revive(kho_in, "trac", 4 * MiB, 64, log=log) is None
    assert log.texts()[1:] == ["FDT 'memblock' has no child 'dump@2': -1",
                               "FDT 'memblock' has no child 'trac': -1"]


def test_revive_refuses_wrong_size_then_alignment_order() -> None:
    kho_in, log = revive_env(memblock_oracle(REGIONS))
    assert reserve_mem_kho_revive(kho_in, "trace", 2 * MiB, 2 * MiB, log=log) is None
    assert reserve_mem_kho_revive(kho_in, "trace", 4 * MiB, 8 * MiB, log=log) is None
    # both wrong: the alignment is checked first
    assert reserve_mem_kho_revive(kho_in, "trace", 1 * MiB, 8 * MiB, log=log) is None
    assert log.texts() == [
        "KHO reserve-mem 'trace' has wrong size (0x400000 != 0x200000)",
        "KHO reserve-mem 'trace' has wrong alignment (0x800000, 0x47fc00000)",
        "KHO reserve-mem 'trace' has wrong alignment (0x800000, 0x47fc00000)",
    ]


def test_revive_alignment_is_a_mask_test() -> None:
    """start & (align - 1): an alignment that is not a power of two tests odd bits."""
    kho_in, log = revive_env(memblock_oracle([("r", 0x47FC00000, 0x1000)]))
    assert reserve_mem_kho_revive(kho_in, "r", 0x1000, 0x500000, log=log) is None
    # 0x47fc00000 is no multiple of 0x1800, but has no bit of 0x17ff set
    assert reserve_mem_kho_revive(kho_in, "r", 0x1000, 0x1800, log=log) == 0x47FC00000
    assert log.texts() == ["KHO reserve-mem 'r' has wrong alignment (0x500000, 0x47fc00000)",
                           "Revived memory reservation 'r' from KHO"]


def test_revive_checks_compatibles_and_properties() -> None:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", "memblock-v1")
    for name, compat, start in (("other", "reserve-mem-v2", 8), ("bare", None, 8),
                                ("short", "reserve-mem-v1", 4)):
        sw.begin_node(name)
        if compat:
            sw.property_string("compatible", compat)
        sw.property("start", bytes(start))
        sw.property("size", struct.pack("<Q", 0x1000))
        sw.end_node()
    sw.end_node()
    kho_in, log = revive_env(finished(sw))
    for name in ("other", "bare", "short"):
        assert reserve_mem_kho_revive(kho_in, name, 0x1000, 64, log=log) is None
    assert log.texts() == ["Node 'other' is incompatible with 'reserve-mem-v1': 1",
                           "Node 'bare' is incompatible with 'reserve-mem-v1': -1"]


def test_revive_incompatible_root_is_reported_for_every_region() -> None:
    kho_in, log = revive_env(memblock_oracle(REGIONS, root_compat="memblock-v2"))
    for name in ("trace", "dump"):
        assert reserve_mem_kho_revive(kho_in, name, 4 * MiB, 64, log=log) is None
    assert log.texts() == ["FDT 'memblock' is incompatible with 'memblock-v1': 1"] * 2


def test_revive_without_a_usable_sub_tree() -> None:
    log = Printk()
    assert reserve_mem_kho_revive(None, "trace", 4 * MiB, 64, log=log) is None
    kho_in, _ = revive_env(b"", err=-errno.ENOENT)
    assert reserve_mem_kho_revive(kho_in, "trace", 4 * MiB, 64, log=log) is None
    assert log.texts() == []
    kho_in, _ = revive_env(b"", err=-errno.EINVAL)
    assert reserve_mem_kho_revive(kho_in, "trace", 4 * MiB, 64, log=log) is None
    assert log.texts() == ["failed to retrieve FDT 'memblock' from KHO: -22"]
