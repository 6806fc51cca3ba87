"""The kernel's KHO test module, lib/test_kho.c as in Linux 6.17, built in (test_kho).

On a boot without an incoming "kho_test" sub-tree (kho_test_save) it allocates folios of random
orders up to max_mem (2 * PAGE_SIZE << MAX_PAGE_ORDER: 8 MiB with 4 KiB pages), fills them with
random bytes, checksums them with csum_partial, builds its sub-FDT in its own folio, preserves
every data folio right away, and registers a notifier that on FINALIZE preserves the FDT folio
and adds the sub-tree. After a kexec that handed it over (kho_test_restore) it checks the
sub-FDT, restores every folio, recomputes the checksum and, only when everything matches, logs
"test_kho: KHO restore succeeded". 6.17 has no failure line, returns without saving anew (so the
boot after a restore hands no kho_test over) and never unpreserves anything on an error path.
"""

from __future__ import annotations

import errno
import struct

from khofs.engine.driver import DriverContext
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoOut, KhoSerialization
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
U64 = struct.Struct("<Q")  # phys_addr_t


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
    """lib/test_kho.c: kho_test_init and its notifier block (kho_test_nb, priority 0)."""

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
        self.kho: KhoOut | None = None
        self.restored: bool | None = None  # after a kexec: whether the restore succeeded

    def init(self, ctx: DriverContext) -> int:
        """kho_test_init: restore what came in, else generate, preserve and register."""
        err, fdt_phys = (ctx.kho_in.retrieve_subtree(KHO_TEST_FDT)
                         if ctx.kho_in is not None else (-errno.ENOENT, 0))
        if not err:
            err = self._restore(ctx, fdt_phys)
            self.restored = not err
            return err
        if err != -errno.ENOENT:
            ctx.log.warn(f"{PR_FMT}failed to retrieve {KHO_TEST_FDT} FDT: {err}")
            return err
        return self._save(ctx)

    # --- saving (the first kernel) ------------------------------------------------------

    def _save(self, ctx: DriverContext) -> int:
        """kho_test_save. Its error paths free only the folio pointer array: data folios
        stay allocated and whatever was preserved stays preserved, as in 6.17."""
        arch = ctx.machine.arch
        page = arch.page_size
        max_mem = self.max_mem if self.max_mem is not None else default_max_mem(arch)
        max_mem = -(-max_mem // page) * page  # PAGE_ALIGN
        array_size = (max_mem // page) * U64.size  # kvmalloc_array(max_nr, sizeof(folio *))
        array = ctx.slab.kmalloc(array_size) if array_size else 0
        if array_size and not array:
            return -errno.ENOMEM
        self.kho = ctx.kho
        err = self._generate_data(ctx, max_mem)
        if not err:
            err = self._prepare_fdt(ctx)
        if not err:
            err = ctx.kho.register_notifier(self)
            if err:
                ctx.pages.free_pages(self.fdt_phys, self.fdt_order)  # err_free_fdt
        if err and array:
            ctx.slab.kfree(array, array_size)  # err_free_folios: kvfree(folios)
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

    def _prepare_fdt(self, ctx: DriverContext) -> int:
        """kho_test_prepare_fdt: the sub-FDT in a folio of get_order(fdt_size), built in a
        buffer of exactly fdt_size bytes. Errors are OR-ed as the C code does."""
        page = ctx.mem.page_size
        fdt_size = len(self.folios) * U64.size + page
        self.fdt_order = get_order(fdt_size, page)
        self.fdt_phys = ctx.pages.alloc_pages(self.fdt_order)
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
        err |= self._save_data(ctx, fdt)
        err |= fdt.end_node()
        err |= fdt.finish()
        ctx.mem.write(self.fdt_phys, bytes(buf))
        if err:
            ctx.pages.free_pages(self.fdt_phys, self.fdt_order)  # folio_put(state->fdt)
        return err

    def _save_data(self, ctx: DriverContext, fdt: FdtSw) -> int:
        """kho_test_save_data: node "data" with folios_info as a placeholder filled in after,
        then every data folio preserved (the loop stops at the first failure)."""
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

    # --- restoring (the kernel after kexec) -----------------------------------------------

    def _restore(self, ctx: DriverContext, fdt_phys: int) -> int:
        """kho_test_restore: every check fails with EINVAL and logs nothing."""
        root = ctx.mem.parse_fdt(fdt_phys)
        if root is None or root.check_compatible(KHO_TEST_COMPAT):
            return -errno.EINVAL
        magic = root.getprop("magic")
        if magic is None or len(magic) != U32.size or U32.unpack(magic)[0] != KHO_TEST_MAGIC:
            return -errno.EINVAL
        err = self._restore_data(ctx, root)
        if err:
            return err
        ctx.log.info(f"{PR_FMT}KHO restore succeeded")
        return 0

    def _restore_data(self, ctx: DriverContext, root: FdtNode) -> int:
        """kho_test_restore_data: restore each folio (stopping at the first that is missing
        or of another order), checksum it and put it; compare with the saved checksum."""
        node = root.subnode("data")  # fdt_path_offset(fdt, "/data")
        props = node.props if node is not None else {}
        nr_raw, old_csum = props.get("nr_folios"), props.get("csum")
        if nr_raw is None or len(nr_raw) != U32.size:
            return -errno.EINVAL
        if old_csum is None or len(old_csum) != U32.size:
            return -errno.EINVAL
        nr = U32.unpack(nr_raw)[0]
        info = props.get("folios_info")
        if info is None or len(info) != U64.size * nr:
            return -errno.EINVAL
        arch = ctx.machine.arch
        page = arch.page_size
        csum = 0
        for (value,) in U64.iter_unpack(info):
            order, phys = value & (page - 1), value & ~(page - 1)
            if self._restore_folio(ctx, phys) != order:
                break
            data = ctx.mem.read(phys, (page << order) & 0xFFFFFFFF)  # unsigned int size
            csum = csum_partial(arch, data, csum)
            self._folio_put(ctx, phys, order)
        return 0 if csum == U32.unpack(old_csum)[0] else -errno.EINVAL

    @staticmethod
    def _restore_folio(ctx: DriverContext, phys: int) -> int | None:
        """kho_restore_folio: the folio's order, or None when there is none."""
        return ctx.kho_in.restore_folio(phys) if ctx.kho_in is not None else None

    @staticmethod
    def _folio_put(ctx: DriverContext, phys: int, order: int) -> None:
        """folio_put of a restored folio: back to the page allocator. khofs frees only a
        block the handover really preserved at that order (and only once), so an edited
        folios_info cannot hand out memory that is in use."""
        kho_in = ctx.kho_in
        if kho_in is not None and kho_in.orders.get(phys) == order:
            del kho_in.orders[phys]
            ctx.pages.free_pages(phys, order)
