"""The kernel's KHO test module, lib/test_kho.c, built in (test_kho), as each era has it.

6.16 profile (lib/test_kho.c of 6.17): on a boot without an incoming "kho_test" sub-tree
(kho_test_save) it allocates folios of random orders up to max_mem (2 * PAGE_SIZE <<
MAX_PAGE_ORDER: 8 MiB with 4 KiB pages), fills them with random bytes, checksums them with
csum_partial, builds its sub-FDT in its own folio, preserves every data folio right away, and
registers a notifier that on FINALIZE preserves the FDT folio and adds the sub-tree. After a
kexec that handed it over (kho_test_restore) it checks the sub-FDT, restores every folio,
recomputes the checksum and, only when everything matches, logs "test_kho: KHO restore
succeeded". 6.17 has no failure line, returns without saving anew (so the
boot after a restore hands no kho_test over) and never unpreserves anything on an error path.

6.18: `folios_info` becomes a 16-byte struct kho_vmalloc describing a vmalloc'ed array of the
same `phys | order` values, preserved (kho_preserve_vmalloc) while the FDT is built; the
module returns at once when KHO is off; the rest is as 6.17. 6.19 and 7.0: no notifier: at
module init it preserves the FDT folio, then the vmalloc array and every folio (undoing all
of it on an error), builds the FDT and calls kho_add_subtree; after a restore it logs
"KHO restore succeeded" or "KHO restore failed". 7.1 on: the same, with the blob size.
"""

from __future__ import annotations

import errno
import struct

from khofs.engine.abi.kexec_handover import KHO_VMALLOC, U64
from khofs.engine.driver import DriverContext
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoOut, KhoSerialization
from khofs.engine.kho_out_live import KhoOutLive
from khofs.engine.kho_vmalloc import VmArea, kho_restore_vmalloc, vfree, vmalloc
from khofs.engine.machine import Arch
from khofs.engine.notifier import NOTIFY_BAD, NOTIFY_DONE
from khofs.engine.slab import get_order
from khofs.lib.fdt_ro import FdtNode
from khofs.lib.libfdt import FdtSw

PR_FMT = "test_kho: "  # pr_fmt: KBUILD_MODNAME ": " for lib/test_kho.c
KHO_TEST_MAGIC = 0x4B484F21  # "KHO!"
KHO_TEST_FDT = "kho_test"
KHO_TEST_COMPAT = "kho-test-v1"
U32 = struct.Struct("<I")  # unsigned int and __wsum, as the CPU stores them (little-endian)


def default_max_mem(arch: Arch) -> int:
    """The max_mem module parameter's default: (PAGE_SIZE << MAX_PAGE_ORDER) * 2."""
    return (arch.page_size << arch.max_page_order) * 2


# --- csum_partial -------------------------------------------------------------------------
#
# Both implementations add the buffer as little-endian words with end-around carry (a
# ones'-complement sum) and fold the result, so their value depends only on the buffer read as
# one little-endian integer modulo 2^k - 1, except that a sum of nothing but zeros stays 0.
# This holds for the whole-page, page-aligned buffers test_kho hands them.


def _end_around(total: int, modulus: int) -> int:
    """An end-around-carry sum of non-negative parts: 0 only when every part is 0."""
    return 0 if total == 0 else (total - 1) % modulus + 1


def csum_partial(arch: Arch, data: bytes, wsum: int) -> int:
    """csum_partial(buff, len, sum) for a page-aligned buffer: the 32-bit __wsum.

    x86-64 (arch/x86/lib/csum-partial_64.c) adds 64-bit words into a 64-bit accumulator that
    starts at `sum`, then folds it to 32 bits (csum_finalize_sum). arm64 uses the generic
    csum_partial (lib/checksum.c) around its own do_csum (arch/arm64/lib/csum.c), which folds
    the buffer alone down to 16 bits; `sum` is then added with one end-around carry."""
    value = int.from_bytes(data, "little")
    if arch.name == "x86_64":
        return _end_around(wsum + value, 0xFFFFFFFF)
    result = wsum + _end_around(value, 0xFFFF)
    return result - 0xFFFFFFFF if result > 0xFFFFFFFF else result


# --- the module ---------------------------------------------------------------------------


