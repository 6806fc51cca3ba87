"""`crashkernel=`: the kdump reservation (kernel/crash_reserve.c), a kernel allocation that
counts toward the KHO scratch sizes like any other made during boot.

parse_crashkernel reads the LAST `crashkernel=` of the command line in one of its forms:
`SIZE[@OFFSET]`, `RANGE:SIZE[,RANGE:SIZE...][@OFFSET]` (the size for the machine's RAM), or
`SIZE,high` (with `crashkernel=SIZE,low` for the low part, 256 MiB on x86 by default);
reserve_crashkernel_generic then allocates it below the low limit, falling back to high memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from khofs.engine.machine import GiB, Machine, MiB
from khofs.lib.cmdline import memparse, parameq, split_args

DEFAULT_CRASH_KERNEL_LOW_SIZE = 256 * MiB  # x86: max(swiotlb + 8 MiB, 256 MiB)


@dataclass(frozen=True)
class CrashKernel:
    size: int
    base: int = 0  # 0: anywhere
    low_size: int = 0
    high: bool = False


def _last(cmdline: str, suffix: str) -> str | None:
    """get_last_crashkernel: the value of the last crashkernel= with this suffix ("" for
    the plain forms, ",high" or ",low")."""
    found = None
    for param, value in split_args(cmdline):
        if value is not None and parameq(param, "crashkernel"):
            if suffix and value.endswith(suffix):
                found = value[:-len(suffix)]
            elif not suffix and not value.endswith((",high", ",low")):
                found = value
    return found


def _number(text: str) -> tuple[int, str] | None:
    value, used = memparse(text.encode())
    return (value, text[used:]) if used else None


def _ranges(text: str, system_ram: int) -> tuple[int, str] | None:
    """parse_crashkernel_mem: `start-[end]:size,...`; the size whose range holds the RAM."""
    size, rest = 0, text
    while True:
        start = _number(rest)
        if start is None or not start[1].startswith("-"):
            return None
        rest = start[1][1:]
        end = _number(rest) if rest[:1].isdigit() else (1 << 64, rest)
        if end is None or not end[1].startswith(":"):
            return None
        got = _number(end[1][1:])
        if got is None:
            return None
        if start[0] <= system_ram < end[0] and not size:
            size = got[0]
        rest = got[1]
        if not rest.startswith(","):
            return size, rest
        rest = rest[1:]


def parse_crashkernel(cmdline: str, system_ram: int) -> CrashKernel | None:
    """parse_crashkernel: what to reserve, or None (no or a malformed crashkernel=)."""
    plain = _last(cmdline, "")
    if plain is not None:
        parsed = _ranges(plain, system_ram) if ":" in plain.split("@")[0] else _number(plain)
        if parsed is None:
            return None
        size, rest = parsed
        if not rest:
            return CrashKernel(size)
        if rest.startswith("@"):
            base = _number(rest[1:])
            return CrashKernel(size, base[0]) if base and not base[1] else None
        return None
    high = _last(cmdline, ",high")
    if high is None:
        return None
    got = _number(high)
    if got is None or got[1]:
        return None
    low = _last(cmdline, ",low")
    low_got = _number(low) if low is not None else None
    low_size = low_got[0] if low_got and not low_got[1] else DEFAULT_CRASH_KERNEL_LOW_SIZE
    return CrashKernel(got[0], 0, low_size, True)


def crash_limits(machine: Machine) -> tuple[int, int, int]:
    """(CRASH_ALIGN, CRASH_ADDR_LOW_MAX, CRASH_ADDR_HIGH_MAX) of the architecture: x86-64
    16 MiB, 4 GiB, 64 TiB; arm64 2 MiB, the DMA limit, the physical address space."""
    if machine.arch.name == "x86_64":
        return 16 * MiB, 4 * GiB, 64 << 40
    return 2 * MiB, machine.low_limit + 1, 1 << machine.arch.max_physmem_bits
