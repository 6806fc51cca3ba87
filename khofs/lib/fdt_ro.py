"""Reading FDT blobs, as the next kernel reads the handover: libfdt's fdt_ro.c and fdt.c.

Only what KHO's incoming side uses: fdt_check_header, the root's properties and direct
sub-nodes (fdt_for_each_subnode, fdt_getprop, fdt_get_name), fdt_subnode_offset's name match
and fdt_node_check_compatible. Results are libfdt's: negative FDT_ERR_* codes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from khofs.lib.libfdt import (
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    FDT_ERR_BADMAGIC,
    FDT_ERR_BADSTRUCTURE,
    FDT_ERR_BADVERSION,
    FDT_ERR_NOTFOUND,
    FDT_ERR_TRUNCATED,
    FDT_HEADER_SIZE,
    FDT_MAGIC,
    FDT_NOP,
    FDT_PROP,
    fdt_next_tag,
    fdt_totalsize,
)

_HEADER = struct.Struct(">10I")
_INT_MAX = 0x7FFFFFFF


def fdt_check_header(data: bytes) -> int:
    """libfdt fdt_check_header: 0, or why the header cannot be trusted."""
    if len(data) < FDT_HEADER_SIZE:
        return -FDT_ERR_TRUNCATED
    (magic, totalsize, off_struct, off_strings, off_rsv, version, last_comp, _cpu,
     size_strings, size_struct) = _HEADER.unpack_from(data)
    if magic != FDT_MAGIC:
        return -FDT_ERR_BADMAGIC
    if version < 2 or last_comp > 17 or version < last_comp:
        return -FDT_ERR_BADVERSION
    if totalsize < FDT_HEADER_SIZE or totalsize > _INT_MAX:
        return -FDT_ERR_TRUNCATED
    for off, size in ((off_rsv, 0), (off_struct, size_struct if version >= 17 else 0),
                      (off_strings, size_strings)):
        if not FDT_HEADER_SIZE <= off <= totalsize or off + size > totalsize:
            return -FDT_ERR_TRUNCATED
    return 0


def fdt_check_blob(blob: bytes) -> bool:
    """These bytes hold a whole FDT: its header checks and its totalsize fits in them."""
    return not fdt_check_header(blob[:FDT_HEADER_SIZE]) and fdt_totalsize(blob) <= len(blob)


@dataclass
class FdtNode:
    """A node: its name as stored (with any unit address), properties in order, children."""

    name: str
    props: dict[str, bytes] = field(default_factory=dict)
    children: list[FdtNode] = field(default_factory=list)

    def getprop(self, name: str) -> bytes | None:
        return self.props.get(name)

    def subnode(self, name: str) -> FdtNode | None:
        """fdt_subnode_offset: an exact name, or `name@unit` when name has no '@'."""
        for child in self.children:
            if child.name == name or ("@" not in name and child.name.startswith(name + "@")):
                return child
        return None

    def check_compatible(self, compatible: str) -> int:
        """fdt_node_check_compatible: 0 if listed, 1 if not, -FDT_ERR_NOTFOUND if absent."""
        prop = self.props.get("compatible")
        if prop is None:
            return -FDT_ERR_NOTFOUND
        return 0 if compatible.encode() in prop.split(b"\0") else 1


def fdt_parse(data: bytes) -> FdtNode | int:
    """The tree of a blob whose header passed fdt_check_header, or -FDT_ERR_BADSTRUCTURE."""
    _m, _t, off_struct, off_strings, *_rest = _HEADER.unpack_from(data)
    block = data[off_struct:]
    strings = data[off_strings:]
    stack: list[FdtNode] = []
    root: FdtNode | None = None
    offset = 0
    while True:
        tag, nxt = fdt_next_tag(block, offset)
        if nxt < 0:
            return nxt
        if tag == FDT_BEGIN_NODE:
            name = block[offset + 4:block.index(b"\0", offset + 4)].decode(errors="replace")
            node = FdtNode(name)
            if stack:
                stack[-1].children.append(node)
            elif root is None:
                root = node
            else:
                return -FDT_ERR_BADSTRUCTURE
            stack.append(node)
        elif tag == FDT_PROP:
            if not stack:
                return -FDT_ERR_BADSTRUCTURE
            length, nameoff = struct.unpack_from(">II", block, offset + 4)
            end = strings.find(b"\0", nameoff)
            if end < 0:
                return -FDT_ERR_BADSTRUCTURE
            value = block[offset + 12:offset + 12 + length]
            stack[-1].props[strings[nameoff:end].decode(errors="replace")] = bytes(value)
        elif tag == FDT_END_NODE:
            if not stack:
                return -FDT_ERR_BADSTRUCTURE
            stack.pop()
        elif tag == FDT_END:
            return root if root is not None and not stack else -FDT_ERR_BADSTRUCTURE
        elif tag != FDT_NOP:
            return -FDT_ERR_BADSTRUCTURE
        offset = nxt
