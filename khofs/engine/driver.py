"""What a driver (a KHO user) sees of the kernel, and how the kernel boots drivers.

The kernel knows drivers by this interface only: an `Initcall` names the level a driver's
init runs at and makes the driver; `Driver.init` gets a `DriverContext`, the part of the
kernel a driver may call (the allocators, memory, KHO's exported API, the log). The table of
initcalls comes from above (khofs.producers), as the kernel's come from the linker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from khofs.engine.era import Profile
from khofs.engine.initlevel import DEVICE_INITCALL, FS_INITCALL, LATE_INITCALL
from khofs.engine.kho_in import KhoIn
from khofs.engine.kho_out import KhoOutBase
from khofs.engine.machine import Machine
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk
from khofs.engine.slab import Kmalloc, PageSource

__all__ = ["DEVICE_INITCALL", "FS_INITCALL", "LATE_INITCALL", "Driver", "DriverContext",
           "Initcall", "initcall_problem"]


class DriverContext(Protocol):
    """The kernel as a driver may use it during one boot."""

    @property
    def machine(self) -> Machine: ...
    @property
    def boot_number(self) -> int: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def log(self) -> Printk: ...
    @property
    def mem(self) -> PhysMem: ...
    @property
    def pages(self) -> PageSource: ...
    @property
    def slab(self) -> Kmalloc: ...
    @property
    def kho_enabled(self) -> bool: ...
    @property
    def kho(self) -> KhoOutBase: ...
    @property
    def profile(self) -> Profile: ...
    @property
    def kho_in(self) -> KhoIn | None: ...
    @property
    def reserved_mem(self) -> list[tuple[str, int, int]]: ...


class Driver(Protocol):
    """A KHO user: its init runs once per boot, at its initcall level."""

    name: str

    def init(self, ctx: DriverContext) -> int: ...


@dataclass(frozen=True)
class Initcall:
    """One entry of the boot table: a driver made afresh for each boot, at `level`. `check`
    says why a kernel version could not run it ('' when it can): asked before booting one."""

    level: int
    make: Callable[[], Driver]
    check: Callable[[Profile], str] | None = None


def initcall_problem(table: Sequence[Initcall], profile: Profile) -> str:
    """The first reason in the table why `profile` cannot boot it, or ''."""
    for call in table:
        problem = call.check(profile) if call.check is not None else ""
        if problem:
            return problem
    return ""
