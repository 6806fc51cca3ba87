"""The outgoing half of KHO in 6.19 and 7.0 (kernel/liveupdate/kexec_handover.c and
kexec_handover_debugfs.c): no notifiers, a root FDT that lives from boot.

kho_init (an fs_initcall) allocates the root FDT page with kho_alloc_preserve, so the tracker
always holds it, builds `kho/`, `kho/out/` with its files, then the root FDT with libfdt's
sequential writer: `compatible = "kho-v1"`, `preserved-memory-map = 0`; on a cold boot it
publishes `kho/out/fdt`, a blob whose size is fdt_totalsize *at that moment* (152 bytes) and
never changes, however the tree grows. kho_add_subtree edits the tree in place with libfdt's
read-write functions (fdt_open_into, fdt_add_subnode, fdt_setprop, fdt_pack) and publishes
`kho/out/sub_fdts/NAME` at once. Preservation is allowed at any time. Writing a non-zero value
to `finalize` serialises the tracker into chunks and writes their address over the map's
value in place (every write again, freeing the previous chunks); 0 is EINVAL. kexec hands the
root FDT over whether finalized or not, and a next kernel of 6.19 on refuses a map of 0.
"""

from __future__ import annotations

import errno

from khofs.engine.abi.kexec_handover import (
    PROP_PRESERVED_MEMORY_MAP,
    PROP_SUB_FDT,
    U64,
)
from khofs.engine.kho_in import FdtDebugfs, KhoIn
from khofs.engine.kho_out import KhoContext, KhoOutBase
from khofs.engine.kho_vmalloc import VmArea, kho_preserve_vmalloc, kho_unpreserve_vmalloc
from khofs.engine.memtrack import MemTrack
from khofs.engine.scratch import KhoScratch
from khofs.engine.slab import get_order
from khofs.lib.fdt_rw import FdtRw
from khofs.lib.libfdt import FDT_ERR_EXISTS, FdtSw


