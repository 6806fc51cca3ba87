"""Producer device trees: DTS source compiled into the kernel's libfdt layout, DTBs checked.

compile_dts() parses with the `fdt` package and writes the tree through our libfdt sequential
writer, so a producer's blob has the bytes a kernel driver building the same tree would make.
The package's parser is line based and quietly misreads some valid DTS (two statements on a
line, a space before a comma, `;` or `//` inside a string, an empty string, labels). So the
source is first read here, token by token, against the subset of dtc's syntax that the package
gets right, rejected with the line number when it falls outside, and handed to the package
rewritten one statement per line. The subset: `/dts-v1/;`, `/memreserve/`, one root node,
properties before sub-nodes, values that are all strings, all `<cells>` of integer literals, or
one `[bytes]` group. Not supported: labels, references, /bits/, /include/, /incbin/,
/delete-node/, expressions, character literals, escapes in strings, duplicate nodes.

check_dtb() decides whether a given DTB may be served byte for byte: every offset it holds is
checked against its own length, as libfdt's fdt_check_header() and fdt_check_full() do.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import fdt

from khofs.lib.libfdt import (
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    FDT_HEADER_SIZE,
    FDT_MAGIC,
    FDT_NOP,
    FDT_PROP,
    FDT_PROP_HEADER_SIZE,
    FDT_RESERVE_ENTRY_SIZE,
    FDT_SW_HDRSIZE,
    FdtSw,
    fdt_next_tag,
    fdt_tagalign,
    fdt_totalsize,
)
from khofs.lib.read_file import open_regular

# A compiled tree larger than this is refused: 32 pages is far more than a producer needs, and
# the package's parser is quadratic in the number of entries of a node.
MAX_DTB_SIZE = 128 << 10

# dtc's lexer: PROPNODECHAR, the characters of node and property names.
_NAME = re.compile(r"[A-Za-z0-9,._+*#?@-]+")
# dtc's integer literal; strtoull(base 0) then reads a leading 0 as octal.
_INT = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)(?:U|L|UL|LL|ULL)?", re.IGNORECASE)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"[^"\n]*")
  | (?P<directive>/[A-Za-z0-9-]+/)
  | (?P<word>[A-Za-z0-9,._+*#?@-]+)
  | (?P<punct>[/{};=<>\[\]:&()'])
    """,
    re.VERBOSE | re.DOTALL,
)
_UNSUPPORTED = {
    "&": "references (&label) are not supported",
    ":": "labels are not supported",
    "(": "integer expressions are not supported",
    "'": "character literals are not supported",
    "/bits/": "/bits/ is not supported",
    "/incbin/": "/incbin/ is not supported",
}


class DtsError(ValueError):
    """A DTS that compile_dts() cannot compile; the message is one line."""


@dataclass
class _Tok:
    kind: str
    text: str
    line: int


@dataclass
class _Stmt:
    """One statement: the tokens before its `;` or `{`."""

    toks: list[_Tok]
    end: str
    line: int


@dataclass
class _Frame:
    """A node being read: what it holds so far."""

    props: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)


def _fail(line: int, what: str) -> DtsError:
    return DtsError(f"line {line}: {what}")


