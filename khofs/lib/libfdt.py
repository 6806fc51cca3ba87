"""libfdt's sequential writer (scripts/dtc/libfdt/fdt_sw.c), writing in place into a buffer.

The kernel builds its KHO root FDT with fdt_create() on one page of memory and serves those live
bytes, so this class keeps every bit of its state where libfdt keeps it: in the header of the
buffer being built. While building, the header holds FDT_SW_MAGIC, off_dt_strings 0 (reserve
map state) or totalsize (struct state), and the flags in last_comp_version; the struct block
grows up from the reserve map while the strings grow down from the end of the buffer, and
fdt_finish() moves the strings down behind the struct and rebases the name offsets.

Results are libfdt's: 0 or a negative FDT_ERR_* code, plain ints so that callers can OR them
together as the kernel does. Where C would compute out of bounds (a size beyond the buffer, a
negative length, a header scribbled over mid-build) we refuse instead of writing outside it.
"""

from __future__ import annotations

import struct

FDT_MAGIC = 0xD00DFEED
FDT_SW_MAGIC = ~FDT_MAGIC & 0xFFFFFFFF  # "being built" magic (fdt_sw.c)

FDT_BEGIN_NODE = 0x1
FDT_END_NODE = 0x2
FDT_PROP = 0x3
FDT_NOP = 0x4
FDT_END = 0x9

FDT_ERR_NOTFOUND = 1
FDT_ERR_EXISTS = 2
FDT_ERR_NOSPACE = 3
FDT_ERR_BADOFFSET = 4
FDT_ERR_BADPATH = 5
FDT_ERR_BADPHANDLE = 6
FDT_ERR_BADSTATE = 7
FDT_ERR_TRUNCATED = 8
FDT_ERR_BADMAGIC = 9
FDT_ERR_BADVERSION = 10
FDT_ERR_BADSTRUCTURE = 11
FDT_ERR_BADLAYOUT = 12
FDT_ERR_INTERNAL = 13
FDT_ERR_BADNCELLS = 14
FDT_ERR_BADVALUE = 15
FDT_ERR_BADOVERLAY = 16
FDT_ERR_NOPHANDLES = 17
FDT_ERR_BADFLAGS = 18
FDT_ERR_ALIGNMENT = 19

FDT_CREATE_FLAG_NO_NAME_DEDUP = 0x1
FDT_CREATE_FLAGS_ALL = FDT_CREATE_FLAG_NO_NAME_DEDUP

FDT_FIRST_SUPPORTED_VERSION = 0x02
FDT_LAST_COMPATIBLE_VERSION = 0x10
FDT_LAST_SUPPORTED_VERSION = 0x11