class KhoOutLive(KhoOutBase):
    """struct kho_out of 6.19 and 7.0: the root FDT page, the tracker, the debugfs list."""

    def __init__(self, ctx: KhoContext, scratch: list[KhoScratch]) -> None:
        super().__init__(ctx, scratch)
        self.track = MemTrack(ctx.mem, ctx.slab, ctx.profile.era.bitmap_bytes or 4096,
                              ctx.pages, stop_at_missing=False)
        self.fdt_phys = 0  # kho_out.fdt
        self._finalized = False
        self.fdt_list: list[FdtDebugfs] = []  # kho_out.dbg.fdt_list
        self.chunks: list[int] = []  # the map the root FDT points at now

    @property
    def finalized(self) -> bool:
        return self._finalized

    # --- preservation (the exported API) -----------------------------------------------

    def preserve_folio(self, phys: int, order: int) -> int:
        """kho_preserve_folio: at any time (no EBUSY from 6.19)."""
        if self.scratch_overlap(phys, self.ctx.mem.page_size << order):
            return -errno.EINVAL
        return self.track.preserve_order(phys // self.ctx.mem.page_size, order)

    def unpreserve_folio(self, phys: int, order: int) -> None:
        """kho_unpreserve_folio: pfn and order must be a preserved folio's (else a WARN)."""
        self.track.unpreserve_order(phys // self.ctx.mem.page_size, order)

    def preserve_pages(self, phys: int, nr_pages: int) -> int:
        """kho_preserve_pages: maximal aligned blocks, rolled back on failure."""
        pfn = phys // self.ctx.mem.page_size
        if self.scratch_overlap(pfn * self.ctx.mem.page_size, nr_pages * self.ctx.mem.page_size):
            return -errno.EINVAL
        return self.track.preserve_range(pfn, pfn + nr_pages)

    def unpreserve_pages(self, phys: int, nr_pages: int) -> None:
        """kho_unpreserve_pages: the blocks kho_preserve_pages made of the same range."""
        pfn = phys // self.ctx.mem.page_size
        self.track.unpreserve(pfn, pfn + nr_pages)

    def preserve_vmalloc(self, area: VmArea) -> tuple[int, bytes]:
        return kho_preserve_vmalloc(self, self.ctx.mem, self.ctx.pages, area)

    def unpreserve_vmalloc(self, desc: bytes) -> None:
        """kho_unpreserve_vmalloc."""
        kho_unpreserve_vmalloc(self, self.ctx.mem, self.ctx.pages, desc)

    def alloc_preserve(self, size: int) -> int:
        """kho_alloc_preserve: a zeroed folio of get_order(size), preserved: its address,
        or -EINVAL (size 0), -E2BIG (above MAX_PAGE_ORDER), -ENOMEM, or the preserve's
        error (the folio is freed)."""
        if not size:
            return -errno.EINVAL
        page = self.ctx.mem.page_size
        order = get_order(size, page)
        if order > self.max_page_order:
            return -errno.E2BIG
        phys = self.ctx.pages.alloc_pages(order)
        if not phys:
            return -errno.ENOMEM
        self.ctx.mem.zero(phys, page << order)
        err = self.preserve_folio(phys, order)
        if err:
            self.ctx.pages.free_pages(phys, order)
            return err
        return phys

    def unpreserve_free(self, phys: int, order: int) -> None:
        """kho_unpreserve_free."""
        self.unpreserve_folio(phys, order)
        self.ctx.pages.free_pages(phys, order)

    @property
    def max_page_order(self) -> int:
        return self.ctx.max_page_order

    def preserved_blocks(self) -> list[tuple[int, int]]:
        return self.track.preserved_blocks()

    # --- the root FDT -------------------------------------------------------------------

    def _root(self) -> FdtRw:
        """The root FDT's page, edited in place."""
        return FdtRw(self.ctx.mem.page_view(self.fdt_phys))

    def _sub_tree_props(self, phys: int, size: int) -> list[tuple[str, bytes]]:
        """The properties a sub-tree node gets, in the order kho_add_subtree sets them."""
        return [(PROP_SUB_FDT, U64.pack(phys))]

    def add_subtree(self, name: str, phys: int, size: int = 0) -> int:
        """kho_add_subtree: under kho_out.lock, open the root into its page, add node
        `name` (-EEXIST if there is one, -ENOMEM for any other failure), set its properties
        (6.19 and 7.0 return a failing setprop's raw libfdt code and leave the node; the
        later fix deletes it and returns -ENOMEM: 7.1 on), publish the blob (its failure only
        WARNs), and fdt_pack whatever happened."""
        with self.lock:
            root = self._root()
            if root.open_into(self.ctx.mem.page_size) < 0:
                return -errno.ENOMEM
            err = self._add_node(root, name, phys, size)
            root.pack()
            return err

    def _add_node(self, root: FdtRw, name: str, phys: int, size: int) -> int:
        off = root.add_subnode(0, name)
        if off < 0:
            return -errno.EEXIST if off == -FDT_ERR_EXISTS else -errno.ENOMEM
        for prop, value in self._sub_tree_props(phys, size):
            err = root.setprop(off, prop, value)
            if err < 0:
                if not self.era.blob_size:
                    return err
                root.del_node(off)
                return -errno.ENOMEM
        self.debugfs_blob_add(self.fdt_list, self.sub_fdt_dir, name, phys,
                              size if self.era.blob_size else None)
        return 0

    def remove_subtree(self, phys: int) -> None:
        """kho_remove_subtree: delete the first sub-node whose address is phys, and its
        blob; pack."""
        prop_name = self._sub_tree_props(0, 0)[0][0]
        with self.lock:
            root = self._root()
            if root.open_into(self.ctx.mem.page_size) < 0:
                return
            off = root.first_subnode(0)
            while off >= 0:
                value = root.getprop(off, prop_name)
                if isinstance(value, bytes) and len(value) == 8 and \
                        U64.unpack(value)[0] == phys:
                    root.del_node(off)
                    self._debugfs_remove(phys)
                    break
                off = root.next_subnode(off)
            root.pack()

    def _debugfs_remove(self, phys: int) -> None:
        """kho_debugfs_fdt_remove: the first published blob over phys."""
        for entry in self.fdt_list:
            if entry.phys == phys:
                self.ctx.debugfs.remove(entry.dentry)
                self.fdt_list.remove(entry)
                return

    def _fdt_setup(self) -> int:
        """kho_out_fdt_setup: the empty root, sequentially, in the whole page."""
        fdt = FdtSw(self.ctx.mem.page_view(self.fdt_phys))
        err = fdt.create(self.ctx.mem.page_size)
        err |= fdt.finish_reservemap()
        err |= fdt.begin_node("")
        err |= fdt.property_string("compatible", self.profile.compatible)
        err |= fdt.property(PROP_PRESERVED_MEMORY_MAP, U64.pack(self._map_root()))
        err |= fdt.end_node()
        err |= fdt.finish()
        return err

    def _map_root(self) -> int:
        """What `preserved-memory-map` starts as: 0 until the first finalize."""
        return 0

    def fill_kimage(self) -> int:
        """kho_fill_kimage: the root FDT, finalized or not."""
        return self.fdt_phys

    # --- kho_init -----------------------------------------------------------------------

    def init(self, kho_in: KhoIn | None = None) -> int:
        """kho_init (fs_initcall): the preserved root page, debugfs, the empty root FDT;
        then kho/in after a KHO boot, else `kho/out/fdt` of the tree's size now. A failure
        unpreserves and frees the page (debugfs entries made stay) and disables KHO."""
        phys = self.alloc_preserve(self.ctx.mem.page_size)
        if phys < 0:
            return phys
        self.fdt_phys = phys
        err = self.debugfs_init() or self._fdt_setup() or self._early_subtrees(kho_in)
        if err:
            self.unpreserve_free(phys, 0)
            self.fdt_phys = 0
            return err
        if kho_in is not None:
            self.in_debugfs_init(kho_in)
            return 0
        self.debugfs_blob_add(self.fdt_list, self.dir, "fdt", phys)
        return 0

    def _early_subtrees(self, kho_in: KhoIn | None) -> int:
        """What kho_init itself adds before publishing anything (7.1: kexec-metadata)."""
        return 0

    # --- finalize -----------------------------------------------------------------------

    def finalize_set(self, value: int) -> int:
        """kho_out_finalize_set: 0 is EINVAL (abort is gone); anything else is
        kho_finalize."""
        if not value:
            return -errno.EINVAL
        return self.finalize()

    def finalize(self) -> int:
        """kho_finalize: serialise the tracker now (a failure leaves map and flag as they
        were), then kho_update_memory_map: free the previous chunks, write the new first
        chunk's address over the property's value in place."""
        with self.lock:
            first, chunks = self.track.serialize()
            if first < 0:
                return first
            off, _len = self._root().getprop_w(0, PROP_PRESERVED_MEMORY_MAP)
            if off >= 0:  # put_unaligned through fdt_getprop_w's pointer
                self.track.free_chunks(self.chunks)
                self.ctx.mem.write(self.fdt_phys + off, U64.pack(first))
            self.chunks = chunks
            self._finalized = True
            return 0
