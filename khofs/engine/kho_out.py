"""The outgoing half of Kexec HandOver, profile 6.16 (kernel/kexec_handover.c).

Producers register on a blocking notifier chain; writing 1 to `kho/out/finalize` builds the
root FDT in one page with libfdt's sequential writer, runs the FINALIZE chain (producers call
`add_subtree` and preserve memory), serialises the memory map and publishes `kho/out/fdt`;
writing 0 runs the ABORT chain and removes the blobs. Errors are negative errnos throughout,
and libfdt results are OR-ed together exactly as the kernel does (`err |= fdt_...`).
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field

from khofs.debugfs.file import BlobWrapper, SeqShow, SimpleAttr, create_blob
from khofs.debugfs.inode import Debugfs, Dentry
from khofs.engine.abi.kexec_handover import (
    KHO_FDT_COMPATIBLE,
    PROP_PRESERVED_MEMORY_MAP,
    PROP_SUB_FDT,
    U64,
)
from khofs.engine.kho_in import FdtDebugfs, KhoIn
from khofs.engine.memtrack import MemTrack
from khofs.engine.notifier import BlockingNotifierHead, NotifierBlock, notifier_to_errno
from khofs.engine.physmem import PhysMem, PhysRange
from khofs.engine.printk import Printk
from khofs.engine.scratch import KhoScratch
from khofs.engine.slab import Kmalloc, PageSource
from khofs.lib.libfdt import FDT_HEADER_SIZE, FdtSw, fdt_totalsize

KEXEC_KHO_FINALIZE = 0
KEXEC_KHO_ABORT = 1

# kho_finalize writes the root FDT anew at every finalize. FdtSw keeps all its state in its
# buffer, so each run of libfdt calls is a function of the page alone: the head (fdt_create up
# to the preserved-memory-map placeholder) is the same page every time, and the tail
# (fdt_end_node, fdt_finish) gives the same page for the same page. Both are kept and copied
# instead of written again: the same bytes, less work per `echo 1 > finalize`.
_HEADS: dict[int, tuple[bytes, int, int]] = {}  # page size -> (page, err, placeholder offset)


def _root_fdt_head(fdt: FdtSw) -> tuple[int, int]:
    """kho_finalize's fdt_create .. fdt_property_placeholder: (err, the value's offset)."""
    head = _HEADS.get(len(fdt.buf))
    if head is not None:
        fdt.buf[:] = head[0]
        return head[1], head[2]
    err = 0
    err |= fdt.create()
    err |= fdt.finish_reservemap()
    err |= fdt.begin_node("")
    err |= fdt.property_string("compatible", KHO_FDT_COMPATIBLE)
    # The placeholder keeps every property ahead of the sub-nodes producers add.
    perr, map_off = fdt.property_placeholder(PROP_PRESERVED_MEMORY_MAP, 8)
    err |= perr
    _HEADS[len(fdt.buf)] = (bytes(fdt.buf), err, map_off)
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


class KhoOut:
    """struct kho_out and the functions around it."""

    def __init__(self, ctx: KhoContext, scratch: list[KhoScratch]) -> None:
        self.ctx = ctx
        self.scratch = scratch
        self.chain_head = BlockingNotifierHead()
        self.lock = threading.Lock()  # kho_out.lock: protects KHO FDT finalization
        self.finalized = False
        self.track = MemTrack(ctx.mem, ctx.slab)
        self.dir: Dentry | None = None
        self.debugfs_root: Dentry | None = None
        self.ser: KhoSerialization | None = None
        self._tail: tuple[bytes, bytes, int] | None = None  # the last tail: page in, out, err

    # --- registration and preservation (the exported API) -----------------------------

    def register_notifier(self, nb: NotifierBlock) -> int:
        """register_kho_notifier."""
        return self.chain_head.register(nb)

    def unregister_notifier(self, nb: NotifierBlock) -> int:
        return self.chain_head.unregister(nb)

    def preserve_folio(self, phys: int, order: int) -> int:
        """kho_preserve_folio: keep a 2^order block (its order too) across kexec."""
        if self.finalized:
            return -errno.EBUSY
        return self.track.preserve_order(phys // self.ctx.mem.page_size, order)

    def preserve_phys(self, phys: int, size: int) -> int:
        """kho_preserve_phys: EBUSY while finalized, EINVAL unless page aligned."""
        if self.finalized:
            return -errno.EBUSY
        page = self.ctx.mem.page_size
        if phys % page or size % page:
            return -errno.EINVAL
        return self.track.preserve_phys(phys, size)

    def add_subtree(self, ser: KhoSerialization, name: str, fdt_phys: int) -> int:
        """kho_add_subtree: a node `name` with the sub-FDT's address, and its blob."""
        err = 0
        err |= ser.fdt.begin_node(name)
        err |= ser.fdt.property(PROP_SUB_FDT, U64.pack(fdt_phys))
        err |= ser.fdt.end_node()
        if err:
            return err
        return self._debugfs_fdt_add(ser.fdt_list, ser.sub_fdt_dir, name, fdt_phys)

    # --- debugfs ------------------------------------------------------------------------

    def _debugfs_fdt_add(self, fdt_list: list[FdtDebugfs], parent: Dentry | None, name: str,
                         fdt_phys: int) -> int:
        """kho_debugfs_fdt_add: a 0400 blob of fdt_totalsize bytes over the live memory."""
        size = fdt_totalsize(self.ctx.mem.read(fdt_phys, FDT_HEADER_SIZE))
        wrapper = BlobWrapper(PhysRange(self.ctx.mem, fdt_phys), size)
        dentry = create_blob(self.ctx.debugfs, name, 0o400, parent, wrapper)
        if isinstance(dentry, int):
            return dentry
        fdt_list.insert(0, FdtDebugfs(dentry))  # list_add: newest first
        return 0

    def _update_debugfs_fdt(self) -> int:
        """kho_out_update_debugfs_fdt: publish `fdt`, or remove every published blob."""
        assert self.ser is not None
        if self.finalized:
            return self._debugfs_fdt_add(self.ser.fdt_list, self.dir, "fdt", self.ser.fdt_phys)
        for entry in self.ser.fdt_list:
            self.ctx.debugfs.remove(entry.dentry)
        self.ser.fdt_list.clear()
        return 0

    def scratch_show(self, attr: str) -> str:
        """scratch_phys_show / scratch_len_show: one "0x%llx" line per entry."""
        return "".join(f"0x{getattr(s, attr):x}\n" for s in self.scratch)

    def in_debugfs_init(self, kho_in: KhoIn) -> int:
        """kho_in_debugfs_init: kho/in/sub_fdts, kho/in/fdt, then a blob per root sub-node
        with an 8-byte `fdt` property (others are skipped, with a warning for a bad length)."""
        fs, log = self.ctx.debugfs, self.ctx.log
        in_dir = fs.create_dir("in", self.debugfs_root)
        if isinstance(in_dir, int):
            return in_dir
        sub_fdts = fs.create_dir("sub_fdts", in_dir)
        err = sub_fdts if isinstance(sub_fdts, int) else self._debugfs_fdt_add(
            kho_in.fdt_list, in_dir, "fdt", kho_in.fdt_phys)
        if err:
            fs.remove(in_dir)
            return err
        assert not isinstance(sub_fdts, int)
        for child in kho_in.root.children:
            prop = child.getprop(PROP_SUB_FDT)
            if prop is None:
                continue
            if len(prop) != 8:
                log.warn(f"KHO: node `{child.name}`'s prop `fdt` has invalid length: "
                         f"{len(prop)}")
                continue
            phys = U64.unpack(prop)[0]
            err = self._debugfs_fdt_add(kho_in.fdt_list, sub_fdts, child.name, phys)
            if err:
                log.warn(f"KHO: failed to add fdt `{child.name}` to debugfs: {err}")
        return 0

    def debugfs_init(self) -> int:
        """kho_init's debugfs part with kho_out_debugfs_init, in the kernel's order."""
        fs = self.ctx.debugfs
        root = fs.create_dir("kho", None)
        if isinstance(root, int):
            return -errno.ENOENT
        out = fs.create_dir("out", root)
        if isinstance(out, int):
            return -errno.ENOMEM
        entries = [
            fs.create_dir("sub_fdts", out),
            fs.create_file("scratch_phys", 0o400, out,
                           SeqShow(lambda: self.scratch_show("addr"))),
            fs.create_file("scratch_len", 0o400, out, SeqShow(lambda: self.scratch_show("size"))),
            fs.create_file("finalize", 0o600, out, SimpleAttr(self.finalize_get,
                                                              self.finalize_set)),
        ]
        if any(isinstance(e, int) for e in entries):
            fs.remove(out)
            return -errno.ENOENT
        sub_fdts = entries[0]
        assert not isinstance(sub_fdts, int)
        self.debugfs_root, self.dir = root, out
        assert self.ser is not None
        self.ser.sub_fdt_dir = sub_fdts
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
        if err or kho_in is None:
            return err
        err = self.in_debugfs_init(kho_in)
        if err:
            self.ctx.log.err(f"KHO: failed exposing handover FDT in debugfs: {err}")
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
        err, map_off = _root_fdt_head(fdt)
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

    def finalize_get(self) -> tuple[int, int]:
        """kho_out_finalize_get."""
        with self.lock:
            return 0, int(self.finalized)

    def finalize_set(self, value: int) -> int:
        """kho_out_finalize_set: ENOENT/EEXIST when nothing changes, else finalize or abort.

        A failed finalize leaves the sub_fdts blobs it created (they are only removed by a
        successful abort), so a retry that adds the same name fails with EEXIST: the 6.16
        stuck-retry quirk.
        """
        val = bool(value)
        with self.lock:
            if val == self.finalized:
                return -errno.EEXIST if self.finalized else -errno.ENOENT
            ret = self._finalize() if val else self._abort()
            if ret:
                return ret
            self.finalized = val
            return self._update_debugfs_fdt()
