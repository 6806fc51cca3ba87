"""What a driver (a KHO user) sees of the kernel, and how the kernel boots drivers.

The kernel knows drivers by this interface only: an `Initcall` names the level a driver's
init runs at and makes the driver; `Driver.init` gets a `DriverContext`, the part of the
kernel a driver may call (the allocators, memory, KHO's exported API, the log). The table of
initcalls comes from above (khofs.producers), as the kernel's come from the linker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from khofs.engine.kho_in import KhoIn
from khofs.engine.kho_out import KhoOut
from khofs.engine.machine import Machine
from khofs.engine.physmem import PhysMem
from khofs.engine.printk import Printk
from khofs.engine.slab import Kmalloc, PageSource

# include/linux/init.h: the initcall levels khofs runs, lowest first.
FS_INITCALL = 5
DEVICE_INITCALL = 6  # module_init of a built-in driver
LATE_INITCALL = 7


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
    def kho(self) -> KhoOut: ...
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
    """One entry of the boot table: a driver made afresh for each boot, at `level`."""

    level: int
    make: Callable[[], Driver]
