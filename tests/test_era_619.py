"""Profile 6.19 (6.19, 7.0): kho_init as an fs_initcall, the root FDT from boot edited in
place with read-write libfdt, sub-trees at registration, finalize that re-serialises."""

from __future__ import annotations

import errno
import stat
import struct

import pytest

from khofs.engine.era import profile_of
from khofs.engine.kernel import Kernel
from khofs.engine.kho_out_live import KhoOutLive
from khofs.engine.system import System
from khofs.producers.dts import compile_dts
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.memblock import MemblockKho
from khofs.producers.spec import ProducerSpec
from khofs.producers.table import DriverFactory, boot_table
from tests.era_formats import (
    PAGE,
    blocks_cover,
    decode_bitmaps,
    decode_kho_vmalloc,
    edited_root,
    fdt_props_619,
    kho_test_oracle_vmalloc,
    mode,
    sequential_root,
    texts,
)
from tests.helpers import LAPTOP, children, drivers_of, read_blob

P619 = profile_of("6.19")
CMDLINE = "kho=on reserve_mem=64M:4096:n1"
SUB = compile_dts('/dts-v1/; / { compatible = "test-v1"; };')


def boot(cmdline: str = CMDLINE,
         drivers: tuple[ProducerSpec | DriverFactory, ...] = (KhoTest,)) -> Kernel:
    return Kernel(LAPTOP, cmdline, boot_table(drivers), profile=P619)


def kho(k: Kernel) -> KhoOutLive:
    assert isinstance(k.kho, KhoOutLive)
    return k.kho


def test_a_cold_boot_shows_the_root_fdt_frozen_at_152_bytes() -> None:
    k = boot("kho=on", ())
    assert children(k, "/kho/out") == ["fdt", "finalize", "scratch_len", "scratch_phys",
                                      "sub_fdts"]
    assert mode(k, "/kho/out/fdt") == stat.S_IFREG | 0o400
    assert mode(k, "/kho/out/finalize") == stat.S_IFREG | 0o600
    assert read_blob(k, "/kho/out/fdt") == sequential_root("kho-v1", 0)
    assert len(read_blob(k, "/kho/out/fdt")) == 152
    assert read_blob(k, "/kho/out/finalize") == b"0\n"
    # the root page is preserved from kho_init on
    assert (kho(k).fdt_phys, 0) in k.kho.preserved_blocks()


def test_sub_trees_appear_at_registration_newest_node_first() -> None:
    k = boot()
    (t,) = drivers_of(k, KhoTest)
    (mb,) = drivers_of(k, MemblockKho)
    assert children(k, "/kho/out/sub_fdts") == ["kho_test", "memblock"]
    root = k.mem.read(kho(k).fdt_phys, PAGE)
    want = edited_root("kho-v1", 0, [("kho_test", fdt_props_619(t.fdt_phys)),
                                     ("memblock", fdt_props_619(mb.fdt_phys))])
    assert root[:len(want)] == want and len(want) == 228
    # kho/out/fdt keeps its size from kho_init: a reader sees the first 152 bytes of a tree
    # whose header says 228
    served = read_blob(k, "/kho/out/fdt")
    assert served == want[:152] and struct.unpack(">I", served[4:8])[0] == 228
    assert read_blob(k, "/kho/out/sub_fdts/kho_test") == kho_test_oracle_vmalloc(
        len(t.folios), t.folios_info_phys, t.csum)


def test_finalize_serialises_on_every_write_and_zero_is_einval() -> None:
    k = boot()
    out = kho(k)
    assert out.finalize_set(0) == -errno.EINVAL
    assert out.finalize_set(1) == 0 and read_blob(k, "/kho/out/finalize") == b"1\n"
    first = out.chunks[0]
    root = k.mem.read(out.fdt_phys, PAGE)
    assert struct.pack("<Q", first) in root[:228]
    assert sorted(decode_bitmaps(k.mem, first, 4096)) == sorted(out.preserved_blocks())
    # preservation is allowed after finalize; another write re-serialises (no EEXIST)
    assert out.preserve_folio(0x100000000, 0) == 0
    assert out.finalize_set(7) == 0
    again = out.chunks[0]
    assert (0x100000000, 0) in decode_bitmaps(k.mem, again, 4096)
    assert children(k, "/kho/out") == ["fdt", "finalize", "scratch_len", "scratch_phys",
                                      "sub_fdts"]


