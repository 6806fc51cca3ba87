"""Machine files: a machine described in TOML, checked whole (khofs.machines.load picks a
preset, `host` or a machine file for `--machine`).

A machine file is TOML:

```toml
name = "my-box"          # optional; default: the file name without .toml
description = "..."      # optional
arch = "x86_64"          # or "arm64"
page_size = "4K"         # optional, default 4K; arm64: 4K, 16K or 64K
cpus = 16                # 1 to 8192
kernel_size = "38M"      # optional, default 38M (x86_64) / 32M (arm64): _text to the end of bss
initrd_size = "64M"      # optional, default 0
cmdline = "kho=on"       # optional: the command line to boot with when --cmdline is not given

[[node]]                 # one table per NUMA node: node ids 0, 1, ... in file order
ranges = ["0x0-0x9f000", "0x100000-0x80000000", "0x100000000+14G"]  # START-END or START+SIZE
# or, instead of ranges, every node gives its size:
size = "16G"
```

Numbers are read as the kernel's memparse reads them: decimal, 0x hex or 0 octal, then an
optional K, M, G, T, P or E (powers of 1024), with spaces around allowed; a size may also be a
TOML integer. Ranges are [START, END): END is the first byte after the range.

With `size`, the nodes are laid out one after the other. x86_64, as on a PC: node 0 has RAM at
0-0x9f000 and from 1 MiB up to the PCI hole at 2 GiB, and the rest of it from 4 GiB on, where
node 1 follows it; arm64, as on QEMU's virt board: from 1 GiB on.

A machine file is refused, with one line naming the file, the line and the problem, when:
a key is unknown or has the wrong type; a number is malformed or does not fit in 64 bits; a
range is empty, reversed, not page aligned, overlaps another range (of any node), or reaches
2**52 or the architecture's MAX_PHYSMEM_BITS (x86_64: 64 TiB, arm64: 256 TiB), above which the
kernel ignores RAM; some nodes give ranges and others a size; a node has no RAM; there are no
nodes, more than 1024 (MAX_NUMNODES) or more than 3200 ranges (E820_MAX_ENTRIES); the machine
has less than 64 MiB of RAM; the kernel image is not all RAM where the kernel is loaded
(x86_64: at 16 MiB; arm64: 2 MiB into RAM) or the initrd is not all RAM, or overlaps the image,
where the boot loader puts it (x86_64: at the top of the RAM below 2 GiB; arm64, as QEMU does:
half the RAM, at most 128 MiB, above the start of RAM); the cmdline is not one line, or has a
NUL.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from khofs.engine.machine import Arch, GiB, KiB, Machine, MiB, Node, get_arch
from khofs.errors import MachineError
from khofs.lib.cmdline import memparse, simple_strtoull
from khofs.lib.ranges import merge
from khofs.lib.read_file import read_file
from khofs.lib.sizes import exact_size, rounded_size
from khofs.machines.presets import contiguous_nodes, pc_nodes

TOP_KEYS = ("name", "description", "arch", "page_size", "cpus", "kernel_size", "initrd_size",
            "cmdline", "node")
NODE_KEYS = ("ranges", "size")

MAX_CPUS = 8192  # NR_CPUS with CONFIG_MAXSMP
MAX_NODES = 1024  # MAX_NUMNODES: CONFIG_NODES_SHIFT=10
MAX_RANGES = 3200  # E820_MAX_ENTRIES (128 + 3 * MAX_NUMNODES): the largest map x86 keeps
MIN_RAM = 64 * MiB
PHYS_LIMIT = 1 << 52  # no architecture has physical addresses past 52 bits
TiB = 1 << 40

# _text to the end of bss of a distribution kernel (Debian's 6.16 image), when not given
DEFAULT_KERNEL_SIZE = {"x86_64": 38 * MiB, "arm64": 32 * MiB}
X86_INITRD_ADDR_MAX = 2 * GiB  # where x86 boot loaders put the initrd: below this, at the top
ARM64_INITRD_MAX_OFFSET = 128 * MiB  # QEMU hw/arm/boot.c: MIN(ram_size / 2, 128 MiB) into RAM


def load_machine_file(path: str | Path) -> Machine:
    """A machine file, checked whole; MachineError with one line for any problem in it."""
    source = Source.read(path)
    try:
        return _MachineFile(source).machine()
    except LayoutProblem as problem:
        raise source.error(problem) from None


# --- finding lines ------------------------------------------------------------------------

class LayoutProblem(Exception):
    """A problem in a machine description, and the line of the file it is on (if any)."""

    def __init__(self, text: str, line: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.line = line


_NODE_HEADER = re.compile(r"""\s*\[\[\s*(node|"node"|'node')\s*\]\]\s*(#.*)?$""")
# A table header: a line that is a bracketed key, not an element of a multi-line array.
_HEADER = re.compile(r"""\s*\[\[?\s*[\w"'.\- ]+\]\]?\s*(#.*)?$""")


def _key_pattern(key: str) -> re.Pattern[str]:
    """A line that sets the key (`key =`, a dotted `key.x =`) or opens it (`[key]`)."""
    k = re.escape(key)
    return re.compile(rf"""\s*(\[\[?\s*)?({k}|"{k}"|'{k}')\s*[=.\]]""")


class Source:
    """A machine file's text, to find the lines problems are on: tomllib reports positions
    for syntax errors only, so a key or value is found by searching the text for it."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.lines = text.split("\n")  # TOML's newlines (str.splitlines knows more)
        self.headers = [i for i, line in enumerate(self.lines) if _HEADER.match(line)]
        self.node_headers = [i for i, line in enumerate(self.lines) if _NODE_HEADER.match(line)]

    @classmethod
    def read(cls, path: str | Path) -> Source:
        try:
            data = read_file(path)
        except OSError as e:
            raise MachineError(f"{path}: {e.strerror or e}") from None
        try:
            return cls(str(path), data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise MachineError(f"{path}: not UTF-8 text (byte {e.start})") from None

    def error(self, problem: LayoutProblem) -> MachineError:
        where = self.path if problem.line is None else f"{self.path}:{problem.line}"
        return MachineError(f"{where}: {problem.text}")

    def region(self, node: int | None) -> tuple[int, int]:
        """The lines of the top level (before the first table) or of the node-th [[node]]
        table. Nodes written as inline tables (`node = [{...}]`) have no table of their
        own: their region is the whole file, and the first match is taken."""
        if node is None:
            return 0, self.headers[0] if self.headers else len(self.lines)
        if node >= len(self.node_headers):
            return 0, len(self.lines)
        start = self.node_headers[node]
        end = next((h for h in self.headers if h > start), len(self.lines))
        return start, end

    def line_of(self, key: str, node: int | None = None, value: str | None = None,
                nth: int = 0) -> int:
        """The 1-based line of a key (of the top level, or of the node-th node), or of the
        nth occurrence of the string `value` written after that key; failing that, the line
        the key's table starts on."""
        lo, hi = self.region(node)
        found = self._find_key(key, lo, hi)
        if found is None and node is None:
            found = self._find_key(key, 0, len(self.lines))  # `node` is a table header
        if found is None:
            return lo + 1
        if value is None:
            return found + 1
        seen = 0
        for i in range(found, hi):
            line = self.lines[i]
            count = line.count(f'"{value}"') + line.count(f"'{value}'")
            if seen + count > nth:
                return i + 1
            seen += count
        return found + 1

    def _find_key(self, key: str, lo: int, hi: int) -> int | None:
        pattern = _key_pattern(key)
        return next((i for i in range(lo, hi) if pattern.match(self.lines[i])), None)

    def node_line(self, node: int) -> int:
        """The line of a node's [[node]] header (or of `node` for inline tables)."""
        if node < len(self.node_headers):
            return self.node_headers[node] + 1
        return self.line_of("node")


# --- numbers and names --------------------------------------------------------------------

def parse_number(text: str) -> int | None:
    """memparse over the whole text, spaces around it allowed; None when the text is not
    one number, or when it does not fit in the kernel's 64 bits (memparse would wrap)."""
    raw = text.strip(" \t").encode()
    if not raw[:1].isdigit():
        return None  # memparse reads "K" as 0: a number needs a digit
    value, used = memparse(raw)
    if used != len(raw):
        return None
    digits = raw[:simple_strtoull(raw, 0)[1]]
    if digits[:2].lower() == b"0x":
        exact = int(digits[2:], 16)
    elif len(digits) > 1 and digits.startswith(b"0"):
        exact = int(digits, 8)
    else:
        exact = int(digits)
    suffix = raw[len(digits):]
    if suffix:
        exact <<= 10 * (b"kmgtpe".index(suffix.lower()) + 1)
    return value if exact == value else None


def type_name(value: object) -> str:
    """A value's TOML type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((str, "string"), (int, "integer"), (float, "float"), (list, "array"),
                       (dict, "table"), (datetime, "date-time"), (date, "date"),
                       (time, "time")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def describe(arch: Arch, nodes: tuple[Node, ...], cpus: int, source: str) -> str:
    """The default description: "x86_64, 23.4 GiB in 1 node, 2 CPUs, from FILE"."""
    size = sum(n.size for n in nodes)
    amount = rounded_size(size)
    pages = "" if arch.page_size == 4 * KiB else f" ({arch.page_size // KiB} KiB pages)"
    plural = "" if len(nodes) == 1 else "s"
    cpu_plural = "" if cpus == 1 else "s"
    return (f"{arch.name}{pages}, {amount} in {len(nodes)} node{plural}, {cpus} "
            f"CPU{cpu_plural}, from {source}")


# --- the memory layout, checked for machine files and the host alike ----------------------

@dataclass(frozen=True)
class RamRange:
    """One RAM range of a node, with how it was written and where, for messages."""

    nid: int
    start: int
    end: int
    label: str
    line: int | None = None


@dataclass(frozen=True)
class Layout:
    """What check_layout needs: the RAM, the boot images and where to point when they do
    not fit (the line of kernel_size / initrd_size, else of the first node)."""

    arch: Arch
    ranges: list[RamRange]
    kernel_size: int
    initrd_size: int
    kernel_label: str = ""
    initrd_label: str = ""
    kernel_line: int | None = None
    initrd_line: int | None = None
    nodes_line: int | None = None


def check_layout(layout: Layout) -> None:
    """LayoutProblem unless the engine can boot this RAM: page-aligned, disjoint ranges the
    kernel uses, enough of it, and room for the kernel image and the initrd where the boot
    loader puts them (the engine reserves them there whatever lies beneath)."""
    _check_ranges(layout.arch, layout.ranges)
    total = sum(r.end - r.start for r in layout.ranges)
    if total < MIN_RAM:
        raise LayoutProblem(f"only {exact_size(total)} of RAM: a machine needs at least "
                            f"{exact_size(MIN_RAM)}", layout.nodes_line)
    spans = merge([(r.start, r.end) for r in layout.ranges])  # disjoint, checked above
    kernel = _check_kernel(layout, spans)
    _check_initrd(layout, spans, kernel)


def _check_ranges(arch: Arch, ranges: list[RamRange]) -> None:
    """Each range on its own, then against those before it (in file order)."""
    if len(ranges) > MAX_RANGES:
        raise LayoutProblem(f"more than {MAX_RANGES} RAM ranges (E820_MAX_ENTRIES)",
                            ranges[MAX_RANGES].line)
    max_phys = 1 << arch.max_physmem_bits
    seen: list[tuple[int, int, int]] = []  # (start, end, index), sorted
    for index, r in enumerate(ranges):
        what = f"node {r.nid} range {r.label}"
        if r.end == r.start:
            raise LayoutProblem(f"{what}: empty", r.line)
        if r.end < r.start:
            raise LayoutProblem(f"{what}: ends before it starts", r.line)
        if r.start % arch.page_size or r.end % arch.page_size:
            raise LayoutProblem(f"{what}: not aligned to the "
                                f"{exact_size(arch.page_size)} page size",
                                r.line)
        if r.end > PHYS_LIMIT:
            raise LayoutProblem(f"{what}: reaches 2**52 (4 PiB) or above, past any physical "
                                "address", r.line)
        if r.end > max_phys:
            raise LayoutProblem(f"{what}: reaches {exact_size(max_phys)} or above, past the RAM "
                                f"{arch.name} kernels use (MAX_PHYSMEM_BITS "
                                f"{arch.max_physmem_bits})", r.line)
        at = bisect.bisect_left(seen, (r.start, r.end, index))
        for _, other_end, other in seen[max(at - 1, 0):at + 1]:
            o = ranges[other]
            if o.start < r.end and r.start < other_end:
                raise LayoutProblem(f"{what}: overlaps node {o.nid} range {o.label}", r.line)
        seen.insert(at, (r.start, r.end, index))


def _is_ram(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    return start >= 0 and any(s <= start and end <= e for s, e in spans)


def _check_kernel(layout: Layout, spans: list[tuple[int, int]]) -> tuple[int, int]:
    """The image where boot.py reserves it: x86-64 at CONFIG_PHYSICAL_START (16 MiB),
    arm64 2 MiB into RAM. Returns its [start, end)."""
    arch = layout.arch
    what = f"kernel_size {layout.kernel_label or exact_size(layout.kernel_size)}"
    if layout.kernel_size <= 0:
        raise LayoutProblem(f"{what}: must be more than 0", layout.kernel_line)
    base = arch.kernel_base(min(s for s, _ in spans))
    end = base + layout.kernel_size
    if not _is_ram(spans, base, end):
        where = "at 16 MiB" if arch.name == "x86_64" else "2 MiB into RAM"
        raise LayoutProblem(f"{what}: the kernel image at {base:#x}-{end:#x} is not all RAM "
                            f"({arch.name} loads it {where})",
                            layout.kernel_line or layout.nodes_line)
    return base, end


def _check_initrd(layout: Layout, spans: list[tuple[int, int]],
                  kernel: tuple[int, int]) -> None:
    """The initrd where boot.py reserves it: x86 boot loaders at the top of the RAM below
    initrd_addr_max (2 GiB); QEMU's arm loader min(RAM / 2, 128 MiB) into RAM."""
    arch = layout.arch
    size = -(-layout.initrd_size // arch.page_size) * arch.page_size
    if not size:
        return
    what = f"initrd_size {layout.initrd_label or exact_size(layout.initrd_size)}"
    line = layout.initrd_line or layout.nodes_line
    if arch.name == "x86_64":
        # _check_kernel found RAM at 16 MiB: there is some below 2 GiB
        top = max(min(r.end, X86_INITRD_ADDR_MAX) for r in layout.ranges
                  if r.start < X86_INITRD_ADDR_MAX)
        where = "x86_64 boot loaders put it at the top of the RAM below 2 GiB"
        if size > top:
            raise LayoutProblem(f"{what}: more than the RAM below {top:#x} ({where})", line)
        base = top - size
        base -= base % arch.page_size
    else:
        total = sum(r.end - r.start for r in layout.ranges)
        base = spans[0][0] + min(total // 2, ARM64_INITRD_MAX_OFFSET)
        where = "QEMU puts it half the RAM, at most 128 MiB, into RAM"
    end = base + size
    if not _is_ram(spans, base, end):
        raise LayoutProblem(f"{what}: the initrd at {base:#x}-{end:#x} is not all RAM "
                            f"({where})", line)
    if base < kernel[1] and kernel[0] < end:
        raise LayoutProblem(f"{what}: the initrd at {base:#x}-{end:#x} overlaps the kernel "
                            f"image at {kernel[0]:#x}-{kernel[1]:#x} ({where})", line)


def nodes_of(ranges: list[RamRange]) -> tuple[Node, ...]:
    """The engine's nodes: each node's ranges in address order, nodes in id order."""
    nids = sorted({r.nid for r in ranges})
    return tuple(Node(nid, tuple(sorted((r.start, r.end) for r in ranges if r.nid == nid)))
                 for nid in nids)


# --- the machine file ---------------------------------------------------------------------

def _label(value: object) -> str:
    """A value as the user wrote it, near enough: strings quoted, numbers bare."""
    return repr(value) if isinstance(value, str) else str(value)


class _MachineFile:
    """One machine file: its keys checked in a fixed order, so the first problem found is
    always the same one."""

    def __init__(self, source: Source) -> None:
        self.src = source
        try:
            self.doc = tomllib.loads(source.text)
        except tomllib.TOMLDecodeError as e:
            raise MachineError(f"{source.path}: {e}") from None

    def machine(self) -> Machine:
        self._unknown(self.doc, TOP_KEYS, None, "")
        name = self._line_text("name", Path(self.src.path).name.removesuffix(".toml"))
        description = self._line_text("description", "")
        arch = self._arch()
        cpus = self._cpus()
        kernel_size = self._size("kernel_size", DEFAULT_KERNEL_SIZE[arch.name])
        initrd_size = self._size("initrd_size", 0)
        cmdline = self._cmdline()
        ranges = self._nodes(arch)
        check_layout(Layout(
            arch, ranges, kernel_size, initrd_size,
            kernel_label=_label(self.doc["kernel_size"]) if "kernel_size" in self.doc else "",
            initrd_label=_label(self.doc["initrd_size"]) if "initrd_size" in self.doc else "",
            kernel_line=self._line("kernel_size") if "kernel_size" in self.doc else None,
            initrd_line=self._line("initrd_size") if "initrd_size" in self.doc else None,
            nodes_line=self.src.node_line(0)))
        nodes = nodes_of(ranges)
        return Machine(name, description or describe(arch, nodes, cpus, self.src.path), arch,
                       cpus, nodes, kernel_size, initrd_size, cmdline)

    # --- helpers -----------------------------------------------------------------------

    def _line(self, key: str, node: int | None = None) -> int:
        return self.src.line_of(key, node)

    def _fail(self, text: str, key: str, node: int | None = None) -> LayoutProblem:
        return LayoutProblem(text, self._line(key, node))

    def _unknown(self, table: dict[str, Any], known: tuple[str, ...], node: int | None,
                 where: str) -> None:
        for key in table:
            if key not in known:
                raise self._fail(f"{where}unknown key {key!r} ({', '.join(known)})", key, node)

    def _line_text(self, key: str, default: str) -> str:
        """name and description: one line of text each (they are printed on one)."""
        value = self.doc.get(key, default)
        if not isinstance(value, str):
            raise self._fail(f"'{key}' must be a string, not {type_name(value)}", key)
        if key == "name" and not value:
            raise self._fail("'name' must not be empty", key)
        if any(c in value for c in "\n\r\0"):
            raise self._fail(f"'{key}' must be one line, without NULs", key)
        return value

    def _arch(self) -> Arch:
        """arch, then page_size: get_arch says what each architecture supports."""
        name = self.doc.get("arch")
        if name is None:
            raise LayoutProblem("'arch' is required (x86_64 or arm64)")
        if not isinstance(name, str):
            raise self._fail(f"'arch' must be a string, not {type_name(name)}", "arch")
        try:
            get_arch(name)
        except ValueError as e:
            raise self._fail(str(e), "arch") from None
        page_size = self._size("page_size", 4 * KiB)
        try:
            return get_arch(name, page_size)
        except ValueError as e:
            raise self._fail(f"page_size {_label(self.doc['page_size'])}: {e}",
                             "page_size") from None

    def _cpus(self) -> int:
        value = self.doc.get("cpus")
        if value is None:
            raise LayoutProblem(f"'cpus' is required (1 to {MAX_CPUS})")
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(f"'cpus' must be an integer, not {type_name(value)}", "cpus")
        if not 1 <= value <= MAX_CPUS:
            raise self._fail(f"cpus {value}: must be from 1 to {MAX_CPUS}", "cpus")
        return value

    def _size(self, key: str, default: int, node: int | None = None) -> int:
        """A size: a TOML integer, or a string memparse reads whole."""
        table = self.doc if node is None else self.doc["node"][node]
        value = table.get(key, default)
        where = key if node is None else f"node {node} {key}"
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise self._fail(f"{where} {value}: must not be negative", key, node)
            return value
        if not isinstance(value, str):
            raise self._fail(f"'{key}' must be a size such as \"16G\" or an integer, not "
                             f"{type_name(value)}", key, node)
        number = parse_number(value)
        if number is None:
            raise self._fail(f"{where}: bad number {value!r}", key, node)
        return number

    def _cmdline(self) -> str | None:
        value = self.doc.get("cmdline")
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._fail(f"'cmdline' must be a string, not {type_name(value)}", "cmdline")
        if "\n" in value or "\r" in value:
            raise self._fail("cmdline has a line break: a command line is one line",
                             "cmdline")
        if "\0" in value:
            raise self._fail("cmdline has a NUL: the kernel's command line would end there",
                             "cmdline")
        return value

    # --- nodes -------------------------------------------------------------------------

    def _nodes(self, arch: Arch) -> list[RamRange]:
        """Every node's ranges, in file order: as written, or laid out from the sizes."""
        nodes = self.doc.get("node")
        if nodes is None:
            raise LayoutProblem("no [[node]] tables: a machine needs at least one NUMA node")
        if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
            raise self._fail("'node' must be an array of tables ([[node]])", "node")
        if not nodes:
            raise self._fail("'node' is empty: a machine needs at least one NUMA node", "node")
        if len(nodes) > MAX_NODES:
            raise LayoutProblem(f"more than {MAX_NODES} nodes (MAX_NUMNODES)",
                                self.src.node_line(MAX_NODES))
        kinds = []
        for nid, table in enumerate(nodes):
            self._unknown(table, NODE_KEYS, nid, f"node {nid}: ")
            kinds.append(self._kind(nid, table))
            if kinds[-1] != kinds[0]:
                raise self._fail(f"node {nid}: '{kinds[-1]}' here but '{kinds[0]}' in node 0: "
                                 "give every node ranges, or every node a size", kinds[-1], nid)
        if kinds[0] == "size":
            return self._laid_out(arch, len(nodes))
        return [r for nid in range(len(nodes)) for r in self._ranges(nid)]

    def _kind(self, nid: int, table: dict[str, Any]) -> str:
        if "ranges" in table and "size" in table:
            raise self._fail(f"node {nid}: give 'ranges' or 'size', not both", "size", nid)
        if "ranges" not in table and "size" not in table:
            raise LayoutProblem(f"node {nid}: needs 'ranges' or 'size'", self.src.node_line(nid))
        return "ranges" if "ranges" in table else "size"

    def _ranges(self, nid: int) -> list[RamRange]:
        value = self.doc["node"][nid]["ranges"]
        line = self._line("ranges", nid)
        if not isinstance(value, list):
            raise LayoutProblem(f"node {nid}: 'ranges' must be an array of strings", line)
        if not value:
            raise LayoutProblem(f"node {nid} has no RAM: 'ranges' is empty", line)
        out = []
        for i, text in enumerate(value):
            if not isinstance(text, str):
                raise LayoutProblem(f"node {nid}: ranges must be strings such as "
                                    f"\"0x100000000+4G\", not {type_name(text)}", line)
            nth = value[:i].count(text)
            out.append(self._range(nid, text, self.src.line_of("ranges", nid, text, nth)))
        return out

    def _range(self, nid: int, text: str, line: int) -> RamRange:
        """START-END or START+SIZE."""
        what = f"node {nid} range {text!r}"
        cut = min((i for i in (text.find("-"), text.find("+")) if i >= 0), default=-1)
        if cut < 0:
            raise LayoutProblem(f"{what}: not START-END or START+SIZE", line)
        numbers = []
        for part in (text[:cut], text[cut + 1:]):
            number = parse_number(part)
            if number is None:
                raise LayoutProblem(f"{what}: bad number {part!r}", line)
            numbers.append(number)
        start, other = numbers
        end = start + other if text[cut] == "+" else other
        return RamRange(nid, start, end, repr(text), line)

    def _laid_out(self, arch: Arch, count: int) -> list[RamRange]:
        """`size` nodes laid out as the presets are: pc_nodes or contiguous_nodes."""
        sizes = []
        for nid in range(count):
            size = self._size("size", 0, nid)
            text = _label(self.doc["node"][nid]["size"])
            if not size:
                raise self._fail(f"node {nid} has no RAM: size {text}", "size", nid)
            if size % arch.page_size:
                raise self._fail(f"node {nid} size {text}: not a multiple of the "
                                 f"{exact_size(arch.page_size)} page size", "size", nid)
            if arch.name == "x86_64" and nid == 0 and size <= MiB:
                raise self._fail(f"node 0 size {text}: a PC's node 0 needs more than its "
                                 "first 1 MiB", "size", nid)
            sizes.append(size)
        nodes = pc_nodes(sizes) if arch.name == "x86_64" else contiguous_nodes(GiB, sizes)
        out = []
        for node in nodes:
            text = _label(self.doc["node"][node.nid]["size"])
            line = self._line("size", node.nid)
            out += [RamRange(node.nid, start, end, f"{start:#x}-{end:#x} (from size {text})",
                             line) for start, end in node.ranges]
        return out
