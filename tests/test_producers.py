"""The kernel's own KHO users (lib/test_kho.c, mm/memblock.c), plugins and the producers
file's builtin / fill / forget keys."""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libfdt
import pytest

from khofs.engine.driver import Driver
from khofs.engine.kernel import Kernel
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoSerialization
from khofs.engine.machine import X86_64, KiB, MiB, arm64
from khofs.engine.notifier import NOTIFY_BAD, NOTIFY_DONE, notifier_from_errno
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk
from khofs.engine.reserve_mem import reserve_mem_kho_revive
from khofs.engine.system import System
from khofs.errors import PluginError, ProducersFileError
from khofs.lib.libfdt import fdt_totalsize
from khofs.machines.presets import MACHINES
from khofs.producers.dts import compile_dts
from khofs.producers.fill import check_and_fill, fill_ranges, first_corrupted
from khofs.producers.lib_test_kho import KHO_TEST_MAGIC, KhoTest, csum_partial, default_max_mem
from khofs.producers.memblock import MemblockKho, build_memblock_fdt
from khofs.producers.plugin import ProducerAPI, load_plugin, make_fdt
from khofs.producers.producers_file import load_producers
from khofs.producers.spec import ProducerSpec
from tests.helpers import boot_kernel, boot_system, drivers_of
from tests.oracle import finished
from tests.test_kho import read_blob

COUNTER = Path(__file__).parent.parent / "examples" / "plugins" / "counter.py"
LAPTOP = MACHINES["laptop"]
SUB = compile_dts('/dts-v1/; / { compatible = "test-v1"; };')

Factory = Callable[[], Driver]


def boot(*producers: ProducerSpec | Factory, cmdline: str = "kho=on") -> Kernel:
    return boot_kernel(LAPTOP, cmdline, producers)


def kexec(s: System, finalize: bool = True) -> Kernel:
    if finalize:
        assert s.kernel.kho.finalize_set(1) == 0
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    return s.kernel


def lines(s: System, boot_number: int) -> list[str]:
    return [rec.text for n, rec in s.records if n == boot_number]


def blob_at(k: Kernel, phys: int) -> bytes:
    return k.mem.read(phys, fdt_totalsize(k.mem.read(phys, 40)))


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
    k = boot(KhoTest)
    t = kho_test_of(k)
    assert t.folios and sum(4096 << o for _, o in t.folios) == 8 * MiB
    assert all(o <= 10 for _, o in t.folios)
    assert blob_at(k, t.fdt_phys) == kho_test_oracle(t)
    # folio_alloc(get_order(nr_folios * 8 + PAGE_SIZE)): an order-1 folio for a few folios
    assert t.fdt_order == 1 and t.fdt_phys % 8192 == 0


def test_kho_test_checksum_is_the_folios_checksum() -> None:
    k = boot(KhoTest)
    t = kho_test_of(k)
    csum = 0
    for phys, order in t.folios:
        csum = x86_csum_model(k.mem.read(phys, 4096 << order), csum)
    assert t.csum == csum


def test_kho_test_is_deterministic_per_seed() -> None:
    a, b = kho_test_of(boot(KhoTest)), kho_test_of(boot(KhoTest))
    assert (a.folios, a.csum) == (b.folios, b.csum)
    c = kho_test_of(boot_kernel(LAPTOP, "kho=on", [KhoTest], seed=1))
    assert c.csum != a.csum


def test_kho_test_preserves_data_at_init_and_its_fdt_at_finalize() -> None:
    k = boot(KhoTest)
    t = kho_test_of(k)
    assert sorted(k.kho.track.preserved_blocks()) == sorted(t.folios)
    assert k.kho.finalize_set(1) == 0
    assert (t.fdt_phys, t.fdt_order) in k.kho.track.preserved_blocks()
    assert read_blob(k, "/kho/out/sub_fdts/kho_test") == blob_at(k, t.fdt_phys)
    root = libfdt.Fdt(read_blob(k, "/kho/out/fdt"))
    node = root.path_offset("/kho_test")
    assert root.getprop(node, "fdt") == struct.pack("<Q", t.fdt_phys)


def test_kho_test_max_mem_parameter() -> None:
    t = kho_test_of(boot(lambda: KhoTest(max_mem=3 * 4096 + 1)))  # PAGE_ALIGN: 4 pages
    assert sum(4096 << o for _, o in t.folios) == 4 * 4096
    t = kho_test_of(boot(lambda: KhoTest(max_mem=0)))
    assert t.folios == [] and t.csum == 0
    with pytest.raises(ValueError):
        KhoTest(max_mem=-1)


