"""The KHO engine without FUSE: finalize/abort, notifiers, sub-trees and the memory map."""

from __future__ import annotations

import errno
import struct

import libfdt
import pytest

from khofs.engine.kernel import Kernel
from khofs.engine.kho_out import KEXEC_KHO_FINALIZE, KhoSerialization
from khofs.engine.memtrack import CHUNK_HDR, PRESERVE_BITS, split_blocks
from khofs.engine.notifier import (
    NOTIFY_BAD,
    NOTIFY_DONE,
    NOTIFY_OK,
    BlockingNotifierHead,
    notifier_from_errno,
    notifier_to_errno,
)
from khofs.producers.config_producer import ConfigProducer
from khofs.producers.spec import ProducerSpec
from tests.helpers import SUB, boot_kernel, children, decode_map, drivers_of, read_blob
from tests.oracle import kho_root


def test_notifier_errno_encoding() -> None:
    for e in (1, 3, 16, 17, 4095):
        assert notifier_to_errno(notifier_from_errno(-e)) == -e
    assert notifier_from_errno(0) == NOTIFY_OK
    assert notifier_to_errno(NOTIFY_BAD) == -errno.EPERM
    assert notifier_to_errno(NOTIFY_DONE) == 0 and notifier_to_errno(NOTIFY_OK) == 0


def test_chain_runs_in_priority_then_registration_order_and_stops() -> None:
    calls: list[str] = []

    class Nb:
        def __init__(self, name: str, priority: int, ret: int) -> None:
            self.name, self.priority, self.ret = name, priority, ret

        def notifier_call(self, action: int, data: object) -> int:
            calls.append(self.name)
            return self.ret

    head = BlockingNotifierHead()
    for nb in (Nb("a", 0, NOTIFY_OK), Nb("b", 0, NOTIFY_BAD), Nb("hi", 5, NOTIFY_DONE),
               Nb("c", 0, NOTIFY_OK)):
        assert head.register(nb) == 0
    assert head.call_chain(0, None) == NOTIFY_BAD
    assert calls == ["hi", "a", "b"]


def test_kho_off_has_no_tree() -> None:
    k = boot_kernel(cmdline="kho_scratch=50%")
    assert not k.kho_enabled and k.debugfs.lookup("/kho") is None


def test_finalize_state_machine(kernel: Kernel) -> None:
    kho = kernel.kho
    assert children(kernel, "/kho/out") == ["finalize", "scratch_len", "scratch_phys", "sub_fdts"]
    assert kho.finalize_get() == (0, 0)
    assert kho.finalize_set(0) == -errno.ENOENT
    assert kho.finalize_set(1) == 0 and kho.finalize_get() == (0, 1)
    assert kho.finalize_set(5) == -errno.EEXIST
    assert "fdt" in children(kernel, "/kho/out")
    assert kho.finalize_set(0) == 0 and "fdt" not in children(kernel, "/kho/out")


def test_root_fdt_is_libfdt_bytes_and_sub_fdt_served() -> None:
    k = boot_kernel(drivers=[ProducerSpec("alpha", SUB), ProducerSpec("beta", SUB)])
    assert k.kho.finalize_set(1) == 0
    root = read_blob(k, "/kho/out/fdt")
    (map_phys,) = struct.unpack("<Q", libfdt.Fdt(root).getprop(0, "preserved-memory-map"))
    subs = [(p.spec.name, p.fdt_phys) for p in drivers_of(k, ConfigProducer)]
    assert root == kho_root(map_phys, subs)
    assert read_blob(k, "/kho/out/sub_fdts/alpha") == SUB
    assert all(not s.addr <= p <= s.addr + s.size for s in k.scratch for _, p in subs)


def test_memory_map_lists_root_page_sub_fdt_and_ranges() -> None:
    ranges = ((0x100000000, 0x200000), (0x100203000, 0x5000))
    k = boot_kernel(drivers=[ProducerSpec("alpha", SUB, preserve=ranges)])
    assert k.kho.finalize_set(1) == 0
    root = libfdt.Fdt(read_blob(k, "/kho/out/fdt"))
    (first,) = struct.unpack("<Q", root.getprop(0, "preserved-memory-map"))
    (alpha,) = drivers_of(k, ConfigProducer)
    expected = [(k.kho.ser.fdt_phys if k.kho.ser else 0, 0), (alpha.fdt_phys, 0)]
    for phys, size in ranges:
        expected += [(pfn << 12, o) for pfn, o in split_blocks(phys >> 12, (phys + size) >> 12)]
    assert decode_map(k, first) == sorted(expected, key=lambda x: (x[1], x[0]))


def test_preserve_rules(kernel: Kernel) -> None:
    assert kernel.kho.preserve_phys(0x1000, 0x800) == -errno.EINVAL
    assert kernel.kho.preserve_phys(0x1001, 0x1000) == -errno.EINVAL
    assert kernel.kho.finalize_set(1) == 0
    assert kernel.kho.preserve_phys(0x1000, 0x1000) == -errno.EBUSY
    assert kernel.kho.preserve_folio(0x1000, 0) == -errno.EBUSY


