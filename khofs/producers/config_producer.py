"""Producers described by a configuration file: drivers that hand a sub-tree over.

In 6.16 and 6.18 each is a notifier block like a real KHO user (compare mm/memblock.c
reserve_mem_kho_notifier): on FINALIZE it preserves its ranges and its FDT pages, then calls
kho_add_subtree; it can be told to fail FINALIZE or ABORT with a given errno, to exercise the
kernel's error paths. From 6.19, where notifiers are gone, the FINALIZE work happens at its
module init, as the kernel's own users moved it: `fail_finalize` then fails that
registration. Ranges are preserved with kho_preserve_phys (6.16: page aligned, else EINVAL)
or kho_preserve_pages (6.18 on: the page holding the start, size >> PAGE_SHIFT pages). From
7.1 a producer may hand over any bytes (`blob`), sized by the blob.
"""

from __future__ import annotations

import errno

from khofs.engine.driver import DriverContext
from khofs.engine.era import Profile
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoOut, KhoSerialization
from khofs.engine.kho_out_live import KhoOutLive
from khofs.engine.notifier import NOTIFY_DONE, notifier_from_errno
from khofs.engine.slab import get_order
from khofs.producers.fill import check_and_fill
from khofs.producers.spec import ProducerSpec


class ConfigProducer:
    """A KHO user whose sub-tree lives in pages it allocated at its init."""

    priority = 0

    def __init__(self, spec: ProducerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.fdt_phys = 0
        self.order = 0
        self.kho: KhoOut | None = None

    @property
    def data(self) -> bytes:
        """What it hands over: its FDT, or (7.1 on) its blob."""
        return self.spec.blob or self.spec.fdt

    def init(self, ctx: DriverContext) -> int:
        """The module init: allocate and fill the sub-tree's pages; then register the
        notifier (6.16, 6.18) or do the FINALIZE work now (6.19 on)."""
        check_and_fill(ctx, self.name, self.spec.preserve, self.spec.fill, self.spec.forget)
        mem = ctx.mem
        self.order = get_order(len(self.data), mem.page_size)
        self.fdt_phys = ctx.pages.alloc_pages(self.order)
        if not self.fdt_phys:
            return -errno.ENOMEM
        mem.write(self.fdt_phys, self.data)
        kho = ctx.kho
        if isinstance(kho, KhoOutLive):
            return self._register(kho)
        assert isinstance(kho, KhoOut)
        self.kho = kho
        return kho.register_notifier(self)

    def notifier_call(self, action: int, data: object) -> int:
        if action == KEXEC_KHO_FINALIZE:
            assert isinstance(data, KhoSerialization)
            return notifier_from_errno(self._finalize(data))
        if action == KEXEC_KHO_ABORT and self.spec.fail_abort:
            return notifier_from_errno(-self.spec.fail_abort)
        return NOTIFY_DONE

    def _preserve(self, kho: KhoOut | KhoOutLive) -> int:
        """The ranges, then the sub-tree's own folio."""
        page = kho.ctx.mem.page_size
        for phys, size in self.spec.preserve:
            if kho.era.preserve_pages:
                err = kho.preserve_pages(phys, size // page)
            else:
                assert isinstance(kho, KhoOut)
                err = kho.preserve_phys(phys, size)
            if err:
                return err
        return kho.preserve_folio(self.fdt_phys, self.order)

    def _finalize(self, ser: KhoSerialization) -> int:
        if self.spec.fail_finalize:
            return -self.spec.fail_finalize
        assert self.kho is not None
        err = self._preserve(self.kho)
        if err:
            return err
        return self.kho.add_subtree(ser, self.spec.name, self.fdt_phys)

    def _register(self, kho: KhoOutLive) -> int:
        """6.19 on: what FINALIZE did, at init (kho_add_subtree with the blob's size)."""
        if self.spec.fail_finalize:
            return -self.spec.fail_finalize
        err = self._preserve(kho)
        if err:
            return err
        return kho.add_subtree(self.spec.name, self.fdt_phys, len(self.data))


def spec_problem(spec: ProducerSpec, profile: Profile) -> str:
    """Why this kernel version cannot run the producer ('' when it can): one line."""
    era = profile.era
    if spec.blob and not era.blob_size:
        return (f"producer {spec.name!r}: 'blob': a {era} kernel hands over FDTs only "
                "(non-FDT blobs came with 7.1)")
    if spec.fail_abort and not era.notifiers:
        what = "has no abort (writing 0 to finalize is EINVAL)" if era.finalize else \
            "has no finalize and no abort"
        return f"producer {spec.name!r}: 'fail_abort': a {era} kernel {what}"
    return ""