def test_kho_add_subtree_errors() -> None:
    k = boot("kho=on", ())
    out = kho(k)
    assert out.add_subtree("alpha", 0x100000000) == 0
    assert out.add_subtree("alpha", 0x100001000) == -errno.EEXIST
    assert out.add_subtree("beta@1", 0x100001000) == 0
    assert out.add_subtree("beta", 0x100002000) == -errno.EEXIST  # libfdt: beta@1 is beta
    assert children(k, "/kho/out/sub_fdts") == ["alpha", "beta@1"]


def test_kho_test_preserves_everything_at_init() -> None:
    k = boot()
    (t,) = drivers_of(k, KhoTest)
    preserved = k.kho.preserved_blocks()
    assert (t.fdt_phys, t.fdt_order) in preserved
    assert all((p, o) in preserved for p, o in t.folios)
    chunks, pages, total, flags, order = decode_kho_vmalloc(k.mem, t.folios_info_phys)
    assert (total, flags, order) == (-(-len(t.folios) * 8 // PAGE), 1, 0)
    for phys in [*chunks, *pages]:
        assert blocks_cover(preserved, phys)


def test_a_config_producer_registers_at_boot() -> None:
    k = boot("kho=on", (ProducerSpec("alpha", SUB, ((0x100000000, 0x2000),)),))
    assert read_blob(k, "/kho/out/sub_fdts/alpha") == SUB
    assert (0x100000000, 1) in k.kho.preserved_blocks()
    k = boot("kho=on", (ProducerSpec("alpha", SUB, fail_finalize=errno.EBUSY),))
    assert "khofs: producer alpha: init failed: -16" in texts(k)
    assert children(k, "/kho/out/sub_fdts") == []


def system(cmdline: str = CMDLINE) -> System:
    return System(LAPTOP, cmdline, boot_table([KhoTest]), profile=P619)


def test_kexec_within_6_19() -> None:
    s = system()
    assert kho(s.kernel).finalize_set(1) == 0
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    k = s.kernel
    log = texts(k)
    assert "KHO: found kexec handover data." in log
    assert "Revived memory reservation 'n1' from KHO" in log
    assert "test_kho: KHO restore succeeded" in log
    assert children(k, "/kho") == ["in", "out"]
    assert children(k, "/kho/out") == ["finalize", "scratch_len", "scratch_phys", "sub_fdts"]
    assert children(k, "/kho/in/sub_fdts") == ["kho_test", "memblock"]


def test_kexec_without_finalize_is_refused_for_its_empty_map() -> None:
    """kho: validate preserved memory map during population: a map of 0 is -ENOENT."""
    s = system()
    assert s.kexec_load() == (0, "")
    assert s.loaded is not None and s.loaded.handover.fdt_phys  # handed over all the same
    assert s.kexec_execute() == (0, "")
    log = texts(s.kernel)
    assert "KHO: disabling KHO revival: -2" in log
    assert not any(x.startswith("KHO: found") for x in log)
    assert s.kernel.kho_in is None and children(s.kernel, "/kho") == ["out"]


def test_kho_in_warnings_use_the_6_19_texts() -> None:
    s = system()
    out = kho(s.kernel)
    assert out.add_subtree("odd", 0x100000000) == 0
    root = out._root()
    off = root.subnode_offset(0, "odd")
    assert root.open_into(PAGE) == 0 and root.setprop(off, "fdt", b"\x01\x02\x03") == 0
    assert root.pack() == 0
    assert out.finalize_set(1) == 0
    s.kexec_load()
    s.kexec_execute()
    assert "KHO: node odd prop fdt has invalid length: 3" in texts(s.kernel)


@pytest.mark.parametrize("release", ["6.19.0", "7.0.3"])
def test_7_0_is_the_6_19_era(release: str) -> None:
    assert profile_of(release).era is P619.era


@pytest.mark.parametrize("abi", ["6.16", "6.19", "7.1"])
def test_the_example_plugin_counts_boots_in_every_era(abi: str) -> None:
    from khofs.producers.plugin import load_plugin

    s = System(LAPTOP, "kho=on", boot_table([load_plugin("examples/plugins/counter.py:counter")]),
               profile=profile_of(abi))
    for boot in (2, 3):
        if s.kernel.era.finalize:
            assert s.kernel.kho.finalize_set(1) == 0
        assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
        assert f"counter: boot {boot}: value {boot}" in texts(s.kernel)
