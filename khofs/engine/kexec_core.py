"""The classic kexec_load(2) (kernel/kexec.c) and what it shares with kexec_file_load
(kernel/kexec_core.c): who may load, and sanity_check_segment_list.

kexec_load takes the segments as the caller laid them out (struct kexec_segment: buf, bufsz,
mem, memsz) and copies each buffer in; nothing of KHO is involved (6.16 adds its handover only
in kexec_file_load's kho_fill_kimage), so a kernel booted from a classic load has no kho/in.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from khofs.engine.kernel import Kernel
from khofs.engine.kexec import ULONG_MAX, Segment
from khofs.engine.kexec_image import boot_command_line
from khofs.engine.uaccess import CAP_SYS_BOOT, UserAccess

# include/uapi/linux/kexec.h
KEXEC_ON_CRASH = 0x00000001
KEXEC_PRESERVE_CONTEXT = 0x00000002
KEXEC_UPDATE_ELFCOREHDR = 0x00000004
KEXEC_CRASH_HOTPLUG_SUPPORT = 0x00000008
KEXEC_ARCH_MASK = 0xFFFF0000
KEXEC_ARCH_DEFAULT = 0 << 16
KEXEC_ARCH_386 = 3 << 16
KEXEC_ARCH_X86_64 = 62 << 16
KEXEC_ARCH_AARCH64 = 183 << 16
KEXEC_SEGMENT_MAX = 16
# include/linux/kexec.h, without CONFIG_KEXEC_JUMP (so no KEXEC_PRESERVE_CONTEXT)
KEXEC_FLAGS = KEXEC_ON_CRASH | KEXEC_UPDATE_ELFCOREHDR | KEXEC_CRASH_HOTPLUG_SUPPORT

KEXEC_SEGMENT = struct.Struct("<QQQQ")  # buf, bufsz, mem, memsz
COMPAT_KEXEC_SEGMENT = struct.Struct("<IIII")  # the same, 32-bit, for the i386 entry


def kexec_arch(arch: str) -> int:
    """KEXEC_ARCH: what the running kernel's architecture is called in kexec_load's flags."""
    return KEXEC_ARCH_X86_64 if arch == "x86_64" else KEXEC_ARCH_AARCH64


def kexec_destination_memory_limit(arch: str) -> int:
    """KEXEC_DESTINATION_MEMORY_LIMIT: x86-64's MAXMEM - 1 with 4-level paging (46 bits);
    the generic -1UL elsewhere."""
    return (1 << 46) - 1 if arch == "x86_64" else ULONG_MAX


class KexecSlots(Protocol):
    """kexec_image and kexec_crash_image: where a load goes (the machine, System)."""

    def unload(self, crash: bool) -> None:
        """kimage_free(xchg(dest_image, NULL))."""
        ...

    def install(self, crash: bool, cmdline: str, segments: Sequence[Segment],
                contents: Sequence[tuple[int, bytes]] = (), fdt_phys: int = 0,
                release: str | None = None) -> int:
        """The new image in its slot, the old one freed: the next kernel's command line,
        its segments, the data to copy at kexec time (a classic load's), the root FDT
        kho_fill_kimage handed over (a file load's) and the release the image names.
        0, or a negative errno when the machine cannot take it."""
        ...


@dataclass(frozen=True)
class KexecSegment:
    """struct kexec_segment as the caller passed it."""

    buf: int
    bufsz: int
    mem: int
    memsz: int


def kexec_load_permitted(user: UserAccess) -> bool:
    """kexec_load_permitted: CAP_SYS_BOOT in the initial user namespace (kexec_load_disabled
    is 0 and the load limits are unlimited, -1, on the emulated machine)."""
    return user.capable(CAP_SYS_BOOT)


def kexec_load_check(user: UserAccess, nr_segments: int, flags: int) -> int:
    """kexec_load_check: permission, then the flags (only KEXEC_FLAGS outside the arch
    bits), then at most KEXEC_SEGMENT_MAX segments."""
    if not kexec_load_permitted(user):
        return -errno.EPERM
    if (flags & KEXEC_FLAGS) != (flags & ~KEXEC_ARCH_MASK):
        return -errno.EINVAL
    if nr_segments > KEXEC_SEGMENT_MAX:
        return -errno.EINVAL
    return 0


def kexec_load_arch_check(flags: int, arch: str, compat: bool) -> int:
    """The native entry wants this kernel's KEXEC_ARCH or KEXEC_ARCH_DEFAULT; the compat
    (i386) entry refuses KEXEC_ARCH_DEFAULT and takes any other."""
    given = flags & KEXEC_ARCH_MASK
    if compat:
        return -errno.EINVAL if given == KEXEC_ARCH_DEFAULT else 0
    return 0 if given in (kexec_arch(arch), KEXEC_ARCH_DEFAULT) else -errno.EINVAL


def copy_segments(user: UserAccess, ptr: int, nr_segments: int,
                  compat: bool) -> list[KexecSegment] | int:
    """memdup_array_user (the compat entry: one copy_from_user per compat_kexec_segment):
    -EFAULT when the array cannot be read."""
    layout = COMPAT_KEXEC_SEGMENT if compat else KEXEC_SEGMENT
    if not nr_segments:
        return []
    raw = user.copy_from_user(ptr, layout.size * nr_segments)
    if raw is None:
        return -errno.EFAULT
    return [KexecSegment(*layout.unpack_from(raw, i * layout.size)) for i in range(nr_segments)]


def _page_count(size: int, page_size: int) -> int:
    return -(-size // page_size)


def sanity_check_segment_list(segments: list[KexecSegment], page_size: int, arch: str,
                              totalram_pages: int,
                              crash_region: tuple[int, int] | None = None) -> int:
    """sanity_check_segment_list, check by check over all segments: page-aligned ends
    below the destination limit (EADDRNOTAVAIL), no overlap (EINVAL), bufsz <= memsz
    (EINVAL), at most half of RAM (EINVAL), and a crash image inside crashk_res
    (EADDRNOTAVAIL; crash_region is its [start, end], (0, 0) when nothing is reserved)."""
    limit = kexec_destination_memory_limit(arch)
    for seg in segments:
        mstart, mend = seg.mem, (seg.mem + seg.memsz) & ULONG_MAX
        if mstart > mend or mstart % page_size or mend % page_size or mend >= limit:
            return -errno.EADDRNOTAVAIL
    for i, seg in enumerate(segments):
        for other in segments[:i]:
            if seg.mem + seg.memsz > other.mem and seg.mem < other.mem + other.memsz:
                return -errno.EINVAL
    if any(seg.bufsz > seg.memsz for seg in segments):
        return -errno.EINVAL
    pages = [_page_count(seg.memsz, page_size) for seg in segments]
    if any(n > totalram_pages // 2 for n in pages) or sum(pages) > totalram_pages // 2:
        return -errno.EINVAL
    if crash_region is not None:
        start, end = crash_region
        for seg in segments:
            if seg.mem < start or seg.mem + seg.memsz - 1 > end:
                return -errno.EADDRNOTAVAIL
    return 0


def kimage_load_segments(user: UserAccess, segments: list[KexecSegment],
                         page_size: int) -> list[tuple[int, bytes]] | int:
    """kimage_load_segment for each: bufsz bytes copied from the caller (EFAULT), the rest of
    the segment's last page cleared; what lands where at kexec time."""
    contents = []
    for seg in segments:
        data = user.copy_from_user(seg.buf, seg.bufsz) if seg.bufsz else b""
        if data is None:
            return -errno.EFAULT
        pad = -len(data) % page_size
        contents.append((seg.mem, data + bytes(pad)))
    return contents


def totalram_pages(kernel: Kernel) -> int:
    """totalram_pages(): the pages the buddy allocator manages, RAM less what memblock kept."""
    memory = sum(r.size for r in kernel.memblock.memory.regions)
    reserved = sum(r.size for r in kernel.memblock.reserved.regions)
    return max(memory - reserved, 0) // kernel.machine.arch.page_size


def sys_kexec_load(kernel: Kernel, user: UserAccess, slots: KexecSlots, entry: int,
                   nr_segments: int, segments: int, flags: int, compat: bool,
                   crash_region: tuple[int, int]) -> int:
    """SYSCALL_DEFINE4(kexec_load) (compat: the i386 entry), then do_kexec_load: 0 or a
    negative errno. No segments unloads the slot; a crash load frees the old crash image
    first; a failed normal load keeps the old image."""
    arch, page_size = kernel.machine.arch.name, kernel.machine.arch.page_size
    err = kexec_load_check(user, nr_segments, flags) or \
        kexec_load_arch_check(flags, arch, compat)
    if err:
        return err
    segs = copy_segments(user, segments, nr_segments, compat)
    if isinstance(segs, int):
        return segs
    crash = bool(flags & KEXEC_ON_CRASH)
    if not segs:
        slots.unload(crash)
        return 0
    if crash:
        slots.unload(True)
    # kimage_alloc_init: a crash image's entry point lies in crashk_res
    region = crash_region if crash else None
    if region is not None and not region[0] <= entry <= region[1]:
        return -errno.EADDRNOTAVAIL
    err = sanity_check_segment_list(segs, page_size, arch, totalram_pages(kernel), region)
    if err:
        return err
    contents = kimage_load_segments(user, segs, page_size)
    if isinstance(contents, int):
        return contents
    placed = [Segment(f"segment {i}", s.mem, s.memsz) for i, s in enumerate(segs)]
    return slots.install(crash, boot_command_line(arch, contents), placed, contents)
