"""Boot parameters the emulated kernel takes from its command line.

The fields mirror the kernel's own variables, with their defaults, so a parser can update them
one `early_param` at a time the way the kernel does (a rejected value leaves them unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from khofs.engine.era import ERA_6_16, Era


@dataclass
class ScratchParams:
    """kernel/kexec_handover.c: scratch_scale, scratch_size_{lowmem,global,pernode}."""

    scale: int = 200
    lowmem: int = 0
    global_: int = 0
    pernode: int = 0


@dataclass(frozen=True)
class ReserveMem:
    """mm/memblock.c: one `reserve_mem=SIZE:ALIGN:NAME` request."""

    size: int
    align: int
    name: str


@dataclass
class BootParams:
    """Everything the engine reads from the command line."""

    cmdline: str = "kho=on"
    kho: bool = False  # kernel/kexec_handover.c: kho_enable (default off)
    scratch: ScratchParams = field(default_factory=ScratchParams)
    reserve_mem: list[ReserveMem] = field(default_factory=list)
    era: Era = ERA_6_16  # whose parsers read the line
