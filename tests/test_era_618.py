"""Profile 6.18: the 6.16 tree and finalize, PAGE_SIZE bitmaps, kho_preserve_pages, vmalloc
preservation (test_kho's folios_info), 'KHOP' stamps, and no handover unless finalized."""

from __future__ import annotations

import errno
import stat
import struct

import pytest

from khofs.engine.era import profile_of
from khofs.engine.kernel import Kernel
from khofs.engine.system import System
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.memblock import MemblockKho
from khofs.producers.spec import ProducerSpec
from khofs.producers.table import boot_table
from tests.era_formats import (
    PAGE,
    blocks_cover,
    chunk_list,
    decode_bitmaps,
    decode_kho_vmalloc,
    kho_test_oracle_vmalloc,
    mode,
    sequential_root,
    texts,
)
from tests.helpers import LAPTOP, children, drivers_of, read_blob

P618 = profile_of("6.18")
REGION = "reserve_mem=64M:4096:n1"


def boot(cmdline: str = f"kho=on {REGION}") -> Kernel:
    return Kernel(LAPTOP, cmdline, boot_table([KhoTest]), profile=P618)


def system(cmdline: str = f"kho=on {REGION}", profile: str = "6.18") -> System:
    return System(LAPTOP, cmdline, boot_table([KhoTest]), profile=profile_of(profile))


def kho_test(k: Kernel) -> KhoTest:
    (t,) = drivers_of(k, KhoTest)
    return t


def test_the_tree_is_6_16s() -> None:
    k = boot()
    assert children(k, "/kho/out") == ["finalize", "scratch_len", "scratch_phys", "sub_fdts"]
    assert mode(k, "/kho/out/finalize") == stat.S_IFREG | 0o600
    assert mode(k, "/kho/out/scratch_phys") == stat.S_IFREG | 0o400
    assert read_blob(k, "/kho/out/finalize") == b"0\n"
    assert children(k, "/kho/out/sub_fdts") == []
    assert k.kho.finalize_set(0) == -errno.ENOENT


def test_finalize_builds_the_root_fdt_sequentially_and_serialises_page_bitmaps() -> None:
    k = boot()
    t = kho_test(k)
    (mb,) = drivers_of(k, MemblockKho)
    assert k.kho.finalize_set(1) == 0
    assert k.kho.finalize_set(1) == -errno.EEXIST
    root = read_blob(k, "/kho/out/fdt")
    map_phys = k.kho.ser.preserved_mem_map[0]  # type: ignore[attr-defined]
    # notifier order: kho_test (device initcall) registered before memblock (late)
    assert root == sequential_root("kho-v1", map_phys, [("kho_test", t.fdt_phys),
                                                         ("memblock", mb.fdt_phys)])
    assert children(k, "/kho/out/sub_fdts") == ["kho_test", "memblock"]
    # every bitmap is a page of its own; decoded with 4096-byte bitmaps the map is exactly
    # what is preserved
    for _chunk, order, elms in chunk_list(k.mem, map_phys):
        for start, bitmap in elms:
            assert bitmap % PAGE == 0
            assert start % (32768 << (order + 12)) == 0
    found = decode_bitmaps(k.mem, map_phys, 4096)
    assert sorted(found) == sorted(k.kho.preserved_blocks())
    assert (k.kho.ser.fdt_phys, 0) in found  # type: ignore[attr-defined]


