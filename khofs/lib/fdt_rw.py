"""libfdt's read-write functions (scripts/dtc/libfdt/fdt_rw.c, with what they use of fdt.c,
fdt_ro.c and fdt_wip.c), editing a tree in place in a fixed buffer.

From 6.19 the kernel keeps its KHO root FDT in one page and edits it there:
fdt_open_into(root, root, PAGE_SIZE) claims the whole page, fdt_add_subnode / fdt_setprop /
fdt_del_node splice the struct and strings blocks in place, fdt_setprop_inplace (or a store
through fdt_getprop_w) rewrites a value, and fdt_pack shrinks the tree back to its data. Like
libfdt, FdtRw keeps nothing but the buffer: every call reads its state from the header.

The algorithms are libfdt's, step for step, and so are the bytes they leave behind: a splice
moves the tail with memmove and does not clear what it leaves, so the padding after a value
whose length is not a multiple of 4 holds whatever bytes were there before, and the bytes
after the data (after fdt_pack, or after a deletion) keep their old contents. Offsets are
libfdt's: node and property offsets count from the start of the struct block; value offsets
returned by getprop_w and setprop_placeholder count from the start of the buffer.

Results are libfdt's: a non-negative value or a negative FDT_ERR_* code. Where C would read or
write outside the buffer because the header says so (blocks or a totalsize reaching past it),
we return an error instead, before writing anything: -FDT_ERR_NOSPACE for an edit that would
grow the data past the buffer or an open_into size beyond it, -FDT_ERR_TRUNCATED for a move
whose source lies past it (or whose size is the negative one an unreadable reserve map gives).

The libfdt followed is the kernel's: scripts/dtc at dtc v1.7.2-35 (Linux 6.18, 6.19), -62
(7.0) and -69 (7.1) do the same in these functions. Like those, and unlike dtc after 47d7c01
(April 2026), fdt_num_mem_rsv() does not probe the header and fdt_open_into() / fdt_pack() do
not check its result. For well-formed trees all of it is the same as Debian's dtc 1.6.1.
"""

from __future__ import annotations

from khofs.lib.libfdt import (
    _LAST_COMP_VERSION,
    _MAGIC,
    _OFF_DT_STRINGS,
    _OFF_DT_STRUCT,
    _OFF_MEM_RSVMAP,
    _SIZE_DT_STRINGS,
    _SIZE_DT_STRUCT,
    _TAG_NAMEOFF,
    _TOTALSIZE,
    _U32,
    _U64,
    _VERSION,
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    FDT_ERR_BADLAYOUT,
    FDT_ERR_BADMAGIC,
    FDT_ERR_BADOFFSET,
    FDT_ERR_BADPATH,
    FDT_ERR_BADSTATE,
    FDT_ERR_BADSTRUCTURE,
    FDT_ERR_BADVERSION,
    FDT_ERR_EXISTS,
    FDT_ERR_INTERNAL,
    FDT_ERR_NOSPACE,
    FDT_ERR_NOTFOUND,
    FDT_ERR_TRUNCATED,
    FDT_FIRST_SUPPORTED_VERSION,
    FDT_HEADER_SIZE,
    FDT_LAST_SUPPORTED_VERSION,
    FDT_MAGIC,
    FDT_NOP,
    FDT_PROP,
    FDT_PROP_HEADER_SIZE,
    FDT_RESERVE_ENTRY_SIZE,
    FDT_SW_MAGIC,
    FDT_TAGSIZE,
    _cstr,
    fdt_next_tag,
    fdt_tagalign,
)

