"""Profiles 7.1 (7.1 to 7.3) and 7.4: the radix tree from boot, no finalize, sub-trees as
`preserved-data` + `blob-size`, kexec-metadata, non-FDT blobs, and 7.4's bootmem names."""

from __future__ import annotations

import errno

import pytest

from khofs.engine.era import profile_of
from khofs.engine.kernel import Kernel
from khofs.engine.kho_out_radix import KhoOutRadix
from khofs.engine.system import System
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.memblock import MemblockKho
from khofs.producers.spec import ProducerSpec
from khofs.producers.table import DriverFactory, boot_table
from tests.era_formats import (
    PAGE,
    Q,
    blob_props_71,
    decode_radix,
    edited_root,
    metadata_blob,
    radix_key_path,
    texts,
)
from tests.helpers import LAPTOP, children, drivers_of, read_blob

CMDLINE = "kho=on reserve_mem=64M:4096:n1"


def boot(abi: str = "7.1", cmdline: str = CMDLINE,
         drivers: tuple[ProducerSpec | DriverFactory, ...] = (KhoTest,)) -> Kernel:
    return Kernel(LAPTOP, cmdline, boot_table(drivers), profile=profile_of(abi))


def kho(k: Kernel) -> KhoOutRadix:
    assert isinstance(k.kho, KhoOutRadix)
    return k.kho


def test_the_tree_has_no_finalize_and_a_233_byte_root() -> None:
    k = boot(cmdline="kho=on", drivers=())
    out = kho(k)
    assert children(k, "/kho/out") == ["fdt", "scratch_len", "scratch_phys", "sub_fdts"]
    md = read_blob(k, "/kho/out/sub_fdts/kexec-metadata")
    assert md == metadata_blob("7.1.0", 1) and len(md) == 73
    want = edited_root("kho-v3", out.tree.root,
                       [("kexec-metadata", blob_props_71(out.metadata_phys, 73))])
    assert read_blob(k, "/kho/out/fdt") == want and len(want) == 233


def test_every_sub_tree_lists_blob_size_first_and_nodes_newest_first() -> None:
    k = boot()
    out = kho(k)
    (t,) = drivers_of(k, KhoTest)
    (mb,) = drivers_of(k, MemblockKho)
    t_size = len(read_blob(k, "/kho/out/sub_fdts/kho_test"))
    mb_size = len(read_blob(k, "/kho/out/sub_fdts/memblock"))
    want = edited_root("kho-v3", out.tree.root, [
        ("kexec-metadata", blob_props_71(out.metadata_phys, 73)),
        ("kho_test", blob_props_71(t.fdt_phys, t_size)),
        ("memblock", blob_props_71(mb.fdt_phys, mb_size))])
    assert k.mem.read(out.fdt_phys, len(want)) == want and len(want) == 353
    assert len(read_blob(k, "/kho/out/fdt")) == 233  # still the size at kho_init


