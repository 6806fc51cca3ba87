"""kexec inside the engine: segment placement, the handover, the next kernel's view."""

from __future__ import annotations

import errno
import struct

import libfdt

from khofs.engine.kernel import Kernel
from khofs.engine.kexec import (
    KexecBuf,
    Segment,
    kexec_file_load,
    locate_mem_hole,
)
from khofs.engine.kexec_image import kernel_image_size
from khofs.engine.machine import MiB
from khofs.engine.memblock import Memblock
from khofs.engine.memtrack import split_blocks
from khofs.engine.system import System
from khofs.producers.spec import ProducerSpec
from tests.helpers import SUB, boot_lines, boot_system, decode_map, kexec_next, read_blob

KEPT = (0x100000000, 0x200000)


def test_bottom_up_and_top_down_skip_placed_segments() -> None:
    ranges = [(0x100000, 0x900000)]
    placed = [Segment("a", 0x200000, 0x100000)]
    up = KexecBuf("b", 0x100000, 0x100000, buf_min=0x100000)
    assert locate_mem_hole(up, ranges, [*placed, Segment("c", 0x100000, 0x1000)]) == 0x300000
    down = KexecBuf("d", 0x200000, 0x100000, top_down=True)
    assert locate_mem_hole(down, ranges, [Segment("e", 0x800000, 0x1000)]) == 0x600000
    assert locate_mem_hole(KexecBuf("f", 0x900000, 0x1000), ranges, []) is None


def test_load_fails_with_eaddrnotavail_when_nothing_fits() -> None:
    bufs = [KexecBuf("small", 0x1000, 0x1000), KexecBuf("big", 0x10000000, 0x1000)]
    err, placed = kexec_file_load(bufs, [(0x100000, 0x400000)], 4096)
    assert err == -errno.EADDRNOTAVAIL and [s.what for s in placed] == ["small"]


def test_segments_land_in_scratch_in_table_order(system: System) -> None:
    assert system.kexec_load() == (0, "")
    assert system.loaded is not None
    segs = system.loaded.handover.segments
    assert [x.what for x in segs] == ["KHO scratch table", "purgatory",
                                      "boot params and command line", "kernel"]
    lowmem = system.kernel.scratch[0]
    for seg in segs:  # everything fits in the first (lowmem) area
        assert lowmem.addr <= seg.mem and seg.end <= lowmem.addr + lowmem.size
    table = segs[0]  # 48 bytes, a page once placed: top-down, 64 KiB aligned
    assert (table.mem, table.memsz) == ((lowmem.addr + lowmem.size - 0x1000) // 0x10000
                                        * 0x10000, 0x1000)
    for a in segs:
        for b in segs:
            assert a is b or a.end <= b.mem or b.end <= a.mem


def test_image_too_big_for_scratch_changes_nothing(system: System) -> None:
    biggest = max(a.size for a in system.kernel.scratch)
    err, msg = system.kexec_load(image_size=biggest + MiB)
    assert (err, msg) == (-errno.EADDRNOTAVAIL,
                          "kexec_file_load failed: Cannot assign requested address")
    assert system.loaded is None and system.kernel.boot_number == 1
    assert system.kexec_execute() == (-errno.EINVAL, "Nothing has been loaded!")


def finalize_and_kexec(s: System) -> tuple[bytes, bytes]:
    k = s.kernel
    assert k.kho.finalize_set(1) == 0
    root, sub = read_blob(k, "/kho/out/fdt"), read_blob(k, "/kho/out/sub_fdts/alpha")
    kexec_next(s, finalize=False)
    return root, sub


def test_next_kernel_sees_the_handover_and_reserves_preserved_memory() -> None:
    s = boot_system(drivers=[ProducerSpec("alpha", SUB, preserve=(KEPT,))])
    scratch = s.kernel.scratch
    assert s.kernel.kho.finalize_set(1) == 0
    root, sub = read_blob(s.kernel, "/kho/out/fdt"), read_blob(s.kernel, "/kho/out/sub_fdts/alpha")
    # The chunk list is plain kmalloc memory (6.16 does not preserve it): read it now, as the
    # next kernel does before it lets anything else use that memory.
    first = struct.unpack("<Q", libfdt.Fdt(root).getprop(0, "preserved-memory-map"))[0]
    blocks = decode_map(s.kernel, first)
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    k = s.kernel
    assert k.boot_number == 2 and k.kho_in is not None
    assert read_blob(k, "/kho/in/fdt") == root
    assert read_blob(k, "/kho/in/sub_fdts/alpha") == sub
    assert k.scratch == scratch  # kho_scratch is the old table
    expected = [(p << 12, o) for p, o in split_blocks(KEPT[0] >> 12, sum(KEPT) >> 12)]
    assert set(expected) <= set(blocks)
    for phys, order in blocks:  # every preserved block is reserved in the new memblock
        size = 4096 << order
        assert any(r.base <= phys and phys + size <= r.end for r in k.memblock.reserved.regions)
        assert k.kho_in.restore_folio(phys) == order
    assert sorted(k.debugfs.lookup("/kho/out").children) == ["finalize", "scratch_len",
                                                             "scratch_phys", "sub_fdts"]


def test_unpreserved_memory_is_scrubbed_preserved_memory_kept() -> None:
    s = boot_system(drivers=[ProducerSpec("alpha", SUB, preserve=(KEPT,))])
    s.mem.write(KEPT[0], b"kept")
    lost = 0x110000000
    s.mem.write(lost, b"lost")
    finalize_and_kexec(s)
    assert s.mem.read(KEPT[0], 4) == b"kept"
    assert s.mem.read(lost, 4) != b"lost"


