"""fill and forget: the pattern a producer writes into its preserved ranges, and the check
the next kernel makes of it (khofs.producers.fill)."""

from __future__ import annotations

from khofs.engine.kernel import Kernel
from khofs.engine.kho_out import KEXEC_KHO_FINALIZE, KhoSerialization
from khofs.engine.notifier import NOTIFY_DONE, notifier_from_errno
from khofs.engine.physmem import PhysMem
from khofs.producers.fill import check_and_fill, fill_ranges, first_corrupted
from khofs.producers.spec import ProducerSpec
from tests.helpers import SUB, boot_lines, boot_system, kexec_next


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
    s = boot_system(drivers=[lambda: FillingProducer(kept), lambda: FillingProducer(lost)])
    assert all("preserved memory" not in line for line in boot_lines(s, 1))
    kexec_next(s)
    found = [line for line in boot_lines(s, 2) if "preserved memory" in line]
    assert found == ["khofs: producer kept: preserved memory intact",
                     "khofs: producer lost: preserved memory corrupted at 0x100600000"]
    kexec_next(s)  # filled again at boot 2, so boot 3 checks the same way
    assert [line for line in boot_lines(s, 3) if "preserved memory" in line] == found
