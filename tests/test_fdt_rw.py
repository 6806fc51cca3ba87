"""Our port of libfdt's read-write functions (khofs/lib/fdt_rw.py) against the real libfdt.

The oracle is Debian's python3-libfdt: its raw fdt_* functions run libfdt's C code in place on
a bytearray. Every test keeps two pages, ours and the oracle's, applies the same call to both
and compares the results and the WHOLE pages, bytes past totalsize included (libfdt leaves
stale bytes behind when it moves data, and so must we).
"""

from __future__ import annotations

import random
import struct
import subprocess
from collections.abc import Callable
from typing import Any

import libfdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from khofs.lib.fdt_rw import FdtRw
from khofs.lib.libfdt import (
    FDT_ERR_BADLAYOUT,
    FDT_ERR_BADMAGIC,
    FDT_ERR_BADOFFSET,
    FDT_ERR_BADPATH,
    FDT_ERR_BADVERSION,
    FDT_ERR_EXISTS,
    FDT_ERR_NOSPACE,
    FDT_ERR_NOTFOUND,
    FDT_ERR_TRUNCATED,
    FdtSw,
    fdt_totalsize,
)

PAGE = 4096


# --- the two pages --------------------------------------------------------------------------------

def _norm(result: Any) -> Any:
    """The oracle's results in our shapes: getprop's [value, len] is the value, get_name's
    [name, len] the name as bytes, get_property_by_offset's [name, value, len] (name, value)."""
    if isinstance(result, list):
        if len(result) == 3:
            return result[0].encode(errors="surrogateescape"), bytes(result[1])
        if isinstance(result[0], str):
            return result[0].encode(errors="surrogateescape")
        return bytes(result[0])
    return result


