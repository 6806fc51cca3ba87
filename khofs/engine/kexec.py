"""kexec_file_load's segment placement and the handover it passes to the next kernel.

kernel/kexec_file.c: every segment is a `struct kexec_buf` placed by kexec_add_buffer; with
KHO enabled, kho_locate_mem_hole offers only the scratch areas, in table order, and the load
fails with EADDRNOTAVAIL when a segment fits in none. kho_fill_kimage adds the first segment,
a copy of the scratch table, and records the root FDT page; x86 passes both to the next kernel
in a SETUP_KEXEC_KHO setup_data, which calls kho_populate with them.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from khofs.engine.abi.kexec_handover import SCRATCH_ENTRY
from khofs.engine.machine import KiB, Machine, MiB

ULONG_MAX = (1 << 64) - 1
SZ_64K = 64 * KiB


@dataclass(frozen=True)
class KexecBuf:
    """struct kexec_buf: what a segment needs."""

    what: str
    memsz: int
    buf_align: int
    buf_min: int = 0
    buf_max: int = ULONG_MAX
    top_down: bool = False


@dataclass(frozen=True)
class Segment:
    """A placed segment (struct kexec_segment): [mem, mem + memsz)."""

    what: str
    mem: int
    memsz: int

    @property
    def end(self) -> int:
        return self.mem + self.memsz


@dataclass(frozen=True)
class Handover:
    """What the next kernel is booted with: its command line, the loaded segments, and
    KHO's setup_data (root FDT page, scratch table copy)."""

    cmdline: str
    segments: tuple[Segment, ...]
    fdt_phys: int = 0  # 0: the loading kernel had KHO off
    fdt_len: int = 0
    scratch_phys: int = 0
    scratch_len: int = 0

    def segment(self, what: str) -> Segment | None:
        return next((s for s in self.segments if s.what == what), None)


def _conflict(start: int, end: int, placed: Sequence[Segment]) -> Segment | None:
    """kimage_is_destination_range: the first placed segment overlapping [start, end]."""
    return next((s for s in placed if s.mem <= end and start < s.end), None)


def _top_down(start: int, end: int, kbuf: KexecBuf, placed: Sequence[Segment]) -> int | None:
    """locate_mem_hole_top_down within one range ([start, end] inclusive); a conflict moves
    below the segment in the way, as stepping down a page at a time ends up doing."""
    temp_start = min(end, kbuf.buf_max) - kbuf.memsz + 1
    while True:
        temp_start -= temp_start % kbuf.buf_align
        if temp_start < start or temp_start < kbuf.buf_min:
            return None
        hit = _conflict(temp_start, temp_start + kbuf.memsz - 1, placed)
        if hit is None:
            return temp_start
        temp_start = hit.mem - kbuf.memsz


