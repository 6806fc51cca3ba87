"""khofs's own check that memory really survives a kexec: a config producer with `fill`
writes a pattern into its `preserve` ranges (and its `forget` ranges, which it never preserves)
at init, and after a kexec that handed its sub-tree over, checks it before writing it again.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from khofs.engine.driver import DriverContext
from khofs.engine.machine import KiB
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk

FILL_CHUNK = 64 * KiB


def fill_pattern(name: str, phys: int, size: int) -> Iterator[tuple[int, bytes]]:
    """The pattern of one range, chunk by chunk as (address, bytes): a byte stream seeded by
    the producer's name and the range, the same in every run and on every boot."""
    rng = random.Random(f"khofs-fill:{name}:{phys:#x}+{size:#x}")
    for off in range(0, size, FILL_CHUNK):
        n = min(FILL_CHUNK, size - off)
        yield phys + off, rng.randbytes(n)


def fill_ranges(mem: PhysMem, name: str, ranges: Sequence[tuple[int, int]]) -> None:
    for phys, size in ranges:
        for addr, data in fill_pattern(name, phys, size):
            mem.write(addr, data)


def first_corrupted(mem: PhysMem, name: str, ranges: Sequence[tuple[int, int]]) -> int | None:
    """The lowest-addressed byte of the first range (in the order given) that no longer holds
    its pattern, or None when every range is intact."""
    for phys, size in ranges:
        for addr, want in fill_pattern(name, phys, size):
            got = mem.read(addr, len(want))
            if got != want:
                return addr + next(i for i, (a, b) in enumerate(zip(got, want, strict=True))
                                   if a != b)
    return None


def check_and_fill(ctx: DriverContext, name: str, preserve: Sequence[tuple[int, int]], fill: bool,
                   forget: Sequence[tuple[int, int]]) -> None:
    """A config producer's fill/forget work at its init: after a kexec that handed its
    sub-tree over, check the pattern in its filled ranges (the preserved ones when `fill`,
    then the forgotten ones) and log the result; then (re)write the pattern. Every byte is
    written and compared, so a filled GiB costs a GiB of the daemon's memory."""
    ranges = [*(preserve if fill else ()), *forget]
    if not ranges:
        return
    if ctx.kho_in is not None and not ctx.kho_in.retrieve_subtree(name)[0]:
        log_check(ctx.log, name, first_corrupted(ctx.mem, name, ranges))
    fill_ranges(ctx.mem, name, ranges)


def log_check(log: Printk, name: str, bad: int | None) -> None:
    if bad is None:
        log.info(f"khofs: producer {name}: preserved memory intact")
    else:
        log.err(f"khofs: producer {name}: preserved memory corrupted at 0x{bad:x}")
