"""Byte counts as people read them, in binary units: the one home of khofs's size formats."""

from __future__ import annotations

UNITS = (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10))


def exact_size(n: int) -> str:
    """In the largest unit that divides n exactly ("2 MiB"), else in hex bytes: for
    messages that must not round (a size or an alignment that is refused)."""
    for name, shift in UNITS:
        if n and n % (1 << shift) == 0:
            return f"{n >> shift} {name}"
    return f"{n:#x} bytes"


def readable_size(n: int) -> str:
    """In the largest unit not above n, whole when exact, else to one decimal ("1.5 GiB")."""
    for name, shift in UNITS:
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {name}" if n % (1 << shift) == 0 else f"{value:.1f} {name}"
    return f"{n} B"


def rounded_size(n: int) -> str:
    """Always to one decimal, in TiB, GiB or MiB ("23.4 GiB"): a machine's RAM at a glance."""
    for name, shift in UNITS[:3]:
        if n >= 1 << shift or name == "MiB":
            return f"{n / (1 << shift):.1f} {name}"
    raise AssertionError("unreachable")