def test_kho_test_failure_at_finalize_is_a_bare_notify_bad() -> None:
    """A sub-tree named kho_test already there: EEXIST inside, EPERM outside."""
    k = boot(ProducerSpec("kho_test", SUB), KhoTest)
    assert k.kho.finalize_set(1) == -errno.EPERM
    assert not k.kho.finalized


# --- lib/test_kho.c: restoring --------------------------------------------------------


def test_kho_test_restores_after_kexec_and_saves_again_one_boot_later() -> None:
    s = boot_system(LAPTOP, "kho=on", [KhoTest])
    first = kho_test_of(s.kernel)
    second = kho_test_of(kexec(s))
    assert "test_kho: KHO restore succeeded" in lines(s, 2)
    assert second.restored and second.folios == [] and not second.fdt_phys
    # 6.17 does not save anew after a restore: nothing of kho_test goes to boot 3
    assert s.kernel.kho.finalize_set(1) == 0
    assert names_in(s.kernel, "/kho/out/sub_fdts") == []
    third = kho_test_of(kexec(s, finalize=False))
    assert third.restored is None and third.folios and third.folios != first.folios
    assert all("KHO restore" not in line for line in lines(s, 3))


def test_restored_folios_go_back_to_the_page_allocator() -> None:
    """folio_put after the checksum: the restored folios are free memory again, while the
    sub-FDT's folio stays reserved (6.17 never restores it)."""
    s = boot_system(LAPTOP, "kho=on", [KhoTest])
    saved = kho_test_of(s.kernel)
    k = kexec(s)
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
    s = boot_system(LAPTOP, "kho=on", [KhoTest])
    k = s.kernel
    assert k.kho.finalize_set(1) == 0 and k.kho.finalize_set(0) == 0
    k2 = kexec(s)
    assert kho_test_of(k2).restored is False
    assert all("KHO restore" not in line for line in lines(s, 2))
    assert "khofs: producer kho_test: init failed: -22" in lines(s, 2)


def test_kho_test_restore_checks_magic_from_the_edited_blob() -> None:
    s = boot_system(LAPTOP, "kho=on", [KhoTest])
    k = s.kernel
    assert k.kho.finalize_set(1) == 0
    t = kho_test_of(k)
    blob = blob_at(k, t.fdt_phys)
    at = blob.index(struct.pack("<I", KHO_TEST_MAGIC))
    k.mem.write(t.fdt_phys + at, struct.pack("<I", KHO_TEST_MAGIC + 1))
    assert kho_test_of(kexec(s, finalize=False)).restored is False


def test_kho_test_on_arm64_restores() -> None:
    s = boot_system(MACHINES["arm64-virt"], "kho=on", [KhoTest])
    t = kho_test_of(s.kernel)
    assert t.csum == _csum_of(s.kernel, t, arm64_csum_model)
    kexec(s)
    assert "test_kho: KHO restore succeeded" in lines(s, 2)


def _csum_of(k: Kernel, t: KhoTest, model: Callable[[bytes, int], int]) -> int:
    csum = 0
    for phys, order in t.folios:
        csum = model(k.mem.read(phys, k.mem.page_size << order), csum)
    return csum


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
    k = boot(cmdline="kho=on reserve_mem=4M:2M:trace")
    (m,) = drivers_of(k, MemblockKho)  # reserve_mem_init, a late initcall after kho_init
    assert m.regions == k.reserved_mem and len(m.regions) == 1
    assert blob_at(k, m.fdt_phys) == memblock_oracle(m.regions)
    assert k.kho.finalize_set(1) == 0
    assert read_blob(k, "/kho/out/sub_fdts/memblock") == blob_at(k, m.fdt_phys)
    _, start, size = m.regions[0]
    blocks = k.kho.track.preserved_blocks()
    assert (m.fdt_phys, 0) in blocks and (start, 10) in blocks and size == 4 * MiB


def test_memblock_producer_only_when_kho_and_regions() -> None:
    k = boot()
    (m,) = drivers_of(k, MemblockKho)
    assert not m.fdt_phys and k.kho.chain_head.call_chain(KEXEC_KHO_FINALIZE, None) == 0
    off = boot_kernel(LAPTOP, "reserve_mem=4M:2M:trace", [])
    m = MemblockKho()
    free = off.pages.free_bytes()
    assert m.init(off) == 0 and not m.fdt_phys and off.pages.free_bytes() == free


