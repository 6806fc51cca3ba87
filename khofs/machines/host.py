"""`--machine host`: this computer as its kernel sees it, read from /sys and /proc.

RAM, best source first:
- /sys/firmware/memmap/N/{start,end,type}: the firmware's map (x86's e820 as the BIOS or EFI
  stub gave it, before the kernel's own edits); "System RAM" entries, END inclusive;
- /proc/iomem's "System RAM" lines (the kernel's resource tree: arm64 has no firmware memmap),
  unless they read as zeros, as they do for readers without CAP_SYS_ADMIN;
and the NUMA nodes from /sys/devices/system/node/nodeN/memoryM: memory block M covers
[M * block_size_bytes, (M + 1) * block_size_bytes). Where both exist, each node's RAM is the
RAM inside its blocks (a block spans the holes in it; a memory map does not say which node it
is on); with only one, that one is used; with neither, one node of /proc/meminfo's MemTotal,
laid out like a PC (x86_64) or a QEMU arm64 virt board. Ranges are page-aligned inwards, as
memblock_trim_memory does. Nodes with no memory (CPU-only nodes) are left out.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from khofs.engine.machine import Arch, GiB, Machine, Node, get_arch
from khofs.errors import MachineError
from khofs.lib.ranges import Ranges, intersect, merge
from khofs.machines.machine_file import (
    DEFAULT_KERNEL_SIZE,
    Layout,
    LayoutProblem,
    RamRange,
    check_layout,
    describe,
    nodes_of,
)
from khofs.machines.presets import contiguous_nodes, pc_nodes

ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# /proc/iomem: "START-END : NAME", indented two spaces per level, END inclusive
_IOMEM_LINE = re.compile(r"\s*([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)")
# arm64's image is "Kernel code" and "Kernel data" (to _end, bss included); x86 adds
# "Kernel rodata" and "Kernel bss"
_KERNEL_PARTS = ("Kernel code", "Kernel rodata", "Kernel data", "Kernel bss")


def host_machine(sys_root: str = "/sys", proc_root: str = "/proc", *,
                 machine_arch: str | None = None, page_size: int | None = None) -> Machine:
    """This machine: name "host", the description saying what was read. machine_arch (as
    platform.machine() names it) and page_size stand in for this computer's, for tests."""
    arch = _arch(machine_arch or platform.machine(), page_size or os.sysconf("SC_PAGE_SIZE"))
    cpus = _cpus(sys_root)
    nodes, sources = _nodes(arch, sys_root, proc_root)
    kernel_size = _kernel_size(proc_root, arch) or DEFAULT_KERNEL_SIZE[arch.name]
    ranges = [RamRange(n.nid, s, e, f"{s:#x}-{e:#x}") for n in nodes for s, e in n.ranges]
    try:
        check_layout(Layout(arch, ranges, kernel_size, 0))
    except LayoutProblem as problem:
        raise MachineError(f"host: {problem.text}") from None
    nodes = nodes_of(ranges)
    return Machine("host", describe(arch, nodes, cpus, " and ".join(sources)), arch, cpus,
                   nodes, kernel_size)


