"""Helpers the tests share: booting the engine, running khofs and shells, mount state.

Tests import from here and from conftest's fixtures, never from one another.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from khofs.engine.driver import Driver
from khofs.engine.kernel import Kernel
from khofs.engine.machine import Machine
from khofs.engine.system import System
from khofs.machines.presets import MACHINES
from khofs.producers.spec import ProducerSpec
from khofs.producers.table import boot_table

KHOFS = [sys.executable, "-m", "khofs"]
LAPTOP = MACHINES["laptop"]

DriverEntry = ProducerSpec | Callable[[], Driver]
D = TypeVar("D")


def boot_kernel(machine: Machine = LAPTOP, cmdline: str = "kho=on",
                drivers: Sequence[DriverEntry] = (), **kw: Any) -> Kernel:
    """One boot with the boot table khofs mounts with: `drivers`, then memblock's."""
    return Kernel(machine, cmdline, boot_table(drivers), **kw)


def boot_system(machine: Machine = LAPTOP, cmdline: str = "kho=on",
                drivers: Sequence[DriverEntry] = (), **kw: Any) -> System:
    """A machine across kexecs, booted with the same table."""
    return System(machine, cmdline, boot_table(drivers), **kw)


def drivers_of(kernel: Kernel, kind: type[D]) -> list[D]:
    """The drivers of one kind that this boot's initcalls made, in init order."""
    return [d for d in kernel.drivers if isinstance(d, kind)]


def khofs(*args: str, check: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the khofs command as a user would."""
    return subprocess.run([*KHOFS, *args], capture_output=True, text=True, check=check,
                          timeout=60, **kw)  # type: ignore[call-overload]


def sh(script: str, shell: str = "sh", **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a shell snippet, as a user types it. Debian's sh (dash) reports any failed
    `echo` write as "I/O error"; pass shell="bash" to see the errno's message."""
    return subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False, **kw)  # type: ignore[call-overload]
