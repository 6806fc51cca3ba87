"""The emulated kernel's sysfs files that kexec tools read: /sys/kernel/kexec_loaded,
kexec_crash_loaded and kexec_crash_size (kernel/ksysfs.c, where 6.16 keeps them), and the
firmware memory map, /sys/firmware/memmap/N/{start,end,type} (drivers/firmware/memmap.c, on
x86 from arch/x86/kernel/e820.c). Each show function returns the whole file, as sysfs renders
it into a page.
"""

from __future__ import annotations

from khofs.engine.machine import Machine, MiB
from khofs.lib.kstrtox import kstrtoull

# The PC's legacy area between the end of conventional memory and 1 MiB: the EBDA, VGA
# memory and the BIOS ROMs, which every e820 map reports as reserved.
LEGACY_AREA_END = MiB

E820_RAM = "System RAM"
E820_RESERVED = "Reserved"


def firmware_map(machine: Machine) -> list[tuple[int, int, str]]:
    """The firmware's memory map as firmware_map_add_early records it from e820: entries in
    address order, END inclusive, the type as e820_type_to_string names it. On x86 the RAM
    ranges (adjacent ones are one e820 entry) and, when conventional memory starts at 0, the
    reserved legacy area up to 1 MiB. Other architectures have no firmware memmap."""
    if machine.arch.name != "x86_64":
        return []
    ranges = sorted(r for node in machine.nodes for r in node.ranges)
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    entries = [(start, end - 1, E820_RAM) for start, end in merged]
    if merged and merged[0][0] == 0 and merged[0][1] < LEGACY_AREA_END:
        after = next((s for s, _ in merged if s >= LEGACY_AREA_END), LEGACY_AREA_END)
        entries.insert(1, (merged[0][1], min(after, LEGACY_AREA_END) - 1, E820_RESERVED))
    return entries


def memmap_show(entry: tuple[int, int, str], attr: str) -> str:
    """One attribute of a memmap entry: "0x%llx\\n" for start and end, "%s\\n" for type."""
    start, end, kind = entry
    return {"start": f"{start:#x}\n", "end": f"{end:#x}\n", "type": f"{kind}\n"}[attr]


def kexec_loaded_show(loaded: bool) -> str:
    """kexec_loaded_show and kexec_crash_loaded_show: "%d\\n" of whether an image is loaded."""
    return f"{int(loaded)}\n"


def kexec_crash_size_show(size: int) -> str:
    """kexec_crash_size_show: "%zd\\n" of crash_get_memory_size()."""
    return f"{size}\n"


def kexec_crash_size_parse(data: bytes) -> int | None:
    """kexec_crash_size_store's kstrtoul(buf, 0): the new size, or None (EINVAL)."""
    err, value = kstrtoull(data, 0)  # kstrtoul is kstrtoull on 64-bit
    return None if err else value