def _bottom_up(start: int, end: int, kbuf: KexecBuf, placed: Sequence[Segment]) -> int | None:
    """locate_mem_hole_bottom_up within one range."""
    temp_start = max(start, kbuf.buf_min)
    while True:
        temp_start = -(-temp_start // kbuf.buf_align) * kbuf.buf_align
        temp_end = temp_start + kbuf.memsz - 1
        if temp_end > end or temp_end > kbuf.buf_max:
            return None
        hit = _conflict(temp_start, temp_end, placed)
        if hit is None:
            return temp_start
        temp_start = hit.end


def locate_mem_hole(kbuf: KexecBuf, ranges: Sequence[tuple[int, int]],
                    placed: Sequence[Segment]) -> int | None:
    """locate_mem_hole_callback over ranges ([start, end) each) in the order given."""
    for start, end in ranges:
        last = end - 1
        if end - start < kbuf.memsz or last < kbuf.buf_min or start > kbuf.buf_max:
            continue
        found = (_top_down if kbuf.top_down else _bottom_up)(start, last, kbuf, placed)
        if found is not None:
            return found
    return None


def image_segments(machine: Machine, cmdline: str, image_size: int,
                   initrd_size: int) -> list[KexecBuf]:
    """The arch's image loader, in its order: x86-64 bzImage64_load (purgatory, boot params
    with the command line and setup_data, the kernel at CONFIG_PHYSICAL_ALIGN, the initrd);
    arm64 image_load and load_other_segments (kernel at 2 MiB, initrd, device tree)."""
    page = machine.arch.page_size
    if machine.arch.name == "x86_64":
        params = 4096 + len(cmdline) + 1 + 256  # boot_params, command line, setup_data
        bufs = [KexecBuf("purgatory", 24 * KiB, page, buf_min=0x3000, top_down=True),
                KexecBuf("boot params and command line", params, 16, buf_min=0x10000),
                KexecBuf("kernel", image_size, 2 * MiB, buf_min=0x100000)]
        if initrd_size:
            bufs.append(KexecBuf("initrd", initrd_size, page, buf_min=0x1000000))
        return bufs
    bufs = [KexecBuf("kernel", image_size, 2 * MiB)]
    if initrd_size:
        bufs.append(KexecBuf("initrd", initrd_size, page))
    bufs.append(KexecBuf("device tree", 64 * KiB + len(cmdline) + 1, page, top_down=True))
    return bufs


def kexec_file_load(bufs: Sequence[KexecBuf], ranges: Sequence[tuple[int, int]],
                    page_size: int) -> tuple[int, list[Segment]]:
    """kexec_add_buffer for each: memsz rounded to pages, at least page alignment."""
    placed: list[Segment] = []
    for kbuf in bufs:
        memsz = -(-kbuf.memsz // page_size) * page_size
        kbuf = KexecBuf(kbuf.what, memsz, max(kbuf.buf_align, page_size), kbuf.buf_min,
                        kbuf.buf_max, kbuf.top_down)
        mem = locate_mem_hole(kbuf, ranges, placed)
        if mem is None:
            return -errno.EADDRNOTAVAIL, placed
        placed.append(Segment(kbuf.what, mem, memsz))
    return 0, placed


def scratch_table_buf(count: int) -> KexecBuf:
    """kho_fill_kimage's segment: the scratch table, 64 KiB aligned, top-down."""
    return KexecBuf("KHO scratch table", count * SCRATCH_ENTRY.size, SZ_64K, top_down=True)


def pack_scratch_table(areas: Sequence[tuple[int, int]]) -> bytes:
    """struct kho_scratch[]: u64 addr, u64 size, native (little) endian."""
    return b"".join(SCRATCH_ENTRY.pack(addr, size) for addr, size in areas)


# --- the image loaders' view of a kernel file (arch/x86/kernel/kexec-bzimage64.c,
# arch/arm64/kernel/kexec_image.c): how big the kernel segment is ---------------------------

BZIMAGE_MAGIC_OFF, BZIMAGE_INIT_SIZE_OFF = 0x202, 0x260
ARM64_MAGIC_OFF, ARM64_IMAGE_SIZE_OFF = 56, 16


def kernel_image_size(head: bytes, file_size: int) -> int:
    """The kernel segment's size from a file's first bytes (at least 0x264 of them when the
    file has them) and its size. An x86 bzImage ("HdrS" at 0x202): the larger of the file
    and the setup header's init_size (what the kernel needs in place, bss included); an
    arm64 Image ("ARM\\x64" at 56): its header's image_size, else the file's size."""
    if head[BZIMAGE_MAGIC_OFF:BZIMAGE_MAGIC_OFF + 4] == b"HdrS" and len(head) >= 0x264:
        init_size: int = struct.unpack_from("<I", head, BZIMAGE_INIT_SIZE_OFF)[0]
        return max(file_size, init_size)
    if head[ARM64_MAGIC_OFF:ARM64_MAGIC_OFF + 4] == b"ARM\x64":
        image_size: int = struct.unpack_from("<Q", head, ARM64_IMAGE_SIZE_OFF)[0]
        return image_size or file_size
    return file_size


# x86 boot protocol (Documentation/arch/x86/boot.rst): setup_sects at 0x1F1 (0 means 4),
# the protocol version at 0x206, kernel_version at 0x20E: when non-zero, a NUL-terminated
# string at kernel_version + 0x200, inside the setup sectors (arch/x86/boot/version.c writes
# UTS_RELEASE " (" LINUX_COMPILE_BY "@" LINUX_COMPILE_HOST ") " UTS_VERSION).
BZIMAGE_SETUP_SECTS_OFF, BZIMAGE_VERSION_OFF, BZIMAGE_KERNEL_VERSION_OFF = 0x1F1, 0x206, 0x20E
BZIMAGE_HEAD_MAX = (255 + 1) * 0x200  # the boot sector and the most setup sectors there are


def kernel_image_release(head: bytes) -> str | None:
    """The release an x86 bzImage names in its setup header (the text of kernel_version up
    to the first space), from the file's first bytes (up to BZIMAGE_HEAD_MAX of them); None
    when it names none: no "HdrS", protocol before 2.00, a zero field, a string outside the
    setup sectors or without its NUL (and every arm64 Image)."""
    if head[BZIMAGE_MAGIC_OFF:BZIMAGE_MAGIC_OFF + 4] != b"HdrS" or len(head) < 0x210:
        return None
    protocol: int = struct.unpack_from("<H", head, BZIMAGE_VERSION_OFF)[0]
    offset: int = struct.unpack_from("<H", head, BZIMAGE_KERNEL_VERSION_OFF)[0]
    setup_sects = head[BZIMAGE_SETUP_SECTS_OFF] or 4
    if protocol < 0x200 or not offset or offset >= 0x200 * setup_sects:
        return None
    start = offset + 0x200
    nul = head.find(b"\0", start, (setup_sects + 1) * 0x200)
    if nul < 0:
        return None
    return head[start:nul].decode("latin-1").split(" ", 1)[0]