_BOOT_CPUID_PHYS = 28  # the one header field libfdt.py has no use for
_M32 = 0xFFFFFFFF  # C's uint32_t arithmetic wraps
_INT32_MAX = 0x7FFFFFFF
# FDT_ALIGN(sizeof(struct fdt_header), 8): where fdt_packblocks_() puts the reserve map.
_PACKED_RSVMAP = -(-FDT_HEADER_SIZE // 8) * 8
_NODE_HEADER_SIZE = FDT_TAGSIZE  # sizeof(struct fdt_node_header) before the name


def _int32(value: int) -> int:
    """A u32 read into a C int."""
    return value - (1 << 32) if value & 0x80000000 else value


class FdtRw:
    """A flattened device tree edited in place in `buf` with libfdt's read-write functions."""

    def __init__(self, buf: bytearray | memoryview) -> None:
        view = memoryview(buf)
        if view.readonly:
            raise ValueError("FdtRw needs a writable buffer")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if len(view) < FDT_HEADER_SIZE:
            raise ValueError(f"FdtRw: a {len(view)}-byte buffer has no room for a header")
        self._buf = view

    @property
    def buf(self) -> memoryview:
        """The buffer holding the tree."""
        return self._buf

    # --- header and memory: fdt_get_header() / fdt_set_*(), memmove ----------------------

    def _get(self, field: int, base: int = 0) -> int:
        return int(_U32.unpack_from(self._buf, base + field)[0])

    def _set(self, field: int, value: int, base: int = 0) -> None:
        _U32.pack_into(self._buf, base + field, value & _M32)

    def _memmove(self, dst: int, src: int, length: int) -> None:
        if length > 0:
            self._buf[dst:dst + length] = bytes(self._buf[src:src + length])

    def _inside(self, *ranges: tuple[int, int]) -> bool:
        """Every (start, length) lies in the buffer: not in libfdt, which trusts the header."""
        return all(start >= 0 and length >= 0 and start + length <= len(self._buf)
                   for start, length in ranges)

    # --- probes: fdt.c fdt_ro_probe_(), fdt_rw.c fdt_rw_probe_() ---------------------------

    def _ro_probe(self) -> int:
        """fdt_ro_probe_(): the totalsize, or why this is no tree (a sequential-write tree
        being built passes, as in libfdt)."""
        totalsize = self._get(_TOTALSIZE)
        magic = self._get(_MAGIC)
        if magic == FDT_MAGIC:
            if (self._get(_VERSION) < FDT_FIRST_SUPPORTED_VERSION
                    or self._get(_LAST_COMP_VERSION) > FDT_LAST_SUPPORTED_VERSION):
                return -FDT_ERR_BADVERSION
        elif magic == FDT_SW_MAGIC:
            if self._get(_SIZE_DT_STRUCT) == 0:
                return -FDT_ERR_BADSTATE
        else:
            return -FDT_ERR_BADMAGIC
        return totalsize if totalsize < _INT32_MAX else -FDT_ERR_TRUNCATED

    def _blocks_misordered(self, mem_rsv_size: int, struct_size: int) -> bool:
        """fdt_blocks_misordered_(): the blocks are not header, reserve map, struct, strings,
        in that order and inside totalsize."""
        off_rsv = self._get(_OFF_MEM_RSVMAP)
        off_struct = self._get(_OFF_DT_STRUCT)
        off_strings = self._get(_OFF_DT_STRINGS)
        return (off_rsv < _PACKED_RSVMAP
                or off_struct < (off_rsv + mem_rsv_size) & _M32
                or off_strings < (off_struct + struct_size) & _M32
                or self._get(_TOTALSIZE) < (off_strings + self._get(_SIZE_DT_STRINGS)) & _M32)

    def _rw_probe(self) -> int:
        """fdt_rw_probe_(): a finished tree of version 17 with its blocks in order; a later
        version is downgraded to 17 (fdt_downgrade_version())."""
        err = self._ro_probe()
        if err < 0:
            return err
        if self._get(_VERSION) < 17:
            return -FDT_ERR_BADVERSION
        if self._blocks_misordered(FDT_RESERVE_ENTRY_SIZE, self._get(_SIZE_DT_STRUCT)):
            return -FDT_ERR_BADLAYOUT
        if self._get(_VERSION) > FDT_LAST_SUPPORTED_VERSION:
            self._set(_VERSION, FDT_LAST_SUPPORTED_VERSION)
        return 0

    # --- the struct block: fdt.c fdt_offset_ptr(), fdt_next_tag() ---------------------------

    def _struct_block(self) -> bytes:
        """The bytes fdt_offset_ptr() lets fdt_next_tag() see: up to totalsize and, from
        version 17, up to size_dt_struct."""
        start = self._get(_OFF_DT_STRUCT)
        end = self._get(_TOTALSIZE)
        if self._get(_VERSION) >= 0x11:
            end = min(end, start + self._get(_SIZE_DT_STRUCT))
        return bytes(self._buf[start:end]) if end > start else b""

    def _next_tag(self, offset: int) -> tuple[int, int]:
        """fdt_next_tag(): (tag, next offset or a negative FDT_ERR_*). Before version 16 a value
        of 8 bytes or more was aligned to 8 within the struct block, 4 bytes further on."""
        block = self._struct_block()
        tag, nextoffset = fdt_next_tag(block, offset)
        if tag == FDT_PROP and self._get(_VERSION) < 0x10:
            length = int(_U32.unpack_from(block, offset + 4)[0])
            if length >= 8 and (offset + FDT_PROP_HEADER_SIZE) % 8:
                end = offset + FDT_PROP_HEADER_SIZE + length + 4
                if end > len(block):
                    return FDT_END, -FDT_ERR_BADSTRUCTURE
                nextoffset = fdt_tagalign(end)
        return tag, nextoffset

    def _check_node_offset(self, offset: int) -> int:
        """fdt_check_node_offset_(): the offset after the FDT_BEGIN_NODE at `offset`."""
        if offset < 0 or offset % FDT_TAGSIZE:
            return -FDT_ERR_BADOFFSET
        tag, nextoffset = self._next_tag(offset)
        return nextoffset if tag == FDT_BEGIN_NODE else -FDT_ERR_BADOFFSET

    def _check_prop_offset(self, offset: int) -> int:
        """fdt_check_prop_offset_(): the offset after the FDT_PROP at `offset`."""
        if offset < 0 or offset % FDT_TAGSIZE:
            return -FDT_ERR_BADOFFSET
        tag, nextoffset = self._next_tag(offset)
        return nextoffset if tag == FDT_PROP else -FDT_ERR_BADOFFSET

    # --- walking nodes: fdt.c fdt_next_node(), fdt_first/next_subnode() ------------------

    def next_node(self, offset: int, depth: int | None) -> tuple[int, int | None]:
        """fdt_next_node(): (the next node's offset or an error, the depth updated). A
        negative `offset` starts at the root. Without a depth (None), running off the end
        reads as -FDT_ERR_NOTFOUND; with one, leaving the starting node returns the offset
        after its FDT_END_NODE with a negative depth."""
        nextoffset = 0
        if offset >= 0:
            nextoffset = self._check_node_offset(offset)
            if nextoffset < 0:
                return nextoffset, depth
        while True:
            offset = nextoffset
            tag, nextoffset = self._next_tag(offset)
            if tag == FDT_BEGIN_NODE:
                return offset, None if depth is None else depth + 1
            if tag == FDT_END_NODE and depth is not None:
                depth -= 1
                if depth < 0:
                    return nextoffset, depth
            elif tag == FDT_END:
                if nextoffset >= 0 or (nextoffset == -FDT_ERR_TRUNCATED and depth is None):
                    return -FDT_ERR_NOTFOUND, depth
                return nextoffset, depth

    def first_subnode(self, offset: int) -> int:
        """fdt_first_subnode(): the first child of the node at `offset`."""
        offset, depth = self.next_node(offset, 0)
        return -FDT_ERR_NOTFOUND if offset < 0 or depth != 1 else offset

    def next_subnode(self, offset: int) -> int:
        """fdt_next_subnode(): the next sibling of the node at `offset`."""
        depth: int | None = 1
        while True:
            offset, depth = self.next_node(offset, depth)
            assert depth is not None
            if offset < 0 or depth < 1:
                return -FDT_ERR_NOTFOUND
            if depth <= 1:
                return offset

    def _node_end_offset(self, offset: int) -> int:
        """fdt_node_end_offset_() (fdt_wip.c): the offset after the node's FDT_END_NODE. A
        negative offset comes back unchanged."""
        depth: int | None = 0
        while offset >= 0 and depth is not None and depth >= 0:
            offset, depth = self.next_node(offset, depth)
        return offset

    # --- reading: fdt_ro.c ---------------------------------------------------------------

    def num_mem_rsv(self) -> int:
        """fdt_num_mem_rsv(): the reserve map's entries before the one of size 0. No header
        probe (dtc added one in 2026, 47d7c01)."""
        off_rsv = self._get(_OFF_MEM_RSVMAP)
        last = (self._get(_TOTALSIZE) - FDT_RESERVE_ENTRY_SIZE) & _M32  # fdt_mem_rsv()
        n = 0
        while True:
            absoffset = (off_rsv + n * FDT_RESERVE_ENTRY_SIZE) & _M32
            if absoffset < off_rsv or absoffset > last:
                return -FDT_ERR_TRUNCATED
            if not self._inside((absoffset, FDT_RESERVE_ENTRY_SIZE)):
                return -FDT_ERR_TRUNCATED  # not libfdt: C reads on past the buffer
            if _U64.unpack_from(self._buf, absoffset + 8)[0] == 0:
                return n
            n += 1

    def get_string(self, stroffset: int) -> bytes | int:
        """fdt_get_string(): the NUL-terminated string at `stroffset` in the strings block
        (negative offsets from its end while a tree is being built)."""
        totalsize = self._ro_probe()
        if totalsize < 0:
            return totalsize
        absoffset = (stroffset + self._get(_OFF_DT_STRINGS)) & _M32
        if absoffset >= totalsize:
            return -FDT_ERR_BADOFFSET
        length = totalsize - absoffset
        size_strings = self._get(_SIZE_DT_STRINGS)
        if self._get(_MAGIC) == FDT_MAGIC:
            if stroffset < 0:
                return -FDT_ERR_BADOFFSET
            if self._get(_VERSION) >= 17:
                if stroffset >= size_strings:
                    return -FDT_ERR_BADOFFSET
                length = min(length, size_strings - stroffset)
        else:  # FDT_SW_MAGIC: _ro_probe() let nothing else through
            sw_stroffset = -stroffset & _M32
            if stroffset >= 0 or sw_stroffset > size_strings:
                return -FDT_ERR_BADOFFSET
            length = min(length, sw_stroffset)
        region = bytes(self._buf[absoffset:absoffset + length])
        nul = region.find(b"\0")
        return -FDT_ERR_TRUNCATED if nul < 0 else region[:nul]

    def _string_eq(self, stroffset: int, s: bytes) -> bool:
        """fdt_string_eq_()."""
        return self.get_string(stroffset) == s

    def get_name(self, nodeoffset: int) -> bytes | int:
        """fdt_get_name(): the node's name as stored (with any unit address); before
        version 16 names were full paths and only the last component is returned."""
        err = self._ro_probe()
        if err >= 0:
            err = self._check_node_offset(nodeoffset)
        if err < 0:
            return err
        block = self._struct_block()
        start = nodeoffset + _NODE_HEADER_SIZE
        name = block[start:block.index(b"\0", start)]
        if self._get(_VERSION) < 0x10:
            slash = name.rfind(b"/")
            if slash < 0:
                return -FDT_ERR_BADSTRUCTURE
            name = name[slash + 1:]
        return name

    def _nodename_eq(self, offset: int, s: bytes) -> bool:
        """fdt_nodename_eq_(): an exact match, or `s@unit` when s has no '@'."""
        name = self.get_name(offset)
        if isinstance(name, int) or len(name) < len(s) or name[:len(s)] != s:
            return False
        return len(name) == len(s) or (b"@" not in s and name[len(s)] == ord("@"))

    def _subnode_offset_namelen(self, offset: int, name: bytes) -> int:
        """fdt_subnode_offset_namelen(): walk the children (depth 1) of the node at `offset`.
        A negative `offset` comes back unchanged."""
        err = self._ro_probe()
        if err < 0:
            return err
        depth: int | None = 0
        while offset >= 0 and depth is not None and depth >= 0:
            if depth == 1 and self._nodename_eq(offset, name):
                return offset
            offset, depth = self.next_node(offset, depth)
        return -FDT_ERR_NOTFOUND if depth is not None and depth < 0 else offset

    def subnode_offset(self, parentoffset: int, name: str) -> int:
        """fdt_subnode_offset(): the child called `name` (or `name@unit`)."""
        return self._subnode_offset_namelen(parentoffset, _cstr(name))

    def path_offset(self, path: str) -> int:
        """fdt_path_offset(): '/'-separated names from the root; a path that does not start
        with '/' starts with an alias from /aliases."""
        return self._path_offset(_cstr(path))

    def _path_offset(self, path: bytes) -> int:
        """fdt_path_offset_namelen()."""
        err = self._ro_probe()
        if err < 0:
            return err
        if not path:
            return -FDT_ERR_BADPATH
        end = len(path)
        p, offset = 0, 0
        if path[0] != ord("/"):
            q = path.find(b"/")
            q = end if q < 0 else q
            alias = self._get_alias(path[:q])
            if alias is None:
                return -FDT_ERR_BADPATH
            offset = self._path_offset(alias)
            p = q
        while p < end:
            while path[p] == ord("/"):
                p += 1
                if p == end:
                    return offset
            q = path.find(b"/", p)
            q = end if q < 0 else q
            offset = self._subnode_offset_namelen(offset, path[p:q])
            if offset < 0:
                return offset
            p = q
        return offset

    def _get_alias(self, name: bytes) -> bytes | None:
        """fdt_get_alias_namelen(): /aliases/name, if it is a NUL-terminated absolute path."""
        aliases = self._path_offset(b"/aliases")
        if aliases < 0:
            return None
        offset, length = self._getprop_namelen(aliases, name)
        value = bytes(self._buf[offset:offset + length]) if offset >= 0 else b""
        if not value.endswith(b"\0") or not value.startswith(b"/"):
            return None
        return value.split(b"\0", 1)[0]

    def _nextprop(self, offset: int) -> int:
        """nextprop_(): the property at or after `offset`, skipping NOPs, in this node."""
        while True:
            tag, nextoffset = self._next_tag(offset)
            if tag == FDT_END:
                return -FDT_ERR_BADSTRUCTURE if nextoffset >= 0 else nextoffset
            if tag == FDT_PROP:
                return offset
            offset = nextoffset
            if tag != FDT_NOP:
                return -FDT_ERR_NOTFOUND

    def first_property_offset(self, nodeoffset: int) -> int:
        """fdt_first_property_offset()."""
        offset = self._check_node_offset(nodeoffset)
        return offset if offset < 0 else self._nextprop(offset)

    def next_property_offset(self, offset: int) -> int:
        """fdt_next_property_offset()."""
        offset = self._check_prop_offset(offset)
        return offset if offset < 0 else self._nextprop(offset)

    def _struct_u32(self, offset: int) -> int:
        """The big-endian u32 at `offset` in the struct block (fdt32_ld_())."""
        return int(_U32.unpack_from(self._buf, self._get(_OFF_DT_STRUCT) + offset)[0])

    def _prop_len(self, offset: int) -> int:
        """fdt_get_property_by_offset_(): the length of the property at `offset`."""
        err = self._check_prop_offset(offset)
        return err if err < 0 else _int32(self._struct_u32(offset + 4))

    def _get_property_namelen_(self, nodeoffset: int, name: bytes) -> tuple[int, int]:
        """fdt_get_property_namelen_(): (the property's offset, its length) or (error, 0)."""
        offset = self.first_property_offset(nodeoffset)
        while offset >= 0:
            length = self._prop_len(offset)
            if length < 0:
                offset = -FDT_ERR_INTERNAL
                break
            if self._string_eq(_int32(self._struct_u32(offset + 8)), name):
                return offset, length
            offset = self.next_property_offset(offset)
        return offset, 0

    def _get_property_namelen(self, nodeoffset: int, name: bytes) -> tuple[int, int]:
        """fdt_get_property_namelen(): not for trees before version 16."""
        if self._get(_VERSION) < 0x10:
            return -FDT_ERR_BADVERSION, 0
        return self._get_property_namelen_(nodeoffset, name)

    def _value_offset(self, poffset: int) -> int:
        """Where the value of the property at `poffset` starts in the buffer; before version
        16 a value of 8 bytes or more sat 4 bytes further on to align it (fdt_getprop())."""
        data = poffset + FDT_PROP_HEADER_SIZE
        length = self._struct_u32(poffset + 4)
        if self._get(_VERSION) < 0x10 and data % 8 and length >= 8:
            data += 4
        return self._get(_OFF_DT_STRUCT) + data

    def _getprop_namelen(self, nodeoffset: int, name: bytes) -> tuple[int, int]:
        """fdt_getprop_namelen(): (buffer offset of the value, its length) or (error, 0)."""
        poffset, length = self._get_property_namelen_(nodeoffset, name)
        if poffset < 0:
            return poffset, 0
        return self._value_offset(poffset), length

    def getprop_w(self, nodeoffset: int, name: str) -> tuple[int, int]:
        """fdt_getprop_w(): (buffer offset of the value, its length) or (error, 0); the
        kernel stores into the value through this pointer (kho_update_memory_map)."""
        return self._getprop_namelen(nodeoffset, _cstr(name))

    def getprop(self, nodeoffset: int, name: str) -> bytes | int:
        """fdt_getprop(): the value, or the error."""
        offset, length = self.getprop_w(nodeoffset, name)
        return offset if offset < 0 else bytes(self._buf[offset:offset + length])

    def getprop_by_offset(self, offset: int) -> tuple[bytes, bytes] | int:
        """fdt_getprop_by_offset(): (name, value) of the property at `offset`."""
        length = self._prop_len(offset)
        if length < 0:
            return length
        name = self.get_string(_int32(self._struct_u32(offset + 8)))
        if isinstance(name, int):
            return name
        start = self._value_offset(offset)
        return name, bytes(self._buf[start:start + length])

    # --- splicing: fdt_rw.c fdt_splice_() and friends -------------------------------------

    def _data_size(self) -> int:
        """fdt_data_size_(): where the strings block ends."""
        return (self._get(_OFF_DT_STRINGS) + self._get(_SIZE_DT_STRINGS)) & _M32

    def _splice(self, p: int, oldlen: int, newlen: int) -> int:
        """fdt_splice_(): make the `oldlen` bytes at buffer offset `p` `newlen` long, moving
        the rest of the data; the bytes uncovered are left as they were."""
        dsize = self._data_size()
        if oldlen < 0 or p + oldlen > dsize:
            return -FDT_ERR_BADOFFSET
        if p < 0 or dsize + newlen < oldlen:
            return -FDT_ERR_BADOFFSET
        if dsize - oldlen + newlen > self._get(_TOTALSIZE):
            return -FDT_ERR_NOSPACE
        # Not libfdt, which trusts the header: C would move data from or to past the buffer.
        if dsize > len(self._buf):
            return -FDT_ERR_TRUNCATED
        if dsize - oldlen + newlen > len(self._buf):
            return -FDT_ERR_NOSPACE
        self._memmove(p + newlen, p + oldlen, dsize - (p + oldlen))
        return 0

    def _splice_struct(self, p: int, oldlen: int, newlen: int) -> int:
        """fdt_splice_struct_(): the struct block grows or shrinks, the strings follow."""
        err = self._splice(p, oldlen, newlen)
        if err:
            return err
        delta = newlen - oldlen
        self._set(_SIZE_DT_STRUCT, self._get(_SIZE_DT_STRUCT) + delta)
        self._set(_OFF_DT_STRINGS, self._get(_OFF_DT_STRINGS) + delta)
        return 0

    def _splice_string(self, newlen: int) -> int:
        """fdt_splice_string_(): room for `newlen` more bytes at the end of the strings."""
        err = self._splice(self._data_size(), 0, newlen)
        if err:
            return err
        self._set(_SIZE_DT_STRINGS, self._get(_SIZE_DT_STRINGS) + newlen)
        return 0

    def _find_add_string(self, s: bytes) -> tuple[int, bool]:
        """fdt_find_add_string_(): (offset of s in the strings, whether it was added). The
        first match from the start of the block wins, also the tail of a longer string
        (fdt_find_string_len_()); a new string goes at the end."""
        strtab = self._get(_OFF_DT_STRINGS)
        size = self._get(_SIZE_DT_STRINGS)
        found = bytes(self._buf[strtab:strtab + size]).find(s + b"\0")
        if found >= 0:
            return found, False
        new = strtab + size
        err = self._splice_string(len(s) + 1)
        if err:
            return err, False
        self._buf[new:new + len(s) + 1] = s + b"\0"
        return new - strtab, True

    # --- editing: fdt_rw.c ---------------------------------------------------------------

    def _resize_property(self, nodeoffset: int, name: bytes, length: int) -> tuple[int, int]:
        """fdt_resize_property_(): (0, property offset) with the value resized in place, or
        (error, 0); -FDT_ERR_NOTFOUND if the node has no such property."""
        poffset, oldlen = self._get_property_namelen(nodeoffset, name)
        if poffset < 0:
            return poffset, 0
        data = self._get(_OFF_DT_STRUCT) + poffset + FDT_PROP_HEADER_SIZE
        err = self._splice_struct(data, fdt_tagalign(oldlen), fdt_tagalign(length))
        if err:
            return err, 0
        _U32.pack_into(self._buf, data - 8, length)  # prop->len
        return 0, poffset

    def _add_property(self, nodeoffset: int, name: bytes, length: int) -> tuple[int, int]:
        """fdt_add_property_(): a new property FIRST in the node, right after its name; its
        name string is taken back if the struct has no room for it."""
        nextoffset = self._check_node_offset(nodeoffset)
        if nextoffset < 0:
            return nextoffset, 0
        namestroff, allocated = self._find_add_string(name)
        if namestroff < 0:
            return namestroff, 0
        prop = self._get(_OFF_DT_STRUCT) + nextoffset
        err = self._splice_struct(prop, 0, FDT_PROP_HEADER_SIZE + fdt_tagalign(length))
        if err:
            if allocated:  # fdt_del_last_string_(): its bytes stay behind the data
                self._set(_SIZE_DT_STRINGS, self._get(_SIZE_DT_STRINGS) - (len(name) + 1))
            return err, 0
        _TAG_NAMEOFF.pack_into(self._buf, prop, FDT_PROP, length, namestroff)
        return 0, nextoffset

    def setprop_placeholder(self, nodeoffset: int, name: str, length: int) -> tuple[int, int]:
        """fdt_setprop_placeholder(): (0, buffer offset of the value) or (error, 0). An
        existing property is resized in place, else a new one goes first in the node. The
        value bytes are not written: they hold whatever was there."""
        if length < 0:
            raise ValueError(f"fdt_setprop_placeholder: negative length {length}")
        err = self._rw_probe()
        if err:
            return err, 0
        raw = _cstr(name)
        err, poffset = self._resize_property(nodeoffset, raw, length)
        if err == -FDT_ERR_NOTFOUND:
            err, poffset = self._add_property(nodeoffset, raw, length)
        if err:
            return err, 0
        return 0, self._get(_OFF_DT_STRUCT) + poffset + FDT_PROP_HEADER_SIZE

    def setprop(self, nodeoffset: int, name: str, value: bytes) -> int:
        """fdt_setprop(): set the property to `value` (the padding after it is not cleared)."""
        err, offset = self.setprop_placeholder(nodeoffset, name, len(value))
        if err:
            return err
        self._buf[offset:offset + len(value)] = value
        return 0

    def delprop(self, nodeoffset: int, name: str) -> int:
        """fdt_delprop(): cut the property out of the struct block."""
        err = self._rw_probe()
        if err:
            return err
        poffset, length = self._get_property_namelen(nodeoffset, _cstr(name))
        if poffset < 0:
            return poffset
        return self._splice_struct(self._get(_OFF_DT_STRUCT) + poffset,
                                   FDT_PROP_HEADER_SIZE + fdt_tagalign(length), 0)

    def add_subnode(self, parentoffset: int, name: str) -> int:
        """fdt_add_subnode(): an empty node placed right after the parent's properties (and
        NOPs), i.e. before its other children; its offset. -FDT_ERR_EXISTS if the parent has
        a child `name` (or `name@unit` when name has no '@')."""
        err = self._rw_probe()
        if err:
            return err
        raw = _cstr(name)
        offset = self._subnode_offset_namelen(parentoffset, raw)
        if offset >= 0:
            return -FDT_ERR_EXISTS
        if offset != -FDT_ERR_NOTFOUND:
            return offset
        tag, nextoffset = self._next_tag(parentoffset)
        if tag != FDT_BEGIN_NODE:
            return -FDT_ERR_INTERNAL
        while True:
            offset = nextoffset
            tag, nextoffset = self._next_tag(offset)
            if tag not in (FDT_PROP, FDT_NOP):
                break
        namesize = fdt_tagalign(len(raw) + 1)
        nodelen = _NODE_HEADER_SIZE + namesize + FDT_TAGSIZE
        node = self._get(_OFF_DT_STRUCT) + offset
        err = self._splice_struct(node, 0, nodelen)
        if err:
            return err
        _U32.pack_into(self._buf, node, FDT_BEGIN_NODE)
        self._buf[node + 4:node + 4 + namesize] = raw.ljust(namesize, b"\0")
        _U32.pack_into(self._buf, node + nodelen - FDT_TAGSIZE, FDT_END_NODE)
        return offset

    def del_node(self, nodeoffset: int) -> int:
        """fdt_del_node(): cut the node and everything under it out of the struct block. A
        negative offset is returned as it is, as libfdt does."""
        err = self._rw_probe()
        if err:
            return err
        endoffset = self._node_end_offset(nodeoffset)
        if endoffset < 0:
            return endoffset
        return self._splice_struct(self._get(_OFF_DT_STRUCT) + nodeoffset,
                                   endoffset - nodeoffset, 0)

    # --- whole-tree moves: fdt_open_into(), fdt_pack() -------------------------------------

    def _packblocks(self, old: int, new: int, mem_rsv_size: int, struct_size: int,
                    strings_size: int) -> int:
        """fdt_packblocks_(): the tree whose header is at buffer offset `old` rewritten at
        `new` as header, reserve map, struct, strings, with no gaps, one memmove at a time,
        each reading the old header after the new one was written (that matters when the
        two overlap). The header fields at `new` other than the offsets and sizes are left
        as they are."""
        struct_off = _PACKED_RSVMAP + mem_rsv_size
        moves = ((_OFF_MEM_RSVMAP, _PACKED_RSVMAP, mem_rsv_size),
                 (_OFF_DT_STRUCT, struct_off, struct_size),
                 (_OFF_DT_STRINGS, struct_off + struct_size, strings_size))
        if not self._packblocks_fit(old, new, moves):
            return -FDT_ERR_TRUNCATED
        for field, offset, size in moves:
            if not self._move_block(new + offset, old + self._get(field, old), size):
                return -FDT_ERR_TRUNCATED
            self._set(field, offset, new)
            if field == _OFF_DT_STRUCT:
                self._set(_SIZE_DT_STRUCT, struct_size, new)
        self._set(_SIZE_DT_STRINGS, self._get(_SIZE_DT_STRINGS, old), new)
        return 0

    def _packblocks_fit(self, old: int, new: int,
                        moves: tuple[tuple[int, int, int], ...]) -> bool:
        """Ours, not libfdt's: every move of fdt_packblocks_() stays in the buffer, checked
        before anything is written. When the new header overlaps the old one, the later moves
        read what the earlier ones wrote: _move_block() checks those one at a time."""
        if not self._inside((new, FDT_HEADER_SIZE)):
            return False
        if 0 < abs(new - old) < FDT_HEADER_SIZE:
            return True
        return self._inside(*((new + offset, size) for _, offset, size in moves),
                            *((old + self._get(field, old), size) for field, _, size in moves))

    def _move_block(self, dst: int, src: int, length: int) -> bool:
        """memmove() for fdt_packblocks_(), refused where C would copy outside the buffer
        (or copy ~4 GiB, for the negative size of a reserve map running off the tree)."""
        if not self._inside((dst, length), (src, length)):
            return False
        self._memmove(dst, src, length)
        return True

    def _move(self, bufsize: int) -> int:
        """fdt_move(fdt, fdt, bufsize): in place, only the checks remain."""
        if bufsize < 0:
            return -FDT_ERR_NOSPACE
        err = self._ro_probe()
        if err < 0:
            return err
        if self._get(_TOTALSIZE) > bufsize or bufsize > len(self._buf):
            return -FDT_ERR_NOSPACE  # the second test is ours: C trusts bufsize
        return 0

    def _struct_size(self) -> int:
        """fdt_open_into()'s struct size: the header's from version 17, else walked up to and
        including FDT_END; before version 16, -FDT_ERR_BADVERSION."""
        version = self._get(_VERSION)
        if version >= 17:
            return self._get(_SIZE_DT_STRUCT)
        if version != 16:
            return -FDT_ERR_BADVERSION
        struct_size = 0
        while True:
            tag, struct_size = self._next_tag(struct_size)
            if tag == FDT_END:
                return struct_size

    def open_into(self, bufsize: int) -> int:
        """fdt_open_into(fdt, fdt, bufsize): make the tree editable in the first `bufsize`
        bytes of the buffer. Blocks in order: only the header changes (version 17, the
        struct size, totalsize = bufsize). Blocks out of order: the tree is packed into the
        buffer after its old end and moved back to the start, header and all, so the
        fields the packing does not write (boot_cpuid_phys) come from what lay there."""
        fdtend = self._get(_TOTALSIZE)
        err = self._ro_probe()
        if err < 0:
            return err
        # An error from fdt_num_mem_rsv() goes unchecked, as in the kernel's libfdt (dtc
        # v1.7.2-35): the size comes out negative and the layout check decides what follows.
        mem_rsv_size = (self.num_mem_rsv() + 1) * FDT_RESERVE_ENTRY_SIZE
        struct_size = self._struct_size()
        if struct_size < 0:
            return struct_size
        if not self._blocks_misordered(mem_rsv_size, struct_size):
            err = self._move(bufsize)
            if err:
                return err
            self._set(_VERSION, 17)
            self._set(_SIZE_DT_STRUCT, struct_size)
            self._set(_TOTALSIZE, bufsize)
            return 0
        newsize = _PACKED_RSVMAP + mem_rsv_size + struct_size + self._get(_SIZE_DT_STRINGS)
        if bufsize < newsize or bufsize > len(self._buf):
            return -FDT_ERR_NOSPACE  # the second test is ours: C trusts bufsize
        tmp = 0  # first try the start of the buffer; it overlaps the old tree unless empty
        if tmp + newsize > 0 and tmp < fdtend:
            tmp = fdtend
            if tmp + newsize > bufsize:
                return -FDT_ERR_NOSPACE
        err = self._packblocks(0, tmp, mem_rsv_size, struct_size, self._get(_SIZE_DT_STRINGS))
        if err:
            return err
        self._memmove(0, tmp, newsize)
        self._set(_MAGIC, FDT_MAGIC)
        self._set(_TOTALSIZE, bufsize)
        self._set(_VERSION, 17)
        self._set(_LAST_COMP_VERSION, 16)
        # fdt_set_boot_cpuid_phys(buf, fdt_boot_cpuid_phys(fdt)): fdt is buf, so this keeps
        # the value just moved in from the scratch copy's header.
        self._set(_BOOT_CPUID_PHYS, self._get(_BOOT_CPUID_PHYS))
        return 0

    def pack(self) -> int:
        """fdt_pack(): the blocks moved down behind the header, totalsize cut to the data.
        The bytes after it keep their old contents."""
        err = self._rw_probe()
        if err:
            return err
        mem_rsv_size = (self.num_mem_rsv() + 1) * FDT_RESERVE_ENTRY_SIZE  # unchecked, as above
        err = self._packblocks(0, 0, mem_rsv_size, self._get(_SIZE_DT_STRUCT),
                               self._get(_SIZE_DT_STRINGS))
        if err:
            return err
        self._set(_TOTALSIZE, self._data_size())
        return 0

    # --- values in place: fdt_wip.c -------------------------------------------------------

    def _setprop_inplace_partial(self, nodeoffset: int, name: str, idx: int,
                                 value: bytes) -> int:
        """fdt_setprop_inplace_namelen_partial(): overwrite part of a value."""
        offset, proplen = self.getprop_w(nodeoffset, name)
        if offset < 0:
            return offset
        if proplen & _M32 < len(value) + idx:
            return -FDT_ERR_NOSPACE
        self._buf[offset + idx:offset + idx + len(value)] = value
        return 0

    def setprop_inplace(self, nodeoffset: int, name: str, value: bytes) -> int:
        """fdt_setprop_inplace(): overwrite a value of the same length; nothing moves.
        -FDT_ERR_NOSPACE if the lengths differ. No header checks, as in libfdt."""
        offset, proplen = self.getprop_w(nodeoffset, name)
        if offset < 0:
            return offset
        if proplen != len(value):
            return -FDT_ERR_NOSPACE
        return self._setprop_inplace_partial(nodeoffset, name, 0, value)
