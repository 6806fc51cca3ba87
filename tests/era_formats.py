"""Decoders and oracles for the era tests, written from the ABI headers, not from khofs.

The preserved-memory map as a next kernel reads it (chunks of bitmaps, or the radix tree),
struct kho_vmalloc and its chunks, kexec-metadata, and the root FDT as Debian's python3-libfdt
builds it with the same sequence of libfdt calls the kernel makes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import libfdt

from khofs.engine.kernel import Kernel
from khofs.engine.physmem import PhysMem
from tests.oracle import finished

PAGE = 4096
Q = struct.Struct("<Q")


def mode(k: Kernel, path: str) -> int:
    d = k.debugfs.lookup(path)
    assert d is not None, path
    return d.inode.mode


def texts(k: Kernel) -> list[str]:
    return k.log.texts()


# --- the memory map up to 7.0: chunks of bitmaps -------------------------------------------

def chunk_list(mem: PhysMem, first: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """struct khoser_mem_chunk list: (chunk address, order, [(phys_start, bitmap)])."""
    out = []
    chunk = first
    while chunk:
        nxt, order, num = struct.unpack("<QII", mem.read(chunk, 16))
        elms = [struct.unpack("<QQ", mem.read(chunk + 16 + 16 * i, 16)) for i in range(num)]
        out.append((chunk, order, elms))
        chunk = nxt
    return out


def decode_bitmaps(mem: PhysMem, first: int, bitmap_bytes: int) -> list[tuple[int, int]]:
    """Every (phys, order) a kernel reading `bitmap_bytes` per bitmap finds."""
    found = []
    for _chunk, order, elms in chunk_list(mem, first):
        for start, bitmap in elms:
            bits = int.from_bytes(mem.read(bitmap, bitmap_bytes), "little")
            for bit in range(bitmap_bytes * 8):
                if bits >> bit & 1:
                    found.append((start + (bit << (order + 12)), order))
    return found


# --- the memory map from 7.1: the radix tree --------------------------------------------------

def decode_radix(mem: PhysMem, root: int) -> list[tuple[int, int]]:
    """Walk the 6-level tree (4 KiB pages): level 5..1 tables of 512 u64, level 0 bitmaps of
    32768 bits; key bits 51-59 pick the level-5 entry, ..., 15-23 the level-1 entry, 0-14 the
    bit; order = 52 - (bit length of key - 1); phys = key << (12 + order) mod 2**64."""
    found = []

    def walk(node: int, level: int, key: int) -> None:
        table = [v for (v,) in Q.iter_unpack(mem.read(node, PAGE))]
        for i, child in enumerate(table):
            if not child:
                continue
            sub = key | (i << (15 + 9 * (level - 1)))
            if level > 1:
                walk(child, level - 1, sub)
                continue
            bits = int.from_bytes(mem.read(child, PAGE), "little")
            for bit in range(PAGE * 8):
                if bits >> bit & 1:
                    k = sub | bit
                    order = 52 - (k.bit_length() - 1)
                    found.append(((k << (12 + order)) % (1 << 64), order))

    walk(root, 5, 0)
    return found


def radix_key_path(phys: int, order: int) -> tuple[list[int], int]:
    """The five table indices (level 5 first) and the leaf bit of a block, from the ABI's
    key layout."""
    key = (1 << (52 - order)) | (phys >> (12 + order))
    return [(key >> (15 + 9 * (level - 1))) & 511 for level in range(5, 0, -1)], key & 0x7FFF


# --- vmalloc ------------------------------------------------------------------------------

def decode_kho_vmalloc(mem: PhysMem, desc: bytes) -> tuple[list[int], list[int], int, int,
                                                            int]:
    """struct kho_vmalloc: (its chunk pages, the pages they list, total_pages, flags, order)."""
    first, total, flags, order = struct.unpack("<QIHH", desc)
    chunks, pages = [], []
    chunk = first
    while chunk:
        chunks.append(chunk)
        words = [v for (v,) in Q.iter_unpack(mem.read(chunk, PAGE))]
        for w in words[1:]:
            if not w:
                break
            pages.append(w)
        chunk = words[0]
    return chunks, pages, total, flags, order


def blocks_cover(blocks: Sequence[tuple[int, int]], phys: int) -> bool:
    return any(start <= phys < start + (PAGE << order) for start, order in blocks)


# --- root FDT oracles (python3-libfdt) ----------------------------------------------------

def sequential_root(compatible: str, map_phys: int,
                    subs: Sequence[tuple[str, int]] = ()) -> bytes:
    """What kho_finalize (6.16, 6.18) or kho_out_fdt_setup (6.19 on, no subs) writes."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", compatible)
    sw.property("preserved-memory-map", Q.pack(map_phys))
    for name, phys in subs:
        sw.begin_node(name)
        sw.property("fdt", Q.pack(phys))
        sw.end_node()
    sw.end_node()
    return finished(sw)


def edited_root(compatible: str, map_phys: int,
                adds: Sequence[tuple[str, Sequence[tuple[str, bytes]]]]) -> bytes:
    """kho_out_fdt_setup, then for each kho_add_subtree: fdt_open_into(PAGE_SIZE),
    fdt_add_subnode(root), fdt_setprop for each property in order, fdt_pack."""
    blob = sequential_root(compatible, map_phys)
    for name, props in adds:
        fdt = libfdt.Fdt(blob)
        fdt.resize(PAGE)  # fdt_open_into(fdt, buf, PAGE_SIZE)
        off = fdt.add_subnode(0, name)
        for prop, value in props:
            fdt.setprop(off, prop, value)
        fdt.pack()
        blob = bytes(fdt.as_bytearray()[:fdt.totalsize()])
    return blob


def fdt_props_619(phys: int) -> list[tuple[str, bytes]]:
    return [("fdt", Q.pack(phys))]


def blob_props_71(phys: int, size: int) -> list[tuple[str, bytes]]:
    return [("preserved-data", Q.pack(phys)), ("blob-size", Q.pack(size))]


def metadata_blob(release: str, count: int) -> bytes:
    """struct kho_kexec_metadata, packed: u32 version 1, char[65] release, u32 count."""
    return struct.pack("<I65sI", 1, release.encode(), count)


def kho_test_oracle_vmalloc(nr: int, desc: bytes, csum: int) -> bytes:
    """test_kho's sub-FDT from 6.18: folios_info is the 16-byte struct kho_vmalloc."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property("compatible", b"kho-test-v1\0")
    sw.property("magic", struct.pack("<I", 0x4B484F21))
    sw.begin_node("data")
    sw.property("nr_folios", struct.pack("<I", nr))
    sw.property("folios_info", desc)
    sw.property("csum", struct.pack("<I", csum))
    sw.end_node()
    sw.end_node()
    return finished(sw)