class Pair:
    """Our page and the oracle's page, kept in step."""

    def __init__(self, blob: bytes, fill: bytes = b"") -> None:
        page = bytearray(fill.ljust(PAGE, b"\0")[:PAGE])
        page[:len(blob)] = blob
        self.ours = page
        self.theirs = bytearray(page)
        self.fdt = FdtRw(self.ours)

    def check(self, name: str, ours: Callable[..., Any], theirs: Callable[..., Any],
              *args: Any) -> Any:
        """ours(*args) on our page, theirs(page, *args) on the oracle's: same result, same
        page."""
        got, want = ours(*args), _norm(theirs(self.theirs, *args))
        assert got == want, f"{name}{args}: ours {got!r}, libfdt {want!r}"
        assert self.ours == self.theirs, f"{name}{args}: the pages differ at {self.diff()}"
        return got

    def diff(self) -> int:
        return next(i for i, (a, b) in enumerate(zip(self.ours, self.theirs, strict=True))
                    if a != b)

    # --- the read-write calls -------------------------------------------------------------

    def open_into(self, size: int = PAGE) -> int:
        return int(self.check("open_into", self.fdt.open_into,
                              lambda fdt, n: libfdt.fdt_open_into(fdt, fdt, n), size))

    def pack(self) -> int:
        return int(self.check("pack", self.fdt.pack, libfdt.fdt_pack))

    def add_subnode(self, parent: int, name: str) -> int:
        return int(self.check("add_subnode", self.fdt.add_subnode, libfdt.fdt_add_subnode,
                              parent, name))

    def setprop(self, node: int, name: str, value: bytes) -> int:
        return int(self.check("setprop", self.fdt.setprop,
                              lambda fdt, n, p, v: libfdt.fdt_setprop(fdt, n, p, v, len(v)),
                              node, name, value))

    def setprop_inplace(self, node: int, name: str, value: bytes) -> int:
        """fdt_setprop_inplace() is reached in the oracle through its _u32/_u64 wrappers, which
        store big-endian: pass the value's bytes read big-endian."""
        setter = {4: libfdt.fdt_setprop_inplace_u32, 8: libfdt.fdt_setprop_inplace_u64}

        def theirs(fdt: bytearray, n: int, p: str, v: bytes) -> int:
            return int(setter[len(v)](fdt, n, p, int.from_bytes(v, "big")))
        return int(self.check("setprop_inplace", self.fdt.setprop_inplace, theirs,
                              node, name, value))

    def delprop(self, node: int, name: str) -> int:
        return int(self.check("delprop", self.fdt.delprop, libfdt.fdt_delprop, node, name))

    def del_node(self, node: int) -> int:
        return int(self.check("del_node", self.fdt.del_node, libfdt.fdt_del_node, node))

    # --- the read calls -------------------------------------------------------------------

    def subnode_offset(self, parent: int, name: str) -> int:
        return int(self.check("subnode_offset", self.fdt.subnode_offset,
                              libfdt.fdt_subnode_offset, parent, name))

    def path_offset(self, path: str) -> int:
        return int(self.check("path_offset", self.fdt.path_offset, libfdt.fdt_path_offset,
                              path))

    def getprop(self, node: int, name: str) -> Any:
        return self.check("getprop", self.fdt.getprop, libfdt.fdt_getprop, node, name)

    def get_name(self, node: int) -> Any:
        return self.check("get_name", self.fdt.get_name, libfdt.fdt_get_name, node)

    def children(self, node: int) -> list[int]:
        """fdt_for_each_subnode, both ways."""
        found = []
        offset = self.check("first_subnode", self.fdt.first_subnode, libfdt.fdt_first_subnode,
                            node)
        while offset >= 0:
            found.append(offset)
            offset = self.check("next_subnode", self.fdt.next_subnode,
                                libfdt.fdt_next_subnode, offset)
        return found

    def properties(self, node: int) -> list[tuple[bytes, bytes]]:
        """fdt_for_each_property_offset with fdt_get_property_by_offset, both ways."""
        found = []
        offset = self.check("first_property_offset", self.fdt.first_property_offset,
                            libfdt.fdt_first_property_offset, node)
        while offset >= 0:
            found.append(self.check("getprop_by_offset", self.fdt.getprop_by_offset,
                                    libfdt.fdt_get_property_by_offset, offset))
            offset = self.check("next_property_offset", self.fdt.next_property_offset,
                                libfdt.fdt_next_property_offset, offset)
        return found

    def nodes(self) -> list[int]:
        """Every node, by fdt_next_node from the root until the walk leaves it, both ways."""
        found: list[int] = []
        offset, depth = 0, 0
        while offset >= 0 and depth >= 0:
            found.append(offset)
            offset, depth = self.check("next_node", self.fdt.next_node,
                                       lambda fdt, o, d: tuple(libfdt.fdt_next_node(fdt, o, d)),
                                       offset, depth)
        return found

    def used(self) -> bytes:
        return bytes(self.ours[:fdt_totalsize(self.ours)])


def kho_root(compatible: str = "kho-v1", map_phys: int = 0) -> bytes:
    """kho_out_fdt_setup(): the root FDT the kernel builds at boot with our sequential writer
    in a zeroed page (6.19: map 0; 7.1: the radix root's address)."""
    page = bytearray(PAGE)
    sw = FdtSw(page)
    err = sw.create(PAGE)
    err |= sw.finish_reservemap()
    err |= sw.begin_node("")
    err |= sw.property_string("compatible", compatible)
    err |= sw.property("preserved-memory-map", struct.pack("<Q", map_phys))
    err |= sw.end_node()
    err |= sw.finish()
    assert err == 0
    return bytes(page[:fdt_totalsize(page)])


def add_subtree_619(pair: Pair, name: str, phys: int) -> int:
    """6.19 kho_add_subtree(): open_into, add_subnode, setprop "fdt", always fdt_pack."""
    if pair.open_into(PAGE) < 0:
        return -12  # -ENOMEM
    off = pair.add_subnode(0, name)
    if off < 0:
        assert pair.pack() == 0
        return -17 if off == -FDT_ERR_EXISTS else -12
    err = pair.setprop(off, "fdt", struct.pack("<Q", phys))  # an error is returned raw
    assert pair.pack() == 0
    return err


