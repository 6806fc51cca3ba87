"""The crashkernel= region while the kernel runs (kernel/crash_core.c, kernel/crash_reserve.c):
crashk_res and crashk_low_res, what /sys/kernel/kexec_crash_size shows, and shrinking it.

A resource with end 0 is not reserved (crash_resource_size). Shrinking gives the tail back as
"System RAM" (it shows in /proc/iomem nested under the RAM it belongs to) and is refused while a
crash kernel is loaded (ENOENT) or to grow (EINVAL). The kernel's quirk is kept: the shrink of
either resource sets crashk_res.end (__crash_shrink_memory).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from khofs.engine.boot import Reservation


@dataclass
class CrashRes:
    """crashk_res and crashk_low_res ([start, end], (0, 0) when not reserved), whether each
    is in the iomem tree, and the RAM a shrink gave back."""

    res: tuple[int, int] = (0, 0)
    low: tuple[int, int] = (0, 0)
    res_listed: bool = False
    low_listed: bool = False
    freed: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, reservations: list[Reservation]) -> CrashRes:
        """What reserve_crashkernel_generic (and _low) reserved at boot."""
        found = cls()
        for r in reservations:
            if r.what == "crashkernel":
                found.res, found.res_listed = (r.base, r.base + r.size - 1), True
            elif r.what == "crashkernel low":
                found.low, found.low_listed = (r.base, r.base + r.size - 1), True
        return found

    def regions(self) -> list[tuple[int, int]]:
        """The ones /proc/iomem lists as "Crash kernel"."""
        return [r for r, listed in ((self.low, self.low_listed), (self.res, self.res_listed))
                if listed]


def crash_resource_size(res: tuple[int, int]) -> int:
    return res[1] - res[0] + 1 if res[1] else 0


def crash_get_memory_size(crash: CrashRes) -> int:
    return crash_resource_size(crash.res) + crash_resource_size(crash.low)


def crash_shrink_memory(crash: CrashRes, new_size: int, crash_loaded: bool,
                        page_size: int) -> int:
    """crash_shrink_memory: 0 or a negative errno; new_size rounds up to
    KEXEC_CRASH_MEM_ALIGN (a page)."""
    if crash_loaded:
        return -errno.ENOENT
    low_size = crash_resource_size(crash.low)
    old_size = crash_resource_size(crash.res) + low_size
    new_size = -(-new_size // page_size) * page_size
    if new_size >= old_size:
        return 0 if new_size == old_size else -errno.EINVAL
    if low_size > new_size:
        _shrink(crash, "res", 0)
        _shrink(crash, "low", new_size)
    else:
        _shrink(crash, "res", new_size - low_size)
    if not crash.res[1] and crash.low[1]:  # crashk_res takes crashk_low_res's place
        crash.res, crash.res_listed = crash.low, True
        crash.low, crash.low_listed = (0, 0), False
    return 0


def _shrink(crash: CrashRes, which: str, new_size: int) -> None:
    """__crash_shrink_memory: the tail from start + new_size goes back to RAM; a resource
    shrunk to nothing is released, otherwise crashk_res's end moves, whichever resource was
    shrunk (the kernel's own quirk)."""
    old: tuple[int, int] = getattr(crash, which)
    ram = (old[0] + new_size, old[1])
    if not new_size:
        setattr(crash, which, (0, 0))
        setattr(crash, f"{which}_listed", False)
    else:
        crash.res = (crash.res[0], ram[0] - 1)
    crash.freed.append(ram)
