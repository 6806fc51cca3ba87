"""lib/test_kho.c's port (khofs.producers.lib_test_kho): csum_partial against literal models
of each architecture's loop, what it saves at boot and finalize, and its restore after kexec."""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Callable

import libfdt
import pytest

from khofs.engine.kernel import Kernel
from khofs.engine.machine import X86_64, KiB, MiB, arm64
from khofs.machines.presets import MACHINES
from khofs.producers.lib_test_kho import KHO_TEST_MAGIC, KhoTest, csum_partial, default_max_mem
from khofs.producers.spec import ProducerSpec
from tests.helpers import (
    SUB,
    boot_kernel,
    boot_lines,
    boot_system,
    children,
    drivers_of,
    fdt_at,
    kexec_next,
    read_blob,
)
from tests.oracle import finished


def kho_test_of(k: Kernel) -> KhoTest:
    found = drivers_of(k, KhoTest)
    assert len(found) == 1
    return found[0]


# --- csum_partial against literal models of the kernel's loops --------------------------

M64 = (1 << 64) - 1


def adc(a: int, b: int, cf: int) -> tuple[int, int]:
    """One add-with-carry of 64-bit registers: (result, carry flag)."""
    total = a + b + cf
    return total & M64, total >> 64


def x86_csum_model(data: bytes, wsum: int) -> int:
    """arch/x86/lib/csum-partial_64.c, instruction by instruction, for a multiple of 64
    bytes: per 64-byte block an addq/adcq chain into res and another into tmp_accum, each
    chain's last carry added to tmp_carries; then the three combined and folded."""
    words = struct.unpack(f"<{len(data) // 8}Q", data)
    res, accum, carries = wsum, 0, 0
    for i in range(0, len(words), 8):
        cf = 0
        for w in words[i:i + 4]:
            res, cf = adc(res, w, cf)
        carries += cf  # adcl $0,%k[tmp_carries]
        cf = 0
        for w in words[i + 4:i + 8]:
            accum, cf = adc(accum, w, cf)
        carries += cf
    res, cf = adc(res, accum, 0)
    res, cf = adc(res, carries, cf)
    res, cf = adc(res, 0, cf)
    assert cf == 0
    rot = ((res >> 32) | (res << 32)) & M64  # csum_finalize_sum
    return ((res + rot) & M64) >> 32


def arm64_csum_model(data: bytes, wsum: int) -> int:
    """lib/checksum.c csum_partial around arch/arm64/lib/csum.c do_csum for an aligned
    buffer: its accumulate() word by word, the two folds, then the old sum added with one
    end-around carry."""
    def accumulate(s: int, d: int) -> int:
        t = s + d
        return (t + (t >> 64)) & M64

    sum64 = 0
    for (w,) in struct.iter_unpack("<Q", data):
        sum64 = accumulate(sum64, w)
    sum64 = (sum64 + (((sum64 >> 32) | (sum64 << 32)) & M64)) & M64
    s32 = sum64 >> 32
    s32 = (s32 + (((s32 >> 16) | (s32 << 16)) & 0xFFFFFFFF)) & 0xFFFFFFFF
    result = (s32 >> 16) + wsum
    if result > 0xFFFFFFFF:
        result = (result & 0xFFFFFFFF) + 1
    return result


def csum_cases() -> list[tuple[bytes, int]]:
    rng = random.Random(7)
    cases = [(bytes(4096), 0), (bytes(4096), 0x1234), (b"\xff" * 4096, 0),
             (b"\xff" * 8192, 0xFFFFFFFF), (rng.randbytes(4096), 0xFFFFFFFF)]
    cases += [(rng.randbytes(4096 << rng.randrange(3)), rng.getrandbits(32)) for _ in range(20)]
    return cases


def test_x86_csum_partial_matches_the_adc_loop() -> None:
    for data, wsum in csum_cases():
        assert csum_partial(X86_64, data, wsum) == x86_csum_model(data, wsum)


def test_arm64_csum_partial_matches_do_csum_and_the_generic_fold() -> None:
    for data, wsum in csum_cases():
        assert csum_partial(arm64(4 * KiB), data, wsum) == arm64_csum_model(data, wsum)


