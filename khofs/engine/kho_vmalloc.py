"""vmalloc areas and their preservation across kexec (6.18 on: kho_preserve_vmalloc,
kho_unpreserve_vmalloc, kho_restore_vmalloc in kernel/kexec_handover.c).

An area is a list of pages (of 2^order each, order 0 for a plain vmalloc). Preserving it writes
a linked list of chunk pages, each `{u64 next; u64 phys[KHO_VMALLOC_SIZE]}` with the phys[]
zero-terminated, one entry per 2^order pages; every chunk page and every area run is preserved
with kho_preserve_pages. What the caller hands over is the 16-byte `struct kho_vmalloc`
{first chunk, total_pages, flags, order}. The next kernel restores each run and each chunk
(kho_restore_pages, which needs the 'KHOP' stamp), frees the chunks and maps the pages again.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Protocol

from khofs.engine.abi.kexec_handover import (
    KHO_VMALLOC,
    KHO_VMALLOC_ALLOC,
    KHO_VMALLOC_HUGE_VMAP,
    U64,
    kho_vmalloc_size,
)
from khofs.engine.physmem import PhysMem
from khofs.engine.slab import PageSource

# include/linux/vmalloc.h
VM_ALLOC = 0x00000002
VM_MAP = 0x00000004
VM_ALLOW_HUGE_VMAP = 0x00000400
KHO_VMALLOC_SUPPORTED_FLAGS = VM_ALLOC | VM_ALLOW_HUGE_VMAP


@dataclass
class VmArea:
    """struct vm_struct as KHO sees it: the pages mapped, in order, and how."""

    pages: list[int]  # physical address of each page (vm->pages[i])
    order: int = 0  # get_vm_area_page_order
    flags: int = VM_ALLOC

    def read(self, mem: PhysMem, off: int, size: int) -> bytes:
        """The area's bytes [off, off + size) through its mapping."""
        page = mem.page_size
        out = bytearray()
        while size > 0:
            idx, inner = divmod(off, page)
            n = min(size, page - inner)
            out += mem.read(self.pages[idx] + inner, n)
            off, size = off + n, size - n
        return bytes(out)

    def write(self, mem: PhysMem, off: int, data: bytes) -> None:
        page = mem.page_size
        pos = 0
        while pos < len(data):
            idx, inner = divmod(off + pos, page)
            n = min(len(data) - pos, page - inner)
            mem.write(self.pages[idx] + inner, data[pos:pos + n])
            pos += n