def test_memblock_finalize_ors_every_error_and_still_adds_the_sub_tree() -> None:
    """A region that is not page aligned: kho_preserve_phys says EINVAL, the others are
    still called, so the sub-tree is added and (6.16) stays after the failed finalize."""
    k = boot(cmdline="kho=on")
    m = MemblockKho()
    m.regions, m.kho = [("odd", 0x100000800, 0x1000)], k.kho
    m.fdt_phys = k.pages.alloc_pages(0)
    assert build_memblock_fdt(k.mem.page_view(m.fdt_phys), m.regions) == 0
    assert k.kho.register_notifier(m) == 0
    assert k.kho.finalize_set(1) == -errno.EINVAL
    assert read_blob(k, "/kho/out/sub_fdts/memblock") == blob_at(k, m.fdt_phys)
    assert k.kho.finalize_set(1) == -errno.EEXIST | -errno.EINVAL


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


# --- plugins: loading ------------------------------------------------------------------


def plugin_error(spec: str) -> str:
    with pytest.raises(PluginError) as info:
        load_plugin(spec)
    return str(info.value)


def test_plugin_spec_errors(tmp_path: Path) -> None:
    assert plugin_error("counter") == "--plugin counter: expected MODULE:FUNCTION"
    assert plugin_error("mod:") == "--plugin mod:: expected MODULE:FUNCTION"
    assert (plugin_error("khofs_no_such_plugin:f")
            == "--plugin khofs_no_such_plugin:f: no module named 'khofs_no_such_plugin'")
    assert (plugin_error("khofs.no_such:f")
            == "--plugin khofs.no_such:f: no module named 'khofs.no_such'")
    missing = tmp_path / "missing.py"
    assert plugin_error(f"{missing}:f") == f"--plugin {missing}:f: {missing}: No such file"


def test_plugin_function_errors() -> None:
    spec = f"{COUNTER}:nope"
    assert plugin_error(spec) == f"--plugin {spec}: module {COUNTER} has no function 'nope'"
    spec = f"{COUNTER}:NAME"
    assert plugin_error(spec) == f"--plugin {spec}: 'NAME' in {COUNTER} is not callable"
    assert (plugin_error("json:nope")
            == "--plugin json:nope: module json has no function 'nope'")


def test_plugin_import_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('no')\n")
    assert (plugin_error(f"{bad}:f")
            == f"--plugin {bad}:f: importing {bad} failed: RuntimeError: no")
    (tmp_path / "needs_dep.py").write_text("import khofs_missing_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (plugin_error("needs_dep:f") == "--plugin needs_dep:f: importing needs_dep failed: "
            "ModuleNotFoundError: No module named 'khofs_missing_dep'")


