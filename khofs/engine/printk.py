"""The emulated kernel's log buffer: what `dmesg` would show.

Mirrors printk: each record has a level and a timestamp since boot; the text carries its own
prefix (pr_fmt, e.g. "KHO: "), exactly as the kernel formats it. Records also go to an optional
sink (the daemon's log), so the engine itself does no I/O.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass

LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")


@dataclass(frozen=True)
class Record:
    level: str
    seconds: float
    text: str

    def format(self) -> str:
        """The dmesg form: `[    0.123456] text`."""
        return f"[{self.seconds:12.6f}] {self.text}"


class Printk:
    """The log ring of one boot."""

    def __init__(self, sink: Callable[[Record], None] | None = None) -> None:
        self.records: list[Record] = []
        self.sink = sink
        self._start = time.monotonic()

    def log(self, level: str, text: str) -> None:
        assert level in LEVELS, level
        rec = Record(level, time.monotonic() - self._start, text.rstrip("\n"))
        self.records.append(rec)
        if self.sink is not None:
            self.sink(rec)

    def err(self, text: str) -> None:
        self.log("err", text)

    def warn(self, text: str) -> None:
        self.log("warn", text)

    def notice(self, text: str) -> None:
        self.log("notice", text)

    def info(self, text: str) -> None:
        self.log("info", text)

    def debug(self, text: str) -> None:
        self.log("debug", text)

    def texts(self) -> list[str]:
        return [r.text for r in self.records]


# lib/errname.c names these codes after the other of Python's two aliases
_ERRNAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EAGAIN: "EAGAIN", errno.EDEADLK: "EDEADLK"}


def errname(err: int) -> str:
    """printk's %pe of ERR_PTR(err) (CONFIG_SYMBOLIC_ERRNAME): "-ENOMEM", or the number."""
    name = _ERRNAMES.get(-err) or errno.errorcode.get(-err)
    return f"-{name}" if name else str(err)