def vmalloc(pages: PageSource, size: int, page_size: int) -> VmArea | None:
    """vmalloc (vmalloc_array too): order-0 pages, one at a time; None for size 0 or when
    memory runs out (what it took goes back)."""
    if not size:
        return None
    area = VmArea([])
    for _ in range(-(-size // page_size)):
        phys = pages.alloc_pages(0)
        if not phys:
            vfree(pages, area)
            return None
        area.pages.append(phys)
    return area


def vfree(pages: PageSource, area: VmArea) -> None:
    for phys in area.pages[::1 << area.order]:
        pages.free_pages(phys, area.order)
    area.pages = []


class PagePreserver(Protocol):
    """What vmalloc preservation needs of the running kernel's KHO."""

    def preserve_pages(self, phys: int, nr_pages: int) -> int: ...

    def unpreserve_pages(self, phys: int, nr_pages: int) -> None: ...


def kho_preserve_vmalloc(kho: PagePreserver, mem: PhysMem, pages: PageSource, area: VmArea,
                         enomem_on_chunk_failure: bool = True) -> tuple[int, bytes]:
    """kho_preserve_vmalloc: (0, struct kho_vmalloc) or (errno, b""). A chunk page that
    cannot be had or preserved is -ENOMEM; from the middle of the area 6.18 returns the 0
    left in `err` by then (6.19 fixed that: `enomem_on_chunk_failure`)."""
    if area.flags & ~KHO_VMALLOC_SUPPORTED_FLAGS:
        return -errno.EOPNOTSUPP, b""
    flags = (KHO_VMALLOC_ALLOC if area.flags & VM_ALLOC else 0) | \
        (KHO_VMALLOC_HUGE_VMAP if area.flags & VM_ALLOW_HUGE_VMAP else 0)
    first = chunk = _new_chunk(kho, mem, pages, 0)
    if not chunk:
        return -errno.ENOMEM, b""
    per_chunk = kho_vmalloc_size(mem.page_size)
    contig = 1 << area.order
    idx = 0
    for i in range(0, len(area.pages), contig):
        err = kho.preserve_pages(area.pages[i], contig)
        if err:
            _free_chunks(kho, mem, pages, first, area.order)
            return err, b""
        mem.write(chunk + 8 + idx * 8, U64.pack(area.pages[i]))
        idx += 1
        if idx == per_chunk:
            chunk = _new_chunk(kho, mem, pages, chunk)
            if not chunk:
                _free_chunks(kho, mem, pages, first, area.order)
                return (-errno.ENOMEM if enomem_on_chunk_failure else 0), b""
            idx = 0
    return 0, KHO_VMALLOC.pack(first, len(area.pages), flags, area.order)


def _new_chunk(kho: PagePreserver, mem: PhysMem, pages: PageSource, cur: int) -> int:
    """new_vmalloc_chunk: a zeroed page, preserved, linked after `cur`; 0 on failure."""
    chunk = pages.alloc_pages(0)
    if not chunk:
        return 0
    mem.zero(chunk, mem.page_size)
    if kho.preserve_pages(chunk, 1):
        pages.free_pages(chunk, 0)
        return 0
    if cur:
        mem.write(cur, U64.pack(chunk))
    return chunk


def chunk_entries(mem: PhysMem, chunk: int) -> tuple[int, list[int]]:
    """A chunk's next pointer and its phys[] up to the first zero."""
    raw = mem.read(chunk, mem.page_size)
    values = [v for (v,) in U64.iter_unpack(raw)]
    entries = []
    for value in values[1:]:
        if not value:
            break
        entries.append(value)
    return values[0], entries


def kho_unpreserve_vmalloc(kho: PagePreserver, mem: PhysMem, pages: PageSource,
                           desc: bytes) -> None:
    """kho_unpreserve_vmalloc (6.19 on; 6.18's error path does the same as
    kho_vmalloc_free_chunks): unpreserve each chunk and its runs, free the chunks."""
    first, _total, _flags, order = KHO_VMALLOC.unpack(desc)
    _free_chunks(kho, mem, pages, first, order)


def _free_chunks(kho: PagePreserver, mem: PhysMem, pages: PageSource, chunk: int,
                 order: int) -> None:
    seen = set()
    while chunk and chunk not in seen:
        seen.add(chunk)
        nxt, entries = chunk_entries(mem, chunk)
        kho.unpreserve_pages(chunk, 1)
        for phys in entries:
            kho.unpreserve_pages(phys, 1 << order)
        pages.free_pages(chunk, 0)
        chunk = nxt


class PageRestorer(Protocol):
    """What restoring needs of the incoming KHO state (khofs.engine.kho_in.KhoIn)."""

    def restore_pages(self, phys: int, nr_pages: int) -> bool: ...


def kho_restore_vmalloc(kho_in: PageRestorer, mem: PhysMem, pages: PageSource, desc: bytes,
                        each_page: bool = True) -> VmArea | None:
    """kho_restore_vmalloc: the area again, or None. Each chunk's runs are restored (and
    must fit total_pages), then the chunk itself, which goes back to the allocator; the count
    must come out exact. 6.18 maps a run's first page for every page of the run
    (`each_page` False); order-0 areas, all khofs makes, are the same either way."""
    first, total, flags, order = KHO_VMALLOC.unpack(desc)
    contig = 1 << order
    mapped: list[int] = []
    chunk = first
    while chunk:
        nxt, entries = chunk_entries(mem, chunk)
        for phys in entries:
            if len(mapped) + contig > total or not kho_in.restore_pages(phys, contig):
                return None
            mapped += [phys + (j * mem.page_size if each_page else 0) for j in range(contig)]
        if not kho_in.restore_pages(chunk, 1):
            return None
        pages.free_pages(chunk, 0)
        chunk = nxt
    if len(mapped) != total:
        return None
    vm_flags = (VM_ALLOC if flags & KHO_VMALLOC_ALLOC else 0) | \
        (VM_ALLOW_HUGE_VMAP if flags & KHO_VMALLOC_HUGE_VMAP else 0)
    return VmArea(mapped, order, vm_flags)