FDT_TAGSIZE = 4
FDT_HEADER_SIZE = 40  # sizeof(struct fdt_header)
FDT_RESERVE_ENTRY_SIZE = 16  # sizeof(struct fdt_reserve_entry)
FDT_PROP_HEADER_SIZE = 12  # sizeof(struct fdt_property): tag, len, nameoff
# fdt_create_with_flags: the reserve map starts at the header size aligned to an entry.
FDT_SW_HDRSIZE = -(-FDT_HEADER_SIZE // FDT_RESERVE_ENTRY_SIZE) * FDT_RESERVE_ENTRY_SIZE

# Header fields: byte offsets of the big-endian u32s of struct fdt_header.
_MAGIC = 0
_TOTALSIZE = 4
_OFF_DT_STRUCT = 8
_OFF_DT_STRINGS = 12
_OFF_MEM_RSVMAP = 16
_VERSION = 20
_LAST_COMP_VERSION = 24
_SIZE_DT_STRINGS = 32
_SIZE_DT_STRUCT = 36

_INT_MAX = 0x7FFFFFFF
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TAG_NAMEOFF = struct.Struct(">III")  # struct fdt_property: tag, len, nameoff
_RSV_ENTRY = struct.Struct(">QQ")


def fdt_totalsize(data: bytes | bytearray | memoryview) -> int:
    """fdt_totalsize(): the header's totalsize field."""
    return int(_U32.unpack_from(data, _TOTALSIZE)[0])


def fdt_tagalign(n: int) -> int:
    """FDT_TAGALIGN: round up to the 4-byte tag alignment."""
    return (n + FDT_TAGSIZE - 1) & ~(FDT_TAGSIZE - 1)


def _cstr(s: str) -> bytes:
    """The bytes C sees for a `const char *`: strlen stops at the first NUL."""
    return s.encode().split(b"\0", 1)[0]


def fdt_next_tag(block: bytes, offset: int) -> tuple[int, int]:
    """fdt_next_tag() over a struct block: (tag, next offset or a negative FDT_ERR_*).

    Any problem reads as FDT_END with a negative next offset, as in libfdt: TRUNCATED when the
    tag itself is missing, BADSTRUCTURE for a bad tag or a name or value running off the block.
    """
    if offset < 0 or offset + FDT_TAGSIZE > len(block):
        return FDT_END, -FDT_ERR_TRUNCATED
    tag = _U32.unpack_from(block, offset)[0]
    pos = offset + FDT_TAGSIZE
    if tag == FDT_BEGIN_NODE:
        nul = block.find(b"\0", pos)
        if nul < 0:
            return FDT_END, -FDT_ERR_BADSTRUCTURE
        pos = nul + 1
    elif tag == FDT_PROP:
        if pos + 4 > len(block):
            return FDT_END, -FDT_ERR_BADSTRUCTURE
        length = _U32.unpack_from(block, pos)[0]
        if length + pos >= _INT_MAX:
            return FDT_END, -FDT_ERR_BADSTRUCTURE
        # Versions before 16 8-byte-aligned large values; a tree being built is version 17.
        pos += FDT_PROP_HEADER_SIZE - FDT_TAGSIZE + length
    elif tag not in (FDT_END, FDT_END_NODE, FDT_NOP):
        return FDT_END, -FDT_ERR_BADSTRUCTURE
    if pos > len(block):
        return FDT_END, -FDT_ERR_BADSTRUCTURE
    return tag, fdt_tagalign(pos)


class FdtSw:
    """A device tree being written with libfdt's sequential-write functions, in place in `buf`.

    Nothing lives in the object but the buffer: like libfdt, every call reads its state from
    the header, so a new FdtSw over the same bytes carries on where another left off.
    """

    def __init__(self, buf: bytearray | memoryview) -> None:
        view = memoryview(buf)
        if view.readonly:
            raise ValueError("FdtSw needs a writable buffer")
        self._buf = view.cast("B") if view.format != "B" or view.ndim != 1 else view

    @property
    def buf(self) -> memoryview:
        """The buffer the tree is written into."""
        return self._buf

    # --- header access: fdt_get_header() / fdt_set_*() ------------------------------------

    def _get(self, field: int) -> int:
        return int(_U32.unpack_from(self._buf, field)[0])

    def _set(self, field: int, value: int) -> None:
        _U32.pack_into(self._buf, field, value & 0xFFFFFFFF)

    # --- state checks ---------------------------------------------------------------------

    def _probe(self) -> int:
        """fdt_sw_probe_(): BADSTATE once finished, BADMAGIC if never created."""
        if len(self._buf) < FDT_HEADER_SIZE:
            return -FDT_ERR_BADMAGIC
        magic = self._get(_MAGIC)
        if magic == FDT_MAGIC:
            return -FDT_ERR_BADSTATE
        if magic != FDT_SW_MAGIC:
            return -FDT_ERR_BADMAGIC
        # Not in libfdt, which trusts the header: one scribbled over so that the blocks no
        # longer fit the buffer would make C touch memory outside it.
        totalsize = self._get(_TOTALSIZE)
        used = self._get(_OFF_DT_STRUCT) + self._get(_SIZE_DT_STRUCT)
        if totalsize > len(self._buf) or used + self._get(_SIZE_DT_STRINGS) > totalsize:
            return -FDT_ERR_BADSTATE
        return 0

    def _probe_memrsv(self) -> int:
        """fdt_sw_probe_memrsv_(): only before fdt_finish_reservemap() (off_dt_strings 0)."""
        err = self._probe()
        if err:
            return err
        return -FDT_ERR_BADSTATE if self._get(_OFF_DT_STRINGS) != 0 else 0

    def _probe_struct(self) -> int:
        """fdt_sw_probe_struct_(): after fdt_finish_reservemap() (off_dt_strings == totalsize)."""
        err = self._probe()
        if err:
            return err
        if self._get(_OFF_DT_STRINGS) != self._get(_TOTALSIZE):
            return -FDT_ERR_BADSTATE
        return 0

    # --- space: struct from the front, strings from the back --------------------------------

    def _grab_space(self, length: int) -> int:
        """fdt_grab_space_(): claim `length` struct bytes; their buffer offset, or -1 if full."""
        offset = self._get(_SIZE_DT_STRUCT)
        off_struct = self._get(_OFF_DT_STRUCT)
        spaceleft = self._get(_TOTALSIZE) - off_struct - self._get(_SIZE_DT_STRINGS)
        if offset + length > spaceleft:
            return -1
        self._set(_SIZE_DT_STRUCT, offset + length)
        return off_struct + offset

    def _add_string(self, s: bytes) -> int:
        """fdt_add_string_(): prepend s to the strings; its (negative) offset from the end, or 0.

        libfdt's unsigned arithmetic wraps for a string longer than the whole free space and
        writes below the buffer; Python's ints just see that it does not fit.
        """
        totalsize = self._get(_TOTALSIZE)
        strtabsize = self._get(_SIZE_DT_STRINGS)
        length = len(s) + 1
        offset = strtabsize + length
        struct_top = self._get(_OFF_DT_STRUCT) + self._get(_SIZE_DT_STRUCT)
        if totalsize - offset < struct_top:
            return 0  # no more room
        start = totalsize - offset
        self._buf[start:start + length] = s + b"\0"
        self._set(_SIZE_DT_STRINGS, offset)
        return -offset

    def _del_last_string(self, s: bytes) -> None:
        """fdt_del_last_string_(): roll back the string just added (its bytes stay behind)."""
        self._set(_SIZE_DT_STRINGS, self._get(_SIZE_DT_STRINGS) - (len(s) + 1))

    def _find_add_string(self, s: bytes) -> tuple[int, bool]:
        """fdt_find_add_string_(): reuse s, or a string ending in s, else add it: (offset, added).

        fdt_find_string_() scans from the lowest address, i.e. the newest string first.
        """
        totalsize = self._get(_TOTALSIZE)
        strtabsize = self._get(_SIZE_DT_STRINGS)
        table = bytes(self._buf[totalsize - strtabsize:totalsize])
        found = table.find(s + b"\0")
        if found >= 0:
            return found - strtabsize, False
        return self._add_string(s), True

    # --- the API ----------------------------------------------------------------------------

    def create(self, size: int | None = None, flags: int = 0) -> int:
        """fdt_create_with_flags() (fdt_create() when flags is 0): zero `size` bytes, start over."""
        if size is None:
            size = len(self._buf)
        if size > len(self._buf):
            raise ValueError(f"fdt_create: size {size} exceeds the {len(self._buf)}-byte buffer")
        if size < FDT_SW_HDRSIZE:
            return -FDT_ERR_NOSPACE
        if flags & ~FDT_CREATE_FLAGS_ALL:
            return -FDT_ERR_BADFLAGS
        self._buf[:size] = bytes(size)
        self._set(_MAGIC, FDT_SW_MAGIC)
        self._set(_VERSION, FDT_LAST_SUPPORTED_VERSION)
        self._set(_LAST_COMP_VERSION, flags)  # sw_flags() lives here until fdt_finish()
        self._set(_TOTALSIZE, size)
        self._set(_OFF_MEM_RSVMAP, FDT_SW_HDRSIZE)
        self._set(_OFF_DT_STRUCT, FDT_SW_HDRSIZE)
        self._set(_OFF_DT_STRINGS, 0)
        return 0

    def add_reservemap_entry(self, addr: int, size: int) -> int:
        """fdt_add_reservemap_entry(): the struct block starts after the reserve map."""
        err = self._probe_memrsv()
        if err:
            return err
        offset = self._get(_OFF_DT_STRUCT)
        if offset + FDT_RESERVE_ENTRY_SIZE > self._get(_TOTALSIZE):
            return -FDT_ERR_NOSPACE
        mask = 0xFFFFFFFFFFFFFFFF
        _RSV_ENTRY.pack_into(self._buf, offset, addr & mask, size & mask)
        self._set(_OFF_DT_STRUCT, offset + FDT_RESERVE_ENTRY_SIZE)
        return 0

    def finish_reservemap(self) -> int:
        """fdt_finish_reservemap(): the terminating entry; strings now grow from the end."""
        err = self.add_reservemap_entry(0, 0)
        if err:
            return err
        self._set(_OFF_DT_STRINGS, self._get(_TOTALSIZE))
        return 0

    def begin_node(self, name: str) -> int:
        """fdt_begin_node(): tag and NUL-terminated name; the padding bytes are not written."""
        err = self._probe_struct()
        if err:
            return err
        raw = _cstr(name) + b"\0"
        offset = self._grab_space(FDT_TAGSIZE + fdt_tagalign(len(raw)))
        if offset < 0:
            return -FDT_ERR_NOSPACE
        _U32.pack_into(self._buf, offset, FDT_BEGIN_NODE)
        self._buf[offset + FDT_TAGSIZE:offset + FDT_TAGSIZE + len(raw)] = raw
        return 0

    def _add_tag(self, tag: int) -> int:
        """A lone token at the end of the struct block (end_node, finish): 0 or the error."""
        err = self._probe_struct()
        if err:
            return err
        offset = self._grab_space(FDT_TAGSIZE)
        if offset < 0:
            return -FDT_ERR_NOSPACE
        _U32.pack_into(self._buf, offset, tag)
        return 0

    def end_node(self) -> int:
        """fdt_end_node(). Like libfdt, nesting is not checked."""
        return self._add_tag(FDT_END_NODE)

    def property_placeholder(self, name: str, length: int) -> tuple[int, int]:
        """fdt_property_placeholder(): (0, buffer offset of the value) or (error, 0).

        The value bytes are left as they are (zero from fdt_create, unless a rolled-back string
        was there); the offset stays valid after finish(), which only moves the strings.
        """
        if length < 0:
            raise ValueError(f"fdt_property_placeholder: negative length {length}")
        err = self._probe_struct()
        if err:
            return err, 0
        raw = _cstr(name)
        if self._get(_LAST_COMP_VERSION) & FDT_CREATE_FLAG_NO_NAME_DEDUP:
            nameoff, allocated = self._add_string(raw), True
        else:
            nameoff, allocated = self._find_add_string(raw)
        if nameoff == 0:
            return -FDT_ERR_NOSPACE, 0
        offset = self._grab_space(FDT_PROP_HEADER_SIZE + fdt_tagalign(length))
        if offset < 0:
            if allocated:
                self._del_last_string(raw)
            return -FDT_ERR_NOSPACE, 0
        _TAG_NAMEOFF.pack_into(self._buf, offset, FDT_PROP, length, nameoff & 0xFFFFFFFF)
        return 0, offset + FDT_PROP_HEADER_SIZE

    def property(self, name: str, value: bytes) -> int:
        """fdt_property(): a placeholder, then the value copied in."""
        err, offset = self.property_placeholder(name, len(value))
        if err:
            return err
        self._buf[offset:offset + len(value)] = value
        return 0

    def property_string(self, name: str, value: str) -> int:
        """fdt_property_string(): the value up to its first NUL, plus the NUL."""
        return self.property(name, _cstr(value) + b"\0")

    def property_u32(self, name: str, value: int) -> int:
        """fdt_property_u32(): one big-endian cell."""
        return self.property(name, _U32.pack(value & 0xFFFFFFFF))

    def property_u64(self, name: str, value: int) -> int:
        """fdt_property_u64(): two big-endian cells."""
        return self.property(name, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def property_cell(self, name: str, value: int) -> int:
        """fdt_property_cell(): the same as fdt_property_u32()."""
        return self.property_u32(name, value)

    def _fix_nameoffs(self) -> int:
        """fdt_finish()'s walk: rebase every property's name offset onto the moved strings."""
        off_struct = self._get(_OFF_DT_STRUCT)
        block = bytes(self._buf[off_struct:off_struct + self._get(_SIZE_DT_STRUCT)])
        strtabsize = self._get(_SIZE_DT_STRINGS)
        offset = 0
        while True:
            tag, nextoffset = fdt_next_tag(block, offset)
            if tag == FDT_END:
                return nextoffset if nextoffset < 0 else 0
            if tag == FDT_PROP:
                field = off_struct + offset + 8
                self._set(field, self._get(field) + strtabsize)
            offset = nextoffset

    def finish(self) -> int:
        """fdt_finish(): FDT_END, strings moved behind the struct, a real header."""
        err = self._add_tag(FDT_END)
        if err:
            return err
        strtabsize = self._get(_SIZE_DT_STRINGS)
        old = self._get(_TOTALSIZE) - strtabsize
        new = self._get(_OFF_DT_STRUCT) + self._get(_SIZE_DT_STRUCT)
        self._buf[new:new + strtabsize] = bytes(self._buf[old:old + strtabsize])
        self._set(_OFF_DT_STRINGS, new)
        err = self._fix_nameoffs()
        if err:
            return err
        self._set(_TOTALSIZE, new + strtabsize)
        self._set(_LAST_COMP_VERSION, FDT_LAST_COMPATIBLE_VERSION)
        self._set(_MAGIC, FDT_MAGIC)
        return 0
