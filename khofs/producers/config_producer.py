"""Producers described by a configuration file: drivers that publish a sub-FDT on FINALIZE.

Each is a notifier block like a real KHO user (compare mm/memblock.c reserve_mem_kho_notifier):
on FINALIZE it preserves its ranges and its FDT pages, then calls kho_add_subtree; it can be
told to fail FINALIZE or ABORT with a given errno, to exercise the kernel's error paths.
"""

from __future__ import annotations

import errno

from khofs.engine.driver import DriverContext
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoSerialization
from khofs.engine.notifier import NOTIFY_DONE, notifier_from_errno
from khofs.engine.slab import get_order
from khofs.producers.fill import check_and_fill
from khofs.producers.spec import ProducerSpec


class ConfigProducer:
    """A notifier block whose sub-FDT lives in pages it allocated at its init."""

    priority = 0

    def __init__(self, spec: ProducerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.fdt_phys = 0
        self.order = 0

    def init(self, ctx: DriverContext) -> int:
        """The module init: allocate and fill the sub-FDT pages, register the notifier."""
        check_and_fill(ctx, self.name, self.spec.preserve, self.spec.fill, self.spec.forget)
        self.kho = ctx.kho
        mem = ctx.mem
        self.order = get_order(len(self.spec.fdt), mem.page_size)
        self.fdt_phys = ctx.pages.alloc_pages(self.order)
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