def add_subtree_71(pair: Pair, name: str, phys: int, size: int) -> int:
    """7.1 kho_add_subtree(): preserved-data then blob-size; a failed setprop deletes the
    node again (9ec95329); always fdt_pack."""
    if pair.open_into(PAGE) < 0:
        return -12
    off = pair.add_subnode(0, name)
    if off < 0:
        assert pair.pack() == 0
        return -17 if off == -FDT_ERR_EXISTS else -12
    err = pair.setprop(off, "preserved-data", struct.pack("<Q", phys))
    if not err:
        err = pair.setprop(off, "blob-size", struct.pack("<Q", size))
    if err:
        assert pair.del_node(off) == 0
        err = -12
    assert pair.pack() == 0
    return err


def remove_subtree(pair: Pair, prop: str, phys: int) -> None:
    """kho_remove_subtree(): the first sub-node whose property holds phys goes; fdt_pack."""
    assert pair.open_into(PAGE) == 0
    for off in pair.children(0):
        if pair.getprop(off, prop) == struct.pack("<Q", phys):
            assert pair.del_node(off) == 0
            break
    assert pair.pack() == 0


def header(blob: bytes | bytearray) -> tuple[int, ...]:
    return struct.unpack_from(">10I", blob)


def strings(blob: bytes | bytearray) -> bytes:
    h = header(blob)
    return bytes(blob[h[3]:h[3] + h[8]])


# --- the kernel's sequences -----------------------------------------------------------------------

def test_the_619_root_grows_and_shrinks_as_the_kernel_edits_it() -> None:
    root = kho_root()
    assert len(root) == 152 and header(root)[2:5] == (0x40, 0x78, 0x30)
    pair = Pair(root)
    # kho_test is a device initcall, memblock a late one: the newest node comes first
    assert add_subtree_619(pair, "kho_test", 0x10_0000) == 0
    assert fdt_totalsize(pair.ours) == 188
    assert header(pair.ours)[2:5] == (0x38, 0x98, 0x28)  # fdt_pack: reserve map at 0x28
    assert add_subtree_619(pair, "memblock", 0x20_0000) == 0
    h = header(pair.ours)
    assert (h[1], h[9]) == (228, 136)
    assert strings(pair.ours) == b"preserved-memory-map\0compatible\0fdt\0"
    assert [pair.get_name(o) for o in pair.children(0)] == [b"memblock", b"kho_test"]
    assert pair.properties(0) == [(b"compatible", b"kho-v1\0"),
                                  (b"preserved-memory-map", bytes(8))]
    assert add_subtree_619(pair, "memblock", 0x30_0000) == -17  # -EEXIST
    assert libfdt.fdt_check_full(bytearray(pair.used()), 228) == 0
    # dtc reads it back
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", "-"], input=pair.used(),
                         capture_output=True, check=True).stdout.decode()
    assert dts.index("memblock {") < dts.index("kho_test {")


def test_the_619_root_loses_a_subtree_and_rewrites_the_map_in_place() -> None:
    pair = Pair(kho_root())
    assert add_subtree_619(pair, "kho_test", 0x10_0000) == 0
    assert add_subtree_619(pair, "memblock", 0x20_0000) == 0
    remove_subtree(pair, "fdt", 0x10_0000)
    assert fdt_totalsize(pair.ours) == 188
    assert [pair.get_name(o) for o in pair.children(0)] == [b"memblock"]
    # kho_finalize -> kho_update_memory_map: the chunk list's address, native endian, into
    # the packed tree (no fdt_open_into: nothing moves)
    before = pair.used()
    assert pair.setprop_inplace(0, "preserved-memory-map", struct.pack("<Q", 0x1234_5000)) == 0
    assert pair.getprop(0, "preserved-memory-map") == struct.pack("<Q", 0x1234_5000)
    after = pair.used()
    assert len(after) == len(before)
    assert sum(a != b for a, b in zip(after, before, strict=True)) <= 8
    assert pair.setprop_inplace(0, "preserved-memory-map", bytes(4)) == -FDT_ERR_NOSPACE
    # the kernel's own route: a store through fdt_getprop_w (the root's second property)
    offset, length = pair.fdt.getprop_w(0, "preserved-memory-map")
    assert (offset, length) == (header(pair.ours)[2] + 8 + 20 + 12, 8)
    pair.ours[offset:offset + 8] = struct.pack("<Q", 0xABCD_0000)
    libfdt.fdt_setprop_inplace_u64(pair.theirs, 0, "preserved-memory-map", 0x0000_CDAB_0000_0000)
    assert pair.ours == pair.theirs