def _read(path: str | Path) -> str | None:
    """A file's text, or None when it cannot be read (missing, denied, not text)."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _arch(machine: str, page_size: int) -> Arch:
    name = ARCHES.get(machine)
    if name is None:
        raise MachineError(f"host: architecture {machine} is not emulated (x86_64 and aarch64 "
                          "are)")
    try:
        return get_arch(name, page_size)
    except ValueError as e:
        raise MachineError(f"host: {e}") from None


def _cpus(sys_root: str) -> int:
    """The possible CPUs (what sizes the per-cpu areas at boot), else the online ones."""
    for name in ("possible", "online"):
        text = _read(f"{sys_root}/devices/system/cpu/{name}")
        count = _cpulist_count(text or "")
        if count:
            return count
    return os.cpu_count() or 1


def _cpulist_count(text: str) -> int:
    """How many CPUs a cpulist ("0-3,8,10-11") names; 0 if it is not one."""
    count = 0
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or not (last or first).isdigit() or int(last or first) < int(first):
            return 0
        count += int(last or first) - int(first) + 1
    return count


# --- RAM ----------------------------------------------------------------------------------

def _align_in(ranges: Ranges, page: int) -> Ranges:
    """memblock_trim_memory: each range shrunk to whole pages, empty ones dropped."""
    out = []
    for start, end in ranges:
        start, end = -(-start // page) * page, end - end % page
        if start < end:
            out.append((start, end))
    return out


def firmware_ram(sys_root: str) -> Ranges | None:
    """/sys/firmware/memmap's "System RAM" entries (x86: e820 types RAM and RESERVED_KERN
    both read "System RAM"; ACPI, reserved and persistent memory do not)."""
    base = Path(sys_root, "firmware", "memmap")
    ranges: Ranges = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return None
    for entry in entries:
        start, end, kind = (_read(entry / f) for f in ("start", "end", "type"))
        if start is None or end is None or kind is None or kind.strip() != "System RAM":
            continue
        try:
            ranges.append((int(start, 0), int(end, 0) + 1))
        except ValueError:
            continue
    return merge(ranges) or None


def _iomem(proc_root: str) -> list[tuple[int, int, str]] | None:
    """/proc/iomem as (start, end exclusive, name); None when unreadable or zeroed (the
    kernel shows unprivileged readers every address as 0)."""
    text = _read(f"{proc_root}/iomem")
    if text is None:
        return None
    entries = []
    for line in text.splitlines():
        m = _IOMEM_LINE.match(line)
        if m:
            entries.append((int(m[1], 16), int(m[2], 16) + 1, m[3].strip()))
    if all(start == 0 and end == 1 for start, end, _ in entries):
        return None
    return entries


def iomem_ram(proc_root: str) -> Ranges | None:
    entries = _iomem(proc_root)
    ram = [(start, end) for start, end, name in entries or () if name == "System RAM"]
    return merge(ram) or None


def _kernel_size(proc_root: str, arch: Arch) -> int:
    """From the start of "Kernel code" to the end of the image's last part (bss on x86,
    "Kernel data", which runs to _end, on arm64), in whole pages; 0 if not readable."""
    entries = _iomem(proc_root) or []
    parts = [(start, end) for start, end, name in entries if name in _KERNEL_PARTS]
    code = [start for start, _, name in entries if name == "Kernel code"]
    if not code:
        return 0
    size = max(end for _, end in parts) - min(code)
    return -(-size // arch.page_size) * arch.page_size if size > 0 else 0


def node_blocks(sys_root: str) -> dict[int, Ranges]:
    """Each node's memory blocks, as merged ranges; nodes with none are left out."""
    size_text = _read(f"{sys_root}/devices/system/memory/block_size_bytes")
    try:
        block = int(size_text or "", 16)
        names = os.listdir(f"{sys_root}/devices/system/node")
    except (ValueError, OSError):
        return {}
    nodes = {}
    for name in names:
        if not re.fullmatch(r"node\d+", name):
            continue
        try:
            entries = os.listdir(f"{sys_root}/devices/system/node/{name}")
        except OSError:
            continue
        ids = [int(e[6:]) for e in entries if re.fullmatch(r"memory\d+", e)]
        if ids and block > 0:
            nodes[int(name[4:])] = merge([(i * block, (i + 1) * block) for i in ids])
    return dict(sorted(nodes.items()))


def _nodes(arch: Arch, sys_root: str, proc_root: str) -> tuple[tuple[Node, ...], list[str]]:
    """The nodes and their RAM, and the sources they came from."""
    page = arch.page_size
    ram, source = firmware_ram(sys_root), f"{sys_root}/firmware/memmap"
    if ram is None:
        ram, source = iomem_ram(proc_root), f"{proc_root}/iomem"
    blocks = {nid: _align_in(r, page) for nid, r in node_blocks(sys_root).items()}
    blocks = {nid: r for nid, r in blocks.items() if r}
    nodes_source = f"{sys_root}/devices/system/node"
    if ram is not None:
        ram = _align_in(ram, page)
        if blocks:
            inside = {nid: intersect(ram, r) for nid, r in blocks.items()}
            nodes = tuple(Node(nid, tuple(r)) for nid, r in inside.items() if r)
            if nodes:
                return nodes, [source, nodes_source]
        if ram:
            return (Node(0, tuple(ram)),), [source]
    if blocks:
        return tuple(Node(nid, tuple(r)) for nid, r in blocks.items()), [nodes_source]
    return _meminfo_node(arch, proc_root), [f"{proc_root}/meminfo"]


def _meminfo_node(arch: Arch, proc_root: str) -> tuple[Node, ...]:
    """One node of MemTotal, laid out as the presets are (what the kernel manages: a little
    less than the RAM)."""
    text = _read(f"{proc_root}/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+) kB$", text, re.MULTILINE)
    if not m:
        raise MachineError(f"host: cannot tell how much RAM this machine has (no memory map "
                          f"and no MemTotal in {proc_root}/meminfo)")
    size = int(m[1]) * 1024
    size -= size % arch.page_size
    return pc_nodes([size]) if arch.name == "x86_64" else contiguous_nodes(GiB, [size])
