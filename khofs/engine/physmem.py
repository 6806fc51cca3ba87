"""Emulated physical memory contents: sparse, page granular, zero where never written.

Only pages that something wrote cost memory, so a multi-TiB machine is free until used.
"""

from __future__ import annotations

from dataclasses import dataclass

from khofs.lib.fdt_ro import FdtNode, fdt_check_header, fdt_parse
from khofs.lib.libfdt import FDT_HEADER_SIZE, fdt_totalsize

# What khofs reads of an FDT whose header claims more: a handover can hold any bytes.
MAX_FDT_READ = 16 << 20


class PhysMem:
    """The bytes of RAM, addressed by physical address."""

    def __init__(self, page_size: int = 4096) -> None:
        self.page_size = page_size
        self._pages: dict[int, bytearray] = {}

    def _page(self, pfn: int) -> bytearray:
        page = self._pages.get(pfn)
        if page is None:
            page = self._pages[pfn] = bytearray(self.page_size)
        return page

    def _spans(self, phys: int, size: int) -> list[tuple[int, int, int]]:
        """(pfn, offset in page, length) pieces covering [phys, phys + size)."""
        spans = []
        while size > 0:
            pfn, off = divmod(phys, self.page_size)
            n = min(size, self.page_size - off)
            spans.append((pfn, off, n))
            phys += n
            size -= n
        return spans

    def read(self, phys: int, size: int) -> bytes:
        ps = self.page_size
        pfn, off = divmod(phys, ps)
        get = self._pages.get
        if off + size <= ps:  # within one page: most reads
            page = get(pfn)
            return bytes(page[off:off + size]) if page is not None else bytes(size)
        # one copy of many pages (a blob read 1 MiB at a time): the first page's tail, whole
        # pages (zeros for those never written), the last page's head, joined
        last, tail = divmod(phys + size, ps)
        zero = bytes(ps)
        first = get(pfn)
        parts: list[bytes | bytearray | memoryview] = [
            memoryview(first)[off:] if first is not None else zero[off:]]
        parts += [get(p) or zero for p in range(pfn + 1, last)]
        if tail:
            end = get(last)
            parts.append(memoryview(end)[:tail] if end is not None else zero[:tail])
        return b"".join(parts)

    def write(self, phys: int, data: bytes) -> None:
        pos = 0
        for pfn, off, n in self._spans(phys, len(data)):
            self._page(pfn)[off:off + n] = data[pos:pos + n]
            pos += n

    def zero(self, phys: int, size: int) -> None:
        """Clear a range (kzalloc/__GFP_ZERO); whole pages are simply forgotten."""
        for pfn, off, n in self._spans(phys, size):
            if n == self.page_size:
                self._pages.pop(pfn, None)
            elif pfn in self._pages:
                self._pages[pfn][off:off + n] = bytes(n)

    def pages(self) -> dict[int, bytes]:
        """Every written page by address: RAM as a RAM image holds it."""
        return {pfn * self.page_size: bytes(page) for pfn, page in self._pages.items()}

    def load_pages(self, pages: dict[int, bytes]) -> None:
        for phys, data in pages.items():
            self._pages[phys // self.page_size] = bytearray(data)

    def touched(self) -> list[int]:
        """The address of every page something wrote (the only ones not all zero)."""
        return [pfn * self.page_size for pfn in self._pages]

    def fdt_totalsize(self, phys: int) -> int:
        """fdt_totalsize() of the tree at phys: its header's field, unchecked, as the kernel
        reads it of a tree it built itself."""
        return fdt_totalsize(self.read(phys, FDT_HEADER_SIZE))

    def read_fdt(self, phys: int) -> tuple[int, bytes]:
        """The FDT blob at phys as far as its header is believable (fdt_check_header, then
        fdt_totalsize bytes, at most MAX_FDT_READ): (0, blob) or (a libfdt error, b"")."""
        head = self.read(phys, FDT_HEADER_SIZE)
        err = fdt_check_header(head)
        if err:
            return err, b""
        return 0, self.read(phys, min(fdt_totalsize(head), MAX_FDT_READ))

    def parse_fdt(self, phys: int) -> FdtNode | None:
        """The tree of the FDT at phys, or None when libfdt would refuse it."""
        err, blob = self.read_fdt(phys)
        if err:
            return None
        root = fdt_parse(blob)
        return None if isinstance(root, int) else root

    def page_view(self, phys: int) -> memoryview:
        """A writable view of one whole page, for code that builds data in place (libfdt)."""
        assert phys % self.page_size == 0
        return memoryview(self._page(phys // self.page_size))


@dataclass
class PhysRange:
    """A blob's live bytes: a window of physical memory (debugfs_blob_wrapper.data)."""

    mem: PhysMem
    phys: int

    def read(self, off: int, size: int) -> bytes:
        return self.mem.read(self.phys + off, size)

    def write(self, off: int, data: bytes) -> None:
        self.mem.write(self.phys + off, data)