class KhoTest:
    """lib/test_kho.c: kho_test_init and (6.16, 6.18) its notifier block (kho_test_nb,
    priority 0)."""

    name = KHO_TEST_FDT
    priority = 0

    def __init__(self, max_mem: int | None = None) -> None:
        if max_mem is not None and max_mem < 0:
            raise ValueError(f"test_kho.max_mem must not be negative, got {max_mem}")
        self.max_mem = max_mem  # the module parameter; None: its default for the arch
        self.folios: list[tuple[int, int]] = []  # state->folios: (phys, order)
        self.csum = 0
        self.fdt_phys = 0  # state->fdt
        self.fdt_order = 0
        self.folios_info: VmArea | None = None  # 6.18 on: the vmalloc'ed array
        self.folios_info_phys = b""  # 6.18 on: its struct kho_vmalloc
        self.nr_folios_preserved = 0
        self.kho: KhoOut | None = None
        self.restored: bool | None = None  # after a kexec: whether the restore succeeded
        self.why = ""  # khofs's note of why a restore failed (the module says nothing)

    def init(self, ctx: DriverContext) -> int:
        """kho_test_init: restore what came in, else generate, preserve and register (6.16,
        6.18) or add the sub-tree (6.19 on). 6.18 on first returns if KHO is off; 6.19 on
        logs the restore's outcome either way, 6.17 and 6.18 only a success."""
        era = ctx.profile.era
        if era.vmalloc and not ctx.kho_enabled:
            return 0
        err, fdt_phys = (ctx.kho_in.retrieve_subtree(KHO_TEST_FDT)
                         if ctx.kho_in is not None else (-errno.ENOENT, 0))
        if not err:
            err = self._restore(ctx, fdt_phys)
            self.restored = not err
            if not err:
                ctx.log.info(f"{PR_FMT}KHO restore succeeded")
            elif era.unpreserve:
                ctx.log.err(f"{PR_FMT}KHO restore failed")
            return err
        if err != -errno.ENOENT:
            ctx.log.warn(f"{PR_FMT}failed to retrieve {KHO_TEST_FDT} FDT: {err}")
            return err
        return self._save(ctx)

    # --- saving (the first kernel) ------------------------------------------------------

    def _save(self, ctx: DriverContext) -> int:
        """kho_test_save. Its error paths free only the folio pointer array: data folios
        stay allocated and whatever was preserved stays preserved, up to 6.18."""
        arch = ctx.machine.arch
        page = arch.page_size
        max_mem = self.max_mem if self.max_mem is not None else default_max_mem(arch)
        max_mem = -(-max_mem // page) * page  # PAGE_ALIGN
        array_size = (max_mem // page) * U64.size  # kvmalloc_array(max_nr, sizeof(folio *))
        array = ctx.slab.kmalloc(array_size) if array_size else 0
        if array_size and not array:
            return -errno.ENOMEM
        err = self._generate_data(ctx, max_mem)
        if not err:
            kho = ctx.kho
            if isinstance(kho, KhoOut):
                err = self._save_notifier(ctx, kho)
            else:
                assert isinstance(kho, KhoOutLive)
                err = self._preserve(ctx, kho)
        if err and array:
            ctx.slab.kfree(array, array_size)  # err_free_folios: kvfree(folios)
        return err

    def _save_notifier(self, ctx: DriverContext, kho: KhoOut) -> int:
        """6.17 and 6.18: the FDT (which preserves the data), then the notifier."""
        self.kho = kho
        err = self._prepare_fdt(ctx)
        if not err:
            err = kho.register_notifier(self)
            if err:
                ctx.pages.free_pages(self.fdt_phys, self.fdt_order)  # err_free_fdt
        return err

    def _generate_data(self, ctx: DriverContext, max_mem: int) -> int:
        """kho_test_generate_data: random orders, random bytes, a running checksum."""
        arch = ctx.machine.arch
        page = arch.page_size
        nr_page_orders = arch.max_page_order + 1
        alloc_size = 0
        csum = 0
        while alloc_size < max_mem:
            order = ctx.rng.getrandbits(32) % nr_page_orders  # get_random_u32()
            # get_order() rounds up: step one order down so that max_mem is never exceeded
            if alloc_size + (page << order) > max_mem:
                order = get_order(max_mem - alloc_size, page)
                if order:
                    order -= 1
            size = page << order
            phys = ctx.pages.alloc_pages(order)  # GFP_KERNEL | __GFP_NORETRY
            if not phys:
                for folio, folio_order in self.folios:
                    ctx.pages.free_pages(folio, folio_order)
                self.folios = []
                return -errno.ENOMEM
            self.folios.append((phys, order))
            data = ctx.rng.randbytes(size)  # get_random_bytes()
            ctx.mem.write(phys, data)
            csum = csum_partial(arch, data, csum)
            alloc_size += size
        self.csum = csum
        return 0

    def _alloc_fdt_folio(self, ctx: DriverContext) -> int:
        """The sub-FDT's folio: get_order(fdt_size) pages, fdt_size = nr_folios * 8 +
        PAGE_SIZE (fdt_phys stays 0 when the allocation fails). Returns fdt_size."""
        page = ctx.mem.page_size
        fdt_size = len(self.folios) * U64.size + page
        self.fdt_order = get_order(fdt_size, page)
        self.fdt_phys = ctx.pages.alloc_pages(self.fdt_order)
        return fdt_size

    def _prepare_fdt(self, ctx: DriverContext) -> int:
        """kho_test_prepare_fdt (6.17, 6.18): the sub-FDT in a folio of get_order(fdt_size),
        built in a buffer of exactly fdt_size bytes, its data node made by save_data. Errors
        are OR-ed as the C code does."""
        fdt_size = self._alloc_fdt_folio(ctx)
        if not self.fdt_phys:
            return -errno.ENOMEM
        buf = bytearray(fdt_size)  # folio_alloc does not zero; fdt_create zeroes fdt_size
        fdt = FdtSw(buf)
        err = 0
        err |= fdt.create(fdt_size)
        err |= fdt.finish_reservemap()
        err |= fdt.begin_node("")
        err |= fdt.property("compatible", KHO_TEST_COMPAT.encode() + b"\0")
        err |= fdt.property("magic", U32.pack(KHO_TEST_MAGIC))
        if ctx.profile.era.vmalloc:
            err |= self._save_data_vmalloc(ctx, fdt)
        else:
            err |= self._save_data(ctx, fdt)
        err |= fdt.end_node()
        err |= fdt.finish()
        ctx.mem.write(self.fdt_phys, bytes(buf))
        if err:
            ctx.pages.free_pages(self.fdt_phys, self.fdt_order)  # folio_put(state->fdt)
        return err

    def _save_data(self, ctx: DriverContext, fdt: FdtSw) -> int:
        """kho_test_save_data (6.17): node "data" with folios_info as a placeholder filled
        in after, then every data folio preserved (the loop stops at the first failure)."""
        nr = len(self.folios)
        err = 0
        err |= fdt.begin_node("data")
        err |= fdt.property("nr_folios", U32.pack(nr))
        perr, info_off = fdt.property_placeholder("folios_info", nr * U64.size)
        err |= perr
        err |= fdt.property("csum", U32.pack(self.csum))
        err |= fdt.end_node()
        if err:
            return err
        for i, (phys, order) in enumerate(self.folios):
            U64.pack_into(fdt.buf, info_off + i * U64.size, phys | order)
            err = ctx.kho.preserve_folio(phys, order)
            if err:
                break
        return err

    def _save_data_vmalloc(self, ctx: DriverContext, fdt: FdtSw) -> int:
        """kho_test_save_data (6.18): the vmalloc'ed folios_info preserved first, then filled
        and each folio preserved (stopping at the first failure, which is still OR-ed into
        the FDT calls that follow); the array is freed on failure (__free(kvfree)) but its
        preservation stays."""
        area = vmalloc(ctx.pages, len(self.folios) * U64.size, ctx.mem.page_size)
        if area is None:
            return -errno.ENOMEM
        err, desc = ctx.kho.preserve_vmalloc(area)
        if err:
            vfree(ctx.pages, area)
            return err
        for i, (phys, order) in enumerate(self.folios):
            area.write(ctx.mem, i * U64.size, U64.pack(phys | order))
            err = ctx.kho.preserve_folio(phys, order)
            if err:
                break
        err |= fdt.begin_node("data")
        err |= fdt.property("nr_folios", U32.pack(len(self.folios)))
        err |= fdt.property("folios_info", desc or bytes(KHO_VMALLOC.size))
        err |= fdt.property("csum", U32.pack(self.csum))
        err |= fdt.end_node()
        if err:
            vfree(ctx.pages, area)
        else:
            self.folios_info, self.folios_info_phys = area, desc
        return err

    def notifier_call(self, action: int, data: object) -> int:
        """kho_test_notifier: FINALIZE preserves the FDT folio and adds the sub-tree; any
        failure is a bare NOTIFY_BAD, which the finalize reports as EPERM."""
        if action == KEXEC_KHO_ABORT:
            return NOTIFY_DONE
        if action != KEXEC_KHO_FINALIZE:
            return NOTIFY_BAD
        assert isinstance(data, KhoSerialization) and self.kho is not None
        err = 0
        err |= self.kho.preserve_folio(self.fdt_phys, self.fdt_order)
        err |= self.kho.add_subtree(data, KHO_TEST_FDT, self.fdt_phys)
        return NOTIFY_BAD if err else NOTIFY_DONE

    # --- 6.19 on: everything at module init ---------------------------------------------

    def _preserve(self, ctx: DriverContext, kho: KhoOutLive) -> int:
        """kho_test_preserve: the FDT folio (preserved first), the data, the FDT, the
        sub-tree; each failure undoes what came before it."""
        fdt_size = self._alloc_fdt_folio(ctx)
        if not self.fdt_phys:
            return -errno.ENOMEM
        err = kho.preserve_folio(self.fdt_phys, self.fdt_order)
        if not err:
            err = self._preserve_data(ctx, kho)
            if not err:
                err = self._prepare_fdt_live(ctx, fdt_size)
                if not err:
                    size = ctx.mem.fdt_totalsize(self.fdt_phys)
                    err = kho.add_subtree(KHO_TEST_FDT, self.fdt_phys, size)
                if err:
                    self._unpreserve_data(ctx, kho)
            if err:
                kho.unpreserve_folio(self.fdt_phys, self.fdt_order)
        if err:
            ctx.pages.free_pages(self.fdt_phys, self.fdt_order)
        return err

    def _preserve_data(self, ctx: DriverContext, kho: KhoOutLive) -> int:
        """kho_test_preserve_data: the vmalloc'ed folios_info and every folio; a failing
        folio undoes them all (kho_test_unpreserve_data)."""
        area = vmalloc(ctx.pages, len(self.folios) * U64.size, ctx.mem.page_size)
        if area is None:
            return -errno.ENOMEM
        err, desc = kho.preserve_vmalloc(area)
        if err:
            vfree(ctx.pages, area)
            return err
        self.folios_info, self.folios_info_phys = area, desc
        for i, (phys, order) in enumerate(self.folios):
            area.write(ctx.mem, i * U64.size, U64.pack(phys | order))
            err = kho.preserve_folio(phys, order)
            if err:
                self._unpreserve_data(ctx, kho)
                return err
            self.nr_folios_preserved += 1
        return 0

    def _unpreserve_data(self, ctx: DriverContext, kho: KhoOutLive) -> None:
        """kho_test_unpreserve_data."""
        for phys, order in self.folios[:self.nr_folios_preserved]:
            kho.unpreserve_folio(phys, order)
        self.nr_folios_preserved = 0
        if self.folios_info is not None:
            kho.unpreserve_vmalloc(self.folios_info_phys)
            vfree(ctx.pages, self.folios_info)
            self.folios_info = None

    def _prepare_fdt_live(self, ctx: DriverContext, fdt_size: int) -> int:
        """kho_test_prepare_fdt (6.19 on): straight into the folio, the data node inline."""
        buf = bytearray(fdt_size)
        fdt = FdtSw(buf)
        err = fdt.create(fdt_size)
        err |= fdt.finish_reservemap()
        err |= fdt.begin_node("")
        err |= fdt.property("compatible", KHO_TEST_COMPAT.encode() + b"\0")
        err |= fdt.property("magic", U32.pack(KHO_TEST_MAGIC))
        err |= fdt.begin_node("data")
        err |= fdt.property("nr_folios", U32.pack(len(self.folios)))
        err |= fdt.property("folios_info", self.folios_info_phys)
        err |= fdt.property("csum", U32.pack(self.csum))
        err |= fdt.end_node()
        err |= fdt.end_node()
        err |= fdt.finish()
        ctx.mem.write(self.fdt_phys, bytes(buf))
        return err

    # --- restoring (the kernel after kexec) -----------------------------------------------

    def _restore(self, ctx: DriverContext, fdt_phys: int) -> int:
        """kho_test_restore: every check fails with EINVAL and logs nothing (`why` keeps
        the reason for khofs's own reports)."""
        root = ctx.mem.parse_fdt(fdt_phys)
        if root is None or root.check_compatible(KHO_TEST_COMPAT):
            return self._fail("its sub-FDT is not a kho-test-v1 FDT")
        magic = root.getprop("magic")
        if magic is None or len(magic) != U32.size or U32.unpack(magic)[0] != KHO_TEST_MAGIC:
            return self._fail("its magic is wrong")
        return self._restore_data(ctx, root)

    def _fail(self, why: str) -> int:
        self.why = why
        return -errno.EINVAL

    def _restore_data(self, ctx: DriverContext, root: FdtNode) -> int:
        """kho_test_restore_data: restore each folio (stopping at the first that is missing
        or of another order), checksum it and put it; compare with the saved checksum.
        `folios_info` is the array itself (6.17) or its struct kho_vmalloc (6.18 on)."""
        node = root.subnode("data")  # fdt_path_offset(fdt, "/data")
        props = node.props if node is not None else {}
        nr_raw, old_csum = props.get("nr_folios"), props.get("csum")
        if nr_raw is None or len(nr_raw) != U32.size:
            return self._fail("its nr_folios is missing")
        if old_csum is None or len(old_csum) != U32.size:
            return self._fail("its csum is missing")
        nr = U32.unpack(nr_raw)[0]
        info = props.get("folios_info")
        if ctx.profile.era.vmalloc:
            return self._restore_vmalloc_data(ctx, nr, info, U32.unpack(old_csum)[0])
        if info is None or len(info) != U64.size * nr:
            return self._fail(f"folios_info is {len(info or b'')} bytes, this kernel wants "
                              f"{U64.size * nr} (8 per folio)")
        csum = self._restore_folios(ctx, [v for (v,) in U64.iter_unpack(info)])
        return self._checksum(csum, U32.unpack(old_csum)[0])

    def _checksum(self, csum: int, old_csum: int) -> int:
        if csum == old_csum:
            return 0
        return self._fail(f"the checksum is 0x{csum:08x}, not 0x{old_csum:08x}")

    def _restore_vmalloc_data(self, ctx: DriverContext, nr: int, info: bytes | None,
                              old_csum: int) -> int:
        """6.18 on: the array comes back with kho_restore_vmalloc and is vfree'd after."""
        if info is None or len(info) != KHO_VMALLOC.size or ctx.kho_in is None:
            return self._fail(f"folios_info is {len(info or b'')} bytes, this kernel wants a "
                              f"{KHO_VMALLOC.size}-byte struct kho_vmalloc")
        area = kho_restore_vmalloc(ctx.kho_in, ctx.mem, ctx.pages, info,
                                   each_page=ctx.profile.era.unpreserve)
        if area is None:
            return self._fail("kho_restore_vmalloc failed")
        page = ctx.mem.page_size
        count = min(nr, len(area.pages) * page // U64.size)  # past the area: a fault
        values = [v for (v,) in U64.iter_unpack(area.read(ctx.mem, 0, count * U64.size))]
        csum = self._restore_folios(ctx, values)
        vfree(ctx.pages, area)
        return self._checksum(csum, old_csum)

    def _restore_folios(self, ctx: DriverContext, values: list[int]) -> int:
        """The restore loop: each `phys | order`, until one is missing or of another order."""
        arch = ctx.machine.arch
        page = arch.page_size
        csum = 0
        for value in values:
            order, phys = value & (page - 1), value & ~(page - 1)
            if self._restore_folio(ctx, phys) != order:
                break
            data = ctx.mem.read(phys, (page << order) & 0xFFFFFFFF)  # unsigned int size
            csum = csum_partial(arch, data, csum)
            self._folio_put(ctx, phys, order)
        return csum

    @staticmethod
    def _restore_folio(ctx: DriverContext, phys: int) -> int | None:
        """kho_restore_folio: the folio's order, or None when there is none."""
        return ctx.kho_in.restore_folio(phys) if ctx.kho_in is not None else None

    @staticmethod
    def _folio_put(ctx: DriverContext, phys: int, order: int) -> None:
        """folio_put of a restored folio: back to the page allocator (khofs frees only a
        block the handover really preserved at that order, and only once)."""
        if ctx.kho_in is not None and ctx.kho_in.folio_put(phys, order):
            ctx.pages.free_pages(phys, order)
