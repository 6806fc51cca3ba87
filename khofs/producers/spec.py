"""What a producers file (or a test) says about one producer, already checked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProducerSpec:
    """One `[[producer]]` entry of a producers file (khofs.producers.producers_file)."""

    name: str
    fdt: bytes
    preserve: tuple[tuple[int, int], ...] = ()
    fail_finalize: int = 0  # a positive errno, or 0
    fail_abort: int = 0
    builtin: str = ""  # "kho_test": the kernel's lib/test_kho.c instead (fdt unused)
    fill: bool = False  # write a pattern into `preserve` at init, check it after kexec
    forget: tuple[tuple[int, int], ...] = ()  # filled and checked, but never preserved
    blob: bytes = b""  # 7.1 on: any bytes handed over instead of an FDT (sized by them)