def test_csum_of_a_known_page() -> None:
    """One word in a zero page: x86 folds its halves to 32 bits, arm64 all to 16 bits."""
    page = struct.pack("<Q", 0x0001_0002_0003_0004) + bytes(4088)
    assert csum_partial(X86_64, page, 0) == 0x0001_0002 + 0x0003_0004
    assert csum_partial(arm64(4 * KiB), page, 0) == 0x1 + 0x2 + 0x3 + 0x4


def test_max_page_order_and_max_mem_per_arch() -> None:
    assert (X86_64.max_page_order, default_max_mem(X86_64)) == (10, 8 * MiB)
    assert default_max_mem(arm64(4 * KiB)) == 8 * MiB
    assert arm64(16 * KiB).max_page_order == 11 and arm64(64 * KiB).max_page_order == 13
    assert default_max_mem(arm64(16 * KiB)) == 64 * MiB


# --- lib/test_kho.c: saving ----------------------------------------------------------


def kho_test_oracle(t: KhoTest) -> bytes:
    """The sub-FDT as kho_test_prepare_fdt builds it, by dtc's libfdt."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property("compatible", b"kho-test-v1\0")
    sw.property("magic", struct.pack("<I", KHO_TEST_MAGIC))
    sw.begin_node("data")
    sw.property("nr_folios", struct.pack("<I", len(t.folios)))
    sw.property("folios_info", b"".join(struct.pack("<Q", p | o) for p, o in t.folios))
    sw.property("csum", struct.pack("<I", t.csum))
    sw.end_node()
    sw.end_node()
    return finished(sw)


def test_kho_test_sub_fdt_is_libfdts() -> None:
    k = boot_kernel(drivers=[KhoTest])
    t = kho_test_of(k)
    assert t.folios and sum(4096 << o for _, o in t.folios) == 8 * MiB
    assert all(o <= 10 for _, o in t.folios)
    assert fdt_at(k, t.fdt_phys) == kho_test_oracle(t)
    # folio_alloc(get_order(nr_folios * 8 + PAGE_SIZE)): an order-1 folio for a few folios
    assert t.fdt_order == 1 and t.fdt_phys % 8192 == 0


def test_kho_test_checksum_is_the_folios_checksum() -> None:
    k = boot_kernel(drivers=[KhoTest])
    t = kho_test_of(k)
    csum = 0
    for phys, order in t.folios:
        csum = x86_csum_model(k.mem.read(phys, 4096 << order), csum)
    assert t.csum == csum


def test_kho_test_is_deterministic_per_seed() -> None:
    a, b = kho_test_of(boot_kernel(drivers=[KhoTest])), kho_test_of(boot_kernel(drivers=[KhoTest]))
    assert (a.folios, a.csum) == (b.folios, b.csum)
    c = kho_test_of(boot_kernel(drivers=[KhoTest], seed=1))
    assert c.csum != a.csum


def test_kho_test_preserves_data_at_init_and_its_fdt_at_finalize() -> None:
    k = boot_kernel(drivers=[KhoTest])
    t = kho_test_of(k)
    assert sorted(k.kho.track.preserved_blocks()) == sorted(t.folios)
    assert k.kho.finalize_set(1) == 0
    assert (t.fdt_phys, t.fdt_order) in k.kho.track.preserved_blocks()
    assert read_blob(k, "/kho/out/sub_fdts/kho_test") == fdt_at(k, t.fdt_phys)
    root = libfdt.Fdt(read_blob(k, "/kho/out/fdt"))
    node = root.path_offset("/kho_test")
    assert root.getprop(node, "fdt") == struct.pack("<Q", t.fdt_phys)


def test_kho_test_max_mem_parameter() -> None:
    t = kho_test_of(boot_kernel(drivers=[lambda: KhoTest(max_mem=3 * 4096 + 1)]))
    assert sum(4096 << o for _, o in t.folios) == 4 * 4096  # PAGE_ALIGN: 4 pages
    t = kho_test_of(boot_kernel(drivers=[lambda: KhoTest(max_mem=0)]))
    assert t.folios == [] and t.csum == 0
    with pytest.raises(ValueError):
        KhoTest(max_mem=-1)


def test_kho_test_failure_at_finalize_is_a_bare_notify_bad() -> None:
    """A sub-tree named kho_test already there: EEXIST inside, EPERM outside."""
    k = boot_kernel(drivers=[ProducerSpec("kho_test", SUB), KhoTest])
    assert k.kho.finalize_set(1) == -errno.EPERM
    assert not k.kho.finalized


# --- lib/test_kho.c: restoring --------------------------------------------------------


def test_kho_test_restores_after_kexec_and_saves_again_one_boot_later() -> None:
    s = boot_system(drivers=[KhoTest])
    first = kho_test_of(s.kernel)
    second = kho_test_of(kexec_next(s))
    assert "test_kho: KHO restore succeeded" in boot_lines(s, 2)
    assert second.restored and second.folios == [] and not second.fdt_phys
    # 6.17 does not save anew after a restore: nothing of kho_test goes to boot 3
    assert s.kernel.kho.finalize_set(1) == 0
    assert children(s.kernel, "/kho/out/sub_fdts") == []
    third = kho_test_of(kexec_next(s, finalize=False))
    assert third.restored is None and third.folios and third.folios != first.folios
    assert all("KHO restore" not in line for line in boot_lines(s, 3))


def test_kho_test_restores_after_every_second_kexec() -> None:
    """lib/test_kho.c (6.17) restores and does not save again: the kexec after a restore
    carries no kho_test, and the boot after it saves afresh."""
    s = boot_system(drivers=[ProducerSpec("kho_test", b"", builtin="kho_test")])
    for _ in range(3):
        kexec_next(s)
    lines = [(b, r.text) for b, r in s.records if r.text.startswith("test_kho: ")]
    assert lines == [(2, "test_kho: KHO restore succeeded"),
                     (4, "test_kho: KHO restore succeeded")]


def test_restored_folios_go_back_to_the_page_allocator() -> None:
    """folio_put after the checksum: the restored folios are free memory again, while the
    sub-FDT's folio stays reserved (6.17 never restores it)."""
    s = boot_system(drivers=[KhoTest])
    saved = kho_test_of(s.kernel)
    k = kexec_next(s)
    assert k.kho_in is not None
    free = k.pages._free

    def is_free(phys: int, order: int) -> bool:
        return any(a <= phys and phys + (4096 << order) <= b for a, b in free)

    assert all(is_free(p, o) and p not in k.kho_in.orders for p, o in saved.folios)
    assert not is_free(saved.fdt_phys, saved.fdt_order)
    assert k.kho_in.orders.get(saved.fdt_phys) == saved.fdt_order