def test_plugin_from_a_module_on_sys_path(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "khofs_test_plug.py").write_text("def setup(api):\n    api.log('hello')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    k = boot(load_plugin("khofs_test_plug:setup"))
    assert "hello" in k.log.texts()


# --- plugins: the API ----------------------------------------------------------------


def plugin(tmp_path: Path, body: str, name: str = "plug") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return f"{path}:setup"


def test_counter_plugin_counts_across_kexecs() -> None:
    s = boot_system(LAPTOP, "kho=on", [load_plugin(f"{COUNTER}:counter")])
    kexec(s)
    kexec(s)
    kexec(s, finalize=False)
    texts = [line for n in range(1, 5) for line in lines(s, n) if line.startswith("counter")]
    assert texts == ["counter: boot 1: value 1", "counter: boot 2: value 2",
                     "counter: boot 3: value 3", "counter: boot 4: value 1"]


def test_add_subtree_outside_finalize_is_refused(tmp_path: Path) -> None:
    spec = plugin(tmp_path, "def setup(api):\n"
                  "    api.log(f'add: {api.add_subtree(\"early\", api.make_fdt(\"x\"))}')\n")
    k = boot(load_plugin(spec))
    assert f"add: {-errno.EINVAL}" in k.log.texts()
    assert k.kho.finalize_set(1) == 0
    assert names_in(k, "/kho/out/sub_fdts") == []


def names_in(k: Kernel, path: str) -> list[str]:
    d = k.debugfs.lookup(path)
    assert d is not None
    return sorted(d.children)


RAISING = """\
calls = []

def setup(api):
    def finalize():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return api.add_subtree("late", api.make_fdt("x", v=b"1234"))
    api.on_finalize(finalize)
"""


def test_plugin_raising_in_finalize_fails_it_with_eio(tmp_path: Path) -> None:
    spec = plugin(tmp_path, RAISING, "raising")
    k = boot(load_plugin(spec))
    assert k.kho.finalize_set(1) == -errno.EIO
    assert not k.kho.finalized and k.debugfs.lookup("/kho/out/fdt") is None
    assert names_in(k, "/kho/out/sub_fdts") == [] and k.kho.track.preserved_blocks() == []
    texts = k.log.texts()
    first = texts.index(f"khofs: plugin {spec}: finalize callback raised RuntimeError: boom")
    tb = texts[first + 1:]
    assert tb[0] == f"khofs: plugin {spec}: Traceback (most recent call last):"
    assert any("raising.py" in line and "in finalize" in line for line in tb)
    # nothing else changed: the next attempt goes through
    assert k.kho.finalize_set(1) == 0
    assert names_in(k, "/kho/out/sub_fdts") == ["late"]
    assert fdt_props_of(read_blob(k, "/kho/out/sub_fdts/late")) == {"compatible": b"x\0",
                                                                  "v": b"1234"}


def fdt_props_of(blob: bytes) -> dict[str, bytes]:
    fdt = libfdt.Fdt(blob)
    out = {}
    off = fdt.first_property_offset(0, [libfdt.NOTFOUND])
    while off >= 0:
        prop = fdt.get_property_by_offset(off)
        out[prop.name] = bytes(prop)
        off = fdt.next_property_offset(off, [libfdt.NOTFOUND])
    return out


def test_plugin_raising_or_misbehaving_in_init(tmp_path: Path) -> None:
    spec = plugin(tmp_path, "def setup(api):\n    raise KeyError('x')\n", "init_raises")
    k = boot(load_plugin(spec))
    assert f"khofs: plugin {spec}: init raised KeyError: 'x'" in k.log.texts()
    assert f"khofs: producer {spec}: init failed: -5" in k.log.texts()
    spec = plugin(tmp_path, "def setup(api):\n    return 3\n", "init_positive")
    k = boot(load_plugin(spec))
    assert f"khofs: plugin {spec}: init returned 3, not 0 or a negative errno" in k.log.texts()
    spec = plugin(tmp_path, "def setup(api):\n    return -16\n", "init_busy")
    assert f"khofs: producer {spec}: init failed: -16" in boot(load_plugin(spec)).log.texts()


def test_plugin_abort_callback_and_retrieve(tmp_path: Path) -> None:
    spec = plugin(tmp_path, """\
def setup(api):
    api.log(f"boot {api.boot}: {api.retrieve_subtree('p')!r}")
    page = api.alloc_pages(0)
    api.write(page, b"data")
    api.on_finalize(lambda: api.preserve_folio(page, 0)
                    or api.add_subtree("p", api.make_fdt("p-v1", page=page.to_bytes(8, "little"))))
    api.on_abort(lambda: api.log("aborted"))
""", "cycle")
    s = boot_system(LAPTOP, "kho=on", [load_plugin(spec)])
    k = s.kernel
    assert k.kho.finalize_set(1) == 0 and k.kho.finalize_set(0) == 0
    assert "aborted" in lines(s, 1)
    k2 = kexec(s)
    (line,) = [x for x in lines(s, 2) if x.startswith("boot 2")]
    assert line.startswith("boot 2: b'\\xd0\\r\\xfe\\xed")
    api = ProducerAPI(k2, load_plugin(spec)())
    phys = api.retrieve_subtree_phys("p")
    assert phys is not None and api.retrieve_subtree("p") == blob_at(k2, phys)
    page = int.from_bytes(libfdt.Fdt(blob_at(k2, phys)).getprop(0, "page"), "little")
    assert api.restore_folio(page) == 0 and api.read(page, 4) == b"data"
    assert api.retrieve_subtree("none") is None and api.retrieve_subtree_phys("none") is None
    with pytest.raises(ValueError):
        api.log("x", level="loud")


def test_make_fdt_is_libfdts() -> None:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", "c-v1")
    sw.property("raw", b"\x01\x02")
    sw.property_string("s", "text")
    sw.end_node()
    assert make_fdt("c-v1", raw=b"\x01\x02", s="text") == finished(sw)
    assert len(make_fdt("big", blob=bytes(10000))) > 10000


# --- the producers file: builtin, fill, forget ----------------------------------------


def load(tmp_path: Path, text: str) -> list[ProducerSpec]:
    (tmp_path / "a.dts").write_text('/dts-v1/; / { compatible = "a-v1"; };')
    path = tmp_path / "p.toml"
    path.write_text(text)
    return load_producers(path)


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ProducersFileError) as info:
        load(tmp_path, text)
    return str(info.value).replace(f"{tmp_path}/", "")