def test_failed_finalize_keeps_blobs_and_retry_is_stuck_with_eexist() -> None:
    k = boot_kernel(drivers=[ProducerSpec("alpha", SUB),
                             ProducerSpec("beta", SUB, fail_finalize=errno.EBUSY)])
    assert k.kho.finalize_set(1) == -errno.EBUSY
    assert k.kho.finalize_get() == (0, 0)
    assert children(k, "/kho/out/sub_fdts") == ["alpha"]
    assert "fdt" not in children(k, "/kho/out")
    assert k.kho.finalize_set(1) == -errno.EEXIST  # alpha's blob is still there
    assert any("Failed to convert KHO state tree: -17" in t for t in k.log.texts())


def test_duplicate_names_fail_with_eexist() -> None:
    k = boot_kernel(drivers=[ProducerSpec("same", SUB), ProducerSpec("same", SUB)])
    assert k.kho.finalize_set(1) == -errno.EEXIST


def test_full_root_page_is_esrch() -> None:
    specs = [ProducerSpec(f"producer-with-a-long-name-{i:03d}", SUB) for i in range(120)]
    k = boot_kernel(drivers=specs)
    assert k.kho.finalize_set(1) == -errno.ESRCH  # -FDT_ERR_NOSPACE (3), OR-ed
    assert k.kho.finalize_get() == (0, 0)


def test_abort_failure_keeps_finalized_but_forgets_preservations() -> None:
    k = boot_kernel(drivers=[ProducerSpec("alpha", SUB, fail_abort=errno.EIO)])
    assert k.kho.finalize_set(1) == 0
    assert k.kho.finalize_set(0) == -errno.EIO
    assert k.kho.finalize_get() == (0, 1) and "fdt" in children(k, "/kho/out")
    assert k.kho.track.orders == {}
    assert any("Failed to abort KHO finalization: -5" in t for t in k.log.texts())


def test_finalize_event_passes_serialization(kernel: Kernel) -> None:
    seen: list[object] = []

    class Nb:
        priority = 0

        def notifier_call(self, action: int, data: object) -> int:
            if action == KEXEC_KHO_FINALIZE:
                seen.append(data)
            return NOTIFY_DONE

    kernel.kho.register_notifier(Nb())
    assert kernel.kho.finalize_set(1) == 0
    assert seen == [kernel.kho.ser]


@pytest.mark.parametrize("n", [0, 1, 255, 256, 600])
def test_chunks_split_at_255_bitmaps(n: int, kernel: Kernel) -> None:
    for i in range(n):  # one order-0 page in each of n different bitmaps
        assert kernel.kho.preserve_folio(0x100000000 + i * PRESERVE_BITS * 4096, 0) == 0
    assert kernel.kho.finalize_set(1) == 0
    root = libfdt.Fdt(read_blob(kernel, "/kho/out/fdt"))
    (first,) = struct.unpack("<Q", root.getprop(0, "preserved-memory-map"))
    counts, chunk = [], first
    while chunk:
        chunk, _order, num = CHUNK_HDR.unpack(kernel.mem.read(chunk, CHUNK_HDR.size))
        counts.append(num)
    total = n + 1  # the root page shares no bitmap with them
    assert sum(counts) == total and all(c <= 255 for c in counts)
    assert len(counts) == -(-total // 255)


def test_every_finalize_writes_libfdts_bytes_also_when_the_tree_changes() -> None:
    """kho_finalize writes the root FDT anew each time; khofs keeps the head and the tail of
    that writing between finalizes. Whatever changed in between (a sub-tree more or fewer,
    another memory map), each root is libfdt's tree of that moment."""
    k = boot_kernel(drivers=[ProducerSpec("alpha", SUB)])
    (alpha,) = drivers_of(k, ConfigProducer)
    extra: list[tuple[str, int]] = []

    class Sometimes:
        """Adds a sub-tree on the finalizes it is told to."""

        priority = 0

        def notifier_call(self, action: int, data: object) -> int:
            if action == KEXEC_KHO_FINALIZE and extra:
                assert isinstance(data, KhoSerialization)
                assert k.kho.add_subtree(data, extra[0][0], extra[0][1]) == 0
            return NOTIFY_DONE

    k.kho.register_notifier(Sometimes())
    for cycle in range(6):
        extra[:] = [("beta", alpha.fdt_phys)] if cycle in (2, 3) else []
        if cycle == 4:
            assert k.kho.preserve_phys(0x100000000, 0x200000) == 0  # a longer memory map
        assert k.kho.finalize_set(1) == 0
        root = read_blob(k, "/kho/out/fdt")
        (map_phys,) = struct.unpack("<Q", libfdt.Fdt(root).getprop(0, "preserved-memory-map"))
        assert root == kho_root(map_phys, [("alpha", alpha.fdt_phys), *extra]), cycle
        assert k.kho.finalize_set(0) == 0