def test_the_71_root_lists_blob_size_before_preserved_data() -> None:
    pair = Pair(kho_root("kho-v3", 0x4_5000))
    assert add_subtree_71(pair, "kexec-metadata", 0x5000, 73) == 0
    h = header(pair.ours)
    assert (h[1], h[9]) == (233, 120)
    assert strings(pair.ours) == b"preserved-memory-map\0compatible\0preserved-data\0blob-size\0"
    assert add_subtree_71(pair, "kho_test", 0x6000, 4096) == 0
    assert add_subtree_71(pair, "memblock", 0x7000, 4096) == 0
    h = header(pair.ours)
    assert (h[1], h[9], h[8]) == (353, 240, 57)
    children = pair.children(0)
    assert [pair.get_name(o) for o in children] == [b"memblock", b"kho_test", b"kexec-metadata"]
    for off in children:
        assert [name for name, _ in pair.properties(off)] == [b"blob-size", b"preserved-data"]
    remove_subtree(pair, "preserved-data", 0x6000)
    assert [pair.get_name(o) for o in pair.children(0)] == [b"memblock", b"kexec-metadata"]
    assert libfdt.fdt_check_full(bytearray(pair.used()), fdt_totalsize(pair.ours)) == 0


# --- a full page ----------------------------------------------------------------------------------

def _free(pair: Pair) -> int:
    h = header(pair.ours)
    return PAGE - (h[3] + h[8])