def test_kho_test_restore_fails_silently_after_an_abort() -> None:
    """6.16/6.17: an abort forgets every preservation, and kho_test preserved its data at
    init only, so after finalize, abort, finalize and kexec its folios are gone: the
    restore fails, and 6.17 logs nothing about it."""
    s = boot_system(drivers=[KhoTest])
    k = s.kernel
    assert k.kho.finalize_set(1) == 0 and k.kho.finalize_set(0) == 0
    k2 = kexec_next(s)
    assert kho_test_of(k2).restored is False
    assert all("KHO restore" not in line for line in boot_lines(s, 2))
    assert "khofs: producer kho_test: init failed: -22" in boot_lines(s, 2)


def test_kho_test_restore_checks_magic_from_the_edited_blob() -> None:
    s = boot_system(drivers=[KhoTest])
    k = s.kernel
    assert k.kho.finalize_set(1) == 0
    t = kho_test_of(k)
    blob = fdt_at(k, t.fdt_phys)
    at = blob.index(struct.pack("<I", KHO_TEST_MAGIC))
    k.mem.write(t.fdt_phys + at, struct.pack("<I", KHO_TEST_MAGIC + 1))
    assert kho_test_of(kexec_next(s, finalize=False)).restored is False


def test_kho_test_on_arm64_restores() -> None:
    s = boot_system(MACHINES["arm64-virt"], "kho=on", [KhoTest])
    t = kho_test_of(s.kernel)
    assert t.csum == _csum_of(s.kernel, t, arm64_csum_model)
    kexec_next(s)
    assert "test_kho: KHO restore succeeded" in boot_lines(s, 2)


def _csum_of(k: Kernel, t: KhoTest, model: Callable[[bytes, int], int]) -> int:
    csum = 0
    for phys, order in t.folios:
        csum = model(k.mem.read(phys, k.mem.page_size << order), csum)
    return csum