def test_kho_test_hands_its_folios_info_over_as_a_vmalloc_area() -> None:
    k = boot()
    t = kho_test(k)
    assert k.kho.finalize_set(1) == 0
    assert t.folios_info is not None
    desc = t.folios_info_phys
    assert read_blob(k, "/kho/out/sub_fdts/kho_test") == \
        kho_test_oracle_vmalloc(len(t.folios), desc, t.csum)
    chunks, pages, total, flags, order = decode_kho_vmalloc(k.mem, desc)
    nr = len(t.folios)
    assert (total, flags, order) == (-(-nr * 8 // PAGE), 1, 0)
    assert pages == t.folios_info.pages and len(chunks) == 1
    values = b"".join(k.mem.read(p, PAGE) for p in pages)[:nr * 8]
    assert [v for (v,) in struct.iter_unpack("<Q", values)] == [p | o for p, o in t.folios]
    preserved = k.kho.preserved_blocks()
    for phys in [*chunks, *pages, *(p for p, _ in t.folios)]:
        assert blocks_cover(preserved, phys)


def test_preserve_pages_takes_the_page_holding_the_start_and_truncates() -> None:
    k = boot(f"kho=on {REGION}")
    kho = k.kho
    assert kho.preserve_pages(0x100000800, 2) == 0  # pages 0x100000000 and 0x100001000
    assert (0x100000000, 1) in kho.preserved_blocks()
    # memblock's FINALIZE: an unaligned size loses its tail instead of failing (6.16: EINVAL)
    k = boot("kho=on reserve_mem=8193:4096:odd")
    (mb,) = drivers_of(k, MemblockKho)
    assert k.kho.finalize_set(1) == 0
    start = k.reserved_mem[0][1]
    assert (start, 1) in k.kho.preserved_blocks()
    assert not blocks_cover(k.kho.preserved_blocks(), start + 2 * PAGE)
    assert mb.fdt_phys
    k16 = Kernel(LAPTOP, "kho=on reserve_mem=8193:4096:odd", boot_table([]))
    assert k16.kho.finalize_set(1) == -errno.EINVAL  # kho_preserve_phys: unaligned


def test_preservation_is_busy_while_finalized_and_abort_forgets_everything() -> None:
    k = boot()
    t = kho_test(k)
    assert k.kho.finalize_set(1) == 0
    assert k.kho.preserve_pages(0x100000000, 1) == -errno.EBUSY
    assert k.kho.preserve_folio(0x100000000, 0) == -errno.EBUSY
    assert k.kho.finalize_set(0) == 0
    assert k.kho.preserved_blocks() == []
    assert k.kho.finalize_set(1) == 0
    after = k.kho.preserved_blocks()
    # kho_test's notifier preserves only its FDT folio again: its data is gone
    assert (t.fdt_phys, t.fdt_order) in after
    assert not any(blocks_cover(after, p) for p, _ in t.folios)


def test_kexec_within_6_18_restores_kho_test_and_revives_memblock() -> None:
    s = system()
    assert s.kernel.kho.finalize_set(1) == 0
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    k = s.kernel
    assert k.profile == P618
    log = texts(k)
    assert "KHO: found kexec handover data. Will skip init for some devices" in log
    assert "Revived memory reservation 'n1' from KHO" in log
    assert "test_kho: KHO restore succeeded" in log
    assert children(k, "/kho/in/sub_fdts") == ["kho_test", "memblock"]
    assert kho_test(k).restored


def test_an_unfinalized_6_18_hands_nothing_over() -> None:
    """kho_fill_kimage returns 0 unless finalized: no table segment, no setup_data; the next
    kernel boots cold (no 'found', no 'disabling'), with new scratch areas."""
    s = system()
    assert s.kexec_load() == (0, "")
    assert s.loaded is not None
    h = s.loaded.handover
    assert (h.fdt_phys, h.scratch_phys) == (0, 0)
    assert [x.what for x in h.segments][0] == "purgatory"
    assert s.kexec_execute() == (0, "")
    log = texts(s.kernel)
    assert not any("KHO: found" in x or "disabling" in x for x in log)
    assert "Revived memory reservation 'n1' from KHO" not in log
    assert s.kernel.debugfs.lookup("/kho/in") is None
    assert s.kernel.kho_enabled


def test_restore_needs_the_khop_stamp_and_works_once() -> None:
    s = system()
    assert s.kernel.kho.finalize_set(1) == 0
    root = s.kernel.kho.ser.fdt_phys  # type: ignore[attr-defined]
    s.kexec_load()
    s.kexec_execute()
    kho_in = s.kernel.kho_in
    assert kho_in is not None
    assert (root, 0) in kho_in.reserved
    # the root folio was restored at boot (kho_memory_init): a second restore fails
    assert kho_in.restore_folio(root) is None
    assert kho_in.restore_folio(s.kernel.scratch[0].addr) is None  # never stamped


def test_scratch_sizes_parse_strictly_from_6_18() -> None:
    k = boot("kho=on kho_scratch=0,512M,256M")
    assert "KHO: scratch areas: lowmem: 0MiB global: 512MiB pernode: 256MiB" in texts(k)
    k = boot("kho=on kho_scratch=1G,1G,1Gjunk")
    assert "Malformed early option 'kho_scratch'" in texts(k)
    k16 = Kernel(LAPTOP, "kho=on kho_scratch=0,512M,256M", boot_table([]))
    assert "Malformed early option 'kho_scratch'" in texts(k16)


def test_a_scratch_area_that_does_not_fit_is_said() -> None:
    k = boot("kho=on kho_scratch=1T,1G,1G")
    assert not k.kho_enabled
    assert "KHO: Failed to reserve scratch area, disabling kexec handover" in texts(k)
    k16 = Kernel(LAPTOP, "kho=on kho_scratch=1T,1G,1G", boot_table([]))
    assert not any("Failed to reserve" in x for x in texts(k16))


def test_a_6_18_producer_file_entry_runs_at_finalize() -> None:
    from khofs.producers.dts import compile_dts

    sub = compile_dts('/dts-v1/; / { compatible = "test-v1"; };')
    k = Kernel(LAPTOP, "kho=on", boot_table([ProducerSpec("alpha", sub,
                                                          ((0x100000000, 0x3000),))]),
               profile=P618)
    assert children(k, "/kho/out/sub_fdts") == []
    assert k.kho.finalize_set(1) == 0
    assert children(k, "/kho/out/sub_fdts") == ["alpha"]
    assert read_blob(k, "/kho/out/sub_fdts/alpha") == sub
    assert blocks_cover(k.kho.preserved_blocks(), 0x100002000)


def test_a_debug_build_refuses_to_preserve_scratch_memory() -> None:
    """CONFIG_KEXEC_HANDOVER_DEBUG (`--abi 6.18+debug`): kho_scratch_overlap makes
    preserving scratch memory EINVAL; a default build preserves it."""
    in_scratch = boot().scratch[0].addr
    debug = Kernel(LAPTOP, "kho=on", boot_table([]), profile=profile_of("6.18+debug"))
    assert debug.kho.preserve_folio(in_scratch, 0) == -errno.EINVAL
    assert debug.kho.preserve_pages(in_scratch - PAGE, 2) == -errno.EINVAL
    assert debug.kho.preserve_pages(in_scratch - PAGE, 1) == 0
    plain = Kernel(LAPTOP, "kho=on", boot_table([]), profile=P618)
    assert plain.kho.preserve_folio(in_scratch, 0) == 0
    for abi in ("6.19+debug", "7.1+debug"):
        k = Kernel(LAPTOP, "kho=on", boot_table([]), profile=profile_of(abi))
        assert k.kho.preserve_folio(k.scratch[1].addr, 0) == -errno.EINVAL
    with pytest.raises(ValueError, match="a 6.16 kernel has no CONFIG_KEXEC_HANDOVER_DEBUG"):
        profile_of("6.17.1+debug")
