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
    facility: int = 0  # 0 for the kernel's own lines, LOG_USER (1) for /dev/kmsg writes

    def format(self) -> str:
        """The dmesg form: `[    0.123456] text`."""
        return f"[{self.seconds:12.6f}] {self.text}"


class Printk:
    """The log ring of one boot."""

    def __init__(self, sink: Callable[[Record], None] | None = None) -> None:
        self.records: list[Record] = []
        self.sink = sink
        self._start = time.monotonic()
        # syslog(2)'s cursors (khofs.engine.syslog) and the console level it may set
        self.clear_seq = 0
        self.syslog_seq = 0
        self.syslog_partial = 0
        self.console_level: int | None = None  # None: what the command line says

    def log(self, level: str, text: str, facility: int = 0) -> None:
        assert level in LEVELS, level
        rec = Record(level, time.monotonic() - self._start, text.rstrip("\n"), facility)
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


# --- /dev/kmsg and the console (kernel/printk/printk.c) ---------------------------------------

LOG_USER = 1
LOG_BUF_LEN = 128 << 10  # CONFIG_LOG_BUF_SHIFT=17
DEFAULT_MESSAGE_LOGLEVEL = 4  # CONFIG_MESSAGE_LOGLEVEL_DEFAULT: KERN_WARNING
CONSOLE_LOGLEVEL_DEFAULT = 7  # CONFIG_CONSOLE_LOGLEVEL_DEFAULT
CONSOLE_LOGLEVEL_QUIET = 4  # CONFIG_CONSOLE_LOGLEVEL_QUIET
CONSOLE_LOGLEVEL_DEBUG = 10  # "debug" on the command line


def kmsg_record(seq: int, rec: Record) -> bytes:
    """One /dev/kmsg record (info_print_ext_header + msg_add_ext_text): "PRI,SEQ,USEC,-;"
    then the text with bytes below ' ', from 127 up, and the backslash as \\xNN, then a
    newline. No caller id (CONFIG_PRINTK_CALLER is off)."""
    head = f"{rec.facility << 3 | LEVELS.index(rec.level)},{seq},{int(rec.seconds * 1e6)},-;"
    body = bytearray(head.encode())
    for c in rec.text.encode("utf-8", "surrogateescape"):
        body += b"\\x%02x" % c if c < 0x20 or c >= 0x7F or c == 0x5C else bytes([c])
    return bytes(body + b"\n")


def devkmsg_parse(data: bytes) -> tuple[int, str, str]:
    """devkmsg_write: an optional "<N>" prefix gives the level (its low 3 bits) and, when
    non-zero, the facility; otherwise LOG_USER at the default message level. Returns
    (facility, level, text)."""
    facility, level = LOG_USER, DEFAULT_MESSAGE_LOGLEVEL
    text = data.partition(b"\0")[0]
    if text[:1] == b"<":
        digits = len(text[1:]) - len(text[1:].lstrip(b"0123456789"))
        if text[1 + digits:2 + digits] == b">":
            prefix = int(text[1:1 + digits] or b"0") & 0xFFFFFFFF
            level = prefix & 7
            facility = prefix >> 3 or facility
            text = text[2 + digits:]
    return facility, LEVELS[level], text.decode("utf-8", "surrogateescape")


def console_loglevel(cmdline: str) -> int:
    """The console's level from the command line: "quiet", "debug" and "loglevel=N"
    (the last one given wins, as each early_param sets the same variable)."""
    level = CONSOLE_LOGLEVEL_DEFAULT
    for word in cmdline.partition("\0")[0].split():
        if word == "quiet":
            level = CONSOLE_LOGLEVEL_QUIET
        elif word == "debug":
            level = CONSOLE_LOGLEVEL_DEBUG
        elif word.startswith("loglevel=") and word[9:].isdigit():
            level = int(word[9:])
    return level


def on_console(rec: Record, level: int) -> bool:
    """printk's console filter: a record shows when its level is below console_loglevel."""
    return LEVELS.index(rec.level) < level


# lib/errname.c names these codes after the other of Python's two aliases
_ERRNAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EAGAIN: "EAGAIN", errno.EDEADLK: "EDEADLK"}


def errname(err: int) -> str:
    """printk's %pe of ERR_PTR(err) (CONFIG_SYMBOLIC_ERRNAME): "-ENOMEM", or the number."""
    name = _ERRNAMES.get(-err) or errno.errorcode.get(-err)
    return f"-{name}" if name else str(err)
