"""TEMPORARY STUB (not committed): the libfdt-rw branch provides the real port."""
from __future__ import annotations


def fdt_open_into(fdt: memoryview, buf: memoryview, bufsize: int) -> int:
    raise NotImplementedError


def fdt_add_subnode(fdt: memoryview, parent: int, name: str) -> int:
    raise NotImplementedError


def fdt_setprop(fdt: memoryview, off: int, name: str, value: bytes) -> int:
    raise NotImplementedError


def fdt_del_node(fdt: memoryview, off: int) -> int:
    raise NotImplementedError


def fdt_pack(fdt: memoryview) -> int:
    raise NotImplementedError


def fdt_first_subnode(fdt: memoryview, off: int) -> int:
    raise NotImplementedError


def fdt_next_subnode(fdt: memoryview, off: int) -> int:
    raise NotImplementedError


def fdt_getprop(fdt: memoryview, off: int, name: str) -> bytes | None:
    raise NotImplementedError


def fdt_getprop_offset(fdt: memoryview, off: int, name: str) -> int:
    raise NotImplementedError
