"""The outgoing half of KHO from 7.1 ("Make KHO Stateless"; kernel/liveupdate/
kexec_handover.c at the 7.1 merge): the radix tree from boot, no finalize, kexec-metadata.

kho_init (fs_initcall) kzallocs the radix tree's root page (not preserved), allocates the
root FDT with kho_alloc_preserve (its preservation is the tree's first entry), builds kho/ and
kho/out/ (no `finalize` any more), the root FDT (`compatible` "kho-v3" in 7.1, "kho-v4" from
7.2; `preserved-memory-map` = the tree's root, final from boot), then kexec-metadata: after a
KHO boot it reads the previous kernel's ("KHO: exec from: RELEASE (count N)"), and always adds
its own 73-byte blob (`kho/out/sub_fdts/kexec-metadata`) before `kho/out/fdt` is published,
so that file is 233 bytes. Sub-trees are `preserved-data` and `blob-size` (blob-size listed
first: fdt_setprop inserts a new property first), and any bytes may be a blob. 7.4 calls the
scratch areas bootmem (bootmem_phys, bootmem_len).
"""

from __future__ import annotations

import errno

from khofs.engine.abi.kexec_handover import PROP_SUB_TREE, PROP_SUB_TREE_SIZE, U64
from khofs.engine.abi.kexec_metadata import (
    KHO_KEXEC_METADATA,
    KHO_KEXEC_METADATA_VERSION,
    KHO_METADATA_NODE_NAME,
)
from khofs.engine.era import NEW_UTS_LEN
from khofs.engine.kho_in import KhoIn
from khofs.engine.kho_out import KhoContext
from khofs.engine.kho_out_live import KhoOutLive
from khofs.engine.kho_radix import KhoRadixTree
from khofs.engine.memtrack import split_blocks
from khofs.engine.scratch import KhoScratch


class KhoOutRadix(KhoOutLive):
    """struct kho_out from 7.1: the root FDT and the radix tree."""

    def __init__(self, ctx: KhoContext, scratch: list[KhoScratch]) -> None:
        super().__init__(ctx, scratch)
        self.tree = KhoRadixTree(ctx.mem, ctx.pages)
        self.metadata_phys = 0

    # --- preservation -------------------------------------------------------------------

    def preserve_folio(self, phys: int, order: int) -> int:
        """kho_preserve_folio: kho_radix_add_page."""
        if self.scratch_overlap(phys, self.ctx.mem.page_size << order):
            return -errno.EINVAL
        return self.tree.add_page(phys // self.ctx.mem.page_size, order)

    def unpreserve_folio(self, phys: int, order: int) -> None:
        self.tree.del_page(phys // self.ctx.mem.page_size, order)

    def preserve_pages(self, phys: int, nr_pages: int) -> int:
        """kho_preserve_pages: maximal aligned blocks, each shrunk until it lies on one
        NUMA node; on failure the blocks added so far are deleted again."""
        page = self.ctx.mem.page_size
        start = pfn = phys // page
        end = pfn + nr_pages
        if self.scratch_overlap(start * page, nr_pages * page):
            return -errno.EINVAL
        while pfn < end:
            order = split_blocks(pfn, end)[0][1]
            nid_of = self.ctx.nid_of
            while order and nid_of(pfn * page) != nid_of((pfn + (1 << order) - 1) * page):
                order -= 1
            err = self.tree.add_page(pfn, order)
            if err:
                self.unpreserve_pages(start * page, pfn - start)
                return err
            pfn += 1 << order
        return 0

    def unpreserve_pages(self, phys: int, nr_pages: int) -> None:
        """__kho_unpreserve: kho_radix_del_page for each maximal aligned block."""
        pfn = phys // self.ctx.mem.page_size
        for p, order in split_blocks(pfn, pfn + nr_pages):
            self.tree.del_page(p, order)

    def preserved_blocks(self) -> list[tuple[int, int]]:
        return self.tree.preserved_blocks()

    # --- the root FDT -------------------------------------------------------------------

    def _sub_tree_props(self, phys: int, size: int) -> list[tuple[str, bytes]]:
        return [(PROP_SUB_TREE, U64.pack(phys)), (PROP_SUB_TREE_SIZE, U64.pack(size))]

    def _map_root(self) -> int:
        return self.tree.root

    # --- kho_init -----------------------------------------------------------------------

    def init(self, kho_in: KhoIn | None = None) -> int:
        """kho_init: the tree's root first (kzalloc, not preserved), then as 6.19 with
        kexec-metadata before anything is published; a failure frees the root again."""
        root = self.ctx.slab.kmalloc(self.ctx.mem.page_size)
        if not root:
            return -errno.ENOMEM
        self.ctx.mem.zero(root, self.ctx.mem.page_size)
        self.tree.root = root
        err = super().init(kho_in)
        if err:
            self.ctx.slab.kfree(root, self.ctx.mem.page_size)
            self.tree.root = 0
        return err

    def _early_subtrees(self, kho_in: KhoIn | None) -> int:
        """kho_kexec_metadata_init: read the incoming metadata, then hand our own on; a
        failure fails kho_init."""
        if kho_in is not None:
            kho_in_kexec_metadata(kho_in)
        err = self._out_kexec_metadata(kho_in)
        if err:
            self.ctx.log.warn(f"KHO: failed to initialize kexec-metadata subtree: {err}")
        return err

    def _out_kexec_metadata(self, kho_in: KhoIn | None) -> int:
        """kho_out_kexec_metadata: version 1, this kernel's release, the count so far + 1."""
        md = self.alloc_preserve(KHO_KEXEC_METADATA.size)
        if md < 0:
            return md
        release = self.profile.release.encode()[:NEW_UTS_LEN]  # strscpy: truncated, NUL
        count = (kho_in.kexec_count if kho_in is not None else 0) + 1
        self.ctx.mem.write(md, KHO_KEXEC_METADATA.pack(KHO_KEXEC_METADATA_VERSION, release,
                                                       count & 0xFFFFFFFF))
        err = self.add_subtree(KHO_METADATA_NODE_NAME, md, KHO_KEXEC_METADATA.size)
        if err:
            self.unpreserve_free(md, 0)
            return err
        self.metadata_phys = md
        return 0


def kho_in_kexec_metadata(kho_in: KhoIn) -> None:
    """kho_in_kexec_metadata: the previous kernel's release and count, if it left any."""
    log = kho_in.log
    err, phys, size = kho_in.retrieve_blob(KHO_METADATA_NODE_NAME)
    if err:
        return  # the previous kernel exported none: fine
    if size < 4:
        log.warn(f"KHO: kexec-metadata blob too small ({size} bytes)")
        return
    version = int.from_bytes(kho_in.mem.read(phys, 4), "little")
    if version != KHO_KEXEC_METADATA_VERSION:
        log.warn(f"KHO: kexec-metadata version {version} not supported (expected "
                 f"{KHO_KEXEC_METADATA_VERSION})")
        return
    if size < KHO_KEXEC_METADATA.size:
        log.warn(f"KHO: kexec-metadata blob too small for v{version} ({size} < "
                 f"{KHO_KEXEC_METADATA.size})")
        return
    _version, release, count = KHO_KEXEC_METADATA.unpack(
        kho_in.mem.read(phys, KHO_KEXEC_METADATA.size))
    kho_in.kexec_count = count
    # strscpy into char[65]: up to the first NUL, at most 64 characters
    kho_in.previous_release = release[:NEW_UTS_LEN].split(b"\0", 1)[0].decode(
        errors="replace")
    log.info(f"KHO: exec from: {kho_in.previous_release} (count {count})")
