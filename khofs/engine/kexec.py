"""kexec_file_load's segment placement and the handover it passes to the next kernel.

kernel/kexec_file.c: every segment is a `struct kexec_buf` placed by kexec_add_buffer; with
KHO enabled, kho_locate_mem_hole offers only the scratch areas, in table order, and the load
fails with EADDRNOTAVAIL when a segment fits in none. kho_fill_kimage adds the first segment,
a copy of the scratch table, and records the root FDT page; x86 passes both to the next kernel
in a SETUP_KEXEC_KHO setup_data, which calls kho_populate with them.
"""

from __future__ import annotations

import errno
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

