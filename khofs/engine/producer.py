"""Producers described by a configuration file: drivers that publish a sub-FDT on FINALIZE.

Each is a notifier block like a real KHO user (compare mm/memblock.c reserve_mem_kho_notifier):
on FINALIZE it preserves its ranges and its FDT pages, then calls kho_add_subtree; it can be
told to fail FINALIZE or ABORT with a given errno, to exercise the kernel's error paths.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from khofs.engine.fill import check_and_fill
from khofs.engine.kho import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoSerialization
from khofs.engine.notifier import NOTIFY_DONE, notifier_from_errno
from khofs.engine.slab import get_order

if TYPE_CHECKING:
    from khofs.engine.kernel import Kernel


class Producer(Protocol):
    """A KHO user: its module init runs at every boot, before kho_init."""

    name: str

    def init(self, kernel: Kernel) -> int: ...


@dataclass(frozen=True)
class ProducerSpec:
    """What a configuration says about one producer (already validated)."""

    name: str
    fdt: bytes
    preserve: tuple[tuple[int, int], ...] = ()
    fail_finalize: int = 0  # a positive errno, or 0
    fail_abort: int = 0
    builtin: str = ""  # "kho_test": the kernel's lib/test_kho.c instead (fdt unused)
    fill: bool = False  # write a pattern into `preserve` at init, check it after kexec
    forget: tuple[tuple[int, int], ...] = ()  # filled and checked, but never preserved


class ConfigProducer:
    """A notifier block whose sub-FDT lives in pages it allocated at its init."""

    priority = 0

    def __init__(self, spec: ProducerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.fdt_phys = 0
        self.order = 0

    def init(self, kernel: Kernel) -> int:
        """The module init: allocate and fill the sub-FDT pages, register the notifier."""
        check_and_fill(kernel, self.name, self.spec.preserve, self.spec.fill, self.spec.forget)
        self.kho = kernel.kho
        mem = kernel.mem
        self.order = get_order(len(self.spec.fdt), mem.page_size)
        self.fdt_phys = kernel.pages.alloc_pages(self.order)
        if not self.fdt_phys:
            return -errno.ENOMEM
        mem.write(self.fdt_phys, self.spec.fdt)
        return self.kho.register_notifier(self)

    def notifier_call(self, action: int, data: object) -> int:
        if action == KEXEC_KHO_FINALIZE:
            assert isinstance(data, KhoSerialization)
            return notifier_from_errno(self._finalize(data))
        if action == KEXEC_KHO_ABORT and self.spec.fail_abort:
            return notifier_from_errno(-self.spec.fail_abort)
        return NOTIFY_DONE

    def _finalize(self, ser: KhoSerialization) -> int:
        if self.spec.fail_finalize:
            return -self.spec.fail_finalize
        for phys, size in self.spec.preserve:
            err = self.kho.preserve_phys(phys, size)
            if err:
                return err
        err = self.kho.preserve_folio(self.fdt_phys, self.order)
        if err:
            return err
        return self.kho.add_subtree(ser, self.spec.name, self.fdt_phys)