def _tokenize(text: str) -> list[_Tok]:
    """Tokens of a DTS, without spaces and comments."""
    toks: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(text):
        if text.startswith("/*", pos) and text.find("*/", pos + 2) < 0:
            raise _fail(line, "unterminated comment")
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:
            what = "unterminated string" if text[pos] == '"' else "unexpected character"
            raise _fail(line, f"{what} {text[pos]!r}")
        if m.lastgroup == "string" and "\\" in m.group():
            # escapes (\" \n \\) are outside the subset; an escaped quote would otherwise
            # end the string early and show as an unterminated one
            raise _fail(line, f"{chr(92)!r} inside a string is not supported")
        if m.lastgroup not in ("space", "comment"):
            toks.append(_Tok(m.lastgroup, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return toks


def _statements(toks: list[_Tok]) -> list[_Stmt]:
    stmts: list[_Stmt] = []
    cur: list[_Tok] = []
    for tok in toks:
        if tok.kind == "punct" and tok.text in (";", "{"):
            stmts.append(_Stmt(cur, tok.text, cur[0].line if cur else tok.line))
            cur = []
        else:
            cur.append(tok)
    if cur:
        raise _fail(cur[-1].line, "missing ';' at the end")
    return stmts


def _int(tok: _Tok, bits: int) -> int:
    """A dtc integer literal that fits `bits`."""
    m = _INT.fullmatch(tok.text)
    if m is None:
        raise _fail(tok.line, f"bad integer literal {tok.text!r}")
    digits = m.group(1)
    try:
        if digits[:2].lower() == "0x":
            value = int(digits, 16)
        else:
            value = int(digits, 8) if digits.startswith("0") else int(digits)
    except ValueError:
        raise _fail(tok.line, f"bad integer literal {tok.text!r}") from None
    if value >> bits:
        raise _fail(tok.line, f"value {tok.text} out of range for {bits}-bit element")
    return value


def _check_unsupported(toks: list[_Tok]) -> None:
    for tok in toks:
        if tok.text in _UNSUPPORTED:
            raise _fail(tok.line, _UNSUPPORTED[tok.text])


def _strings(toks: list[_Tok]) -> tuple[str, int]:
    """`"a", "b"`: its canonical text and value length."""
    texts = [t for i, t in enumerate(toks) if i % 2 == 0]
    if len(toks) % 2 == 0 or any(t.text != "," for t in toks[1::2]) \
            or any(t.kind != "string" for t in texts):
        raise _fail(toks[0].line, "mixed or malformed property value")
    for t in texts:
        body = t.text[1:-1]
        bad = next((c for c in ("\\", ";", "//", "/*") if c in body), None)
        if bad is not None:
            raise _fail(t.line, f"{bad!r} inside a string is not supported")
        if any(ord(c) < 0x20 for c in body):
            raise _fail(t.line, "control characters inside a string are not supported")
        if not body or body != body.strip() or body.startswith(","):
            raise _fail(t.line, "empty strings, strings with outer spaces and strings starting "
                        "with ',' are not supported")
    return ", ".join(t.text for t in texts), sum(len(t.text[1:-1].encode()) + 1 for t in texts)


def _cells(toks: list[_Tok]) -> tuple[str, int]:
    """`<1 2>, <3>`: canonical text (hex cells) and value length."""
    groups: list[str] = []
    count, i = 0, 0
    while i < len(toks):
        if groups:  # a further group needs its comma
            if toks[i].text != ",":
                raise _fail(toks[i].line, "mixed or malformed property value")
            i += 1
        if i >= len(toks) or toks[i].text != "<":
            raise _fail(toks[min(i, len(toks) - 1)].line, "mixed or malformed property value")
        j = next((k for k in range(i + 1, len(toks)) if toks[k].text == ">"), None)
        if j is None:
            raise _fail(toks[i].line, "missing '>'")
        cells = [f"0x{_int(t, 32):x}" for t in toks[i + 1:j]]
        groups.append("<" + " ".join(cells) + ">")
        count += len(cells)
        i = j + 1
    return ", ".join(groups), 4 * count


def _bytes(toks: list[_Tok]) -> tuple[str, int]:
    """`[0102 03]`: canonical text (one byte per token) and value length."""
    if toks[-1].text != "]":
        raise _fail(toks[0].line, "mixed or malformed property value")
    pairs: list[str] = []
    for t in toks[1:-1]:
        if t.kind != "word" or not _HEX.fullmatch(t.text):
            raise _fail(t.line, f"bad byte string {t.text!r}")
        pairs += [t.text[k:k + 2] for k in range(0, len(t.text), 2)]
    return "[" + " ".join(pairs) + "]", len(pairs)


def _value(toks: list[_Tok], line: int) -> tuple[str, int]:
    if not toks:
        raise _fail(line, "missing property value")
    _check_unsupported(toks)
    if toks[0].kind == "string":
        return _strings(toks)
    if toks[0].text == "<":
        return _cells(toks)
    if toks[0].text == "[":
        return _bytes(toks)
    raise _fail(toks[0].line, f"unsupported property value {toks[0].text!r}")


def _name(tok: _Tok, what: str) -> str:
    if tok.kind != "word" or not _NAME.fullmatch(tok.text):
        raise _fail(tok.line, f"bad {what} name {tok.text!r}")
    return tok.text


def _starts(stmt: _Stmt, text: str) -> bool:
    return bool(stmt.toks) and stmt.toks[0].text == text


class _Reader:
    """Walks the statements, checks them, and writes the package's one-per-line input."""

    def __init__(self, stmts: list[_Stmt]) -> None:
        self.stmts = stmts
        self.pos = 0
        self.out: list[str] = []
        self.size = FDT_SW_HDRSIZE + FDT_RESERVE_ENTRY_SIZE + 4  # header, map end, FDT_END
        self.names: set[str] = set()

    def peek(self) -> _Stmt | None:
        return self.stmts[self.pos] if self.pos < len(self.stmts) else None

    def take(self) -> _Stmt:
        stmt = self.stmts[self.pos]
        self.pos += 1
        return stmt

    def header(self) -> None:
        stmt = self.peek()
        if stmt is None or [t.text for t in stmt.toks] != ["/dts-v1/"] or stmt.end != ";":
            raise _fail(stmt.line if stmt else 1, "missing /dts-v1/; at the start")
        self.out.append("/dts-v1/;")
        self.take()
        while (stmt := self.peek()) is not None and _starts(stmt, "/memreserve/"):
            self.take()
            if len(stmt.toks) != 3 or stmt.end != ";":
                raise _fail(stmt.line, "/memreserve/ needs an address and a size")
            addr, size = (_int(t, 64) for t in stmt.toks[1:])
            if not size:  # readers would take it for the end of the map
                raise _fail(stmt.line, "/memreserve/ of size 0 is not supported")
            self.out.append(f"/memreserve/ {addr} {size};")
            self.size += FDT_RESERVE_ENTRY_SIZE

    def root(self) -> None:
        stmt = self.peek()
        if stmt is None:
            raise _fail(self.stmts[-1].line if self.stmts else 1, "no root node")
        self.take()
        if [t.text for t in stmt.toks] != ["/"] or stmt.end != "{":
            _check_unsupported(stmt.toks)
            first = stmt.toks[0].text if stmt.toks else stmt.end
            raise _fail(stmt.line, f"expected the root node '/ {{', not {first!r}")
        self.out.append("/ {")
        self.size += 8 + fdt_tagalign(1)  # FDT_BEGIN_NODE, empty name, FDT_END_NODE
        self.body()
        extra = self.peek()
        if extra is not None:
            raise _fail(extra.line, "only one root node is supported, and nothing after it")

    def body(self) -> None:
        """The statements of one node, up to its `};`; nodes nest through a stack."""
        stack = [_Frame()]
        while stack:
            stmt = self.peek()
            if stmt is None:
                raise _fail(self.stmts[-1].line, "missing '};' at the end")
            self.take()
            texts = [t.text for t in stmt.toks]
            if "}" in texts and (texts != ["}"] or stmt.end != ";"):
                where = "after" if texts[0] == "}" else "before"
                raise _fail(stmt.line, f"expected ';' {where} '}}'")
            if texts == ["}"]:
                stack.pop()
                self.out.append("};")
            elif stmt.end == "{":
                stack.append(self.node(stmt, stack[-1]))
            else:
                self.prop(stmt, stack[-1])

    def node(self, stmt: _Stmt, parent: _Frame) -> _Frame:
        _check_unsupported(stmt.toks)
        if len(stmt.toks) != 1:
            raise _fail(stmt.line, "a node starts with just its name and '{'")
        name = _name(stmt.toks[0], "node")
        if name in parent.nodes:
            raise _fail(stmt.line, f"duplicate node {name!r} (merging is not supported)")
        parent.nodes.add(name)
        self.out.append(f"{name} {{")
        self.size += 8 + fdt_tagalign(len(name) + 1)
        return _Frame()

    def prop(self, stmt: _Stmt, frame: _Frame) -> None:
        if not stmt.toks:
            raise _fail(stmt.line, "empty statement")
        _check_unsupported(stmt.toks)
        if stmt.toks[0].kind == "directive":
            raise _fail(stmt.line, f"{stmt.toks[0].text} is not supported")
        name = _name(stmt.toks[0], "property")
        if frame.nodes:
            raise _fail(stmt.line, f"property {name!r}: properties must precede subnodes")
        if name in frame.props:
            raise _fail(stmt.line, f"duplicate property {name!r}")
        frame.props.add(name)
        if len(stmt.toks) == 1:
            text, length = name, 0
        elif stmt.toks[1].text != "=":
            raise _fail(stmt.line, f"expected '=' after {name!r}")
        else:
            value, length = _value(stmt.toks[2:], stmt.line)
            text = f"{name} = {value}"
        self.out.append(text + ";")
        self.size += FDT_PROP_HEADER_SIZE + fdt_tagalign(length)
        if name not in self.names:
            self.names.add(name)
            self.size += len(name) + 1


def _canonical(text: str) -> tuple[str, int]:
    """The DTS rewritten one statement per line, and an upper bound of its blob size."""
    reader = _Reader(_statements(_tokenize(text)))
    reader.header()
    reader.root()
    return "\n".join(reader.out) + "\n", reader.size


def _prop_value(prop: Any) -> bytes:
    """A property of the `fdt` package as the bytes dtc would give it."""
    if isinstance(prop, fdt.PropStrings):
        return b"".join(s.encode() + b"\0" for s in prop.data)
    if isinstance(prop, fdt.PropWords):
        bits = int(getattr(prop, "word_size", 32))
        return b"".join(int(w).to_bytes(bits // 8, "big") for w in prop.data)
    if isinstance(prop, fdt.PropBytes):
        return bytes(prop.data)
    return b""


def _emit(sw: FdtSw, tree: Any) -> int:
    """The tree in source order, nodes depth first, as the kernel's fdt_* calls would write it."""
    err = sw.create()
    for entry in tree.entries:
        err |= sw.add_reservemap_entry(entry["address"], entry["size"])
    err |= sw.finish_reservemap()
    work: list[Any] = [tree.root]  # a node to open, or None to close one
    while work:
        node = work.pop()
        if node is None:
            err |= sw.end_node()
            continue
        err |= sw.begin_node("" if node is tree.root else node.name)
        for prop in node.props:
            err |= sw.property(prop.name, _prop_value(prop))
        work.append(None)
        work.extend(reversed(node.nodes))
    return err | sw.finish()


def compile_dts(text: str) -> bytes:
    """A DTS compiled into the bytes libfdt's sequential writer makes of the same tree."""
    canonical, bound = _canonical(text)
    if bound > MAX_DTB_SIZE:
        raise DtsError(f"tree too large: about {bound} bytes, the limit is {MAX_DTB_SIZE}")
    try:
        tree = fdt.parse_dts(canonical)
    except Exception as e:  # the package raises bare Exception, AssertionError, ...
        raise DtsError(f"fdt package: {' '.join(str(e).split()) or type(e).__name__}") from None
    buf = bytearray(bound)
    err = _emit(FdtSw(buf), tree)
    if err:
        raise DtsError(f"libfdt error {-err} writing the tree")
    return bytes(buf[:fdt_totalsize(buf)])


# --- check_dtb ------------------------------------------------------------------------------

_HEADER = struct.Struct(">10I")


def _bad(what: str) -> ValueError:
    return ValueError(f"bad DTB: {what}")


def _check_header(data: bytes) -> tuple[int, ...]:
    """fdt_check_header(), plus the versions and alignments that kernels rely on."""
    if len(data) < FDT_HEADER_SIZE:
        raise _bad(f"{len(data)} bytes is shorter than a header")
    hdr = _HEADER.unpack_from(data)
    magic, totalsize, off_struct, off_strings, off_rsv, version, last_comp = hdr[:7]
    if magic != FDT_MAGIC:
        raise _bad(f"magic 0x{magic:08x}")
    if version < 16 or last_comp > 17 or version < last_comp:
        raise _bad(f"version {version}, last compatible version {last_comp}")
    if not FDT_HEADER_SIZE <= totalsize <= len(data):
        raise _bad(f"totalsize {totalsize} with {len(data)} bytes of data")
    size_strings, size_struct = hdr[8], hdr[9]
    if version < 17:
        size_struct = totalsize - min(off_struct, totalsize)  # no size_dt_struct before v17
    for what, off, size in (("reserve map", off_rsv, 0), ("structure block", off_struct,
                            size_struct), ("strings block", off_strings, size_strings)):
        if not FDT_HEADER_SIZE <= off <= off + size <= totalsize:
            raise _bad(f"{what} at {off}+{size} outside {FDT_HEADER_SIZE}..{totalsize}")
    if off_rsv % 8 or off_struct % 4:
        raise _bad("misaligned reserve map or structure block")
    return totalsize, off_struct, size_struct, off_strings, size_strings, off_rsv


def _check_rsvmap(data: bytes, off: int, totalsize: int) -> None:
    """fdt_num_mem_rsv(): entries up to the terminator, all inside the blob.

    libfdt stops at the first size 0, fdtdump only at address and size 0: they must agree.
    """
    while True:
        if off + FDT_RESERVE_ENTRY_SIZE > totalsize:
            raise _bad("reserve map runs past totalsize")
        addr, size = struct.unpack_from(">QQ", data, off)
        if size == 0:
            if addr:
                raise _bad(f"reserve map entry at {off} has size 0 but address 0x{addr:x}")
            return
        off += FDT_RESERVE_ENTRY_SIZE


def _printable(name: bytes) -> bool:
    """Names are ASCII without spaces or controls: readers decode them as text."""
    return all(0x21 <= c <= 0x7E for c in name)


def _check_struct(block: bytes, strings: bytes) -> None:
    """fdt_check_full()'s walk: one root named "", balanced nodes, names inside the strings.

    Stricter than libfdt: no property outside a node, and printable names.
    """
    offset, depth, seen_root = 0, 0, False
    while True:
        tag, nextoffset = fdt_next_tag(block, offset)
        if nextoffset < 0:
            raise _bad(f"structure block truncated or corrupt at {offset}")
        if seen_root and not depth and tag != FDT_END:
            raise _bad(f"tag {tag} after the root node at {offset}")
        if tag == FDT_END:
            if depth or not seen_root:
                raise _bad("structure block ends inside a node or without a root")
            return
        if tag == FDT_BEGIN_NODE:
            name = block[offset + 4:block.index(b"\0", offset + 4)]
            if (not depth and name) or not _printable(name):
                raise _bad(f"node name {name!r} at {offset}")
            seen_root = True
            depth += 1
        elif tag == FDT_END_NODE:
            if not depth:
                raise _bad(f"unbalanced end of node at {offset}")
            depth -= 1
        elif tag == FDT_PROP:
            nameoff = struct.unpack_from(">I", block, offset + 8)[0]
            end = strings.find(b"\0", nameoff) if nameoff < len(strings) else -1
            if not depth or end < 0 or not _printable(strings[nameoff:end]):
                raise _bad(f"property at {offset} outside a node or with a bad name")
        elif tag != FDT_NOP:
            raise _bad(f"unknown tag {tag} at {offset}")
        offset = nextoffset


FDT_MAX = 64 << 20  # the largest DTB khofs reads: sub-trees are a few KiB


def read_dtb(path: str | os.PathLike[str]) -> bytes:
    """A DTB file's blob: its header, then as many bytes as the header's totalsize says (at
    most FDT_MAX), never the rest of the file. OSError for a file that cannot be read or is
    not regular; ValueError (a bad DTB) for a totalsize over the bound."""
    with open_regular(path) as f:
        head = f.read(FDT_HEADER_SIZE)
        if len(head) < FDT_HEADER_SIZE or struct.unpack_from(">I", head)[0] != FDT_MAGIC:
            return head  # check_dtb says what is wrong with it
        totalsize = struct.unpack_from(">I", head, 4)[0]
        if totalsize > FDT_MAX:
            raise _bad(f"totalsize {totalsize} is more than khofs reads ({FDT_MAX} bytes)")
        return head + f.read(max(totalsize - FDT_HEADER_SIZE, 0))


def check_dtb(data: bytes) -> None:
    """Raise ValueError (one line) unless `data` is a well-formed FDT safe to serve as it is."""
    data = bytes(data)
    totalsize, off_struct, size_struct, off_strings, size_strings, off_rsv = _check_header(data)
    _check_rsvmap(data, off_rsv, totalsize)
    _check_struct(data[off_struct:off_struct + size_struct],
                  data[off_strings:off_strings + size_strings])