def _filling_name(free: int) -> str:
    """The longest name whose node (8 + FDT_TAGALIGN(len + 1) bytes) fits in `free` bytes."""
    return "x" * ((free - 8) // 4 * 4 - 1)


def test_a_full_page_gives_nospace_and_the_71_kernel_takes_the_node_back() -> None:
    pair = Pair(kho_root("kho-v3"))
    n = 0
    while _free(pair) > 200:  # every sub-tree: node 20 bytes + two properties 40 bytes
        assert add_subtree_71(pair, f"n{n:05}", n << 12, 4096) == 0
        n += 1
    assert pair.open_into(PAGE) == 0
    free = _free(pair)
    # a node that just fits, then its first property does not: 7.1 deletes the node
    before = bytes(pair.ours[:PAGE - free])
    assert add_subtree_71(pair, _filling_name(free), 1 << 30, 8) == -12
    assert pair.subnode_offset(0, _filling_name(free)) == -FDT_ERR_NOTFOUND
    assert pair.open_into(PAGE) == 0
    assert bytes(pair.ours[:PAGE - free]) == before
    # a node that does not fit
    assert pair.add_subnode(0, "y" * free) == -FDT_ERR_NOSPACE
    # a property with a new name: the string fits, the property does not, and the string is
    # taken back (its bytes stay after the data)
    node = pair.subnode_offset(0, "n00000")
    name = "z" * (free - 24)
    assert pair.setprop(node, name, bytes(16)) == -FDT_ERR_NOSPACE
    assert strings(pair.ours).endswith(b"blob-size\0")
    assert bytes(pair.ours).find(name.encode()) > 0
    # a resize that does not fit, and one that does
    assert pair.setprop(node, "blob-size", bytes(free + 12)) == -FDT_ERR_NOSPACE
    assert pair.setprop(node, "blob-size", bytes(free // 4 * 4 + 8)) == 0
    assert _free(pair) < 4
    assert pair.pack() == 0


def test_the_619_kernel_leaves_a_node_without_its_property_when_the_page_is_full() -> None:
    pair = Pair(kho_root())
    n = 0
    while _free(pair) > 100:
        assert add_subtree_619(pair, f"sub{n:04}", n << 12) == 0
        n += 1
    assert pair.open_into(PAGE) == 0
    name = _filling_name(_free(pair))
    assert add_subtree_619(pair, name, 1 << 30) == -FDT_ERR_NOSPACE  # raw, not an errno
    node = pair.subnode_offset(0, name)
    assert node > 0 and pair.properties(node) == []
    assert add_subtree_619(pair, name, 1 << 30) == -17  # -EEXIST
    assert add_subtree_619(pair, "sub", 1 << 30) == -12  # add_subnode: -ENOMEM
    assert fdt_totalsize(pair.ours) > PAGE - 8


# --- names ----------------------------------------------------------------------------------------

def test_add_subnode_matches_names_as_fdt_subnode_offset_does() -> None:
    pair = Pair(kho_root())
    assert pair.open_into() == 0
    assert pair.add_subnode(0, "memblock@0") > 0
    assert pair.add_subnode(0, "memblock") == -FDT_ERR_EXISTS  # memblock@0 matches
    assert pair.add_subnode(0, "memblock@1") > 0  # an '@' in the name: exact match only
    assert pair.add_subnode(0, "memblock@0") == -FDT_ERR_EXISTS
    assert pair.subnode_offset(0, "memblock") == pair.subnode_offset(0, "memblock@1")
    assert pair.add_subnode(0, "") > 0  # libfdt checks no names
    assert pair.add_subnode(0, "") == -FDT_ERR_EXISTS
    assert pair.add_subnode(0, "a/b") > 0
    assert pair.path_offset("/a/b") == -FDT_ERR_NOTFOUND
    sub = pair.add_subnode(pair.path_offset("/memblock@1"), "child")
    assert pair.path_offset("//memblock@1///child/") == sub
    assert pair.path_offset("/memblock@1/nothing") == -FDT_ERR_NOTFOUND
    assert pair.path_offset("") == -FDT_ERR_BADPATH
    assert pair.path_offset("noalias") == -FDT_ERR_BADPATH
    aliases = pair.add_subnode(0, "aliases")
    assert pair.setprop(aliases, "mb", b"/memblock@1\0") == 0
    assert pair.path_offset("mb/child") == pair.path_offset("/memblock@1/child") > 0
    assert pair.subnode_offset(0, "\u00e9t\u00e9") == -FDT_ERR_NOTFOUND
    assert pair.add_subnode(0, "\u00e9t\u00e9") > 0
    assert pair.get_name(pair.subnode_offset(0, "\u00e9t\u00e9")) == "\u00e9t\u00e9".encode()


def test_property_names_reuse_strings_and_tails_of_strings() -> None:
    pair = Pair(kho_root())
    assert pair.open_into() == 0
    size = header(pair.ours)[8]
    assert pair.setprop(0, "map", b"x") == 0  # the tail of preserved-memory-map
    assert pair.setprop(0, "memory-map", b"") == 0
    assert header(pair.ours)[8] == size
    assert pair.setprop(0, "maps", b"abcde") == 0
    assert strings(pair.ours).endswith(b"compatible\0maps\0")
    assert [n for n, _ in pair.properties(0)][:3] == [b"maps", b"memory-map", b"map"]


def test_values_change_size_in_place_and_padding_is_left_as_it_was() -> None:
    pair = Pair(kho_root(), fill=bytes(range(256)) * 16)
    assert pair.open_into() == 0
    assert pair.setprop(0, "compatible", b"1") == 0  # 8 bytes -> 4: the tail moves down
    offset, _ = pair.fdt.getprop_w(0, "compatible")
    assert bytes(pair.ours[offset:offset + 4]) == b"1ho-"  # padding: what "kho-v1" left
    for value in (b"1", b"123456789", b"", b"12345", b"\xff" * 33, b"ab"):
        assert pair.setprop(0, "compatible", value) == 0
        assert pair.getprop(0, "compatible") == value
    assert pair.setprop_inplace(0, "compatible", b"abcd") == -FDT_ERR_NOSPACE
    assert pair.setprop_inplace(0, "nothing", b"abcd") == -FDT_ERR_NOTFOUND
    assert pair.delprop(0, "compatible") == 0
    assert pair.delprop(0, "compatible") == -FDT_ERR_NOTFOUND
    assert pair.getprop(0, "compatible") == -FDT_ERR_NOTFOUND
    assert pair.pack() == 0


def test_setprop_placeholder_hands_out_the_value_in_the_buffer() -> None:
    pair = Pair(kho_root())
    assert pair.open_into() == 0
    fdt = pair.fdt
    err, offset = fdt.setprop_placeholder(0, "blob", 6)
    assert err == 0
    fdt.buf[offset:offset + 6] = b"abcdef"
    assert libfdt.fdt_setprop(pair.theirs, 0, "blob", b"abcdef", 6) == 0
    assert pair.ours == pair.theirs
    assert pair.getprop(0, "blob") == b"abcdef"
    assert fdt.setprop_placeholder(0, "big", PAGE) == (-FDT_ERR_NOSPACE, 0)
    with pytest.raises(ValueError):
        fdt.setprop_placeholder(0, "blob", -1)


# --- offsets and errors ---------------------------------------------------------------------------

def test_bad_offsets_give_libfdt_errors() -> None:
    pair = Pair(kho_root())
    assert pair.open_into() == 0
    sub = pair.add_subnode(0, "sub")
    assert pair.setprop(sub, "p", b"1234") == 0
    prop = pair.fdt.first_property_offset(sub)
    for bad in (3, prop, 10_000, -4):
        assert pair.add_subnode(bad, "x") < 0
        assert pair.setprop(bad, "x", b"1") < 0
        assert pair.delprop(bad, "p") < 0
        assert pair.getprop(bad, "p") < 0
        assert pair.get_name(bad) < 0
        assert pair.subnode_offset(bad, "sub") < 0
        assert pair.del_node(bad) < 0
    assert pair.del_node(-1) == -FDT_ERR_NOTFOUND  # a negative offset comes back as it is
    assert pair.del_node(prop) == -FDT_ERR_BADOFFSET
    assert pair.fdt.getprop_by_offset(sub) == -FDT_ERR_BADOFFSET
    assert pair.fdt.next_node(prop, 0) == (-FDT_ERR_BADOFFSET, 0)
    assert pair.del_node(0) == 0  # the root too
    assert pair.getprop(0, "compatible") == -FDT_ERR_BADOFFSET
    assert pair.pack() == 0


def test_headers_that_are_not_a_writable_tree() -> None:
    pair = Pair(b"")
    for call in (pair.open_into, pair.pack, lambda: pair.add_subnode(0, "a"),
                 lambda: pair.del_node(0), lambda: pair.setprop(0, "a", b"")):
        assert call() == -FDT_ERR_BADMAGIC
    assert pair.subnode_offset(0, "a") == -FDT_ERR_BADMAGIC
    # an unopened tree of version 16: readable, not writable until fdt_open_into
    v16 = Pair(_dtb("16"))
    assert v16.add_subnode(0, "x") == -FDT_ERR_BADVERSION
    assert v16.pack() == -FDT_ERR_BADVERSION
    assert v16.open_into() == 0  # walks the struct block for its size
    assert header(v16.ours)[5] == 17 and v16.add_subnode(0, "x") > 0
    # before version 16: fdt_open_into refuses
    assert Pair(_dtb("3")).open_into() == -FDT_ERR_BADVERSION


def test_a_misordered_tree_is_rebuilt_behind_itself_and_moved_back() -> None:
    blob = _misordered(_dtb("17"))
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(PAGE))
    pair = Pair(blob, fill=pattern)
    assert pair.add_subnode(0, "x") == -FDT_ERR_BADLAYOUT
    assert pair.pack() == -FDT_ERR_BADLAYOUT
    assert pair.open_into(len(blob) + 100) == -FDT_ERR_NOSPACE  # no room behind the old tree
    assert pair.open_into() == 0
    h = header(pair.ours)
    assert h[6] == 16 and h[2:5] == (0x48, 0x48 + h[9], 0x28)
    # boot_cpuid_phys comes from the page after the old tree, not from its header
    assert h[7] == struct.unpack_from(">I", pattern, len(blob) + 28)[0]
    assert pair.add_subnode(0, "x") > 0
    assert pair.pack() == 0
    assert pair.getprop(pair.path_offset("/a@1"), "v") == struct.pack(">3I", 1, 2, 3)


def test_trees_before_version_16_read_with_their_quirks() -> None:
    for version in ("2", "3"):
        pair = Pair(_dtb(version))
        node = pair.path_offset("/a@1")
        assert pair.get_name(node) == b"a@1"  # the last component of the stored path
        assert pair.getprop(0, "big") == struct.pack(">2Q", 1, 2)  # realigned value
        assert pair.getprop(node, "v") == struct.pack(">3I", 1, 2, 3)
        assert pair.path_offset("/a/b") > 0
        assert pair.path_offset("m") == node
        assert pair.path_offset("bad") == -FDT_ERR_BADPATH  # dtc 1.6.1 agrees here too
        # the oracle's fdt_get_property_by_offset refuses these versions; our
        # fdt_getprop_by_offset realigns as fdt_getprop does
        assert libfdt.fdt_get_property_by_offset(pair.theirs, 8) == -FDT_ERR_BADVERSION
        offset = pair.fdt.first_property_offset(0)
        while offset >= 0:
            name, value = pair.fdt.getprop_by_offset(offset)  # type: ignore[misc]
            assert pair.getprop(0, name.decode()) == value
            offset = pair.check("next_property_offset", pair.fdt.next_property_offset,
                                libfdt.fdt_next_property_offset, offset)
        assert len(pair.nodes()) == 4


def test_reads_and_stores_of_the_reserve_map() -> None:
    pair = Pair(_dtb("17"))
    assert pair.check("num_mem_rsv", pair.fdt.num_mem_rsv, libfdt.fdt_num_mem_rsv) == 1
    assert pair.open_into() == 0
    assert pair.pack() == 0
    assert pair.check("num_mem_rsv", pair.fdt.num_mem_rsv, libfdt.fdt_num_mem_rsv) == 1


def test_what_c_would_do_outside_the_buffer_is_refused() -> None:
    """Not libfdt (the oracle would overrun its buffer): an open_into size beyond the buffer,
    a header claiming more room than the buffer has, strings running past its end."""
    small = bytearray(kho_root()).ljust(200, b"\0")
    fdt = FdtRw(small)
    assert fdt.open_into(201) == -FDT_ERR_NOSPACE
    assert fdt.open_into(200) == 0
    struct.pack_into(">I", small, 4, 300)  # totalsize 300 in a 200-byte buffer
    assert fdt.add_subnode(0, "x") == 48  # inside the buffer: as in C
    before = bytes(small)
    assert fdt.setprop(48, "compatible", bytes(40)) == -FDT_ERR_NOSPACE  # C: 20 bytes past it
    assert bytes(small) == before
    struct.pack_into(">I", small, 32, 200 - header(small)[3] + 20)  # strings end at 220
    before = bytes(small)
    assert fdt.add_subnode(0, "y") == -FDT_ERR_TRUNCATED
    assert fdt.pack() == -FDT_ERR_TRUNCATED
    assert bytes(small) == before
    with pytest.raises(ValueError):
        FdtRw(bytearray(39))
    with pytest.raises(ValueError):
        FdtRw(bytes(PAGE))  # type: ignore[arg-type]


def _dtb(version: str) -> bytes:
    dts = ('/dts-v1/;\n/memreserve/ 0x1000 0x2000;\n'
           '/ { compatible = "x"; big = /bits/ 64 <1 2>;\n'
           '    a@1 { v = <1 2 3>; b { }; };\n'
           '    aliases { m = "/a@1"; bad = "a@1"; }; };\n')
    return subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-V", version],
                          input=dts.encode(), capture_output=True, check=True).stdout


def _misordered(blob: bytes) -> bytes:
    """The same tree with its strings block before its struct block."""
    h = list(header(blob))
    rsv = blob[h[4]:h[2]]
    struct_block = blob[h[2]:h[2] + h[9]]
    strs = blob[h[3]:h[3] + h[8]]
    pad = b"\0" * (-len(strs) % 4)
    h[3] = 40 + len(rsv)
    h[2] = h[3] + len(strs) + len(pad)
    h[1] = h[2] + len(struct_block)
    h[4], h[7] = 40, 0x11223344
    return struct.pack(">10I", *h) + rsv + strs + pad + struct_block


# --- random sequences -----------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "a@1", "a@2", "fdt", "blob-size", "", "x" * 9])
PROPS = st.sampled_from(["fdt", "compatible", "preserved-memory-map", "p", "q@", "map",
                         "preserved-data"])
VALUES = st.binary(max_size=13) | st.binary(min_size=8, max_size=8)
OPS = st.sampled_from(["pack", "add_subnode", "add_subnode", "setprop", "setprop",
                       "setprop_inplace", "delprop", "del_node", "read", "open_into"])


def _node(pair: Pair, data: st.DataObject) -> int:
    """Mostly a node of the tree, sometimes any offset."""
    nodes = pair.nodes()
    if data.draw(st.integers(0, 7), "valid") == 0:
        return data.draw(st.integers(-2, 200), "offset")
    return data.draw(st.sampled_from(nodes), "node")


def _prop(pair: Pair, node: int, data: st.DataObject) -> str:
    """Often a property the node has, else one of PROPS."""
    names = []
    offset = pair.fdt.first_property_offset(node)
    while offset >= 0:
        found = pair.fdt.getprop_by_offset(offset)
        if isinstance(found, int):
            break
        names.append(found[0].decode(errors="replace"))
        offset = pair.fdt.next_property_offset(offset)
    if names and data.draw(st.booleans(), "existing"):
        return data.draw(st.sampled_from(names), "prop")
    return data.draw(PROPS, "prop")


def _step(pair: Pair, data: st.DataObject) -> None:
    node = _node(pair, data)
    op = data.draw(OPS, "op")
    if op == "pack":  # then reopen, as the kernel does before its next edit
        pair.pack()
        pair.open_into(PAGE)
    elif op == "open_into":
        pair.open_into(data.draw(st.sampled_from([PAGE, PAGE - 4, 300, 0, -1]), "size"))
    elif op == "add_subnode":
        pair.add_subnode(node, data.draw(NAMES, "name"))
    elif op == "setprop":
        pair.setprop(node, _prop(pair, node, data), data.draw(VALUES, "value"))
    elif op == "setprop_inplace":
        value = data.draw(st.binary(min_size=4, max_size=4) | st.binary(min_size=8, max_size=8))
        pair.setprop_inplace(node, _prop(pair, node, data), value)
    elif op == "delprop":
        pair.delprop(node, _prop(pair, node, data))
    elif op == "del_node" and node != 0:  # the root goes in test_bad_offsets_...
        pair.del_node(node)
    else:
        pair.getprop(node, _prop(pair, node, data))
        pair.subnode_offset(node, data.draw(NAMES, "name"))
        pair.get_name(node)
        pair.path_offset(data.draw(st.sampled_from(["/a", "/a@1/b", "/c/", "a", "/x/y"])))
        if node >= 0:
            pair.properties(node)
            pair.children(node)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.none() | st.integers(0, 2**32), st.sampled_from(["kho-v1", "kho-v3"]))
def test_random_edits_match_libfdt_step_for_step(data: st.DataObject, seed: int | None,
                                                 compatible: str) -> None:
    """From the boot-time root, in a page of zeros or of junk."""
    fill = b"" if seed is None else random.Random(seed).randbytes(PAGE)
    pair = Pair(kho_root(compatible), fill=fill)
    pair.open_into()
    for _ in range(data.draw(st.integers(1, 25), "steps")):
        _step(pair, data)