def test_three_chained_kexecs() -> None:
    s = boot_system(drivers=[ProducerSpec("alpha", SUB)])
    for boot in (2, 3, 4):
        root, sub = finalize_and_kexec(s)
        assert s.kernel.boot_number == boot
        assert read_blob(s.kernel, "/kho/in/fdt") == root
        assert read_blob(s.kernel, "/kho/in/sub_fdts/alpha") == sub == SUB
    found = [b for b, r in s.records if r.text == "KHO: found kexec handover data. Will skip "
             "init for some devices"]
    assert found == [2, 3, 4]


def test_kexec_without_finalize_hands_over_an_empty_page(system: System) -> None:
    fdt_phys = system.kernel.kho.ser.fdt_phys if system.kernel.kho.ser else 0
    assert system.kexec_load() == (0, "") and system.kexec_execute() == (0, "")
    texts = boot_lines(system, 2)
    assert f"KHO: setup: handover FDT (0x{fdt_phys:x}) is invalid: -9" in texts
    assert "KHO: disabling KHO revival: -22" in texts
    assert system.kernel.kho_in is None and system.kernel.debugfs.lookup("/kho/in") is None
    assert system.kernel.kho_enabled  # a cold-style boot: fresh scratch areas


def test_kexec_after_abort_revives_the_stale_tree() -> None:
    """6.16 hands over the root FDT page whatever its state: after finalize and abort it
    still holds the old tree, so the next kernel takes it (with a freed memory map)."""
    s = boot_system(drivers=[ProducerSpec("alpha", SUB)])
    assert s.kernel.kho.finalize_set(1) == 0 and s.kernel.kho.finalize_set(0) == 0
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    assert s.kernel.kho_in is not None
    assert s.kernel.debugfs.lookup("/kho/in/sub_fdts/alpha") is not None


def test_incompatible_root_is_refused(system: System) -> None:
    k = system.kernel
    assert k.kho.ser is not None
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", "kho-v2")
    sw.end_node()
    blob = bytes(sw.as_fdt().as_bytearray())
    system.mem.write(k.kho.ser.fdt_phys, blob[:struct.unpack(">I", blob[4:8])[0]])
    assert system.kexec_load() == (0, "") and system.kexec_execute() == (0, "")
    texts = boot_lines(system, 2)
    assert any(t.endswith("is incompatible with 'kho-v1': 1") for t in texts)
    assert "KHO: disabling KHO revival: -22" in texts


def test_kho_off_in_the_next_kernel_still_reserves_preserved_memory() -> None:
    s = boot_system(drivers=[ProducerSpec("alpha", SUB, preserve=(KEPT,))])
    assert s.kernel.kho.finalize_set(1) == 0
    assert s.kexec_load(cmdline="quiet") == (0, "") and s.kexec_execute() == (0, "")
    k = s.kernel
    assert not k.kho_enabled and k.debugfs.lookup("/kho") is None
    assert any(r.base <= KEPT[0] < r.end for r in k.memblock.reserved.regions)


def test_next_kernel_allocates_boot_memory_only_in_scratch() -> None:
    s = boot_system(drivers=[ProducerSpec("alpha", SUB)])
    finalize_and_kexec(s)
    k = s.kernel
    areas = [(a.addr, a.addr + a.size) for a in k.scratch]
    for r in k.reservations:
        if r.kern and r.size:
            assert any(lo <= r.base and r.base + r.size <= hi for lo, hi in areas), r


def test_memblock_kho_scratch_only_restricts_allocations() -> None:
    mb = Memblock()
    mb.add(0x100000, 0x10000000)
    mb.mark_kho_scratch(0x2000000, 0x100000)
    mb.kho_scratch_only = True
    assert mb.phys_alloc(0x1000, 0x1000) == 0x20ff000
    assert mb.phys_alloc(0x200000, 0x1000) == 0


def test_cold_kernel_has_no_kho_in(kernel: Kernel) -> None:
    assert kernel.kho_in is None and kernel.debugfs.lookup("/kho/in") is None


def test_a_forgotten_page_is_found_corrupted_after_kexec() -> None:
    forgot = (0x110000000, 0x1000)
    s = boot_system(drivers=[
        ProducerSpec("alpha", SUB, preserve=(KEPT,), fill=True, forget=(forgot,)),
        ProducerSpec("beta", SUB, preserve=((0x120000000, 0x4000),), fill=True)])
    finalize_and_kexec(s)
    texts = boot_lines(s, 2)
    assert "khofs: producer beta: preserved memory intact" in texts
    assert any(t.startswith("khofs: producer alpha: preserved memory corrupted at 0x1100000")
               for t in texts)


def test_kernel_image_size() -> None:
    """How `khofs kexec --image` sizes the kernel segment, as the kexec image loaders do:
    from the file's first bytes and its size."""
    def image(size: int, patches: dict[int, bytes]) -> int:
        data = bytearray(min(size, 0x264))
        for off, raw in patches.items():
            data[off:off + len(raw)] = raw
        return kernel_image_size(bytes(data), size)

    init = (64 << 20).to_bytes(4, "little")
    assert image(0x1000, {0x202: b"HdrS", 0x260: init}) == 64 << 20
    small = (0x800).to_bytes(4, "little")
    assert image(0x1000, {0x202: b"HdrS", 0x260: small}) == 0x1000
    arm = (48 << 20).to_bytes(8, "little")
    assert image(0x1000, {56: b"ARM\x64", 16: arm}) == 48 << 20
    assert image(0x1000, {56: b"ARM\x64"}) == 0x1000
    assert image(12345, {}) == 12345
    assert image(0x100, {}) == 0x100