def test_the_radix_tree_decodes_to_what_is_preserved() -> None:
    k = boot()
    out = kho(k)
    preserved = sorted(out.preserved_blocks())
    assert sorted(decode_radix(k.mem, out.tree.root)) == preserved
    assert (out.fdt_phys, 0) in preserved and (out.metadata_phys, 0) in preserved
    # the path of the root FDT's page, table by table, from the ABI's key layout
    indices, bit = radix_key_path(out.fdt_phys, 0)
    node = out.tree.root
    for idx in indices:
        node = Q.unpack(k.mem.read(node + 8 * idx, 8))[0]
        assert node and node % PAGE == 0
    assert k.mem.read(node + bit // 8, 1)[0] >> (bit % 8) & 1
    # nodes are never freed: unpreserving leaves the path, clears the bit
    out.unpreserve_folio(out.fdt_phys, 0)
    assert not k.mem.read(node + bit // 8, 1)[0] >> (bit % 8) & 1


def system(abi: str = "7.1", cmdline: str = CMDLINE) -> System:
    return System(LAPTOP, cmdline, boot_table([KhoTest]), profile=profile_of(abi))


def test_kexec_within_7_1_and_kexec_metadata_counts() -> None:
    s = system()
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    log = texts(s.kernel)
    assert "KHO: found kexec handover data." in log
    assert "KHO: exec from: 7.1.0 (count 1)" in log
    assert "Revived memory reservation 'n1' from KHO" in log
    assert "test_kho: KHO restore succeeded" in log
    assert children(s.kernel, "/kho/in/sub_fdts") == ["kexec-metadata", "kho_test", "memblock"]
    assert read_blob(s.kernel, "/kho/in/sub_fdts/kexec-metadata") == metadata_blob("7.1.0", 1)
    assert read_blob(s.kernel, "/kho/out/sub_fdts/kexec-metadata") == \
        metadata_blob("7.1.0", 2)
    assert children(s.kernel, "/kho/out") == ["scratch_len", "scratch_phys", "sub_fdts"]
    assert s.kexec_load(profile=profile_of("7.1.2-custom")) == (0, "")
    assert s.kexec_execute() == (0, "")
    assert "KHO: exec from: 7.1.0 (count 2)" in texts(s.kernel)
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    assert "KHO: exec from: 7.1.2-custom (count 3)" in texts(s.kernel)


@pytest.mark.parametrize(("frm", "to", "compatible"), [("7.1", "7.2.0", "kho-v4"),
                                                        ("7.2.0", "7.1", "kho-v3"),
                                                        ("7.1", "7.4", "kho-v4"),
                                                        ("7.4", "7.1.1", "kho-v3")])
def test_7_1_and_7_2_on_refuse_each_other(frm: str, to: str, compatible: str) -> None:
    s = system(frm)
    root = kho(s.kernel).fdt_phys
    assert s.kexec_load(profile=profile_of(to)) == (0, "") and s.kexec_execute() == (0, "")
    log = texts(s.kernel)
    assert (f"KHO: setup: handover FDT (0x{root:x}) is incompatible with '{compatible}': 1"
            in log)
    assert log[log.index(next(x for x in log if "incompatible" in x)) + 1] == \
        "KHO: disabling KHO revival"
    assert s.kernel.kho_in is None and children(s.kernel, "/kho") == ["out"]


def test_7_2_and_7_4_agree() -> None:
    s = system("7.2.0")
    assert s.kexec_load(profile=profile_of("7.4")) == (0, "") and s.kexec_execute() == (0, "")
    log = texts(s.kernel)
    assert "KHO: exec from: 7.2.0 (count 1)" in log
    assert "test_kho: KHO restore succeeded" in log


def test_a_producer_may_hand_any_bytes_over() -> None:
    blob = bytes(range(256)) * 3 + b"tail"
    s = System(LAPTOP, "kho=on", boot_table([ProducerSpec("raw", b"", blob=blob)]),
               profile=profile_of("7.1"))
    assert read_blob(s.kernel, "/kho/out/sub_fdts/raw") == blob
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    assert read_blob(s.kernel, "/kho/in/sub_fdts/raw") == blob


def test_a_node_without_blob_size_is_skipped_and_breaks_retrieval() -> None:
    s = system()
    out = kho(s.kernel)
    root = out._root()
    off = root.subnode_offset(0, "memblock")
    assert root.open_into(PAGE) == 0 and root.delprop(off, "blob-size") == 0
    assert root.pack() == 0
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    log = texts(s.kernel)
    assert "KHO: node memblock missing or invalid blob-size property" in log
    assert ("KHO: broken KHO subnode 'memblock': missing or invalid blob-size property"
            in log)
    assert "failed to retrieve FDT 'memblock' from KHO: -22" in log
    assert children(s.kernel, "/kho/in/sub_fdts") == ["kexec-metadata", "kho_test"]


def test_plugins_cannot_register_callbacks() -> None:
    from khofs.producers.plugin import PluginFactory, ProducerAPI

    results: list[int] = []

    def plugin(api: ProducerAPI) -> int:
        results.append(api.on_finalize(lambda: 0))
        results.append(api.unpreserve_pages(0x100000000, 1))
        return api.add_subtree("p", b"not an fdt")

    k = boot("7.1", "kho=on", (PluginFactory("p.py:plugin", plugin),))
    assert results == [-errno.EOPNOTSUPP, 0]
    assert ("khofs: plugin p.py:plugin: on_finalize: a 7.1 kernel has no KHO notifiers (gone "
            "from 6.19): preserve and add_subtree in the plugin function") in texts(k)
    assert read_blob(k, "/kho/out/sub_fdts/p") == b"not an fdt"


def test_7_4_calls_scratch_bootmem() -> None:
    k = boot("7.4", "kho=on kho_bootmem=64M,128M,32M kho_scratch=1G,1G,1G")
    assert children(k, "/kho/out") == ["bootmem_len", "bootmem_phys", "fdt", "sub_fdts"]
    assert read_blob(k, "/kho/out/bootmem_len") == b"0x4000000\n0x8000000\n0x2000000\n"
    assert "KHO: scratch areas: lowmem: 64MiB global: 128MiB pernode: 32MiB" in texts(k)
    md = read_blob(k, "/kho/out/sub_fdts/kexec-metadata")
    assert md == metadata_blob("7.4.0", 1)


def test_7_1_says_which_scratch_area_failed() -> None:
    k = boot("7.1", "kho=on kho_scratch=64M,1T,64M", ())
    assert not k.kho_enabled
    log = texts(k)
    i = log.index("KHO: Failed to reserve global scratch buffer")
    assert log[i + 1] == "KHO: Failed to reserve scratch area, disabling kexec handover"
    k = boot("7.4", "kho=on kho_bootmem=1T,64M,64M", ())
    assert "KHO: Failed to reserve lowmem scratch buffer" in texts(k)
