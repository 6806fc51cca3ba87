"""The boot table: what runs as drivers in every boot, in the kernel's initcall order.

The producers file's entries (config producers, and the kernel's test_kho module when it
names `builtin = "kho_test"`) and the plugins are built-in drivers' module_init calls
(device level), in the order given; mm/memblock.c's reserve_mem_init is a late_initcall that
links after kernel/, so it runs after kho_init. The engine runs the table
(khofs.engine.kernel) without knowing what any entry is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from khofs.engine.driver import DEVICE_INITCALL, LATE_INITCALL, Driver, Initcall
from khofs.producers.config_producer import ConfigProducer, spec_problem
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.memblock import MemblockKho
from khofs.producers.spec import ProducerSpec

DriverFactory = Callable[[], Driver]


def _make(entry: ProducerSpec | DriverFactory) -> DriverFactory:
    if not isinstance(entry, ProducerSpec):
        return entry
    if entry.builtin == "kho_test":
        return KhoTest
    return partial(ConfigProducer, entry)


def boot_table(drivers: Sequence[ProducerSpec | DriverFactory] = ()) -> list[Initcall]:
    """The initcalls of one kernel: `drivers` (producers file entries, then plugins' and
    tests' factories) at module_init, then memblock's reserve_mem handover."""
    table = [Initcall(DEVICE_INITCALL, _make(entry),
                      partial(spec_problem, entry) if isinstance(entry, ProducerSpec) else None)
             for entry in drivers]
    table.append(Initcall(LATE_INITCALL, MemblockKho))
    return table
