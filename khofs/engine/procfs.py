"""The emulated kernel's /proc files that kexec tools read: /proc/cmdline (fs/proc/cmdline.c)
and /proc/iomem (kernel/resource.c), from the running kernel and its machine.

/proc/iomem is the resource tree, one line per resource in pre-order, "%*s%0*llx-%0*llx : %s"
with two spaces per level and 8-digit minimum hex (the root ends above 0xffff), ends
inclusive. An opener without CAP_SYS_ADMIN in the initial user namespace sees every address
as 0. The tree khofs builds: on x86 the e820 map as the kernel keeps it (page 0 taken from RAM
by trim_bios_range, the legacy area reserved) with "Kernel code", "Kernel rodata", "Kernel
data" and "Kernel bss" in the RAM that holds the image (arch/x86/kernel/setup.c); on arm64 one
"System RAM" per memblock region with "Kernel code" and "Kernel data"; in both, "Crash kernel"
for the crashkernel= region and "System RAM" for what shrinking it gave back.
"""

from __future__ import annotations

from khofs.engine.crash_core import CrashRes
from khofs.engine.kernel import Kernel
from khofs.engine.sysfs import E820_RAM, firmware_map

Entry = tuple[int, int, int, str]  # depth, start, end (inclusive), name
# Where the image's sections fall, as fractions of _text.._end of a distribution kernel
# (Debian's 6.16 x86-64 image: text 45%, rodata 25%, data 7%, bss 3%); each section after
# the text starts on a 2 MiB boundary (the linker script's PMD alignment).
X86_SECTIONS = (("Kernel code", 0.45), ("Kernel rodata", 0.25), ("Kernel data", 0.07),
                ("Kernel bss", 0.03))
ARM64_SECTIONS = (("Kernel code", 0.55), ("Kernel data", 0.25))
SECTION_ALIGN = 2 << 20


def proc_cmdline(kernel: Kernel) -> bytes:
    """cmdline_proc_show: saved_command_line (a C string) and a newline."""
    line = kernel.params.cmdline.partition("\0")[0]
    return line.encode("utf-8", "surrogateescape") + b"\n"


def _kernel_sections(kernel: Kernel) -> list[tuple[int, int, str]]:
    """The image's resources, laid out inside the "kernel image" reservation."""
    image = next((r for r in kernel.reservations if r.what == "kernel image"), None)
    if image is None:
        return []
    x86 = kernel.machine.arch.name == "x86_64"
    sections, start, out = X86_SECTIONS if x86 else ARM64_SECTIONS, image.base, []
    for i, (name, share) in enumerate(sections):
        if i and x86 and name != "Kernel bss":
            start = -(-start // SECTION_ALIGN) * SECTION_ALIGN
        end = min(start + max(int(image.size * share), 1), image.base + image.size)
        out.append((start, end - 1, name))
        start = -(-end // 4096) * 4096
    return out


def _top_level(kernel: Kernel) -> list[tuple[int, int, str]]:
    """The root's children: x86's e820 after trim_bios_range, arm64's memblock memory."""
    if kernel.machine.arch.name != "x86_64":
        return [(r.base, r.end - 1, E820_RAM) for r in kernel.memblock.memory.regions]
    out = []
    for start, end, kind in firmware_map(kernel.machine):
        if start == 0 and kind == E820_RAM:
            out.append((0, 0xFFF, "Reserved"))
            start = 0x1000
        out.append((start, end, kind))
    return out


def iomem_entries(kernel: Kernel, crash: CrashRes) -> list[Entry]:
    """The resource tree, pre-order: each top-level range, then what lies inside it."""
    children = _kernel_sections(kernel)
    children += [(s, e, "Crash kernel") for s, e in crash.regions()]
    children += [(s, e, E820_RAM) for s, e in crash.freed]
    out: list[Entry] = []
    for start, end, name in _top_level(kernel):
        out.append((0, start, end, name))
        inside = sorted(c for c in children if start <= c[0] and c[1] <= end)
        out.extend((1, s, e, n) for s, e, n in inside)
    return out


def proc_iomem(entries: list[Entry], privileged: bool) -> str:
    """r_show for each resource; addresses only for a privileged opener."""
    lines = []
    for depth, start, end, name in entries:
        if not privileged:
            start = end = 0
        lines.append(f"{'':{depth * 2}}{start:08x}-{end:08x} : {name}\n")
    return "".join(lines)
