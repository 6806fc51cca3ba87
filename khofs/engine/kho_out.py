"""The outgoing half of Kexec HandOver: what every era shares, and the notifier eras 6.16 and
6.18 (kernel/kexec_handover.c).

KhoOutBase is the debugfs tree (kho/out and, after a KHO boot, kho/in) with each era's names
and texts. KhoOut is 6.16 and 6.18: producers register on a blocking notifier chain; writing 1
to `kho/out/finalize` builds the root FDT in one page with libfdt's sequential writer, runs the
FINALIZE chain (producers call `add_subtree` and preserve memory), serialises the memory map
and publishes `kho/out/fdt`; writing 0 runs the ABORT chain and removes the blobs. Errors are
negative errnos throughout, and libfdt results are OR-ed together exactly as the kernel does
(`err |= fdt_...`). 6.18 differs inside: PAGE_SIZE bitmaps from the page allocator,
kho_preserve_pages instead of kho_preserve_phys, vmalloc preservation, and kexec hands
nothing over unless finalized (kho_fill_kimage). The later eras are kho_out_live (6.19, 7.0)
and kho_out_radix (7.1 on).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from khofs.debugfs.file import BlobWrapper, SeqShow, SimpleAttr, create_blob
from khofs.debugfs.inode import Debugfs, Dentry
from khofs.engine.abi.kexec_handover import (
    PROP_PRESERVED_MEMORY_MAP,
    PROP_SUB_FDT,
    PROP_SUB_TREE,
    PROP_SUB_TREE_SIZE,
    U64,
)
from khofs.engine.era import DEFAULT_PROFILE, ERA_6_19, Profile
from khofs.engine.kho_in import FdtDebugfs, KhoIn
from khofs.engine.kho_vmalloc import VmArea, kho_preserve_vmalloc
from khofs.engine.memtrack import MemTrack
from khofs.engine.notifier import BlockingNotifierHead, NotifierBlock, notifier_to_errno
from khofs.engine.physmem import PhysMem, PhysRange
from khofs.engine.printk import Printk, errname
from khofs.engine.scratch import KhoScratch
from khofs.engine.slab import Kmalloc, PageSource
from khofs.lib.libfdt import FdtSw

KEXEC_KHO_FINALIZE = 0
KEXEC_KHO_ABORT = 1

# kho_finalize writes the root FDT anew at every finalize. FdtSw keeps all its state in its
# buffer, so each run of libfdt calls is a function of the page alone: the head (fdt_create up
# to the preserved-memory-map placeholder) is the same page every time, and the tail
# (fdt_end_node, fdt_finish) gives the same page for the same page. Both are kept and copied
# instead of written again: the same bytes, less work per `echo 1 > finalize`.
# (page size, compatible) -> (page, err, placeholder offset)
_HEADS: dict[tuple[int, str], tuple[bytes, int, int]] = {}


def _root_fdt_head(fdt: FdtSw, compatible: str) -> tuple[int, int]:
    """kho_finalize's fdt_create .. fdt_property_placeholder: (err, the value's offset)."""
    key = (len(fdt.buf), compatible)
    head = _HEADS.get(key)
    if head is not None:
        fdt.buf[:] = head[0]
        return head[1], head[2]
    err = 0
    err |= fdt.create()
    err |= fdt.finish_reservemap()
    err |= fdt.begin_node("")
    err |= fdt.property_string("compatible", compatible)
    # The placeholder keeps every property ahead of the sub-nodes producers add.
    perr, map_off = fdt.property_placeholder(PROP_PRESERVED_MEMORY_MAP, 8)
    err |= perr
    _HEADS[key] = (bytes(fdt.buf), err, map_off)
    return err, map_off


@dataclass
class KhoSerialization:
    """struct kho_serialization: what FINALIZE notifiers get as their data."""

    fdt_phys: int
    fdt: FdtSw
    sub_fdt_dir: Dentry | None = None
    fdt_list: list[FdtDebugfs] = field(default_factory=list)
    preserved_mem_map: list[int] = field(default_factory=list)


@dataclass
class KhoContext:
    """The rest of the kernel that KHO uses: memory, allocators, debugfs and the log."""

    mem: PhysMem
    pages: PageSource
    slab: Kmalloc
    debugfs: Debugfs
    log: Printk
    profile: Profile = DEFAULT_PROFILE
    nid_of: Callable[[int], int] = lambda phys: 0  # pfn_to_nid, by address
    max_page_order: int = 10  # MAX_PAGE_ORDER


class KhoOutBase:
    """struct kho_out's debugfs side (kho_debugfs_init, kho_out_debugfs_init,
    kho_in_debugfs_init) in every era."""

    def __init__(self, ctx: KhoContext, scratch: list[KhoScratch]) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.era = ctx.profile.era
        self.scratch = scratch
        self.lock = threading.Lock()  # kho_out.lock
        self.dir: Dentry | None = None
        self.sub_fdt_dir: Dentry | None = None
        self.debugfs_root: Dentry | None = None

    # --- what every era answers -------------------------------------------------------------

    @property
    def finalized(self) -> bool:
        return False

    def fill_kimage(self) -> int:
        """kho_fill_kimage: the root FDT page the image hands over, or 0 for none."""
        raise NotImplementedError

    def preserved_blocks(self) -> list[tuple[int, int]]:
        """(phys, order) of every block preserved now."""
        raise NotImplementedError

    def init(self, kho_in: KhoIn | None = None) -> int:
        """kho_init."""
        raise NotImplementedError

    def scratch_overlap(self, phys: int, size: int) -> bool:
        """kho_scratch_overlap (CONFIG_KEXEC_HANDOVER_DEBUG, 6.18 on; else `return false`):
        whether [phys, phys + size) meets a scratch area of the current table. The callers
        WARN and return -EINVAL."""
        return self.profile.debug and any(s.addr < phys + size and phys < s.addr + s.size
                                          for s in self.scratch)

    # --- preservation: the exported API every era has (signatures differ across eras
    # only where the kernel's do: see the subclasses) -----------------------------------

    def preserve_folio(self, phys: int, order: int) -> int:
        """kho_preserve_folio: keep a 2^order block (and its order) across kexec."""
        raise NotImplementedError

    def preserve_pages(self, phys: int, nr_pages: int) -> int:
        """kho_preserve_pages (6.18 on): nr_pages pages from the page holding phys."""
        raise NotImplementedError

    def unpreserve_pages(self, phys: int, nr_pages: int) -> None:
        """kho_unpreserve_pages (exported from 6.19; 6.18's internal __kho_unpreserve)."""
        raise NotImplementedError

    def preserve_vmalloc(self, area: VmArea) -> tuple[int, bytes]:
        """kho_preserve_vmalloc (6.18 on): (0, struct kho_vmalloc) or (errno, b"")."""
        raise NotImplementedError

    # --- debugfs ------------------------------------------------------------------------

    def debugfs_blob_add(self, fdt_list: list[FdtDebugfs], parent: Dentry | None, name: str,
                         phys: int, size: int | None = None) -> int:
        """kho_debugfs_fdt_add / kho_debugfs_blob_add: a 0400 blob over the live memory,
        of `size` bytes (7.1's blob size), else of the FDT's totalsize at this moment."""
        if size is None:
            size = self.ctx.mem.fdt_totalsize(phys)
        wrapper = BlobWrapper(PhysRange(self.ctx.mem, phys), size)
        dentry = create_blob(self.ctx.debugfs, name, 0o400, parent, wrapper)
        if isinstance(dentry, int):
            return dentry
        fdt_list.insert(0, FdtDebugfs(dentry, phys))  # list_add: newest first
        return 0

    def scratch_show(self, attr: str) -> str:
        """scratch_phys_show / scratch_len_show: one "0x%llx" line per entry."""
        return "".join(f"0x{getattr(s, attr):x}\n" for s in self.scratch)

    def scratch_names(self) -> tuple[str, str]:
        """The two show files: scratch_phys and scratch_len, bootmem_* from 7.4."""
        return ("bootmem_phys", "bootmem_len") if self.era.bootmem else \
            ("scratch_phys", "scratch_len")

    def debugfs_init(self) -> int:
        """kho_debugfs_init and kho_out_debugfs_init, in the kernel's order: kho/, out/,
        out/sub_fdts, the scratch show files, `finalize` where the era has it."""
        fs = self.ctx.debugfs
        root = fs.create_dir("kho", None)
        if isinstance(root, int):
            return -errno.ENOENT
        out = fs.create_dir("out", root)
        if isinstance(out, int):
            return -errno.ENOMEM
        phys_name, len_name = self.scratch_names()
        entries = [
            fs.create_dir("sub_fdts", out),
            fs.create_file(phys_name, 0o400, out, SeqShow(lambda: self.scratch_show("addr"))),
            fs.create_file(len_name, 0o400, out, SeqShow(lambda: self.scratch_show("size"))),
        ]
        if self.era.finalize:
            entries.append(fs.create_file("finalize", 0o600, out,
                                          SimpleAttr(self.finalize_get, self.finalize_set)))
        if any(isinstance(e, int) for e in entries):
            fs.remove(out)
            return -errno.ENOENT
        sub_fdts = entries[0]
        assert not isinstance(sub_fdts, int)
        self.debugfs_root, self.dir, self.sub_fdt_dir = root, out, sub_fdts
        return 0

    def finalize_get(self) -> tuple[int, int]:
        """kho_out_finalize_get."""
        with self.lock:
            return 0, int(self.finalized)

    def finalize_set(self, value: int) -> int:
        raise NotImplementedError

    def in_debugfs_init(self, kho_in: KhoIn) -> int:
        """kho_in_debugfs_init: kho/in/sub_fdts, kho/in/fdt, then a blob per root sub-node
        (others are skipped, with a warning for a bad property). Failing leaves no kho/in
        and a line, and does not stop the boot."""
        fs, log = self.ctx.debugfs, self.ctx.log
        in_dir = fs.create_dir("in", self.debugfs_root)
        if isinstance(in_dir, int):
            self._in_failed(in_dir)
            return in_dir
        sub_fdts = fs.create_dir("sub_fdts", in_dir)
        err = sub_fdts if isinstance(sub_fdts, int) else self.debugfs_blob_add(
            kho_in.fdt_list, in_dir, "fdt", kho_in.fdt_phys)
        if err:
            fs.remove(in_dir)
            self._in_failed(err)
            return err
        assert not isinstance(sub_fdts, int)
        for child in kho_in.root.children:
            found = self._in_child(child.name, child.props, log)
            if found is None:
                continue
            phys, size = found
            err = self.debugfs_blob_add(kho_in.fdt_list, sub_fdts, child.name, phys, size)
            if err:
                log.warn(self._in_add_failed(child.name, err))
        return 0

    def _in_child(self, name: str, props: dict[str, bytes],
                  log: Printk) -> tuple[int, int | None] | None:
        """A child's blob address and size (None: the FDT's own), or None to skip it."""
        era = self.era
        prop = props.get(PROP_SUB_TREE if era.blob_size else PROP_SUB_FDT)
        if prop is None:
            return None
        if len(prop) != 8:
            if era.blob_size:
                log.warn(f"KHO: node {name} prop {PROP_SUB_TREE} has invalid length: "
                         f"{len(prop)}")
            elif era.at_least(ERA_6_19):
                log.warn(f"KHO: node {name} prop fdt has invalid length: {len(prop)}")
            else:
                log.warn(f"KHO: node `{name}`'s prop `fdt` has invalid length: {len(prop)}")
            return None
        phys = U64.unpack(prop)[0]
        if not era.blob_size:
            return phys, None
        size = props.get(PROP_SUB_TREE_SIZE)
        if size is None or len(size) != 8:
            log.warn(f"KHO: node {name} missing or invalid {PROP_SUB_TREE_SIZE} property")
            return None
        return phys, U64.unpack(size)[0]

    def _in_add_failed(self, name: str, err: int) -> str:
        if self.era.blob_size:
            return f"KHO: failed to add blob {name} to debugfs: {errname(err)}"
        if self.era.at_least(ERA_6_19):
            return f"KHO: failed to add fdt {name} to debugfs: {errname(err)}"
        return f"KHO: failed to add fdt `{name}` to debugfs: {err}"

    def _in_failed(self, err: int) -> None:
        """6.16 and 6.18 print this from kho_init, later eras from kho_in_debugfs_init."""
        shown = errname(err) if self.era.at_least(ERA_6_19) else str(err)
        self.ctx.log.err(f"KHO: failed exposing handover FDT in debugfs: {shown}")


class KhoOut(KhoOutBase):
    """struct kho_out of 6.16 and 6.18: the notifier chain and the finalize state machine."""

    def __init__(self, ctx: KhoContext, scratch: list[KhoScratch]) -> None:
        super().__init__(ctx, scratch)
        self.chain_head = BlockingNotifierHead()
        self._finalized = False
        pages = ctx.pages if ctx.profile.era.preserve_pages else None
        self.track = MemTrack(ctx.mem, ctx.slab, ctx.profile.era.bitmap_bytes, pages,
                              stop_at_missing=pages is not None)
        self.ser: KhoSerialization | None = None
        self._tail: tuple[bytes, bytes, int] | None = None  # the last tail: page in, out, err

    @property
    def finalized(self) -> bool:
        return self._finalized

    @finalized.setter
    def finalized(self, value: bool) -> None:
        self._finalized = value

    # --- registration and preservation (the exported API) -----------------------------

    def register_notifier(self, nb: NotifierBlock) -> int:
        """register_kho_notifier."""
        return self.chain_head.register(nb)

    def unregister_notifier(self, nb: NotifierBlock) -> int:
        return self.chain_head.unregister(nb)

    def preserve_folio(self, phys: int, order: int) -> int:
        """kho_preserve_folio: keep a 2^order block (its order too) across kexec; EBUSY
        while finalized (6.18: after the debug build's overlap check)."""
        if self.scratch_overlap(phys, self.ctx.mem.page_size << order):
            return -errno.EINVAL
        if self._finalized:
            return -errno.EBUSY
        return self.track.preserve_order(phys // self.ctx.mem.page_size, order)

    def preserve_phys(self, phys: int, size: int) -> int:
        """kho_preserve_phys (6.16): EBUSY while finalized, EINVAL unless page aligned."""
        if self._finalized:
            return -errno.EBUSY
        page = self.ctx.mem.page_size
        if phys % page or size % page:
            return -errno.EINVAL
        return self.track.preserve_phys(phys, size)

    def preserve_pages(self, phys: int, nr_pages: int) -> int:
        """kho_preserve_pages (6.18): the nr_pages pages from the page holding phys, in
        maximal aligned blocks, rolled back on failure; EBUSY while finalized (checked for
        each block by __kho_preserve_order, so nothing is set)."""
        if self.scratch_overlap(phys - phys % self.ctx.mem.page_size,
                                nr_pages * self.ctx.mem.page_size):
            return -errno.EINVAL
        if self._finalized:
            return -errno.EBUSY
        pfn = phys // self.ctx.mem.page_size
        return self.track.preserve_range(pfn, pfn + nr_pages)

    def unpreserve_pages(self, phys: int, nr_pages: int) -> None:
        """__kho_unpreserve over the range (6.18 has no exported unpreserve: vmalloc's
        error path uses this)."""
        pfn = phys // self.ctx.mem.page_size
        self.track.unpreserve(pfn, pfn + nr_pages)

    def preserve_vmalloc(self, area: VmArea) -> tuple[int, bytes]:
        """kho_preserve_vmalloc (6.18): (0, struct kho_vmalloc) or (errno, b"")."""
        return kho_preserve_vmalloc(self, self.ctx.mem, self.ctx.pages, area,
                                    enomem_on_chunk_failure=False)

    def preserved_blocks(self) -> list[tuple[int, int]]:
        return self.track.preserved_blocks()

    def add_subtree(self, ser: KhoSerialization, name: str, fdt_phys: int) -> int:
        """kho_add_subtree: a node `name` with the sub-FDT's address, and its blob."""
        err = 0
        err |= ser.fdt.begin_node(name)
        err |= ser.fdt.property(PROP_SUB_FDT, U64.pack(fdt_phys))
        err |= ser.fdt.end_node()
        if err:
            return err
        return self.debugfs_blob_add(ser.fdt_list, ser.sub_fdt_dir, name, fdt_phys)

    def fill_kimage(self) -> int:
        """kho_fill_kimage: the root FDT page, finalized or not in 6.16 (as at its merge);
        6.18 hands nothing over unless finalized."""
        if self.ser is None or (self.era.handover_needs_finalize and not self._finalized):
            return 0
        return self.ser.fdt_phys

    # --- debugfs ------------------------------------------------------------------------

    def _update_debugfs_fdt(self) -> int:
        """kho_out_update_debugfs_fdt: publish `fdt`, or remove every published blob."""
        assert self.ser is not None
        if self._finalized:
            return self.debugfs_blob_add(self.ser.fdt_list, self.dir, "fdt", self.ser.fdt_phys)
        for entry in self.ser.fdt_list:
            self.ctx.debugfs.remove(entry.dentry)
        self.ser.fdt_list.clear()
        return 0

    def init(self, kho_in: KhoIn | None = None) -> int:
        """kho_init (late_initcall): the root FDT page, the debugfs tree, and kho/in when
        there is a handover (failing to show it does not stop the boot)."""
        page = self.ctx.pages.alloc_pages(0)
        if not page:
            return -errno.ENOMEM
        view = self.ctx.mem.page_view(page)
        self.ser = KhoSerialization(page, FdtSw(view))
        err = self.debugfs_init()
        if err:
            return err
        self.ser.sub_fdt_dir = self.sub_fdt_dir
        if kho_in is not None:
            self.in_debugfs_init(kho_in)
        return 0

    # --- finalize and abort ------------------------------------------------------------

    def _abort(self) -> int:
        """kho_abort: forget every preservation, drop the map, run the ABORT chain."""
        assert self.ser is not None
        self.track.forget()
        if self.ser.preserved_mem_map:
            self.track.free_chunks(self.ser.preserved_mem_map)
            self.ser.preserved_mem_map = []
        err = notifier_to_errno(self.chain_head.call_chain(KEXEC_KHO_ABORT, None))
        if err:
            self.ctx.log.err(f"KHO: Failed to abort KHO finalization: {err}")
        return err

    def _finalize(self) -> int:
        """kho_finalize."""
        ser = self.ser
        assert ser is not None
        fdt = ser.fdt
        err, map_off = _root_fdt_head(fdt, self.profile.compatible)
        if not err:
            err = self.preserve_folio(ser.fdt_phys, 0)
        if not err:
            err = notifier_to_errno(self.chain_head.call_chain(KEXEC_KHO_FINALIZE, ser))
        if not err:
            err = self._serialize_map(ser, map_off)
        if not err:
            err = self._root_fdt_tail(fdt)
        if err:
            self.ctx.log.err(f"KHO: Failed to convert KHO state tree: {err}")
            self._abort()
        return err

    def _root_fdt_tail(self, fdt: FdtSw) -> int:
        """kho_finalize's `err |= fdt_end_node(); err |= fdt_finish()`: last time's page when
        the page is last time's (nothing changed), else written."""
        before = bytes(fdt.buf)
        if self._tail is not None and self._tail[0] == before:
            fdt.buf[:] = self._tail[1]
            return self._tail[2]
        err = 0
        err |= fdt.end_node()
        err |= fdt.finish()
        self._tail = (before, bytes(fdt.buf), err)
        return err

    def _serialize_map(self, ser: KhoSerialization, map_off: int) -> int:
        """kho_mem_serialize, then the map's address into the placeholder."""
        first, chunks = self.track.serialize()
        if first < 0:
            return first
        ser.preserved_mem_map = chunks
        self.ctx.mem.write(ser.fdt_phys + map_off, U64.pack(first))
        return 0

    def finalize_set(self, value: int) -> int:
        """kho_out_finalize_set: ENOENT/EEXIST when nothing changes, else finalize or abort.

        A failed finalize leaves the sub_fdts blobs it created (they are only removed by a
        successful abort), so a retry that adds the same name fails with EEXIST: the 6.16
        stuck-retry quirk.
        """
        val = bool(value)
        with self.lock:
            if val == self._finalized:
                return -errno.EEXIST if self._finalized else -errno.ENOENT
            ret = self._finalize() if val else self._abort()
            if ret:
                return ret
            self._finalized = val
            return self._update_debugfs_fdt()