def test_config_builtin_kho_test(tmp_path: Path) -> None:
    (spec,) = load(tmp_path, '[[producer]]\nbuiltin = "kho_test"\n')
    assert spec == ProducerSpec(name="kho_test", fdt=b"", builtin="kho_test")
    (spec,) = load(tmp_path, '[[producer]]\nbuiltin = "kho_test"\nname = "kho_test"\n')
    assert spec.builtin == "kho_test"


def test_config_builtin_errors(tmp_path: Path) -> None:
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "memblock"\n')
            == "p.toml: producer #1: unknown builtin 'memblock' (known: 'kho_test')")
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "kho_test"\nname = "t"\n')
            == "p.toml: producer #1: builtin 'kho_test' is always named 'kho_test'")
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "kho_test"\ndts = "a.dts"\n')
            == "p.toml: producer 'kho_test': 'dts' cannot be used with 'builtin'")
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "kho_test"\n' * 2)
            == "p.toml: builtin 'kho_test' is given more than once")


def test_config_fill_and_forget(tmp_path: Path) -> None:
    (spec,) = load(tmp_path, '[[producer]]\nname = "a"\ndts = "a.dts"\n'
                   'preserve = ["0x100000000+8K"]\nfill = true\nforget = ["0x100002000+4K"]\n')
    assert spec.fill and spec.preserve == ((0x100000000, 0x2000),)
    assert spec.forget == ((0x100002000, 0x1000),)
    assert (load_error(tmp_path, '[[producer]]\nname = "a"\ndts = "a.dts"\nfill = 1\n')
            == "p.toml: producer 'a': 'fill' must be true or false, got 1")
    assert (load_error(tmp_path, '[[producer]]\nname = "a"\ndts = "a.dts"\nforget = ["1"]\n')
            == "p.toml: producer 'a': forget entry '1' is not 'PHYS+SIZE'")


def test_fill_pattern_and_its_check() -> None:
    mem = PhysMem()
    ranges = [(0x10000, 0x3000), (0x20000, 0x20000)]
    fill_ranges(mem, "a", ranges)
    assert first_corrupted(mem, "a", ranges) is None
    assert mem.read(0x10000, 64) != mem.read(0x20000, 64)  # the range seeds the pattern
    assert first_corrupted(mem, "b", ranges) == 0x10000  # and so does the name
    mem.write(0x31235, bytes([mem.read(0x31235, 1)[0] ^ 1]))
    mem.write(0x31234, bytes([mem.read(0x31234, 1)[0] ^ 0x80]))
    assert first_corrupted(mem, "a", ranges) == 0x31234
    assert first_corrupted(mem, "a", ranges[::-1]) == 0x31234
    assert first_corrupted(mem, "a", ranges[:1]) is None


class FillingProducer:
    """What a config producer with fill/forget does: check_and_fill at init, preserve the
    `preserve` ranges and add its sub-tree at FINALIZE."""

    priority = 0

    def __init__(self, spec: ProducerSpec) -> None:
        self.spec = spec
        self.name = spec.name

    def init(self, kernel: Kernel) -> int:
        check_and_fill(kernel, self.name, self.spec.preserve, self.spec.fill, self.spec.forget)
        self.kho = kernel.kho
        self.fdt = kernel.pages.alloc_pages(0)
        kernel.mem.write(self.fdt, self.spec.fdt)
        return kernel.kho.register_notifier(self)

    def notifier_call(self, action: int, data: object) -> int:
        if action != KEXEC_KHO_FINALIZE:
            return NOTIFY_DONE
        assert isinstance(data, KhoSerialization)
        err = 0
        for phys, size in self.spec.preserve:
            err = err or self.kho.preserve_phys(phys, size)
        err = err or self.kho.preserve_folio(self.fdt, 0)
        return notifier_from_errno(err or self.kho.add_subtree(data, self.name, self.fdt))


def test_fill_survives_kexec_where_preserved_and_not_where_forgotten() -> None:
    kept = ProducerSpec("kept", SUB, preserve=((0x100000000, 0x200000),), fill=True)
    lost = ProducerSpec("lost", SUB, preserve=((0x100400000, 0x1000),), fill=True,
                        forget=((0x100600000, 0x3000),))
    s = boot_system(LAPTOP, "kho=on",
                    [lambda: FillingProducer(kept), lambda: FillingProducer(lost)])
    assert all("preserved memory" not in line for line in lines(s, 1))
    kexec(s)
    found = [line for line in lines(s, 2) if "preserved memory" in line]
    assert found == ["khofs: producer kept: preserved memory intact",
                     "khofs: producer lost: preserved memory corrupted at 0x100600000"]
    kexec(s)  # filled again at boot 2, so boot 3 checks the same way
    assert [line for line in lines(s, 3) if "preserved memory" in line] == found
