"""kmalloc/kfree for the engine's own small objects that must have a physical address.

A minimal slab: one cache per power-of-two size class, each slab one page from the page
allocator, objects handed out lowest address first (as a fresh slab's freelist does).
Objects of a page or more come straight from the page allocator, like kmalloc_large.
"""

from __future__ import annotations

from typing import Protocol

KMALLOC_MIN_SIZE = 8


class PageSource(Protocol):
    def alloc_pages(self, order: int) -> int: ...

    def free_pages(self, phys: int, order: int) -> None: ...


def get_order(size: int, page_size: int) -> int:
    """include/asm-generic/getorder.h get_order: smallest order whose block holds size."""
    order = 0
    while (page_size << order) < size:
        order += 1
    return order


class Kmalloc:
    def __init__(self, pages: PageSource, page_size: int) -> None:
        self.pages = pages
        self.page_size = page_size
        self._free: dict[int, list[int]] = {}  # size class -> free object addresses
        self._large: dict[int, int] = {}  # address -> order

    def _size_class(self, size: int) -> int:
        cls = KMALLOC_MIN_SIZE
        while cls < size:
            cls *= 2
        return cls

    def kmalloc(self, size: int) -> int:
        """The object's physical address, or 0 when memory is exhausted."""
        if size >= self.page_size:
            order = get_order(size, self.page_size)
            phys = self.pages.alloc_pages(order)
            if phys:
                self._large[phys] = order
            return phys
        cls = self._size_class(size)
        free = self._free.setdefault(cls, [])
        if not free:
            page = self.pages.alloc_pages(0)
            if not page:
                return 0
            free.extend(reversed(range(page, page + self.page_size, cls)))
        return free.pop()

    def kfree(self, phys: int, size: int) -> None:
        """Unlike the kernel's kfree this needs the size, to find the cache."""
        if phys in self._large:
            self.pages.free_pages(phys, self._large.pop(phys))
        elif phys:
            self._free.setdefault(self._size_class(size), []).append(phys)
